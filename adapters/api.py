"""The HTTP API channel: `POST /api/message` and `GET /api/sessions/<id>/messages`.

It takes the seed's request verbatim (`{"message": "Hello!", "session_id": "test-123"}`) and
answers `{"message": ..., "session_id": ..., "metadata": {...}}`, or streams the turn as
Server-Sent Events. A message it took before a restart is answered into the inbox: the client
gets it by retrying with the same `Idempotency-Key`. What the bot says in a session that no
request waits for (a fired schedule, the heartbeat) the client reads by polling the session.
"""

from __future__ import annotations

import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import trio
from quart import Response, request

from adapters._web import (
    ApiError,
    event_stream,
    json_response,
    read_json,
    refusals,
    reply_status,
    strict,
)
from adapters.base import (
    Deliver,
    Inbound,
    Reply,
    Responder,
    Route,
    StreamingResponder,
    TextDelta,
    TextDiscarded,
    ToolProgress,
    Unattended,
    WaitingResponder,
    reply_body,
)
from adapters.ratelimit import Networks, RateLimiter, client_address

log = logging.getLogger("adapters.api")

_SESSION_ID = re.compile(r"[\w.:@-]{1,128}")
_NUMBER = re.compile(r"[0-9]{1,15}")
PAGE_SIZE, MOST_PER_PAGE = 50, 200


Source = Literal["client", "schedule", "heartbeat"]


@attrs.frozen
class Answered:
    """A message of a session and the bot's answer to it, for a client polling the session."""

    id: int
    """Its place in the session: poll on with `after` = the last one seen."""
    text: str
    source: Source
    """Who sent it: a request, a fired schedule, the heartbeat."""
    reply: Reply
    answered_at: float
    """Seconds since the epoch."""


@attrs.frozen
class AnswerPage:
    messages: tuple[Answered, ...]
    next_after: int
    """Where the next poll starts: past every message looked at, those left out too (a
    heartbeat with nothing to say)."""
    waiting: bool
    """The page stopped before a message of the session that is still being answered."""


Answers = Callable[[str, int, int], Awaitable[AnswerPage]]
"""(session id, after, limit): the session's answered messages after id `after`, oldest
first, at most `limit`; the host reads them from the bot's inbox."""


@attrs.frozen
class ApiSettings:
    max_message_chars: int = 32_000
    reply_timeout: float = 150.0
    client_rate_per_minute: float = 0.0
    """Per-client (remote address) limit; 0 is off (and it is off behind an API token)."""
    trusted_proxies: Networks = ()
    """Reverse proxies whose `X-Forwarded-For` / `Forwarded` names the client."""


@attrs.frozen
class MessageRequest:
    message: str
    session_id: str | None = None
    message_id: str | None = None
    stream: bool = False


async def _events(responder: StreamingResponder, reply_within: float) -> AsyncIterator[bytes]:
    """The SSE byte stream: `delta`, `tool`, `discard`, then `done` (or `error` if the turn
    failed)."""
    async for item in responder.items(reply_within):
        if isinstance(item, TextDelta):
            yield sse("delta", {"text": item.text})
        elif isinstance(item, TextDiscarded):
            yield sse("discard", {"text": item.text})
        elif isinstance(item, ToolProgress):
            yield sse("tool", attrs.asdict(item))
        elif isinstance(item, Reply):
            yield sse("done" if item.error is None else "error", reply_body(item))
        else:
            yield sse(
                "error",
                {"error": {"type": "timeout", "message": f"no reply within {reply_within:g}s"}},
            )


def sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class HttpApiChannel:
    """`POST /api/message` for one bot."""

    name = "http"

    def __init__(
        self,
        deliver: Deliver,
        settings: ApiSettings,
        *,
        rate_limited: bool,
        answers: Answers | None = None,
    ) -> None:
        self._deliver = deliver
        self._settings = settings
        self._answers = answers
        self._clients = (
            RateLimiter(settings.client_rate_per_minute)
            if settings.client_rate_per_minute and rate_limited
            else None
        )

    def routes(self) -> Sequence[Route]:
        routes = [Route("POST", "/api/message", self._message)]
        if self._answers is not None:
            routes.append(Route("GET", "/api/sessions/<session_id>/messages", self._messages))
        return routes

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def close(self) -> None:
        pass

    def problem(self) -> str | None:
        return None

    def recovered(self, session_id: str, address: Mapping[str, Any] | None) -> Responder:
        return Unattended(f"{self.name}:{session_id}")

    def _client(self) -> str | None:
        """The client's address; 429 when it is over its rate."""
        settings = self._settings
        client = client_address(
            request.remote_addr,
            settings.trusted_proxies,
            x_forwarded_for=", ".join(request.headers.getlist("X-Forwarded-For")) or None,
            forwarded=", ".join(request.headers.getlist("Forwarded")) or None,
        )
        if self._clients is not None:
            wait = self._clients.acquire(client)
            if wait:
                raise ApiError(
                    429,
                    "rate_limited",
                    "too many requests from this client; slow down or configure BOTCORE_API_TOKEN",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return client

    async def _messages(self, session_id: str) -> Response:
        """A page of the session's answered messages, for a client that polls."""
        assert self._answers is not None
        self._client()
        if not _SESSION_ID.fullmatch(session_id):
            raise ApiError(
                400, "invalid_request", "the session id must be 1-128 letters, digits or '.:@_-'"
            )
        unknown = sorted(set(request.args) - {"after", "limit"})
        if unknown:
            raise ApiError(
                400,
                "invalid_request",
                f"unknown query parameter {unknown[0]!r}; this takes 'after' and 'limit'",
            )
        after = _count(request.args.get("after", "0"), "after", 0, None)
        limit = _count(request.args.get("limit", str(PAGE_SIZE)), "limit", 1, MOST_PER_PAGE)
        page = await self._answers(session_id, after, limit)
        body = {
            "session_id": session_id,
            "messages": [
                {
                    "id": item.id,
                    "text": item.text,
                    "source": item.source,
                    "answered_at": item.answered_at,
                    "reply": reply_body(item.reply),
                }
                for item in page.messages
            ],
            "next_after": page.next_after,
            "waiting": page.waiting,
        }
        return json_response(body, 200)

    async def _message(self) -> Response:
        settings = self._settings
        client = self._client()
        payload = await _read_message(settings)
        key = request.headers.get("Idempotency-Key") or payload.message_id
        if key is not None and len(key) > 255:
            raise ApiError(400, "invalid_request", "an Idempotency-Key is at most 255 characters")
        session_id = payload.session_id or uuid.uuid4().hex
        streaming = payload.stream or "text/event-stream" in request.headers.get("Accept", "")
        responder = StreamingResponder() if streaming else WaitingResponder()
        inbound = Inbound(
            channel=self.name,
            session_id=session_id,
            text=payload.message,
            responder=responder,
            message_id=key,
            sender=client,
        )
        with refusals():
            await self._deliver(inbound)
        if isinstance(responder, StreamingResponder):
            return event_stream(_events(responder, settings.reply_timeout))
        with trio.move_on_after(settings.reply_timeout):
            reply = await responder.wait()
            return json_response(reply_body(reply), reply_status(reply))
        raise ApiError(
            504,
            "timeout",
            f"no reply within {settings.reply_timeout:g}s; the message is kept and will be "
            "answered, retry with the same Idempotency-Key to get the answer",
        )


def _count(text: str, name: str, low: int, high: int | None) -> int:
    """A whole-number query parameter within [low, high], or 400 naming it."""
    value = int(text) if _NUMBER.fullmatch(text) else None
    if value is None or value < low or (high is not None and value > high):
        within = f"{low}-{high}" if high is not None else f"{low} or more"
        raise ApiError(400, "invalid_request", f"{name!r} must be a whole number, {within}")
    return value


async def _read_message(settings: ApiSettings) -> MessageRequest:
    payload = await read_json(MessageRequest, strict)
    if not payload.message.strip():
        raise ApiError(400, "invalid_request", "'message' must not be empty")
    if len(payload.message) > settings.max_message_chars:
        raise ApiError(
            413,
            "message_too_long",
            f"'message' is {len(payload.message)} characters; the limit is {settings.max_message_chars}",
        )
    if payload.session_id is not None and not _SESSION_ID.fullmatch(payload.session_id):
        raise ApiError(
            400,
            "invalid_request",
            "'session_id' must be 1-128 letters, digits or '.:@_-'",
        )
    return payload
