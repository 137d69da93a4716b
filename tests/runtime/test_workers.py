"""`botcorebot serve --workers N`: real processes sharing one port, supervised."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx2
import pytest
import trio

from actors import RestartPolicy
from runtime.cli import main
from runtime.testing import bot_process
from runtime.testing.postgres import drop_schema, new_schema
from runtime.testing.process import BotProcess
from runtime.workers import WorkerPolicy, supervise


@pytest.fixture
def shared_env(postgres_server: str) -> Iterable[dict[str, str]]:
    url = new_schema(postgres_server)
    # Connections stay open while the test looks at which worker holds each one.
    yield {"DATABASE_URL": url, "HTTP_KEEP_ALIVE_SECONDS": "60", "SHUTDOWN_GRACE_SECONDS": "5"}
    drop_schema(url)


async def ready_workers(bot: BotProcess, count: int, after: int = 0) -> dict[int, int]:
    """Worker number → pid, once each of `count` workers said it was ready."""
    pids = {}
    for number in range(1, count + 1):
        found = await bot.wait_for_log(rf"worker {number} ready \(pid (\d+)\)", after=after)
        pids[number] = int(found[1])
    return pids


def connections_by_pid(port: int, pids: Iterable[int]) -> Counter[int]:
    """How many established connections to `port` each process holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED, the server's side
                inodes.add(fields[9])
    held: Counter[int] = Counter()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] += 1
    return held


@asynccontextmanager
async def open_clients(url: str, count: int, prefix: str) -> AsyncIterator[list[str]]:
    """`count` clients, each on its own connection, each sending one message; the answers."""
    async with AsyncExitStack() as stack:
        answers = []
        for n in range(count):
            client = await stack.enter_async_context(httpx2.AsyncClient(timeout=30))
            response = await client.post(
                f"{url}/api/message",
                json={"message": f"remember {prefix} number {n}", "session_id": f"{prefix}-{n}"},
            )
            assert response.status_code == 200, response.text
            answers.append(response.json()["message"])
        yield answers


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


async def test_two_workers_answer_on_one_port_and_each_takes_connections(
    workspace: Path, shared_env: dict[str, str]
) -> None:
    async with bot_process(workspace, shared_env, args=["--workers", "2"]) as bot:
        pids = await ready_workers(bot, 2)
        port = int(bot.url.rsplit(":", 1)[1])
        async with open_clients(bot.url, 24, "a") as answers:
            held = connections_by_pid(port, pids.values())
        assert answers == ["Got it, I'll remember that."] * 24
        # The kernel hashes each connection to one worker: 24 all on one has odds of 2**-23.
        assert sum(held.values()) == 24 and set(held) == set(pids.values()), held
        bot.terminate()
        assert await bot.wait() == 0
        assert "stopped 2 workers" in bot.log
        assert all(gone(pid) for pid in pids.values())


async def test_a_killed_worker_is_started_again_while_the_port_keeps_answering(
    workspace: Path, shared_env: dict[str, str]
) -> None:
    async with bot_process(workspace, shared_env, args=["--workers", "2"]) as bot:
        pids = await ready_workers(bot, 2)
        port = int(bot.url.rsplit(":", 1)[1])
        mark = len(bot.log)
        os.kill(pids[1], signal.SIGKILL)
        await bot.wait_for_log(r"worker 1 was killed by SIGKILL; starting it again", after=mark)
        async with open_clients(bot.url, 8, "during") as answers:  # worker 2 alone
            pass
        assert answers == ["Got it, I'll remember that."] * 8
        again = (await bot.wait_for_log(r"worker 1 ready \(pid (\d+)\)", after=mark))[1]
        restarted = {pids[2], int(again)}
        async with open_clients(bot.url, 24, "after"):
            held = connections_by_pid(port, restarted)
        assert set(held) == restarted, held
        bot.terminate()
        assert await bot.wait() == 0
        assert all(gone(pid) for pid in restarted)


async def test_workers_stop_when_their_supervisor_is_killed(
    workspace: Path, shared_env: dict[str, str]
) -> None:
    async with bot_process(workspace, shared_env, args=["--workers", "2"]) as bot:
        pids = await ready_workers(bot, 2)
        bot.kill()
        await bot.wait()
        with trio.fail_after(20):
            while not all(gone(pid) for pid in pids.values()):  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert "the supervisor of this worker is gone: shutting down" in bot.log


def test_sqlite_with_two_workers_is_refused_with_the_reason(
    workspace: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    status = main(["serve", "--workspace", str(workspace), "--workers", "2"])
    said = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(said) == 1
    assert "needs PostgreSQL (DATABASE_URL)" in said[0]
    assert "SQLite, which has one writer process and no shared inbox" in said[0]


def test_a_port_in_use_is_said_before_any_worker_starts(
    workspace: Path,
    shared_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in shared_env.items():
        monkeypatch.setenv(key, value)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["serve", "-w", str(workspace), "--workers", "2", "--port", str(port)])
    assert status == 2
    assert f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err


async def test_workers_that_keep_failing_at_start_make_the_supervisor_give_up() -> None:
    never_ready = [sys.executable, "-c", "raise SystemExit(3)"]
    with trio.fail_after(60):
        problem = await supervise(never_ready, WorkerPolicy(2, stop_within=5))
    assert problem is not None
    assert "exited with status 3 before it was ready, 3 times in a row" in problem


async def test_a_worker_that_exits_after_it_was_ready_is_started_again() -> None:
    """Ready, then gone: restarted with backoff, until the window's restarts are spent."""
    ready_then_exit = [
        sys.executable,
        "-c",
        "import socket, sys; socket.socket(fileno=int(sys.argv[-1])).sendall(b'ready\\n')",
    ]
    policy = WorkerPolicy(
        1, stop_within=5, restart=RestartPolicy(max_restarts=2, within=60, backoff_min=0.05)
    )
    with trio.fail_after(60):
        problem = await supervise(ready_then_exit, policy)
    assert problem == (
        "workers exited 3 times within 60s (the last: worker 1 exited with status 0)"
    )
