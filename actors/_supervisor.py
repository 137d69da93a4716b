from __future__ import annotations

import random
from collections import deque

import attrs
import trio


@attrs.frozen
class RestartPolicy:
    """How a crashed actor is restarted (one-for-one), after OTP and Akka's backoff supervisor.

    More than `max_restarts` crashes within `within` seconds and the supervisor gives up: the
    actor stops, the message that crashed it is a dead letter, and its mailbox is failed.
    Between restarts it waits `backoff_min * 2**n`, capped at `backoff_max`, stretched by up to
    `jitter` (a fraction) so that actors crashing together do not restart in lockstep.
    """

    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    within: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    backoff_min: float = attrs.field(default=0.05, validator=attrs.validators.ge(0))
    backoff_max: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    jitter: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))

    def backoff(self, restart: int, rng: random.Random) -> float:
        """Seconds to wait before restart number `restart` (0 for the first)."""
        base = min(self.backoff_max, self.backoff_min * 2.0**restart)
        return min(self.backoff_max, base * (1.0 + rng.random() * self.jitter))


class RestartWindow:
    """The crash times inside the policy's window: decides restart or give up."""

    def __init__(self, policy: RestartPolicy) -> None:
        self._policy = policy
        self._crashes: deque[float] = deque()

    def crash(self) -> int | None:
        """Record a crash now; the restart number to back off for, or None to give up."""
        now = trio.current_time()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] < now - self._policy.within:
            self._crashes.popleft()
        if len(self._crashes) > self._policy.max_restarts:
            return None
        return len(self._crashes) - 1

    @property
    def crashes(self) -> int:
        return len(self._crashes)
