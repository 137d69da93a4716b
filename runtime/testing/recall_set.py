"""The labelled recall set (`tests/data/recall_set.json`) and how recall is scored on it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import attrs
import trio

from runtime.botcore import Bot, Connection
from runtime.botcore._memory import EPISODE_IMPORTANCE, MemoryType, episode_of, remember

RECALL_SET = Path(__file__).resolve().parents[2] / "tests" / "data" / "recall_set.json"


@attrs.frozen
class RecallScore:
    recall_at_k: float
    k: int
    questions: int
    misses: tuple[tuple[str, str], ...]
    """(question, the memory it should have found) for each miss."""


async def score_recall(bot: Bot, *, k: int = 5, path: Path = RECALL_SET) -> RecallScore:
    """Store the set's memories in `bot` (an empty one), ask every question, and count the
    questions whose labelled memory is among the first `k` recalled."""
    data = json.loads(await trio.Path(path).read_text(encoding="utf-8"))
    ids = {}
    for memory in data["memories"]:
        ids[memory["key"]] = await bot.memory.store(
            memory["content"], type=memory["type"], importance=memory["importance"]
        )
    misses = []
    for item in data["questions"]:
        found = [m.id for m in await bot.memory.recall(item["question"], limit=k)]
        if ids[item["answer"]] not in found:
            misses.append((item["question"], item["answer"]))
    total = len(data["questions"])
    return RecallScore(round(1 - len(misses) / total, 3), k, total, tuple(misses))


CONVERSATION_SET = RECALL_SET.with_name("conversation_set.json")


@attrs.frozen
class Ranking:
    """How well recall ranks the evidence of a set's questions of one type."""

    questions: int
    hit_at: Mapping[int, float]
    """Hit@k: the share of questions with an evidence memory among the first k recalled."""
    mrr: float
    """Mean reciprocal rank of the first evidence memory (0 when not in the first 10)."""


async def rank_recall_set(bot: Bot, *, path: Path = RECALL_SET) -> dict[str, Ranking]:
    """Hit@1/5/10 and MRR on the labelled facts (`all`: the set has no question types)."""
    data = json.loads(await trio.Path(path).read_text(encoding="utf-8"))
    ids = {}
    for memory in data["memories"]:
        ids[memory["key"]] = await bot.memory.store(
            memory["content"], type=memory["type"], importance=memory["importance"]
        )
    asked = [("all", item["question"], {ids[item["answer"]]}) for item in data["questions"]]
    return await _rank(bot, asked, None)


async def rank_conversations(bot: Bot, *, path: Path = CONVERSATION_SET) -> dict[str, Ranking]:
    """Store the chats' turns as the inbox stores episodes (each at its own time), then
    Hit@1/5/10 and MRR per question type, asked a day after the last turn."""
    data = json.loads(await trio.Path(path).read_text(encoding="utf-8"))
    turns = [(chat["key"], turn) for chat in data["conversations"] for turn in chat["turns"]]

    def write(db: Connection) -> dict[str, int]:
        ids = {}
        for chat, turn in turns:
            episode = episode_of([("user", turn["user"]), ("assistant", turn["reply"])])
            at = datetime.fromisoformat(turn["at"]).timestamp()
            meta = {"session": chat, "turn": turn["key"]}
            ids[turn["key"]], _ = remember(
                db,
                episode,
                MemoryType.EPISODIC,
                EPISODE_IMPORTANCE,
                meta,
                at,
                speaker=turn["speaker"],
                conversation=chat,
            )
        return ids

    ids = await bot.db.run(write)
    last = max(datetime.fromisoformat(turn["at"]).timestamp() for _, turn in turns)
    asked = [
        (item["type"], item["question"], {ids[key] for key in item["evidence"]})
        for item in data["questions"]
    ]
    return await _rank(bot, asked, last + 86_400)


async def _rank(
    bot: Bot, asked: list[tuple[str, str, set[int]]], now: float | None
) -> dict[str, Ranking]:
    ranks: dict[str, list[int | None]] = {}
    for kind, question, evidence in asked:
        found = [m.id for m in await bot.memory.recall(question, limit=10, now=now)]
        rank = next((n for n, memory_id in enumerate(found, 1) if memory_id in evidence), None)
        ranks.setdefault(kind, []).append(rank)
    ranks["all"] = (
        [rank for kind in list(ranks) for rank in ranks[kind]]
        if len(ranks) > 1
        else ranks.get("all", [])
    )
    return {
        kind: Ranking(
            len(found),
            {k: round(sum(1 for r in found if r and r <= k) / len(found), 3) for k in (1, 5, 10)},
            round(sum(1 / r for r in found if r) / len(found), 3),
        )
        for kind, found in ranks.items()
    }
