"""Several bots in one process: each with its own memory, identity, routes, metrics, model."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from runtime.config import Config, ConfigError
from runtime.host import HostConfig, load_host
from runtime.testing import Fail, FakeLLM, bot_process, local_config, make_workspace, serve_bot


def two_bots(tmp_path: Path, **alice: object) -> HostConfig:
    """Alice and Bob, each in its own workspace, on one free port."""
    first = local_config(make_workspace(tmp_path / "alice", "- **Name:** Alice\n"), **alice)
    second = local_config(make_workspace(tmp_path / "bob", "- **Name:** Bob\n"))
    return HostConfig(first.process, {"alice": first.bot, "bob": second.bot})


async def ask(client: httpx2.AsyncClient, url: str, bot: str, text: str) -> httpx2.Response:
    return await client.post(
        f"{url}/bots/{bot}/api/message", json={"message": text, "session_id": "s1"}
    )


async def test_two_bots_answer_as_themselves_and_do_not_share_memories(
    tmp_path: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(two_bots(tmp_path)) as host:
        hello_alice = await ask(client, host.url, "alice", "hello")
        hello_bob = await ask(client, host.url, "bob", "hello")
        told = await ask(client, host.url, "alice", "remember that my locker code is 4711")
        alice_recalls = await ask(client, host.url, "alice", "recall locker code")
        bob_recalls = await ask(client, host.url, "bob", "recall locker code")
    assert "I'm Alice" in hello_alice.json()["message"]
    assert "I'm Bob" in hello_bob.json()["message"]
    assert told.status_code == 200
    assert "4711" in alice_recalls.json()["message"]
    assert "4711" not in bob_recalls.json()["message"]
    assert (tmp_path / "alice" / "engram.db").exists() and (tmp_path / "bob" / "engram.db").exists()


async def test_each_bot_has_its_routes_and_labelled_metrics_and_no_plain_route(
    tmp_path: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(two_bots(tmp_path)) as host:
        assert (await ask(client, host.url, "alice", "hello")).status_code == 200
        plain = await client.post(f"{host.url}/api/message", json={"message": "hello"})
        unknown = await ask(client, host.url, "carol", "hello")
        stats = await client.get(f"{host.url}/bots/bob/api/v1/memory/stats")
        metrics = (await client.get(f"{host.url}/metrics")).text
        ready = await client.get(f"{host.url}/readyz")
    assert plain.status_code == 404  # which bot? with several, each is under its name
    assert unknown.status_code == 404
    assert stats.status_code == 200
    assert 'botcore_turns_total{bot="alice",outcome="ok"} 1' in metrics
    assert 'botcore_turns_total{bot="bob"' not in metrics  # bob had no turn
    assert 'botcore_sessions_live{bot="bob"} 0' in metrics
    assert metrics.count("# TYPE botcore_turns_total counter") == 1
    assert ready.status_code == 200 and set(ready.json()["bots"]) == {"alice", "bob"}


async def test_one_bots_broken_model_leaves_the_other_answering(
    tmp_path: Path, client: httpx2.AsyncClient, fake_llm: tuple[FakeLLM, str]
) -> None:
    model, url = fake_llm
    model.script(*[Fail(500, "the model is down")] * 8)
    host = two_bots(
        tmp_path,
        default_model="claude-x",
        anthropic_api_key="k",
        anthropic_base_url=url,
        model_max_retries=0,
    )
    async with serve_bot(host) as running:
        broken = await ask(client, running.url, "alice", "hello")
        fine = await ask(client, running.url, "bob", "hello")
    assert broken.status_code == 502 and broken.json()["error"]["type"] == "provider"
    assert fine.status_code == 200 and "I'm Bob" in fine.json()["message"]


async def test_one_bot_keeps_its_plain_routes_and_gets_its_named_ones(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        plain = await client.post(f"{bot.url}/api/message", json={"message": "hello"})
        named = await client.post(f"{bot.url}/bots/bot/api/message", json={"message": "hello"})
    assert plain.status_code == 200 and named.status_code == 200


def test_a_host_file_gives_each_bot_its_settings_and_the_process_its_own(
    tmp_path: Path,
) -> None:
    make_workspace(tmp_path / "a")
    make_workspace(tmp_path / "b")
    (tmp_path / "b" / "botcore.toml").write_text('default_model = "offline"\nmailbox_size = 9\n')
    file = tmp_path / "host.toml"
    file.write_text(
        'http_port = 4100\n\n[bots.alpha]\nworkspace = "a"\nprompt_token_budget = 900\n'
        'telegram_bot_token = "1:a"\n\n[bots.beta]\nworkspace = "b"\n'
    )
    host = load_host({"ANTHROPIC_API_KEY": "shared"}, file=file)
    assert host.process.http_port == 4100
    assert list(host.bots) == ["alpha", "beta"]
    alpha, beta = host.bots["alpha"], host.bots["beta"]
    assert alpha.prompt_token_budget == 900 and alpha.telegram_bot_token == "1:a"
    assert beta.mailbox_size == 9 and beta.telegram_bot_token is None
    assert alpha.anthropic_api_key == beta.anthropic_api_key == "shared"
    assert alpha.workspace == tmp_path / "a"


def test_bots_may_not_share_a_telegram_token_or_misplace_a_bot_setting(tmp_path: Path) -> None:
    first, second = make_workspace(tmp_path / "one"), make_workspace(tmp_path / "two")
    with pytest.raises(ConfigError, match="'one' and 'two' have the same Telegram bot token"):
        load_host({"TELEGRAM_BOT_TOKEN": "1:x"}, workspaces=[first, second])
    file = tmp_path / "host.toml"
    file.write_text('default_model = "offline"\n[bots.one]\nworkspace = "one"\n')
    with pytest.raises(ConfigError, match=r"default_model belong under a \[bots\.NAME\] table"):
        load_host({}, file=file)


def test_repeated_workspaces_are_bots_named_by_their_folders(tmp_path: Path) -> None:
    first = make_workspace(tmp_path / "Support Bot")
    second = make_workspace(tmp_path / "sales")
    host = load_host({"HTTP_PORT": "4200"}, workspaces=[first, second])
    assert list(host.bots) == ["support-bot", "sales"]
    assert host.process.http_port == 4200
    assert isinstance(Config.load({}, workspace=first), Config)


async def test_serve_with_two_workspaces_runs_both_bots_and_stops_cleanly(
    tmp_path: Path, client: httpx2.AsyncClient
) -> None:
    first = make_workspace(tmp_path / "alice", "- **Name:** Alice\n")
    second = make_workspace(tmp_path / "bob", "- **Name:** Bob\n")
    args = ["--workspace", str(first), "--workspace", str(second)]
    async with bot_process(first, {"DEFAULT_MODEL": "offline"}, args=args) as bot:
        alice = await ask(client, bot.url, "alice", "hello")
        bob = await ask(client, bot.url, "bob", "hello")
        bot.terminate()
        assert await bot.wait() == 0
    assert "I'm Alice" in alice.json()["message"] and "I'm Bob" in bob.json()["message"]
    assert "OpenAI-compatible chat API at /v1/chat/completions (model: 'alice', 'bob')" in bot.log


async def test_serve_with_a_host_file(tmp_path: Path, client: httpx2.AsyncClient) -> None:
    make_workspace(tmp_path / "a", "- **Name:** Ada\n")
    file = tmp_path / "host.toml"
    file.write_text('[bots.ada]\nworkspace = "a"\ndefault_model = "offline"\n')
    async with bot_process(tmp_path / "a", args=["--config", str(file)]) as bot:
        named = await ask(client, bot.url, "ada", "hello")
        plain = await client.post(f"{bot.url}/api/message", json={"message": "hello"})
    assert "I'm Ada" in named.json()["message"] and plain.status_code == 200
