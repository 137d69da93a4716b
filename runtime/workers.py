"""`botcorebot serve --workers N`: N worker processes sharing one port, and the small supervisor
that keeps them running.

A worker is the `serve` of one process with its HTTP socket bound with `SO_REUSEPORT`: every
worker listens on the same host and port, and the kernel spreads new connections among them
(by a hash of each connection's addresses). Workers share nothing but the database: on
PostgreSQL any worker accepts a message into the shared inbox and the holder of the session's
lease answers it (`runtime.leases`), as replicas on several machines do. SQLite has one writer
process and no shared inbox or leases, so more than one worker is refused there (`refusal`).

The supervisor (the process that ran `serve --workers N`) starts the workers, restarts one that
dies (exponential backoff with jitter; more than `RestartPolicy.max_restarts` exits within
`within` seconds across all workers and it gives up), gives up at once on a worker that exits
`start_attempts` times in a row before it is ready (a database it cannot reach, a port taken
since the check), and on SIGTERM or SIGINT sends SIGTERM to every worker, waits up to
`stop_within` for each to drain, kills what is left, and returns.

Each worker gets one end of a socket pair (`serve --supervisor-fd FD`): it writes `ready` once
it serves, and it stops (drains, as on SIGTERM) when the pair reaches its end, that is when the
supervisor is gone, even killed with SIGKILL: no worker serves on without one. Workers run in
their own process group, so Ctrl-C in a terminal reaches the supervisor only, which stops them
in order instead of all at once.
"""

from __future__ import annotations

import logging
import random
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import attrs
import trio

from actors import RestartPolicy, RestartWindow

log = logging.getLogger("runtime.workers")

READY = b"ready\n"
"""What a worker writes to the supervisor once its HTTP server and channels run."""


@attrs.frozen
class WorkerPolicy:
    """How many workers, and how the supervisor treats their exits."""

    workers: int = attrs.field(validator=attrs.validators.ge(1))
    stop_within: float = attrs.field(validator=attrs.validators.gt(0))
    """A worker told to stop is killed after this long (its own drain takes up to twice
    `SHUTDOWN_GRACE_SECONDS`: turns in flight, then its channels and HTTP server)."""
    ready_within: float = 120.0
    """A worker that has not said `ready` by then is stopped and counts as failing at start
    (opening the database and connecting MCP servers are its slow steps)."""
    start_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    """Exits before `ready` in a row, for one worker, after which the supervisor gives up:
    what stops a worker from starting (a port in use, a bad database) rarely goes away."""
    restart: RestartPolicy = RestartPolicy(
        max_restarts=5, within=60.0, backoff_min=0.5, backoff_max=10.0, jitter=0.25
    )


def refusal(workers: int, sqlite_bots: Sequence[str], port: int) -> str | None:
    """Why `--workers N` cannot run this configuration, or None when it can."""
    if workers <= 1:
        return None
    if sqlite_bots:
        which = (
            "the bot's data is"
            if len(sqlite_bots) == 1
            else "bots " + ", ".join(repr(name) for name in sqlite_bots) + " have their data"
        )
        return (
            f"--workers {workers} needs PostgreSQL (DATABASE_URL), but {which} in SQLite, which"
            " has one writer process and no shared inbox or session leases; serve it with one"
            " worker"
        )
    if port == 0:
        return (
            f"--workers {workers} needs a fixed HTTP port (HTTP_PORT or --port): with port 0"
            " each worker would listen on a port of its own"
        )
    return None


def check_port(host: str, port: int) -> None:
    """Raise `OSError` (`EADDRINUSE`) if anything listens on `host:port`.

    Bound without `SO_REUSEPORT`, so that another `serve --workers` on the port is found too:
    its sockets would otherwise share the port with ours, and their bots would answer half of
    our connections. `SO_REUSEADDR` lets connections of a previous run in TIME_WAIT pass."""
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


async def supervise(command: Sequence[str], policy: WorkerPolicy) -> str | None:
    """Run `policy.workers` workers of `command` (a `serve` command line, to which
    `--supervisor-fd FD` is added) until SIGTERM or SIGINT, or until they keep failing.

    Returns None when every worker stopped as asked, else what went wrong, in one line."""
    supervisor = _Supervisor(tuple(command), policy)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.watch_signals, signals)
            async with trio.open_nursery() as workers:
                for number in range(1, policy.workers + 1):
                    workers.start_soon(supervisor.keep_running, number)
            nursery.cancel_scope.cancel()
    return supervisor.problem


async def report_to_supervisor(stream: trio.SocketStream, shutdown: trio.Event) -> None:
    """In a worker: say `ready`, then set `shutdown` when the supervisor is gone (its end of
    the pair closes). Returns at once if the supervisor is already gone."""
    async with stream:
        try:
            await stream.send_all(READY)
            await stream.receive_some(1)  # nothing is ever sent: this returns at its end
        except trio.BrokenResourceError:
            pass
    if not shutdown.is_set():
        log.warning("the supervisor of this worker is gone: shutting down")
        shutdown.set()


class _Supervisor:
    """The state the workers' tasks share: the restart window, stopping, the first problem."""

    def __init__(self, command: tuple[str, ...], policy: WorkerPolicy) -> None:
        self._command = command
        self._policy = policy
        self._window = RestartWindow(policy.restart)
        self._rng = random.Random()
        self._stopping = trio.Event()
        self.problem: str | None = None

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        """The first signal stops the workers; later ones are said and otherwise ignored
        (the workers are already draining)."""
        async for signum in signals:
            name = signal.Signals(signum).name
            if self._stopping.is_set():
                log.info("received %s; the workers are already stopping", name)
            else:
                log.info("received %s: stopping %d workers", name, self._policy.workers)
                self._stopping.set()

    def _give_up(self, problem: str) -> None:
        if self.problem is None:
            self.problem = problem
            log.error("%s; stopping the other workers", problem)
        self._stopping.set()

    async def keep_running(self, number: int) -> None:
        """Worker `number`, restarted whenever it exits, until the supervisor stops.

        Bounded: each pass ends in a stop, or in an exit that the restart window counts
        (more than `max_restarts` in `within` seconds gives up), or in a failure at start
        (`start_attempts` in a row give up)."""
        failed_starts = 0
        while not self._stopping.is_set():
            ready, status = await self._run_once(number)
            if self._stopping.is_set():
                return
            failed_starts = 0 if ready else failed_starts + 1
            if failed_starts >= self._policy.start_attempts:
                self._give_up(
                    f"worker {number} {_exit(status)} before it was ready, {failed_starts}"
                    " times in a row (its log above says why)"
                )
                return
            restart = self._window.crash()
            if restart is None:
                policy = self._policy.restart
                self._give_up(
                    f"workers exited {policy.max_restarts + 1} times within"
                    f" {policy.within:g}s (the last: worker {number} {_exit(status)})"
                )
                return
            delay = self._policy.restart.backoff(restart, self._rng)
            log.warning(
                "worker %d %s%s; starting it again in %.1fs",
                number,
                _exit(status),
                ""
                if ready
                else f" before it was ready (try {failed_starts + 1} of"
                f" {self._policy.start_attempts} follows)",
                delay,
            )
            with trio.move_on_after(delay):
                await self._stopping.wait()

    async def _run_once(self, number: int) -> tuple[bool, int]:
        """Start worker `number`, wait for it to be ready, then to exit or to be stopped.
        (whether it was ready, its exit status). Never leaves it running."""
        ours, theirs = socket.socketpair()
        with ours:
            try:
                process = await trio.lowlevel.open_process(
                    [*self._command, "--supervisor-fd", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    process_group=0,  # Ctrl-C reaches the supervisor only
                    stdin=subprocess.DEVNULL,
                )
            finally:
                theirs.close()  # the worker holds it now: its end is the worker's life
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            try:
                ready = await self._wait_ready(number, process, stream)
                if ready:
                    log.info("worker %d ready (pid %d)", number, process.pid)
                    await _first(process.wait, self._stopping.wait)
            finally:
                status = await self._stop(number, process)
            return ready, status

    async def _wait_ready(
        self, number: int, process: trio.Process, stream: trio.SocketStream
    ) -> bool:
        said = b""
        with trio.move_on_after(self._policy.ready_within) as late:

            async def read() -> None:
                nonlocal said
                for _ in READY:  # a byte at least each time, or its end
                    got = await stream.receive_some(len(READY) - len(said))
                    said += got
                    if not got or len(said) == len(READY):
                        return

            await _first(read, process.wait, self._stopping.wait)
        if late.cancelled_caught:
            log.error(
                "worker %d (pid %d) was not ready within %gs",
                number,
                process.pid,
                self._policy.ready_within,
            )
        return said == READY

    async def _stop(self, number: int, process: trio.Process) -> int:
        """SIGTERM, up to `stop_within` to exit, then SIGKILL; its exit status. Shielded:
        this runs on the way out, also when the supervisor is cancelled."""
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(self._policy.stop_within):
                    await process.wait()
            if process.returncode is None:
                self._give_up(
                    f"worker {number} (pid {process.pid}) did not stop within"
                    f" {self._policy.stop_within:g}s and was killed"
                )
                process.kill()
                with trio.move_on_after(10):
                    await process.wait()
            status = process.returncode if process.returncode is not None else -signal.SIGKILL
        if self._stopping.is_set() and status not in (0, -signal.SIGTERM):
            self._give_up(f"worker {number} {_exit(status)} while stopping")
        return status


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Wait until the first of `waits` returns; the others are cancelled."""
    async with trio.open_nursery() as nursery:
        for wait in waits:

            async def run(wait: Callable[[], Awaitable[object]] = wait) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


def _exit(status: int) -> str:
    """`exited with status 2`, `was killed by SIGKILL`."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"
