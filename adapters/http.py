"""The HTTP channel: quart-trio served by hypercorn's trio worker.

`POST /api/message` takes the seed's request verbatim
(`{"message": "Hello!", "session_id": "test-123"}`) and answers
`{"message": ..., "session_id": ..., "metadata": {...}}`. Every error is JSON a person can act
on: `{"error": {"type": ..., "message": ...}}` with the matching status.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from ipaddress import ip_address
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import attrs
import cattrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import BadHost, HTTPException

from adapters._json import InvalidJson, decode_json
from adapters.base import (
    Accepted,
    Busy,
    Deliver,
    Inbound,
    KeyReused,
    Progress,
    Reply,
    TextDelta,
    TextDiscarded,
    ToolProgress,
    Unavailable,
    reply_body,
)
from adapters.ratelimit import Networks, RateLimiter, client_address
from adapters.telegram import TelegramWebhook
from adapters.webhook import (
    CallbackResponder,
    CallbackSender,
    ReplayGuard,
    SignatureError,
    WebhookSource,
    parse,
    verify,
)

log = logging.getLogger("adapters.http")

T = TypeVar("T")
_SESSION_ID = re.compile(r"[\w.:@-]{1,128}")
_ERROR_STATUS = {
    "provider": 502,
    "timeout": 504,
    "tool_rounds": 422,
    "crashed": 500,
    "stopped": 503,
    "internal": 500,
}


@attrs.frozen
class HttpSettings:
    api_token: str | None = attrs.field(default=None, repr=False)
    max_body_bytes: int = 1 << 20
    max_message_chars: int = 32_000
    reply_timeout: float = 150.0
    body_timeout: float = 30.0
    """A request body must have arrived within this (a slow sender gets 408 and is closed)."""
    client_rate_per_minute: float = 0.0
    """Per-client (remote address) limit when no API token is configured; 0 is off."""
    allowed_hosts: tuple[str, ...] | None = None
    """The `Host` names (port aside) the API answers, against DNS rebinding; None: any.
    See `allowed_hosts`."""
    trusted_proxies: Networks = ()
    """Reverse proxies whose `X-Forwarded-For` / `Forwarded` names the client."""


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(setting: str, bind_host: str) -> tuple[str, ...] | None:
    """The `Host` allow-list from `ALLOWED_HOSTS` (comma-separated; `*` is any): by default
    the loopback names when the server listens on loopback only, any name otherwise."""
    names = tuple(name.strip().lower().rstrip(".") for name in setting.split(",") if name.strip())
    if "*" in names:
        return None
    if names:
        return names
    return LOOPBACK_HOSTS if _is_loopback(bind_host) else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen
class MessageRequest:
    message: str
    session_id: str | None = None
    message_id: str | None = None
    stream: bool = False


@attrs.frozen
class RecallRequest:
    query: str
    limit: int = 5
    types: list[str] | None = None


@attrs.frozen
class StoreRequest:
    content: str
    type: str = "factual"
    importance: float = 0.5
    metadata: dict[str, Any] = attrs.field(factory=dict)


class MemoryEndpoints(Protocol):
    """The bot's memory as the HTTP API offers it (BotCoreBot's memory API). Invalid input
    raises `ValueError` with a message for the client."""

    async def recall(
        self, query: str, limit: int, types: Sequence[str] | None
    ) -> list[dict[str, Any]]: ...

    async def store(
        self, content: str, type: str, importance: float, metadata: Mapping[str, Any]
    ) -> int: ...

    async def consolidate(self) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...


class HttpResponder:
    """Holds the reply for the request that waits on it."""

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
    """Feeds a Server-Sent Events response: deltas and tool events, then the reply."""

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

    async def events(self, reply_within: float) -> AsyncIterator[bytes]:
        """The SSE byte stream: `delta`, `tool`, `discard`, then `done` (or `error` if the turn
        failed)."""
        async with self._receive:
            with trio.move_on_after(reply_within):
                async for item in self._receive:
                    if isinstance(item, TextDelta):
                        yield _sse("delta", {"text": item.text})
                    elif isinstance(item, TextDiscarded):
                        yield _sse("discard", {"text": item.text})
                    elif isinstance(item, ToolProgress):
                        yield _sse("tool", attrs.asdict(item))
                    else:
                        yield _sse("done" if item.error is None else "error", reply_body(item))
                        return
            yield _sse(
                "error",
                {"error": {"type": "timeout", "message": f"no reply within {reply_within:g}s"}},
            )


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class ApiError(Exception):
    def __init__(
        self, status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.headers = status, kind, dict(headers or {})


_converter = cattrs.Converter()


def _exactly(kind: type) -> Callable[[object, type], object]:
    """cattrs' default turns 42 into "42" and "no" into True; JSON input must not."""

    def structure(value: object, _: type) -> object:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return structure


def _number(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


_converter.register_structure_hook(str, _exactly(str))
_converter.register_structure_hook(bool, _exactly(bool))
_converter.register_structure_hook(int, _exactly(int))
_converter.register_structure_hook(float, _number)
_strict = _converter.copy(forbid_extra_keys=True)
"""For JSON bodies: an unknown (mistyped) field is an error, named in the answer."""


_CLOSE = (b"connection", b"close")
_BODY_GRACE = 1.0
"""Seconds a response waits for the (empty) end of a request without a body."""


def _has_body(request: Any) -> bool:
    return bool(request.content_length) or "Transfer-Encoding" in request.headers


class _HttpConnection(TrioASGIHTTPConnection):
    """quart-trio's handling of one HTTP request, without cancelling hypercorn's own work.

    quart-trio 0.12 runs the route and a receive loop in one nursery and cancels both when
    the loop sees `http.disconnect`. Hypercorn sends that disconnect from *inside* the
    route's last `send`: finishing the response closes the stream, which then recycles the
    connection (starts the keep-alive timer, or closes the socket for `Connection: close`
    and HTTP/1.0). That work was cancelled half-way, so no connection was ever closed by the
    server and ~1,000 idle clients ran it out of file descriptors. Here a disconnect cancels
    the route only while its response is unfinished (the client left mid-request).

    A response decided before the request's body has arrived (a 401, 403, 413 or 415 from
    the headers alone) says `Connection: close`: hypercorn closes a connection whose request
    was not read to its end, and a client told nothing would send its next request into the
    closing socket. A request without a body has its end delivered at once: that is awaited.
    """

    async def __call__(self, receive: Any, send: Any) -> None:
        request = self._create_request_from_scope(send)
        finishing = False
        body_received = trio.Event()

        async def receive_tracked() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                body_received.set()
            return message

        async def send_tracked(message: Any) -> None:
            nonlocal finishing
            if message["type"] == "http.response.start" and not body_received.is_set():
                if not _has_body(request):
                    with trio.move_on_after(_BODY_GRACE):
                        await body_received.wait()
                if not body_received.is_set():
                    message = {**message, "headers": [*message["headers"], _CLOSE]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finishing = True
            await send(message)

        route = trio.CancelScope()

        async def watch_disconnect() -> None:
            await super(TrioASGIHTTPConnection, self).handle_messages(request, receive_tracked)
            if not finishing:
                route.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect)
            with route:
                await self._respond(request, send_tracked)
            nursery.cancel_scope.cancel()

    async def _respond(self, request: Any, send: Any) -> None:
        try:
            response = await self.app.handle_request(request)
        except BadHost:
            # Raised while Quart builds the request context, before any error handler of
            # the app can answer (a Host label over 63 characters, an empty one): a 500.
            error = {"type": "invalid_host", "message": "the Host header is not a valid host name"}
            response = _json({"error": error}, 400)
        timeout = getattr(response, "timeout", Ellipsis)
        if timeout is Ellipsis:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await self._send_response(send, response)


def reply_status(reply: Reply) -> int:
    return 200 if reply.error is None else _ERROR_STATUS.get(reply.error.kind, 500)


def create_app(
    deliver: Deliver,
    settings: HttpSettings,
    *,
    health: Callable[[], Awaitable[tuple[int, dict[str, Any]]]] | None = None,
    metrics: Callable[[], str] | None = None,
    webhooks: Mapping[str, WebhookSource] | None = None,
    callbacks: CallbackSender | None = None,
    replays: ReplayGuard | None = None,
    telegram: TelegramWebhook | None = None,
    memory: MemoryEndpoints | None = None,
) -> QuartTrio:
    app = QuartTrio("botcorebot")
    app.asgi_http_class = _HttpConnection
    clients = (
        RateLimiter(settings.client_rate_per_minute)
        if settings.client_rate_per_minute and settings.api_token is None
        else None
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        _log_refused(error.status, error.kind, str(error))
        return _json(
            {"error": {"type": error.kind, "message": str(error)}}, error.status, error.headers
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            message = f"request body is larger than {settings.max_body_bytes} bytes"
        else:
            message = error.description or error.name
        _log_refused(status, _slug(error.name), message)
        return _json({"error": {"type": _slug(error.name), "message": message}}, status)

    @app.before_request
    async def check_host() -> None:
        """A DNS-rebinding page reaches us under its own name: answer only ours."""
        if settings.allowed_hosts is None or _public(request.path):
            return
        host = request.headers.get("Host", "")
        if host and _host_name(host) not in settings.allowed_hosts:
            raise ApiError(
                400,
                "invalid_host",
                f"this server does not answer for host {_host_name(host)!r};"
                " add it to ALLOWED_HOSTS if it should",
            )

    @app.before_request
    async def authenticate() -> None:
        if settings.api_token is None or _public(request.path):
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.api_token.encode()
        ):
            raise ApiError(
                401,
                "unauthorized",
                "this API needs 'Authorization: Bearer <token>' with the configured BOTCORE_API_TOKEN",
                # Refused before the body is read: close, or the next request on this
                # connection can hang behind the unread body.
                {"WWW-Authenticate": 'Bearer realm="botcorebot"', "Connection": "close"},
            )

    @app.before_request
    async def refuse_cross_site() -> None:
        """A browser may send a form or a simple POST anywhere without asking; JSON from
        another site needs a CORS preflight, which this API never grants."""
        if request.method in ("GET", "HEAD", "OPTIONS") or _public(request.path):
            return
        origin = request.headers.get("Origin")
        if origin is not None and _origin_host(origin) != _host_name(
            request.headers.get("Host", "")
        ):
            raise ApiError(403, "cross_origin", f"requests from {origin!r} are not allowed")
        if request.mimetype != "application/json":
            raise ApiError(
                415,
                "unsupported_media_type",
                "send JSON with 'Content-Type: application/json'"
                f" (got {request.mimetype or 'none'})",
            )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"}, 200)

    @app.get("/readyz")
    async def readyz() -> Response:
        if health is None:
            return _json({"status": "ok"}, 200)
        status, body = await health()
        return _json(body, status)

    @app.get("/metrics")
    async def prometheus() -> Response:
        if metrics is None:
            raise ApiError(404, "not_found", "metrics are not enabled")
        return Response(metrics(), status=200, content_type="text/plain; version=0.0.4")

    @app.post("/api/message")
    async def message() -> Response:
        client = client_address(
            request.remote_addr,
            settings.trusted_proxies,
            x_forwarded_for=", ".join(request.headers.getlist("X-Forwarded-For")) or None,
            forwarded=", ".join(request.headers.getlist("Forwarded")) or None,
        )
        if clients is not None:
            wait = clients.acquire(client)
            if wait:
                raise ApiError(
                    429,
                    "rate_limited",
                    "too many requests from this client; slow down or configure BOTCORE_API_TOKEN",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        payload = await _read_message(settings)
        key = request.headers.get("Idempotency-Key") or payload.message_id
        if key is not None and len(key) > 255:
            raise ApiError(400, "invalid_request", "an Idempotency-Key is at most 255 characters")
        session_id = payload.session_id or uuid.uuid4().hex
        streaming = payload.stream or "text/event-stream" in request.headers.get("Accept", "")
        responder = StreamingResponder() if streaming else HttpResponder()
        inbound = Inbound(
            channel="http",
            session_id=session_id,
            text=payload.message,
            responder=responder,
            message_id=key,
            sender=client,
        )
        with _refusals():
            await deliver(inbound)
        if isinstance(responder, StreamingResponder):
            stream = Response(
                responder.events(settings.reply_timeout),
                status=200,
                content_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            # The events bound themselves by `reply_timeout`; Quart's RESPONSE_TIMEOUT (60 s)
            # would cut a longer turn off mid-stream, an incomplete body and no `done`.
            stream.timeout = None
            return stream
        with trio.move_on_after(settings.reply_timeout):
            reply = await responder.wait()
            return _json(reply_body(reply), reply_status(reply))
        raise ApiError(
            504,
            "timeout",
            f"no reply within {settings.reply_timeout:g}s; the message is kept and will be "
            "answered, retry with the same Idempotency-Key to get the answer",
        )

    @app.post("/webhooks/<name>")
    async def webhook(name: str) -> Response:
        source = (webhooks or {}).get(name)
        if source is None:
            raise ApiError(404, "not_found", f"no webhook source {name!r} is configured")
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        try:
            delivery = verify(source, dict(request.headers), body, time.time())
        except SignatureError as exc:
            log.warning("webhook %s refused: %s", name, exc)
            raise ApiError(
                401, "invalid_signature", "the webhook signature is missing, wrong or stale"
            ) from None
        try:
            text, session = parse(source, body)
        except InvalidJson as exc:
            raise ApiError(400, "invalid_json", str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        if source.callback is not None and callbacks is not None:
            responder: HttpResponder | CallbackResponder = CallbackResponder(
                callbacks, source, delivery
            )
        else:
            responder = HttpResponder()
        inbound = Inbound("webhook", session, text, responder, message_id=delivery, sender=name)
        with _refusals():
            if replays is None:
                accepted: Accepted | None = await deliver(inbound)
            else:
                accepted = await replays.deliver(source, delivery, body, inbound, deliver)
        if accepted is None or accepted.repeat:
            return _json({"status": "duplicate", "id": delivery}, 200)
        if isinstance(responder, CallbackResponder):
            return _json({"status": "accepted", "id": delivery}, 202)
        with trio.move_on_after(settings.reply_timeout):
            reply = await responder.wait()
            return _json(reply_body(reply), reply_status(reply))
        raise ApiError(504, "timeout", f"no reply within {settings.reply_timeout:g}s")

    def memory_api() -> MemoryEndpoints:
        if memory is None:
            raise ApiError(404, "not_found", "the memory API is not enabled")
        return memory

    @app.post("/api/v1/memory/recall")
    async def memory_recall() -> Response:
        endpoints = memory_api()
        asked = await _read_json(RecallRequest, _strict)
        if not asked.query.strip():
            raise ApiError(400, "invalid_request", "'query' must not be empty")
        if not 1 <= asked.limit <= 100:
            raise ApiError(400, "invalid_request", "'limit' must be between 1 and 100")
        started = time.perf_counter()
        with _invalid():
            results = await endpoints.recall(asked.query, asked.limit, asked.types)
        took = round((time.perf_counter() - started) * 1000, 2)
        return _json({"results": results, "took_ms": took}, 200)

    @app.post("/api/v1/memory/store")
    async def memory_store() -> Response:
        endpoints = memory_api()
        given = await _read_json(StoreRequest, _strict)
        with _invalid():
            memory_id = await endpoints.store(
                given.content, given.type, given.importance, given.metadata
            )
        return _json({"id": memory_id, "success": True}, 200)

    @app.post("/api/v1/memory/consolidate")
    async def memory_consolidate() -> Response:
        return _json(await memory_api().consolidate(), 200)

    @app.get("/api/v1/memory/stats")
    async def memory_stats() -> Response:
        return _json(await memory_api().stats(), 200)

    @app.post("/telegram/webhook")
    async def telegram_update() -> Response:
        if telegram is None:
            raise ApiError(404, "not_found", "the Telegram webhook is not configured")
        given = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(given.encode(), telegram.secret.encode()):
            log.warning("Telegram webhook refused: wrong or missing secret token")
            raise ApiError(401, "unauthorized", "the secret token is missing or wrong")
        update = await _read_body_json()
        if not isinstance(update, dict):
            raise ApiError(
                400, "invalid_request", "the body is not a Telegram update (JSON object)"
            )
        with _refusals():
            await telegram.handle(update)
        return _json({"ok": True}, 200)

    return app


@contextlib.contextmanager
def _invalid() -> Iterator[None]:
    """A `ValueError` from the bot (an unknown memory type...) is the client's 400."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The runtime's refusals (`Busy`, `Unavailable`) as HTTP errors."""
    try:
        yield
    except Busy as exc:
        retry = str(max(1, round(exc.retry_after)))
        raise ApiError(429, "busy", str(exc), {"Retry-After": retry}) from exc
    except Unavailable as exc:
        raise ApiError(503, "unavailable", str(exc), {"Retry-After": "5"}) from exc
    except KeyReused as exc:
        raise ApiError(422, "idempotency_key_reused", str(exc)) from exc


async def _read_json(model: type[T], converter: cattrs.Converter = _converter) -> T:
    """The JSON body as `model`, or a 4xx naming what is wrong (the content type is checked
    for every POST by `refuse_cross_site`)."""
    data = await _read_body_json()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    try:
        return converter.structure(data, model)
    except cattrs.ClassValidationError as exc:
        # "required field missing @ $.message" → "'message': required field missing"
        problems = "; ".join(
            f"'{where}': {what}" if where else what
            for what, _, where in (m.partition(" @ $.") for m in cattrs.transform_error(exc))
        )
        raise ApiError(400, "invalid_request", problems) from None


async def _read_body_json() -> object:
    raw = await request.get_data(as_text=False)
    assert isinstance(raw, bytes)
    try:
        return decode_json(raw)
    except InvalidJson as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None


async def _read_message(settings: HttpSettings) -> MessageRequest:
    payload = await _read_json(MessageRequest, _strict)
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


def _public(path: str) -> bool:
    """Probes, and the webhooks (authenticated by their signatures instead of the token)."""
    return path in ("/healthz", "/readyz", "/telegram/webhook") or path.startswith("/webhooks/")


def _origin_host(origin: str) -> str | None:
    """The host of an `Origin` header; None for `null` or anything unreadable."""
    try:
        return urlsplit(origin).hostname
    except ValueError:
        return None


def _host_name(host: str) -> str:
    """`Host` without its port: `[::1]:3000` → `::1`, `Bot.example:443` → `bot.example`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _json(
    body: Mapping[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json",
    )


def _log_refused(status: int, kind: str, message: str) -> None:
    """One line per refused request, for operators (the client got the same message)."""
    log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "refused %s %s from %s: %d %s: %s",
        request.method,
        request.path,
        request.remote_addr,
        status,
        kind,
        message,
    )


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


async def serve_http(
    app: QuartTrio,
    host: str,
    port: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    *,
    graceful_timeout: float = 0.5,
    keep_alive_timeout: float = 5.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns; reports the bound addresses when ready.

    `graceful_timeout` is short on purpose: the runtime drains its turns before it stops the
    server, so what is left is writing finished responses. Hypercorn otherwise holds idle
    keep-alive connections open for the whole graceful period. `keep_alive_timeout` closes
    a connection that sent no new request for that long (and one that never finishes its
    request headers: slow clients are bounded by it too).
    """
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = keep_alive_timeout
    # Hypercorn's default listen backlog (100) resets connections when a burst of clients
    # connects at once (seen at 1,000 concurrent sessions); the kernel caps it at somaxconn.
    config.backlog = 4096
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)
