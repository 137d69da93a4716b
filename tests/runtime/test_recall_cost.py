"""Recall stays cheap as memory grows: a word shared by many memories is not scored in all of them.

Cost is counted in SQLite virtual-machine steps (a progress handler), not in time: the same
figure on a busy machine and an idle one."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from runtime.botcore import Bot
from runtime.botcore._memory import COMMON


@pytest.fixture
async def bot(workspace: Path):  # type: ignore[no-untyped-def]
    async with await Bot.open(workspace) as opened:
        yield opened


async def chatter(bot: Bot, count: int) -> None:
    """`count` episodes that all say "hello there", one a minute until now, the oldest first,
    by Alice and Bob in turn in one conversation."""
    start = time.time() - 60 * count

    def write(db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO memories (content, type, importance, created_at, accessed_at, speaker,"
            " conversation) VALUES (?, 'episodic', 0.3, ?, ?, ?, 'telegram:1')",
            [
                (
                    f"User said: hello there, round {n} | I answered: hi {n}",
                    start + 60 * n,
                    start + 60 * n,
                    ("Alice", "Bob")[n % 2],
                )
                for n in range(count)
            ],
        )

    await bot.db.run(write)


async def steps_of_recall(bot: Bot, query: str) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    await bot.db.run(lambda db: db.set_progress_handler(count, 100))
    try:
        await bot.memory.recall(query)
    finally:
        await bot.db.run(lambda db: db.set_progress_handler(None, 100))
    return steps


async def test_a_common_word_costs_the_same_in_1000_memories_as_in_20000(
    workspace: Path, tmp_path: Path
) -> None:
    (tmp_path / "big").mkdir()
    async with await Bot.open(workspace) as small, await Bot.open(tmp_path / "big") as big:
        await chatter(small, 1_000)
        await chatter(big, 20_000)
        few = await steps_of_recall(small, "hello there")
        many = await steps_of_recall(big, "hello there")
    assert many <= 2 * few, (few, many)


async def test_a_named_speaker_and_a_day_cost_the_same_in_1000_memories_as_in_20000(
    workspace: Path, tmp_path: Path
) -> None:
    """The neighbours, the speakers and the day's turns are read for the candidates only."""
    (tmp_path / "big").mkdir()
    async with await Bot.open(workspace) as small, await Bot.open(tmp_path / "big") as big:
        await chatter(small, 1_000)
        await chatter(big, 20_000)
        for query in ("what did Bob say today?", "did Alice say hello there yesterday?"):
            few = await steps_of_recall(small, query)
            many = await steps_of_recall(big, query)
            assert many <= 2 * few, (query, few, many)


async def test_a_rare_word_finds_its_memory_among_thousands_sharing_the_common_one(
    bot: Bot,
) -> None:
    await chatter(bot, 3 * COMMON)
    gate = await bot.memory.store("hello! the gate code is 4411", importance=0.5)
    (first, *_) = await bot.memory.recall("hello, what is the gate code?")
    assert first.id == gate


async def test_common_words_alone_recall_the_newest_memories_that_have_most_of_them(
    bot: Bot,
) -> None:
    await chatter(bot, 3 * COMMON)
    both = await bot.memory.store("hello there, general Kenobi", type="episodic", importance=0.3)
    found = await bot.memory.recall("hello there general", limit=3)
    # "general" is rare here, so it decides; with only the common words, the newest win.
    assert found[0].id == both
    newest = await bot.memory.recall("hello there round", limit=3)
    assert [m.content.split("|")[0] for m in newest] == [
        f"User said: hello there, round {n} "
        for n in (3 * COMMON - 1, 3 * COMMON - 2, 3 * COMMON - 3)
    ]


async def test_a_type_filter_still_applies_to_a_common_word_query(bot: Bot) -> None:
    await chatter(bot, 2 * COMMON)
    fact = await bot.memory.store("hello there is how Ana greets everyone", importance=0.5)
    found = await bot.memory.recall("hello there", types=["factual"])
    assert [m.id for m in found] == [fact]
    assert all(m.type == "episodic" for m in await bot.memory.recall("hello", types=["episodic"]))


async def test_a_query_as_long_as_a_pasted_page_is_still_answered(bot: Bot) -> None:
    await bot.memory.store("the spare key is under the blue flowerpot")
    page = " ".join(f"word{n}" for n in range(1_000))
    assert await bot.memory.recall(page) == []
    (found,) = await bot.memory.recall("spare key " + page)
    assert "flowerpot" in found.content
