from __future__ import annotations

import calendar
import datetime as dt
import enum
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from runtime.botcore._db import Connection, Database
from runtime.botcore._errors import InvalidMemory
from runtime.botcore._fulltext import null_safe_equal, word_search

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    """
    a about after again all also am an and any are as at be been before being but by can
    could did do does doing for from had has have having he her here hers him his how i if
    in into is it its just me more most my no nor not now of on once only or other our ours
    out over own same she should so some such than that the their theirs them then there
    these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours remember recall know tell
    say said us mention mentioned
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
    speaker: str | None = None
    """Who said it (an episode's sender), when known."""
    conversation: str | None = None
    """The conversation (session key) an episode was said in: its neighbours are there."""


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
    db: Connection,
    content: str,
    kind: MemoryType,
    importance: float,
    metadata: Mapping[str, Any],
    now: float,
    *,
    speaker: str | None = None,
    conversation: str | None = None,
) -> tuple[int, bool]:
    """Insert a memory inside the caller's transaction, or reinforce a near-duplicate of the
    same type, said by the same person in the same conversation (one more use, the higher
    importance): (id, reinforced). A near-duplicate makes
    the same claims: texts that differ in a negation, a number or a name are two facts."""
    terms = query_terms(content)
    mine = {_stem(term) for term in terms}
    fingerprint = _fingerprint(mine)
    same = null_safe_equal(db)
    candidates = db.execute(
        "SELECT id, content FROM memories WHERE type = ? AND fingerprint = ?"
        f" AND speaker {same} ? AND conversation {same} ? LIMIT 20",
        (kind.value, fingerprint, speaker, conversation),
    ).fetchall()
    if not candidates and 1 < len(terms) <= _NEAR_TERMS:
        # Memories with all of these words and maybe more (stemmed by the index; the AND is
        # cheap: it walks the rarest word's list).
        candidates = word_search(db).all_of(
            db,
            terms,
            f" AND m.type = ? AND m.speaker {same} ? AND m.conversation {same} ?",
            (kind.value, speaker, conversation),
        )
    for other_id, other in candidates:
        theirs = _stems(other)
        similar = len(mine & theirs) / max(1, len(mine | theirs)) >= DUPLICATE
        if similar and _same_claims(content, other):
            db.execute(
                "UPDATE memories SET access_count = access_count + 1, accessed_at = ?,"
                " importance = CASE WHEN importance < ? THEN ? ELSE importance END WHERE id = ?",
                (now, importance, importance, other_id),
            )
            return other_id, True
    (memory_id,) = db.execute(
        "INSERT INTO memories (content, type, importance, metadata, created_at, accessed_at,"
        " fingerprint, speaker, conversation, words) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " RETURNING id",
        (
            content,
            kind.value,
            importance,
            json.dumps(dict(metadata)),
            now,
            now,
            fingerprint,
            speaker,
            conversation,
            len(_WORD.findall(content)),
        ),
    ).fetchone()
    return int(memory_id), False


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

        Ranking: BM25 relevance, weighted by importance and by strength (activation). An
        episode also scores with its neighbours in the conversation (a reply answers the turn
        before it), more when the query names who said it, and more when it was said on the
        day the query names ("on 14 March", "yesterday")."""
        try:
            kinds = [MemoryType(t).value for t in types] if types else []
        except ValueError as exc:
            raise InvalidMemory(str(exc)) from None
        at = time.time() if now is None else now
        window, rest = _window(query, at)
        terms = query_terms(rest)
        if not (terms or window) or limit <= 0:
            return []

        def search(db: Connection) -> list[Memory]:
            count = max(_CANDIDATES, limit * 4)
            rows, relevance = _candidates(db, terms, kinds, count)
            day = _said_within(db, window, kinds) if window else []
            # A name of someone who spoke (here or in the turns around) is who said it, not a
            # word to find: search without it (a second bounded search) and favour what that
            # person said instead.
            names = set(terms) & _speakers(rows + day, _neighbours(db, rows))
            if names and (set(terms) - names or day):
                rows, relevance = _candidates(
                    db, [t for t in terms if t not in names], kinds, count
                )
            rows = list({row[0]: row for row in rows + day}.values())
            weight = _in_context(db, rows, relevance, names, window)

            def score(row: tuple[Any, ...]) -> float:
                importance, created, accessed, uses = row[3:7]
                lasting = strength(activation(uses + 1, created, accessed, at))
                return float(weight[row[0]] * (0.6 + 0.4 * importance) * (0.7 + 0.3 * lasting))

            rows = [row for row in rows if weight[row[0]] > 0]
            best = sorted(rows, key=score, reverse=True)[:limit]
            found = [
                attrs.evolve(m, confidence=_coverage(terms, m.content))
                for m in (_memory(row, at) for row in best)
            ]
            if db.dialect == "postgresql":
                # Replicas recall the same memories at once, each in batches of its own: a use
                # another transaction is counting right now is skipped, not waited for
                # (batches waiting on each other's rows deadlock).
                db.execute(
                    "UPDATE memories SET accessed_at = ?, access_count = access_count + 1"
                    " WHERE id IN (SELECT id FROM memories WHERE id = ANY(?)"
                    " FOR UPDATE SKIP LOCKED)",
                    (at, [m.id for m in found]),
                )
            else:
                db.executemany(
                    "UPDATE memories SET accessed_at = ?, access_count = access_count + 1"
                    " WHERE id = ?",
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
        def read(db: Connection) -> MemoryStats:
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

        def write(db: Connection) -> tuple[int, int]:
            added = reinforced = 0
            for m in batch:
                content, kind, importance = check(m.content, m.type, m.importance)
                memory_id, again = remember(
                    db,
                    content,
                    kind,
                    importance,
                    m.metadata,
                    m.created_at,
                    speaker=m.speaker,
                    conversation=m.conversation,
                )
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
    "m.id, m.content, m.type, m.importance, m.created_at, m.accessed_at, m.access_count,"
    " m.metadata, m.speaker, m.conversation"
)


def _memory(row: tuple[Any, ...], now: float) -> Memory:
    memory_id, content, kind, importance, created, accessed, uses, metadata, speaker, chat = row
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
        speaker=speaker,
        conversation=chat,
    )


COMMON = 400
"""A word in more memories than this is common: BM25 would score every one of them, so recall
leaves it out of the ranked search (it is worth little there anyway: its IDF is low)."""
RANKED_BUDGET = 800
"""How many matching memories the ranked search may score in all, rarest words first: this
bounds a recall's cost however many memories the bot has."""
LENGTH_NORMALISATION = 0.5
"""How much of FTS5's BM25 (which favours short texts, b = 0.75) is in a memory's relevance;
the rest is the same without length normalisation (b = 0)."""
_SEARCHED_TERMS = 64
"""The words of a query that are searched (the first ones): a pasted page stays one bounded
statement (SQLite allows 500 SELECTs in a compound one)."""


def _candidates(
    db: Connection, terms: list[str], kinds: list[str], count: int
) -> tuple[list[tuple[Any, ...]], Callable[[tuple[Any, ...]], float]]:
    """Up to `count` memories worth ranking for `terms`, and how relevant each is.

    Each word's memories are counted up to `COMMON` (a bounded probe). The rare words, rarest
    first within `RANKED_BUDGET`, are searched and ranked by BM25 as before; the common ones
    only add a small bonus to the memories that also contain them. A query of common words
    alone takes the newest memories that contain any of them, ranked by how many they contain.
    """
    where = f" AND m.type IN ({', '.join('?' * len(kinds))})" if kinds else ""
    terms = terms[:_SEARCHED_TERMS]
    if not terms:
        return [], _coverage_of(terms)
    search = word_search(db)
    found = search.counts(db, terms, COMMON + 1)
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
        hits = [found[terms.index(term)] for term in ranked]
        scored = search.ranked(db, _COLUMNS, ranked, hits, where, kinds, count)
        bm25 = {row[0]: score for row, score in scored}
        total = db.execute("SELECT max(id) FROM memories").fetchone()[0] or 1
        idf = {
            _stem(terms[n]): math.log(1 + (total - found[n] + 0.5) / (found[n] + 0.5))
            for n in range(len(terms))
            if terms[n] in ranked
        }

        def relevance(row: tuple[Any, ...]) -> float:
            if row[0] not in bm25:
                return 0.0
            # BM25 without its length normalisation: the IDF of each word the memory has.
            flat = sum(weight for stem, weight in idf.items() if stem in _stems(row[1]))
            mixed = LENGTH_NORMALISATION * bm25[row[0]] + (1 - LENGTH_NORMALISATION) * flat
            return float(mixed) * (1.0 + 0.2 * _coverage(common, row[1]))

        return [row for row, _ in scored], relevance
    if not common:
        return [], _coverage_of(terms)
    # Newest first from the index itself (no scoring), in a bounded window even when a
    # type filter leaves few of them.
    rows = search.newest(db, _COLUMNS, common, where, kinds, count * (8 if kinds else 1), count)
    return rows, _coverage_of(common)


def _coverage_of(terms: list[str]) -> Callable[[tuple[Any, ...]], float]:
    return lambda row: _coverage(terms, row[1])


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


NEIGHBOURHOOD = 3 * 3600.0
"""Turns of one conversation further apart than this (seconds) are not each other's context."""
_AFTER_A_QUESTION = 0.8
"""How much of a question's relevance the turn after it gets: the answer to a question is
usually the next turn, in other words than the question's."""
_NEIGHBOUR = 0.3
"""How much of a neighbour's relevance any other turn gets."""
_NAMED = 1.6
"""The factor for what a person the query names said."""
_ON_THE_DAY = 2.0
"""The factor for what was said on the day the query names."""
_SAID_WITHIN = 120
"""How many memories of the day a query names are ranked (the day's first ones)."""


def _in_context(
    db: Connection,
    rows: list[tuple[Any, ...]],
    relevance: Callable[[tuple[Any, ...]], float],
    names: set[str],
    window: tuple[float, float] | None,
) -> dict[int, float]:
    """Each row's weight: its relevance with its neighbours', for its speaker and its day.
    The candidates' neighbours join `rows`.

    The neighbours are read one index step each for the candidates only, so the cost stays
    bounded by the candidate count."""
    own = {row[0]: relevance(row) for row in rows}
    neighbours = _neighbours(db, rows)
    extra = []
    for row in rows:
        before, after = neighbours.get(row[0], (None, None))
        # A candidate's neighbour, not a candidate itself, has the candidate for its neighbour.
        if before is not None and before[0] not in own:
            own[before[0]] = relevance(before)
            neighbours[before[0]] = (None, row)
            extra.append(before)
        if after is not None and after[0] not in own:
            own[after[0]] = relevance(after)
            neighbours[after[0]] = (row, None)
            extra.append(after)
    top = max(own.values(), default=0.0) or 1.0
    weight = {}
    for row in rows + extra:
        if row[0] in weight:
            continue
        before, after = neighbours.get(row[0], (None, None))
        # The better neighbour counts (not both: a turn in a run of alike turns is not worth
        # more than the last one of them).
        context = 0.0
        if before is not None:
            share = _AFTER_A_QUESTION if "?" in _said(before[1]) else _NEIGHBOUR
            context = share * own[before[0]]
        if after is not None:
            context = max(context, _NEIGHBOUR * own[after[0]])
        value = own[row[0]] + context
        if window is not None and window[0] <= row[4] < window[1]:
            # What was said on the day, the richer first, even without the query's words.
            value = _ON_THE_DAY * value + 0.5 * top * min(1.0, len(query_terms(_said(row[1]))) / 6)
        if row[8] and names & _name_parts(row[8]):
            value *= _NAMED
        weight[row[0]] = value
    rows.extend(extra)
    return weight


def _neighbours(
    db: Connection, rows: list[tuple[Any, ...]]
) -> dict[int, tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]]:
    """The turn before and the turn after each episode in its conversation (if close in time)."""
    found = {}
    for row in rows:
        memory_id, created, chat = row[0], row[4], row[9]
        if chat is None:
            continue
        pair = []
        for sql in (
            f"SELECT {_COLUMNS} FROM memories m WHERE conversation = ? AND id < ?"
            " ORDER BY id DESC LIMIT 1",
            f"SELECT {_COLUMNS} FROM memories m WHERE conversation = ? AND id > ?"
            " ORDER BY id LIMIT 1",
        ):
            other = db.execute(sql, (chat, memory_id)).fetchone()
            near = other is not None and abs(other[4] - created) <= NEIGHBOURHOOD
            pair.append(other if near else None)
        found[memory_id] = (pair[0], pair[1])
    return found


def _speakers(
    rows: list[tuple[Any, ...]],
    neighbours: Mapping[int, tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]],
) -> set[str]:
    """The name words of everyone who said these rows or the turns next to them."""
    around = [row for pair in neighbours.values() for row in pair if row is not None]
    return {part for row in rows + around if row[8] for part in _name_parts(row[8])}


def _said(content: str) -> str:
    """What the person said in an episode ("User said: … | I answered: …")."""
    return content.split(" | I answered: ", 1)[0]


def _name_parts(speaker: str) -> set[str]:
    """The words of a sender's name worth matching a query's words ("@alice_w" -> alice)."""
    return {part for part in re.findall(r"[a-z0-9]+", speaker.lower()) if len(part) > 2}


def _said_within(
    db: Connection, window: tuple[float, float], kinds: list[str]
) -> list[tuple[Any, ...]]:
    where = f" AND m.type IN ({', '.join('?' * len(kinds))})" if kinds else ""
    return db.execute(
        f"SELECT {_COLUMNS} FROM memories m WHERE m.created_at >= ? AND m.created_at < ?{where}"
        f" ORDER BY m.created_at LIMIT {_SAID_WITHIN}",
        (*window, *kinds),
    ).fetchall()


_MONTHS = {name.lower(): n for n, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): n for n, name in enumerate(calendar.month_abbr) if name})
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\b", re.I)
_MONTH_DAY = re.compile(rf"\b({_MONTH})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b", re.I)
_DAYS_AGO = re.compile(r"\b(\d{1,2}|a|one|two|three) days? ago\b", re.I)
_WEEKDAY = re.compile(r"\blast (monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b", re.I)


def _window(query: str, now: float) -> tuple[tuple[float, float] | None, str]:
    """The day (UTC) a query asks about, as [start, end) seconds, if it names one ("on 14
    March", "March 14th", "yesterday", "today", "3 days ago", "last Tuesday"), and the query
    without those words."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    day: dt.date | None = None
    if match := _DAY_MONTH.search(query):
        day = _past(today, _MONTHS[match[2].lower()], int(match[1]))
    elif match := _MONTH_DAY.search(query):
        day = _past(today, _MONTHS[match[1].lower()], int(match[2]))
    elif match := re.search(r"\byesterday\b", query, re.I):
        day = today - dt.timedelta(days=1)
    elif match := re.search(r"\btoday\b", query, re.I):
        day = today
    elif match := _DAYS_AGO.search(query):
        ago = {"a": 1, "one": 1, "two": 2, "three": 3}.get(match[1].lower())
        day = today - dt.timedelta(days=ago or int(match[1]))
    elif match := _WEEKDAY.search(query):
        wanted = list(calendar.day_name).index(match[1].capitalize())
        day = today - dt.timedelta(days=(today.weekday() - wanted) % 7 or 7)
    if day is None or match is None:
        return None, query
    start = dt.datetime.combine(day, dt.time(), dt.UTC).timestamp()
    return (start, start + 86_400), query[: match.start()] + query[match.end() :]


def _past(today: dt.date, month: int, day: int) -> dt.date | None:
    """That day in the latest year it is not in the future; None if it is no date."""
    for year in (today.year, today.year - 1):
        try:
            date = dt.date(year, month, day)
        except ValueError:
            return None
        if date <= today:
            return date
    return None
