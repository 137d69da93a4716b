from __future__ import annotations


class BotCoreError(Exception):
    """Base of the BotCore SDK's errors."""


class WorkspaceError(BotCoreError):
    """The workspace folder is missing, not a folder, or unreadable."""


class OutsideWorkspace(BotCoreError):
    """A path leads outside the workspace (`..`, `~`, an absolute path, a symlink)."""


class InvalidMemory(BotCoreError, ValueError):
    """A memory that cannot be stored as given."""
