"""Consolidation and forgetting: old episodes folded into summaries, faded memories pruned,
so the database of a long-lived bot stays bounded."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import groupby
from typing import Any

import attrs

from runtime.botcore._db import Connection, Database, json_field
from runtime.botcore._memory import MemoryType, activation, remember, strength

log = logging.getLogger("runtime.memory")

Summarize = Callable[[Sequence[str]], Awaitable[str]]
"""Episodes (oldest first) → one summary that keeps their facts."""


@attrs.frozen
class RetentionPolicy:
    episodes_after: float = 86_400.0
    """Episodic memories older than this (seconds) are folded into summaries."""
    episodes_per_summary: int = 20
    forget_after: float = 30 * 86_400.0
    """A memory unused this long may be forgotten, if it has also faded ..."""
    forget_below: float = 0.2
    """... below this strength, and ..."""
    keep_importance: float = 0.7
    """... its importance is under this (important memories are never forgotten)."""
    max_memories: int = 100_000
    """Beyond this, the least important and longest unused go first."""


@attrs.frozen
class ConsolidationStats:
    memories_before: int
    memories_after: int
    merged: int
    """Episodes folded into summaries."""
    summaries: int
    forgotten: int


async def consolidate(
    db: Database,
    policy: RetentionPolicy = RetentionPolicy(),
    summarize: Summarize | None = None,
    *,
    now: float | None = None,
) -> ConsolidationStats:
    """One pass: summaries first (each written with the removal of its episodes in one
    transaction, so a crash leaves either both or neither), then forgetting."""
    async with db.maintenance:  # the background pass and a manual one must not both fold
        return await _consolidate(db, policy, summarize or extractive_summary, now)


async def _consolidate(
    db: Database, policy: RetentionPolicy, summarize: Summarize, now: float | None
) -> ConsolidationStats:
    at = time.time() if now is None else now

    def episodes(db: Connection) -> tuple[int, list[tuple[Any, ...]]]:
        total = db.execute("SELECT count(*) FROM memories").fetchone()[0]
        rows = db.execute(
            "SELECT id, content, importance, created_at,"
            f" coalesce({json_field(db, 'session')}, '') AS session"
            " FROM memories WHERE type = 'episodic' AND created_at < ? ORDER BY session, id",
            (at - policy.episodes_after,),
        ).fetchall()
        return total, rows

    before, rows = await db.run(episodes)
    merged = summaries = 0
    for session, group in groupby(rows, key=lambda row: row[4]):
        batch = list(group)
        for start in range(0, len(batch), policy.episodes_per_summary):
            chunk = batch[start : start + policy.episodes_per_summary]
            try:
                summary = await summarize([row[1] for row in chunk])
            except Exception as exc:  # the model failing must not stop the pass
                log.warning("summarizing by model failed (%s); using the extractive summary", exc)
                summary = await extractive_summary([row[1] for row in chunk])
            await db.run(functools.partial(_fold, session=session, chunk=chunk, summary=summary))
            merged += len(chunk)
            summaries += 1

    forgotten = 0
    after_id: int | None = 0
    while after_id is not None:  # in slices, so turns get the database in between
        faded, after_id = await db.run(functools.partial(_forget_slice, policy, at, after_id))
        forgotten += faded
    capped, after = await db.run(lambda db: _cap(db, policy))
    forgotten += capped
    stats = ConsolidationStats(before, after, merged, summaries, forgotten)
    log.info(
        "memory consolidated: %d → %d memories (%d episodes into %d summaries, %d forgotten)",
        before,
        after,
        merged,
        summaries,
        forgotten,
    )
    return stats


def _fold(
    db: Connection, *, session: str, chunk: list[tuple[Any, ...]], summary: str
) -> None:
    first, last = chunk[0][3], chunk[-1][3]
    importance = max(0.5, *(row[2] for row in chunk))
    meta = {"consolidated_from": len(chunk), "session": session, "from": first, "to": last}
    remember(db, summary, MemoryType.FACTUAL, min(importance, 1.0), meta, last)
    db.executemany("DELETE FROM memories WHERE id = ?", [(row[0],) for row in chunk])


_SLICE = 5_000


def _forget_slice(
    policy: RetentionPolicy, now: float, after_id: int, db: Connection
) -> tuple[int, int | None]:
    """Forget the faded among the next `_SLICE` candidates after `after_id`: (forgotten,
    the id to go on from, or None when done)."""
    candidates = db.execute(
        "SELECT id, created_at, accessed_at, access_count FROM memories"
        " WHERE id > ? AND importance < ? AND accessed_at < ? ORDER BY id LIMIT ?",
        (after_id, policy.keep_importance, now - policy.forget_after, _SLICE),
    ).fetchall()
    faded = [
        (memory_id,)
        for memory_id, created, accessed, uses in candidates
        if strength(activation(uses + 1, created, accessed, now)) < policy.forget_below
    ]
    db.executemany("DELETE FROM memories WHERE id = ?", faded)
    return len(faded), (candidates[-1][0] if len(candidates) == _SLICE else None)


def _cap(db: Connection, policy: RetentionPolicy) -> tuple[int, int]:
    """Over `max_memories`, the least important and longest unused go: (removed, left)."""
    total: int = db.execute("SELECT count(*) FROM memories").fetchone()[0]
    over = total - policy.max_memories
    if over <= 0:
        return 0, total
    db.execute(
        "DELETE FROM memories WHERE id IN (SELECT id FROM memories"
        " ORDER BY importance, accessed_at LIMIT ?)",
        (over,),
    )
    return over, total - over


async def extractive_summary(episodes: Sequence[str], limit: int = 1200) -> str:
    """The summary without a model: what the user said, statements before questions, in
    the order it was said, within `limit` characters. Facts are in the user's words."""
    said: list[str] = []
    for episode in episodes:
        text = episode.removeprefix("User said: ").split(" | I answered: ", 1)[0].strip()
        if text and text not in said:
            said.append(text[:300])
    chosen: set[int] = set()
    size = 0
    for index in sorted(range(len(said)), key=lambda i: (said[i].endswith("?"), i)):
        if size + len(said[index]) + 2 > limit:
            continue
        chosen.add(index)
        size += len(said[index]) + 2
    return "Earlier the user said: " + "; ".join(said[i] for i in sorted(chosen))
