"""The seam between channels and the runtime: events in, replies out.

Error tree of what `Deliver` may raise to a channel::

    ChannelError
    ├── Busy          the session's mailbox is full: retry after `retry_after` seconds
    ├── Unavailable   the runtime is not taking messages (shutting down, not ready)
    └── KeyReused     the message id was used before for a different message
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import attrs

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


@attrs.frozen
class Inbound:
    """One message from a channel for one session.

    `session_id` is the channel's own id for the conversation (`test-123`, a chat id);
    `session_key` prefixes it with the channel so two channels never share a session.
    `message_id` is the channel's idempotency key, when it has one.
    """

    channel: str
    session_id: str
    text: str
    responder: Responder = attrs.field(eq=False, repr=False)
    message_id: str | None = None
    sender: str | None = None

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
