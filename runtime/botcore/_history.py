from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs

from runtime.botcore._db import Connection, Database, json_field

Role = Literal["user", "assistant"]


@attrs.frozen
class HistoryEntry:
    role: Role
    content: str
    turn_id: str
    created_at: float


class History:
    """The conversation of each session, in the bot's database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append_turn(
        self,
        session_key: str,
        turn_id: str,
        exchange: Sequence[tuple[Role, str]],
        usage: Mapping[str, int] | None = None,
    ) -> None:
        """Store one turn's messages together (all or nothing); usage goes on the last one."""
        await self._db.run(lambda db: insert_turn(db, session_key, turn_id, exchange, usage or {}))

    async def recent(self, session_key: str, limit: int = 20) -> list[HistoryEntry]:
        """The last `limit` messages of the session, oldest first."""

        def select(db: Connection) -> list[HistoryEntry]:
            rows = db.execute(
                "SELECT role, content, turn_id, created_at FROM history WHERE session_key = ?"
                " ORDER BY id DESC LIMIT ?",
                (session_key, limit),
            ).fetchall()
            return [HistoryEntry(*row) for row in reversed(rows)]

        return await self._db.run(select)

    async def turns(self, session_key: str) -> int:
        return await self._db.run(
            lambda db: db.execute(
                "SELECT count(DISTINCT turn_id) FROM history WHERE session_key = ?", (session_key,)
            ).fetchone()[0]
        )

    async def clear(self, session_key: str) -> int:
        """Forget the session's conversation: its history, the episodes stored from its
        turns and the summaries consolidated from them (the next turn must not recall what
        was forgotten). Facts the bot was told to remember stay. The history rows removed."""

        def forget(db: Connection) -> int:
            removed: int = db.execute(
                "DELETE FROM history WHERE session_key = ?", (session_key,)
            ).rowcount
            session, folded = json_field(db, "session"), json_field(db, "consolidated_from")
            db.execute(
                f"DELETE FROM memories WHERE {session} = ?"
                f" AND (type = 'episodic' OR {folded} IS NOT NULL)",
                (session_key,),
            )
            return removed

        return await self._db.run(forget)


def insert_turn(
    db: Connection,
    session_key: str,
    turn_id: str,
    exchange: Sequence[tuple[Role, str]],
    usage: Mapping[str, int],
) -> None:
    """Insert one turn's messages inside the caller's transaction."""
    if not exchange:
        return
    now, last = time.time(), len(exchange) - 1
    db.executemany(
        "INSERT INTO history (session_key, turn_id, role, content, usage, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                session_key,
                turn_id,
                role,
                content,
                json.dumps(dict(usage)) if i == last else "{}",
                now,
            )
            for i, (role, content) in enumerate(exchange)
        ],
    )
