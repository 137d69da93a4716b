"""Engram memory: ranking, reinforcement, decay, consolidation and forgetting."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import attrs
import pytest
import trio

from adapters import Inbound
from adapters.base import WaitingResponder
from runtime.botcore import (
    Bot,
    InvalidMemory,
    Memory,
    MemoryType,
    RetentionPolicy,
    consolidate,
    extractive_summary,
)
from runtime.lifecycle import model_summary
from runtime.llm.offline import OfflineModel
from runtime.llm.select import open_model
from runtime.testing import Fail, FakeLLM, Text, local_config, open_runtime, wait_until

DAY = 86_400.0


@pytest.fixture
async def bot(workspace: Path, database: Path | str):  # type: ignore[no-untyped-def]
    async with await Bot.open(workspace, database) as opened:
        yield opened


def aged(
    content: str,
    days: float,
    *,
    uses: int = 0,
    used_days_ago: float | None = None,
    kind: MemoryType = MemoryType.FACTUAL,
    importance: float = 0.5,
    session: str = "",
) -> Memory:
    now = time.time()
    return Memory(
        id=0,
        content=content,
        type=kind,
        importance=importance,
        created_at=now - days * DAY,
        accessed_at=now - (days if used_days_ago is None else used_days_ago) * DAY,
        access_count=uses,
        metadata={"session": session} if session else {},
    )


async def test_a_near_duplicate_reinforces_instead_of_adding_a_copy(bot: Bot) -> None:
    first = await bot.memory.store("My sister Ana lives in Lisbon", importance=0.4)
    again = await bot.memory.store("my sister Ana lives in Lisbon.", importance=0.9)
    other = await bot.memory.store("My sister Ana moved to Porto last year")
    assert again == first and other != first
    assert await bot.memory.count() == 2
    memory = await bot.memory.get(first)
    assert memory is not None and memory.access_count == 1 and memory.importance == 0.9
    # The same words as another type are a different memory.
    assert await bot.memory.store("my sister Ana lives in Lisbon", type="opinion") != first


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("my sister is called Anna", "my sister is not called Anna"),
        ("I take my coffee with sugar", "I take my coffee without sugar"),
        ("I like the dentist", "I don't like the dentist"),
        ("the meeting moved from 3 pm to 5 pm", "the meeting moved from 5 pm to 3 pm"),
        ("Bob owes Alice 60 euros for the tickets", "Alice owes Bob 60 euros for the tickets"),
    ],
)
async def test_a_correction_is_a_new_fact_not_a_near_duplicate(
    bot: Bot, before: str, after: str
) -> None:
    first = await bot.memory.store(before)
    second = await bot.memory.store(after)
    assert second != first
    assert {m.content for m in await bot.memory.export()} == {before, after}
    # Stored again, each reinforces its own memory.
    assert await bot.memory.store(after) == second
    assert await bot.memory.store(before.capitalize() + ".") == first


async def test_a_negated_fact_told_to_the_bot_is_kept_with_its_episode(workspace: Path) -> None:
    async with open_runtime(local_config(workspace)) as runtime:
        for text in ("remember my sister is called Anna", "remember my sister is not called Anna"):
            responder = WaitingResponder()
            await runtime.deliver(Inbound("http", "s", text, responder))
            assert (await responder.wait()).message == "Got it, I'll remember that."
        kept = [(m.type, m.content) for m in await runtime.bot.memory.export()]
    assert (MemoryType.FACTUAL, "my sister is not called Anna") in kept
    assert (MemoryType.FACTUAL, "my sister is called Anna") in kept
    assert sum(kind is MemoryType.EPISODIC for kind, _ in kept) == 2


async def test_used_memories_outrank_faded_ones_and_strength_says_so(bot: Bot) -> None:
    await bot.memory.load(
        [
            aged("the office wifi password is kept in the blue binder", 90),
            aged(
                "the guest wifi password is printed on the router", 90, uses=12, used_days_ago=0.5
            ),
        ]
    )
    found = await bot.memory.recall("wifi password")
    assert [m.content for m in found] == [
        "the guest wifi password is printed on the router",
        "the office wifi password is kept in the blue binder",
    ]
    assert found[0].strength > 0.9 > 0.3 > found[1].strength
    # Recall is a use: the faded one gets stronger for being recalled.
    (again,) = [m for m in await bot.memory.recall("office binder") if "binder" in m.content]
    assert again.strength > found[1].strength and again.access_count == 1


async def test_importance_breaks_a_tie_in_relevance(bot: Bot) -> None:
    await bot.memory.store("the standup is at nine", importance=0.1)
    await bot.memory.store("the standup is at ten", importance=0.9)
    assert (await bot.memory.recall("standup"))[0].content == "the standup is at ten"


async def test_types_filter_recall(bot: Bot) -> None:
    await bot.memory.store("coffee is best black", type="opinion")
    await bot.memory.store("coffee beans are in the left cupboard", type="factual")
    found = await bot.memory.recall("coffee", types=["opinion"])
    assert [m.type for m in found] == [MemoryType.OPINION]
    with pytest.raises(InvalidMemory):
        await bot.memory.recall("coffee", types=["gossip"])


async def test_consolidation_folds_old_episodes_and_keeps_the_facts(bot: Bot) -> None:
    episodes = [
        "User said: my daughter Zoe turns seven on the 12th of May | I answered: Noted!",
        "User said: what's the weather like? | I answered: I cannot see outside.",
        "User said: we are flying to Oslo on Friday | I answered: Have a good trip.",
        "User said: my daughter Zoe turns seven on the 12th of May | I answered: Noted!",
    ]
    await bot.memory.load(
        [
            aged(e, 3 - i * 0.1, kind=MemoryType.EPISODIC, session="telegram:1")
            for i, e in enumerate(episodes)
        ]
        + [aged("User said: hi | I answered: hello", 0.1, kind=MemoryType.EPISODIC)]
    )
    await bot.memory.store("the car is a green Volvo", importance=0.8)
    before = await bot.memory.count()
    stats = await consolidate(bot.db)
    assert (stats.memories_before, stats.merged, stats.summaries) == (before, 3, 1)
    assert stats.memories_after == before - 3 + 1
    (summary,) = await bot.memory.recall("Zoe birthday seven", types=["factual"])
    assert "12th of May" in summary.content and "Oslo" in summary.content
    assert summary.metadata["consolidated_from"] == 3
    # The recent episode and the plain fact are untouched.
    assert await bot.memory.recall("hi hello", types=["episodic"])
    assert await bot.memory.recall("Volvo")


async def test_extractive_summary_prefers_statements_within_its_limit() -> None:
    episodes = [f"User said: question number {i}? | I answered: ok" for i in range(30)]
    episodes.insert(20, "User said: my passport number ends in 4417 | I answered: noted")
    summary = await extractive_summary(episodes, limit=120)
    assert "4417" in summary and len(summary) <= 120 + len("Earlier the user said: ")


@pytest.mark.parametrize("slice_size", [5_000, 1])
async def test_forgetting_drops_faded_unimportant_memories_only(
    bot: Bot, monkeypatch: pytest.MonkeyPatch, slice_size: int
) -> None:
    monkeypatch.setattr("runtime.botcore._consolidation._SLICE", slice_size)  # one at a time
    await bot.memory.load(
        [
            aged("a trivia fact nobody asked about again", 400, importance=0.2),
            aged("the server root password rotates monthly", 400, importance=0.9),
            aged(
                "a trivia fact that keeps coming up", 400, uses=40, used_days_ago=1, importance=0.2
            ),
            aged("a fresh unimportant note", 1, importance=0.1),
        ]
    )
    stats = await consolidate(bot.db)
    assert stats.forgotten == 1
    left = {m.content for m in await bot.memory.export()}
    assert "a trivia fact nobody asked about again" not in left
    assert len(left) == 3


async def test_a_cap_on_the_number_of_memories_is_kept(bot: Bot) -> None:
    await bot.memory.load(
        [aged(f"note {i} about topic {i}", 2, importance=i / 20) for i in range(20)]
    )
    stats = await consolidate(bot.db, RetentionPolicy(max_memories=15))
    assert stats.memories_after == 15 and stats.forgotten == 5
    assert min(m.importance for m in await bot.memory.export()) == 0.25


async def test_export_then_load_elsewhere_keeps_memories_and_their_use(
    bot: Bot, tmp_path: Path
) -> None:
    await bot.memory.store("the plants need water on Sundays", type="procedural", importance=0.7)
    await bot.memory.recall("plants water")
    exported = await bot.memory.export()
    (tmp_path / "other").mkdir()
    async with await Bot.open(tmp_path / "other") as other:
        assert await other.memory.load(exported) == (1, 0)
        assert await other.memory.load(exported) == (0, 1)  # again: reinforced, not copied
        (memory,) = await other.memory.export()
    assert (memory.content, memory.type, memory.importance) == (
        "the plants need water on Sundays",
        MemoryType.PROCEDURAL,
        0.7,
    )
    assert memory.access_count == 2


async def test_consolidation_summarizes_by_the_model_and_falls_back_offline(
    bot: Bot, fake_llm: tuple[FakeLLM, str]
) -> None:
    model, url = fake_llm
    config = local_config(
        bot.workspace, default_model="claude-x", anthropic_api_key="k", anthropic_base_url=url
    )
    provider = open_model(config)
    try:
        summarize = model_summary(provider, trio.CapacityLimiter(1))
        assert summarize is not None
        old = [
            aged(f"User said: fact {i} | I answered: ok", 2, kind=MemoryType.EPISODIC, session="s")
            for i in range(3)
        ]
        model.script(Text("Zoe turns seven on 12 May."))
        await bot.memory.load(old)
        await consolidate(bot.db, summarize=summarize)
        assert [m.content for m in await bot.memory.export()] == ["Zoe turns seven on 12 May."]
        assert "fact 0" in str(model.requests[-1].body["messages"])

        model.script(Fail(400, "bad request"))  # the model refuses: the extractive summary
        await bot.memory.load(
            [attrs.evolve(m, content=m.content.replace("fact", "item")) for m in old]
        )
        stats = await consolidate(bot.db, summarize=summarize)
        assert stats.merged == 3
        contents = [m.content for m in await bot.memory.export()]
        assert any(c.startswith("Earlier the user said: item 0") for c in contents)
    finally:
        await provider.aclose()
    assert model_summary(OfflineModel(), trio.CapacityLimiter(1)) is None


async def test_the_runtime_consolidates_in_the_background(workspace: Path) -> None:
    config = local_config(workspace, consolidate_every_seconds=0.2)
    async with open_runtime(config) as runtime:
        await runtime.bot.memory.load(
            [
                aged(
                    "User said: the gate code is 1234 | I answered: ok",
                    3,
                    kind=MemoryType.EPISODIC,
                    session="http:x",
                )
            ]
        )
        assert episodic_left(workspace) == 1
        await wait_until(lambda: not episodic_left(workspace), within=10)
    async with await Bot.open(workspace) as bot:
        (summary,) = await bot.memory.recall("gate code")
    assert summary.type is MemoryType.FACTUAL and "1234" in summary.content


def episodic_left(workspace: Path) -> int:
    with sqlite3.connect(workspace / "engram.db") as db:
        count: int = db.execute("SELECT count(*) FROM memories WHERE type = 'episodic'").fetchone()[
            0
        ]
    return count


async def test_two_consolidations_at_once_fold_each_episode_once(bot: Bot) -> None:
    await bot.memory.load(
        [
            aged(f"User said: fact {i} | I answered: ok", 2, kind=MemoryType.EPISODIC, session="s")
            for i in range(3)
        ]
    )
    calls: list[int] = []

    async def slow_model(episodes: object) -> str:
        calls.append(1)
        number = len(calls)
        await trio.sleep(0.1)
        return f"summary number {number} of the facts"

    async with trio.open_nursery() as nursery:  # the background pass and a manual one
        nursery.start_soon(consolidate, bot.db, RetentionPolicy(), slow_model)
        nursery.start_soon(consolidate, bot.db, RetentionPolicy(), slow_model)
    assert [m.content for m in await bot.memory.export()] == ["summary number 1 of the facts"]


async def test_concurrent_recalls_of_the_same_memories_never_fail(bot: Bot) -> None:
    """Each recall counts its uses; on PostgreSQL, concurrent batches counting the same rows
    in their own orders deadlocked (`DeadlockDetected` for one of them)."""
    words = ["garden", "budget", "holiday", "boiler", "piano", "wedding", "dentist", "roof"]
    for n in range(40):
        await bot.memory.store(f"note {n}: {words[n % 8]} {words[(n * 3) % 8]} {words[n // 5]}")
    failures: list[BaseException] = []

    async def recall(n: int) -> None:
        for round_ in range(5):
            try:
                await bot.memory.recall(f"{words[(n + round_) % 8]} {words[(n * 5) % 8]}", limit=10)
            except Exception as exc:
                failures.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for n in range(24):
                nursery.start_soon(recall, n)
    assert failures == []
