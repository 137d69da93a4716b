from __future__ import annotations

import sqlite3
import time
from typing import Literal

import attrs

from runtime.botcore._db import Database

Status = Literal["todo", "in_progress", "done", "blocked"]
STATUSES: tuple[Status, ...] = ("todo", "in_progress", "done", "blocked")


@attrs.frozen
class Task:
    id: int
    title: str
    status: Status


class Tasks:
    """A minimal task list in the bot's database (the GID graph file comes later)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, title: str) -> Task:
        if not title.strip():
            raise ValueError("a task needs a title")
        now = time.time()

        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO tasks (title, status, created_at, updated_at) VALUES (?, 'todo', ?, ?)",
                (title.strip(), now, now),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return Task(await self._db.run(insert), title.strip(), "todo")

    async def update(self, task_id: int, status: Status) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
        changed = await self._db.run(
            lambda db: (
                db.execute(
                    "UPDATE tasks SET status = ?, updated_at = ? WHERE id = ?",
                    (status, time.time(), task_id),
                ).rowcount
            )
        )
        if not changed:
            raise KeyError(f"no task {task_id}")

    async def list(self) -> list[Task]:
        rows = await self._db.run(
            lambda db: db.execute("SELECT id, title, status FROM tasks ORDER BY id").fetchall()
        )
        return [Task(*row) for row in rows]
