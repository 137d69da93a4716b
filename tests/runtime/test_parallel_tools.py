"""The tool calls of one model answer run concurrently, bounded, results in call order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import trio

from runtime.botcore import Bot
from runtime.llm import ToolCall, ToolResult, ToolSpec
from runtime.tools import Tool, ToolContext, ToolExecutor, ToolRegistry, builtin_tools

log: list[str] = []
running = 0
peak = 0


async def _nap(context: ToolContext, args: Mapping[str, object]) -> str:
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        seconds = args.get("seconds", 1)
        assert isinstance(seconds, int | float)
        await trio.sleep(seconds)
    finally:
        running -= 1
    log.append(str(args.get("tag", "")))
    return f"slept {seconds}s"


def _path(args: Mapping[str, object]) -> str | None:
    return f"file:{args['path']}" if "path" in args else None


_ANY = {"type": "object"}


@pytest.fixture
def executor() -> ToolExecutor:
    global running, peak
    log.clear()
    running = peak = 0
    registry = ToolRegistry(
        [
            Tool(ToolSpec("nap", "sleeps", _ANY), _nap),
            Tool(ToolSpec("nap_on", "sleeps on a path", _ANY), _nap, _path),
        ]
    )
    return ToolExecutor(registry, timeout=2.0, concurrency=4)


@pytest.fixture
async def context(workspace: Path) -> AsyncIterator[ToolContext]:
    async with await Bot.open(workspace) as bot:
        yield ToolContext(bot, "test:1")


def naps(*seconds: float, name: str = "nap", **args: object) -> list[ToolCall]:
    return [
        ToolCall(f"call-{n}", name, {"seconds": s, "tag": str(n), **args})
        for n, s in enumerate(seconds)
    ]


async def test_two_one_second_tools_in_one_answer_finish_in_about_one_second(
    executor: ToolExecutor, context: ToolContext, autojump_clock: trio.abc.Clock
) -> None:
    start = trio.current_time()
    results = await executor.run_all(naps(1, 1), context)
    assert trio.current_time() - start == pytest.approx(1.0)
    assert [(r.call_id, r.content, r.is_error) for r in results] == [
        ("call-0", "slept 1s", False),
        ("call-1", "slept 1s", False),
    ]


async def test_results_come_back_in_call_order_when_later_calls_finish_first(
    executor: ToolExecutor, context: ToolContext, autojump_clock: trio.abc.Clock
) -> None:
    seen: list[tuple[str, str]] = []

    def progress(call: ToolCall, result: ToolResult | None) -> None:
        seen.append((call.id, "start" if result is None else "end"))

    results = await executor.run_all(naps(1.5, 1, 0.5), context, progress)
    assert [r.call_id for r in results] == ["call-0", "call-1", "call-2"]
    assert log == ["2", "1", "0"]  # they ran side by side: the shortest ended first
    assert [event for event in seen if event[1] == "end"] == [
        ("call-2", "end"),
        ("call-1", "end"),
        ("call-0", "end"),
    ]


async def test_each_call_has_its_own_timeout(
    executor: ToolExecutor, context: ToolContext, autojump_clock: trio.abc.Clock
) -> None:
    start = trio.current_time()
    results = await executor.run_all(naps(60, 1, 60), context)
    assert trio.current_time() - start == pytest.approx(2.0)  # the 2 s timeout, once
    assert [(r.is_error, r.content) for r in results] == [
        (True, "timed out after 2s"),
        (False, "slept 1s"),
        (True, "timed out after 2s"),
    ]


async def test_at_most_the_configured_number_of_calls_run_at_once(
    executor: ToolExecutor, context: ToolContext, autojump_clock: trio.abc.Clock
) -> None:
    start = trio.current_time()
    results = await executor.run_all(naps(*[1] * 10), context)
    assert peak == 4
    assert trio.current_time() - start == pytest.approx(3.0)  # 4 + 4 + 2
    assert [r.call_id for r in results] == [f"call-{n}" for n in range(10)]
    assert not any(r.is_error for r in results)


async def test_calls_on_one_path_run_one_after_the_other_in_call_order(
    executor: ToolExecutor, context: ToolContext, autojump_clock: trio.abc.Clock
) -> None:
    calls = [
        *naps(1.5, 1, 0.5, name="nap_on", path="a.txt"),
        ToolCall("other", "nap_on", {"seconds": 1, "tag": "b", "path": "b.txt"}),
    ]
    start = trio.current_time()
    results = await executor.run_all(calls, context)
    assert log == ["b", "0", "1", "2"]  # b.txt alongside; a.txt strictly in call order
    assert trio.current_time() - start == pytest.approx(3.0)
    assert not any(r.is_error for r in results)


async def test_a_write_then_an_edit_of_one_file_in_one_answer_both_apply(
    context: ToolContext,
) -> None:
    executor = ToolExecutor(ToolRegistry(builtin_tools()), concurrency=8)
    calls = [
        ToolCall("1", "filesystem_write", {"path": "notes/todo.md", "content": "buy milk"}),
        ToolCall(
            "2",
            "filesystem_edit",
            {"path": "./notes/todo.md", "old_text": "milk", "new_text": "oat milk"},
        ),
        ToolCall("3", "filesystem_read", {"path": "notes/todo.md"}),
        ToolCall("4", "filesystem_write", {"path": "notes/todo.md", "content": "done"}),
    ]
    with trio.fail_after(20):
        results = await executor.run_all(calls, context)
    assert [(r.call_id, r.is_error) for r in results] == [(c.id, False) for c in calls]
    assert results[2].content == "buy oat milk"
    assert (context.bot.workspace / "notes" / "todo.md").read_text() == "done"
