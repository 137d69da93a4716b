"""The adaptive limiter against a simulated rate-limited far end, on the virtual clock."""

from __future__ import annotations

import math

import attrs
import pytest
import trio

from actors import AdaptiveLimiter


@attrs.define
class RateLimitedServer:
    """Takes `per_window` calls per `window` seconds, each answered after `latency` seconds;
    beyond that it answers 429 with a `retry-after` (and, if `headers`, says what is left)."""

    per_window: int
    window: float = 1.0
    latency: float = 0.2
    headers: bool = True
    served: int = 0
    refused: int = 0
    _used: int = 0
    _window_end: float = 0.0

    async def call(self) -> tuple[bool, int, float]:
        """(accepted, remaining, reset_in) as the far end reports them."""
        await trio.sleep(0.01)  # the request's way there
        now = trio.current_time()
        if now >= self._window_end:
            self._window_end = math.floor(now / self.window) * self.window + self.window
            self._used = 0
        self._used += 1
        accepted = self._used <= self.per_window
        remaining, window_end = max(0, self.per_window - self._used), self._window_end
        await trio.sleep(self.latency if accepted else 0.01)
        reset_in = max(0.0, window_end - trio.current_time())
        if accepted:
            self.served += 1
        else:
            self.refused += 1
        return accepted, remaining, reset_in


async def client(
    limiter: AdaptiveLimiter, server: RateLimitedServer, until: float, feedback: bool = True
) -> None:
    """A caller that retries a refused call inside its slot, as the provider SDKs do."""
    while trio.current_time() < until:
        async with limiter.slot() as slot:
            while True:
                accepted, remaining, reset_in = await server.call()
                if server.headers:
                    limiter.budget(remaining, reset_in, slot, per_window=server.per_window)
                if accepted:
                    break
                if feedback:
                    limiter.overloaded(slot, retry_after=reset_in)
                await trio.sleep(reset_in)


async def run(
    limiter: AdaptiveLimiter, server: RateLimitedServer, callers: int, feedback: bool = True
) -> float:
    """Calls served per second, callers starting calls for 30 s of virtual time."""
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(client, limiter, server, started + 30, feedback)
    return server.served / (trio.current_time() - started)


async def test_a_rate_limit_that_it_is_told_of_is_used_fully_without_a_429_storm(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = RateLimitedServer(per_window=50)
    rate = await run(AdaptiveLimiter(maximum=1000), server, callers=300)
    assert rate >= 0.9 * 50
    assert server.refused <= 0.1 * server.served


async def test_a_rate_limit_it_only_hears_of_as_429s_brings_no_storm_either(
    autojump_clock: trio.abc.Clock,
) -> None:
    server = RateLimitedServer(per_window=50, headers=False)
    rate = await run(AdaptiveLimiter(maximum=1000), server, callers=300)
    assert rate >= 0.85 * 50
    assert server.refused <= 0.2 * server.served


async def test_without_the_feedback_the_same_callers_make_a_429_storm(
    autojump_clock: trio.abc.Clock,
) -> None:
    """What the two tests above are measured against: a fixed cap of 1000."""
    server = RateLimitedServer(per_window=50, headers=False)
    await run(AdaptiveLimiter(maximum=1000, initial=1000), server, callers=300, feedback=False)
    assert server.refused > 3 * server.served


async def test_with_no_overload_the_limit_grows_to_the_configured_maximum_and_holds(
    autojump_clock: trio.abc.Clock,
) -> None:
    limiter = AdaptiveLimiter(maximum=64, initial=4)
    peak = 0

    async def call() -> None:
        nonlocal peak
        async with limiter.slot():
            peak = max(peak, limiter.statistics().in_flight)
            await trio.sleep(2.0)  # a slow model: concurrency is what throughput needs

    async with trio.open_nursery() as nursery:
        for _ in range(500):
            nursery.start_soon(call)
    assert peak == 64 and limiter.statistics().limit == 64


async def test_one_burst_of_overloads_halves_the_limit_once(autojump_clock: trio.abc.Clock) -> None:
    limiter = AdaptiveLimiter(maximum=100, initial=40)
    slots = [await limiter.acquire() for _ in range(40)]
    for slot in slots:  # all admitted under the same limit: one congestion, one cut
        limiter.overloaded(slot)
    assert limiter.statistics().limit == 20 and limiter.statistics().overloads == 1
    for slot in slots:
        limiter.release(slot, succeeded=False)
    later = await limiter.acquire()
    limiter.overloaded(later)
    assert limiter.statistics().limit == 10


async def test_a_pause_holds_new_calls_until_it_ends(autojump_clock: trio.abc.Clock) -> None:
    limiter = AdaptiveLimiter(maximum=10)
    limiter.pause(5.0)
    started = trio.current_time()
    async with limiter.slot():
        assert trio.current_time() - started == pytest.approx(5.0)
    limiter.budget(0, 3.0)
    assert limiter.statistics().paused_until is not None
    started = trio.current_time()
    async with limiter.slot():
        assert trio.current_time() - started == pytest.approx(3.0)


def test_a_maximum_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        AdaptiveLimiter(maximum=0)
