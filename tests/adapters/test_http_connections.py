"""Connections: every one is closed by the server, and abusive ones stay bounded.

The server runs as a real `botcorebot serve` process whose file-descriptor limit is lowered,
so a leak shows up as what it is in production: new clients that are never answered.
"""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import httpx2
import trio

from adapters import Accepted, Inbound
from adapters.api import ApiSettings, HttpApiChannel
from adapters.http import HttpSettings, create_app, serve_http
from runtime.testing import bot_process, local_config, serve_bot

FD_LIMIT = 512
CLIENTS = 2000
HEALTHZ = {
    "keep-alive, then idle": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "Connection: close": b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    "HTTP/1.0": b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
}


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def _until_closed(url: str, raw: bytes) -> bytes:
    """Send `raw`, then stay connected and idle until the server closes; all it sent."""
    stream = await trio.open_tcp_stream(*_address(url))
    async with stream:
        await stream.send_all(raw)
        received = bytearray()
        while chunk := await stream.receive_some(1 << 16):
            received += chunk
    return bytes(received)


async def test_idle_clients_are_closed_so_new_clients_are_still_answered(
    workspace: Path,
) -> None:
    env = {"HTTP_KEEP_ALIVE_SECONDS": "1"}
    async with bot_process(workspace, env) as bot:
        resource.prlimit(bot.process.pid, resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
        # More clients at once than the server has descriptors: it must close to keep up.
        at_once = trio.CapacityLimiter(2 * FD_LIMIT)
        answers: list[bytes] = []

        async def client(raw: bytes) -> None:
            async with at_once:
                with trio.fail_after(30):
                    answers.append(await _until_closed(bot.url, raw))

        kinds = list(HEALTHZ.values())
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(client, kinds[i % len(kinds)])
        async with httpx2.AsyncClient(timeout=5) as fresh:
            after = await fresh.get(f"{bot.url}/healthz")
    assert len(answers) == CLIENTS
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert after.status_code == 200


async def _response(stream: trio.SocketStream, buffered: bytearray) -> bytes:
    """One whole response (headers and a Content-Length body) from a kept-alive stream."""
    while b"\r\n\r\n" not in buffered:
        buffered += await stream.receive_some(1 << 16)
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
    while len(rest) < length:
        rest += await stream.receive_some(1 << 16)
    buffered[:] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


async def test_a_kept_alive_connection_carries_request_after_request(workspace: Path) -> None:
    message = b'{"message": "hi", "session_id": "s"}'
    post = (
        b"POST /api/message HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(message), message)
    )
    get = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
    async with serve_bot(local_config(workspace)) as bot:
        stream = await trio.open_tcp_stream(*_address(bot.url))
        async with stream:
            buffered = bytearray()
            answers = []
            with trio.fail_after(20):
                for request in (get, post, get, post):
                    await stream.send_all(request)
                    answers.append(await _response(stream, buffered))
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert not any(b"connection: close" in answer.lower() for answer in answers)


async def test_an_answer_given_before_the_body_arrived_says_connection_close(
    workspace: Path,
) -> None:
    """Refused from its headers alone; the body never comes. Without `Connection: close`
    a client would reuse the connection the server is about to close."""
    async with serve_bot(local_config(workspace)) as bot:
        stream = await trio.open_tcp_stream(*_address(bot.url))
        async with stream:
            await stream.send_all(
                b"POST /api/message HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
            )
            received = bytearray()
            with trio.fail_after(10):
                while chunk := await stream.receive_some(1 << 16):
                    received += chunk
    assert received.startswith(b"HTTP/1.1 415")
    assert b"connection: close" in received.lower()


async def test_a_client_that_never_finishes_its_headers_is_disconnected(
    workspace: Path,
) -> None:
    config = local_config(workspace, http_keep_alive_seconds=0.5)
    async with serve_bot(config) as bot:
        stream = await trio.open_tcp_stream(*_address(bot.url))
        async with stream:
            await stream.send_all(b"POST /api/message HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with trio.fail_after(10):
                while await stream.receive_some(1 << 16):
                    pass


async def test_a_body_sent_too_slowly_is_408_and_the_connection_closed() -> None:
    async def deliver(inbound: Inbound) -> Accepted:
        raise AssertionError("a message that never arrived was delivered")

    channel = HttpApiChannel(deliver, ApiSettings(), rate_limited=False)
    app = create_app(HttpSettings(body_timeout=0.5), channel.routes())
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_http, app, "127.0.0.1", 0, stop.wait)
        stream = await trio.open_tcp_stream(*_address(binds[0]))
        async with stream:
            await stream.send_all(
                b"POST /api/message HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"message"'
            )
            received = bytearray()
            with trio.fail_after(10):
                while chunk := await stream.receive_some(1 << 16):
                    received += chunk
        stop.set()
    assert received.startswith(b"HTTP/1.1 408")


async def test_huge_headers_are_refused_with_431_and_the_connection_closed(
    workspace: Path,
) -> None:
    async with serve_bot(local_config(workspace)) as bot:
        stream = await trio.open_tcp_stream(*_address(bot.url))
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            received = bytearray()
            with trio.fail_after(10):
                for _ in range(1000):  # 1 MB of headers, far past the limit
                    try:
                        await stream.send_all(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                    except trio.BrokenResourceError:
                        break
                while chunk := await stream.receive_some(1 << 16):
                    received += chunk
    assert received.startswith(b"HTTP/1.1 431")


async def test_a_never_ending_chunked_body_is_cut_at_the_body_limit(
    workspace: Path,
) -> None:
    config = local_config(workspace, max_body_bytes=4096)
    sent = 0
    received = bytearray()
    async with serve_bot(config) as bot:
        stream = await trio.open_tcp_stream(*_address(bot.url))
        async with stream, trio.open_nursery() as nursery:

            async def send_forever() -> None:
                nonlocal sent
                await stream.send_all(
                    b"POST /api/message HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                chunk = b"a" * 1000
                with contextlib.suppress(trio.BrokenResourceError):
                    while sent < 10_000_000:
                        await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)

            nursery.start_soon(send_forever)
            with trio.fail_after(20), contextlib.suppress(trio.BrokenResourceError):
                while data := await stream.receive_some(1 << 16):
                    received += data
            nursery.cancel_scope.cancel()
    assert sent < 10_000_000
    assert received.startswith(b"HTTP/1.1 413")
    assert b"larger than 4096 bytes" in received
