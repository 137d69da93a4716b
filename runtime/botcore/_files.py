from __future__ import annotations

import builtins
import os
import sqlite3
import tempfile
import time
from pathlib import Path, PurePath

import trio

from runtime.botcore._db import Database
from runtime.botcore._errors import OutsideWorkspace

MAX_READ_BYTES = 1 << 20


class FileTools:
    """The bot's files, confined to its workspace; every write is recorded in the activity log.

    A path is refused when it starts with `~`, has a `..` part, is absolute and outside the
    workspace, or resolves (through symlinks) to anywhere outside it. The bot's own database
    files are refused too: the model must not be able to corrupt its memory through `write`.
    """

    def __init__(self, workspace: Path, db: Database) -> None:
        self._root = workspace.resolve()
        self._db = db
        self._protected = {
            self._root / name for name in ("engram.db", "engram.db-wal", "engram.db-shm")
        } | {db.path.resolve(), Path(f"{db.path.resolve()}-wal"), Path(f"{db.path.resolve()}-shm")}

    def resolve(self, path: str) -> Path:
        """The real path inside the workspace for `path`, or `OutsideWorkspace`."""
        if not path.strip():
            raise OutsideWorkspace("empty path")
        if path.startswith("~"):
            raise OutsideWorkspace(f"{path!r}: home-relative paths are not allowed")
        pure = PurePath(path)
        if ".." in pure.parts:
            raise OutsideWorkspace(f"{path!r}: '..' is not allowed")
        real = (self._root / pure).resolve()
        if not real.is_relative_to(self._root):
            raise OutsideWorkspace(f"{path!r} is outside the workspace")
        if real in self._protected:
            raise OutsideWorkspace(f"{path!r} is the bot's database and cannot be used as a file")
        return real

    def relative(self, real: Path) -> str:
        return real.relative_to(self._root).as_posix() or "."

    async def read(self, path: str, *, max_bytes: int = MAX_READ_BYTES) -> str:
        real = self.resolve(path)

        def read() -> str:
            with real.open("rb") as file:
                data = file.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValueError(f"{path!r} is larger than {max_bytes} bytes")
            return data.decode("utf-8", errors="replace")

        return await trio.to_thread.run_sync(read)

    async def write(self, path: str, content: str) -> int:
        """Write `content` atomically (temp file, then rename); the number of bytes written."""
        real = self.resolve(path)
        data = content.encode("utf-8")
        await trio.to_thread.run_sync(_atomic_write, real, data)
        await self._record("write", real, len(data))
        return len(data)

    async def edit(self, path: str, old: str, new: str) -> int:
        """Replace the one occurrence of `old` with `new`; refuses none or several."""
        if not old:
            raise ValueError("old text must not be empty")
        text = await self.read(path)
        count = text.count(old)
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times; make it unique"
            raise ValueError(f"old text {where} in {path!r}")
        return await self.write(path, text.replace(old, new, 1))

    async def list(self, path: str = ".") -> builtins.list[str]:
        """Entries of a folder, sorted; folders end with '/'."""
        real = self.resolve(path)

        def entries() -> list[str]:
            names = []
            for entry in sorted(real.iterdir()):
                if entry in self._protected:
                    continue
                names.append(entry.name + ("/" if entry.is_dir() else ""))
            return names

        return await trio.to_thread.run_sync(entries)

    async def _record(self, op: str, real: Path, size: int) -> None:
        relative, now = self.relative(real), time.time()

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO activity (at, op, path, bytes) VALUES (?, ?, ?, ?)",
                (now, op, relative, size),
            )

        await self._db.run(insert)

    async def activity(self, limit: int = 50) -> builtins.list[tuple[str, str, int]]:
        """The latest writes as (op, path, bytes), newest first."""
        return await self._db.run(
            lambda db: db.execute(
                "SELECT op, path, bytes FROM activity ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
