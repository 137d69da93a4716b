"""The process: builds a bot's runtime, its model and its channels from configuration, mounts
their routes on the one HTTP server, and owns the one nursery and the shutdown.

Adding a channel is a module in `adapters/` and one row in `CHANNELS`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx2
import trio

from adapters.admin import memory_routes, probe_routes
from adapters.api import Answered, AnswerPage, Answers, ApiSettings, HttpApiChannel, Source
from adapters.base import Channel, Health, Route
from adapters.http import HttpSettings, allowed_hosts, create_app, serve_http
from adapters.openai_api import ChatBot, OpenAIChatChannel
from adapters.ratelimit import trusted_proxies
from adapters.telegram import TelegramApi, TelegramChannel, TelegramSettings
from adapters.webhook import ReplayGuard, WebhookChannel
from runtime.botcore import Bot, Identity
from runtime.config import BotSettings, Config, ConfigError, ProcessSettings, load_process
from runtime.deliveries import Deliveries
from runtime.inbox import InboxEntry
from runtime.leases import Leadership
from runtime.lifecycle import RecoveryResponders, Runtime
from runtime.llm import Provider
from runtime.llm.select import open_model
from runtime.memory_api import MemoryApi
from runtime.metrics import render_all
from runtime.schedules import HEARTBEAT_KEY, SCHEDULE_KEY, is_silent

log = logging.getLogger("runtime.host")


@attrs.frozen
class BotParts:
    """What a channel is built from: the bot's settings and the process's, its runtime, the
    host's HTTP client."""

    config: BotSettings
    process: ProcessSettings
    runtime: Runtime
    http: httpx2.AsyncClient


def _http_api(parts: BotParts) -> Channel:
    config, process = parts.config, parts.process
    return HttpApiChannel(
        parts.runtime.deliver,
        ApiSettings(
            max_message_chars=config.max_message_chars,
            reply_timeout=config.turn_timeout_seconds + 30,
            client_rate_per_minute=process.client_rate_per_minute,
            trusted_proxies=trusted_proxies(process.trusted_proxies),
        ),
        rate_limited=process.botcore_api_token is None,
        answers=_answers(parts.runtime, "http"),
    )


def _answers(runtime: Runtime, channel: str) -> Answers:
    """A session's answered messages from the inbox, for a client that polls; a heartbeat
    with nothing to say is left out (as it is sent nowhere else)."""

    async def page(session_id: str, after: int, limit: int) -> AnswerPage:
        rows, waiting = await runtime.inbox.answered(channel, session_id, after, limit)
        messages = []
        for entry, answered_at in rows:
            key = entry.message_id or ""
            source: Source = (
                "schedule"
                if key.startswith(SCHEDULE_KEY)
                else "heartbeat"
                if key.startswith(HEARTBEAT_KEY)
                else "client"
            )
            assert entry.reply is not None  # answered rows hold their reply
            if (
                source == "heartbeat"
                and entry.reply.error is None
                and is_silent(entry.reply.message)
            ):
                continue  # nothing to say
            messages.append(Answered(entry.id, entry.text, source, entry.reply, answered_at))
        next_after = rows[-1][0].id if rows else after
        return AnswerPage(tuple(messages), next_after, waiting)

    return page


def _telegram(parts: BotParts) -> Channel | None:
    config = parts.config
    if not config.telegram_bot_token:
        return None
    settings = TelegramSettings(
        token=config.telegram_bot_token,
        api_base_url=config.telegram_api_base_url,
        poll_timeout=config.telegram_poll_timeout,
        allowed_users=TelegramSettings.parse_users(config.telegram_allowed_users),
        non_text="ignore" if config.telegram_non_text == "ignore" else "reply",
        webhook_secret=config.telegram_webhook_secret,
    )
    leases = parts.runtime.leases
    lead = None
    if leases is not None and settings.webhook_secret is None:
        # Replicas share the token: one polls at a time (Telegram answers two with 409).
        token = hashlib.sha256(settings.token.encode()).hexdigest()[:16]
        lead = Leadership(leases, f"poller:telegram:{token}")
    return TelegramChannel(
        TelegramApi(settings, parts.http),
        settings,
        parts.runtime.deliver,
        reset=parts.runtime.reset,
        lead=lead,
    )


def _webhooks(parts: BotParts) -> Channel | None:
    if not parts.config.webhooks:
        return None
    return WebhookChannel(
        parts.runtime.deliver,
        parts.config.webhooks,
        ReplayGuard(Deliveries(parts.runtime.bot.db)),
        reply_timeout=parts.config.turn_timeout_seconds + 30,
    )


CHANNELS: Sequence[tuple[str, Callable[[BotParts], Channel | None]]] = (
    ("http", _http_api),
    ("telegram", _telegram),
    ("webhook", _webhooks),
)
"""Every channel a bot can have, by name: its builder returns None when it is not configured."""


def _openai_chat(bots: Mapping[str, Runtime], process: ProcessSettings) -> Channel | None:
    return OpenAIChatChannel(
        {
            name: ChatBot(
                runtime.deliver,
                reply_timeout=runtime.config.turn_timeout_seconds + 30,
                max_message_chars=runtime.config.max_message_chars,
            )
            for name, runtime in bots.items()
        },
        client_rate_per_minute=(
            process.client_rate_per_minute if process.botcore_api_token is None else 0.0
        ),
        trusted_proxies=trusted_proxies(process.trusted_proxies),
    )


HOST_CHANNELS: Sequence[
    tuple[str, Callable[[Mapping[str, Runtime], ProcessSettings], Channel | None]]
] = (("openai", _openai_chat),)
"""Channels of the whole host, reaching every bot by name (at the root of the HTTP server)."""


def build_channels(parts: BotParts) -> list[Channel]:
    return [channel for _, build in CHANNELS if (channel := build(parts)) is not None]


def recovery(channels: Sequence[Channel]) -> RecoveryResponders:
    """Each channel rebuilds the responders of the messages it took before a restart."""

    def responder_of(channel: Channel) -> Callable[[InboxEntry], Any]:
        return lambda entry: channel.recovered(entry.session_id, entry.address)

    return {channel.name: responder_of(channel) for channel in channels}


def _readiness(runtime: Runtime, channels: Sequence[Channel]) -> Health:
    """Readiness includes the channels: one whose calls keep failing is not ready."""

    async def check() -> tuple[int, dict[str, Any]]:
        status, body = await runtime.health()
        for channel in channels:
            problem = channel.problem()
            if problem is not None:
                return 503, {**body, "status": "unavailable", channel.name: problem}
        return status, body

    return check


def _banner(
    hosted: _Hosted,
    process: ProcessSettings,
    binds: Sequence[str],
    identity: Identity,
    *,
    prefixed: bool = False,
) -> None:
    """What runs where, in a few lines an operator can grep: the bot, its model and
    database, the HTTP address and whether it needs a token, the channels that are on."""
    config, bot, provider = hosted.settings, hosted.bot, hosted.provider
    at = f"/bots/{hosted.name}" if prefixed else ""
    log.info(
        "bot %r (workspace %s), model %s, database %s",
        identity.display_name,
        bot.workspace,
        provider.name,
        config.database_name,
    )
    if not (bot.workspace / "IDENTITY.md").exists():
        log.warning(
            "%s has no IDENTITY.md, so the bot has no name; 'botcorebot init %s' writes one",
            bot.workspace,
            bot.workspace,
        )
    if provider.name == "offline" and not (config.anthropic_api_key or config.openai_api_key):
        log.warning(
            "no API key configured: running on the embedded offline model "
            "(set ANTHROPIC_API_KEY or OPENAI_API_KEY for a real one)"
        )
    auth = "token required" if process.botcore_api_token else "no token required"
    log.info("HTTP API on %s%s (%s)", ", ".join(binds), at, auth)
    names = ["http"]
    if config.telegram_bot_token:
        mode = f"webhook at {at}/telegram/webhook" if config.telegram_webhook_secret else "polling"
        names.append(f"telegram ({mode})")
    names += [f"webhook {name!r} at {at}/webhooks/{name}" for name in config.webhooks]
    log.info("channels: %s", ", ".join(names))


def _warn_unprotected(process: ProcessSettings) -> None:
    if not process.botcore_api_token and process.http_host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "listening on %s without BOTCORE_API_TOKEN: anyone who can reach the port can "
            "talk to the bot and read its memory; set BOTCORE_API_TOKEN",
            process.http_host,
        )


@attrs.frozen
class HostConfig:
    """What one process serves: the process's settings once, and its bots by name (in
    order). One bot's `Config` is a host of one (`single`)."""

    process: ProcessSettings
    bots: dict[str, BotSettings]

    @classmethod
    def single(cls, config: Config) -> HostConfig:
        return cls(config.process, {bot_name(config.workspace): config})

    @property
    def secrets(self) -> tuple[str | None, ...]:
        return (*self.process.secrets, *(s for bot in self.bots.values() for s in bot.secrets))

    def check(self) -> None:
        """Two bots must not share what only one can use: a database, a Telegram token."""
        for what, key in (
            ("database", lambda bot: str(bot.database_url or bot.db_path.resolve())),
            ("Telegram bot token", lambda bot: bot.telegram_bot_token),
        ):
            seen: dict[object, str] = {}
            for name, bot in self.bots.items():
                value = key(bot)
                if value is None:
                    continue
                if value in seen:
                    raise ConfigError(f"bots {seen[value]!r} and {name!r} have the same {what}")
                seen[value] = name


_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def bot_name(workspace: Path) -> str:
    """A bot's name in routes and metrics, from its folder: `Alice Bot` → `alice-bot`."""
    name = re.sub(r"[^a-z0-9_-]+", "-", workspace.resolve().name.lower()).strip("-_")
    return name[:63] or "bot"


def load_host(
    environ: Mapping[str, str],
    *,
    workspaces: Sequence[Path] = (),
    file: Path | None = None,
) -> HostConfig:
    """The bots of `file` (`[bots.NAME]` tables, each with its `workspace` and any bot
    setting, over that workspace's botcore.toml and the environment; the file's top level
    holds process settings) and of `workspaces` (each as it configures itself). Process
    settings come from the file, else the first workspace, and the environment."""
    bots: dict[str, BotSettings] = {}
    process: ProcessSettings | None = None
    if file is not None:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        tables = data.pop("bots", {})
        if not isinstance(tables, dict) or not tables:
            raise ConfigError(f"{file}: no [bots.NAME] table; each bot needs one")
        bot_fields = {field.name for field in attrs.fields(BotSettings)}
        misplaced = sorted(set(data) & bot_fields)
        if misplaced:
            raise ConfigError(
                f"{file}: {', '.join(misplaced)} belong under a [bots.NAME] table (per bot)"
            )
        process = load_process(data, environ, file)
        for name, table in tables.items():
            if not isinstance(table, dict) or "workspace" not in table:
                raise ConfigError(f'{file}: [bots.{name}] needs workspace = "DIR"')
            if not _NAME.fullmatch(name):
                raise ConfigError(
                    f"{file}: bot name {name!r} must be 1-63 of a-z, 0-9, _ and -, first a-z or 0-9"
                )
            table = dict(table)
            workspace = file.parent / Path(str(table.pop("workspace"))).expanduser()
            bots[name] = Config.load(environ, workspace=workspace, overrides=table).bot
    for workspace in workspaces:
        config = Config.load(environ, workspace=workspace)
        process = process or config.process
        name = bot_name(workspace)
        if name in bots:
            raise ConfigError(f"two bots are named {name!r} (from their folders); rename one")
        bots[name] = config.bot
    if process is None:
        raise ConfigError("no bot to serve: give --workspace DIR or a host file")
    host = HostConfig(process, bots)
    host.check()
    return host


@attrs.define
class _Hosted:
    """One bot the host runs."""

    name: str
    settings: BotSettings
    bot: Bot
    provider: Provider
    runtime: Runtime
    channels: list[Channel] = attrs.field(factory=list)
    shared: list[Channel] = attrs.field(factory=list)
    """The host's channels, which reach this bot too (for its recovery)."""
    drained: trio.Event = attrs.field(factory=trio.Event)

    def routes(self) -> list[Route]:
        routes = memory_routes(MemoryApi(self.bot, self.runtime.summarize))
        for channel in self.channels:
            routes += channel.routes()
        return routes


def _host_readiness(hosted: Sequence[_Hosted]) -> Health:
    """One bot: its readiness. Several: ready when every bot is, each bot's under `bots`."""
    checks = {each.name: _readiness(each.runtime, each.channels) for each in hosted}
    if len(checks) == 1:
        (only,) = checks.values()
        return only

    async def check() -> tuple[int, dict[str, Any]]:
        bodies: dict[str, Any] = {}
        status = 200
        for name, ready in checks.items():
            code, bodies[name] = await ready()
            status = max(status, code)
        return status, {"status": "ok" if status == 200 else "unavailable", "bots": bodies}

    return check


async def serve(
    config: Config | HostConfig,
    shutdown: trio.Event,
    *,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bots with their channels until `shutdown` is set, then drain and stop.

    Each bot has its own runtime, database, model and channels: one bot's crash, full
    mailbox or broken model never touches another. Routes of a bot are under
    `/bots/<name>/`; with one bot, also at the root (`/api/message`) as always.

    Shutdown: intake stops (HTTP answers 503), queued messages stay in the inbox, turns in
    flight get `shutdown_grace_seconds` to finish, then the channels and the HTTP server stop.

    `reuse_port`: the HTTP socket is bound with `SO_REUSEPORT`, shared with the other workers
    of `serve --workers N` (`runtime.workers`).
    """
    host = config if isinstance(config, HostConfig) else HostConfig.single(config)
    process = host.process
    async with AsyncExitStack() as opened:
        hosted: list[_Hosted] = []
        for name, settings in host.bots.items():
            bot = await Bot.open(settings.workspace, settings.database)
            opened.push_async_callback(_shielded, bot.aclose)
            provider = open_model(settings)
            opened.push_async_callback(_shielded, provider.aclose)
            hosted.append(
                _Hosted(
                    name,
                    settings,
                    bot,
                    provider,
                    Runtime(settings, bot, provider, secrets=process.secrets),
                )
            )
        async with httpx2.AsyncClient() as http, trio.open_nursery() as nursery:
            for each in hosted:
                each.channels = build_channels(BotParts(each.settings, process, each.runtime, http))
            runtimes = {each.name: each.runtime for each in hosted}
            shared = [
                channel
                for _, build in HOST_CHANNELS
                if (channel := build(runtimes, process)) is not None
            ]
            for each in hosted:
                each.shared = shared
            routes: list[Route] = probe_routes(
                _host_readiness(hosted),
                lambda: render_all(
                    [each.runtime.metrics for each in hosted],
                    # One bot: as always, unlabelled; several: each sample names its bot.
                    [(("bot", each.name),) if len(hosted) > 1 else () for each in hosted],
                ),
            )
            for channel in shared:
                routes += channel.routes()
            for each in hosted:
                mine = each.routes()
                routes += [route.under(f"/bots/{each.name}") for route in mine]
                if len(hosted) == 1:
                    routes += mine
            app = create_app(
                HttpSettings(
                    api_token=process.botcore_api_token,
                    max_body_bytes=process.max_body_bytes,
                    allowed_hosts=allowed_hosts(process.allowed_hosts, process.http_host),
                ),
                routes,
            )
            http_stopped = trio.Event()
            for each in hosted:
                await nursery.start(_run_runtime, each)
            binds = await nursery.start(
                partial(
                    serve_http,
                    keep_alive_timeout=process.http_keep_alive_seconds,
                    reuse_port=reuse_port,
                ),
                app,
                process.http_host,
                process.http_port,
                http_stopped.wait,
            )
            for channel in [*shared, *(c for each in hosted for c in each.channels)]:
                await nursery.start(channel.run)
            for each in hosted:
                identity = await each.bot.identity.load()
                _banner(each, process, binds, identity, prefixed=len(hosted) > 1)
            if shared:
                log.info(
                    "host channels: %s; OpenAI-compatible chat API at /v1/chat/completions"
                    " (model: %s)",
                    ", ".join(channel.name for channel in shared),
                    ", ".join(repr(each.name) for each in hosted),
                )
            _warn_unprotected(process)
            task_status.started(binds)
            await shutdown.wait()
            log.info(
                "shutting down: finishing turns in flight (up to %gs)",
                process.shutdown_grace_seconds,
            )
            for each in hosted:
                each.runtime.close()
            with trio.move_on_after(process.shutdown_grace_seconds) as grace:
                for each in hosted:
                    await each.drained.wait()
            if grace.cancelled_caught:
                log.warning(
                    "turns still running after the grace period are cancelled; they stay in the inbox"
                )
            http_stopped.set()
            for channel in [*shared, *(c for each in hosted for c in each.channels)]:
                channel.close()
            nursery.cancel_scope.deadline = trio.current_time() + process.shutdown_grace_seconds


async def _run_runtime(hosted: _Hosted, task_status: trio.TaskStatus[None]) -> None:
    channels = [*hosted.channels, *hosted.shared]
    await hosted.runtime.run(responders=recovery(channels), task_status=task_status)
    hosted.drained.set()


async def _shielded(close: Callable[[], Awaitable[None]]) -> None:
    with trio.CancelScope(shield=True):
        await close()
