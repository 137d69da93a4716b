"""The HTTP server shell: quart-trio served by hypercorn's trio worker, knowing no channel.

It checks what every request shares (the `Host` against DNS rebinding, the bearer token,
cross-site POSTs, the body's size and arrival time) and answers every error as JSON a person
can act on: `{"error": {"type": ..., "message": ...}}` with the matching status. The routes
come from the channels and the admin API (`adapters.base.Route`).
"""

from __future__ import annotations

import hmac
import math
import socket
from collections.abc import Awaitable, Callable, Iterable
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import BadHost, HTTPException

from adapters._web import ApiError, json_response, log_refused
from adapters.base import Route


@attrs.frozen
class HttpSettings:
    api_token: str | None = attrs.field(default=None, repr=False)
    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0
    """A request body must have arrived within this (a slow sender gets 408 and is closed)."""
    allowed_hosts: tuple[str, ...] | None = None
    """The `Host` names (port aside) the API answers, against DNS rebinding; None: any.
    See `allowed_hosts`."""


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
            response = json_response({"error": error}, 400)
        timeout = getattr(response, "timeout", Ellipsis)
        if timeout is Ellipsis:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await self._send_response(send, response)


def create_app(settings: HttpSettings, routes: Iterable[Route]) -> QuartTrio:
    """The server with `routes` mounted; a path mounted twice is a `ValueError`."""
    app = QuartTrio("botcorebot")
    app.asgi_http_class = _HttpConnection
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["BODY_TIMEOUT"] = settings.body_timeout
    public: set[str] = set()
    for route in routes:
        endpoint = f"{route.method} {route.path}"
        if endpoint in app.view_functions:
            raise ValueError(f"two routes for {endpoint}")
        app.add_url_rule(route.path, endpoint, route.handler, methods=[route.method])
        if route.public:
            public.add(endpoint)

    def is_public() -> bool:
        rule = request.url_rule
        return rule is not None and rule.endpoint in public

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        log_refused(error.status, error.kind, str(error))
        return json_response(
            {"error": {"type": error.kind, "message": str(error)}}, error.status, error.headers
        )

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            message = f"request body is larger than {settings.max_body_bytes} bytes"
        else:
            message = error.description or error.name
        log_refused(status, _slug(error.name), message)
        return json_response({"error": {"type": _slug(error.name), "message": message}}, status)

    @app.before_request
    async def check_host() -> None:
        """A DNS-rebinding page reaches us under its own name: answer only ours."""
        if settings.allowed_hosts is None or is_public():
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
        if settings.api_token is None or is_public():
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
        if request.method in ("GET", "HEAD", "OPTIONS") or is_public():
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

    return app


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
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns; reports the bound addresses when ready.

    `graceful_timeout` is short on purpose: the runtime drains its turns before it stops the
    server, so what is left is writing finished responses. Hypercorn otherwise holds idle
    keep-alive connections open for the whole graceful period. `keep_alive_timeout` closes
    a connection that sent no new request for that long (and one that never finishes its
    request headers: slow clients are bounded by it too). With `reuse_port` the socket is
    bound with `SO_REUSEPORT`, so that several processes listen on one port and the kernel
    spreads the connections among them (`botcorebot serve --workers N`).
    """
    config = HypercornConfig()
    if reuse_port:
        # Hypercorn sets SO_REUSEPORT only for its own multi-process mode; it takes a socket
        # of ours as `fd://N` (and owns it from then on).
        config.bind = [f"fd://{reuse_port_socket(host, port).detach()}"]
    else:
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


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host:port` with `SO_REUSEPORT`, as hypercorn binds its own
    (`SO_REUSEADDR`, `TCP_NODELAY`); not yet listening. Raises `OSError` (`EADDRINUSE` when
    a process without `SO_REUSEPORT`, or another user's, holds the port)."""
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
