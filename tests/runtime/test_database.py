from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import trio

from runtime.botcore import Connection, Database

UNIQUE_VIOLATION = (sqlite3.IntegrityError, psycopg.IntegrityError)


def elsewhere(database: Path | str) -> Callable[[str, tuple[object, ...]], list[tuple[object, ...]]]:
    """Another connection to the same database (another process, after a crash)."""
    if isinstance(database, str):
        other = psycopg.connect(database, autocommit=True)
        return lambda sql, args: other.execute(sql.replace("?", "%s"), args).fetchall()
    lite = sqlite3.connect(database)
    return lambda sql, args: lite.execute(sql, args).fetchall()


async def test_batched_calls_share_thread_hops_and_keep_their_own_transactions(
    database: Path | str,
) -> None:
    db = await Database.open(database)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER UNIQUE)"))
    unbatched = db.calls
    results: dict[int, object] = {}

    async def insert(n: int) -> None:
        try:
            results[n] = await db.run(
                lambda c: c.execute("INSERT INTO t VALUES (?)", (n % 50,)).rowcount
            )
        except UNIQUE_VIOLATION as exc:
            results[n] = exc

    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve_batches)
        async with trio.open_nursery() as callers:
            for n in range(100):
                callers.start_soon(insert, n)
        nursery.cancel_scope.cancel()
    assert db.calls - unbatched == 100 and db.batches < 20  # many calls per worker-thread hop
    assert sum(1 for r in results.values() if r == 1) == 50
    # A failing call fails alone: its duplicates were refused, the others committed.
    assert sum(isinstance(r, UNIQUE_VIOLATION) for r in results.values()) == 50
    assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 50
    await db.aclose()


async def test_calls_queued_when_batching_stops_still_run(database: Path | str) -> None:
    db = await Database.open(database)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve_batches)
        done = trio.Event()

        async def write() -> None:
            with trio.CancelScope(shield=True):
                await db.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
            done.set()

        nursery.start_soon(write)
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    await done.wait()
    assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    with pytest.raises(db.errors):
        await db.run(lambda c: c.execute("SELECT nope FROM t"))
    await db.aclose()


async def test_no_call_is_lost_when_batching_stops_at_any_moment(database: Path | str) -> None:
    db = await Database.open(database)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
    for n in range(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(db.serve_batches)
            finished = trio.Event()

            async def write(value: int = n, finished: trio.Event = finished) -> None:
                with trio.CancelScope(shield=True), trio.fail_after(5):
                    await db.run(lambda c: c.execute("INSERT INTO t VALUES (?)", (value,)))
                finished.set()

            nursery.start_soon(write)
            for _ in range(n % 4):  # stop batching at a different moment each time
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            await finished.wait()
    assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 60
    await db.aclose()


async def test_a_batch_commits_once_and_every_answered_write_is_on_disk(database: Path | str) -> None:
    db = await Database.open(database)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER UNIQUE)"))
    before = db.commits
    other = elsewhere(database)
    seen_on_disk: list[bool] = []

    async def insert(n: int) -> None:
        try:
            await db.run(lambda c: c.execute("INSERT INTO t VALUES (?)", (n % 50,)))
        except UNIQUE_VIOLATION:
            return
        # Answered: another connection (another process, after a crash) already sees it.
        (row,) = other("SELECT count(*) FROM t WHERE n = ?", (n % 50,))
        seen_on_disk.append(row[0] == 1)

    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve_batches)
        async with trio.open_nursery() as callers:
            for n in range(100):
                callers.start_soon(insert, n)
        nursery.cancel_scope.cancel()
    assert len(seen_on_disk) == 50 and all(seen_on_disk)
    assert db.commits - before == db.batches < 20  # not one commit per call
    await db.aclose()


async def test_a_call_that_fails_rolls_back_its_own_writes_only(database: Path | str) -> None:
    db = await Database.open(database)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))

    def half_then_fail(c: Connection) -> None:
        c.execute("INSERT INTO t VALUES (666)")
        raise ValueError("changed my mind")

    async with trio.open_nursery() as nursery:
        await nursery.start(db.serve_batches)

        async def expect_failure() -> None:
            with pytest.raises(ValueError, match="changed my mind"):
                await db.run(half_then_fail)

        async with trio.open_nursery() as callers:
            for n in range(3):
                callers.start_soon(
                    db.run, lambda c, n=n: c.execute("INSERT INTO t VALUES (?)", (n,))
                )
            callers.start_soon(expect_failure)
            callers.start_soon(db.run, lambda c: c.execute("INSERT INTO t VALUES (3)"))
        nursery.cancel_scope.cancel()
    rows = await db.run(lambda c: c.execute("SELECT n FROM t ORDER BY n").fetchall())
    assert rows == [(0,), (1,), (2,), (3,)]
    await db.aclose()


async def test_a_write_refused_by_another_writers_lock_fails_alone_and_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    db = await Database.open(tmp_path / "t.db")
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
    # Another process holds the write lock past the busy timeout.
    await db.run(lambda c: c.execute("PRAGMA busy_timeout=50"))
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await db.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await db.run(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 0
    await db.run(lambda c: c.execute("INSERT INTO t VALUES (2)"))  # and the next one works
    assert await db.run(lambda c: c.execute("SELECT n FROM t").fetchall()) == [(2,)]
    await db.aclose()


async def test_a_lost_server_connection_fails_the_calls_under_way_and_the_next_one_works(
    postgres_server: str,
) -> None:
    from runtime.testing.postgres import drop_schema, new_schema

    url = new_schema(postgres_server)
    db = await Database.open(url)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER)"))
    with pytest.raises(psycopg.OperationalError):
        # The server ends this connection (a restart, a failover, an admin's kill).
        await db.run(lambda c: c.execute("SELECT pg_terminate_backend(pg_backend_pid())"))
    await db.run(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    assert await db.run(lambda c: c.execute("SELECT n FROM t").fetchall()) == [(1,)]
    await db.aclose()
    drop_schema(url)


async def test_two_calls_caught_in_a_deadlock_both_succeed(postgres_server: str) -> None:
    from runtime.testing.postgres import drop_schema, new_schema

    url = new_schema(postgres_server)
    db = await Database.open(url)
    await db.run(lambda c: c.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v INTEGER)"))
    await db.run(lambda c: c.execute("INSERT INTO t VALUES (1, 0), (2, 0)"))

    def update(first: int, second: int) -> Callable[[Connection], None]:
        def call(c: Connection) -> None:  # the two rows, in opposite orders
            c.execute("UPDATE t SET v = v + 1 WHERE n = ?", (first,))
            c.execute("SELECT pg_sleep(0.3)")
            c.execute("UPDATE t SET v = v + 1 WHERE n = ?", (second,))

        return call

    with trio.fail_after(30):
        async with trio.open_nursery() as callers:  # unbatched: two transactions at once
            callers.start_soon(db.run, update(1, 2))
            callers.start_soon(db.run, update(2, 1))
    assert await db.run(lambda c: c.execute("SELECT n, v FROM t ORDER BY n").fetchall()) == [
        (1, 2),
        (2, 2),
    ]
    await db.aclose()
    drop_schema(url)
