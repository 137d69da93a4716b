"""A round-robin HTTP load balancer for tests, on 127.0.0.1: what nginx does in front of the
fleet of `examples/fleet/` (its `nginx.conf`), small enough to read.

Each request goes to the next upstream in turn. If that upstream cannot be reached, fails
before its response headers arrive (it died with the request in flight), times out, or
answers 502 or 503, the same request goes to the next upstream, at most once to each: nginx's
`proxy_next_upstream error timeout http_502 http_503 non_idempotent`. A POST without an
`Idempotency-Key` is sent on only when the upstream never got it (its connection was
refused), as the fleet's nginx.conf does. When the last one fails too, the client gets its
502/503, or a 502 of our own if none answered. Once an upstream's
response has begun it is passed on as it comes (Server-Sent Events too) and never retried: a
failure after that cuts the client's connection, as it does behind nginx.

Sending a POST again that an upstream may already have acted on is safe only because the
clients send an `Idempotency-Key`: the next replica finds the key's message in the shared
inbox and answers with that message's answer instead of taking it a second time.

    python -m runtime.testing.balancer --port 8080 http://127.0.0.1:3001 http://127.0.0.1:3002
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import attrs
import httpx2
import trio

from runtime.testing.local import Receive, Scope, Send, answer_lifespan, send_json, serve_local

RETRIED_STATUSES = frozenset({502, 503})
"""Answers that send the request on to the next upstream (nginx's `http_502 http_503`)."""

NON_IDEMPOTENT = frozenset({"POST", "PATCH", "LOCK"})
"""Methods whose request, once an upstream got it, is sent on only with an Idempotency-Key
(nginx needs `non_idempotent` for them; examples/fleet/nginx.conf adds the key rule)."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers of one connection, not passed on (RFC 9110 7.6.1)."""


class BodyTooLarge(Exception):
    """The client's body is over the balancer's `max_body` (nginx's client_max_body_size)."""


@attrs.frozen
class BalancerStatistics:
    requests: int
    """Requests taken from clients."""
    next_upstream: int
    """Times a request was sent on to the next upstream after one failed it."""
    failed: int
    """Requests that no upstream answered (the client got the balancer's own 502)."""
    cut: int
    """Responses an upstream stopped sending once they had begun (the client's connection
    was cut)."""
    answered_by: tuple[int, ...]
    """Responses passed on, per upstream, in the order of `upstreams`."""


class Balancer:
    """An ASGI app that forwards every request to `upstreams` (base URLs), round robin, with
    at most `concurrency` requests under way (the others wait their turn)."""

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        concurrency: int = 256,
        max_body: int = 1 << 20,
        connect_timeout: float = 2.0,
        read_timeout: float = 180.0,
    ) -> None:
        if not upstreams:
            raise ValueError("a balancer needs at least one upstream")
        self.upstreams = tuple(url.rstrip("/") for url in upstreams)
        self.max_body = max_body
        self._concurrency = concurrency
        self._limiter = trio.CapacityLimiter(concurrency)
        self._timeout = httpx2.Timeout(read_timeout, connect=connect_timeout)
        self._client: httpx2.AsyncClient | None = None
        self._url: str | None = None
        self._turn = 0
        self._requests = self._next_upstream = self._failed = self._cut = 0
        self._answered = [0] * len(self.upstreams)

    @property
    def url(self) -> str:
        """Where clients reach the balancer (while `run` serves)."""
        if self._url is None:
            raise RuntimeError("the balancer is not serving; start its `run` first")
        return self._url

    def statistics(self) -> BalancerStatistics:
        return BalancerStatistics(
            self._requests, self._next_upstream, self._failed, self._cut, tuple(self._answered)
        )

    async def run(
        self, port: int = 0, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on `port` of 127.0.0.1 (0: a free one) until cancelled; reports its URL."""
        limits = httpx2.Limits(
            max_connections=self._concurrency,
            max_keepalive_connections=32,
            # Below the upstreams' own idle timeout (HTTP_KEEP_ALIVE_SECONDS, 5 s), so a
            # connection is rarely reused just as the upstream closes it.
            keepalive_expiry=2.0,
        )
        async with httpx2.AsyncClient(timeout=self._timeout, limits=limits) as client:
            self._client = client
            try:
                async with trio.open_nursery() as nursery:
                    self._url = await nursery.start(partial(serve_local, self, port=port))
                    task_status.started(self._url)
            finally:
                self._client = self._url = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._requests += 1
        async with self._limiter:
            await self._forward(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._client is not None
        try:
            body = await self._read_body(receive)
        except BodyTooLarge:
            await send_json(send, 413, _error("body_too_large", "the body is over the limit"))
            return
        target = scope["raw_path"].decode("latin-1") or scope["path"]
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        headers = _request_headers(scope)
        resend = scope["method"] not in NON_IDEMPOTENT or any(
            name.lower() == b"idempotency-key" for name, _ in scope["headers"]
        )
        first = self._turn
        self._turn = (self._turn + 1) % len(self.upstreams)
        for attempt in range(len(self.upstreams)):
            index = (first + attempt) % len(self.upstreams)
            last = attempt == len(self.upstreams) - 1
            if attempt:
                self._next_upstream += 1
            request = self._client.build_request(
                scope["method"], self.upstreams[index] + target, headers=headers, content=body
            )
            try:
                response = await self._client.send(request, stream=True)
            except (httpx2.ConnectError, httpx2.ConnectTimeout):
                continue  # the upstream never got the request: the next one may take it
            except httpx2.TransportError:
                if not resend:
                    break
                continue  # reset, closed before answering, or timed out
            try:
                if response.status_code in RETRIED_STATUSES and resend and not last:
                    continue
                self._answered[index] += 1
                await self._relay(response, send)
                return
            finally:
                await response.aclose()
        self._failed += 1
        await send_json(send, 502, _error("bad_gateway", "no upstream answered the request"))

    async def _relay(self, response: httpx2.Response, send: Send) -> None:
        """Pass the response on as it comes; an upstream that stops mid-way cuts the client's
        connection (the error leaves the app, and the server drops the connection)."""
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.headers.multi_items()
                    if name.lower() not in HOP_BY_HOP
                ],
            }
        )
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx2.TransportError:
            self._cut += 1
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _read_body(self, receive: Receive) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > self.max_body:
                raise BodyTooLarge
            if not message.get("more_body"):
                return bytes(body)


def _request_headers(scope: Scope) -> list[tuple[str, str]]:
    """The client's headers less hop-by-hop ones (and the length, which the body sets), with
    the client's address appended to X-Forwarded-For, as nginx's $proxy_add_x_forwarded_for."""
    headers = []
    forwarded = []
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name == "x-forwarded-for":
            forwarded.append(value)
        elif name not in HOP_BY_HOP and name != "content-length":
            headers.append((name, value))
    client = scope.get("client")
    forwarded.append(client[0] if client else "127.0.0.1")
    headers.append(("x-forwarded-for", ", ".join(forwarded)))
    return headers


def _error(kind: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"type": kind, "message": message}}


@asynccontextmanager
async def open_balancer(
    upstreams: Sequence[str], *, concurrency: int = 256, read_timeout: float = 180.0
) -> AsyncIterator[Balancer]:
    """A `Balancer` over `upstreams` serving on a free port of 127.0.0.1 for the `async with`
    block (its `url`); stopped on the way out."""
    balancer = Balancer(upstreams, concurrency=concurrency, read_timeout=read_timeout)
    async with trio.open_nursery() as nursery:
        await nursery.start(balancer.run)
        yield balancer
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="A round-robin HTTP load balancer on 127.0.0.1 that retries the next"
        " upstream like nginx's proxy_next_upstream (for trying a fleet locally)."
    )
    parser.add_argument("--port", type=int, default=8080, help="on 127.0.0.1 (default 8080)")
    parser.add_argument("upstreams", nargs="+", help="base URLs, e.g. http://127.0.0.1:3001")
    args = parser.parse_args()

    async def serve() -> None:
        balancer = Balancer(args.upstreams)
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(balancer.run, args.port))
            print(f"balancing {', '.join(balancer.upstreams)} at {url}", flush=True)

    trio.run(serve)


if __name__ == "__main__":
    main()
