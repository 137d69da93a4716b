"""The bot's files, confined to its workspace by opening every path from a folder descriptor.

A path is never checked and then opened again by name: each part is opened relative to the
folder opened before it (`openat` with `O_NOFOLLOW`), so swapping a folder for a symlink in
between can only make the call fail, never lead outside. Writes go through a temp file created
in the same opened folder and renamed there.
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import TypeVar

import trio

from runtime.botcore._db import Connection, Database
from runtime.botcore._errors import FileRefused, OutsideWorkspace
from runtime.botcore._identity import IDENTITY_FILES, IdentityChange, IdentityHistory

T = TypeVar("T")

MAX_READ_BYTES = 1 << 20
TOOL_THREADS = 8
"""Worker threads the file and task tools may hold at once (their own limiter)."""

CONFIG_FILE = "botcore.toml"
LOCK_FILES = (".gid/graph.yml.lock",)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused after fstat anyway).
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


class FileTools:
    """The bot's files, confined to its workspace; every write is recorded in the activity log.

    Refused: paths starting with `~`, with a `..` part, absolute outside the workspace, or
    passing through a symlink (links are not followed at all); anything but regular files and
    folders (a FIFO would block a worker thread forever); regular files with more than one
    hard link (the other name may be outside); the bot's configuration, database and lock
    files (read, write and list). The identity files are read-only unless `identity_writable`,
    and then each change keeps the previous text in `IdentityHistory`, so it can be undone.

    The blocking calls run in worker threads under `limiter`, which the tools own (a stuck
    tool never takes the database's threads or trio's default ones), and are abandoned when
    the caller is cancelled, so a tool can never hold up a shutdown.
    """

    def __init__(
        self,
        workspace: Path,
        db: Database,
        *,
        limiter: trio.CapacityLimiter | None = None,
        identity_writable: bool = False,
        max_read_bytes: int = MAX_READ_BYTES,
    ) -> None:
        self._root = workspace.resolve()
        self._db = db
        self._limiter = limiter or trio.CapacityLimiter(TOOL_THREADS)
        self._identity_writable = identity_writable
        self._max_read_bytes = max_read_bytes
        self.identity_history = IdentityHistory(db)
        protected = {CONFIG_FILE, *LOCK_FILES}
        for db_file in (self._root / "engram.db", db.path or self._root / "engram.db"):
            for suffix in _DB_SUFFIXES:
                inside = _inside(self._root, Path(f"{db_file.resolve()}{suffix}"))
                if inside is not None:
                    protected.add(inside)
        # Compared case-insensitively: on macOS "BOTCORE.TOML" is the same file.
        self._protected = frozenset(name.casefold() for name in protected)

    def parts(self, path: str) -> tuple[str, ...]:
        """The path's parts relative to the workspace (`()` for the workspace itself).

        Purely lexical: with `..` refused and symlinks never followed, the parts name the
        real place. Refuses what cannot be inside, and the bot's own configuration files.
        """
        if not path.strip():
            raise OutsideWorkspace("empty path")
        if path.startswith("~"):
            raise OutsideWorkspace(f"{path!r}: home-relative paths are not allowed")
        if "\x00" in path:
            raise OutsideWorkspace(f"{path!r}: a path cannot contain a NUL character")
        pure = PurePosixPath(path)
        if ".." in pure.parts:
            raise OutsideWorkspace(f"{path!r}: '..' is not allowed")
        if pure.is_absolute():
            if not pure.is_relative_to(self._root):
                raise OutsideWorkspace(f"{path!r} is outside the workspace")
            pure = pure.relative_to(self._root)
        parts = tuple(part for part in pure.parts if part != ".")
        if "/".join(parts).casefold() in self._protected:
            raise FileRefused(
                f"{path!r} is the bot's own configuration, database or lock file; "
                "tools cannot read, write or list it"
            )
        return parts

    async def read(self, path: str, *, max_bytes: int | None = None) -> str:
        parts = self.parts(path)
        limit = self._max_read_bytes if max_bytes is None else max_bytes
        data = await self._thread(self._read, path, parts, limit)
        return data.decode("utf-8", errors="replace")

    async def write(self, path: str, content: str) -> int:
        """Write `content` atomically (temp file, then rename); the number of bytes written."""
        parts = self.parts(path)
        data = content.encode("utf-8")
        if _is_identity(parts):
            if not self._identity_writable:
                raise FileRefused(
                    f"{parts[0]} is read-only to tools (it defines who the bot is); the operator "
                    "can allow changes with IDENTITY_WRITABLE=true"
                )
            await self._change_identity(path, parts, data, "write")
        else:
            await self._thread(self._write, path, parts, data)
        await self._record("write", parts, len(data))
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
        parts = self.parts(path)
        return await self._thread(self._list, path, parts)

    async def activity(self, limit: int = 50) -> builtins.list[tuple[str, str, int]]:
        """The latest writes as (op, path, bytes), newest first."""
        return await self._db.run(
            lambda db: db.execute(
                "SELECT op, path, bytes FROM activity ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        )

    async def restore_identity(self, change_id: int) -> IdentityChange:
        """Put back the text an identity file had before change `change_id` (an operator's
        action: allowed even when the tools may not change identity files); recorded too."""
        change = await self.identity_history.get(change_id)
        if change is None:
            raise FileRefused(f"there is no identity change {change_id}")
        parts = (change.file,)
        data = None if change.before is None else change.before.encode("utf-8")
        await self._change_identity(change.file, parts, data, "restore")
        await self._record("restore", parts, len(data or b""))
        return change

    async def _change_identity(
        self, path: str, parts: tuple[str, ...], data: bytes | None, op: str
    ) -> None:
        def swap(path: str) -> bytes | None:
            try:
                before: bytes | None = self._read(path, parts, self._max_read_bytes)
            except FileNotFoundError:
                before = None
            if data is None:
                with self._folder(path, parts[:-1]) as folder:
                    os.unlink(parts[-1], dir_fd=folder)
            else:
                self._write(path, parts, data)
            return before

        before = await self._thread(swap, path)
        await self.identity_history.record(
            parts[0],
            op,
            None if before is None else before.decode("utf-8", errors="replace"),
            None if data is None else data.decode("utf-8"),
        )

    async def _thread(self, call: Callable[..., T], path: str, *args: object) -> T:
        """Run in a tool thread; `OSError`s become messages naming only the caller's path."""

        def run() -> T:
            try:
                return call(path, *args)
            except OSError as exc:
                raise _explain(exc, path) from None

        return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._limiter)

    @contextmanager
    def _folder(self, path: str, parts: tuple[str, ...], *, create: bool = False) -> Iterator[int]:
        """An open descriptor of the folder `parts`, reached one part at a time from the root."""
        fd = os.open(self._root, _DIR)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    child = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    _refuse_link(exc, path, fd, part)
                    raise
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _read(self, path: str, parts: tuple[str, ...], limit: int) -> bytes:
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        with self._folder(path, parts[:-1]) as folder:
            try:
                fd = os.open(parts[-1], _READ, dir_fd=folder)
            except OSError as exc:
                _refuse_link(exc, path, folder, parts[-1])
                raise
        with os.fdopen(fd, "rb") as file:
            _check_regular(os.fstat(fd), path)
            data = file.read(limit + 1)
        if len(data) > limit:
            raise FileRefused(f"{path!r} is larger than {limit} bytes, more than a tool may read")
        return data

    def _write(self, path: str, parts: tuple[str, ...], data: bytes) -> None:
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a folder")
        name = parts[-1]
        with self._folder(path, parts[:-1], create=True) as folder:
            mode = 0o644
            try:
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISDIR(info.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a folder")
                if stat.S_ISREG(info.st_mode):
                    mode = stat.S_IMODE(info.st_mode)
            temp = f".{name[:100]}.{secrets.token_hex(6)}.tmp"
            fd = os.open(temp, _TEMP, mode, dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                os.unlink(temp, dir_fd=folder)
                raise

    def _list(self, path: str, parts: tuple[str, ...]) -> builtins.list[str]:
        prefix = "/".join(parts)
        names = []
        with self._folder(path, parts) as folder, os.scandir(folder) as entries:
            for entry in entries:
                if f"{prefix}/{entry.name}".lstrip("/").casefold() in self._protected:
                    continue
                names.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
        return sorted(names)

    async def _record(self, op: str, parts: tuple[str, ...], size: int) -> None:
        relative, now = "/".join(parts) or ".", time.time()

        def insert(db: Connection) -> None:
            db.execute(
                "INSERT INTO activity (at, op, path, bytes) VALUES (?, ?, ?, ?)",
                (now, op, relative, size),
            )

        await self._db.run(insert)


def _check_regular(info: os.stat_result, path: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder")
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(info.st_mode)
            else "a socket"
            if stat.S_ISSOCK(info.st_mode)
            else "a device"
        )
        raise FileRefused(f"{path!r} is {kind}, not a regular file; tools only use regular files")
    if info.st_nlink > 1:
        raise FileRefused(
            f"{path!r} has {info.st_nlink} hard links; a file with other names (which may be "
            "outside the workspace) is not read"
        )


def _refuse_link(exc: OSError, path: str, folder: int, name: str) -> None:
    """A symlink met on the way is an `OutsideWorkspace` naming it, not a bare ELOOP."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return
    try:
        is_link = stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        return
    if is_link:
        raise OutsideWorkspace(
            f"{path!r}: {name!r} is a symbolic link; links are not followed, so nothing "
            "outside the workspace can be reached"
        ) from None


_REASONS = {
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EROFS: "the workspace is read-only",
    errno.ENXIO: "not a regular file",
    errno.ELOOP: "a symbolic link; links are not followed",
}


def _explain(exc: OSError, path: str) -> OSError:
    """The same kind of error, naming the path as the caller gave it, never an absolute one."""
    reason = _REASONS.get(exc.errno or 0) or (os.strerror(exc.errno) if exc.errno else "failed")
    if exc.errno == errno.ENOENT:
        return FileNotFoundError(exc.errno, f"no such file: {path}")
    return type(exc)(exc.errno, f"{path!r}: {reason}")


def _inside(root: Path, path: Path) -> str | None:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else None


def _is_identity(parts: tuple[str, ...]) -> bool:
    return len(parts) == 1 and parts[0].casefold() in {name.casefold() for name in IDENTITY_FILES}
