"""A local HTTP endpoint that records what is POSTed to it (webhook callbacks, for instance)."""

from __future__ import annotations

import attrs
import trio

from runtime.testing.local import (
    Receive,
    Scope,
    Send,
    answer_lifespan,
    read_body,
)


@attrs.frozen
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Records each request; the first `failures` get a 503, to exercise retries. Each
    answer takes `delay` seconds; `peak` is the most requests it had under way at once."""

    def __init__(self, *, failures: int = 0, delay: float = 0.0) -> None:
        self.received: list[Received] = []
        self.failures = failures
        self.delay = delay
        self.under_way = 0
        self.peak = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        self.under_way += 1
        self.peak = max(self.peak, self.under_way)
        try:
            await trio.sleep(self.delay)
        finally:
            self.under_way -= 1
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.received.append(Received(scope["path"], headers, body))
        status = 503 if self.failures > 0 else 200
        self.failures -= 1
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
