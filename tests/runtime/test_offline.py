from __future__ import annotations

import pytest

from runtime.llm import ModelRequest, StopReason, ToolResult, ToolResults, UserText
from runtime.llm.offline import OfflineModel


def request(
    *messages: UserText | ToolResults, context: str = "## What you remember (2)"
) -> ModelRequest:
    return ModelRequest("You are TestBot. A fox.", context, messages)


@pytest.mark.parametrize(
    ("text", "tool", "arguments"),
    [
        (
            "remember my cat is called Miso",
            "memory_store",
            {"content": "my cat is called Miso", "type": "factual"},
        ),
        ("recall cat", "memory_recall", {"query": "cat"}),
        ("what do you remember about my cat?", "memory_recall", {"query": "my cat"}),
        ("read notes/a.md", "filesystem_read", {"path": "notes/a.md"}),
        ("list", "filesystem_list", {"path": "."}),
        ("list notes", "filesystem_list", {"path": "notes"}),
        (
            "write notes/a.md: hello there",
            "filesystem_write",
            {"path": "notes/a.md", "content": "hello there"},
        ),
        (
            '/tool memory_recall {"query": "x", "limit": 2}',
            "memory_recall",
            {"query": "x", "limit": 2},
        ),
    ],
)
async def test_commands_become_tool_calls(
    text: str, tool: str, arguments: dict[str, object]
) -> None:
    response = await OfflineModel().complete(request(UserText(text)))
    assert response.stop_reason is StopReason.TOOL_USE
    (call,) = response.tool_calls
    assert (call.name, dict(call.arguments)) == (tool, arguments)


async def test_anything_else_gets_a_greeting_with_name_and_memory_count() -> None:
    deltas: list[str] = []
    response = await OfflineModel().complete(request(UserText("Hello!")), on_text=deltas.append)
    assert "TestBot" in response.text and "2 memories" in response.text
    assert "".join(deltas) == response.text and len(deltas) > 3


async def test_tool_results_are_turned_into_an_answer() -> None:
    results = ToolResults(
        (
            ToolResult("1", "memory_recall", '[{"content": "my cat is called Miso"}]'),
            ToolResult("2", "filesystem_read", "no such file", is_error=True),
        )
    )
    response = await OfflineModel().complete(request(UserText("x"), results))
    assert "- my cat is called Miso" in response.text
    assert "The filesystem_read tool failed: no such file" in response.text
    assert response.tool_calls == ()


async def test_bad_tool_json_is_explained() -> None:
    response = await OfflineModel().complete(request(UserText("/tool memory_recall {oops")))
    assert response.tool_calls == () and "not valid JSON" in response.text
