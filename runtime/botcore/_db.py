"""The bot's database: one storage seam, two engines.

`Database.run(call)` runs `call(connection)` in a worker thread inside a transaction. The
`Connection` it gets is the engine's, behind one small protocol: `execute` and `executemany`
with `?` placeholders on both engines, and `dialect` for the few statements that differ
(full-text search, JSON). SQLite (`engram.db`, the embedded default) is the standard library's
connection; PostgreSQL (`DATABASE_URL=postgresql://...`, shared by replicas) is psycopg's,
imported only when it is used (`runtime.botcore._postgres`).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

import outcome
import trio

T = TypeVar("T")

Dialect = Literal["sqlite", "postgresql"]


class Cursor(Protocol):
    """What `Connection.execute` returns: the rows of a statement and how many it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The connection a `Database.run` call works with, inside its transaction."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


def json_field(db: Connection, name: str) -> str:
    """The SQL of a top-level text field of `metadata` (a JSON object stored as text)."""
    assert name.isidentifier()
    if db.dialect == "postgresql":
        return f"(metadata::jsonb ->> '{name}')"
    return f"json_extract(metadata, '$.{name}')"


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def describe(url: str) -> str:
    """The server and database of a PostgreSQL URL, for people: no user or password."""
    parts = urlsplit(url)
    host = parts.hostname or ",".join(parse_qs(parts.query).get("host", [])) or "localhost"
    port = f":{parts.port}" if parts.port else ""
    database = parts.path.lstrip("/") or "(default database)"
    if host.startswith("/"):
        return f"postgresql database {database} on the socket in {host}"
    return f"postgresql://{host}{port}/{database}"


_SCHEMA = [
    # version 1
    """
    CREATE TABLE memories (
        id INTEGER PRIMARY KEY,
        content TEXT NOT NULL,
        type TEXT NOT NULL,
        importance REAL NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        accessed_at REAL NOT NULL,
        access_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        content, content='memories', content_rowid='id', tokenize='porter unicode61'
    );
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER memories_au AFTER UPDATE OF content ON memories BEGIN
        INSERT INTO memories_fts(memories_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO memories_fts(rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TABLE history (
        id INTEGER PRIMARY KEY,
        session_key TEXT NOT NULL,
        turn_id TEXT NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        usage TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    );
    CREATE INDEX history_by_session ON history(session_key, id);
    CREATE TABLE activity (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        op TEXT NOT NULL,
        path TEXT NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        session_id TEXT NOT NULL,
        message_id TEXT,
        sender TEXT,
        text TEXT NOT NULL,
        state TEXT NOT NULL,
        reply TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX inbox_by_message ON inbox(channel, session_id, message_id)
        WHERE message_id IS NOT NULL;
    CREATE INDEX inbox_by_state ON inbox(state, id);
    """,
    # version 2: duplicates are found by a fingerprint of their words (older rows have none,
    # and are found by the word search alone)
    """
    ALTER TABLE memories ADD COLUMN fingerprint TEXT;
    CREATE INDEX memories_by_fingerprint ON memories(type, fingerprint);
    """,
    # version 3: the webhook deliveries seen lately, so a replay is known after a restart
    """
    CREATE TABLE webhook_deliveries (
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (source, key)
    ) WITHOUT ROWID;
    CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries(seen_at);
    """,
    # version 4: where a message's answer goes (its channel's reply address, as JSON), so a
    # message recovered after a restart is answered there
    """
    ALTER TABLE inbox ADD COLUMN address TEXT;
    """,
    # version 5: who said an episode and in which conversation, so recall can favour what a
    # named person said and score a turn with its neighbours; when, by time
    """
    ALTER TABLE memories ADD COLUMN speaker TEXT;
    ALTER TABLE memories ADD COLUMN conversation TEXT;
    CREATE INDEX memories_by_conversation ON memories(conversation, id)
        WHERE conversation IS NOT NULL;
    CREATE INDEX memories_by_time ON memories(created_at);
    """,
    # version 6: messages the bot scheduled for its own sessions (once, or on a cron
    # expression), with the channel, session and reply address of the message that set them
    """
    CREATE TABLE schedules (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        session_id TEXT NOT NULL,
        sender TEXT,
        address TEXT,
        text TEXT NOT NULL,
        cron TEXT,
        due_at REAL NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX schedules_by_due ON schedules(due_at);
    CREATE INDEX schedules_by_session ON schedules(channel, session_id);
    """,
    # version 7: the identity files' changes, by migration like every other table (it was
    # created on first use)
    """
    CREATE TABLE IF NOT EXISTS identity_changes (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        file TEXT NOT NULL,
        op TEXT NOT NULL,
        before TEXT,
        after TEXT
    );
    """,
    # version 8: each memory's length in words, which BM25 needs; FTS5 keeps its own, the
    # PostgreSQL engine reads this one, and one INSERT serves both
    """
    ALTER TABLE memories ADD COLUMN words INTEGER NOT NULL DEFAULT 0;
    """,
    # version 9: answers a channel sends itself (Telegram, webhook callbacks) until it says
    # they got there, so one cut off by a crash is sent again
    """
    CREATE TABLE outbox (
        inbox_id INTEGER PRIMARY KEY,
        next_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_by_time ON outbox(next_at);
    """,
]


class _Call(Generic[T]):
    __slots__ = ("call", "done", "result")

    def __init__(self, call: Callable[[Connection], T]) -> None:
        self.call = call
        self.done = trio.Event()
        self.result: outcome.Outcome[T] | None = None


class Engine(Protocol):
    """One engine's side of `Database`: runs batches of calls in its worker threads."""

    dialect: Dialect
    parallel: int
    """How many batches may run at once (each in its own thread and transaction); an engine
    of more than one has one more connection, for urgent calls."""
    errors: tuple[type[BaseException], ...]
    """The engine's own errors (`Database.errors`), for code that tells a database's fault
    from its own."""

    def execute(self, batch: list[_Call[Any]]) -> None:
        """Run `batch` in one transaction, each call in a savepoint of its own, and commit:
        every call ends with a result, its value only once the commit holds it."""
        ...

    def close(self) -> None: ...


class Database:
    """The bot's database, used from worker threads.

    Every call runs in a worker thread, so the trio loop never blocks on disk or network. A
    call that was started finishes even if its caller is cancelled, so a cancelled turn never
    leaves a half-written transaction.

    While `serve_batches` runs (the runtime starts it), calls are queued, and everything
    queued runs in one worker-thread hop and one transaction, each call in a savepoint of its
    own (group commit): a call that fails rolls back alone, the others commit together, and
    no caller hears of its result before that commit. Under load, one commit serves many
    turns' accepts, stores and replies instead of one each. Without it, each call takes its
    own hop and commit. SQLite runs one batch at a time (it has one writer); PostgreSQL
    several, each on a connection of its pool.
    """

    def __init__(self, engine: Engine, *, path: Path | None) -> None:
        self._engine = engine
        self._threads = trio.CapacityLimiter(engine.parallel)
        self._slots = trio.Semaphore(engine.parallel)
        # An engine with a connection to spare gives urgent calls a lane of their own.
        self._urgent = trio.CapacityLimiter(1) if engine.parallel > 1 else self._threads
        self._queue: trio.MemorySendChannel[_Call[Any]] | None = None
        self.dialect: Dialect = engine.dialect
        self.errors = engine.errors
        self.path = path
        """The SQLite file; None on PostgreSQL."""
        self.maintenance = trio.Lock()
        """Held by long maintenance passes (memory consolidation), so two never overlap."""
        self.batches = 0
        self.calls = 0
        self.commits = 0

    @classmethod
    async def open(cls, target: Path | str) -> Database:
        """SQLite at a file path, or PostgreSQL at a `postgresql://` URL."""
        if is_postgres_url(target):
            from runtime.botcore._postgres import PostgresEngine

            engine = await trio.to_thread.run_sync(PostgresEngine.connect, str(target))
            return cls(engine, path=None)
        path = Path(target)
        engine_ = await trio.to_thread.run_sync(_SqliteEngine.connect, path)
        return cls(engine_, path=path)

    @property
    def engine(self) -> Engine:
        return self._engine

    async def run(self, call: Callable[[Connection], T]) -> T:
        """Run `call(connection)` in a worker thread inside a transaction; return once it is
        committed."""
        if self._queue is None:
            return await self.run_alone(call)
        pending = _Call(call)
        self._queue.send_nowait(pending)
        await pending.done.wait()
        assert pending.result is not None
        return pending.result.unwrap()

    async def run_alone(self, call: Callable[[Connection], T], *, urgent: bool = False) -> T:
        """Run `call(connection)` in a transaction of its own, never in a batch: for a short
        write of rows other processes wait on (session leases), whose locks a batch would
        hold until its last call is done, and take while holding others' (a deadlock). An
        `urgent` one (a lease's renewal) waits for no batch either: on PostgreSQL it has a
        thread and a connection of its own."""
        pending = _Call(call)
        limiter = self._urgent if urgent else self._threads
        await trio.to_thread.run_sync(self._engine.execute, [pending], limiter=limiter)
        self.calls += 1
        self.commits += 1
        assert pending.result is not None
        return pending.result.unwrap()

    async def serve_batches(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run queued calls in batches until cancelled; calls queued by then still run."""
        send, receive = trio.open_memory_channel[_Call[Any]](math.inf)
        self._queue = send
        try:
            async with trio.open_nursery() as running:
                task_status.started()
                async for first in receive:
                    # Shielded: to_thread checks for cancellation before it starts, and a
                    # batch taken off the queue must run, or its callers would wait forever.
                    with trio.CancelScope(shield=True):
                        await self._slots.acquire()
                    # Whatever queued while waiting for a slot joins this batch.
                    running.start_soon(self._run_batch, [first, *_drain(receive)])
        finally:
            self._queue = None
            send.close()
            with trio.CancelScope(shield=True):
                left = _drain(receive)
                if left:
                    await self._slots.acquire()
                    await self._run_batch(left)

    async def _run_batch(self, batch: list[_Call[Any]]) -> None:
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._engine.execute, batch, limiter=self._threads)
        finally:
            self._slots.release()
        self.batches += 1
        self.commits += 1
        self.calls += len(batch)
        for pending in batch:
            pending.done.set()

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self._engine.close, limiter=self._threads)


def _drain(receive: trio.MemoryReceiveChannel[_Call[Any]]) -> list[_Call[Any]]:
    calls = []
    while True:
        try:
            calls.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return calls


class _SqliteConnection(sqlite3.Connection):
    dialect: Dialect = "sqlite"


class _SqliteEngine:
    """SQLite in WAL mode: one connection, one batch at a time (SQLite has one writer)."""

    dialect: Dialect = "sqlite"
    parallel = 1
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, connection: _SqliteConnection) -> None:
        self._connection = connection

    @classmethod
    def connect(cls, path: Path) -> _SqliteEngine:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, factory=_SqliteConnection
        )
        # Autocommit for the pragmas (journal_mode cannot change inside a transaction); then
        # DEFERRED transactions, begun and committed by `execute`.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.isolation_level = "DEFERRED"
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(_SCHEMA[version:], start=version + 1):
            connection.executescript(script)
            connection.execute(f"PRAGMA user_version={number}")
        return cls(connection)

    def execute(self, batch: list[_Call[Any]]) -> None:
        db = self._connection
        uncommitted: list[_Call[Any]] = []
        try:
            for pending in batch:
                if not db.in_transaction:
                    db.execute("BEGIN")
                db.execute("SAVEPOINT call")
                try:
                    value = pending.call(db)
                except BaseException as exc:  # handed to its caller by `outcome`, not swallowed
                    pending.result = outcome.Error(exc)
                    if db.in_transaction:
                        db.execute("ROLLBACK TO call")
                        db.execute("RELEASE call")
                    else:
                        # SQLite rolled the whole transaction back (disk full, I/O error):
                        # the calls before this one in it are lost too.
                        for earlier in uncommitted:
                            earlier.result = outcome.Error(exc)
                        uncommitted.clear()
                else:
                    db.execute("RELEASE call")
                    pending.result = outcome.Value(value)
                    uncommitted.append(pending)
            if db.in_transaction:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            # The transaction's own statements failed (BEGIN, a savepoint, COMMIT): none of
            # its writes hold, and the calls not run yet fail with the same error.
            if db.in_transaction:
                db.rollback()
            for pending in batch:
                if pending.result is None or pending in uncommitted:
                    pending.result = outcome.Error(exc)

    def close(self) -> None:
        self._connection.close()
