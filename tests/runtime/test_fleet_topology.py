"""The test balancer that plays the fleet's load balancer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import trio

from runtime.testing import (
    free_port,
    open_balancer,
    open_local,
)
from runtime.testing.local import Receive, Scope, Send, answer_lifespan, read_body, send_json

FLEET = Path(__file__).parents[2] / "examples" / "fleet"
JSON = dict[str, Any]


# -- the test balancer -----------------------------------------------------------------------


class Upstream:
    """An upstream that answers every request with its name (and keeps what it was sent)."""

    def __init__(self, name: str, *, status: int = 200) -> None:
        self.name, self.status = name, status
        self.seen: list[JSON] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = await read_body(receive)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": scope["path"], "body": body, "headers": headers})
        await send_json(send, self.status, {"upstream": self.name})


@asynccontextmanager
async def closing_upstream() -> AsyncIterator[str]:
    """An upstream that reads a request and closes the connection without answering: a
    replica killed with the request in flight."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(5):
                await stream.receive_some(65536)

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def test_the_balancer_takes_turns_and_passes_over_an_upstream_that_is_down() -> None:
    a, b = Upstream("a"), Upstream("b")
    async with open_local(a) as url_a, open_local(b) as url_b:
        down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        async with (
            open_balancer([url_a, down, url_b]) as balancer,
            httpx2.AsyncClient(timeout=10) as client,
        ):
            answers = [
                (await client.post(f"{balancer.url}/api/message?n={n}", json={"n": n})).json()
                for n in range(6)
            ]
            stats = balancer.statistics()
    assert [answer["upstream"] for answer in answers] == ["a", "b", "b", "a", "b", "b"]
    assert stats.answered_by == (2, 0, 4) and stats.next_upstream == 2 and stats.failed == 0
    # The request reaches the upstream as sent, with the client's address appended.
    assert json.loads(a.seen[0]["body"]) == {"n": 0}
    assert a.seen[0]["headers"]["x-forwarded-for"] == "127.0.0.1"


async def test_a_503_goes_to_the_next_upstream_and_the_last_ones_answer_is_passed_on() -> None:
    busy, ok = Upstream("busy", status=503), Upstream("ok")
    async with open_local(busy) as url_busy, open_local(ok) as url_ok:
        async with (
            open_balancer([url_busy, url_ok]) as balancer,
            httpx2.AsyncClient(timeout=10) as client,
        ):
            moved = await client.get(f"{balancer.url}/readyz")
        async with (
            open_balancer([url_busy, url_busy]) as balancer,
            httpx2.AsyncClient(timeout=10) as client,
        ):
            passed = await client.get(f"{balancer.url}/readyz")
    assert moved.status_code == 200 and moved.json()["upstream"] == "ok"
    assert passed.status_code == 503 and passed.json()["upstream"] == "busy"


async def test_a_post_cut_off_by_its_upstream_is_sent_on_only_with_an_idempotency_key() -> None:
    ok = Upstream("ok")
    async with closing_upstream() as dying, open_local(ok) as url_ok:

        async def post(headers: dict[str, str]) -> tuple[httpx2.Response, int]:
            async with (
                open_balancer([dying, url_ok]) as balancer,
                httpx2.AsyncClient(timeout=10) as client,
            ):
                response = await client.post(
                    f"{balancer.url}/api/message", json={}, headers=headers
                )
                return response, balancer.statistics().failed

        keyed, keyed_failed = await post({"Idempotency-Key": "k1"})
        keyless, keyless_failed = await post({})
    assert keyed.status_code == 200 and keyed.json()["upstream"] == "ok" and keyed_failed == 0
    assert [seen["headers"]["idempotency-key"] for seen in ok.seen] == ["k1"]
    # The dying upstream may have stored it: without a key, sending it on could answer twice.
    assert keyless.status_code == 502 and keyless_failed == 1 and len(ok.seen) == 1
