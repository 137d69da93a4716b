"""Serving a small ASGI app on 127.0.0.1 for tests (the fakes and the receiver use it)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def serve_local(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI `app` until cancelled; reports its base URL (`http://127.0.0.1:PORT`)."""
    config = HypercornConfig()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    logging.getLogger("hypercorn.error").setLevel(logging.CRITICAL)
    async with trio.open_nursery() as nursery:
        bound: list[str] = await nursery.start(partial(serve, cast(Any, app), config))
        task_status.started(bound[0])


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Complete the ASGI lifespan handshake (startup, then shutdown)."""
    while True:
        event = (await receive())["type"]
        if event == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_json(
    send: Send, status: int, body: Any, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """A whole JSON response (`body` already encoded when it is bytes)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                *((k.encode(), v.encode()) for k, v in headers),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def read_body(receive: Receive) -> bytes:
    """The whole request body."""
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


@asynccontextmanager
async def open_local(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> AsyncIterator[str]:
    """Serve an ASGI `app` on a free port of 127.0.0.1 for the `async with` block; yields its
    base URL. The fake model server and the callback receiver both run this way."""
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve_local, app)
        yield url
        nursery.cancel_scope.cancel()
