"""Messages a bot schedules for its own sessions, and its heartbeat.

A schedule is a row of the bot's database: the text, when it is due next (a wall-clock
time), a cron expression when it repeats, and the channel, session and reply address of the
message that set it. Firing one is a single transaction that adds an inbox row whose
message id is `schedule:<id>:<due time>` and moves the schedule on (a one-off is deleted, a
cron one gets its next time): a crash before it leaves the schedule due, a crash after it
leaves an unanswered inbox row that the next start recovers, and the key stops a second
row for the same due time. A schedule due while the bot was down fires once at start.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import attrs
import trio

from runtime.botcore import Connection, Database
from runtime.inbox import InboxEntry, insert_entry

log = logging.getLogger("runtime.schedules")

Clock = Callable[[], float]
"""Seconds since the epoch (`time.time`; tests give one that follows trio's virtual clock)."""

SCHEDULED_PREFIX = "[scheduled] "
"""How a fired schedule's text reaches the model, so it knows who asked."""

MAX_PER_SESSION = 50
MAX_TEXT = 2000
LONGEST_SLEEP = 300.0
"""The scheduler re-reads the wall clock at least this often (it may have been changed)."""
RETRY_AFTER = 5.0
"""After the database failed the scheduler, it tries again after this long."""

SCHEDULE_KEY = "schedule:"
HEARTBEAT_KEY = "heartbeat:"
RESERVED_KEYS = (SCHEDULE_KEY, HEARTBEAT_KEY)
"""Prefixes of the inbox message ids the runtime writes itself; refused from channels
(`adapters.KeyReserved`), so no client can take a firing's key before it fires."""

HEARTBEAT_FILE = "HEARTBEAT.md"
HEARTBEAT_OK = "HEARTBEAT_OK"
"""The heartbeat's answer when there is nothing to say; it is not sent anywhere."""


class ScheduleError(ValueError):
    """A schedule that cannot be set, in words the model (or a person) can act on."""


# -- cron -----------------------------------------------------------------------------------

_NAMES = {
    3: {
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    4: {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_HORIZON_DAYS = 366 * 8
"""How far ahead a next time is looked for (a 29 February on a given weekday aside)."""


@attrs.frozen
class Cron:
    """A 5-field cron expression (minute hour day-of-month month day-of-week), in UTC.

    Fields take `*`, numbers, `a-b` ranges, `/step`, comma lists, and month and weekday
    names (`jan`, `mon`); weekday 0 and 7 are Sunday. As in Vixie cron, when both the day of
    the month and the day of the week are restricted, a day matching either one fires.
    """

    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    either_day: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        fields = expression.split()
        if len(fields) != 5:
            raise ScheduleError(
                f"cron {expression!r} needs 5 fields (minute hour day month weekday), "
                f"not {len(fields)}"
            )
        values = [_field(text, index) for index, text in enumerate(fields)]
        weekdays = frozenset(0 if d == 7 else d for d in values[4])
        cron = cls(
            " ".join(fields),
            tuple(sorted(values[0])),
            tuple(sorted(values[1])),
            frozenset(values[2]),
            frozenset(values[3]),
            weekdays,
            either_day=not fields[2].startswith("*") and not fields[4].startswith("*"),
        )
        if cron.next_after(0) is None:
            raise ScheduleError(f"cron {expression!r} never fires (no such day)")
        return cron

    def next_after(self, when: float) -> float | None:
        """The first time this fires strictly after `when` (seconds since the epoch)."""
        start = datetime.fromtimestamp(when, UTC).replace(second=0, microsecond=0)
        start += timedelta(minutes=1)
        for offset in range(_HORIZON_DAYS):
            day = start.date() + timedelta(days=offset)
            if not self._fires_on(day):
                continue
            for hour in self.hours:
                if offset == 0 and hour < start.hour:
                    continue
                for minute in self.minutes:
                    if offset == 0 and hour == start.hour and minute < start.minute:
                        continue
                    return datetime(
                        day.year, day.month, day.day, hour, minute, tzinfo=UTC
                    ).timestamp()
        return None

    def _fires_on(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = (day.weekday() + 1) % 7 in self.weekdays
        return by_date or by_weekday if self.either_day else by_date and by_weekday


def _field(text: str, index: int) -> set[int]:
    low, high = _RANGES[index]
    names = _NAMES.get(index, {})
    where = ("minute", "hour", "day of month", "month", "day of week")[index]

    def number(part: str) -> int:
        value = names.get(part.lower()) if part.isalpha() else int(part) if part.isdigit() else None
        if value is None or not low <= value <= high:
            raise ScheduleError(f"cron {where} {part!r} is not in {low}-{high}")
        return value

    chosen: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"cron {where} step {step_text!r} must be a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise ScheduleError(f"cron {where} range {span!r} runs backwards")
        else:
            first = number(span)
            last = high if step_text else first
        chosen.update(range(first, last + 1, step))
    return chosen


# -- the store ------------------------------------------------------------------------------


@attrs.frozen
class Schedule:
    id: int
    channel: str
    session_id: str
    text: str
    due_at: float
    cron: str | None = None

    @property
    def session_key(self) -> str:
        return f"{self.channel}:{self.session_id}"

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.due_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        repeat = f" (cron {self.cron!r})" if self.cron else ""
        return f"#{self.id} next {when}{repeat}: {self.text}"


_COLUMNS = "id, channel, session_id, text, due_at, cron"


def _schedule(row: tuple[object, ...]) -> Schedule:
    return Schedule(
        int(str(row[0])),
        str(row[1]),
        str(row[2]),
        str(row[3]),
        float(str(row[4])),
        None if row[5] is None else str(row[5]),
    )


class Schedules:
    """The bot's schedules in its database; `changed` wakes the scheduler."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self.clock = clock
        self.changed = trio.Event()

    def _touch(self) -> None:
        self.changed.set()

    async def add(
        self,
        inbox_id: int,
        text: str,
        *,
        at: float | None = None,
        after: float | None = None,
        cron: str | None = None,
    ) -> Schedule:
        """Schedule `text` for the session of the inbox message `inbox_id`, answered where
        that message was: exactly one of `at` (epoch seconds), `after` (seconds) or `cron`."""
        text = text.strip()
        if not text:
            raise ScheduleError("the scheduled text is empty")
        if len(text) > MAX_TEXT:
            raise ScheduleError(f"the scheduled text is over {MAX_TEXT} characters")
        if sum(x is not None for x in (at, after, cron)) != 1:
            raise ScheduleError("give exactly one of at, after_seconds or cron")
        now = self.clock()
        if cron is not None:
            next_time = Cron.parse(cron).next_after(now)
            assert next_time is not None  # `parse` refuses one that never fires
            due, cron = next_time, Cron.parse(cron).expression
        elif after is not None:
            if not math.isfinite(after) or after < 0:
                raise ScheduleError("after_seconds must be a number of seconds, 0 or more")
            due = now + after
        else:
            assert at is not None
            due = at

        def insert(db: Connection) -> Schedule:
            origin = db.execute(
                "SELECT channel, session_id, sender, address FROM inbox WHERE id = ?", (inbox_id,)
            ).fetchone()
            if origin is None:
                raise ScheduleError("the message this schedule belongs to is gone")
            channel, session_id, sender, address = origin
            (count,) = db.execute(
                "SELECT count(*) FROM schedules WHERE channel = ? AND session_id = ?",
                (channel, session_id),
            ).fetchone()
            if count >= MAX_PER_SESSION:
                raise ScheduleError(
                    f"this session has {count} schedules, the most it may have; cancel one first"
                )
            (schedule_id,) = db.execute(
                "INSERT INTO schedules (channel, session_id, sender, address, text, cron,"
                " due_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (channel, session_id, sender, address, text, cron, due, now),
            ).fetchone()
            return Schedule(int(schedule_id), channel, session_id, text, due, cron)

        schedule = await self._db.run(insert)
        self._touch()
        return schedule

    async def pending(
        self, channel: str | None = None, session_id: str | None = None
    ) -> list[Schedule]:
        """Every schedule, or one session's, soonest first."""
        where, params = "", tuple[str | None, ...]()
        if channel is not None:
            where, params = " WHERE channel = ? AND session_id = ?", (channel, session_id)
        rows = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM schedules{where} ORDER BY due_at, id", params
            ).fetchall()
        )
        return [_schedule(row) for row in rows]

    async def cancel(
        self, schedule_id: int, channel: str | None = None, session_id: str | None = None
    ) -> bool:
        """Delete a schedule (only the given session's, when given); False if none."""
        where, params = "", tuple[str | None, ...]()
        if channel is not None:
            where, params = " AND channel = ? AND session_id = ?", (channel, session_id)
        deleted: int = await self._db.run(
            lambda db: (
                db.execute(
                    f"DELETE FROM schedules WHERE id = ?{where}", (schedule_id, *params)
                ).rowcount
            )
        )
        self._touch()
        return deleted == 1

    async def next_due(self) -> float | None:
        row = await self._db.run(
            lambda db: db.execute("SELECT min(due_at) FROM schedules").fetchone()
        )
        return None if row[0] is None else float(row[0])

    async def fire_due(self) -> list[InboxEntry]:
        """Fire every schedule due now: each an inbox row, and the schedule moved on, in one
        transaction. Returns the new inbox rows (none for a due time fired before)."""
        now = self.clock()

        def fire(db: Connection) -> list[InboxEntry]:
            rows = db.execute(
                "SELECT id, channel, session_id, sender, address, text, cron, due_at"
                " FROM schedules WHERE due_at <= ? ORDER BY due_at, id",
                (now,),
            ).fetchall()
            fired = []
            for schedule_id, channel, session_id, sender, address, text, cron, due in rows:
                entry = insert_entry(
                    db,
                    channel,
                    session_id,
                    SCHEDULED_PREFIX + text,
                    message_id=f"{SCHEDULE_KEY}{schedule_id}:{due!r}",
                    sender=sender,
                    address=None if address is None else json.loads(address),
                    now=now,
                )
                if entry is not None:
                    fired.append(entry)
                next_time = None if cron is None else Cron.parse(cron).next_after(max(now, due))
                if next_time is None:
                    db.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))
                else:
                    db.execute(
                        "UPDATE schedules SET due_at = ? WHERE id = ?", (next_time, schedule_id)
                    )
            return fired

        return await self._db.run(fire)

    async def heartbeat(
        self, channel: str, session_id: str, slot: int, text: str
    ) -> InboxEntry | None:
        """The heartbeat of time slot `slot` as an inbox row; None if it was taken before."""
        now = self.clock()
        return await self._db.run(
            lambda db: insert_entry(
                db, channel, session_id, text, message_id=f"{HEARTBEAT_KEY}{slot}", now=now
            )
        )


# -- the scheduler --------------------------------------------------------------------------


def heartbeat_prompt(workspace: Path) -> str | None:
    """The heartbeat's message: HEARTBEAT.md's instructions, None when there are none."""
    try:
        instructions = (workspace / HEARTBEAT_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not instructions:
        return None
    return (
        "[heartbeat] Time to check in. Follow these instructions "
        f"(from {HEARTBEAT_FILE}):\n\n{instructions}\n\n"
        f"If nothing needs the user's attention now, answer exactly {HEARTBEAT_OK} "
        "and nothing else; it is not sent."
    )


def is_silent(message: str) -> bool:
    """A heartbeat answer with nothing to say: empty, or the `HEARTBEAT_OK` token."""
    text = message.strip()
    return not text or text.strip(".!* `") == HEARTBEAT_OK


Fire = Callable[[InboxEntry], None]
"""Hands a fired inbox row to its session (a heartbeat's, by its key, stays silent when it
has nothing to say)."""


@attrs.frozen
class Heartbeat:
    every: float
    """Seconds between heartbeats; they fall on multiples of it since the epoch."""
    channel: str
    session_id: str
    workspace: Path


async def run_scheduler(schedules: Schedules, fire: Fire, heartbeat: Heartbeat | None) -> None:
    """Fire schedules when they are due, sleeping until the next one, a heartbeat, or a
    change (`Schedules.changed`) — never polling. Runs until cancelled."""
    clock = schedules.clock
    beat_at = None if heartbeat is None else _next_slot(clock(), heartbeat.every)
    while True:
        schedules.changed = trio.Event()  # before reading, so no change is missed
        try:
            for entry in await schedules.fire_due():
                log.info("schedule fired into %s (inbox %d)", entry.session_key, entry.id)
                fire(entry)
            if heartbeat is not None and beat_at is not None and clock() >= beat_at:
                await _beat(schedules, fire, heartbeat, round(beat_at / heartbeat.every))
                beat_at = _next_slot(clock(), heartbeat.every)
            wake = min(
                t
                for t in (await schedules.next_due(), beat_at, clock() + LONGEST_SLEEP)
                if t is not None
            )
        except Exception:
            log.exception("the scheduler failed; trying again in %gs", RETRY_AFTER)
            wake = clock() + RETRY_AFTER
        with trio.move_on_after(max(0.0, wake - clock())):
            await schedules.changed.wait()


async def _beat(schedules: Schedules, fire: Fire, heartbeat: Heartbeat, slot: int) -> None:
    prompt = await trio.to_thread.run_sync(heartbeat_prompt, heartbeat.workspace)
    if prompt is None:
        return  # no instructions: nothing to ask the model
    entry = await schedules.heartbeat(heartbeat.channel, heartbeat.session_id, slot, prompt)
    if entry is not None:
        fire(entry)


def _next_slot(now: float, every: float) -> float:
    return (math.floor(now / every) + 1) * every


__all__ = [
    "RESERVED_KEYS",
    "Cron",
    "Heartbeat",
    "Schedule",
    "ScheduleError",
    "Schedules",
    "heartbeat_prompt",
    "is_silent",
    "run_scheduler",
]
