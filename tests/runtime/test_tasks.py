"""GID task tracking on `.gid/graph.yml`: both file shapes, edits that keep the file, ready
sets and cycles."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import trio

from runtime.botcore import Bot, TaskGraph, TaskGraphError
from runtime.botcore._gid import _Document
from runtime.llm import ToolCall
from runtime.tools import ToolContext, ToolExecutor, ToolRegistry, builtin_tools

SHAPES = Path(__file__).parents[1] / "data" / "gid"


@pytest.fixture
async def bot(workspace: Path):  # type: ignore[no-untyped-def]
    async with await Bot.open(workspace) as opened:
        yield opened


def use_graph(bot: Bot, name: str) -> bytes:
    bot.tasks.path.parent.mkdir(exist_ok=True)
    shutil.copy(SHAPES / name, bot.tasks.path)
    return bot.tasks.path.read_bytes()


def changed_lines(before: bytes, after: bytes) -> list[str]:
    diff = difflib.unified_diff(
        before.decode().splitlines(), after.decode().splitlines(), lineterm="", n=0
    )
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


async def test_the_list_shape_loads(bot: Bot) -> None:
    use_graph(bot, "list-shape.yml")
    graph = await bot.tasks.load()
    assert graph.shape == "list" and graph.name == "BotCoreBot"
    assert [n.id for n in graph.nodes] == ["runtime-core", "telegram", "docs"]
    telegram = graph.node("telegram")
    assert telegram is not None and telegram.title == "Telegram adapter"
    assert telegram.depends_on == ("runtime-core",)  # the 'implements' edge is not a dependency
    assert telegram.description == "Long polling and webhook mode."
    assert graph.node("runtime-core").tags == ("core", "trio")  # type: ignore[union-attr]


async def test_the_older_map_shape_loads(bot: Bot) -> None:
    use_graph(bot, "map-shape.yml")
    graph = await bot.tasks.load()
    assert graph.shape == "map" and graph.name == "home-automation"
    lights, scenes = graph.nodes
    assert (lights.id, lights.title, lights.status) == ("LightsService", "Lights service", "done")
    assert lights.checklist == ((True, "pair the bridge"), (False, "handle timeouts"))
    assert scenes.depends_on == ("LightsService",)
    assert [n.id for n in graph.ready()] == ["Scenes"]


@pytest.mark.parametrize("name", ["list-shape.yml", "map-shape.yml"])
async def test_an_unchanged_round_trip_is_byte_identical(bot: Bot, name: str) -> None:
    original = use_graph(bot, name)
    first = (await bot.tasks.load()).nodes[0]
    await bot.tasks.update(first.id, status=first.status)  # read, "change", write back
    assert bot.tasks.path.read_bytes() == original


async def test_an_edit_changes_its_line_and_keeps_comments_and_unknown_fields(bot: Bot) -> None:
    original = use_graph(bot, "list-shape.yml")
    await bot.tasks.update("telegram", status="done")
    after = bot.tasks.path.read_bytes()
    assert changed_lines(original, after) == ["-    status: in_progress", "+    status: done"]
    assert b"# the kernel" in after and b"custom_field: kept as is" in after
    assert b"{ from: docs, to: telegram, relation: depends_on }" in after


@pytest.mark.parametrize("name", ["list-shape.yml", "map-shape.yml"])
async def test_created_tasks_are_added_in_the_files_own_shape(bot: Bot, name: str) -> None:
    original = use_graph(bot, name)
    first = (await bot.tasks.load()).nodes[0].id
    task = await bot.tasks.create("Release 1.0", depends_on=[first], description="tag and ship")
    after = bot.tasks.path.read_bytes()
    assert all(line.startswith("+") for line in changed_lines(original, after))  # only added
    graph = await bot.tasks.load()
    assert graph.shape == ("map" if name.startswith("map") else "list")
    assert graph.node(task.id) == task
    assert task.id == "release-1-0" and task.depends_on == (first,) and task.status == "todo"
    again = await bot.tasks.create("Release 1.0")
    assert again.id == "release-1-0-2"


async def test_ready_means_not_done_with_every_dependency_done(bot: Bot) -> None:
    use_graph(bot, "list-shape.yml")
    assert [n.id for n in (await bot.tasks.load()).ready()] == ["telegram"]
    await bot.tasks.update("telegram", status="done")
    assert [n.id for n in (await bot.tasks.load()).ready()] == ["docs"]


async def test_a_first_task_creates_the_file(bot: Bot) -> None:
    task = await bot.tasks.create("Water the plants")
    graph = await bot.tasks.load()
    assert graph.nodes == (task,) and bot.tasks.path.read_text().startswith("nodes:")


async def test_cycles_are_reported_not_looped_on(bot: Bot) -> None:
    a = await bot.tasks.create("A")
    b = await bot.tasks.create("B", depends_on=[a.id])
    c = await bot.tasks.create("C", depends_on=[b.id])
    await bot.tasks.update(a.id, depends_on=[c.id])
    free = await bot.tasks.create("Free")
    graph = await bot.tasks.load()
    assert graph.cycles == (("a", "c", "b", "a"),)
    assert [n.id for n in graph.ready()] == [free.id]
    listed = await run_tool(bot, "task_list", {})
    assert "cycle in depends_on: a -> c -> b -> a" in listed


async def test_bad_requests_and_bad_files_are_clear_errors(bot: Bot) -> None:
    with pytest.raises(TaskGraphError, match="no task 'nope'"):
        await bot.tasks.update("nope", status="done")
    with pytest.raises(TaskGraphError, match="not a status word"):
        await bot.tasks.create("x", status="Done!")
    bot.tasks.path.parent.mkdir(exist_ok=True)
    bot.tasks.path.write_text("nodes: [unclosed\n")
    with pytest.raises(TaskGraphError, match="not valid YAML"):
        await bot.tasks.load()
    with pytest.raises(TaskGraphError):
        await bot.tasks.create("y")
    assert bot.tasks.path.read_text() == "nodes: [unclosed\n"  # never overwritten


async def test_two_writers_at_once_lose_nothing(bot: Bot) -> None:
    other = TaskGraph(bot.workspace)  # another session's handle on the same file

    async def add(graph: TaskGraph, prefix: str) -> None:
        for i in range(8):
            await graph.create(f"{prefix} {i}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(add, bot.tasks, "mine")
        nursery.start_soon(add, other, "theirs")
    titles = {n.title for n in (await bot.tasks.load()).nodes}
    assert len(titles) == 16


async def test_the_tools_create_update_and_list(bot: Bot) -> None:
    created = await run_tool(bot, "task_create", {"title": "Buy milk", "tags": ["home"]})
    assert "buy-milk" in created
    await run_tool(bot, "task_create", {"title": "Make tea", "depends_on": ["buy-milk"]})
    assert "make-tea" not in await run_tool(bot, "task_list", {"ready": True})
    await run_tool(bot, "task_update", {"id": "buy-milk", "status": "done"})
    assert "make-tea" in await run_tool(bot, "task_list", {"ready": True})
    missing = await run_tool(bot, "task_update", {"id": "nope", "status": "done"})
    assert "no task 'nope'" in missing


async def run_tool(bot: Bot, name: str, args: dict[str, object]) -> str:
    executor = ToolExecutor(ToolRegistry(builtin_tools()), timeout=10)
    result = await executor.run(ToolCall("c1", name, args), ToolContext(bot, "test:1"))
    return result.content


async def test_a_save_under_our_feet_is_kept_and_the_change_redone(
    bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_graph(bot, "list-shape.yml")
    real_dump = _Document.dump
    saves = {"left": 1}

    def someone_saves_meanwhile(self: _Document) -> str:
        out = real_dump(self)
        if saves["left"]:
            saves["left"] -= 1
            text = bot.tasks.path.read_text()
            bot.tasks.path.write_text(text.replace("Write the docs", "Write the docs (hand)"))
        return out

    monkeypatch.setattr(_Document, "dump", someone_saves_meanwhile)
    await bot.tasks.update("telegram", status="done")
    graph = await bot.tasks.load()
    assert graph.node("docs").title == "Write the docs (hand)"  # type: ignore[union-attr]
    assert graph.node("telegram").status == "done"  # type: ignore[union-attr]

    saves["left"] = 99  # an editor saving constantly: refuse rather than overwrite
    with pytest.raises(TaskGraphError, match="kept changing"):
        await bot.tasks.update("docs", status="in_progress")
    assert (await bot.tasks.load()).node("docs").status == "todo"  # type: ignore[union-attr]
