from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import attrs
import trio

from runtime.botcore._db import Connection, Database

_FIELD = re.compile(r"^\s*[-*]\s*\*\*(?P<key>[^*:]+):?\*\*:?\s*(?P<value>.*?)\s*$")
IDENTITY_FILES = ("IDENTITY.md", "SOUL.md", "USER.md")
_MAX_BYTES = 1 << 20


@attrs.frozen
class Identity:
    """Who the bot is, read from IDENTITY.md, SOUL.md and USER.md (each may be missing)."""

    name: str | None = None
    creature: str | None = None
    vibe: str | None = None
    emoji: str | None = None
    identity: str = ""
    soul: str = ""
    user: str = ""

    @classmethod
    def parse(cls, identity: str, soul: str = "", user: str = "") -> Identity:
        """Read the `- **Name:** TestBot` style fields out of IDENTITY.md's text."""
        fields: dict[str, str] = {}
        for line in identity.splitlines():
            match = _FIELD.match(line)
            if match and match["value"]:
                fields.setdefault(match["key"].strip().lower(), match["value"])
        return cls(
            name=fields.get("name"),
            creature=fields.get("creature"),
            vibe=fields.get("vibe"),
            emoji=fields.get("emoji"),
            identity=identity,
            soul=soul,
            user=user,
        )

    @property
    def display_name(self) -> str:
        return self.name or "BotCore bot"


class IdentityFiles:
    """The identity files of a workspace, re-read when they change on disk.

    `load` is called on every turn; it looks at the files (three `stat` calls in a worker
    thread) at most every `recheck` seconds, so an edit to SOUL.md shows within a second,
    without a restart, and a busy bot does not pay a thread hop per message for it.
    """

    def __init__(self, workspace: Path, *, recheck: float = 1.0) -> None:
        self._workspace = workspace
        self._recheck = recheck
        self._checked: float | None = None
        self._stamp: tuple[tuple[int, int] | None, ...] | None = None
        self._current = Identity()

    async def load(self) -> Identity:
        now = trio.current_time()
        if self._checked is None or now - self._checked >= self._recheck:
            self._current = await trio.to_thread.run_sync(self._load)
            self._checked = now
        return self._current

    def _load(self) -> Identity:
        stamp = tuple(_stamp(self._workspace / name) for name in IDENTITY_FILES)
        if stamp != self._stamp:
            texts = [_read(self._workspace / name) for name in IDENTITY_FILES]
            self._current = Identity.parse(*texts)
            self._stamp = stamp
        return self._current


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_mtime_ns, info.st_size)


def _read(path: Path) -> str:
    """The file's text; "" when missing or not a regular file (a FIFO must not block a turn)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return ""
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return file.read(_MAX_BYTES).decode("utf-8", errors="replace")


@attrs.frozen
class IdentityChange:
    """One change of an identity file by a tool (or a restore), with the text it replaced."""

    id: int
    at: float
    file: str
    op: str
    before: str | None
    """The previous text; None when the file did not exist."""
    after: str | None


class IdentityHistory:
    """Every change the tools made to IDENTITY.md, SOUL.md or USER.md, so it can be undone
    (`botcorebot identity history|restore`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, file: str, op: str, before: str | None, after: str | None) -> int:
        now = time.time()

        def insert(db: Connection) -> int:
            (change_id,) = db.execute(
                "INSERT INTO identity_changes (at, file, op, before, after)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (now, file, op, before, after),
            ).fetchone()
            return int(change_id)

        return await self._db.run(insert)

    async def changes(self, limit: int = 50) -> list[IdentityChange]:
        """The latest changes, newest first."""

        def select(db: Connection) -> list[IdentityChange]:
            rows = db.execute(
                "SELECT id, at, file, op, before, after FROM identity_changes "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [IdentityChange(*row) for row in rows]

        return await self._db.run(select)

    async def get(self, change_id: int) -> IdentityChange | None:
        def select(db: Connection) -> IdentityChange | None:
            row = db.execute(
                "SELECT id, at, file, op, before, after FROM identity_changes WHERE id = ?",
                (change_id,),
            ).fetchone()
            return None if row is None else IdentityChange(*row)

        return await self._db.run(select)
