from __future__ import annotations

from typing import Generic, TypeVar

import attrs
import trio

from actors._errors import MailboxFull

M = TypeVar("M")


@attrs.frozen
class MailboxStatistics:
    depth: int
    capacity: int
    peak: int


class Mailbox(Generic[M]):
    """A bounded FIFO of messages for one actor, on a trio memory channel.

    Senders never wait: `send_nowait` either enqueues or raises `MailboxFull`, so a slow actor
    pushes back on its channel instead of growing without bound. `close` ends the stream for the
    receiver and hands back whatever was still queued, so the owner can fail it explicitly.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._send, self._receive = trio.open_memory_channel[M](capacity)
        self._peak = 0
        self._closed = False

    def send_nowait(self, message: M) -> None:
        """Enqueue `message` or raise `MailboxFull`; `trio.ClosedResourceError` once closed."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise MailboxFull(self._capacity) from None
        self._peak = max(self._peak, self.depth)

    async def receive(self) -> M:
        """The next message; `trio.EndOfChannel` once closed and drained. Cancel-safe."""
        return await self._receive.receive()

    def close(self) -> list[M]:
        """Refuse further messages and return the ones still waiting, oldest first."""
        self._closed = True
        self._send.close()
        left: list[M] = []
        while True:
            try:
                left.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return left

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(depth=self.depth, capacity=self._capacity, peak=self._peak)
