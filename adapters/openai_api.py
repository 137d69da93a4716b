"""An OpenAI-compatible chat API: `POST /v1/chat/completions` and `GET /v1/models`.

Any OpenAI client (the official SDKs, chat UIs) talks to the host's bots with their memory
and tools. `model` names the bot; `user` (or an `X-Session-Id` header) names the session,
whose history the bot keeps itself: only the last user message of `messages` is the input.
Answers come as a `chat.completion`, or with `"stream": true` as Server-Sent Events of
`chat.completion.chunk`s ending with `data: [DONE]`. Errors have OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio
from quart import Response, request

from adapters._web import (
    ApiError,
    event_stream,
    json_response,
    read_body_json,
    refusals,
    reply_status,
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
    Unattended,
    WaitingResponder,
)
from adapters.ratelimit import Networks, RateLimiter, client_address

log = logging.getLogger("adapters.openai_api")

_SESSION = re.compile(r"[\w.:@-]{1,128}")
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@attrs.frozen
class ChatBot:
    """One bot as the chat API reaches it: its `deliver` and its limits."""

    deliver: Deliver
    reply_timeout: float = 150.0
    max_message_chars: int = 32_000


class OpenAIChatChannel:
    """The OpenAI chat API for the bots of a host, by name (the `model`)."""

    name = "openai"

    def __init__(
        self,
        bots: Mapping[str, ChatBot],
        *,
        client_rate_per_minute: float = 0.0,
        trusted_proxies: Networks = (),
    ) -> None:
        self._bots = dict(bots)
        self._proxies = trusted_proxies
        self._clients = RateLimiter(client_rate_per_minute) if client_rate_per_minute else None

    def routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/v1/chat/completions", _openai_errors(self._completions)),
            Route("GET", "/v1/models", _openai_errors(self._models)),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def close(self) -> None:
        pass

    def problem(self) -> str | None:
        return None

    def recovered(self, session_id: str, address: Mapping[str, Any] | None) -> Responder:
        return Unattended(f"{self.name}:{session_id}")

    async def _models(self) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "botcorebot"}
            for name in self._bots
        ]
        return json_response({"object": "list", "data": data}, 200)

    async def _completions(self) -> Response:
        client = client_address(
            request.remote_addr,
            self._proxies,
            x_forwarded_for=", ".join(request.headers.getlist("X-Forwarded-For")) or None,
            forwarded=", ".join(request.headers.getlist("Forwarded")) or None,
        )
        if self._clients is not None and (wait := self._clients.acquire(client)):
            raise ApiError(
                429,
                "rate_limited",
                "too many requests from this client; slow down",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        body = await read_body_json()
        if not isinstance(body, dict):
            raise _invalid("the body must be a JSON object")
        model = body.get("model")
        bot = self._bots.get(model) if isinstance(model, str) else None
        if bot is None:
            raise _OpenAIError(
                404,
                f"there is no bot {model!r}; GET /v1/models lists them: "
                + ", ".join(repr(name) for name in self._bots),
                param="model",
                code="model_not_found",
            )
        assert isinstance(model, str)
        text = _last_user_text(body.get("messages"))
        if len(text) > bot.max_message_chars:
            raise _invalid(
                f"the last user message is {len(text)} characters;"
                f" the limit is {bot.max_message_chars}",
                "messages",
            )
        session = request.headers.get("X-Session-Id") or body.get("user") or uuid.uuid4().hex
        if not isinstance(session, str) or not _SESSION.fullmatch(session):
            raise _invalid("'user' (the session) must be 1-128 letters, digits or '.:@_-'", "user")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise _invalid("'stream' must be true or false", "stream")
        key = request.headers.get("Idempotency-Key")
        if key is not None and len(key) > 255:
            raise _invalid("an Idempotency-Key is at most 255 characters")
        responder: StreamingResponder | WaitingResponder = (
            StreamingResponder() if stream else WaitingResponder()
        )
        with refusals():
            await bot.deliver(Inbound(self.name, session, text, responder, key, client))
        created = int(time.time())
        if isinstance(responder, StreamingResponder):
            return event_stream(self._chunks(responder, model, created, bot.reply_timeout))
        with trio.move_on_after(bot.reply_timeout):
            reply = await responder.wait()
            if reply.error is not None:
                raise _OpenAIError(reply_status(reply), reply.error.message, code=reply.error.kind)
            return json_response(_completion(reply, model, created), 200)
        raise _OpenAIError(
            504,
            f"no reply within {bot.reply_timeout:g}s; the message is kept and will be "
            "answered, retry with the same Idempotency-Key to get the answer",
            code="timeout",
        )

    async def _chunks(
        self, responder: StreamingResponder, model: str, created: int, within: float
    ) -> AsyncIterator[bytes]:
        ident = f"chatcmpl-{uuid.uuid4().hex}"

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            data = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
                **extra,
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

        yield chunk({"role": "assistant", "content": ""})
        async for item in responder.items(within):
            if isinstance(item, TextDelta):
                yield chunk({"content": item.text})
            elif isinstance(item, TextDiscarded):
                # The chunk format cannot take text back: the new answer starts apart.
                yield chunk({"content": "\n\n"})
            elif isinstance(item, Reply):
                if item.error is not None:
                    yield _error_event(item.error.message, reply_status(item), item.error.kind)
                else:
                    yield chunk({}, "stop", usage=_usage(item), botcore=_extension(item))
            elif item is None:
                yield _error_event(f"no reply within {within:g}s", 504, "timeout")
        yield b"data: [DONE]\n\n"


class _OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code
        self.headers = dict(headers or {})


def _invalid(message: str, param: str | None = None) -> _OpenAIError:
    return _OpenAIError(400, message, param=param)


def _error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def _error_body(status: int, message: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": _error_type(status), "param": param, "code": code}
    }


def _error_event(message: str, status: int, code: str) -> bytes:
    body = _error_body(status, message, None, code)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


def _openai_errors(handler: Callable[[], Awaitable[Response]]) -> Callable[[], Awaitable[Response]]:
    """Errors raised in the handler (its own, and the shared refusals) in OpenAI's shape."""

    async def handle() -> Response:
        try:
            return await handler()
        except _OpenAIError as exc:
            error = (exc.status, str(exc), exc.param, exc.code, exc.headers)
        except ApiError as exc:
            error = (exc.status, str(exc), None, exc.kind, exc.headers)
        status, message, param, code, headers = error
        log.info("refused %s %s: %d %s", request.method, request.path, status, message)
        return json_response(_error_body(status, message, param, code), status, headers)

    return handle


def _last_user_text(messages: object) -> str:
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list", "messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        raise _invalid("the last of 'messages' must be the user's (role 'user')", "messages")
    content = last.get("content")
    if isinstance(content, list):  # content parts: the text ones, in order
        content = "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    if not isinstance(content, str) or not content.strip():
        raise _invalid("the last user message has no text", "messages")
    return content


def _usage(reply: Reply) -> dict[str, int]:
    used = dict(reply.usage)
    prompt, completion = used.get("input_tokens", 0), used.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _extension(reply: Reply) -> dict[str, Any]:
    """What the bot did beyond the text (a field OpenAI clients keep as an extra)."""
    return {
        "session_id": reply.session_id,
        "turn_id": reply.turn_id,
        "tools_used": reply.tools_used,
        "memories_recalled": reply.memories_recalled,
        "model": reply.model,
    }


def _completion(reply: Reply, model: str, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{reply.turn_id or uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.message},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(reply),
        "botcore": _extension(reply),
    }
