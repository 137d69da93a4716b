from __future__ import annotations

import enum
import hashlib
import json
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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
    strength: float = 0.0
    """Its ACT-R activation as a retrieval probability, from 0 to 1: high when used often
    and lately, fading while unused."""
    accessed_at: float = 0.0
    access_count: int = 0
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class MemoryStats:
    total_memories: int
    by_type: Mapping[str, int]
    oldest_memory: float | None
    newest_memory: float | None
    avg_importance: float


DECAY = 0.5
"""ACT-R's decay exponent d."""
THRESHOLD = -7.0
"""The activation at which `strength` is one half (about a week unused, seen once)."""
DUPLICATE = 0.8
"""Word-stem overlap (Jaccard) above which a new memory reinforces an old one."""
_CANDIDATES = 30
_NEAR_TERMS = 16
"""Longer memories (episodes) are matched by fingerprint only: the word search for near
copies grows with the square of their length."""


def activation(uses: int, created_at: float, accessed_at: float, now: float) -> float:
    """ACT-R base-level activation ln(Σ t_j^-d) over `uses` presentations, from the first and
    the last only (Petrov 2006): the last exactly, the others spread over the lifetime."""
    last = max(now - accessed_at, 1.0)
    life = max(now - created_at, last)
    total = last**-DECAY
    if uses > 1 and life > last:
        spread = (life ** (1 - DECAY) - last ** (1 - DECAY)) / ((1 - DECAY) * (life - last))
        total += (uses - 1) * spread
    return math.log(total)


def strength(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-(value - THRESHOLD)))


def query_terms(text: str) -> list[str]:
    """The words of `text` worth searching for: lowercased, without stopwords, deduplicated."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOPWORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


def check(content: str, type: MemoryType | str, importance: float) -> tuple[str, MemoryType, float]:
    """A memory's fields as stored, or `InvalidMemory` saying what is wrong."""
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
    return content, kind, float(importance)


def remember(
    db: sqlite3.Connection,
    content: str,
    kind: MemoryType,
    importance: float,
    metadata: Mapping[str, Any],
    now: float,
) -> tuple[int, bool]:
    """Insert a memory inside the caller's transaction, or reinforce a near-duplicate of the
    same type (one more use, the higher importance): (id, reinforced). A near-duplicate makes
    the same claims: texts that differ in a negation, a number or a name are two facts."""
    terms = query_terms(content)
    mine = {_stem(term) for term in terms}
    fingerprint = _fingerprint(mine)
    candidates = db.execute(
        "SELECT id, content FROM memories WHERE type = ? AND fingerprint = ? LIMIT 20",
        (kind.value, fingerprint),
    ).fetchall()
    if not candidates and 1 < len(terms) <= _NEAR_TERMS:
        # Memories with all of these words and maybe more (FTS5 stems them; the AND is
        # cheap: it walks the rarest word's list).
        candidates = db.execute(
            "SELECT m.id, m.content FROM memories_fts CROSS JOIN memories m ON m.id = memories_fts.rowid"
            " WHERE memories_fts MATCH ? AND m.type = ? LIMIT 20",
            (" AND ".join(f'"{t}"' for t in terms), kind.value),
        ).fetchall()
    for other_id, other in candidates:
        theirs = _stems(other)
        similar = len(mine & theirs) / max(1, len(mine | theirs)) >= DUPLICATE
        if similar and _same_claims(content, other):
            db.execute(
                "UPDATE memories SET access_count = access_count + 1, accessed_at = ?,"
                " importance = max(importance, ?) WHERE id = ?",
                (now, importance, other_id),
            )
            return other_id, True
    cursor = db.execute(
        "INSERT INTO memories (content, type, importance, metadata, created_at, accessed_at,"
        " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (content, kind.value, importance, json.dumps(dict(metadata)), now, now, fingerprint),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid, False


EPISODE_IMPORTANCE = 0.3


def episode_of(exchange: Iterable[tuple[str, str]]) -> str:
    """The episodic memory of one exchange (stored with it automatically): what was said,
    shortened; consolidation later folds old episodes into summaries."""
    said = {role: text for role, text in exchange}
    if not said.get("user"):
        return ""
    episode = f"User said: {_shorten(said['user'], 600)}"
    if said.get("assistant"):
        episode += f" | I answered: {_shorten(said['assistant'], 300)}"
    return episode


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class MemoryStore:
    """Engram memory on SQLite: FTS5 (BM25, Porter stemming) ranked with importance and an
    ACT-R activation, so what is used stays and what is not fades."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def store(
        self,
        content: str,
        *,
        type: MemoryType | str = MemoryType.FACTUAL,
        importance: float = 0.5,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Store a memory and return its id (the existing one's when this is a near-duplicate,
        which is reinforced instead); `InvalidMemory` says what was wrong."""
        content, kind, importance = check(content, type, importance)
        now = time.time()
        memory_id, _ = await self._db.run(
            lambda db: remember(db, content, kind, importance, metadata or {}, now)
        )
        return memory_id

    async def recall(
        self,
        query: str,
        *,
        limit: int = 5,
        types: Iterable[MemoryType | str] | None = None,
        now: float | None = None,
    ) -> list[Memory]:
        """The memories that best match `query`, best first; each recall strengthens them.

        Ranking: BM25 relevance, weighted by importance and by strength (activation)."""
        try:
            kinds = [MemoryType(t).value for t in types] if types else []
        except ValueError as exc:
            raise InvalidMemory(str(exc)) from None
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        at = time.time() if now is None else now

        def search(db: sqlite3.Connection) -> list[Memory]:
            rows, relevance = _candidates(db, terms, kinds, max(_CANDIDATES, limit * 4))

            def score(row: tuple[Any, ...]) -> float:
                _, _, _, importance, created, accessed, uses, _ = row
                lasting = strength(activation(uses + 1, created, accessed, at))
                return float(relevance(row) * (0.6 + 0.4 * importance) * (0.7 + 0.3 * lasting))

            best = sorted(rows, key=score, reverse=True)[:limit]
            found = [
                attrs.evolve(m, confidence=_coverage(terms, m.content))
                for m in (_memory(row, at) for row in best)
            ]
            db.executemany(
                "UPDATE memories SET accessed_at = ?, access_count = access_count + 1 WHERE id = ?",
                [(at, m.id) for m in found],
            )
            return found

        return await self._db.run(search)

    async def get(self, memory_id: int) -> Memory | None:
        row = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM memories m WHERE id = ?", (memory_id,)
            ).fetchone()
        )
        return None if row is None else _memory(row, time.time())

    async def count(self) -> int:
        return await self._db.run(
            lambda db: db.execute("SELECT count(*) FROM memories").fetchone()[0]
        )

    async def stats(self) -> MemoryStats:
        def read(db: sqlite3.Connection) -> MemoryStats:
            total, oldest, newest, average = db.execute(
                "SELECT count(*), min(created_at), max(created_at), avg(importance) FROM memories"
            ).fetchone()
            by_type = dict(db.execute("SELECT type, count(*) FROM memories GROUP BY type"))
            return MemoryStats(total, by_type, oldest, newest, round(average or 0.0, 3))

        return await self._db.run(read)

    async def export(self) -> list[Memory]:
        """Every memory, oldest first (for `botcorebot memory export`)."""
        now = time.time()
        rows = await self._db.run(
            lambda db: db.execute(f"SELECT {_COLUMNS} FROM memories m ORDER BY id").fetchall()
        )
        return [_memory(row, now) for row in rows]

    async def load(self, memories: Iterable[Memory]) -> tuple[int, int]:
        """Add exported memories, keeping their times and uses: (added, reinforced)."""
        batch = list(memories)

        def write(db: sqlite3.Connection) -> tuple[int, int]:
            added = reinforced = 0
            for m in batch:
                content, kind, importance = check(m.content, m.type, m.importance)
                memory_id, again = remember(db, content, kind, importance, m.metadata, m.created_at)
                if again:
                    reinforced += 1
                    continue
                added += 1
                db.execute(
                    "UPDATE memories SET accessed_at = ?, access_count = ? WHERE id = ?",
                    (max(m.accessed_at, m.created_at), m.access_count, memory_id),
                )
            return added, reinforced

        return await self._db.run(write)


_COLUMNS = (
    "m.id, m.content, m.type, m.importance, m.created_at, m.accessed_at, m.access_count, m.metadata"
)


def _memory(row: tuple[Any, ...], now: float) -> Memory:
    memory_id, content, kind, importance, created, accessed, uses, metadata = row
    return Memory(
        id=memory_id,
        content=content,
        type=MemoryType(kind),
        importance=importance,
        created_at=created,
        strength=round(strength(activation(uses + 1, created, accessed, now)), 3),
        accessed_at=accessed,
        access_count=uses,
        metadata=json.loads(metadata or "{}"),
    )


COMMON = 400
"""A word in more memories than this is common: BM25 would score every one of them, so recall
leaves it out of the ranked search (it is worth little there anyway: its IDF is low)."""
RANKED_BUDGET = 800
"""How many matching memories the ranked search may score in all, rarest words first: this
bounds a recall's cost however many memories the bot has."""
_SEARCHED_TERMS = 64
"""The words of a query that are searched (the first ones): a pasted page stays one bounded
statement (SQLite allows 500 SELECTs in a compound one)."""


def _candidates(
    db: sqlite3.Connection, terms: list[str], kinds: list[str], count: int
) -> tuple[list[tuple[Any, ...]], Callable[[tuple[Any, ...]], float]]:
    """Up to `count` memories worth ranking for `terms`, and how relevant each is.

    Each word's memories are counted up to `COMMON` (a bounded probe). The rare words, rarest
    first within `RANKED_BUDGET`, are searched and ranked by BM25 as before; the common ones
    only add a small bonus to the memories that also contain them. A query of common words
    alone takes the newest memories that contain any of them, ranked by how many they contain.
    """
    where = f" AND m.type IN ({', '.join('?' * len(kinds))})" if kinds else ""
    terms = terms[:_SEARCHED_TERMS]
    probe = " UNION ALL ".join(
        f"SELECT {n}, count(*) FROM (SELECT rowid FROM memories_fts"
        f" WHERE memories_fts MATCH ? LIMIT {COMMON + 1})"
        for n in range(len(terms))
    )
    found = dict(db.execute(probe, [_match([term]) for term in terms]).fetchall())
    ranked, common, spent = [], [], 0
    for n in sorted(range(len(terms)), key=found.__getitem__):
        if found[n] == 0:
            continue
        if found[n] <= COMMON and spent + found[n] <= RANKED_BUDGET:
            ranked.append(terms[n])
            spent += found[n]
        else:
            common.append(terms[n])
    if ranked:
        rows = db.execute(
            f"SELECT {_COLUMNS}, rank"
            " FROM memories_fts CROSS JOIN memories m ON m.id = memories_fts.rowid"
            f" WHERE memories_fts MATCH ?{where} ORDER BY rank LIMIT ?",
            (_match(ranked), *kinds, count),
        ).fetchall()
        bm25 = {row[0]: -row[-1] for row in rows}

        def relevance(row: tuple[Any, ...]) -> float:
            return float(bm25[row[0]]) * (1.0 + 0.2 * _coverage(common, row[1]))

        return [row[:-1] for row in rows], relevance
    if not common:
        return [], _coverage_of(terms)
    # Newest first from the index itself (no scoring), in a bounded window even when a
    # type filter leaves few of them.
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?"
        " ORDER BY rowid DESC LIMIT ?) AS f CROSS JOIN memories m ON m.id = f.rowid"
        f" WHERE 1{where} LIMIT ?",
        (_match(common), count * (8 if kinds else 1), *kinds, count),
    ).fetchall()
    return rows, _coverage_of(common)


def _coverage_of(terms: list[str]) -> Callable[[tuple[Any, ...]], float]:
    return lambda row: _coverage(terms, row[1])


def _match(terms: list[str]) -> str:
    return " OR ".join(f'"{term}"' for term in terms)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _stems(text: str) -> set[str]:
    return {_stem(term) for term in query_terms(text)}


_NEGATION = re.compile(
    r"\b(?:not|no|never|nor|none|nobody|nothing|neither|nowhere|cannot|without)\b|n['\u2019]t\b",
    re.IGNORECASE,
)


def _same_claims(one: str, other: str) -> bool:
    """Whether two similar texts say the same thing as far as words can tell: as many
    negations, and the same numbers and names in the same order ("Bob owes Alice 50" is not
    "Alice owes Bob 60"). Word overlap is blind to exactly what a correction changes."""
    if len(_NEGATION.findall(one)) != len(_NEGATION.findall(other)):
        return False
    names = _names(one) | _names(other)
    return _significant(one, names) == _significant(other, names)


def _names(text: str) -> set[str]:
    """Capitalized words inside a sentence (lowercased): a sentence's first word is
    capitalized whatever it is."""
    names = set()
    opening, position = True, 0
    for match in _WORD.finditer(text):
        word = match.group()
        opening = opening or any(mark in ".!?:;|\n" for mark in text[position : match.start()])
        if word[0].isupper() and not opening and word.lower() not in _STOPWORDS:
            names.add(word.lower())
        opening, position = False, match.end()
    return names


def _significant(text: str, names: set[str]) -> list[str]:
    """The numbers and names of `text`, in order."""
    return [
        word
        for word in _WORD.findall(text.lower())
        if word in names or any(char.isdigit() for char in word)
    ]


def _fingerprint(stems: set[str]) -> str:
    """The same for texts that differ only in case, punctuation, stopwords, word order or a
    plural: they are one memory."""
    return hashlib.blake2b(" ".join(sorted(stems)).encode(), digest_size=12).hexdigest()


def _coverage(terms: list[str], content: str) -> float:
    """The share of the query's terms that the memory contains (stems compared)."""
    if not terms:
        return 0.0
    have = {_stem(word) for word in _WORD.findall(content.lower())}
    hits = sum(1 for term in terms if _stem(term) in have)
    return round(hits / len(terms), 3)
