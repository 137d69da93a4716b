from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio


@attrs.frozen
class LimiterStatistics:
    limit: int
    """Calls admitted at once now (between `minimum` and `maximum`)."""
    in_flight: int
    waiting: int
    overloads: int
    """Overload signals that lowered the limit, since start."""
    paused_until: float | None
    """Until when no call starts (a `retry-after`, or a spent request budget), if paused."""


@attrs.define(eq=False)
class Slot:
    """One admitted call: which limit it was admitted under, and the how-manieth it was."""

    generation: int
    number: int


class AdaptiveLimiter:
    """How many calls to a far end may run at once, learnt from how it answers (AIMD).

    The limit starts at `initial` and doubles with each round of successes (slow start) until
    the first overload; after that it grows by one per round of successes and halves on each
    overload (TCP's additive increase, multiplicative decrease), between `minimum` and
    `maximum`. It grows only while it is what holds calls back, and an overload counts once
    per generation: calls admitted before the last cut do not cut again for the same burst.

    The far end can also say how much it takes: `budget(remaining, reset_in)` lets at most
    `remaining` calls start until the window resets, and `pause(seconds)` none at all for a
    while (a `retry-after`). Waiting callers are admitted first come, first served.
    """

    def __init__(self, maximum: int, *, initial: int = 8, minimum: int = 1) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum} and {maximum}")
        self.maximum = maximum
        self.minimum = minimum
        self._limit = float(min(max(initial, minimum), maximum))
        self._slow_start = True
        self._generation = 0
        self._in_flight = 0
        self._admitted = 0
        self._overloads = 0
        self._paused_until = -math.inf
        # The number of the last admission the far end's budget allows, until `_budget_until`.
        self._last_allowed = math.inf
        self._budget_until = -math.inf
        self._per_window: int | None = None
        self._window = 0.0
        self._queue: list[trio.Event] = []
        self._changed = trio.Event()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Wait for a slot and hold it for the block; leaving the block normally is a success."""
        slot = await self.acquire()
        try:
            yield slot
        except BaseException:
            self.release(slot, succeeded=False)
            raise
        self.release(slot, succeeded=True)

    async def acquire(self) -> Slot:
        turn = trio.Event()
        self._queue.append(turn)
        try:
            while True:
                if self._queue[0] is turn:
                    wait = self._wait()
                    if wait == 0.0:
                        break
                changed = self._changed
                with trio.move_on_after(wait if self._queue[0] is turn else math.inf):
                    await changed.wait()
        finally:
            self._queue.remove(turn)
            self._notify()
        self._in_flight += 1
        self._admitted += 1
        return Slot(self._generation, self._admitted)

    def release(self, slot: Slot, *, succeeded: bool) -> None:
        limited = self._in_flight >= int(self._limit) or (
            bool(self._queue) and self._wait() in (0.0, math.inf)
        )
        self._in_flight -= 1
        if succeeded and limited:
            # Grown only while the limit is what holds calls back (not a budget, nor a lull):
            # a limit never put to the test says nothing about the far end.
            step = 1.0 if self._slow_start else 1.0 / self._limit
            self._limit = min(float(self.maximum), self._limit + step)
        self._notify()

    def overloaded(self, slot: Slot | None = None, *, retry_after: float | None = None) -> None:
        """The far end refused for load (HTTP 429, 503, 529): halve the limit, once for the
        calls admitted under the current one, and pause for `retry_after` if given."""
        if slot is None or slot.generation == self._generation:
            self._generation += 1
            self._overloads += 1
            self._slow_start = False
            self._limit = max(float(self.minimum), self._limit / 2)
        if retry_after is not None:
            self.pause(retry_after)
        self._notify()

    def pause(self, seconds: float) -> None:
        """Start no call for `seconds` (from now)."""
        self._paused_until = max(self._paused_until, trio.current_time() + max(0.0, seconds))
        self._notify()

    def budget(
        self,
        remaining: int,
        reset_in: float,
        slot: Slot | None = None,
        *,
        per_window: int | None = None,
    ) -> None:
        """The far end takes `remaining` more calls until its window resets in `reset_in` s,
        as it said when `slot`'s call reached it: the calls admitted after that one count
        against `remaining` too. With `per_window` (its whole budget), the next window is
        assumed to hold that many, so its start is no burst of every waiting call."""
        told_at = slot.number if slot is not None else self._admitted
        last, until = told_at + max(0, remaining), trio.current_time() + max(0.0, reset_in)
        self._last_allowed, self._budget_until = last, until
        self._per_window = per_window
        self._window = max(self._window, reset_in)
        self._notify()

    def statistics(self) -> LimiterStatistics:
        now = trio.current_time()
        until = max(self._paused_until, self._budget_until if self._spent() else -math.inf)
        return LimiterStatistics(
            limit=int(self._limit),
            in_flight=self._in_flight,
            waiting=len(self._queue),
            overloads=self._overloads,
            paused_until=until if until > now else None,
        )

    def _wait(self) -> float:
        """0 when a call may start now; else how long before it is worth looking again
        (`inf`: until a slot is released or a signal arrives)."""
        now = trio.current_time()
        if now < self._paused_until:
            return self._paused_until - now
        if self._spent() and now < self._budget_until:
            return self._budget_until - now
        if self._in_flight >= int(self._limit):
            return math.inf
        return 0.0

    def _spent(self) -> bool:
        now = trio.current_time()
        if now >= self._budget_until and self._per_window is not None and self._window > 0:
            # A new window (not yet heard of): as large as the last one said.
            self._last_allowed = self._admitted + self._per_window
            self._budget_until = now + self._window
        return self._admitted >= self._last_allowed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
