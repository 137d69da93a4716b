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

OUTBOX_GRACE = 30.0
"""How long an answer the channel sends itself may take to be confirmed before another try
(by another replica, when the one sending it died)."""

NOTIFY_WAITING = "botcore_waiting"
"""The PostgreSQL notification of a message accepted: replicas look for sessions to take up."""
NOTIFY_ANSWERED = "botcore_answered"
"""The PostgreSQL notification of a message answered: replicas look for the answers their
clients wait for."""

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


class Answered(Exception):
    """The message was answered already: its turn is not run again."""


@attrs.frozen
class WaitingSession:
    """A session with messages to answer that no other replica holds."""

    key: str
    ids: tuple[int, ...]
    """Its unanswered messages, oldest first."""
    ours: bool
    """Whether this replica holds it already (or held it last)."""
    lapsed: bool = False
    """Whether another replica held it and stopped renewing (died, paused, cut off): not
    given back, which would have expired it at 0."""


class Inbox:
    def __init__(self, db: Database, *, outbox_grace: float = OUTBOX_GRACE) -> None:
        self._db = db
        self.outbox_grace = outbox_grace

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
        only while the lease holds (else `LeaseLost`: another replica has the session) and
        while the message is not answered (else `Answered`: a stale take-up queued a message
        answered meanwhile); either way the turn does not start."""
        now = time.time()

        def mark(db: Connection) -> None:
            if lease is None:
                db.execute(
                    "UPDATE inbox SET state = 'processing', updated_at = ?"
                    " WHERE id = ? AND state IN ('received', 'processing')",
                    (now, entry_id),
                )
                return
            row = db.execute(
                f"SELECT state FROM inbox WHERE id = ? AND {fence_sql(db)}",
                (entry_id, lease.key, lease.owner, lease.epoch),
            ).fetchone()
            if row is None:
                raise LeaseLost(
                    f"session {lease.key} is no longer this replica's (epoch {lease.epoch})"
                )
            if row[0] not in ("received", "processing"):
                raise Answered(f"message {entry_id} is answered already")
            db.execute(
                "UPDATE inbox SET state = 'processing', updated_at = ?"
                " WHERE id = ? AND state IN ('received', 'processing')",
                (now, entry_id),
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
        outbox: bool = False,
    ) -> None:
        """Store the turn's history and the reply together: one transaction, so a crash can
        never leave a turn in the history whose message is still waiting to be handled.
        With `outbox` (the channel sends the answer itself), the answer is also put in the
        outbox, in the same transaction, until `sent` says it got there.

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
                # At commit: wakes the replicas whose clients wait for this answer.
                db.execute("SELECT pg_notify(?, '')", (NOTIFY_ANSWERED,))
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
            if outbox:
                db.execute(
                    "INSERT INTO outbox (inbox_id, next_at, attempts) VALUES (?, ?, 0)"
                    " ON CONFLICT DO NOTHING",
                    (entry_id, now + self.outbox_grace),
                )

        await self._db.run(write)

    async def sent(self, entry_id: int, delivered: bool) -> None:
        """What became of an answer in the outbox: gone from it once delivered; tried again
        later (by `due_answers`) when the channel gave up on it."""
        if delivered:
            await self._db.run(
                lambda db: db.execute("DELETE FROM outbox WHERE inbox_id = ?", (entry_id,))
            )
            return
        retry = time.time() + self.outbox_grace
        await self._db.run(
            lambda db: db.execute(
                "UPDATE outbox SET next_at = ? WHERE inbox_id = ?", (retry, entry_id)
            )
        )

    async def next_unconfirmed(self) -> float | None:
        """When the first answer of the outbox is due to be sent again (wall clock)."""
        row = await self._db.run(lambda db: db.execute("SELECT min(next_at) FROM outbox").fetchone())
        return None if row is None or row[0] is None else float(row[0])

    async def due_answers(self, limit: int = 20) -> list[tuple[InboxEntry, int]]:
        """Answers in the outbox that nobody confirmed within the grace time (the process
        that was sending them died, or the channel gave up): each taken for this process for
        another grace time, with how often it was taken before. Replicas take different ones
        (SKIP LOCKED)."""
        now = time.time()
        grace = self.outbox_grace

        def take(db: Connection) -> list[tuple[InboxEntry, int]]:
            lock = " FOR UPDATE SKIP LOCKED" if db.dialect == "postgresql" else ""
            rows = db.execute(
                "UPDATE outbox SET next_at = ?, attempts = attempts + 1 WHERE inbox_id IN ("
                f" SELECT inbox_id FROM outbox WHERE next_at <= ? ORDER BY next_at LIMIT ?{lock})"
                " RETURNING inbox_id, attempts",
                (now + grace, now, limit),
            ).fetchall()
            if not rows:
                return []
            attempts = {int(entry_id): int(count) for entry_id, count in rows}
            marks = ", ".join("?" * len(attempts))
            found = db.execute(
                f"SELECT {_COLUMNS} FROM inbox WHERE id IN ({marks}) ORDER BY id",
                tuple(attempts),
            ).fetchall()
            return [(entry, attempts[entry.id] - 1) for entry in map(_entry, found)]

        return await self._db.run(take)

    async def dead(self, entry_id: int, reply: Reply) -> None:
        """Set a message aside that kept crashing its session; one answered meanwhile (by
        another replica) keeps its answer."""
        body = json.dumps(_converter.unstructure(reply))
        await self._db.run(
            lambda db: db.execute(
                "UPDATE inbox SET state = 'dead', reply = ?, updated_at = ?"
                " WHERE id = ? AND state IN ('received', 'processing')",
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

    async def waiting_sessions(self, owner: str, limit: int = 100) -> list[WaitingSession]:
        """Sessions with messages not answered yet that no other replica holds (`owner` is
        this one), the longest waiting first."""
        now = DATABASE_NOW
        rows = await self._db.run(
            lambda db: db.execute(
                "SELECT i.channel, i.session_id, array_agg(i.id ORDER BY i.id),"
                " coalesce(bool_or(l.owner = ?), false),"
                f" coalesce(bool_or(l.owner <> ? AND l.expires_at > 0), false) FROM inbox i"
                " LEFT JOIN session_leases l ON l.session_key = i.channel || ':' || i.session_id"
                " WHERE i.state IN ('received', 'processing')"
                f" AND (l.session_key IS NULL OR l.owner = ? OR l.expires_at <= {now})"
                " GROUP BY i.channel, i.session_id ORDER BY min(i.id) LIMIT ?",
                (owner, owner, owner, limit),
            ).fetchall()
        )
        return [
            WaitingSession(f"{channel}:{session}", tuple(ids), bool(ours), bool(lapsed))
            for channel, session, ids, ours, lapsed in rows
        ]

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

    async def answers_to(self, ids: Sequence[int]) -> list[InboxEntry]:
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

    async def answered(
        self, channel: str, session_id: str, after: int, limit: int
    ) -> tuple[list[tuple[InboxEntry, float]], bool]:
        """A session's answered messages after inbox id `after`, oldest first, at most
        `limit`, each with when it was answered; and whether one is still being answered.

        The page stops before the first message not answered yet: a session is answered
        in order, so a client that polls on from the last id it saw misses nothing."""

        def read(db: Connection) -> tuple[list[tuple[InboxEntry, float]], bool]:
            rows = db.execute(
                f"SELECT {_COLUMNS}, updated_at FROM inbox"
                " WHERE channel = ? AND session_id = ? AND id > ? ORDER BY id LIMIT ?",
                (channel, session_id, after, limit),
            ).fetchall()
            page: list[tuple[InboxEntry, float]] = []
            for row in rows:
                entry = _entry(row)
                if entry.state not in ("replied", "dead"):
                    return page, True
                page.append((entry, float(row[-1])))
            return page, False

        return await self._db.run(read)

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
    if db.dialect == "postgresql":  # at commit: wakes the replicas to take it up
        db.execute("SELECT pg_notify(?, '')", (NOTIFY_WAITING,))
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
