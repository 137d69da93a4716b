from __future__ import annotations

import random
from collections import defaultdict

import attrs
import pytest
import trio

from actors import ActorCrashed, ActorStopped, MailboxFull, Registry, RestartPolicy
from runtime.testing import wait_until


@attrs.define
class Recorder:
    """An actor that records what it handled; `crash_on` messages raise `crashes` times."""

    key: str
    log: dict[str, list[int]]
    crash_on: dict[int, int] = attrs.Factory(dict)
    delay: float = 0.0

    async def handle(self, message: int) -> None:
        await trio.sleep(self.delay)
        if self.crash_on.get(message, 0) > 0:
            self.crash_on[message] -= 1
            raise RuntimeError(f"boom on {message}")
        self.log[self.key].append(message)


@attrs.define
class Harness:
    log: dict[str, list[int]] = attrs.Factory(lambda: defaultdict(list))
    undelivered: list[tuple[int, ActorStopped]] = attrs.Factory(list)
    built: list[str] = attrs.Factory(list)


def make_registry(
    harness: Harness,
    *,
    crash_on: dict[int, int] | None = None,
    delay: float = 0.0,
    policy: RestartPolicy = RestartPolicy(max_restarts=2, within=10, backoff_min=0.1, jitter=0),
    capacity: int = 16,
    idle_timeout: float = 60.0,
) -> Registry[str, int]:
    shared_crashes = crash_on if crash_on is not None else {}

    def factory(key: str) -> Recorder:
        harness.built.append(key)
        return Recorder(key, harness.log, shared_crashes, delay)

    return Registry(
        factory,
        on_undelivered=lambda m, e: harness.undelivered.append((m, e)),
        policy=policy,
        mailbox_capacity=capacity,
        idle_timeout=idle_timeout,
        rng=random.Random(7),
    )


async def test_messages_of_one_key_keep_their_order_while_keys_run_concurrently(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness()
    registry = make_registry(harness, delay=1.0, capacity=64)
    await nursery.start(registry.run)
    started = trio.current_time()
    for n in range(20):
        registry.tell("a", n)
        registry.tell("b", 100 + n)
    await wait_until(lambda: len(harness.log["a"]) + len(harness.log["b"]) == 40, within=60)
    assert harness.log["a"] == list(range(20))
    assert harness.log["b"] == [100 + n for n in range(20)]
    # 20 one-second messages per key: concurrent keys take ~20 s, not 40.
    assert trio.current_time() - started < 25
    registry.close()


async def test_crashing_actor_is_restarted_with_backoff_and_retries_the_message(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness()
    registry = make_registry(harness, crash_on={1: 2})
    await nursery.start(registry.run)
    started = trio.current_time()
    registry.tell("a", 1)
    registry.tell("a", 2)
    await wait_until(lambda: len(harness.log["a"]) == 2, every=0.001)
    assert harness.log["a"] == [1, 2]
    assert harness.built == ["a", "a", "a"]
    # Backoff 0.1 s then 0.2 s (no jitter in this policy).
    assert trio.current_time() - started == pytest.approx(0.3, abs=0.02)
    assert registry.statistics().restarts == 2
    assert harness.undelivered == []


async def test_past_the_restart_intensity_the_message_is_a_dead_letter_and_the_queue_is_failed(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness()
    registry = make_registry(harness, crash_on={1: 99})
    await nursery.start(registry.run)
    for n in (1, 2, 3):
        registry.tell("a", n)
    await wait_until(lambda: len(harness.undelivered) == 3)
    (poison, crashed), *rest = harness.undelivered
    assert poison == 1 and isinstance(crashed, ActorCrashed)
    assert crashed.attempts == 3 and "boom on 1" in str(crashed)
    assert [m for m, _ in rest] == [2, 3]
    assert all(type(e) is ActorStopped for _, e in rest)
    assert "a" not in registry
    assert registry.statistics().dead_letters == 1
    # The key gets a fresh actor for its next message.
    registry.tell("a", 4)
    await wait_until(lambda: harness.log["a"] == [4])


async def test_full_mailbox_is_refused_explicitly(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness()
    registry = make_registry(harness, delay=5.0, capacity=2)
    await nursery.start(registry.run)
    registry.tell("a", 1)
    await trio.sleep(0.1)  # 1 is being handled; the mailbox holds up to two more
    registry.tell("a", 2)
    registry.tell("a", 3)
    with pytest.raises(MailboxFull):
        registry.tell("a", 4)
    registry.tell("b", 1)  # another key is unaffected
    await wait_until(lambda: len(harness.log["a"]) == 3, within=60)
    assert harness.log["a"] == [1, 2, 3]


async def test_idle_actors_stop_and_come_back_on_the_next_message(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness()
    registry = make_registry(harness, idle_timeout=30.0)
    await nursery.start(registry.run)
    registry.tell("a", 1)
    await trio.sleep(1)
    assert "a" in registry
    await trio.sleep(31)
    assert "a" not in registry
    assert registry.statistics().idle_stops == 1
    registry.tell("a", 2)
    await trio.sleep(1)
    assert harness.log["a"] == [1, 2]
    assert harness.built == ["a", "a"]


async def test_close_lets_the_current_message_finish_and_fails_the_queue(
    autojump_clock: trio.abc.Clock,
) -> None:
    harness = Harness()
    registry = make_registry(harness, delay=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        for n in (1, 2, 3):
            registry.tell("a", n)
        await trio.sleep(1)
        registry.close()
        with pytest.raises(ActorStopped, match="shutting down"):
            registry.tell("a", 9)
    # The nursery exited by itself: run() returned once the in-flight message was done.
    assert harness.log["a"] == [1]
    assert [m for m, _ in harness.undelivered] == [2, 3]


def test_backoff_grows_exponentially_within_bounds() -> None:
    policy = RestartPolicy(backoff_min=0.1, backoff_max=1.0, jitter=0.5)
    rng = random.Random(1)
    waits = [policy.backoff(n, rng) for n in range(6)]
    assert 0.1 <= waits[0] <= 0.15
    assert 0.2 <= waits[1] <= 0.3
    assert all(w <= 1.0 for w in waits)
    assert waits[5] >= 1.0 * 0.999
