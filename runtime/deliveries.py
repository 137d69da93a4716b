"""The webhook deliveries each source sent lately, in the bot's database (`SeenDeliveries`).

Kept for `window` seconds, and at most `limit` of them (the oldest go first), so the table
stays small; a replay older than the window is processed again. Standard Webhooks senders
retry for about a day and sign a timestamp, GitHub does not retry on its own.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from runtime.botcore import Connection, Database

WINDOW_SECONDS = 3 * 86_400.0
LIMIT = 100_000
_COUNT_EVERY = 64
"""Keeping to the limit walks the table's index: done on every 64th delivery only, so the
table can exceed the limit by at most 64 rows."""


class Deliveries:
    """`adapters.webhook.SeenDeliveries` on the bot's database."""

    def __init__(self, db: Database, *, window: float = WINDOW_SECONDS, limit: int = LIMIT) -> None:
        self._db = db
        self._window = window
        self._limit = limit
        self._records = 0

    async def seen(self, source: str, keys: Sequence[str]) -> bool:
        since = time.time() - self._window
        marks = ", ".join("?" * len(keys))

        def find(db: Connection) -> bool:
            row = db.execute(
                "SELECT 1 FROM webhook_deliveries"
                f" WHERE source = ? AND key IN ({marks}) AND seen_at >= ? LIMIT 1",
                (source, *keys, since),
            ).fetchone()
            return row is not None

        return await self._db.run(find)

    async def record(self, source: str, keys: Sequence[str]) -> None:
        now = time.time()
        self._records += 1
        count_them = self._records % _COUNT_EVERY == 1

        def write(db: Connection) -> None:
            db.executemany(
                "INSERT INTO webhook_deliveries (source, key, seen_at) VALUES (?, ?, ?)"
                " ON CONFLICT (source, key) DO UPDATE SET seen_at = excluded.seen_at",
                [(source, key, now) for key in keys],
            )
            db.execute("DELETE FROM webhook_deliveries WHERE seen_at < ?", (now - self._window,))
            if not count_them:
                return
            db.execute(
                "DELETE FROM webhook_deliveries WHERE seen_at <="
                " (SELECT seen_at FROM webhook_deliveries ORDER BY seen_at DESC LIMIT 1 OFFSET ?)",
                (self._limit,),
            )

        await self._db.run(write)
