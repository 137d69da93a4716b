"""Recall quality on the labelled set: the bench reports it, this test guards it."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.botcore import Bot
from runtime.testing.recall_set import RECALL_SET, score_recall


def test_the_set_is_big_enough_and_every_label_names_a_memory() -> None:
    data = json.loads(RECALL_SET.read_text(encoding="utf-8"))
    keys = [m["key"] for m in data["memories"]]
    assert len(keys) >= 200 and len(set(keys)) == len(keys)
    assert len(data["questions"]) >= 50
    assert {q["answer"] for q in data["questions"]} <= set(keys)


async def test_recall_at_5_stays_at_or_above_0_85(workspace: Path, database: Path | str) -> None:
    async with await Bot.open(workspace, database) as bot:
        score = await score_recall(bot, k=5)
    assert score.recall_at_k >= 0.85, f"recall@5 {score.recall_at_k}; missed: {score.misses}"
