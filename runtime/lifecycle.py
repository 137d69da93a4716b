"""One bot's message lifecycle: accept durably, join repeats, recover, dead-letter, drain.

`Runtime` knows no channel and no process: the host (`runtime.host`) builds it, gives it the
channels' recovery, and owns the nursery it runs in.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from actors import ActorCrashed, ActorStopped, MailboxFull, Registry, RestartPolicy
from adapters import (
    Accepted,
    Busy,
    Inbound,
    KeyReserved,
    Progress,
    Reply,
    ReplyError,
    Responder,
    SendingResponder,
    Sent,
    TextDelta,
    TextDiscarded,
    Unattended,
    Unavailable,
)
from adapters.ratelimit import RateLimiter
from runtime.botcore import Bot, FileTools, Summarize, TaskGraph, consolidate
from runtime.config import BotSettings
from runtime.inbox import NOTIFY_ANSWERED, NOTIFY_WAITING, Answered, Inbox, InboxEntry
from runtime.leases import Lease, LeaseLost, SessionLeases
from runtime.llm import ModelRequest, Provider, UserText
from runtime.logs import Redactor
from runtime.metrics import Metrics
from runtime.relay import NOTIFY_PROGRESS, ProgressRelay, decode
from runtime.schedules import (
    HEARTBEAT_KEY,
    RESERVED_KEYS,
    Clock,
    Heartbeat,
    Schedules,
    is_silent,
    run_scheduler,
)
from runtime.session import Job, SessionActor, SessionServices, TurnLimits
from runtime.tokens import TokenCounter
from runtime.tools import ToolExecutor, ToolRegistry, builtin_tools
from runtime.tools.catalogue import search_tool
from runtime.tools.schedule import schedule_tool

if TYPE_CHECKING:
    from runtime.tools.mcp import McpServers

log = logging.getLogger("runtime")

CLAIM_EVERY = 0.5
"""How often a replica looks for sessions with waiting messages that no replica holds,
besides when a notification says a message came: a lease that lapsed says nothing."""
TAKE_UP_AFTER = 1.0
"""How long a session that no replica holds waits before another replica than the one that
took its message takes it up."""
WATCH_EVERY = 0.5
"""How often a replica looks for the answers other replicas wrote for its waiting clients,
besides when a notification says one was written."""

OUTBOX_EVERY = 5.0
"""On a shared database, how often the outbox is looked at for answers other replicas
left unconfirmed (its own are looked at when due)."""
OUTBOX_ATTEMPTS = 10
"""How often an answer of the outbox is sent again before it is given up (logged)."""

ACCEPT_DEADLINE = 30.0
"""How long `deliver` may wait for the inbox write, shielded from its caller's cancellation."""

RecoveryResponders = Mapping[str, Callable[[InboxEntry], Responder]]
"""Per channel name: the responder of a message that channel took before a restart."""


class Lifecycle(enum.Enum):
    """Where a `Runtime` is in its life; `Runtime.state`. Moves only forward."""

    NEW = "new"
    """Built; `run` was not called yet. Messages are refused as unavailable."""
    STARTING = "starting"
    """`run` is recovering what the previous process left; messages are still refused."""
    ACCEPTING = "accepting"
    """Taking messages."""
    CLOSING = "closing"
    """`close` was called: no new messages; the turns in flight finish."""
    CLOSED = "closed"
    """`run` has returned: every session actor has finished."""


_NEXT: dict[Lifecycle, frozenset[Lifecycle]] = {
    Lifecycle.NEW: frozenset({Lifecycle.STARTING, Lifecycle.CLOSING}),
    Lifecycle.STARTING: frozenset({Lifecycle.ACCEPTING, Lifecycle.CLOSING}),
    Lifecycle.ACCEPTING: frozenset({Lifecycle.CLOSING}),
    Lifecycle.CLOSING: frozenset({Lifecycle.CLOSED}),
    Lifecycle.CLOSED: frozenset(),
}


class _Fanout:
    """The responder of a job: the original requester plus anyone who repeated its key.
    With `sent`, the first is a `SendingResponder` whose answer is in the outbox: `sent`
    hears whether it got there."""

    def __init__(
        self, first: Responder, on_reply: Callable[[], None], sent: Sent | None = None
    ) -> None:
        self._responders = [first]
        self._on_reply = on_reply
        self._sent = sent

    def add(self, responder: Responder) -> None:
        self._responders.append(responder)

    @property
    def responders(self) -> list[Responder]:
        return list(self._responders)

    def reply(self, reply: Reply) -> None:
        self._on_reply()
        first, *others = self._responders
        if self._sent is not None and isinstance(first, SendingResponder):
            first.reply_then(reply, self._sent)
        else:
            first.reply(reply)
        for responder in others:
            responder.reply(reply)

    def progress(self, event: Progress) -> None:
        for responder in self._responders:
            responder.progress(event)


@attrs.define(eq=False)
class _Watched:
    """A message another replica answers, as the clients waiting for it here know it."""

    session_id: str
    responders: list[Responder] = attrs.field(factory=list)
    relayed: str = ""
    """The answer's text relayed so far (`runtime.relay`)."""

    def progress(self, event: Progress) -> None:
        if isinstance(event, TextDelta):
            self.relayed += event.text
        elif isinstance(event, TextDiscarded):
            self.relayed = self.relayed.removesuffix(event.text)
        for responder in self.responders:
            responder.progress(event)

    def reply(self, reply: Reply) -> None:
        # The answer can overtake its last relayed progress: a stream gets the text it has
        # not seen yet, so what it put together is the answer.
        rest = reply.message[len(self.relayed) :]
        complete = bool(reply.error is None and rest and reply.message.startswith(self.relayed))
        for responder in self.responders:
            if complete:
                responder.progress(TextDelta(rest))
            responder.reply(reply)


class _Relayed:
    """The responder of a message another replica may have a client waiting for: the
    answer goes to the inbox, the progress to that replica (`runtime.relay`)."""

    def __init__(self, inner: Responder, entry_id: int, relay: ProgressRelay) -> None:
        self._inner, self._entry_id, self._relay = inner, entry_id, relay

    def reply(self, reply: Reply) -> None:
        self._inner.reply(reply)

    def progress(self, event: Progress) -> None:
        self._relay.publish(self._entry_id, event)


class _Quiet:
    """The responder of a heartbeat: an answer with nothing to say goes nowhere."""

    def __init__(self, inner: Responder) -> None:
        self._inner = inner

    def reply(self, reply: Reply) -> None:
        if reply.error is None and is_silent(reply.message):
            log.info("heartbeat: nothing to say")
            return
        self._inner.reply(reply)

    def progress(self, event: Progress) -> None:
        pass  # what streams may yet turn out to be nothing to say


@attrs.frozen
class ResetSession:
    """Forget a session's conversation, in its mailbox so it runs in order with its
    messages: after the turns before it have stored, before the turns after it recall.
    `done(True)` once forgotten; `done(False)` if it could not run (shutting down)."""

    session_key: str
    done: Callable[[bool], None] = attrs.field(eq=False)


SessionMessage = Job | ResetSession


class _Session:
    """The actor of one session: its turns, and the resets between them.

    A turn under a lease runs in the lease's cancel scope: when the lease is lost (another
    replica took the session), the turn stops and `moved` hands its waiting clients over to
    whoever answers it now."""

    def __init__(
        self, key: str, services: SessionServices, moved: Callable[[Job], None]
    ) -> None:
        self._key = key
        self._turns = SessionActor(key, services)
        self._history = services.bot.history
        self._moved = moved

    async def handle(self, message: SessionMessage) -> None:
        if isinstance(message, Job):
            lease = message.lease
            if lease is None:
                await self._turns.handle(message)
                return
            scope = lease.scope()
            refused = False
            try:
                with scope:
                    await self._turns.handle(message)
            except LeaseLost as exc:
                # The database said so before the renewal did: no later job runs under it.
                refused = True
                log.warning("%s; its message %d is left to that replica", exc, message.inbox_id)
                lease.lose()
            except Answered:
                refused = True  # its clients get the stored answer from the inbox
            finally:
                lease.done(scope)
            if refused or lease.lost or scope.cancelled_caught:
                self._moved(message)
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
        config: BotSettings,
        bot: Bot,
        provider: Provider,
        *,
        tools: ToolRegistry | None = None,
        policy: RestartPolicy = RestartPolicy(),
        secrets: Sequence[str | None] = (),
        clock: Clock = time.time,
    ) -> None:
        self.config = config
        self.bot = bot
        self.provider = provider
        self.inbox = Inbox(bot.db, outbox_grace=config.outbox_grace_seconds)
        self.metrics = Metrics()
        self._sessions = (
            RateLimiter(config.session_rate_per_minute) if config.session_rate_per_minute else None
        )
        if tools is None:
            tools = ToolRegistry(builtin_tools())
            if config.schedule_tool:
                tools.add(schedule_tool())
            tools.add(search_tool(tools))  # offered only when the tools outgrow the budget
        self.schedules = Schedules(bot.db, clock)
        self.mcp: McpServers | None = None
        if config.mcp:  # the SDK is imported only for a bot that has MCP servers
            from runtime.tools.mcp import McpServers

            self.mcp = McpServers(
                config.mcp, tools, workspace=bot.workspace, timeout=config.tool_timeout_seconds
            )
        redact = Redactor((*config.secrets, *secrets))  # `secrets`: the process's (its token)
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
            schedules=self.schedules,
        )
        self.leases: SessionLeases | None = None
        """This replica's session leases, when the bot's database is shared (PostgreSQL)."""
        if bot.db.dialect == "postgresql":
            self.leases = SessionLeases(bot.db, seconds=config.lease_seconds)
        self._watching: dict[int, _Watched] = {}
        self._waiting_hint = trio.Event()
        self._answered_hint = trio.Event()
        self._taking: dict[str, trio.Lock] = {}
        if self.leases is not None:
            leases = self.leases
            self.metrics.gauge(
                "botcore_leases_held",
                "Sessions (and pollers) this replica holds the lease of.",
                lambda: leases.statistics(),
            )
            self.metrics.gauge(
                "botcore_answers_awaited",
                "Messages another replica answers, with a client waiting here.",
                lambda: len(self._watching),
            )
        self._relay = ProgressRelay(bot.db)
        """The text relayed so far of the messages watched here."""
        """Messages another replica answers, and who waits here for their answer."""
        self.registry: Registry[str, SessionMessage] = Registry(
            lambda key: _Session(key, self.services, self._moved),
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
        self._state = Lifecycle.NEW
        self._background = trio.CancelScope()
        self._fleet = trio.CancelScope()
        self._sweeping = trio.CancelScope()
        self._outbox_hint = trio.Event()
        self._scheduling = trio.CancelScope()
        self._responders: RecoveryResponders = {}
        self._nursery: trio.Nursery | None = None
        self._catching_up = False
        self.summarize = model_summary(provider)

    @property
    def state(self) -> Lifecycle:
        return self._state

    @property
    def accepting(self) -> bool:
        return self._state is Lifecycle.ACCEPTING

    @property
    def _closing(self) -> bool:
        return self._state in (Lifecycle.CLOSING, Lifecycle.CLOSED)

    def _move(self, to: Lifecycle) -> None:
        if to not in _NEXT[self._state]:
            raise RuntimeError(f"a runtime that is {self._state.value} cannot become {to.value}")
        self._state = to

    async def run(
        self,
        *,
        responders: RecoveryResponders | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._move(Lifecycle.STARTING)
        try:
            await self._run(responders or {}, task_status)
        finally:
            if self._state is not Lifecycle.CLOSING:
                self._state = Lifecycle.CLOSING  # cancelled or failed without `close`
            self._move(Lifecycle.CLOSED)

    async def _run(
        self, responders: RecoveryResponders, task_status: trio.TaskStatus[None]
    ) -> None:
        async with trio.open_nursery() as database:
            await database.start(self.bot.db.serve_batches)
            if self.mcp is not None:  # stopped with the database, once every turn is done
                await database.start(self.mcp.run)
            if self.leases is not None:  # given back once every turn is done
                await database.start(self.leases.run)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._responders = responders
                await trio.to_thread.run_sync(self.services.tokens.load)
                await nursery.start(self._run_sessions)
                nursery.start_soon(self._record_dead_letters)
                nursery.start_soon(self._consolidate_periodically)
                if self.leases is None:
                    recovered = await self._recover(responders)
                    if recovered:
                        log.info("recovered %d unanswered message(s) from the inbox", recovered)
                else:
                    # Recovery never ends on a shared inbox: a replica that dies has its
                    # sessions taken up by the others (see `_claim`).
                    await nursery.start(self._run_fleet)
                if self._backlog:
                    nursery.start_soon(self._catch_up)
                nursery.start_soon(self._send_again)
                if self._state is Lifecycle.STARTING:
                    self._move(Lifecycle.ACCEPTING)
                    # After recovery: a schedule fired before a crash is recovered, not fired.
                    nursery.start_soon(self._run_scheduler)
                task_status.started()
            # Every actor has finished: stop batching (what is queued still runs).
            database.cancel_scope.cancel()

    def close(self) -> None:
        """Stop taking messages; queued ones stay in the inbox for the next start. Closing a
        runtime that is closing or closed already does nothing."""
        if self._closing:
            return
        self._move(Lifecycle.CLOSING)
        self._background.cancel()
        self._fleet.cancel()
        self._sweeping.cancel()
        self._scheduling.cancel()
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
        if inbound.message_id is not None and inbound.message_id.startswith(RESERVED_KEYS):
            self.metrics.refused.inc(reason="key_reserved")
            raise KeyReserved(
                f"message ids starting with {' or '.join(map(repr, RESERVED_KEYS))} are the"
                " bot's own (its schedules and heartbeat); use another key"
            )
        if not self.accepting:
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
                if self.leases is None:
                    self._enqueue(entry.id, inbound)
                elif not await self._take_up(inbound.session_key, {entry.id: inbound}):
                    self._watch(entry, inbound.responder)  # another replica answers it
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
        if not self.accepting:
            raise Unavailable(
                "the bot is not taking messages right now (starting or shutting down)"
            )
        try:
            self._tell(session_key, ResetSession(session_key, done))
        except MailboxFull as exc:
            raise Busy(f"session {session_key!r} is busy; retry shortly", retry_after=1.0) from exc
        except ActorStopped as exc:
            raise Unavailable("the bot is shutting down") from exc

    def _enqueue(self, entry_id: int, inbound: Inbound, lease: Lease | None = None) -> None:
        job, fanout = self._job(entry_id, inbound, lease)
        self._tell(inbound.session_key, job)
        self._waiting[entry_id] = fanout
        if lease is not None:
            lease.busy += 1
        watched = self._watching.pop(entry_id, None)
        if watched is not None:
            for responder in watched.responders:
                fanout.add(responder)

    def _job(
        self, entry_id: int, inbound: Inbound, lease: Lease | None = None
    ) -> tuple[Job, _Fanout]:
        def replied() -> None:
            self._forget_waiting(entry_id)
            if lease is not None:
                lease.busy -= 1
                lease.idle_since = trio.current_time()

        outbox = isinstance(inbound.responder, SendingResponder)
        if outbox:
            self._outbox_hint.set()
        fanout = _Fanout(inbound.responder, replied, self._sent(entry_id) if outbox else None)
        job = Job(attrs.evolve(inbound, responder=fanout), entry_id, lease, outbox=outbox)
        return job, fanout

    def _sent(self, entry_id: int) -> Sent:
        """What to tell the outbox when the channel says what became of an answer."""

        def sent(delivered: bool) -> None:
            if self._nursery is None:
                return  # stopped: the outbox keeps it, the next start sends it again
            try:
                self._nursery.start_soon(self._record_sent, entry_id, delivered)
            except RuntimeError:
                log.warning("answer %d: could not record that it was sent; it may be sent again", entry_id)

        return sent

    async def _record_sent(self, entry_id: int, delivered: bool) -> None:
        if not delivered:
            self._outbox_hint.set()  # due again after the grace time
        try:
            await self.inbox.sent(entry_id, delivered)
        except Exception as exc:
            log.warning("answer %d: could not record that it was sent (%s); it may be sent again", entry_id, exc)

    async def _send_again(self) -> None:
        """Send again the answers of the outbox that were not confirmed in time: their
        process died while sending, or the channel gave up (at most `OUTBOX_ATTEMPTS`).

        It wakes when the first one is due, and when an answer is going into the outbox (not
        committed yet when told, so it looks again by its grace time at the latest); on a
        shared database also every `OUTBOX_EVERY`, for what other replicas left."""
        grace = self.inbox.outbox_grace
        expected = math.inf
        with self._sweeping:
            while True:
                try:
                    await self._send_due()
                    next_at = await self.inbox.next_unconfirmed()
                except Exception:
                    log.exception("reading the outbox failed; trying again in %gs", OUTBOX_EVERY)
                    next_at = time.time() + OUTBOX_EVERY
                now = time.time()
                if expected <= now:
                    expected = math.inf  # looked at once it was due
                wait = max(0.05, min(math.inf if next_at is None else next_at, expected) - now)
                if self.leases is not None:
                    wait = min(wait, OUTBOX_EVERY)
                with trio.move_on_after(wait):
                    await self._outbox_hint.wait()
                if self._outbox_hint.is_set():
                    self._outbox_hint = trio.Event()
                    expected = min(expected, time.time() + grace + 0.5)

    async def _send_due(self) -> None:
        for entry, attempts in await self.inbox.due_answers():
            make = self._responders.get(entry.channel)
            responder = make(entry) if make is not None else None
            if entry.reply is None or not isinstance(responder, SendingResponder):
                await self._record_sent(entry.id, True)  # nothing this can send
            elif attempts >= OUTBOX_ATTEMPTS:
                log.error(
                    "the answer to message %d (%s) was not sent after %d tries; given up",
                    entry.id,
                    entry.session_key,
                    attempts,
                )
                await self._record_sent(entry.id, True)
            else:
                log.warning(
                    "sending again the answer to message %d (%s): not confirmed in %gs",
                    entry.id,
                    entry.session_key,
                    self.inbox.outbox_grace,
                )
                responder.reply_then(entry.reply, self._sent(entry.id))

    async def _take_up(self, session_key: str, live: Mapping[int, Inbound]) -> bool:
        """Hold the session's lease and queue its unanswered messages that are not queued
        here yet, oldest first (`live` ones with their own responder, the others as
        recovered ones); False if another replica holds the session."""
        assert self.leases is not None
        # One at a time per session: a read of its unanswered messages that began before
        # one of them was answered here must not queue that one again.
        lock = self._taking.setdefault(session_key, trio.Lock())
        try:
            async with lock:
                lease = await self.leases.acquire(session_key)
                if lease is None:
                    return False
                channel, _, session_id = session_key.partition(":")
                entries = await self.inbox.unfinished_of(channel, session_id)
                for entry in entries:
                    queued = self._waiting.get(entry.id)
                    if queued is not None and entry.id in live:
                        queued.add(live[entry.id].responder)  # queued meanwhile by `_claim`
                    if queued is not None or entry.id in lease.taken:
                        continue
                    inbound = live.get(entry.id) or self._recovered(entry)
                    self._enqueue(entry.id, inbound, lease)
                    lease.taken.add(entry.id)
                # What this read no longer lists was answered before it began.
                lease.taken &= {entry.id for entry in entries}
                return True
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._taking.pop(session_key, None)

    def _recovered(self, entry: InboxEntry) -> Inbound:
        """A message from the inbox, not from its channel (recovered after a restart, fired
        by a schedule, taken up from a shared inbox): answered at its address, or, for a
        client that waits (on another replica, if anywhere), with its progress relayed. A
        heartbeat with nothing to say goes nowhere."""
        make = self._responders.get(entry.channel)
        responder = make(entry) if make is not None else Unattended(entry.session_key)
        if self.leases is not None and isinstance(responder, Unattended):
            responder = _Relayed(responder, entry.id, self._relay)
        if (entry.message_id or "").startswith(HEARTBEAT_KEY):
            responder = _Quiet(responder)
        return Inbound(
            entry.channel, entry.session_id, entry.text, responder, entry.message_id, entry.sender
        )

    async def _run_fleet(self, *, task_status: trio.TaskStatus[None]) -> None:
        """What a replica on a shared inbox does besides its turns, until `close`: take up
        waiting sessions, and pass on the answers other replicas wrote."""
        with self._fleet:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._relay.run)
                await nursery.start(self._claim)
                nursery.start_soon(self._watch_answers)
                nursery.start_soon(self._listen)
                task_status.started()

    async def _listen(self) -> None:
        """LISTEN for the hints that a message waits or was answered: `_claim` and
        `_watch_answers` look at once instead of at their next poll. The polls stay: a
        notification lost with a connection costs only their interval."""
        engine = self.bot.db.engine
        listen = getattr(engine, "listen", None)
        assert listen is not None
        token = trio.lowlevel.current_trio_token()

        def wake(channel: str, payload: str) -> None:
            if channel == NOTIFY_WAITING:
                self._waiting_hint.set()
            elif channel == NOTIFY_ANSWERED:
                self._answered_hint.set()
            elif (progress := decode(payload)) is not None:
                entry_id, events = progress
                watched = self._watching.get(entry_id)
                if watched is not None:
                    for event in events:
                        watched.progress(event)

        def notified(channel: str, payload: str) -> None:
            trio.from_thread.run_sync(wake, channel, payload, trio_token=token)

        channels = (NOTIFY_WAITING, NOTIFY_ANSWERED, NOTIFY_PROGRESS)
        while True:
            stop = threading.Event()
            try:
                await trio.to_thread.run_sync(
                    listen, channels, notified, stop, abandon_on_cancel=True
                )
            except Exception as exc:
                log.warning("listening for notifications failed (%s); polling meanwhile", exc)
            finally:
                stop.set()
            await trio.sleep(1.0)

    async def _claim(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Take up the sessions whose messages wait and that no replica holds (a new
        message accepted elsewhere, a replica that died), every `CLAIM_EVERY` seconds."""
        assert self.leases is not None
        owner = self.leases.owner
        first_seen: dict[str, float] = {}
        task_status.started()
        while True:
            try:
                waiting = await self.inbox.waiting_sessions(owner)
            except Exception:
                log.exception("looking for waiting sessions failed; trying again")
                waiting = []
            now = trio.current_time()
            first_seen = {s.key: first_seen.get(s.key, now) for s in waiting}
            # All at once: one by one, a dead replica's sessions would each wait for the
            # round trips of those before them.
            async with trio.open_nursery() as nursery:
                for session in waiting:
                    if all(entry_id in self._waiting for entry_id in session.ids):
                        continue
                    # A session nobody held is left a moment to the replica that took its
                    # message (its client waits there, and streams); one whose holder died
                    # (its lease lapsed) is taken at once.
                    fresh = now - first_seen[session.key] < TAKE_UP_AFTER
                    if fresh and not (session.ours or session.lapsed):
                        continue
                    nursery.start_soon(self._take_up_waiting, session.key)
            with trio.move_on_after(CLAIM_EVERY):
                await self._waiting_hint.wait()
            self._waiting_hint = trio.Event()

    async def _take_up_waiting(self, session_key: str) -> None:
        """`_take_up` from a task of its own; a session it cannot queue now is left to the
        next claim pass."""
        try:
            await self._take_up(session_key, {})
        except MailboxFull:
            pass  # its session is busy here: the next pass
        except (ActorStopped, trio.ClosedResourceError):
            pass  # closing: `close` cancels the claims
        except Exception:
            log.exception("taking up session %s failed; trying again", session_key)

    def _watch(self, message: InboxEntry | Job, responder: Responder) -> None:
        if isinstance(message, Job):
            entry_id, session_id = message.inbox_id, message.inbound.session_id
        else:
            entry_id, session_id = message.id, message.session_id
        self._watching.setdefault(entry_id, _Watched(session_id)).responders.append(responder)

    def _moved(self, job: Job) -> None:
        """A job whose lease was lost before it was answered: its clients wait for the
        answer of the replica that holds the session now."""
        fanout = self._waiting.pop(job.inbox_id, None)
        if fanout is None:
            return  # answered after all
        if job.lease is not None:
            job.lease.busy -= 1
        for responder in fanout.responders:
            self._watch(job, responder)

    async def _watch_answers(self) -> None:
        """Hand the answers written by other replicas to the clients waiting here, until
        `close`; those still waiting then hear that this replica stops (their message is
        answered all the same: a retry with its key gets the answer)."""
        try:
            await self._pass_on_answers()
        finally:
            waiting, self._watching = self._watching, {}
            for entry_id, watched in waiting.items():
                watched.reply(
                    Reply(
                        message="This replica is stopping; your message is kept and answered"
                        " by another one: retry with the same key to get the answer.",
                        session_id=watched.session_id,
                        turn_id="",
                        error=ReplyError("stopped", f"message {entry_id} is answered elsewhere"),
                    )
                )

    async def _pass_on_answers(self) -> None:
        while True:
            with trio.move_on_after(WATCH_EVERY):
                await self._answered_hint.wait()
            self._answered_hint = trio.Event()
            if not self._watching:
                continue
            try:
                answered = await self.inbox.answers_to(list(self._watching)[:500])
            except Exception:
                log.exception("reading answers from the inbox failed; trying again")
                continue
            for entry in answered:
                assert entry.reply is not None
                watched = self._watching.pop(entry.id, None)
                if watched is not None:
                    watched.reply(entry.reply)

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
        if waiting is None and self.leases is not None:
            self._watch(entry, responder)  # under way on another replica
            return Accepted(entry.id, repeat=True)
        if waiting is None:
            raise Busy("that message is still being handled; retry shortly", retry_after=1.0)
        waiting.add(responder)
        return Accepted(entry.id, repeat=True)

    async def _recover(self, responders: RecoveryResponders) -> int:
        """Queue what a previous process accepted but did not answer, oldest first; what
        does not fit a session's mailbox now waits in its backlog (see `_catch_up`).

        The `Inbound` has no `address`: that is the channel's own type, which only its
        `recovered` rebuilds (into the responder). Nothing after the inbox write reads it;
        what needs it later (a schedule set in this turn) takes it from the inbox row."""
        entries = await self.inbox.unfinished()
        for entry in entries:
            job, self._waiting[entry.id] = self._job(entry.id, self._recovered(entry))
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
        self._catching_up = True
        try:
            while self._backlog and not self._closing:
                await trio.sleep(0.05)
                self._feed_backlog()
        finally:
            self._catching_up = False

    async def _run_scheduler(self) -> None:
        config = self.config
        heartbeat = None
        if config.heartbeat_minutes:
            channel, _, session_id = config.heartbeat_session.partition(":")
            heartbeat = Heartbeat(
                config.heartbeat_minutes * 60, channel, session_id, self.bot.workspace
            )
        with self._scheduling:
            await run_scheduler(self.schedules, self._fire, heartbeat)

    def _fire(self, entry: InboxEntry) -> None:
        """A fired schedule (or heartbeat), in the inbox already: to its session, behind
        what waits there, answered on its channel as a recovered message would be. On a
        shared inbox, by the replica that holds the session (every replica's scheduler
        fires, the inbox key lets one of them add the row)."""
        if self.leases is not None:
            if self._nursery is not None:
                self._nursery.start_soon(self._take_up_waiting, entry.session_key)
            return
        job, self._waiting[entry.id] = self._job(entry.id, self._recovered(entry))
        self._backlog.setdefault(entry.session_key, deque()).append(job)
        self._feed_backlog()
        if self._backlog and not self._catching_up and self._nursery is not None:
            self._nursery.start_soon(self._catch_up)

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
        if not self.accepting:
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
