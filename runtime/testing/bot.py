"""Run a whole bot (runtime + HTTP channel) on a free port of 127.0.0.1, for tests and demos."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import RestartPolicy
from runtime.botcore import Bot
from runtime.config import Config
from runtime.host import HostConfig, serve
from runtime.lifecycle import Runtime
from runtime.llm import ModelRequest, ModelResponse, OnText, Provider, UserText
from runtime.llm.offline import OfflineModel


def make_workspace(directory: Path, identity: str = "- **Name:** TestBot\n") -> Path:
    """A workspace with an IDENTITY.md naming the bot (TestBot unless told)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "IDENTITY.md").write_text(identity, encoding="utf-8")
    return directory


def local_config(workspace: Path, **settings: Any) -> Config:
    """A config for a bot on 127.0.0.1 and a free port, with no keys unless given."""
    return attrs.evolve(
        Config(workspace=workspace, http_port=0, shutdown_grace_seconds=5), **settings
    )


@attrs.frozen
class RunningBot:
    url: str
    shutdown: trio.Event


@asynccontextmanager
async def serve_bot(config: Config | HostConfig) -> AsyncIterator[RunningBot]:
    """Serve the bot (or the bots of a host) for the `async with` block, then shut it down
    as SIGTERM would."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve, config, shutdown)
        yield RunningBot(binds[0], shutdown)
        shutdown.set()


@asynccontextmanager
async def open_runtime(
    config: Config, provider: Provider | None = None, *, policy: RestartPolicy | None = None
) -> AsyncIterator[Runtime]:
    """A runtime without any channel, for driving `deliver` directly; closed afterwards."""
    async with await Bot.open(config.workspace, config.database) as bot:
        runtime = Runtime(config, bot, provider or OfflineModel(), policy=policy or RestartPolicy())
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            yield runtime
            runtime.close()


class CrashOn:
    """Fault injection: wraps a provider and raises a plain `RuntimeError` (a bug, not a
    provider error) for messages containing `trigger`, so their session actor crashes;
    only the first `times` of them when given."""

    def __init__(self, inner: Provider, trigger: str, *, times: int | None = None) -> None:
        self._inner = inner
        self._trigger = trigger
        self._times = times
        self.crashes = 0

    @property
    def name(self) -> str:
        return self._inner.name

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse:
        last = request.messages[-1]
        more = self._times is None or self.crashes < self._times
        if isinstance(last, UserText) and self._trigger in last.text and more:
            self.crashes += 1
            raise RuntimeError(f"injected crash #{self.crashes}")
        return await self._inner.complete(request, on_text=on_text)

    async def reachable(self) -> str | None:
        return await self._inner.reachable()

    async def aclose(self) -> None:
        await self._inner.aclose()
