"""Session ownership across replicas: one lease row per session, with a fencing epoch.

On PostgreSQL several replicas share one inbox. Each session is handled by the replica that
holds its lease (`session_leases`: owner, epoch, expiry on the database's clock), so its
messages are answered strictly in order by one process. A lease is renewed while the replica
uses it; one that lapses can be taken by another replica, which bumps the epoch. Every write
of a turn's results is conditional on the epoch its replica holds (`Inbox.complete`), so a
replica that was paused past its lease changes nothing when it wakes up. A replica that cannot
renew stops its turns on that session before the lease can expire: each turn runs in the
cancel scope of its lease (`Lease.scope`), whose deadline is the expiry as this process
knows it, less a margin for clock rate and the renewal's own round trip.

SQLite has one process: it needs no leases, and the runtime takes none there.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import attrs
import trio

from runtime.botcore import Connection, Database

log = logging.getLogger("runtime.leases")

LEASE_SECONDS = 4.0
"""How long a lease lasts unless renewed: how soon another replica takes over a dead one's
sessions (plus its claim poll)."""
MARGIN = 1.0
"""How long before its expiry a replica stops working under a lease it could not renew."""
IDLE_RELEASE = 15.0
"""A lease of a session with nothing under way is given back after this long."""

DATABASE_NOW = "extract(epoch from clock_timestamp())"
"""The database's clock, the one every replica's lease is measured on."""


class LeaseLost(Exception):
    """The session's lease is no longer this replica's: another one handles the message."""


@attrs.define(eq=False)
class Lease:
    """This replica's hold on one session: the epoch it writes under, and the local deadline
    before which the hold is certain."""

    key: str
    owner: str
    epoch: int
    deadline: float
    """trio time at which this replica must stop using the lease (expiry less `MARGIN`)."""
    busy: int = 0
    """Messages of the session queued or under way here."""
    idle_since: float = 0.0
    lost: bool = False
    taken: set[int] = attrs.field(factory=set)
    """The inbox ids queued under this lease whose answer may not be read back yet."""
    _scopes: set[trio.CancelScope] = attrs.field(factory=set)

    def scope(self) -> trio.CancelScope:
        """A cancel scope that ends when the lease does: moved on at each renewal, cancelled
        when it is lost. Leave it with `done(scope)`."""
        scope = trio.CancelScope(deadline=self.deadline)
        if self.lost:
            scope.cancel()
        self._scopes.add(scope)
        return scope

    def done(self, scope: trio.CancelScope) -> None:
        self._scopes.discard(scope)

    def _renewed(self, deadline: float) -> None:
        self.deadline = deadline
        for scope in self._scopes:
            scope.deadline = deadline

    def lose(self) -> None:
        """This replica no longer holds the session: what runs under the lease stops."""
        self.lost = True
        for scope in self._scopes:
            scope.cancel()


class SessionLeases:
    """This replica's leases on one database, and the task that renews them."""

    def __init__(
        self,
        db: Database,
        *,
        owner: str | None = None,
        seconds: float = LEASE_SECONDS,
        margin: float = MARGIN,
    ) -> None:
        self._db = db
        self.owner = owner or uuid.uuid4().hex[:16]
        self.seconds = seconds
        self.margin = min(margin, seconds / 2)
        self._held: dict[str, Lease] = {}

    def statistics(self) -> int:
        """How many leases this replica holds now."""
        return sum(1 for lease in self._held.values() if not lease.lost)

    def held(self, key: str) -> Lease | None:
        """The lease on `key` if this replica certainly holds it now."""
        lease = self._held.get(key)
        if lease is None or lease.lost or trio.current_time() >= lease.deadline:
            return None
        return lease

    async def acquire(self, key: str) -> Lease | None:
        """The session's lease for this replica: renewed if it is ours, taken (the epoch
        moved on) if it is free or lapsed; None while another replica holds it."""
        held = self.held(key)
        if held is not None:
            return held
        sent = trio.current_time()
        seconds, owner = self.seconds, self.owner

        def take(db: Connection) -> int | None:
            # Not one INSERT ... ON CONFLICT DO UPDATE ... WHERE: that locks the row even when
            # another replica holds it, until this call's whole batch commits, and the
            # holder's renewal (and whatever waits on it) queues behind. An UPDATE skips a
            # row its WHERE does not match without locking it.
            row = db.execute(
                "INSERT INTO session_leases (session_key, owner, epoch, expires_at)"
                f" VALUES (?, ?, 1, {DATABASE_NOW} + ?)"
                " ON CONFLICT (session_key) DO NOTHING RETURNING epoch",
                (key, owner, seconds),
            ).fetchone()
            if row is None:
                row = db.execute(
                    "UPDATE session_leases SET owner = ?, epoch = epoch + 1,"
                    f" expires_at = {DATABASE_NOW} + ?"
                    f" WHERE session_key = ? AND (expires_at < {DATABASE_NOW} OR owner = ?)"
                    " RETURNING epoch",
                    (owner, seconds, key, owner),
                ).fetchone()
            return None if row is None else int(row[0])

        epoch = await self._db.run_alone(take)
        if epoch is None:
            return None
        lease = Lease(
            key, owner, epoch, sent + seconds - self.margin, idle_since=trio.current_time()
        )
        old = self._held.get(key)
        if old is not None and not old.lost:
            old.lose()  # our own earlier hold lapsed: what ran under it is fenced out
        self._held[key] = lease
        return lease

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the leases in use, give back idle ones, and drop the lost, until cancelled;
        then give every lease back, so another replica need not wait for them to lapse."""
        log.info("holding session leases as owner %s (%gs each)", self.owner, self.seconds)
        task_status.started()
        try:
            while True:
                await trio.sleep(self.seconds / 4)
                await self._renew()
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 5):
                await self._release(list(self._held.values()))

    async def _renew(self) -> None:
        now = trio.current_time()
        idle = [
            lease
            for lease in self._held.values()
            if not lease.busy and now - lease.idle_since > IDLE_RELEASE
        ]
        await self._release(idle)
        leases = [lease for lease in self._held.values() if not lease.lost]
        if not leases:
            return
        sent = trio.current_time()
        owner, seconds = self.owner, self.seconds

        def renew(db: Connection) -> set[tuple[str, int]]:
            rows = db.execute(
                f"UPDATE session_leases SET expires_at = {DATABASE_NOW} + ?"
                " WHERE owner = ? AND session_key = ANY(?)"
                f" AND expires_at > {DATABASE_NOW} RETURNING session_key, epoch",
                (seconds, owner, [lease.key for lease in leases]),
            ).fetchall()
            return {(str(key), int(epoch)) for key, epoch in rows}

        try:
            with trio.fail_after(self.seconds / 2):
                kept = await self._db.run_alone(renew, urgent=True)
        except Exception as exc:
            # The deadlines stay where they are: the turns stop before the leases lapse.
            log.warning("could not renew %d session lease(s): %s", len(leases), exc)
            return
        for lease in leases:
            if (lease.key, lease.epoch) in kept:
                lease._renewed(sent + seconds - self.margin)
            else:
                self._drop(lease)

    async def _release(self, leases: list[Lease]) -> None:
        if not leases:
            return
        for lease in leases:
            self._drop(lease)
        pairs = [(lease.key, lease.epoch) for lease in leases]
        owner = self.owner

        def release(db: Connection) -> None:
            for key, epoch in pairs:
                # Lapsed, not deleted: the epoch only ever moves on, so no later hold can
                # have the number of an earlier one.
                db.execute(
                    "UPDATE session_leases SET expires_at = 0"
                    " WHERE session_key = ? AND owner = ? AND epoch = ?",
                    (key, owner, epoch),
                )

        try:
            await self._db.run_alone(release, urgent=True)
        except Exception as exc:
            log.warning("could not give back %d session lease(s): %s", len(pairs), exc)

    def _drop(self, lease: Lease) -> None:
        if self._held.get(lease.key) is lease:
            del self._held[lease.key]
        lease.lose()


class Leadership:
    """One replica of the fleet at a time does a job (long-polls a Telegram token): the one
    that holds the job's lease, a row of the same table as the sessions' (`adapters.Lead`)."""

    def __init__(self, leases: SessionLeases, key: str, *, retry: float | None = None) -> None:
        self._leases = leases
        self.key = key
        self._retry = leases.seconds / 4 if retry is None else retry

    async def __call__(self, job: Callable[[], Awaitable[None]]) -> None:
        waiting_logged = False
        while True:
            try:
                lease = await self._leases.acquire(self.key)
            except Exception as exc:
                log.warning("could not ask for the lease of %s: %s", self.key, exc)
                lease = None
            if lease is None:
                if not waiting_logged:
                    log.info(
                        "%s is done by another replica; this one takes over if it stops", self.key
                    )
                    waiting_logged = True
                await trio.sleep(self._retry)
                continue
            waiting_logged = False
            log.info("%s is done by this replica now (epoch %d)", self.key, lease.epoch)
            lease.busy += 1  # never given back as idle while the job runs
            scope = lease.scope()
            try:
                with scope:
                    await job()
            finally:
                lease.done(scope)
                lease.busy -= 1
            if not (lease.lost or scope.cancelled_caught):
                return
            log.warning("%s: this replica's lease lapsed; another one takes over", self.key)


def fence_sql(db: Connection) -> str:
    """The condition a turn's write is made on: the lease (`?` key, owner, epoch) still holds."""
    assert db.dialect == "postgresql"
    return (
        "EXISTS (SELECT 1 FROM session_leases WHERE session_key = ? AND owner = ?"
        f" AND epoch = ? AND expires_at > {DATABASE_NOW})"
    )
