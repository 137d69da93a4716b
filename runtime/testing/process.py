"""Run `botcorebot serve` as a real process, the way a user starts it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx2
import trio


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@attrs.define
class BotProcess:
    process: trio.Process
    url: str
    stderr: bytearray

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.process.kill()

    async def wait(self) -> int:
        with trio.fail_after(30):
            return await self.process.wait()

    @property
    def log(self) -> str:
        return self.stderr.decode(errors="replace")

    async def wait_for_log(
        self, pattern: str, *, within: float = 30.0, after: int = 0
    ) -> re.Match[str]:
        """The first match of `pattern` in the log from character `after` on, once it is
        there; `trio.TooSlowError` after `within` seconds."""
        with trio.fail_after(within):
            while (found := re.compile(pattern).search(self.log, after)) is None:  # noqa: ASYNC110
                await trio.sleep(0.05)
        return found


_KEYS = (
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "DEFAULT_MODEL",
    "TELEGRAM_BOT_TOKEN",
    "BOTCORE_API_TOKEN",
)


@asynccontextmanager
async def bot_process(
    workspace: Path,
    env: Mapping[str, str] | None = None,
    *,
    ready_within: float = 20.0,
    args: Sequence[str] = (),
) -> AsyncIterator[BotProcess]:
    """Start `python -m runtime serve [args]` for `workspace` on a free port; yields once
    /healthz answers. The process is killed on the way out if it is still running."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in _KEYS}
    environ |= {"BOTCORE_WORKSPACE": str(workspace), "HTTP_PORT": str(port), **(env or {})}
    stderr = bytearray()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "runtime", "serve", *args],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                assert process.stderr is not None
                async for chunk in process.stderr:
                    stderr.extend(chunk)

            nursery.start_soon(collect)
            running = BotProcess(process, url, stderr)
            await _wait_ready(running, ready_within)
            try:
                yield running
            except BaseException:
                # What the server said, beside the test's failure (pytest shows it).
                print(running.log[-20_000:], file=sys.stderr)
                raise
            if process.returncode is None:
                process.kill()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()


async def _wait_ready(bot: BotProcess, within: float) -> None:
    async with httpx2.AsyncClient(timeout=1) as client:
        with trio.fail_after(within):
            while True:
                if bot.process.returncode is not None:
                    raise RuntimeError(
                        f"botcorebot exited with {bot.process.returncode}: {bot.log}"
                    )
                try:
                    if (await client.get(f"{bot.url}/healthz")).status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                await trio.sleep(0.05)
