"""The one place that wires the bot together and starts its nursery."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import httpx2
import trio

from actors import ActorCrashed, ActorStopped, MailboxFull, Registry, RestartPolicy
from adapters import Accepted, Busy, Inbound, Progress, Reply, ReplyError, Responder, Unavailable
from adapters.http import HttpSettings, create_app, serve_http
from adapters.ratelimit import RateLimiter
from adapters.telegram import (
    TelegramApi,
    TelegramChannel,
    TelegramPoller,
    TelegramSettings,
    TelegramWebhook,
)
from adapters.webhook import CallbackSender, WebhookSource
from runtime.botcore import Bot, Summarize, consolidate
from runtime.config import Config
from runtime.inbox import Inbox, InboxEntry
from runtime.llm import ModelRequest, Provider, UserText
from runtime.llm.fallback import FallbackProvider
from runtime.llm.select import choose_models, open_provider
from runtime.memory_api import MemoryApi
from runtime.metrics import Metrics
from runtime.session import Job, SessionActor, SessionServices, TurnLimits
from runtime.tokens import TokenCounter
from runtime.tools import ToolExecutor, ToolRegistry, builtin_tools

log = logging.getLogger("runtime")

RecoveryResponders = Mapping[str, Callable[[InboxEntry], Responder]]


class _Fanout:
    """The responder of a job: the original requester plus anyone who repeated its key."""

    def __init__(self, first: Responder, on_reply: Callable[[], None]) -> None:
        self._responders = [first]
        self._on_reply = on_reply

    def add(self, responder: Responder) -> None:
        self._responders.append(responder)

    def reply(self, reply: Reply) -> None:
        self._on_reply()
        for responder in self._responders:
            responder.reply(reply)

    def progress(self, event: Progress) -> None:
        for responder in self._responders:
            responder.progress(event)


class _Unattended:
    """The responder of a message recovered after a restart on a channel that cannot be
    reached later (HTTP): the reply is kept in the inbox for a retry with the same key."""

    def __init__(self, entry: InboxEntry) -> None:
        self._entry = entry

    def reply(self, reply: Reply) -> None:
        log.info("recovered message %d of %s answered", self._entry.id, self._entry.session_key)

    def progress(self, event: Progress) -> None:
        pass


class Runtime:
    """The bot alive: the durable inbox, one session actor per key, and `deliver`.

    `run` recovers what a previous process accepted but did not answer, then takes messages
    until `close`; it returns once the turns in flight have finished.
    """

    def __init__(
        self,
        config: Config,
        bot: Bot,
        provider: Provider,
        *,
        tools: ToolRegistry | None = None,
        policy: RestartPolicy = RestartPolicy(),
    ) -> None:
        self.config = config
        self.bot = bot
        self.provider = provider
        self.inbox = Inbox(bot.db)
        self.metrics = Metrics()
        self._sessions = (
            RateLimiter(config.session_rate_per_minute) if config.session_rate_per_minute else None
        )
        tools = tools or ToolRegistry(builtin_tools())
        self.services = SessionServices(
            bot=bot,
            provider=provider,
            tools=tools,
            executor=ToolExecutor(tools, timeout=config.tool_timeout_seconds),
            inbox=self.inbox,
            metrics=self.metrics,
            limits=TurnLimits(
                max_tool_rounds=config.max_tool_rounds,
                prompt_token_budget=config.prompt_token_budget,
            ),
            turn_timeout=config.turn_timeout_seconds,
            # Exact counts need tiktoken's 47 MiB of ranks: only for OpenAI's models.
            tokens=TokenCounter(exact="openai:" in provider.name),
        )
        self.registry: Registry[str, Job] = Registry(
            lambda key: SessionActor(key, self.services),
            on_undelivered=self._undelivered,
            policy=policy,
            mailbox_capacity=config.mailbox_size,
            idle_timeout=config.session_idle_seconds,
        )
        statistics = self.registry.statistics
        self.metrics.gauge(
            "botcore_sessions_live", "Session actors alive.", lambda: statistics().live
        )
        self.metrics.gauge("botcore_db_calls", "Database calls since start.", lambda: bot.db.calls)
        self.metrics.gauge(
            "botcore_db_commits",
            "Database commits since start (a batch of calls shares one).",
            lambda: bot.db.commits,
        )
        self.metrics.gauge(
            "botcore_mailbox_depth",
            "Messages waiting in all mailboxes.",
            lambda: statistics().queued,
        )
        self.metrics.gauge(
            "botcore_actor_restarts",
            "Session actors restarted after a crash, since start.",
            lambda: statistics().restarts,
        )
        self.metrics.gauge(
            "botcore_dead_letters",
            "Messages dead-lettered since start.",
            lambda: statistics().dead_letters,
        )
        self._waiting: dict[int, _Fanout] = {}
        self._dead_send, self._dead_receive = trio.open_memory_channel[tuple[int, Reply]](math.inf)
        self._accepting = False
        self._closing = False
        self._background = trio.CancelScope()
        self.summarize = model_summary(provider)

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def run(
        self,
        *,
        responders: RecoveryResponders | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as database:
            await database.start(self.bot.db.serve_batches)
            async with trio.open_nursery() as nursery:
                await trio.to_thread.run_sync(self.services.tokens.load)
                await nursery.start(self.registry.run)
                nursery.start_soon(self._record_dead_letters)
                nursery.start_soon(self._consolidate_periodically)
                recovered = await self._recover(responders or {})
                if recovered:
                    log.info("recovered %d unanswered message(s) from the inbox", recovered)
                self._accepting = not self._closing
                task_status.started()
            # Every actor has finished: stop batching (what is queued still runs).
            database.cancel_scope.cancel()

    def close(self) -> None:
        """Stop taking messages; queued ones stay in the inbox for the next start."""
        self._accepting = False
        self._closing = True
        self._background.cancel()
        self.registry.close()
        self._dead_send.close()

    async def deliver(self, inbound: Inbound) -> Accepted:
        """Accept a message durably, then hand it to its session; see `adapters.base`."""
        if not self._accepting:
            self.metrics.refused.inc(reason="unavailable")
            raise Unavailable(
                "the bot is not taking messages right now (starting or shutting down)"
            )
        if self._sessions is not None:
            wait = self._sessions.acquire(inbound.session_key)
            if wait:
                self.metrics.refused.inc(reason="session_rate")
                raise Busy(f"session {inbound.session_id!r} is sending too fast; slow down", wait)
        entry, new = await self.inbox.accept(inbound)
        if not new:
            return self._repeat(entry, inbound.responder)
        try:
            self._enqueue(entry.id, inbound)
        except MailboxFull as exc:
            self.metrics.refused.inc(reason="mailbox_full")
            await self.inbox.withdraw(entry.id)
            raise Busy(
                f"session {inbound.session_id!r} has {exc.capacity} messages waiting; retry shortly",
                retry_after=1.0,
            ) from exc
        except ActorStopped as exc:
            raise Unavailable(
                "the bot is shutting down; the message was kept and will be answered after the restart"
            ) from exc
        return Accepted(entry.id)

    def _enqueue(self, entry_id: int, inbound: Inbound) -> None:
        fanout = _Fanout(inbound.responder, lambda: self._forget_waiting(entry_id))
        self.registry.tell(
            inbound.session_key, Job(attrs.evolve(inbound, responder=fanout), entry_id)
        )
        self._waiting[entry_id] = fanout

    def _forget_waiting(self, entry_id: int) -> None:
        self._waiting.pop(entry_id, None)

    def _repeat(self, entry: InboxEntry, responder: Responder) -> Accepted:
        """A message id seen before: answer from the inbox, or join the turn in progress."""
        if entry.reply is not None:
            replayed = attrs.evolve(entry.reply, replayed=True)
            responder.reply(replayed)
            return Accepted(entry.id, duplicate_of=replayed, repeat=True)
        waiting = self._waiting.get(entry.id)
        if waiting is None:
            raise Busy("that message is still being handled; retry shortly", retry_after=1.0)
        waiting.add(responder)
        return Accepted(entry.id, repeat=True)

    async def _recover(self, responders: RecoveryResponders) -> int:
        entries = await self.inbox.unfinished()
        for entry in entries:
            make = responders.get(entry.channel, _Unattended)
            inbound = Inbound(
                entry.channel,
                entry.session_id,
                entry.text,
                make(entry),
                entry.message_id,
                entry.sender,
            )
            while True:
                try:
                    self._enqueue(entry.id, inbound)
                    break
                except MailboxFull:
                    await trio.sleep(0.05)
        return len(entries)

    def _undelivered(self, job: Job, error: ActorStopped) -> None:
        if isinstance(error, ActorCrashed):
            self.metrics.turns.inc(outcome="crashed")
            reply = Reply(
                message=(
                    "Sorry, something went wrong while handling this message, and it was set "
                    "aside after several attempts. Your next message will be handled normally."
                ),
                session_id=job.inbound.session_id,
                turn_id="",
                error=ReplyError("crashed", str(error)),
            )
            job.inbound.responder.reply(reply)
            self._dead_send.send_nowait((job.inbox_id, reply))
            return
        if not self._closing:
            # Queued behind a message that crashed its actor: a fresh actor takes it.
            try:
                self.registry.tell(job.inbound.session_key, job)
                return
            except (MailboxFull, ActorStopped):
                pass
        job.inbound.responder.reply(
            Reply(
                message="The bot is restarting; this message was kept and will be answered after it.",
                session_id=job.inbound.session_id,
                turn_id="",
                error=ReplyError("stopped", str(error)),
            )
        )

    async def _consolidate_periodically(self) -> None:
        """Memory consolidation off the hot path: every `consolidate_every_seconds`."""
        every = self.config.consolidate_every_seconds
        with self._background:
            while every:
                await trio.sleep(every)
                try:
                    await consolidate(self.bot.db, summarize=self.summarize)
                except Exception:
                    log.exception("memory consolidation failed; trying again in %gs", every)

    async def _record_dead_letters(self) -> None:
        async with self._dead_receive:
            async for entry_id, reply in self._dead_receive:
                await self.inbox.dead(entry_id, reply)

    async def health(self) -> tuple[int, dict[str, Any]]:
        """Readiness: the database answers, the model can be reached, messages are taken."""
        try:
            with trio.fail_after(2):
                await self.bot.db.run(lambda db: db.execute("SELECT 1").fetchone())
        except Exception as exc:
            return 503, {"status": "unavailable", "database": f"error: {exc}"}
        if not self._accepting:
            return 503, {"status": "unavailable", "reason": "not taking messages"}
        problem = await self.provider.reachable()
        if problem is not None:
            return 503, {"status": "unavailable", "model": self.provider.name, "reason": problem}
        stats = self.registry.statistics()
        return 200, {
            "status": "ok",
            "model": self.provider.name,
            "sessions": stats.live,
            "queued": stats.queued,
        }


def model_summary(
    provider: Provider, limiter: trio.CapacityLimiter | None = None
) -> Summarize | None:
    """Consolidation summarizes episodes with the model, when there is a real one (at most
    `limiter`'s calls at once, besides the provider's own limit)."""
    if provider.name == "offline":
        return None

    async def summarize(episodes: Sequence[str]) -> str:
        request = ModelRequest(
            system=(
                "You condense a bot's notes of past conversations into a few short factual "
                "statements. Keep every name, number, date, place and preference the user "
                "mentioned; leave out small talk. Answer with the statements only, one per line."
            ),
            context="",
            messages=(UserText("\n".join(episodes)),),
            max_tokens=400,
        )
        if limiter is None:
            response = await provider.complete(request)
        else:
            async with limiter:
                response = await provider.complete(request)
        if not response.text.strip():
            raise ValueError("the model's summary was empty")
        return response.text.strip()

    return summarize


def _telegram(
    config: Config, runtime: Runtime, client: httpx2.AsyncClient
) -> TelegramChannel | None:
    if not config.telegram_bot_token:
        return None
    settings = TelegramSettings(
        token=config.telegram_bot_token,
        api_base_url=config.telegram_api_base_url,
        poll_timeout=config.telegram_poll_timeout,
        allowed_users=TelegramSettings.parse_users(config.telegram_allowed_users),
        non_text="ignore" if config.telegram_non_text == "ignore" else "reply",
    )
    return TelegramChannel(
        TelegramApi(settings, client), settings, runtime.deliver, reset=runtime.bot.history.clear
    )


async def _run_telegram(
    channel: TelegramChannel,
    config: Config,
    polling: trio.CancelScope,
) -> None:
    """Long-poll, or in webhook mode only learn who the bot is; `polling` stops either."""
    with polling:
        if config.telegram_webhook_secret:
            if await channel.identify():
                log.info("Telegram: webhook mode, updates arrive at POST /telegram/webhook")
            return
        await TelegramPoller(channel).run()


def open_model(config: Config) -> Provider:
    choices = choose_models(config)
    providers = [open_provider(choice, config) for choice in choices]
    return providers[0] if len(providers) == 1 else FallbackProvider(providers)


async def serve(
    config: Config,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bot with its HTTP channel until `shutdown` is set, then drain and stop.

    Shutdown: intake stops (HTTP answers 503), queued messages stay in the inbox, turns in
    flight get `shutdown_grace_seconds` to finish, then the HTTP server stops.
    """
    bot = await Bot.open(config.workspace, config.db_path)
    provider = open_model(config)
    try:
        runtime = Runtime(config, bot, provider)
        webhooks = {
            name: WebhookSource(
                name,
                hook.secret or "",
                hook.scheme,
                hook.text,
                hook.session,
                hook.callback,
            )
            for name, hook in config.webhooks.items()
        }
        callbacks = CallbackSender()
        async with httpx2.AsyncClient() as telegram_http, trio.open_nursery() as nursery:
            telegram = _telegram(config, runtime, telegram_http)
            app = create_app(
                runtime.deliver,
                HttpSettings(
                    api_token=config.botcore_api_token,
                    max_body_bytes=config.max_body_bytes,
                    max_message_chars=config.max_message_chars,
                    reply_timeout=config.turn_timeout_seconds + 30,
                    client_rate_per_minute=config.client_rate_per_minute,
                ),
                health=runtime.health,
                metrics=runtime.metrics.render,
                webhooks=webhooks,
                callbacks=callbacks,
                memory=MemoryApi(bot, runtime.summarize),
                telegram=(
                    TelegramWebhook(config.telegram_webhook_secret, telegram.handle)
                    if telegram is not None and config.telegram_webhook_secret
                    else None
                ),
            )
            http_stopped = trio.Event()
            drained = trio.Event()
            polling = trio.CancelScope()
            await nursery.start(callbacks.run)
            responders: RecoveryResponders = {}
            if telegram is not None:
                await nursery.start(telegram.run)
                channel = telegram
                responders = {
                    "telegram": lambda entry: channel.recovered(entry.session_id, entry.message_id)
                }

            async def run_runtime(task_status: trio.TaskStatus[None]) -> None:
                await runtime.run(responders=responders, task_status=task_status)
                drained.set()

            await nursery.start(run_runtime)
            binds = await nursery.start(
                serve_http, app, config.http_host, config.http_port, http_stopped.wait
            )
            if telegram is not None:
                nursery.start_soon(_run_telegram, telegram, config, polling)
            if provider.name == "offline":
                log.warning(
                    "no API key configured: running on the embedded offline model "
                    "(set ANTHROPIC_API_KEY or OPENAI_API_KEY for a real one)"
                )
            log.info(
                "bot %r from %s on model %s, listening on %s",
                (await bot.identity.load()).display_name,
                bot.workspace,
                provider.name,
                ", ".join(binds),
            )
            task_status.started(binds)
            await shutdown.wait()
            log.info(
                "shutting down: finishing turns in flight (up to %gs)",
                config.shutdown_grace_seconds,
            )
            polling.cancel()
            runtime.close()
            with trio.move_on_after(config.shutdown_grace_seconds) as grace:
                await drained.wait()
            if grace.cancelled_caught:
                log.warning(
                    "turns still running after the grace period are cancelled; they stay in the inbox"
                )
            http_stopped.set()
            callbacks.close()
            if telegram is not None:
                telegram.close()
            nursery.cancel_scope.deadline = trio.current_time() + config.shutdown_grace_seconds
    finally:
        with trio.CancelScope(shield=True):
            await provider.aclose()
            await bot.aclose()
