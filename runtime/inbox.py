"""The durable inbox: a message is in the database before its channel hears it was accepted.

States: `received` → `processing` → `replied`, or `dead` when it kept crashing its session.
After a crash, `received` and `processing` rows are handled again, in order; the channel's
message id (an HTTP `Idempotency-Key`, a Telegram update id) makes a repeat return the stored
reply instead of running a second turn.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import cattrs

from adapters import Inbound, KeyReused, Reply
from runtime.botcore import Connection, Database, MemoryType
from runtime.botcore._history import Role, insert_turn
from runtime.botcore._memory import EPISODE_IMPORTANCE, episode_of, remember
from runtime.leases import DATABASE_NOW, Lease, LeaseLost, fence_sql

State = Literal["received", "processing", "replied", "dead"]

_converter = cattrs.Converter()


@attrs.frozen
class InboxEntry:
    id: int
    channel: str
    session_id: str
    text: str
    state: State
    message_id: str | None = None
    sender: str | None = None
    reply: Reply | None = None
    address: dict[str, Any] | None = None
    """The channel's reply address (`Inbound.address`, unstructured)."""

    @property
    def session_key(self) -> str:
        return f"{self.channel}:{self.session_id}"


class Inbox:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def accept(self, inbound: Inbound) -> tuple[InboxEntry, bool]:
        """Record the message; (entry, True) when new, (the earlier entry, False) on a repeat.

        A message id is scoped to its channel and session. Reused there for another text, it
        is `KeyReused`: replaying the first answer would answer a question nobody asked now.
        """
        now = time.time()
        address = None if inbound.address is None else _converter.unstructure(inbound.address)

        def insert(db: Connection) -> tuple[InboxEntry, bool]:
            if inbound.message_id is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS} FROM inbox"
                    " WHERE channel = ? AND session_id = ? AND message_id = ?",
                    (inbound.channel, inbound.session_id, inbound.message_id),
                ).fetchone()
                if row is not None:
                    earlier = _entry(row)
                    if earlier.text != inbound.text:
                        raise KeyReused(
                            f"the key {inbound.message_id!r} was already used in session"
                            f" {inbound.session_id!r} for a different message; use a new key"
                            " for a new message"
                        )
                    return earlier, False
            entry = insert_entry(
                db,
                inbound.channel,
                inbound.session_id,
                inbound.text,
                message_id=inbound.message_id,
                sender=inbound.sender,
                address=address,
                now=now,
            )
            assert entry is not None  # its key was looked up above
            return entry, True

        return await self._db.run(insert)

    async def withdraw(self, entry_id: int) -> None:
        """Forget a message that was refused after all (its session's mailbox was full)."""
        await self._db.run(lambda db: db.execute("DELETE FROM inbox WHERE id = ?", (entry_id,)))

    async def processing(self, entry_id: int, *, lease: Lease | None = None) -> None:
        """Mark a message as being handled; an answered one stays answered. Under a `lease`,
        only while the lease holds and the message is not answered yet: otherwise
        `LeaseLost`, and the turn does not start (another replica has the session, or a
        stale take-up queued a message this replica answered meanwhile)."""
        now = time.time()

        def mark(db: Connection) -> None:
            if lease is None:
                db.execute(
                    "UPDATE inbox SET state = 'processing', updated_at = ?"
                    " WHERE id = ? AND state IN ('received', 'processing')",
                    (now, entry_id),
                )
                return
            changed = db.execute(
                "UPDATE inbox SET state = 'processing', updated_at = ?"
                " WHERE id = ? AND state IN ('received', 'processing')"
                f" AND {fence_sql(db)}",
                (now, entry_id, lease.key, lease.owner, lease.epoch),
            ).rowcount
            if changed != 1:
                raise LeaseLost(
                    f"message {entry_id} is answered already or session {lease.key} is no"
                    f" longer this replica's (epoch {lease.epoch})"
                )

        await self._db.run(mark)

    async def complete(
        self,
        entry_id: int,
        session_key: str,
        exchange: Sequence[tuple[Role, str]],
        usage: Mapping[str, int],
        reply: Reply,
        *,
        lease: Lease | None = None,
    ) -> None:
        """Store the turn's history and the reply together: one transaction, so a crash can
        never leave a turn in the history whose message is still waiting to be handled.

        Under a `lease` (replicas on PostgreSQL) the reply is written first, and only while
        the lease holds: otherwise nothing is written and `LeaseLost` is raised, so a replica
        that lost the session while it worked changes nothing."""
        body = json.dumps(_converter.unstructure(reply))

        now = time.time()
        episode = episode_of(exchange)

        def write(db: Connection) -> None:
            if lease is not None:
                changed = db.execute(
                    "UPDATE inbox SET state = 'replied', reply = ?, updated_at = ?"
                    f" WHERE id = ? AND state <> 'replied' AND {fence_sql(db)}",
                    (body, now, entry_id, lease.key, lease.owner, lease.epoch),
                ).rowcount
                if changed != 1:
                    raise LeaseLost(
                        f"session {lease.key} is no longer this replica's (epoch {lease.epoch})"
                    )
            insert_turn(db, session_key, reply.turn_id, exchange, usage)
            if episode:
                meta = {"session": session_key, "turn": reply.turn_id}
                sender = db.execute("SELECT sender FROM inbox WHERE id = ?", (entry_id,)).fetchone()
                remember(
                    db,
                    episode,
                    MemoryType.EPISODIC,
                    EPISODE_IMPORTANCE,
                    meta,
                    now,
                    speaker=sender and sender[0],
                    conversation=session_key,
                )
            if lease is None:
                db.execute(
                    "UPDATE inbox SET state = 'replied', reply = ?, updated_at = ? WHERE id = ?",
                    (body, now, entry_id),
                )

        await self._db.run(write)

    async def dead(self, entry_id: int, reply: Reply) -> None:
        body = json.dumps(_converter.unstructure(reply))
        await self._db.run(
            lambda db: db.execute(
                "UPDATE inbox SET state = 'dead', reply = ?, updated_at = ? WHERE id = ?",
                (body, time.time(), entry_id),
            )
        )

    async def unfinished(self) -> list[InboxEntry]:
        """Messages accepted but not answered, oldest first (per-session order kept)."""
        rows = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE state IN ('received', 'processing')"
                " ORDER BY id"
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def waiting_sessions(self, owner: str, limit: int = 100) -> list[tuple[str, str, list[int]]]:
        """Sessions with messages not answered yet that no other replica holds (`owner` is
        this one): (channel, session id, the messages' ids), the longest waiting first."""
        rows = await self._db.run(
            lambda db: db.execute(
                "SELECT i.channel, i.session_id, array_agg(i.id ORDER BY i.id) FROM inbox i"
                " WHERE i.state IN ('received', 'processing') AND NOT EXISTS ("
                " SELECT 1 FROM session_leases l"
                " WHERE l.session_key = i.channel || ':' || i.session_id AND l.owner <> ?"
                f" AND l.expires_at > {DATABASE_NOW})"
                " GROUP BY i.channel, i.session_id ORDER BY min(i.id) LIMIT ?",
                (owner, limit),
            ).fetchall()
        )
        return [(str(channel), str(session), list(ids)) for channel, session, ids in rows]

    async def unfinished_of(self, channel: str, session_id: str) -> list[InboxEntry]:
        """One session's messages accepted but not answered, oldest first."""
        rows = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE channel = ? AND session_id = ?"
                " AND state IN ('received', 'processing') ORDER BY id",
                (channel, session_id),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def answered(self, ids: Sequence[int]) -> list[InboxEntry]:
        """Those of `ids` that are answered (replied, or dead-lettered with their reply)."""
        marks = ", ".join("?" * len(ids))
        rows = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE id IN ({marks})"
                " AND state IN ('replied', 'dead') AND reply IS NOT NULL",
                tuple(ids),
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def dead_letters(self) -> list[InboxEntry]:
        rows = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE state = 'dead' ORDER BY id"
            ).fetchall()
        )
        return [_entry(row) for row in rows]

    async def retry(self, entry_id: int) -> bool:
        """Put a dead letter back to be handled at the next start; False if there is none."""
        changed: int = await self._db.run(
            lambda db: (
                db.execute(
                    "UPDATE inbox SET state = 'received', reply = NULL, updated_at = ?"
                    " WHERE id = ? AND state = 'dead'",
                    (time.time(), entry_id),
                ).rowcount
            )
        )
        return changed == 1

    async def _set_state(self, entry_id: int, state: State) -> None:
        await self._db.run(
            lambda db: db.execute(
                "UPDATE inbox SET state = ?, updated_at = ? WHERE id = ?",
                (state, time.time(), entry_id),
            )
        )


def insert_entry(
    db: Connection,
    channel: str,
    session_id: str,
    text: str,
    *,
    message_id: str | None,
    sender: str | None = None,
    address: dict[str, Any] | None = None,
    now: float,
) -> InboxEntry | None:
    """Add a `received` message inside the caller's transaction; None when its message id
    is in the session already (the runtime's own messages, a fired schedule, use this)."""
    row = db.execute(
        "INSERT INTO inbox (channel, session_id, message_id, sender, text, state,"
        " created_at, updated_at, address) VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?)"
        " ON CONFLICT DO NOTHING RETURNING id",
        (
            channel,
            session_id,
            message_id,
            sender,
            text,
            now,
            now,
            None if address is None else json.dumps(address),
        ),
    ).fetchone()
    if row is None:
        return None
    return InboxEntry(
        int(row[0]), channel, session_id, text, "received", message_id, sender, address=address
    )


_COLUMNS = "id, channel, session_id, text, state, message_id, sender, reply, address"


def _entry(row: tuple[object, ...]) -> InboxEntry:
    reply = row[7]
    return InboxEntry(
        id=int(str(row[0])),
        channel=str(row[1]),
        session_id=str(row[2]),
        text=str(row[3]),
        state=str(row[4]),  # type: ignore[arg-type]
        message_id=None if row[5] is None else str(row[5]),
        sender=None if row[6] is None else str(row[6]),
        reply=None if reply is None else _converter.structure(json.loads(str(reply)), Reply),
        address=None if row[8] is None else json.loads(str(row[8])),
    )
