"""The seam between channels and the runtime: events in, replies out.

Error tree of what `Deliver` may raise to a channel::

    ChannelError
    ├── Busy          the session's mailbox is full: retry after `retry_after` seconds
    ├── Unavailable   the runtime is not taking messages (shutting down, not ready)
    ├── KeyReused     the message id was used before for a different message
    └── KeyReserved   the message id is in the runtime's own namespace (`schedule:...`)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs
import trio

log = logging.getLogger("adapters")

JSONScalar = str | int | float | bool | None


@attrs.frozen
class TextDelta:
    """A piece of the answer's text, as the model produces it."""

    text: str


@attrs.frozen
class ToolProgress:
    """A tool call starting or finishing during the turn."""

    name: str
    call_id: str
    phase: Literal["start", "end"]
    is_error: bool = False


@attrs.frozen
class TextDiscarded:
    """The text streamed since this model call began is withdrawn (`text` is exactly that
    text): the model failed mid-answer and another one answers from the start."""

    text: str


Progress = TextDelta | TextDiscarded | ToolProgress


@attrs.frozen
class ReplyError:
    """Why a turn did not produce an answer, in words a person can act on."""

    kind: Literal["provider", "timeout", "tool_rounds", "crashed", "stopped", "internal"]
    message: str


@attrs.frozen
class Reply:
    """The bot's answer to one inbound message (the seed's `{message, metadata}` shape)."""

    message: str
    session_id: str
    turn_id: str
    memories_recalled: int = 0
    prompt_tokens: tuple[tuple[str, int], ...] = ()
    """Where the prompt's tokens went (`budget`, `identity`, `memories`, `history`, `total`...)."""
    tools_used: int = 0
    states: tuple[str, ...] = ()
    model: str = ""
    usage: tuple[tuple[str, int], ...] = ()
    duration_ms: float = 0.0
    replayed: bool = False
    error: ReplyError | None = None


class Responder(Protocol):
    """Where the answer to one inbound message goes. Neither method may block."""

    def reply(self, reply: Reply) -> None: ...

    def progress(self, event: Progress) -> None: ...


Sent = Callable[[bool], None]
"""Told once what became of an answer: True when the channel's far end has it (or there was
nothing to send), False when the channel gave up on it."""


@runtime_checkable
class SendingResponder(Responder, Protocol):
    """A responder that sends the answer itself, later (a Telegram message, a webhook
    callback): it can say when the answer got there, so the runtime keeps the answer in its
    outbox until then and sends it again if the process died first."""

    def reply_then(self, reply: Reply, sent: Sent) -> None: ...


class Unattended:
    """The responder of a message recovered after a restart whose sender no longer waits
    (its HTTP request ended): the answer stays in the inbox, for a retry with the same key."""

    def __init__(self, session_key: str) -> None:
        self._session_key = session_key

    def reply(self, reply: Reply) -> None:
        log.info("recovered message of %s answered", self._session_key)

    def progress(self, event: Progress) -> None:
        pass


class WaitingResponder:
    """Holds the reply for the caller that waits on it (an HTTP request, a test)."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._reply: Reply | None = None

    def reply(self, reply: Reply) -> None:
        if self._reply is None:
            self._reply = reply
            self._done.set()

    def progress(self, event: Progress) -> None:
        pass

    async def wait(self) -> Reply:
        await self._done.wait()
        assert self._reply is not None
        return self._reply


class StreamingResponder:
    """The turn as it happens, for a stream: progress events, then the reply (`items`)."""

    def __init__(self) -> None:
        # Unbounded: a turn's output is bounded by the model's max_tokens, and dropping a
        # delta would corrupt the text the client assembles.
        self._send, self._receive = trio.open_memory_channel[Progress | Reply](math.inf)

    def reply(self, reply: Reply) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(reply)
            self._send.close()

    def progress(self, event: Progress) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(event)

    async def items(self, reply_within: float) -> AsyncIterator[Progress | Reply | None]:
        """What the turn produces, up to its reply; None when none came within the time.

        No cancel scope is open across a `yield`: the consumer may stop early (a client that
        left), and the generator is then finalized elsewhere."""
        deadline = trio.current_time() + reply_within
        with self._receive:
            while True:
                item: Progress | Reply | None = None
                with trio.move_on_at(deadline), contextlib.suppress(trio.EndOfChannel):
                    item = await self._receive.receive()
                yield item
                if item is None or isinstance(item, Reply):
                    return


@attrs.frozen
class Inbound:
    """One message from a channel for one session.

    `session_id` is the channel's own id for the conversation (`test-123`, a chat id);
    `session_key` prefixes it with the channel so two channels never share a session.
    `message_id` is the channel's idempotency key, when it has one. `address` is where its
    answer goes, for a channel that can still answer after a restart: a frozen attrs
    instance of the channel's own, stored with the message (as JSON) and given back to
    `Channel.recovered`.
    """

    channel: str
    session_id: str
    text: str
    responder: Responder = attrs.field(eq=False, repr=False)
    message_id: str | None = None
    sender: str | None = None
    address: attrs.AttrsInstance | None = None

    @property
    def session_key(self) -> str:
        return f"{self.channel}:{self.session_id}"


@attrs.frozen
class Accepted:
    """The runtime durably took the message; the reply will reach the responder."""

    inbox_id: int
    duplicate_of: Reply | None = None
    repeat: bool = False
    """The channel's message id was seen before: nothing new was started."""


Deliver = Callable[[Inbound], Awaitable[Accepted]]


class ChannelError(Exception):
    """Base of the errors `Deliver` raises for a channel to turn into its own error form."""


class Busy(ChannelError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ChannelError):
    pass


class KeyReused(ChannelError):
    """The channel's message id (an `Idempotency-Key`) names an earlier, different message
    of the same session: neither is replayed nor run again."""


class KeyReserved(ChannelError):
    """The channel's message id starts with a prefix the runtime keeps for the messages it
    writes itself (a fired schedule, a heartbeat): taken by a client first, it would stop
    them (the inbox answers a repeat of the key instead of running it)."""


def reply_body(reply: Reply) -> dict[str, Any]:
    """The seed's reply shape: `{message, session_id, metadata}` (plus `error` on failure)."""
    body: dict[str, Any] = {
        "message": reply.message,
        "session_id": reply.session_id,
        "metadata": {
            "memories_recalled": reply.memories_recalled,
            "tools_used": reply.tools_used,
            "states": list(reply.states),
            "turn_id": reply.turn_id,
            "model": reply.model,
            "usage": dict(reply.usage),
            "prompt_tokens": dict(reply.prompt_tokens),
            "duration_ms": reply.duration_ms,
            "replayed": reply.replayed,
        },
    }
    if reply.error is not None:
        body["error"] = {"type": reply.error.kind, "message": reply.error.message}
    return body


# -- channels ----------------------------------------------------------------------------

Handler = Callable[..., Awaitable[Any]]
"""A route's handler: Quart's `request` in context, the path's parameters as keywords;
returns a Quart response."""


@attrs.frozen
class Route:
    """An HTTP route a channel mounts on the server shell (`adapters.http`).

    `public` routes authenticate by their own means (a signature, a secret header): the
    shell's bearer token and Origin check do not apply to them.
    """

    method: Literal["GET", "POST"]
    path: str
    handler: Handler = attrs.field(eq=False)
    public: bool = False

    def under(self, prefix: str) -> Route:
        """The same route below `prefix` (`/bots/alice`)."""
        return attrs.evolve(self, path=prefix.rstrip("/") + self.path)


class Channel(Protocol):
    """A way messages reach a bot and answers leave it: one module, one row in the host's
    table of channels.

    `run` is started with `nursery.start` and calls `task_status.started()` once it takes
    input; it returns after `close` once what it has under way is finished. `routes` are
    mounted on the HTTP server (none for a channel that polls). `problem` says why it is not
    ready (its upstream keeps failing), for `/readyz`. `recovered` rebuilds the
    responder of a message accepted before a restart from the `address` it gave with it
    (its `Inbound.address`, unstructured; None when it gave none).
    """

    @property
    def name(self) -> str: ...

    def routes(self) -> Sequence[Route]: ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...

    def close(self) -> None: ...

    def problem(self) -> str | None:
        """Why the channel cannot take messages now (for readiness), or None."""
        ...

    def recovered(self, session_id: str, address: Mapping[str, Any] | None) -> Responder: ...


Reset = Callable[[str, Callable[[bool], None]], Awaitable[None]]

Lead = Callable[[Callable[[], Awaitable[None]]], Awaitable[None]]
"""Runs a job that only one process of a fleet may do at a time (long-polling one Telegram
token): `await lead(job)` waits until this process is the one, runs `job` while it stays the
one (cancelled, and waited for again, when another takes over), and returns when `job`
returns by itself."""
"""Forget a session's conversation (by session key) in order with its messages; the
callback says whether it ran. Raises `Busy` or `Unavailable`, as `Deliver` does."""


Health = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]
"""Readiness: (HTTP status, body)."""
