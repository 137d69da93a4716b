"""The one place that wires the bot together and starts its nursery."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import httpx2
import trio

from actors import ActorCrashed, ActorStopped, MailboxFull, Registry, RestartPolicy
from adapters import Accepted, Busy, Inbound, Progress, Reply, ReplyError, Responder, Unavailable
from adapters.http import HttpSettings, allowed_hosts, create_app, serve_http
from adapters.ratelimit import RateLimiter, trusted_proxies
from adapters.telegram import (
    TelegramApi,
    TelegramChannel,
    TelegramPoller,
    TelegramSettings,
    TelegramWebhook,
)
from adapters.webhook import CallbackSender, ReplayGuard, WebhookSource
from runtime.botcore import Bot, FileTools, Identity, Summarize, TaskGraph, consolidate
from runtime.config import Config
from runtime.deliveries import Deliveries
from runtime.inbox import Inbox, InboxEntry
from runtime.llm import ModelRequest, Provider, UserText
from runtime.llm.fallback import FallbackProvider
from runtime.llm.select import choose_models, open_provider
from runtime.logs import Redactor
from runtime.memory_api import MemoryApi
from runtime.metrics import Metrics
from runtime.session import Job, SessionActor, SessionServices, TurnLimits
from runtime.tokens import TokenCounter
from runtime.tools import ToolExecutor, ToolRegistry, builtin_tools
from runtime.tools.catalogue import search_tool

if TYPE_CHECKING:
    from runtime.tools.mcp import McpServers

log = logging.getLogger("runtime")

ACCEPT_DEADLINE = 30.0
"""How long `deliver` may wait for the inbox write, shielded from its caller's cancellation."""

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


@attrs.frozen
class ResetSession:
    """Forget a session's conversation, in its mailbox so it runs in order with its
    messages: after the turns before it have stored, before the turns after it recall.
    `done(True)` once forgotten; `done(False)` if it could not run (shutting down)."""

    session_key: str
    done: Callable[[bool], None] = attrs.field(eq=False)


SessionMessage = Job | ResetSession


class _Session:
    """The actor of one session: its turns, and the resets between them."""

    def __init__(self, key: str, services: SessionServices) -> None:
        self._key = key
        self._turns = SessionActor(key, services)
        self._history = services.bot.history

    async def handle(self, message: SessionMessage) -> None:
        if isinstance(message, Job):
            await self._turns.handle(message)
            return
        forgotten = await self._history.clear(self._key)
        log.info("session %s reset (%d messages forgotten)", self._key, forgotten)
        message.done(True)


class Runtime:
    """The bot alive: the durable inbox, one session actor per key, and `deliver`.

    `run` takes messages until `close` and returns once the turns in flight have finished.
    What a previous process accepted but did not answer is recovered at start, in order per
    session, without holding up the start: a session whose recovered messages do not all
    fit its mailbox yet refuses new ones as busy until they do.
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
        if tools is None:
            tools = ToolRegistry(builtin_tools())
            tools.add(search_tool(tools))  # offered only when the tools outgrow the budget
        self.mcp: McpServers | None = None
        if config.mcp:  # the SDK is imported only for a bot that has MCP servers
            from runtime.tools.mcp import McpServers

            self.mcp = McpServers(
                config.mcp, tools, workspace=bot.workspace, timeout=config.tool_timeout_seconds
            )
        redact = Redactor(config.secrets)
        # The tools' own threads: a stuck tool never takes the database's or trio's default ones.
        tool_threads = trio.CapacityLimiter(config.tool_threads)
        self.services = SessionServices(
            bot=bot,
            provider=provider,
            tools=tools,
            executor=ToolExecutor(
                tools,
                timeout=config.tool_timeout_seconds,
                redact=redact,
                concurrency=config.tool_concurrency,
            ),
            inbox=self.inbox,
            metrics=self.metrics,
            limits=TurnLimits(
                max_tool_rounds=config.max_tool_rounds,
                max_tool_calls=config.max_tool_calls,
                prompt_token_budget=config.prompt_token_budget,
            ),
            turn_timeout=config.turn_timeout_seconds,
            files=FileTools(
                bot.workspace,
                bot.db,
                limiter=tool_threads,
                identity_writable=config.identity_writable,
            ),
            tasks=TaskGraph(bot.workspace, limiter=tool_threads),
            redact=redact,
            # Exact counts need tiktoken's 47 MiB of ranks: only for OpenAI's models.
            tokens=TokenCounter(exact="openai:" in provider.name),
        )
        self.registry: Registry[str, SessionMessage] = Registry(
            lambda key: _Session(key, self.services),
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
        self._backlog: dict[str, deque[Job]] = {}
        """Recovered messages that did not fit their session's mailbox yet, per session."""
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
            if self.mcp is not None:  # stopped with the database, once every turn is done
                await database.start(self.mcp.run)
            async with trio.open_nursery() as nursery:
                await trio.to_thread.run_sync(self.services.tokens.load)
                await nursery.start(self._run_sessions)
                nursery.start_soon(self._record_dead_letters)
                nursery.start_soon(self._consolidate_periodically)
                recovered = await self._recover(responders or {})
                if recovered:
                    log.info("recovered %d unanswered message(s) from the inbox", recovered)
                if self._backlog:
                    nursery.start_soon(self._catch_up)
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

    async def _run_sessions(self, *, task_status: trio.TaskStatus[None]) -> None:
        """The session actors; dead letters are taken until the last of them has finished
        (a turn in its grace period can still give up on its message)."""
        try:
            await self.registry.run(task_status=task_status)
        finally:
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
        # Shielded: a caller cancelled (its client left) once the write is queued would leave
        # the row `received` with no actor, and every retry of its key Busy until a restart.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + ACCEPT_DEADLINE):
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
        raise Unavailable(
            f"the database did not take the message within {ACCEPT_DEADLINE:g}s; retry shortly"
        )

    async def reset(self, session_key: str, done: Callable[[bool], None]) -> None:
        """Forget a session's conversation (its history and episodes) after the messages
        already queued for it; `done` is called when it has run. Raises `Busy` or
        `Unavailable`, as `deliver` does."""
        if not self._accepting:
            raise Unavailable(
                "the bot is not taking messages right now (starting or shutting down)"
            )
        try:
            self._tell(session_key, ResetSession(session_key, done))
        except MailboxFull as exc:
            raise Busy(f"session {session_key!r} is busy; retry shortly", retry_after=1.0) from exc
        except ActorStopped as exc:
            raise Unavailable("the bot is shutting down") from exc

    def _enqueue(self, entry_id: int, inbound: Inbound) -> None:
        job, fanout = self._job(entry_id, inbound)
        self._tell(inbound.session_key, job)
        self._waiting[entry_id] = fanout

    def _job(self, entry_id: int, inbound: Inbound) -> tuple[Job, _Fanout]:
        fanout = _Fanout(inbound.responder, lambda: self._forget_waiting(entry_id))
        return Job(attrs.evolve(inbound, responder=fanout), entry_id), fanout

    def _tell(self, session_key: str, message: SessionMessage) -> None:
        """To the session's mailbox, behind any recovered message still waiting for room."""
        if session_key in self._backlog:
            raise MailboxFull(self.config.mailbox_size)
        self.registry.tell(session_key, message)

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
        """Queue what a previous process accepted but did not answer, oldest first; what
        does not fit a session's mailbox now waits in its backlog (see `_catch_up`)."""
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
            job, self._waiting[entry.id] = self._job(entry.id, inbound)
            self._backlog.setdefault(entry.session_key, deque()).append(job)
        self._feed_backlog()
        return len(entries)

    def _feed_backlog(self) -> None:
        """Move recovered messages into their mailboxes while there is room, in order."""
        for key, jobs in list(self._backlog.items()):
            try:
                while jobs:
                    self.registry.tell(key, jobs[0])
                    jobs.popleft()
            except MailboxFull:
                continue
            except ActorStopped:
                return  # shutting down: they stay in the inbox for the next start
            del self._backlog[key]

    async def _catch_up(self) -> None:
        """Feed the backlog as the sessions make room, until it is empty or the runtime
        closes."""
        while self._backlog and not self._closing:
            await trio.sleep(0.05)
            self._feed_backlog()

    def _undelivered(self, job: SessionMessage, error: ActorStopped) -> None:
        if isinstance(job, ResetSession):
            if not self._closing and not isinstance(error, ActorCrashed):
                try:
                    self.registry.tell(job.session_key, job)
                    return
                except (MailboxFull, ActorStopped):
                    pass
            job.done(False)
            return
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
            try:
                self._dead_send.send_nowait((job.inbox_id, reply))
            except trio.ClosedResourceError:
                log.error(
                    "message %d was not marked dead (stopping); it is tried again at the next start",
                    job.inbox_id,
                )
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
        body: dict[str, Any] = {
            "status": "ok",
            "model": self.provider.name,
            "sessions": stats.live,
            "queued": stats.queued,
        }
        if self.mcp is not None:  # a server down leaves the bot ready; the log says why
            body["mcp"] = {
                s.name: "connected" if s.connected else "down" for s in self.mcp.statistics()
            }
        return 200, body


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
        TelegramApi(settings, client), settings, runtime.deliver, reset=runtime.reset
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


def _banner(
    config: Config, bot: Bot, provider: Provider, binds: Sequence[str], identity: Identity
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
    channels = ["http"]
    if config.telegram_bot_token:
        mode = "webhook at /telegram/webhook" if config.telegram_webhook_secret else "polling"
        channels.append(f"telegram ({mode})")
    channels += [f"webhook {name!r} at /webhooks/{name}" for name in config.webhooks]
    log.info("channels: %s", ", ".join(channels))
    if not config.botcore_api_token and config.http_host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "listening on %s without BOTCORE_API_TOKEN: anyone who can reach the port can "
            "talk to the bot and read its memory; set BOTCORE_API_TOKEN",
            config.http_host,
        )


def _with_channels(
    health: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
    telegram: TelegramChannel | None,
) -> Callable[[], Awaitable[tuple[int, dict[str, Any]]]]:
    """Readiness includes the channels: Telegram is not ready while its calls keep failing."""

    async def check() -> tuple[int, dict[str, Any]]:
        status, body = await health()
        problem = telegram.api.failing if telegram is not None else None
        if problem is None:
            return status, body
        return 503, {**body, "status": "unavailable", "telegram": problem}

    return check


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
                    allowed_hosts=allowed_hosts(config.allowed_hosts, config.http_host),
                    trusted_proxies=trusted_proxies(config.trusted_proxies),
                ),
                health=_with_channels(runtime.health, telegram),
                metrics=runtime.metrics.render,
                webhooks=webhooks,
                callbacks=callbacks,
                replays=ReplayGuard(Deliveries(bot.db)),
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
                partial(serve_http, keep_alive_timeout=config.http_keep_alive_seconds),
                app,
                config.http_host,
                config.http_port,
                http_stopped.wait,
            )
            if telegram is not None:
                nursery.start_soon(_run_telegram, telegram, config, polling)
            _banner(config, bot, provider, binds, await bot.identity.load())
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
