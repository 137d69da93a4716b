"""`botcorebot` as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import attrs
import httpx2
import pytest
import trio

from runtime.config import Config
from runtime.testing import (
    Fail,
    FakeLLM,
    FakeTelegram,
    Slow,
    Text,
    bot_process,
    free_port,
    make_workspace,
    wait_until,
)


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without keys, tokens or a workspace, plus `extra`."""
    drop = ("_API_KEY", "_TOKEN", "BOTCORE_WORKSPACE", "DEFAULT_MODEL", "LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if not k.endswith(drop)} | extra


def test_init_scaffolds_a_workspace_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "my-bot"
    created = run_cli("init", str(target))
    assert created.returncode == 0, created.stderr
    identity = (target / "IDENTITY.md").read_text()
    assert "- **Name:** My Bot" in identity and "<!--" in identity
    assert (target / "SOUL.md").exists() and (target / "USER.md").exists()
    again = run_cli("init", str(target))
    assert again.returncode == 1 and "nothing was changed" in again.stderr


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DEFAULT_MODEL": "llama3"}, "unknown model 'llama3'"),
        ({"DEFAULT_MODEL": "gpt-4o"}, "needs OPENAI_API_KEY"),
        ({"HTTP_PORT": "lots"}, "HTTP_PORT: invalid value"),
        ({"BOTCORE_WORKSPACE": "/nonexistent/bot"}, "is not a folder"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of debug, info, warning, error, critical"),
    ],
)
def test_a_bad_configuration_stops_the_start_with_one_clear_line(
    workspace: Path, env: dict[str, str], words: str
) -> None:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    environ |= {"BOTCORE_WORKSPACE": str(workspace), **env}
    result = run_cli("serve", env=environ)
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


async def test_a_port_in_use_is_named(workspace: Path) -> None:
    async with bot_process(workspace) as first:
        port = first.url.rsplit(":", 1)[1]
        result = await trio.to_thread.run_sync(
            lambda: run_cli("serve", "--workspace", str(workspace), "--port", port)
        )
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr


async def test_sigterm_shuts_down_cleanly_and_says_it_runs_offline(workspace: Path) -> None:
    async with bot_process(workspace) as bot:
        async with httpx2.AsyncClient() as client:
            reply = await client.post(f"{bot.url}/api/message", json={"message": "hi"})
        assert reply.status_code == 200
        bot.terminate()
        assert await bot.wait() == 0
    assert "offline model" in bot.log
    assert bot.log.strip().splitlines()[-1].endswith("runtime: stopped")


async def test_sigterm_drains_a_turn_in_flight_and_refuses_new_messages(
    workspace: Path, fake_llm: tuple[FakeLLM, str]
) -> None:
    fake, url = fake_llm
    fake.script(Slow(1.0, Text("finished before exit")))
    env = {"DEFAULT_MODEL": "claude-x", "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": url}
    async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
        answers: list[httpx2.Response] = []

        async def ask() -> None:
            answers.append(await client.post(f"{bot.url}/api/message", json={"message": "hi"}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await wait_until(lambda: fake.requests)
            bot.terminate()
            await trio.sleep(0.2)
            refused = await client.post(f"{bot.url}/api/message", json={"message": "late"})
        assert await bot.wait() == 0
    assert answers[0].status_code == 200 and answers[0].json()["message"] == "finished before exit"
    assert (
        refused.status_code == 503 and "not taking messages" in refused.json()["error"]["message"]
    )


def test_chat_talks_to_the_bot_through_the_session_machinery(workspace: Path) -> None:
    import os

    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "chat", "--workspace", str(workspace)],
        input="remember the kettle is blue\n\nwhat do you remember about the kettle\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    assert "TestBot on offline" in result.stdout
    assert "Got it, I'll remember that." in result.stdout
    assert "- the kettle is blue" in result.stdout


async def test_deadletters_lists_them_and_retry_puts_one_back(workspace: Path) -> None:
    from adapters import Inbound, Reply, ReplyError
    from adapters.base import WaitingResponder
    from runtime.botcore import Bot
    from runtime.inbox import Inbox

    async with await Bot.open(workspace) as bot:
        inbox = Inbox(bot.db)
        entry, _ = await inbox.accept(Inbound("http", "s", "poison pill", WaitingResponder()))
        crashed = ReplyError("crashed", "crashed 3 times, last with RuntimeError: boom")
        await inbox.dead(entry.id, Reply("sorry", "s", "", error=crashed))
    env = {"BOTCORE_WORKSPACE": str(workspace), "PATH": "/usr/bin:/bin"}
    listed = await trio.to_thread.run_sync(lambda: run_cli("deadletters", env=env))
    assert listed.returncode == 0, listed.stderr
    assert "http:s" in listed.stdout and "poison pill" in listed.stdout and "boom" in listed.stdout
    retried = await trio.to_thread.run_sync(
        lambda: run_cli("deadletters", "--retry", str(entry.id), env=env)
    )
    assert "handled again at the next start" in retried.stdout
    empty = await trio.to_thread.run_sync(lambda: run_cli("deadletters", env=env))
    assert "no dead letters" in empty.stdout
    async with await Bot.open(workspace) as bot:
        assert [e.text for e in await Inbox(bot.db).unfinished()] == ["poison pill"]


def test_memory_add_search_export_import_round_trip(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    for folder in (source, target):
        assert run_cli("init", str(folder)).returncode == 0
    env = {**os.environ, "BOTCORE_WORKSPACE": str(source)}
    added = run_cli("memory", "add", "the spare key is under the blue pot", env=env)
    assert added.returncode == 0 and "stored memory" in added.stdout
    found = run_cli("memory", "search", "where is the spare key", env=env)
    assert "the spare key is under the blue pot" in found.stdout
    assert "nothing recalled" in run_cli("memory", "search", "zebra", env=env).stdout
    exported = tmp_path / "memories.jsonl"
    assert run_cli("memory", "export", str(exported), env=env).returncode == 0
    exported.write_text(exported.read_text() + "not json\n")
    env["BOTCORE_WORKSPACE"] = str(target)
    imported = run_cli("memory", "import", str(exported), env=env)
    assert imported.returncode == 1  # one bad line: said, and the rest imported
    assert "imported 1 memory (" in imported.stdout and "line 2: skipped" in imported.stderr
    stats = run_cli("memory", "stats", env=env).stdout
    assert "1 memory (1 factual)" in stats
    assert re.search(r"oldest: +20\d\d-\d\d-\d\d \d\d:\d\d UTC \(today\)", stats), stats
    assert '"total_memories": 1' in run_cli("memory", "stats", "--json", env=env).stdout
    consolidated = run_cli("memory", "consolidate", env=env)
    assert consolidated.returncode == 0 and "1 → 1 memory:" in consolidated.stdout


def test_tasks_prints_the_graph_and_what_is_ready(tmp_path: Path) -> None:
    workspace = tmp_path / "bot"
    assert run_cli("init", str(workspace)).returncode == 0
    (workspace / ".gid").mkdir()
    graph = Path(__file__).parents[1] / "data" / "gid" / "list-shape.yml"
    (workspace / ".gid" / "graph.yml").write_bytes(graph.read_bytes())
    env = {**os.environ, "BOTCORE_WORKSPACE": str(workspace)}
    everything = run_cli("tasks", env=env)
    assert everything.returncode == 0, everything.stderr
    assert "BotCoreBot: A runtime that makes a bot alive" in everything.stdout
    assert "[x] runtime-core" in everything.stdout and "docs" in everything.stdout
    ready = run_cli("tasks", "--ready", env=env).stdout
    assert "[>] telegram" in ready and "docs" not in ready


# -- the newcomer's path ------------------------------------------------------------------


def test_options_work_before_or_after_the_command(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    assert run_cli("init", str(bot)).returncode == 0
    env = clean_env()
    ws = str(bot)
    added = run_cli(
        "memory", "add", "the spare key is under the blue pot", "--workspace", ws, env=env
    )
    assert added.returncode == 0, added.stderr
    for args in (
        ["memory", "search", "where is the spare key", "--workspace", ws],
        ["memory", "--workspace", ws, "search", "where is the spare key"],
        ["--workspace", ws, "memory", "search", "where is the spare key"],
        ["memory", "search", "-w", ws, "where is the spare key"],
    ):
        found = run_cli(*args, env=env, cwd=tmp_path)
        assert found.returncode == 0, (args, found.stderr)
        assert "under the blue pot" in found.stdout
    for command in (["tasks"], ["deadletters"], ["memory", "stats"], ["doctor"]):
        result = run_cli(*command, "--workspace", ws, env=env, cwd=tmp_path)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    wrong = run_cli("memory", "search", "key", "--bogus", "--workspace", ws, env=env)
    assert wrong.returncode == 2
    assert "usage: botcorebot memory search" in wrong.stderr
    assert "unrecognized arguments: --bogus" in wrong.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["memory", "import", "missing.jsonl"], "missing.jsonl is not a file"),
        (["memory", "export", "/nodir/x.jsonl"], "/nodir is not a folder"),
        (["init", "{bot}/SOUL.md"], "SOUL.md is a file; give a folder"),
        (["backup", "/nodir/copy.db"], "/nodir is not a folder"),
    ],
)
def test_simple_mistakes_are_one_line_with_status_2(
    tmp_path: Path, args: list[str], words: str
) -> None:
    bot = tmp_path / "bot"
    assert run_cli("init", str(bot)).returncode == 0
    assert run_cli("memory", "add", "something", "-w", str(bot), env=clean_env()).returncode == 0
    args = [a.format(bot=bot) for a in args]
    result = run_cli(*args, env=clean_env(BOTCORE_WORKSPACE=str(bot)), cwd=tmp_path)
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_without_a_workspace_nothing_is_created_in_the_current_folder(tmp_path: Path) -> None:
    for command in (["memory", "stats"], ["serve"], ["chat", "-m", "hi"]):
        result = run_cli(*command, env=clean_env(), cwd=tmp_path)
        assert result.returncode == 2
        assert "no workspace given" in result.stderr and "--workspace" in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_a_folder_without_identity_starts_with_a_word_about_it(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    async with bot_process(empty) as bot:
        bot.terminate()
        assert await bot.wait() == 0
    assert "has no IDENTITY.md, so the bot has no name" in bot.log


def test_version_and_a_one_shot_message(workspace: Path) -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"botcorebot \d+\.\d+\.\d+\n", version.stdout)
    env = clean_env()
    told = run_cli(
        "chat", "-m", "remember the kettle is blue", "--workspace", str(workspace), env=env
    )
    assert told.returncode == 0, told.stderr
    assert told.stdout.strip() == "Got it, I'll remember that."
    assert told.stderr == ""  # no log lines beside the answer
    asked = run_cli("chat", "-w", str(workspace), "-m", "what do you remember about the kettle")
    assert "- the kettle is blue" in asked.stdout


def test_init_says_a_command_that_runs(tmp_path: Path) -> None:
    env = clean_env(PATH="/usr/bin:/bin")  # .venv/bin is not on PATH, as after a clone
    created = run_cli("init", str(tmp_path / "ada"), env=env, cwd=tmp_path)
    line = next(s for s in created.stdout.splitlines() if s.startswith("start it with: "))
    command = line.removeprefix("start it with: ").split(" serve ")[0]
    assert command != "botcorebot"
    runs = subprocess.run(
        [*command.split(), "--version"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert runs.returncode == 0 and runs.stdout.startswith("botcorebot ")


async def test_doctor_says_what_is_wrong_and_what_is_fine(
    workspace: Path, fake_llm: tuple[FakeLLM, str], telegram: tuple[FakeTelegram, str]
) -> None:
    fake, url = fake_llm
    fake.api_key = "the-right-key"
    fake_telegram, telegram_url = telegram
    env = clean_env(
        DEFAULT_MODEL="claude-x",
        ANTHROPIC_BASE_URL=url,
        ANTHROPIC_API_KEY="a-wrong-key",
        TELEGRAM_API_BASE_URL=telegram_url,
        TELEGRAM_BOT_TOKEN="999:wrong",
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env["HTTP_PORT"] = str(port)
        sick = await trio.to_thread.run_sync(
            lambda: run_cli("doctor", "--workspace", str(workspace), env=env)
        )
    assert sick.returncode == 1
    assert "FAIL  model anthropic:claude-x: ANTHROPIC_API_KEY was refused (401)" in sick.stdout
    assert "FAIL  Telegram: Telegram refused TELEGRAM_BOT_TOKEN (401)" in sick.stdout
    assert f"FAIL  HTTP port {port} on 127.0.0.1 is in use" in sick.stdout
    assert "3 problems to fix" in sick.stdout
    assert "a-wrong-key" not in sick.stdout and "999:wrong" not in sick.stdout
    env |= {
        "ANTHROPIC_API_KEY": "the-right-key",
        "TELEGRAM_BOT_TOKEN": fake_telegram.token,
        "HTTP_PORT": "0",
    }
    well = await trio.to_thread.run_sync(
        lambda: run_cli("doctor", "--workspace", str(workspace), env=env)
    )
    assert well.returncode == 0, well.stdout
    assert "ok    model anthropic:claude-x: ANTHROPIC_API_KEY accepted" in well.stdout
    assert "ok    Telegram: the token belongs to @test_bot (polling)" in well.stdout
    assert "warn  workspace" in well.stdout and "has no SOUL.md, USER.md" in well.stdout
    assert fake.requests == []  # checking the key cost no tokens


async def test_the_banner_says_what_runs_where(
    workspace: Path, telegram: tuple[FakeTelegram, str]
) -> None:
    fake_telegram, telegram_url = telegram
    (workspace / "botcore.toml").write_text(
        '[webhooks.github]\nscheme = "github"\nsecret_env = "GH_SECRET"\ntext = "/comment/body"\n'
    )
    env = {
        "TELEGRAM_BOT_TOKEN": fake_telegram.token,
        "TELEGRAM_API_BASE_URL": telegram_url,
        "BOTCORE_API_TOKEN": "a-token-for-the-api",
        "GH_SECRET": "a-webhook-secret",
        "DEFAULT_MODEL": "offline",
        "ANTHROPIC_API_KEY": "set-but-not-used",
    }
    async with bot_process(workspace, env) as bot:
        bot.terminate()
        assert await bot.wait() == 0
    database = workspace / "engram.db"  # tmp_path is already resolved
    assert f"bot 'TestBot' (workspace {workspace}), model offline, database {database}" in bot.log
    assert f"HTTP API on {bot.url} (token required)" in bot.log
    assert "channels: http, telegram (polling), webhook 'github' at /webhooks/github" in bot.log
    assert "no API key configured" not in bot.log  # offline was chosen, with a key set


def test_a_public_address_without_a_token_is_warned_about(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from runtime.host import _warn_unprotected

    config = Config(workspace=workspace, http_host="0.0.0.0")
    _warn_unprotected(config.process)
    assert "without BOTCORE_API_TOKEN" in caplog.text
    caplog.clear()
    _warn_unprotected(attrs.evolve(config, botcore_api_token="t").process)
    assert "without BOTCORE_API_TOKEN" not in caplog.text


def test_a_bad_value_in_botcore_toml_is_named_with_file_and_line(workspace: Path) -> None:
    toml = workspace / "botcore.toml"
    toml.write_text('# my bot\ndefault_model = "offline"\nhttp_port = 70000\n')
    result = run_cli("serve", "--workspace", str(workspace), env=clean_env())
    assert result.returncode == 2
    assert f"{toml} line 3: http_port must be <= 65535: 70000" in result.stderr
    toml.write_text('default_model = "offline"\nhtp_port = 8080\n')
    result = run_cli("serve", "--workspace", str(workspace), env=clean_env())
    assert f"{toml} line 2: htp_port: unknown setting" in result.stderr


async def test_refused_requests_are_logged_and_readyz_names_a_failing_telegram(
    workspace: Path,
) -> None:
    nowhere = free_port()  # nothing listens there: getMe keeps failing
    env = {
        "TELEGRAM_BOT_TOKEN": "123:abc",
        "TELEGRAM_API_BASE_URL": f"http://127.0.0.1:{nowhere}",
        "BOTCORE_API_TOKEN": "the-token",
    }
    auth = {"Authorization": "Bearer the-token"}
    async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
        api = f"{bot.url}/api/message"
        assert (await client.post(api, json={"message": "hi"})).status_code == 401
        typo = await client.post(api, json={"message": "hi", "sesion_id": "x"}, headers=auth)
        assert typo.status_code == 400 and "sesion_id" in typo.json()["error"]["message"]
        big = await client.post(api, json={"message": "x" * 40_000}, headers=auth)
        assert big.status_code == 413
        with trio.fail_after(20):
            while True:
                ready = await client.get(f"{bot.url}/readyz")
                if ready.status_code != 200:
                    break
                await trio.sleep(0.1)
        assert ready.status_code == 503 and "getMe failed" in ready.json()["telegram"]
        bot.terminate()
        assert await bot.wait() == 0
    refused = [line for line in bot.log.splitlines() if "refused POST /api/message" in line]
    assert len(refused) == 3, bot.log
    assert [s for s in (" 401 ", " 400 ", " 413 ") if any(s in line for line in refused)] == [
        " 401 ",
        " 400 ",
        " 413 ",
    ]
    assert "the-token" not in bot.log


async def test_a_model_retry_is_logged_once(workspace: Path, fake_llm: tuple[FakeLLM, str]) -> None:
    fake, url = fake_llm
    fake.script(Fail(429, "slow down", retry_after=0.01), Text("fine now"))
    env = {"DEFAULT_MODEL": "claude-x", "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": url}
    async with bot_process(workspace, env) as bot, httpx2.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{bot.url}/api/message", json={"message": "hi"})
        assert reply.json()["message"] == "fine now"
        bot.terminate()
        assert await bot.wait() == 0
    mentions = [line for line in bot.log.splitlines() if "429" in line]
    assert len(mentions) == 1 and "retry 1 of POST /v1/messages after 429" in mentions[0]


async def test_backup_copies_the_database_while_the_bot_runs(
    workspace: Path, tmp_path: Path
) -> None:
    from runtime.botcore import Bot

    copy = tmp_path / "backup.db"
    async with bot_process(workspace) as bot, httpx2.AsyncClient(timeout=30) as client:
        stored = await client.post(
            f"{bot.url}/api/v1/memory/store", json={"content": "the boat is moored at pier 7"}
        )
        assert stored.status_code == 200
        backup = lambda: run_cli("backup", str(copy), "--workspace", str(workspace))  # noqa: E731
        made = await trio.to_thread.run_sync(backup)
        assert made.returncode == 0 and "backed up" in made.stdout, made.stderr
        again = await trio.to_thread.run_sync(backup)
        assert again.returncode == 2 and "exists" in again.stderr
        bot.terminate()
        assert await bot.wait() == 0
    restored = make_workspace(tmp_path / "restored")
    async with await Bot.open(restored, copy) as bot_copy:
        found = await bot_copy.memory.recall("where is the boat")
    assert [m.content for m in found] == ["the boat is moored at pier 7"]


async def test_doctor_beside_the_running_bot_does_not_fail_on_its_port(workspace: Path) -> None:
    async with bot_process(workspace) as bot:
        port = bot.url.rsplit(":", 1)[1]
        result = await trio.to_thread.run_sync(
            lambda: run_cli("doctor", "-w", str(workspace), env=clean_env(HTTP_PORT=port))
        )
        bot.terminate()
        assert await bot.wait() == 0
    assert result.returncode == 0, result.stdout
    assert f"warn  HTTP port {port}: a bot is running there" in result.stdout


def test_doctor_on_postgresql_checks_the_server_and_never_shows_the_password(
    workspace: Path, postgres_server: str
) -> None:
    from runtime.testing.postgres import drop_schema, new_schema

    url = new_schema(postgres_server)
    healthy = run_cli("doctor", "-w", str(workspace), env=clean_env(DATABASE_URL=url))
    drop_schema(url)
    assert healthy.returncode == 0, healthy.stdout
    assert "ok    database postgresql database postgres on the socket in" in healthy.stdout
    gone = "postgresql://bot:hunter2@/bots?host=%2Fnonexistent"
    sick = run_cli("doctor", "-w", str(workspace), env=clean_env(DATABASE_URL=gone))
    assert sick.returncode == 1
    assert "FAIL  cannot open the database postgresql database bots" in sick.stdout
    assert "hunter2" not in sick.stdout + sick.stderr
    refused = run_cli("serve", "-w", str(workspace), env=clean_env(DATABASE_URL=gone))
    assert refused.returncode != 0 and "cannot open the database" in refused.stderr
    assert "hunter2" not in refused.stdout + refused.stderr
    backup = run_cli("backup", "-w", str(workspace), "copy.db", env=clean_env(DATABASE_URL=url))
    assert backup.returncode != 0 and "pg_dump" in backup.stderr
