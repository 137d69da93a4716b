"""The session actor and its turn, an explicit state machine.

    Received → Recalling → Prompting → CallingModel ⇄ DispatchingTools → Storing → Replying → Done
                                                     (any state) ↘ Failed

`step(turn, event)` is pure: it never reads a clock or touches the network. It returns the next
turn and at most one *effect* (recall, build the prompt, call the model, run tools, store, reply);
`SessionActor` performs the effect and feeds its result back as the next event, as OTP's
gen_statem does. Every transition is logged with the time spent in the state it leaves.
"""

from __future__ import annotations

import enum
import logging
import uuid

import attrs
import trio

from adapters import Inbound, Reply, ReplyError, TextDelta, ToolProgress
from runtime.botcore import Bot, FileTools, HistoryEntry, Identity, Memory, MemoryType, TaskGraph
from runtime.inbox import Inbox
from runtime.leases import Lease
from runtime.llm import (
    AssistantTurn,
    ModelRequest,
    ModelResponse,
    Provider,
    ProviderError,
    Retries,
    ToolCall,
    ToolResult,
    ToolResults,
    ToolSpec,
    Usage,
)
from runtime.logs import Redactor
from runtime.metrics import Metrics
from runtime.prompt import PromptTokens, build_request
from runtime.schedules import Schedules
from runtime.tokens import TokenCounter
from runtime.tools import ToolContext, ToolExecutor, ToolRegistry
from runtime.tools.catalogue import loaded

log = logging.getLogger("runtime.session")


class Phase(enum.StrEnum):
    RECEIVED = "received"
    RECALLING = "recalling"
    PROMPTING = "prompting"
    CALLING_MODEL = "calling_model"
    DISPATCHING_TOOLS = "dispatching_tools"
    STORING = "storing"
    REPLYING = "replying"
    DONE = "done"
    FAILED = "failed"


@attrs.frozen
class TurnLimits:
    max_tool_rounds: int = 8
    max_tool_calls: int = 32
    recall_limit: int = 8
    history_limit: int = 40
    max_tokens: int = 1024
    prompt_token_budget: int = 2000


@attrs.frozen
class Turn:
    """Everything one turn has learned so far; each transition carries it forward."""

    turn_id: str
    session_id: str
    text: str
    phase: Phase = Phase.RECEIVED
    visited: tuple[Phase, ...] = (Phase.RECEIVED,)
    memories: tuple[Memory, ...] = ()
    request: ModelRequest | None = None
    prompt_tokens: PromptTokens | None = None
    answer: str = ""
    rounds: int = 0
    tools_used: int = 0
    usage: Usage = attrs.field(factory=Usage)
    model: str = ""
    retries: Retries = Retries()
    error: ReplyError | None = None

    def to(self, phase: Phase, **changes: object) -> Turn:
        return attrs.evolve(self, phase=phase, visited=(*self.visited, phase), **changes)  # type: ignore[arg-type]

    def reply(self) -> Reply:
        message = (
            self.answer
            if self.error is None
            else f"Sorry, I could not answer: {self.error.message}"
        )
        return Reply(
            message=message,
            session_id=self.session_id,
            turn_id=self.turn_id,
            memories_recalled=len(self.memories),
            prompt_tokens=(
                tuple(self.prompt_tokens.as_dict().items()) if self.prompt_tokens else ()
            ),
            tools_used=self.tools_used,
            states=tuple(p.value for p in self.visited),
            model=self.model,
            usage=(
                *self.usage.as_dict().items(),
                ("retries", self.retries.count),
                ("retry_wait_ms", round(self.retries.waited * 1000)),
            ),
            error=self.error,
        )


# Events: what happened, fed into `step`.
@attrs.frozen
class Start:
    pass


@attrs.frozen
class Recalled:
    identity: Identity
    memories: tuple[Memory, ...]
    history: tuple[HistoryEntry, ...]


@attrs.frozen
class PromptBuilt:
    request: ModelRequest
    tokens: PromptTokens


@attrs.frozen
class ModelAnswered:
    response: ModelResponse


@attrs.frozen
class ToolsFinished:
    results: tuple[ToolResult, ...]
    loaded: tuple[ToolSpec, ...] = ()
    """Definitions `tool_search` loaded: the model may call them from its next answer on."""


@attrs.frozen
class Stored:
    pass


@attrs.frozen
class Replied:
    pass


@attrs.frozen
class EffectFailed:
    error: ReplyError
    retries: Retries = Retries()


Event = (
    Start | Recalled | PromptBuilt | ModelAnswered | ToolsFinished | Stored | Replied | EffectFailed
)


# Effects: what the actor must do next.
@attrs.frozen
class Recall:
    query: str
    limit: int
    history_limit: int


@attrs.frozen
class BuildPrompt:
    identity: Identity
    memories: tuple[Memory, ...]
    history: tuple[HistoryEntry, ...]
    text: str
    max_tokens: int
    budget: int


@attrs.frozen
class CallModel:
    request: ModelRequest


@attrs.frozen
class RunTools:
    calls: tuple[ToolCall, ...]


@attrs.frozen
class Store:
    text: str
    reply: Reply


@attrs.frozen
class SendReply:
    reply: Reply


Effect = Recall | BuildPrompt | CallModel | RunTools | Store | SendReply


class IllegalTransition(Exception):
    """An event arrived in a state that cannot take it: a bug, so the actor crashes."""


def step(turn: Turn, event: Event, limits: TurnLimits) -> tuple[Turn, Effect | None]:
    """The turn's transition function: (turn, event) → (next turn, effect to perform)."""
    phase = turn.phase
    if isinstance(event, EffectFailed) and phase not in (Phase.DONE, Phase.FAILED):
        failed = turn.to(Phase.FAILED, error=event.error, retries=turn.retries + event.retries)
        return failed, SendReply(failed.reply())
    match phase, event:
        case Phase.RECEIVED, Start():
            return turn.to(Phase.RECALLING), Recall(
                turn.text, limits.recall_limit, limits.history_limit
            )
        case Phase.RECALLING, Recalled(identity, memories, history):
            return turn.to(Phase.PROMPTING, memories=memories), BuildPrompt(
                identity,
                memories,
                history,
                turn.text,
                limits.max_tokens,
                limits.prompt_token_budget,
            )
        case Phase.PROMPTING, PromptBuilt(request, tokens):
            # The model sees the best memories that fit the budget: a prefix of those recalled.
            seen = turn.memories[: len(turn.memories) - tokens.memories_left_out]
            return turn.to(
                Phase.CALLING_MODEL, request=request, prompt_tokens=tokens, memories=seen
            ), CallModel(request)
        case Phase.CALLING_MODEL, ModelAnswered(response):
            return _answered(turn, response, limits)
        case Phase.DISPATCHING_TOOLS, ToolsFinished(results, loaded):
            assert turn.request is not None
            offered = {spec.name for spec in turn.request.tools}
            request = attrs.evolve(
                turn.request,
                messages=(*turn.request.messages, ToolResults(results)),
                tools=(*turn.request.tools, *(s for s in loaded if s.name not in offered)),
            )
            return turn.to(
                Phase.CALLING_MODEL,
                request=request,
                rounds=turn.rounds + 1,
                tools_used=turn.tools_used + len(results),
            ), CallModel(request)
        case Phase.STORING, Stored():
            replying = turn.to(Phase.REPLYING)
            return replying, SendReply(replying.reply())
        case Phase.REPLYING, Replied():
            return turn.to(Phase.DONE), None
        case Phase.FAILED, Replied():
            return turn, None
    raise IllegalTransition(f"{type(event).__name__} cannot happen in state {phase.value}")


def _answered(
    turn: Turn, response: ModelResponse, limits: TurnLimits
) -> tuple[Turn, Effect | None]:
    usage, retries = turn.usage + response.usage, turn.retries + response.retries
    model = response.model or turn.model
    if not response.tool_calls:
        storing = turn.to(
            Phase.STORING, answer=response.text, usage=usage, retries=retries, model=model
        )
        return storing, Store(turn.text, storing.to(Phase.REPLYING).reply())
    if turn.rounds >= limits.max_tool_rounds:
        error = ReplyError(
            "tool_rounds",
            f"the model was still calling tools after {limits.max_tool_rounds} rounds; "
            "try a simpler request",
        )
        failed = turn.to(Phase.FAILED, usage=usage, retries=retries, model=model, error=error)
        return failed, SendReply(failed.reply())
    assert turn.request is not None
    request = attrs.evolve(
        turn.request,
        messages=(*turn.request.messages, AssistantTurn(response.text, response.tool_calls)),
    )
    return turn.to(
        Phase.DISPATCHING_TOOLS, request=request, usage=usage, retries=retries, model=model
    ), RunTools(response.tool_calls)


@attrs.frozen
class Job:
    """A message in a session's mailbox: the inbound event and its row in the inbox."""

    inbound: Inbound
    inbox_id: int
    lease: Lease | None = attrs.field(default=None, eq=False)
    """The session's lease this replica handles the message under (PostgreSQL); the turn's
    writes are fenced by its epoch."""
    outbox: bool = False
    """Whether its channel sends the answer itself (and says when it got there): the answer
    is kept in the outbox until then."""


@attrs.frozen
class SessionServices:
    """What every session actor shares."""

    bot: Bot
    provider: Provider
    tools: ToolRegistry
    executor: ToolExecutor
    inbox: Inbox
    metrics: Metrics = attrs.field(factory=Metrics)
    limits: TurnLimits = TurnLimits()
    turn_timeout: float = 120.0
    tokens: TokenCounter = attrs.field(factory=TokenCounter)
    files: FileTools | None = None
    """The file tools configured for the runtime; the bot's own when None."""
    tasks: TaskGraph | None = None
    redact: Redactor = attrs.field(factory=Redactor)
    """Takes configured secrets out of the user's text and the model's answer."""
    schedules: Schedules | None = None
    """The bot's schedules, for the `schedule` tool."""


class SessionActor:
    """Runs the turns of one session, one message at a time.

    Expected failures (the provider down, the turn too slow) end the turn in `Failed` with a
    reply that says so. Anything else is a bug or a broken database: it propagates, and the
    supervisor restarts the actor and hands it the same job again.
    """

    def __init__(self, session_key: str, services: SessionServices) -> None:
        self.session_key = session_key
        self._services = services

    async def handle(self, job: Job) -> None:
        services = self._services
        await services.inbox.processing(job.inbox_id, lease=job.lease)
        turn = Turn(
            turn_id=uuid.uuid4().hex[:12],
            session_id=job.inbound.session_id,
            text=services.redact(job.inbound.text),
        )
        event: Event = Start()
        started = entered = trio.current_time()
        with trio.move_on_after(services.turn_timeout) as deadline:
            while True:
                turn, effect = step(turn, event, services.limits)
                entered = self._transition(turn, entered)
                if effect is None:
                    self._finished(turn, started)
                    return
                # Storing and replying are short writes that must not be cut in half.
                with trio.CancelScope(shield=isinstance(effect, Store | SendReply)):
                    event = await self._perform(effect, turn, job, started)
        # The turn ran out of time: fail it through the same machine, outside the deadline.
        if deadline.cancelled_caught and turn.phase not in (Phase.DONE, Phase.FAILED):
            error = ReplyError("timeout", f"the turn took longer than {services.turn_timeout:g}s")
            turn, effect = step(turn, EffectFailed(error), services.limits)
            self._transition(turn, entered)
            assert effect is not None
            await self._perform(effect, turn, job, started)
            self._finished(turn, started)

    def _transition(self, turn: Turn, entered: float) -> float:
        now = trio.current_time()
        if log.isEnabledFor(logging.DEBUG):
            previous = turn.visited[-2].value if len(turn.visited) > 1 else "-"
            duration = round((now - entered) * 1000, 2)
            log.debug(
                "session=%s turn=%s %s -> %s after %.1fms",
                self.session_key,
                turn.turn_id,
                previous,
                turn.phase.value,
                duration,
                extra={
                    "session": self.session_key,
                    "turn": turn.turn_id,
                    "state": previous,
                    "next_state": turn.phase.value,
                    "duration_ms": duration,
                },
            )
        return now

    def _finished(self, turn: Turn, started: float) -> None:
        seconds = trio.current_time() - started
        outcome = "ok" if turn.error is None else turn.error.kind
        self._services.metrics.turns.inc(outcome=outcome)
        self._services.metrics.turn_latency.observe(seconds)
        log.info(
            "session=%s turn=%s %s in %.1fms (%d tool call%s)",
            self.session_key,
            turn.turn_id,
            outcome,
            seconds * 1000,
            turn.tools_used,
            "" if turn.tools_used == 1 else "s",
            extra={
                "session": self.session_key,
                "turn": turn.turn_id,
                "state": turn.phase.value,
                "outcome": outcome,
                "duration_ms": round(seconds * 1000, 2),
            },
        )

    async def _perform(self, effect: Effect, turn: Turn, job: Job, started: float) -> Event:
        services, inbound = self._services, job.inbound
        bot = services.bot
        match effect:
            case Recall(query, limit, history_limit):
                identity = await bot.identity.load()
                history = await bot.history.recent(self.session_key, history_limit)
                memories = await bot.memory.recall(query, limit=limit + _SPARE)
                return Recalled(identity, _beyond(memories, history, limit), tuple(history))
            case BuildPrompt(identity, memories, history, text, max_tokens, budget):
                request, tokens = build_request(
                    identity,
                    memories,
                    history,
                    text,
                    services.tools.specs(),
                    max_tokens=max_tokens,
                    budget=budget,
                    counter=services.tokens,
                )
                return PromptBuilt(request, tokens)
            case CallModel(request):
                on_text = lambda piece: inbound.responder.progress(  # noqa: E731
                    TextDelta(piece) if isinstance(piece, str) else piece
                )
                metrics = services.metrics
                called = trio.current_time()
                try:
                    # The provider limits its own calls at once (adaptively, for an SDK one).
                    response = await services.provider.complete(request, on_text=on_text)
                except ProviderError as exc:
                    metrics.model_retries.inc(exc.retries.count)
                    return EffectFailed(ReplyError("provider", str(exc)), exc.retries)
                finally:
                    metrics.model_latency.observe(trio.current_time() - called)
                metrics.model_retries.inc(response.retries.count)
                for kind, count in response.usage.as_dict().items():
                    metrics.tokens.inc(count, kind=kind.removesuffix("_tokens"))
                if services.redact:
                    response = attrs.evolve(
                        response,
                        text=services.redact(response.text),
                        tool_calls=tuple(
                            attrs.evolve(c, arguments=services.redact.value(c.arguments))
                            for c in response.tool_calls
                        ),
                    )
                return ModelAnswered(response)
            case RunTools(calls):
                context = ToolContext(
                    bot,
                    self.session_key,
                    services.files or bot.tools.fs,
                    services.tasks or bot.tasks,
                    inbox_id=job.inbox_id,
                    schedules=services.schedules,
                )
                cap = services.limits.max_tool_calls

                def progress(call: ToolCall, result: ToolResult | None) -> None:
                    inbound.responder.progress(
                        ToolProgress(call.name, call.id, "start")
                        if result is None
                        else ToolProgress(call.name, call.id, "end", is_error=result.is_error)
                    )

                results = list(await services.executor.run_all(calls[:cap], context, progress))
                skipped = (
                    f"not run: at most {cap} tool calls are run per answer, and this answer "
                    f"had {len(calls)}; call the rest again in the next answer if still needed"
                )
                results += [ToolResult(c.id, c.name, skipped, True) for c in calls[cap:]]
                return ToolsFinished(tuple(results), loaded(services.tools, calls, results))
            case Store(text, reply):
                reply = _timed(reply, started)
                await services.inbox.complete(
                    job.inbox_id,
                    self.session_key,
                    [("user", text), ("assistant", reply.message)],
                    dict(reply.usage),
                    reply,
                    lease=job.lease,
                    outbox=job.outbox,
                )
                return Stored()
            case SendReply(reply):
                reply = _timed(reply, started)
                if reply.error is not None:
                    # A failed turn leaves no history, only its reply on the inbox row.
                    await services.inbox.complete(
                        job.inbox_id,
                        self.session_key,
                        [],
                        dict(reply.usage),
                        reply,
                        lease=job.lease,
                        outbox=job.outbox,
                    )
                inbound.responder.reply(reply)
                return Replied()
        raise AssertionError(f"unknown effect {effect!r}")


_SPARE = 4
"""Memories recalled beyond the limit, in case some are episodes already in the history."""


def _beyond(memories: list[Memory], history: list[HistoryEntry], limit: int) -> tuple[Memory, ...]:
    """The memories, without the episodes of turns the prompt has as history anyway."""
    turns = {entry.turn_id for entry in history}
    fresh = [
        m
        for m in memories
        if not (m.type is MemoryType.EPISODIC and m.metadata.get("turn") in turns)
    ]
    return tuple(fresh[:limit])


def _timed(reply: Reply, started: float) -> Reply:
    return attrs.evolve(reply, duration_ms=round((trio.current_time() - started) * 1000, 1))
