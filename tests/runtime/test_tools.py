from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import trio

from runtime.botcore import Bot
from runtime.llm import ToolCall, ToolSpec
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
