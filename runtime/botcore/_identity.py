from __future__ import annotations

import re
from pathlib import Path

import attrs
import trio

_FIELD = re.compile(r"^\s*[-*]\s*\*\*(?P<key>[^*:]+):?\*\*:?\s*(?P<value>.*?)\s*$")
_FILES = ("IDENTITY.md", "SOUL.md", "USER.md")


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
        stamp = tuple(_stamp(self._workspace / name) for name in _FILES)
        if stamp != self._stamp:
            texts = [_read(self._workspace / name) for name in _FILES]
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
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
