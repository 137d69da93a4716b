"""The process: builds a bot's runtime, its model and its channels from configuration, mounts
their routes on the one HTTP server, and owns the one nursery and the shutdown.

Adding a channel is a module in `adapters/` and one row in `CHANNELS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import attrs
import httpx2
import trio

from adapters.admin import memory_routes, probe_routes
from adapters.api import ApiSettings, HttpApiChannel
from adapters.base import Channel, Health, Route
from adapters.http import HttpSettings, allowed_hosts, create_app, serve_http
from adapters.ratelimit import trusted_proxies
from adapters.telegram import TelegramApi, TelegramChannel, TelegramSettings
from adapters.webhook import ReplayGuard, WebhookChannel
from runtime.botcore import Bot, Identity
from runtime.config import Config
from runtime.deliveries import Deliveries
from runtime.inbox import InboxEntry
from runtime.lifecycle import RecoveryResponders, Runtime
from runtime.llm import Provider
from runtime.llm.select import open_model
from runtime.memory_api import MemoryApi

log = logging.getLogger("runtime.host")


@attrs.frozen
class BotParts:
    """What a channel is built from: the bot's settings, its runtime, the host's HTTP client."""

    config: Config
    runtime: Runtime
    http: httpx2.AsyncClient


def _http_api(parts: BotParts) -> Channel:
    config = parts.config
    return HttpApiChannel(
        parts.runtime.deliver,
        ApiSettings(
            max_message_chars=config.max_message_chars,
            reply_timeout=config.turn_timeout_seconds + 30,
            client_rate_per_minute=config.client_rate_per_minute,
            trusted_proxies=trusted_proxies(config.trusted_proxies),
        ),
        rate_limited=config.botcore_api_token is None,
    )


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
    return TelegramChannel(
        TelegramApi(settings, parts.http),
        settings,
        parts.runtime.deliver,
        reset=parts.runtime.reset,
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
            problem = getattr(channel, "problem", lambda: None)()
            if problem is not None:
                return 503, {**body, "status": "unavailable", channel.name: problem}
        return status, body

    return check


def _banner(
    config: Config,
    bot: Bot,
    provider: Provider,
    binds: Sequence[str],
    identity: Identity,
    channels: Sequence[Channel] = (),
) -> None:
    """What runs where, in a few lines an operator can grep: the bot, its model and
    database, the HTTP address and whether it needs a token, the channels that are on."""
    log.info(
        "bot %r (workspace %s), model %s, database %s",
        identity.display_name,
        bot.workspace,
        provider.name,
        config.db_path.resolve(),
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
    auth = "token required" if config.botcore_api_token else "no token required"
    log.info("HTTP API on %s (%s)", ", ".join(binds), auth)
    names = ["http"]
    if config.telegram_bot_token:
        mode = "webhook at /telegram/webhook" if config.telegram_webhook_secret else "polling"
        names.append(f"telegram ({mode})")
    names += [f"webhook {name!r} at /webhooks/{name}" for name in config.webhooks]
    log.info("channels: %s", ", ".join(names))
    if not config.botcore_api_token and config.http_host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "listening on %s without BOTCORE_API_TOKEN: anyone who can reach the port can "
            "talk to the bot and read its memory; set BOTCORE_API_TOKEN",
            config.http_host,
        )


async def serve(
    config: Config,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bot with its channels until `shutdown` is set, then drain and stop.

    Shutdown: intake stops (HTTP answers 503), queued messages stay in the inbox, turns in
    flight get `shutdown_grace_seconds` to finish, then the channels and the HTTP server stop.
    """
    bot = await Bot.open(config.workspace, config.db_path)
    provider = open_model(config)
    try:
        runtime = Runtime(config, bot, provider)
        async with httpx2.AsyncClient() as http, trio.open_nursery() as nursery:
            channels = build_channels(BotParts(config, runtime, http))
            routes: list[Route] = probe_routes(
                _readiness(runtime, channels), runtime.metrics.render
            )
            routes += memory_routes(MemoryApi(bot, runtime.summarize))
            for channel in channels:
                routes += channel.routes()
            app = create_app(
                HttpSettings(
                    api_token=config.botcore_api_token,
                    max_body_bytes=config.max_body_bytes,
                    allowed_hosts=allowed_hosts(config.allowed_hosts, config.http_host),
                    trusted_proxies=trusted_proxies(config.trusted_proxies),
                ),
                routes,
            )
            http_stopped = trio.Event()
            drained = trio.Event()

            async def run_runtime(task_status: trio.TaskStatus[None]) -> None:
                await runtime.run(responders=recovery(channels), task_status=task_status)
                drained.set()

            await nursery.start(run_runtime)
            binds = await nursery.start(
                partial(serve_http, keep_alive_timeout=config.http_keep_alive_seconds),
                app,
                config.http_host,
                config.http_port,
                http_stopped.wait,
            )
            for channel in channels:
                await nursery.start(channel.run)
            _banner(config, bot, provider, binds, await bot.identity.load(), channels)
            task_status.started(binds)
            await shutdown.wait()
            log.info(
                "shutting down: finishing turns in flight (up to %gs)",
                config.shutdown_grace_seconds,
            )
            runtime.close()
            with trio.move_on_after(config.shutdown_grace_seconds) as grace:
                await drained.wait()
            if grace.cancelled_caught:
                log.warning(
                    "turns still running after the grace period are cancelled; they stay in the inbox"
                )
            http_stopped.set()
            for channel in channels:
                channel.close()
            nursery.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_seconds
    finally:
        with trio.CancelScope(shield=True):
            await provider.aclose()
            await bot.aclose()
