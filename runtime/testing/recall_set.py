"""The labelled recall set (`tests/data/recall_set.json`) and how recall is scored on it."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import trio

from runtime.botcore import Bot

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
