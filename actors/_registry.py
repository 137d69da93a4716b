from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

import attrs
import trio

from actors._errors import ActorCrashed, ActorStopped
from actors._mailbox import Mailbox
from actors._supervisor import RestartPolicy, RestartWindow

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)

log = logging.getLogger("actors")


class Actor(Protocol[M_contra]):
    """What the registry runs for a key: messages one at a time, in the order they were sent.

    An exception from `handle` crashes the actor: the supervisor builds a fresh one from the
    factory and hands it the same message again, until the restart policy gives up.
    """

    async def handle(self, message: M_contra) -> None: ...


@attrs.frozen
class RegistryStatistics:
    live: int
    spawned: int
    idle_stops: int
    restarts: int
    dead_letters: int
    queued: int


class Registry(Generic[K, M]):
    """One supervised actor per key, spawned on the first message and stopped when idle.

    `tell` never blocks: it enqueues into the key's bounded mailbox or raises `MailboxFull`.
    The actors run in the nursery of `run`, which the owner starts with `nursery.start`;
    `close` stops intake, lets each actor finish the message it is handling, and fails the
    messages still queued with `ActorStopped` through `on_undelivered`, so nobody waits forever.
    """

    def __init__(
        self,
        factory: Callable[[K], Actor[M]],
        *,
        on_undelivered: Callable[[M, ActorStopped], None],
        policy: RestartPolicy = RestartPolicy(),
        mailbox_capacity: int = 64,
        idle_timeout: float = 300.0,
        rng: random.Random | None = None,
    ) -> None:
        self._factory = factory
        self._on_undelivered = on_undelivered
        self._policy = policy
        self._capacity = mailbox_capacity
        self._idle_timeout = idle_timeout
        self._rng = rng or random.Random()
        self._mailboxes: dict[K, Mailbox[M]] = {}
        self._spawn_send, self._spawn_receive = trio.open_memory_channel[tuple[K, Mailbox[M]]](
            math.inf
        )
        self._closed = False
        self._spawned = self._idle_stops = self._restarts = self._dead_letters = 0

    def tell(self, key: K, message: M) -> None:
        """Enqueue `message` for the actor of `key`, spawning it if needed.

        Raises `MailboxFull` when that actor is too far behind, `ActorStopped` once closed.
        """
        if self._closed:
            raise ActorStopped(key, "the registry is shutting down")
        mailbox = self._mailboxes.get(key)
        if mailbox is None:
            mailbox = Mailbox[M](self._capacity)
            mailbox.send_nowait(message)
            self._mailboxes[key] = mailbox
            self._spawned += 1
            self._spawn_send.send_nowait((key, mailbox))
            return
        mailbox.send_nowait(message)

    def __contains__(self, key: object) -> bool:
        return key in self._mailboxes

    def close(self) -> None:
        """Stop intake; actors finish their current message; queued messages are failed."""
        if self._closed:
            return
        self._closed = True
        self._spawn_send.close()
        for key, mailbox in list(self._mailboxes.items()):
            self._fail_all(key, mailbox.close(), "the runtime is shutting down")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the actors until `close` and until every actor has finished."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            async with self._spawn_receive:
                async for key, mailbox in self._spawn_receive:
                    nursery.start_soon(self._supervise, key, mailbox, name=f"actor {key!r}")

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(
            live=len(self._mailboxes),
            spawned=self._spawned,
            idle_stops=self._idle_stops,
            restarts=self._restarts,
            dead_letters=self._dead_letters,
            queued=sum(m.depth for m in self._mailboxes.values()),
        )

    async def _supervise(self, key: K, mailbox: Mailbox[M]) -> None:
        """One-for-one supervision of one actor: its error boundary inside the nursery."""
        window = RestartWindow(self._policy)
        actor = self._factory(key)
        retry: M | None = None
        try:
            while True:
                message = retry if retry is not None else await self._next(key, mailbox)
                if message is None:
                    return
                try:
                    await actor.handle(message)
                    retry = None
                except Exception as exc:
                    restart = window.crash()
                    if restart is None:
                        log.error("actor %r gave up after %d crashes: %r", key, window.crashes, exc)
                        self._dead_letters += 1
                        self._forget(key, mailbox)
                        self._on_undelivered(message, ActorCrashed(key, window.crashes, exc))
                        self._fail_all(key, mailbox.close(), "it crashed too often")
                        return
                    delay = self._policy.backoff(restart, self._rng)
                    log.warning(
                        "actor %r crashed (%r); restart %d in %.3fs", key, exc, restart + 1, delay
                    )
                    self._restarts += 1
                    await trio.sleep(delay)
                    actor = self._factory(key)
                    retry = message
        finally:
            self._forget(key, mailbox)

    async def _next(self, key: K, mailbox: Mailbox[M]) -> M | None:
        """The next message, or None when the mailbox closed or the actor sat idle too long."""
        while True:
            with trio.move_on_after(self._idle_timeout):
                try:
                    return await mailbox.receive()
                except trio.EndOfChannel:
                    return None
            # Timed out. No await between this check and the close: a `tell` cannot slip in.
            if mailbox.depth == 0:
                self._idle_stops += 1
                self._forget(key, mailbox)
                mailbox.close()
                return None

    def _forget(self, key: K, mailbox: Mailbox[M]) -> None:
        if self._mailboxes.get(key) is mailbox:
            del self._mailboxes[key]

    def _fail_all(self, key: K, messages: list[M], reason: str) -> None:
        for message in messages:
            self._on_undelivered(message, ActorStopped(key, reason))
