"""The BotCore SDK in Python: a bot's identity, memory, history, tasks and files.

Usable on its own under trio::

    async with await Bot.open("examples/demo-bot") as bot:
        await bot.memory.store("my cat is called Miso", type="factual")
        print(await bot.memory.recall("cat"))

Errors::

    BotCoreError
    ├── WorkspaceError   the workspace is missing or unreadable
    ├── OutsideWorkspace a file path leads outside the workspace
    ├── FileRefused      a file tools may not use (config, database, lock, identity, FIFO, ...)
    ├── InvalidMemory    a memory with no content, an unknown type, importance outside [0, 1]
    └── TaskGraphError   .gid/graph.yml cannot be read, or a task asked for is not in it
"""

from runtime.botcore._bot import Bot, BotTools
from runtime.botcore._consolidation import (
    ConsolidationStats,
    RetentionPolicy,
    Summarize,
    consolidate,
    extractive_summary,
)
from runtime.botcore._db import Connection, Database, Dialect
from runtime.botcore._errors import (
    BotCoreError,
    FileRefused,
    InvalidMemory,
    OutsideWorkspace,
    WorkspaceError,
)
from runtime.botcore._files import FileTools
from runtime.botcore._gid import GraphView, TaskGraph, TaskGraphError, TaskNode
from runtime.botcore._history import History, HistoryEntry
from runtime.botcore._identity import Identity, IdentityChange, IdentityFiles, IdentityHistory
from runtime.botcore._memory import Memory, MemoryStats, MemoryStore, MemoryType

__all__ = [
    "Bot",
    "BotCoreError",
    "BotTools",
    "Connection",
    "ConsolidationStats",
    "Database",
    "Dialect",
    "FileRefused",
    "FileTools",
    "GraphView",
    "History",
    "HistoryEntry",
    "Identity",
    "IdentityChange",
    "IdentityFiles",
    "IdentityHistory",
    "InvalidMemory",
    "Memory",
    "MemoryStats",
    "MemoryStore",
    "MemoryType",
    "OutsideWorkspace",
    "RetentionPolicy",
    "Summarize",
    "TaskGraph",
    "TaskGraphError",
    "TaskNode",
    "WorkspaceError",
    "consolidate",
    "extractive_summary",
]
