"""Streamed replies (Server-Sent Events) against the HTTP server's own limits."""

from __future__ import annotations

import httpx2
import trio

from adapters import Accepted, Inbound, Reply
from adapters.api import ApiSettings, HttpApiChannel
from adapters.http import HttpSettings, create_app, serve_http


async def test_a_stream_longer_than_quarts_response_timeout_is_not_cut(
    client: httpx2.AsyncClient,
) -> None:
    async with trio.open_nursery() as nursery:

        async def deliver(inbound: Inbound) -> Accepted:
            async def answer_later() -> None:
                await trio.sleep(1.5)
                inbound.responder.reply(Reply("a slow answer", inbound.session_id, "t-1"))

            nursery.start_soon(answer_later)
            return Accepted(1)

        channel = HttpApiChannel(deliver, ApiSettings(reply_timeout=30), rate_limited=False)
        app = create_app(HttpSettings(), channel.routes())
        app.config["RESPONSE_TIMEOUT"] = 1  # Quart's default is 60 s; a long turn is longer
        stop = trio.Event()
        binds = await nursery.start(serve_http, app, "127.0.0.1", 0, stop.wait)
        response = await client.post(
            f"{binds[0]}/api/message", json={"message": "take your time", "stream": True}
        )
        stop.set()
    assert response.status_code == 200
    assert response.text.startswith("event: done\n")
    assert "a slow answer" in response.text
