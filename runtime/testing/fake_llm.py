"""A scriptable fake of Anthropic's Messages API and OpenAI's Chat Completions, on 127.0.0.1.

It speaks the real wire formats, streaming included (Anthropic's `message_start` …
`content_block_delta` (`text_delta`, `input_json_delta`) … `message_stop`; OpenAI's chunked
`tool_calls` deltas and `[DONE]`), so the official SDKs run against it unchanged. Script the
answers, inject failures, and read back every request it received::

    fake = FakeLLM()
    fake.script(ToolUse(("memory_store", {"content": "Miso"})), Text("Noted."))
    async with open_local(fake) as url:
        ...  # ANTHROPIC_BASE_URL=url, OPENAI_BASE_URL=url + "/v1"

With nothing scripted it answers `ok: <the last user text>` after `delay` seconds, which is
what benchmarks use: `python -m runtime.testing.fake_llm --port 8099 --delay-ms 200`.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
import trio

from runtime.testing.local import (
    Receive,
    Scope,
    Send,
    answer_lifespan,
    read_body,
    send_json,
    serve_local,
)

JSON = dict[str, Any]


@attrs.frozen
class Text:
    """Answer with this text."""

    text: str


@attrs.frozen
class ToolUse:
    """Answer with these tool calls, `(name, arguments)` each, optionally after some text."""

    calls: tuple[tuple[str, Mapping[str, Any]], ...]
    text: str = ""

    def __init__(self, *calls: tuple[str, Mapping[str, Any]], text: str = "") -> None:
        self.__attrs_init__(tuple(calls), text)  # type: ignore[attr-defined]


@attrs.frozen
class Fail:
    """Answer with an HTTP error in the provider's own error body."""

    status: int
    message: str = "injected failure"
    retry_after: float | None = None


@attrs.frozen
class Slow:
    """Wait `seconds` before the answer `then`."""

    seconds: float
    then: Text | ToolUse | Fail


@attrs.frozen
class Malformed:
    """A 200 whose body is not what the protocol promises."""


@attrs.frozen
class CutStream:
    """Start streaming `text`, then drop the connection after `after` events."""

    text: str = "this answer is cut off in the middle"
    after: int = 3


Step = Text | ToolUse | Fail | Slow | Malformed | CutStream


@attrs.frozen
class RecordedRequest:
    protocol: str  # "anthropic" or "openai"
    path: str
    headers: Mapping[str, str]
    body: JSON


@attrs.frozen
class RateLimit:
    """Take at most `requests` calls per window of `per` seconds; answer the others 429 with a
    `retry-after`, and tell every answer what is left, in each provider's own headers."""

    requests: int
    per: float = 60.0


class FakeLLM:
    def __init__(
        self,
        *,
        delay: float = 0.0,
        record: bool = True,
        api_key: str | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.delay = delay
        self.api_key = api_key
        """When set, a request without this key (x-api-key or Bearer) is refused with 401."""
        self.requests: list[RecordedRequest] = []
        self.rate_limit = rate_limit
        self.refused = 0
        """Requests answered 429 by the rate limit."""
        self._used = 0
        self._window_end = -math.inf
        self._record = record
        self._script: deque[Step] = deque()
        self._ids = itertools.count(1)

    def script(self, *steps: Step) -> None:
        """Queue answers; each request takes the next one. Empty: the default echo answer."""
        self._script.extend(steps)

    def requests_for(self, protocol: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.protocol == protocol]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        path = scope["path"]
        if self.api_key is not None:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            if given != self.api_key:
                refusal = {"type": "authentication_error", "message": "invalid api key"}
                await send_json(send, 401, {"type": "error", "error": refusal})
                return
        if scope["method"] == "GET" and path.endswith("/models"):  # the cheapest checked call
            await send_json(send, 200, {"object": "list", "data": [{"id": "fake-model"}]})
            return
        protocol = (
            "anthropic"
            if path.endswith("/messages")
            else "openai"
            if path.endswith("/chat/completions")
            else None
        )
        if scope["method"] != "POST" or protocol is None:
            await send_json(send, 404, {"error": {"message": f"no route {path}"}})
            return
        try:
            request = json.loads(body)
        except json.JSONDecodeError:
            await send_json(send, 400, {"error": {"message": "body is not JSON"}})
            return
        if self._record:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.requests.append(RecordedRequest(protocol, path, headers, request))
        wire = _Anthropic(self, request) if protocol == "anthropic" else _OpenAI(self, request)
        if self.rate_limit is not None:
            refused, wire.headers = self._count(self.rate_limit, protocol)
            if refused:
                self.refused += 1
                error = wire.error_body(429, "rate limit exceeded; slow down")
                await send_json(send, 429, error, wire.headers)
                return
        step: Step = self._script.popleft() if self._script else Text(_echo(protocol, request))
        if self.delay:
            await trio.sleep(self.delay)
        while isinstance(step, Slow):
            await trio.sleep(step.seconds)
            step = step.then
        await wire.answer(step, send)

    def _count(self, limit: RateLimit, protocol: str) -> tuple[bool, list[tuple[str, str]]]:
        """Count one request against the window: (refused, the rate-limit headers)."""
        now = trio.current_time()
        if now >= self._window_end:
            self._window_end = now + limit.per
            self._used = 0
        self._used += 1
        refused = self._used > limit.requests
        left, reset_in = max(0, limit.requests - self._used), self._window_end - now
        if protocol == "anthropic":
            at = datetime.fromtimestamp(time.time() + reset_in, UTC)
            headers = [
                ("anthropic-ratelimit-requests-limit", str(limit.requests)),
                ("anthropic-ratelimit-requests-remaining", str(left)),
                ("anthropic-ratelimit-requests-reset", at.isoformat().replace("+00:00", "Z")),
            ]
        else:
            headers = [
                ("x-ratelimit-limit-requests", str(limit.requests)),
                ("x-ratelimit-remaining-requests", str(left)),
                ("x-ratelimit-reset-requests", f"{math.ceil(reset_in * 1000)}ms"),
            ]
        if refused:
            headers += [
                ("retry-after", f"{math.ceil(reset_in)}"),
                ("retry-after-ms", f"{math.ceil(reset_in * 1000)}"),
            ]
        return refused, headers

    def next_id(self) -> int:
        return next(self._ids)


def _echo(protocol: str, request: JSON) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return f"ok: {content}"
            texts = [c.get("text", "") for c in content if c.get("type") == "text"]
            if texts:
                return f"ok: {' '.join(texts)}"
            return "ok: tool results received"
    return "ok"


class _Cut(Exception):
    """Raised inside the response to make the server drop the connection mid-stream."""


class _Wire:
    protocol = ""

    def __init__(self, fake: FakeLLM, request: JSON) -> None:
        self.fake = fake
        self.request = request
        self.model = str(request.get("model", "fake-model"))
        self.streaming = bool(request.get("stream"))
        self.headers: list[tuple[str, str]] = []
        """Sent with the answer (the rate limit's)."""
        self.input_tokens = max(1, len(json.dumps(request.get("messages", []))) // 4)

    async def answer(self, step: Step, send: Send) -> None:
        if isinstance(step, Fail):
            headers = [] if step.retry_after is None else [("retry-after", f"{step.retry_after:g}")]
            await send_json(send, step.status, self.error_body(step.status, step.message), headers)
            return
        if isinstance(step, Malformed):
            if self.streaming:
                await self.start_stream(send)
                await send({"type": "http.response.body", "body": b"data: {not json\n\n"})
            else:
                await send_json(send, 200, b'{"this is": not json')
            return
        if isinstance(step, CutStream):
            events = self.events(Text(step.text))
            await self.start_stream(send)
            for event in events[: step.after]:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            raise _Cut("connection dropped on purpose")
        assert isinstance(step, Text | ToolUse)
        if not self.streaming:
            await send_json(send, 200, self.whole(step), self.headers)
            return
        await self.start_stream(send)
        for event in self.events(step):
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await trio.lowlevel.checkpoint()
        await send({"type": "http.response.body", "body": b""})

    async def start_stream(self, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    *((k.encode(), v.encode()) for k, v in self.headers),
                ],
            }
        )

    def pieces(self, text: str) -> list[str]:
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words) if w or i == 0]

    def error_body(self, status: int, message: str) -> JSON:
        raise NotImplementedError

    def whole(self, step: Text | ToolUse) -> JSON:
        raise NotImplementedError

    def events(self, step: Text | ToolUse) -> list[bytes]:
        raise NotImplementedError


class _Anthropic(_Wire):
    _ERRORS = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }

    def error_body(self, status: int, message: str) -> JSON:
        kind = self._ERRORS.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def blocks(self, step: Text | ToolUse) -> list[JSON]:
        text = step.text
        blocks: list[JSON] = [{"type": "text", "text": text}] if text else []
        if isinstance(step, ToolUse):
            blocks.extend(
                {
                    "type": "tool_use",
                    "id": f"toolu_{self.fake.next_id():04d}",
                    "name": name,
                    "input": dict(args),
                }
                for name, args in step.calls
            )
        return blocks

    def whole(self, step: Text | ToolUse) -> JSON:
        blocks = self.blocks(step)
        return {
            "id": f"msg_{self.fake.next_id():04d}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": blocks,
            "stop_reason": "tool_use" if isinstance(step, ToolUse) else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 7},
        }

    def events(self, step: Text | ToolUse) -> list[bytes]:
        def event(kind: str, data: JSON) -> bytes:
            return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()

        blocks = self.blocks(step)
        cached = (
            self.input_tokens // 2
            if any(
                "cache_control" in b for b in self.request.get("system", []) if isinstance(b, dict)
            )
            else 0
        )
        out = [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": f"msg_{self.fake.next_id():04d}",
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": self.input_tokens,
                            "output_tokens": 1,
                            "cache_read_input_tokens": cached,
                            "cache_creation_input_tokens": 0,
                        },
                    },
                },
            ),
            event("ping", {"type": "ping"}),
        ]
        output_tokens = 0
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                out.append(
                    event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
                for piece in self.pieces(block["text"]):
                    output_tokens += 1
                    out.append(
                        event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": piece},
                            },
                        )
                    )
            else:
                start = {**block, "input": {}}
                out.append(
                    event(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": start},
                    )
                )
                arguments = json.dumps(block["input"])
                for cut in range(0, len(arguments), 8):
                    output_tokens += 1
                    out.append(
                        event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {
                                    "type": "input_json_delta",
                                    "partial_json": arguments[cut : cut + 8],
                                },
                            },
                        )
                    )
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        stop = "tool_use" if isinstance(step, ToolUse) else "end_turn"
        out.append(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": output_tokens},
                },
            )
        )
        out.append(event("message_stop", {"type": "message_stop"}))
        return out


class _OpenAI(_Wire):
    def error_body(self, status: int, message: str) -> JSON:
        kind = {401: "invalid_api_key", 429: "rate_limit_exceeded", 404: "model_not_found"}.get(
            status, "server_error"
        )
        return {"error": {"message": message, "type": kind, "param": None, "code": kind}}

    def calls(self, step: Text | ToolUse) -> list[JSON]:
        if not isinstance(step, ToolUse):
            return []
        return [
            {
                "id": f"call_{self.fake.next_id():04d}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(dict(args))},
            }
            for name, args in step.calls
        ]

    def whole(self, step: Text | ToolUse) -> JSON:
        calls = self.calls(step)
        message: JSON = {"role": "assistant", "content": step.text or None}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": f"chatcmpl-{self.fake.next_id():04d}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": self.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
            ],
            "usage": {
                "prompt_tokens": self.input_tokens,
                "completion_tokens": 7,
                "total_tokens": self.input_tokens + 7,
            },
        }

    def events(self, step: Text | ToolUse) -> list[bytes]:
        ident = f"chatcmpl-{self.fake.next_id():04d}"

        def chunk(delta: JSON, finish: str | None = None, usage: JSON | None = None) -> bytes:
            data: JSON = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": self.model,
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n".encode()

        out = [chunk({"role": "assistant", "content": ""})]
        pieces = self.pieces(step.text) if step.text else []
        out.extend(chunk({"content": piece}) for piece in pieces)
        for index, call in enumerate(self.calls(step)):
            out.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            arguments = call["function"]["arguments"]
            for cut in range(0, len(arguments), 8):
                out.append(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": index,
                                    "function": {"arguments": arguments[cut : cut + 8]},
                                }
                            ]
                        }
                    )
                )
        out.append(chunk({}, "tool_calls" if isinstance(step, ToolUse) else "stop"))
        if (self.request.get("stream_options") or {}).get("include_usage"):
            completion = max(1, len(pieces))
            out.append(
                chunk(
                    {},
                    usage={
                        "prompt_tokens": self.input_tokens,
                        "completion_tokens": completion,
                        "total_tokens": self.input_tokens + completion,
                    },
                )
            )
        out.append(b"data: [DONE]\n\n")
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Anthropic + OpenAI API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument(
        "--rate-limit", type=int, default=0, help="requests per second taken (0: no limit)"
    )
    args = parser.parse_args()
    limit = RateLimit(args.rate_limit, per=1.0) if args.rate_limit else None
    fake = FakeLLM(delay=args.delay_ms / 1000, record=False, rate_limit=limit)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_local, fake, "127.0.0.1", args.port)
            print(f"fake LLM on {url} (Anthropic: {url}, OpenAI: {url}/v1)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)


if __name__ == "__main__":
    main()
