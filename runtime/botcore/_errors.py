from __future__ import annotations


class BotCoreError(Exception):
    """Base of the BotCore SDK's errors."""


class WorkspaceError(BotCoreError):
    """The workspace folder is missing, not a folder, or unreadable."""


class OutsideWorkspace(BotCoreError):
    """A path leads outside the workspace (`..`, `~`, an absolute path, a symlink)."""


class InvalidMemory(BotCoreError, ValueError):
    """A memory that cannot be stored as given."""


class FileRefused(BotCoreError):
    """A file the tools may not use: the bot's configuration, database or lock files, an
    identity file while those are read-only, a hard link, a FIFO, socket or device, or a
    file too large to read."""
