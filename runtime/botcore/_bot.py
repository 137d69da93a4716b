from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import attrs
import trio

from runtime.botcore._db import Database, describe, is_postgres_url
from runtime.botcore._errors import WorkspaceError
from runtime.botcore._files import TOOL_THREADS, FileTools
from runtime.botcore._gid import TaskGraph
from runtime.botcore._history import History
from runtime.botcore._identity import IdentityFiles
from runtime.botcore._memory import MemoryStore


@attrs.frozen
class BotTools:
    fs: FileTools


class Bot:
    """A BotCore workspace opened for use: identity, memory, history, tasks and files."""

    def __init__(self, workspace: Path, db: Database) -> None:
        self.workspace = workspace
        self.db = db
        self.identity = IdentityFiles(workspace)
        self.memory = MemoryStore(db)
        self.history = History(db)
        limiter = trio.CapacityLimiter(TOOL_THREADS)
        self.tasks = TaskGraph(workspace, limiter=limiter)
        self.tools = BotTools(fs=FileTools(workspace, db, limiter=limiter))

    @classmethod
    async def open(
        cls, workspace: str | os.PathLike[str], database: Path | str | None = None
    ) -> Bot:
        """Open the workspace folder and its database: a SQLite file (`<workspace>/engram.db`
        unless given) or a `postgresql://` URL."""
        root = await trio.to_thread.run_sync(_check_workspace, Path(workspace))
        target = database or root / "engram.db"
        try:
            db = await Database.open(target)
        except Exception as exc:
            where = describe(str(target)) if is_postgres_url(target) else target
            raise WorkspaceError(f"cannot open the database {where}: {exc}") from exc
        return cls(root, db)

    async def aclose(self) -> None:
        await self.db.aclose()

    async def __aenter__(self) -> Bot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _check_workspace(path: Path) -> Path:
    root = path.expanduser().resolve()
    if not root.is_dir():
        raise WorkspaceError(
            f"workspace {str(root)!r} is not a folder; create it with 'botcorebot init'"
        )
    if not os.access(root, os.R_OK | os.W_OK | os.X_OK):
        raise WorkspaceError(f"workspace {str(root)!r} is not readable and writable")
    return root
