"""A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` in a temp folder, listening
on a Unix socket only (no TCP port), stopped and deleted afterwards.

    python -m runtime.testing.postgres start DIR   # prints the cluster's URL
    python -m runtime.testing.postgres stop DIR

`scripts/test` starts one for the whole run and exports its URL as `BOTCORE_TEST_POSTGRES`;
the test fixtures give each test a schema of its own in it. PostgreSQL refuses to run as root:
as root, the cluster runs as `nobody`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

USER = "botcore"
"""The cluster's superuser (trusted on its socket; nothing else can reach it)."""


class ClusterError(RuntimeError):
    """The cluster could not be made or started; the message says what PostgreSQL said."""


def bindir() -> Path:
    """Where `initdb` and `pg_ctl` are: `PG_BINDIR`, `pg_config --bindir`, or the PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    if shutil.which("pg_config"):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise ClusterError(
        "PostgreSQL's initdb was not found: install PostgreSQL (Debian: apt-get install"
        " postgresql) or set PG_BINDIR to the folder that has initdb and pg_ctl"
    )


def url(directory: Path, database: str = "postgres") -> str:
    """The URL of the cluster in `directory` (its socket is there)."""
    return f"postgresql://{USER}@/{database}?host={quote(str(directory / 'socket'), safe='')}"


def start(directory: Path) -> str:
    """Make and start a cluster in `directory` (created, or empty); its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    data, socket = directory / "data", directory / "socket"
    socket.mkdir(exist_ok=True)
    as_user = _unprivileged()
    if as_user is not None:
        uid, gid = as_user
        for path in (directory, socket):
            os.chown(path, uid, gid)
    bin_ = bindir()
    _run(
        as_user,
        [
            str(bin_ / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
    )
    options = (
        f"-c listen_addresses='' -c unix_socket_directories='{socket}'"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        " -c max_connections=300 -c shared_buffers=64MB"
    )
    _run(
        as_user,
        [
            str(bin_ / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(directory / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        log=directory / "server.log",
    )
    return url(directory)


def stop(directory: Path) -> None:
    """Stop the cluster in `directory` (immediately: it holds nothing to keep) and delete it."""
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        _run(
            _unprivileged(),
            [str(bindir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            check=False,
        )
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def cluster() -> Iterator[str]:
    """A cluster for the `with` block: its URL."""
    directory = Path(tempfile.mkdtemp(prefix="botcore-pg-"))
    try:
        yield start(directory)
    finally:
        stop(directory)


def new_schema(server_url: str) -> str:
    """A URL on `server_url` whose search path is a fresh, empty schema (the engine creates
    it on first use): each test gets a database of its own, quickly."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in server_url else "?"
    return f"{server_url}{separator}options={quote(f'-csearch_path={name}', safe='')}"


def drop_schema(schema_url: str) -> None:
    import psycopg

    with psycopg.connect(schema_url, autocommit=True) as connection:
        row = connection.execute("SHOW search_path").fetchone()
        if row is not None:
            name = str(row[0]).strip('"')
            if name.startswith("t_"):
                connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) to run the cluster as when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam("nobody")
    return user.pw_uid, user.pw_gid


def _run(
    as_user: tuple[int, int] | None,
    command: list[str],
    *,
    log: Path | None = None,
    check: bool = True,
) -> None:
    def demote() -> None:
        if as_user is not None:
            os.setgid(as_user[1])
            os.setuid(as_user[0])

    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        preexec_fn=demote if as_user is not None else None,
        cwd="/",
        check=False,
    )
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip()
        if log is not None and log.exists():
            said += "\n" + log.read_text(errors="replace")[-2000:]
        raise ClusterError(f"{Path(command[0]).name} failed ({done.returncode}): {said}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m runtime.testing.postgres start|stop DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1])
    try:
        if argv[0] == "start":
            print(start(directory))
        else:
            stop(directory)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
