"""The word search under memory recall, on each engine: SQLite's FTS5 index or PostgreSQL's
`tsvector` column with a GIN index.

Both stem English words (FTS5's porter tokenizer; a Snowball English dictionary without
stopwords on PostgreSQL) and rank with the same BM25 (k1 = 1.2, b = 0.75): FTS5 computes it
itself; on PostgreSQL it is computed here from each match's term frequencies (its `tsvector`)
and length (`memories.words`), over at most the ranked search's budget of matches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol

from runtime.botcore._db import Connection

Row = tuple[Any, ...]

K1 = 1.2
B = 0.75
_AVERAGE_SAMPLE = 2000
"""The newest memories whose mean length stands for all of them in BM25 (an exact mean
would scan the table at every recall)."""


class WordSearch(Protocol):
    def all_of(
        self, db: Connection, terms: Sequence[str], where: str, params: Sequence[Any]
    ) -> list[Row]:
        """(id, content) of up to 20 memories with every one of `terms` (and `where`)."""
        ...

    def counts(self, db: Connection, terms: Sequence[str], cap: int) -> list[int]:
        """How many memories have each term, counted up to `cap` at most."""
        ...

    def ranked(
        self,
        db: Connection,
        columns: str,
        terms: Sequence[str],
        hits: Sequence[int],
        where: str,
        kinds: Sequence[str],
        count: int,
    ) -> list[tuple[Row, float]]:
        """The best `count` memories with any of `terms` (each in `hits` memories), by BM25:
        (the `columns` of each, its BM25, higher is better)."""
        ...

    def newest(
        self,
        db: Connection,
        columns: str,
        terms: Sequence[str],
        where: str,
        kinds: Sequence[str],
        window: int,
        count: int,
    ) -> list[Row]:
        """Up to `count` of the newest `window` memories with any of `terms`, newest first."""
        ...


def word_search(db: Connection) -> WordSearch:
    return _TSVECTOR if db.dialect == "postgresql" else _FTS5


def null_safe_equal(db: Connection) -> str:
    """SQL's `=` that is true for two NULLs too."""
    return "IS NOT DISTINCT FROM" if db.dialect == "postgresql" else "IS"


class _Fts5:
    """SQLite: the `memories_fts` table (external content, kept by triggers)."""

    def all_of(
        self, db: Connection, terms: Sequence[str], where: str, params: Sequence[Any]
    ) -> list[Row]:
        return db.execute(
            "SELECT m.id, m.content FROM memories_fts CROSS JOIN memories m"
            f" ON m.id = memories_fts.rowid WHERE memories_fts MATCH ?{where} LIMIT 20",
            (" AND ".join(f'"{t}"' for t in terms), *params),
        ).fetchall()

    def counts(self, db: Connection, terms: Sequence[str], cap: int) -> list[int]:
        probe = " UNION ALL ".join(
            f"SELECT {n}, count(*) FROM (SELECT rowid FROM memories_fts"
            f" WHERE memories_fts MATCH ? LIMIT {cap})"
            for n in range(len(terms))
        )
        found = dict(db.execute(probe, [_any_of([term]) for term in terms]).fetchall())
        return [int(found[n]) for n in range(len(terms))]

    def ranked(
        self,
        db: Connection,
        columns: str,
        terms: Sequence[str],
        hits: Sequence[int],
        where: str,
        kinds: Sequence[str],
        count: int,
    ) -> list[tuple[Row, float]]:
        rows = db.execute(
            f"SELECT {columns}, rank"
            " FROM memories_fts CROSS JOIN memories m ON m.id = memories_fts.rowid"
            f" WHERE memories_fts MATCH ?{where} ORDER BY rank LIMIT ?",
            (_any_of(terms), *kinds, count),
        ).fetchall()
        return [(tuple(row[:-1]), -float(row[-1])) for row in rows]

    def newest(
        self,
        db: Connection,
        columns: str,
        terms: Sequence[str],
        where: str,
        kinds: Sequence[str],
        window: int,
        count: int,
    ) -> list[Row]:
        return db.execute(
            f"SELECT {columns} FROM (SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?"
            " ORDER BY rowid DESC LIMIT ?) AS f CROSS JOIN memories m ON m.id = f.rowid"
            f" WHERE true{where} LIMIT ?",
            (_any_of(terms), window, *kinds, count),
        ).fetchall()


def _any_of(terms: Sequence[str]) -> str:
    return " OR ".join(f'"{term}"' for term in terms)


class _Tsvector:
    """PostgreSQL: `memories.tsv`, generated from the content with the `botcore` text search
    configuration (see `runtime.botcore._postgres`)."""

    def all_of(
        self, db: Connection, terms: Sequence[str], where: str, params: Sequence[Any]
    ) -> list[Row]:
        return db.execute(
            "SELECT m.id, m.content FROM memories m"
            f" WHERE m.tsv @@ plainto_tsquery('botcore', ?){where} LIMIT 20",
            (" ".join(terms), *params),
        ).fetchall()

    def counts(self, db: Connection, terms: Sequence[str], cap: int) -> list[int]:
        probe = " UNION ALL ".join(
            f"SELECT {n}, (SELECT count(*) FROM (SELECT 1 FROM memories"
            f" WHERE tsv @@ plainto_tsquery('botcore', ?) LIMIT {cap}) AS s)"
            for n in range(len(terms))
        )
        found = dict(db.execute(probe, list(terms)).fetchall())
        return [int(found[n]) for n in range(len(terms))]

    def ranked(
        self,
        db: Connection,
        columns: str,
        terms: Sequence[str],
        hits: Sequence[int],
        where: str,
        kinds: Sequence[str],
        count: int,
    ) -> list[tuple[Row, float]]:
        # Every match: the terms were chosen so that they have few (the ranked budget).
        rows = db.execute(
            f"SELECT {columns}, m.words, m.tsv::text FROM memories m"
            f" WHERE m.tsv @@ ({_any_query(len(terms))}){where}",
            (*terms, *kinds),
        ).fetchall()
        if not rows:
            return []
        lexemes = [
            _first_lexeme(str(text))
            for (text,) in db.execute(
                "SELECT to_tsvector('botcore', t)::text FROM unnest(?::text[]) WITH ORDINALITY"
                " AS q(t, n) ORDER BY n",
                (list(terms),),
            ).fetchall()
        ]
        total, average = db.execute(
            "SELECT (SELECT max(id) FROM memories),"
            f" (SELECT avg(words) FROM (SELECT words FROM memories ORDER BY id DESC"
            f" LIMIT {_AVERAGE_SAMPLE}) AS recent)"
        ).fetchone()
        documents, mean = float(total or 1), float(average or 1.0) or 1.0
        idf = [_idf(documents, hit) for hit in hits]
        scored = []
        for row in rows:
            frequencies = _frequencies(str(row[-1]))
            norm = K1 * (1 - B + B * float(row[-2]) / mean)
            score = 0.0
            for lexeme, weight in zip(lexemes, idf, strict=True):
                tf = frequencies.get(lexeme, 0) if lexeme else 0
                if tf:
                    score += weight * tf * (K1 + 1) / (tf + norm)
            scored.append((tuple(row[:-2]), score))
        scored.sort(key=lambda pair: pair[1], reverse=True)
        return scored[:count]

    def newest(
        self,
        db: Connection,
        columns: str,
        terms: Sequence[str],
        where: str,
        kinds: Sequence[str],
        window: int,
        count: int,
    ) -> list[Row]:
        return db.execute(
            f"SELECT {columns} FROM (SELECT id FROM memories WHERE tsv @@ ({_any_query(len(terms))})"
            " ORDER BY id DESC LIMIT ?) AS f CROSS JOIN memories m ON m.id = f.id"
            f" WHERE true{where} ORDER BY m.id DESC LIMIT ?",
            (*terms, window, *kinds, count),
        ).fetchall()


def _any_query(terms: int) -> str:
    return " || ".join(["plainto_tsquery('botcore', ?)"] * terms)


def _idf(documents: float, hits: int) -> float:
    """FTS5's: never below a tiny positive value, so a word in most memories still counts."""
    return max(1e-6, math.log((documents - hits + 0.5) / (hits + 0.5)))


_LEXEME = re.compile(r"'((?:[^']|'')*)'(?::([\d,A-D]+))?")


def _frequencies(tsvector: str) -> dict[str, int]:
    """Each lexeme of a `tsvector`'s text form ('word':1,4 'other':2) and how often it occurs."""
    return {
        match[1].replace("''", "'"): len(match[2].split(",")) if match[2] else 1
        for match in _LEXEME.finditer(tsvector)
    }


def _first_lexeme(tsvector: str) -> str | None:
    match = _LEXEME.search(tsvector)
    return None if match is None else match[1].replace("''", "'")


_FTS5 = _Fts5()
_TSVECTOR = _Tsvector()
