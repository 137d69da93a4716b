from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from runtime.botcore import Bot, InvalidMemory, MemoryType, OutsideWorkspace, WorkspaceError


@pytest.fixture
async def bot(tmp_path: Path, database: Path | str):  # type: ignore[no-untyped-def]
    (tmp_path / "IDENTITY.md").write_text(
        "# Me\n- **Name:** TestBot\n- **Creature:** fox\n- **Vibe:** dry\n- **Emoji:** 🦊\n"
    )
    async with await Bot.open(tmp_path, database) as opened:
        yield opened


async def test_identity_fields_are_parsed_and_missing_files_are_fine(bot: Bot) -> None:
    identity = await bot.identity.load()
    assert (identity.name, identity.creature, identity.vibe, identity.emoji) == (
        "TestBot",
        "fox",
        "dry",
        "🦊",
    )
    assert identity.soul == "" and identity.user == ""


async def test_identity_edits_are_picked_up_without_reopening(bot: Bot) -> None:
    await bot.identity.load()
    (bot.workspace / "SOUL.md").write_text("Be brief.")
    (bot.workspace / "IDENTITY.md").write_text("- **Name:** Renamed\n")
    await trio.sleep(1.0)  # files are looked at again at most once a second
    identity = await bot.identity.load()
    assert identity.name == "Renamed" and identity.soul == "Be brief."


async def test_stored_memory_is_recalled_with_a_confidence(bot: Bot) -> None:
    await bot.memory.store("my cat is called Miso", type="factual", importance=0.8)
    await bot.memory.store("the deploy runs on Fridays", type=MemoryType.PROCEDURAL)
    found = await bot.memory.recall("what do you remember about my cat", limit=5)
    assert [m.content for m in found] == ["my cat is called Miso"]
    assert found[0].confidence == 1.0
    assert found[0].type is MemoryType.FACTUAL
    # Porter stemming: "cats" finds "cat".
    assert [m.content for m in await bot.memory.recall("cats")] == ["my cat is called Miso"]
    assert await bot.memory.recall("the and of") == []


@pytest.mark.parametrize(
    ("content", "kind", "importance", "problem"),
    [
        ("  ", "factual", 0.5, "needs some content"),
        ("x", "gossip", 0.5, "unknown memory type 'gossip'"),
        ("x", "factual", 1.5, "between 0 and 1"),
    ],
)
async def test_invalid_memories_are_refused_with_the_reason(
    bot: Bot, content: str, kind: str, importance: float, problem: str
) -> None:
    with pytest.raises(InvalidMemory, match=problem):
        await bot.memory.store(content, type=kind, importance=importance)


async def test_history_is_kept_per_session_in_order(bot: Bot) -> None:
    await bot.history.append_turn("http:a", "t1", [("user", "hi"), ("assistant", "hello")])
    await bot.history.append_turn("http:b", "t2", [("user", "other")])
    await bot.history.append_turn("http:a", "t3", [("user", "again"), ("assistant", "yes")])
    recent = await bot.history.recent("http:a", limit=3)
    assert [(e.role, e.content) for e in recent] == [
        ("assistant", "hello"),
        ("user", "again"),
        ("assistant", "yes"),
    ]
    assert await bot.history.clear("http:a") == 4
    assert await bot.history.recent("http:a") == []


async def test_files_are_written_read_edited_listed_and_logged(bot: Bot) -> None:
    fs = bot.tools.fs
    assert await fs.write("notes/today.md", "buy milk") == 8
    assert await fs.read("notes/today.md") == "buy milk"
    await fs.edit("notes/today.md", "milk", "oat milk")
    assert await fs.read("notes/today.md") == "buy oat milk"
    assert "notes/" in await fs.list(".")
    assert "engram.db" not in await fs.list(".")
    assert await fs.activity() == [("write", "notes/today.md", 12), ("write", "notes/today.md", 8)]
    with pytest.raises(ValueError, match="not found"):
        await fs.edit("notes/today.md", "bread", "rye")


@pytest.mark.parametrize(
    "path",
    ["../secret", "notes/../../etc/passwd", "~/.ssh/id_rsa", "/etc/passwd", ""],
)
async def test_paths_that_leave_the_workspace_are_refused(bot: Bot, path: str) -> None:
    with pytest.raises(OutsideWorkspace):
        await bot.tools.fs.read(path)
    with pytest.raises(OutsideWorkspace):
        await bot.tools.fs.write(path, "x")


async def test_a_symlink_to_etc_is_refused(bot: Bot) -> None:
    os.symlink("/etc", bot.workspace / "etc-link")
    with pytest.raises(OutsideWorkspace, match="outside the workspace"):
        await bot.tools.fs.read("etc-link/hostname")
    with pytest.raises(OutsideWorkspace):
        await bot.tools.fs.list("etc-link")
    assert not (Path("/etc") / "pwned").exists()


async def test_absolute_path_inside_the_workspace_is_allowed(bot: Bot) -> None:
    await bot.tools.fs.write(str(bot.workspace / "a.txt"), "inside")
    assert await bot.tools.fs.read("a.txt") == "inside"


async def test_opening_a_missing_workspace_says_so(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not a folder"):
        await Bot.open(tmp_path / "nope")


async def test_memories_survive_reopening(tmp_path: Path, database: Path | str) -> None:
    async with await Bot.open(tmp_path, database) as bot:
        await bot.memory.store("the wifi password is on the fridge")
    async with await Bot.open(tmp_path, database) as bot:
        assert len(await bot.memory.recall("wifi")) == 1
    await trio.lowlevel.checkpoint()
