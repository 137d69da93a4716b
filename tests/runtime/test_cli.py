"""`botcorebot` as a user runs it: a real process, real signals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import trio

from runtime.testing import FakeLLM, Slow, Text, bot_process, wait_until


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


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
    from adapters.http import HttpResponder
    from runtime.botcore import Bot
    from runtime.inbox import Inbox

    async with await Bot.open(workspace) as bot:
        inbox = Inbox(bot.db)
        entry, _ = await inbox.accept(Inbound("http", "s", "poison pill", HttpResponder()))
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
    assert "imported 1 memories" in imported.stdout and "line 2: skipped" in imported.stderr
    assert '"total_memories": 1' in run_cli("memory", "stats", env=env).stdout
    consolidated = run_cli("memory", "consolidate", env=env)
    assert consolidated.returncode == 0 and "1 → 1 memories" in consolidated.stdout


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
