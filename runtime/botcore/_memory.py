from __future__ import annotations

import enum
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping

import attrs

from runtime.botcore._db import Database
from runtime.botcore._errors import InvalidMemory

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    """
    a about after again all also am an and any are as at be been before being but by can
    could did do does doing for from had has have having he her here hers him his how i if
    in into is it its just me more most my no nor not now of on once only or other our ours
    out over own same she should so some such than that the their theirs them then there
    these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours remember recall know tell
    """.split()  # noqa: SIM905
)


class MemoryType(enum.StrEnum):
    """Engram's kinds of memory."""

    FACTUAL = "factual"
    EPISODIC = "episodic"
    RELATIONAL = "relational"
    EMOTIONAL = "emotional"
    PROCEDURAL = "procedural"
    OPINION = "opinion"


@attrs.frozen
class Memory:
    id: int
    content: str
    type: MemoryType
    importance: float
    created_at: float
    confidence: float = 0.0
    """How well this memory matches the query that recalled it, from 0 to 1."""


def query_terms(text: str) -> list[str]:
    """The words of `text` worth searching for: lowercased, without stopwords, deduplicated."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


class MemoryStore:
    """Engram memory on SQLite with an FTS5 (BM25, Porter stemming) index."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def store(
        self,
        content: str,
        *,
        type: MemoryType | str = MemoryType.FACTUAL,
        importance: float = 0.5,
        metadata: Mapping[str, str | int | float | bool | None] | None = None,
    ) -> int:
        """Store a memory and return its id; `InvalidMemory` says what was wrong."""
        content = content.strip()
        if not content:
            raise InvalidMemory("a memory needs some content")
        try:
            kind = MemoryType(type)
        except ValueError:
            names = ", ".join(t.value for t in MemoryType)
            raise InvalidMemory(f"unknown memory type {type!r}; use one of {names}") from None
        if not 0.0 <= importance <= 1.0:
            raise InvalidMemory(f"importance must be between 0 and 1, got {importance}")
        meta = json.dumps(dict(metadata or {}))
        now = time.time()

        def insert(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "INSERT INTO memories (content, type, importance, metadata, created_at, accessed_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (content, kind.value, importance, meta, now, now),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self._db.run(insert)

    async def recall(
        self, query: str, *, limit: int = 5, types: Iterable[MemoryType | str] | None = None
    ) -> list[Memory]:
        """The memories that best match `query`, best first; each recall strengthens them."""
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        match = " OR ".join(f'"{term}"' for term in terms)
        kinds = [MemoryType(t).value for t in types] if types else []
        where = f" AND m.type IN ({', '.join('?' * len(kinds))})" if kinds else ""
        now = time.time()

        def search(db: sqlite3.Connection) -> list[Memory]:
            rows = db.execute(
                "SELECT m.id, m.content, m.type, m.importance, m.created_at"
                " FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid"
                f" WHERE memories_fts MATCH ?{where}"
                " ORDER BY bm25(memories_fts) * (0.5 + m.importance) LIMIT ?",
                (match, *kinds, limit),
            ).fetchall()
            db.executemany(
                "UPDATE memories SET accessed_at = ?, access_count = access_count + 1 WHERE id = ?",
                [(now, row[0]) for row in rows],
            )
            return [
                Memory(
                    id=row[0],
                    content=row[1],
                    type=MemoryType(row[2]),
                    importance=row[3],
                    created_at=row[4],
                    confidence=_coverage(terms, row[1]),
                )
                for row in rows
            ]

        return await self._db.run(search)

    async def count(self) -> int:
        return await self._db.run(
            lambda db: db.execute("SELECT count(*) FROM memories").fetchone()[0]
        )


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _coverage(terms: list[str], content: str) -> float:
    """The share of the query's terms that the memory contains (stems compared)."""
    have = {_stem(word) for word in _WORD.findall(content.lower())}
    hits = sum(1 for term in terms if _stem(term) in have)
    return round(hits / len(terms), 3)
