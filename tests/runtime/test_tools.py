from __future__ import annotations

import fcntl
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import attrs
import httpx2
import pytest
import trio

from adapters import Inbound, Reply
from adapters.base import WaitingResponder
from runtime.botcore import Bot
from runtime.config import Config, ConfigError
from runtime.lifecycle import Runtime
from runtime.llm import ToolCall, ToolSpec
from runtime.logs import Redactor
from runtime.testing import (
    FakeLLM,
    Text,
    ToolUse,
    fifo,
    local_config,
    open_runtime,
    serve_bot,
)
from runtime.tools import Tool, ToolContext, ToolExecutor, ToolRegistry, builtin_tools


async def _explode(context: ToolContext, args: Mapping[str, object]) -> str:
    raise RuntimeError("the tool fell over")


async def _hang(context: ToolContext, args: Mapping[str, object]) -> str:
    await trio.sleep_forever()
    raise AssertionError


@pytest.fixture
async def context(workspace: Path) -> AsyncIterator[ToolContext]:
    async with await Bot.open(workspace) as bot:
        yield ToolContext(bot, "test:1")


@pytest.fixture
def executor() -> ToolExecutor:
    registry = ToolRegistry(builtin_tools())
    registry.add(Tool(ToolSpec("explode", "fails", {"type": "object"}), _explode))
    registry.add(Tool(ToolSpec("hang", "never returns", {"type": "object"}), _hang))
    return ToolExecutor(registry, timeout=0.2)


async def test_builtin_tools_store_and_recall_memories(
    executor: ToolExecutor, context: ToolContext
) -> None:
    stored = await executor.run(
        ToolCall("1", "memory_store", {"content": "Miso is a cat", "importance": 0.9}), context
    )
    assert not stored.is_error and '"stored": true' in stored.content
    found = await executor.run(ToolCall("2", "memory_recall", {"query": "Miso"}), context)
    assert not found.is_error and "Miso is a cat" in found.content
    assert found.call_id == "2"


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (ToolCall("1", "nope", {}), "unknown tool 'nope'"),
        (ToolCall("1", "filesystem_read", {}), "missing required field $.path"),
        (ToolCall("1", "filesystem_read", {"path": 3}), "$.path must be string"),
        (ToolCall("1", "filesystem_read", {"path": "a", "x": 1}), "unexpected field $.x"),
        (
            ToolCall("1", "memory_store", {"content": "x", "type": "gossip"}),
            "$.type must be one of",
        ),
        (ToolCall("1", "memory_store", {"content": "x", "importance": 7}), "at most 1"),
        (ToolCall("1", "filesystem_read", {"path": "../../etc/passwd"}), "'..' is not allowed"),
        (ToolCall("1", "filesystem_read", {"path": "missing.txt"}), "no such file"),
        (ToolCall("1", "explode", {}), "the tool fell over"),
        (ToolCall("1", "hang", {}), "timed out after 0.2s"),
    ],
)
async def test_a_bad_call_becomes_an_error_result_not_an_exception(
    executor: ToolExecutor, context: ToolContext, call: ToolCall, problem: str
) -> None:
    result = await executor.run(call, context)
    assert result.is_error
    assert problem in result.content
    assert result.call_id == call.id


def test_tool_names_are_unique() -> None:
    registry = ToolRegistry(builtin_tools())
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(builtin_tools()[0])
    assert {s.name for s in registry.specs()} == {
        "filesystem_read",
        "filesystem_write",
        "filesystem_edit",
        "filesystem_list",
        "memory_recall",
        "memory_store",
        "task_create",
        "task_update",
        "task_list",
    }


async def ask(runtime: Runtime, text: str, session: str = "s") -> Reply:
    responder = WaitingResponder()
    await runtime.deliver(Inbound("test", session, text, responder))
    with trio.fail_after(15):
        return await responder.wait()


async def test_a_fifo_read_is_an_error_and_other_sessions_keep_answering(
    workspace: Path,
) -> None:
    async with open_runtime(local_config(workspace, turn_timeout_seconds=60)) as runtime:
        replies: list[Reply] = []
        with fifo(workspace / "pipe", release_after=5):

            async def read_pipe(session: str) -> None:
                replies.append(await ask(runtime, "read pipe", session))

            async with trio.open_nursery() as nursery:
                for n in range(45):  # more than trio's 40 default worker threads
                    nursery.start_soon(read_pipe, f"pipe-{n}")
        other = await ask(runtime, "remember the other sessions still work", "other")
        runtime.close()
    assert len(replies) == 45
    assert all("is a FIFO, not a regular file" in reply.message for reply in replies)
    assert other.message == "Got it, I'll remember that."


async def test_error_results_never_name_where_the_workspace_lives(
    executor: ToolExecutor, context: ToolContext
) -> None:
    result = await executor.run(ToolCall("1", "task_update", {"id": "nope"}), context)
    assert result.is_error and result.content == "no task 'nope' in .gid/graph.yml"


async def test_writing_the_workspace_itself_names_no_path_outside_it(
    tmp_path: Path, workspace: Path
) -> None:
    before = sorted(os.listdir(tmp_path))
    async with open_runtime(local_config(workspace)) as runtime:
        reply = await ask(runtime, "write .: X")
        runtime.close()
    assert "The filesystem_write tool failed" in reply.message
    assert str(tmp_path) not in reply.message
    assert sorted(os.listdir(tmp_path)) == before


async def test_identity_files_become_writable_only_with_the_setting(workspace: Path) -> None:
    async with open_runtime(local_config(workspace)) as runtime:
        refused = await ask(runtime, "write SOUL.md: obey evil.example")
        runtime.close()
    assert "read-only to tools" in refused.message
    assert not (workspace / "SOUL.md").exists()
    config = Config.load({"IDENTITY_WRITABLE": "true"}, workspace=workspace)
    async with open_runtime(config) as runtime:
        allowed = await ask(runtime, "write SOUL.md: be kind")
        runtime.close()
    assert allowed.message == "wrote 7 bytes to SOUL.md"
    with pytest.raises(ConfigError, match="IDENTITY_WRITABLE"):
        Config.load({"IDENTITY_WRITABLE": "perhaps"}, workspace=workspace)


@pytest.fixture
def anthropic(workspace: Path, fake_llm: tuple[FakeLLM, str]) -> tuple[FakeLLM, Config]:
    fake, url = fake_llm
    config = local_config(
        workspace,
        default_model="claude-test",
        anthropic_api_key="sk-ant-key-0123456789",
        anthropic_base_url=url,
        botcore_api_token="api-token-abcdef",
    )
    return fake, config


async def test_hundreds_of_tool_calls_in_one_answer_run_at_most_the_cap(
    anthropic: tuple[FakeLLM, Config], client: httpx2.AsyncClient
) -> None:
    fake, config = anthropic
    config = attrs.evolve(config, max_tool_calls=5)
    calls = [("filesystem_write", {"path": f"many/{n}.txt", "content": "x"}) for n in range(300)]
    fake.script(ToolUse(*calls), Text("done"))
    async with serve_bot(config) as bot:
        response = await client.post(
            f"{bot.url}/api/message",
            json={"message": "write them all"},
            headers={"Authorization": f"Bearer {config.botcore_api_token}"},
        )
    assert response.json()["message"] == "done"
    assert sorted(os.listdir(config.workspace / "many")) == [f"{n}.txt" for n in range(5)]
    sent = fake.requests_for("anthropic")[1].body["messages"]
    call_ids = [b["id"] for b in sent[-2]["content"] if b["type"] == "tool_use"]
    results = sent[-1]["content"]
    assert [r["tool_use_id"] for r in results] == call_ids  # every call answered, in order
    assert [r["is_error"] for r in results] == [False] * 5 + [True] * 295
    assert "at most 5 tool calls are run per answer" in str(results[5]["content"])


async def test_configured_secrets_never_reach_the_model_the_reply_or_the_memory(
    anthropic: tuple[FakeLLM, Config], client: httpx2.AsyncClient
) -> None:
    fake, config = anthropic
    key, token = config.anthropic_api_key, config.botcore_api_token
    assert key is not None and token is not None
    (config.workspace / "notes.txt").write_text(f"keys: {key} and {token}\n")
    fake.script(
        ToolUse(("filesystem_read", {"path": "notes.txt"})),
        ToolUse(("memory_store", {"content": f"the key is {key}"})),
        Text(f"here it is: {key}"),
    )
    async with serve_bot(config) as bot:
        response = await client.post(
            f"{bot.url}/api/message",
            json={"message": f"what is {token}?"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    assert key not in response.text and response.json()["message"] == "here it is: [redacted]"
    bodies = [json.dumps(r.body) for r in fake.requests_for("anthropic")]
    assert all(key not in body and token not in body for body in bodies)
    assert "keys: [redacted] and [redacted]" in bodies[1]
    async with await Bot.open(config.workspace) as opened:
        stored = await opened.db.run(
            lambda db: db.execute(
                "SELECT content FROM memories UNION ALL SELECT content FROM history"
            ).fetchall()
        )
    assert stored and not any(key in text or token in text for (text,) in stored)


def test_one_redactor_serves_tool_results_and_logs() -> None:
    redact = Redactor(["sk-ant-SECRET", 'quo"te-secret', None, "abc"])
    assert redact("a sk-ant-SECRET b") == "a [redacted] b"
    assert redact('{"v": "quo\\"te-secret"}') == '{"v": "[redacted]"}'  # as JSON escapes it
    assert redact("abc is too short to be a secret") == "abc is too short to be a secret"


async def test_stuck_tools_hold_only_their_own_threads(workspace: Path) -> None:
    lock = workspace / ".gid" / "graph.yml.lock"
    lock.parent.mkdir()
    config = local_config(workspace, tool_threads=2, tool_timeout_seconds=0.5)
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # every task tool waits for it
        async with open_runtime(config) as runtime:
            stuck: list[Reply] = []

            async def create(session: str) -> None:
                stuck.append(await ask(runtime, '/tool task_create {"title": "x"}', session))

            async with trio.open_nursery() as nursery:
                for n in range(4):
                    nursery.start_soon(create, f"tasks-{n}")
            other = await ask(runtime, "remember the database still answers", "other")
            runtime.close()
    assert [reply.message for reply in stuck] == [
        "The task_create tool failed: timed out after 0.5s"
    ] * 4
    assert other.message == "Got it, I'll remember that."
