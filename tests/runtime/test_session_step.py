"""Each transition of the turn, alone: (state, event) -> (state, effect)."""

from __future__ import annotations

import attrs
import pytest

from adapters import ReplyError
from runtime.botcore import Identity, Memory, MemoryType
from runtime.llm import (
    AssistantTurn,
    ModelRequest,
    ModelResponse,
    Retries,
    StopReason,
    ToolCall,
    ToolResult,
    ToolResults,
    Usage,
    UserText,
)
from runtime.prompt import PromptTokens
from runtime.session import (
    BuildPrompt,
    CallModel,
    EffectFailed,
    IllegalTransition,
    ModelAnswered,
    Phase,
    PromptBuilt,
    Recall,
    Recalled,
    Replied,
    RunTools,
    SendReply,
    Start,
    Store,
    Stored,
    ToolsFinished,
    Turn,
    TurnLimits,
    step,
)

LIMITS = TurnLimits(max_tool_rounds=2, recall_limit=3, history_limit=4, prompt_token_budget=900)
REQUEST = ModelRequest("system", "context", (UserText("hi"),))
MEMORY = Memory(1, "my cat is called Miso", MemoryType.FACTUAL, 0.5, 0.0, 1.0)
CALL = ToolCall("t1", "memory_store", {"content": "x"})


def turn(phase: Phase, **changes: object) -> Turn:
    base = Turn(turn_id="t", session_id="s", text="hi", phase=phase, visited=(phase,))
    return base if not changes else base.to(phase, **changes)


def answer(text: str = "", calls: tuple[ToolCall, ...] = (), tokens: int = 5) -> ModelAnswered:
    stop = StopReason.TOOL_USE if calls else StopReason.END_TURN
    return ModelAnswered(ModelResponse(text, calls, stop, Usage(tokens, 1), "m", Retries(1, 0.5)))


def test_received_starts_recalling_with_the_message_as_query() -> None:
    nxt, effect = step(turn(Phase.RECEIVED), Start(), LIMITS)
    assert nxt.phase is Phase.RECALLING
    assert effect == Recall("hi", 3, 4)


def test_recalled_memories_go_into_the_prompt() -> None:
    event = Recalled(Identity(name="Pip"), (MEMORY,), ())
    nxt, effect = step(turn(Phase.RECALLING), event, LIMITS)
    assert nxt.phase is Phase.PROMPTING and nxt.memories == (MEMORY,)
    assert effect == BuildPrompt(Identity(name="Pip"), (MEMORY,), (), "hi", 1024, 900)


def test_built_prompt_is_sent_to_the_model_with_the_memories_that_fit() -> None:
    other = attrs.evolve(MEMORY, id=2, content="a memory that did not fit")
    tokens = PromptTokens(900, 100, 300, 20, 0, 0, 5, memories_left_out=1, history_left_out=0)
    prompting = turn(Phase.PROMPTING, memories=(MEMORY, other))
    nxt, effect = step(prompting, PromptBuilt(REQUEST, tokens), LIMITS)
    assert nxt.phase is Phase.CALLING_MODEL and nxt.request == REQUEST
    assert nxt.memories == (MEMORY,) and nxt.prompt_tokens == tokens
    assert effect == CallModel(REQUEST)
    assert dict(nxt.reply().prompt_tokens)["total"] == 420


def test_a_plain_answer_is_stored_with_its_usage() -> None:
    nxt, effect = step(turn(Phase.CALLING_MODEL, request=REQUEST), answer("hello"), LIMITS)
    assert nxt.phase is Phase.STORING and nxt.answer == "hello"
    assert nxt.usage == Usage(5, 1) and nxt.retries == Retries(1, 0.5)
    assert isinstance(effect, Store) and effect.reply.message == "hello"


def test_tool_calls_are_dispatched_and_remembered_in_the_request() -> None:
    nxt, effect = step(turn(Phase.CALLING_MODEL, request=REQUEST), answer("", (CALL,)), LIMITS)
    assert nxt.phase is Phase.DISPATCHING_TOOLS
    assert effect == RunTools((CALL,))
    assert nxt.request is not None and nxt.request.messages[-1] == AssistantTurn("", (CALL,))


def test_tool_results_go_back_to_the_model_with_their_ids() -> None:
    result = ToolResult("t1", "memory_store", "stored")
    nxt, effect = step(
        turn(Phase.DISPATCHING_TOOLS, request=REQUEST), ToolsFinished((result,)), LIMITS
    )
    assert nxt.phase is Phase.CALLING_MODEL and nxt.rounds == 1 and nxt.tools_used == 1
    assert isinstance(effect, CallModel)
    assert effect.request.messages[-1] == ToolResults((result,))


def test_the_tool_loop_is_bounded() -> None:
    busy = turn(Phase.CALLING_MODEL, request=REQUEST, rounds=LIMITS.max_tool_rounds)
    nxt, effect = step(busy, answer("", (CALL,)), LIMITS)
    assert nxt.phase is Phase.FAILED
    assert nxt.error is not None and nxt.error.kind == "tool_rounds"
    assert isinstance(effect, SendReply) and "2 rounds" in effect.reply.message


def test_stored_turn_is_replied_with_metadata() -> None:
    storing = turn(Phase.STORING, answer="hello", memories=(MEMORY,), tools_used=2)
    nxt, effect = step(storing, Stored(), LIMITS)
    assert nxt.phase is Phase.REPLYING
    assert isinstance(effect, SendReply)
    reply = effect.reply
    assert (reply.message, reply.memories_recalled, reply.tools_used) == ("hello", 1, 2)
    assert reply.states[-2:] == ("storing", "replying")


def test_replied_turn_is_done_with_nothing_left_to_do() -> None:
    nxt, effect = step(turn(Phase.REPLYING), Replied(), LIMITS)
    assert nxt.phase is Phase.DONE and effect is None


@pytest.mark.parametrize(
    "phase",
    [Phase.RECALLING, Phase.PROMPTING, Phase.CALLING_MODEL, Phase.DISPATCHING_TOOLS, Phase.STORING],
)
def test_a_failed_effect_fails_the_turn_with_a_clear_reply(phase: Phase) -> None:
    error = ReplyError("provider", "Anthropic is rate limiting us (429)")
    nxt, effect = step(turn(phase), EffectFailed(error), LIMITS)
    assert nxt.phase is Phase.FAILED and nxt.error == error
    assert isinstance(effect, SendReply)
    assert effect.reply.error == error
    assert "rate limiting" in effect.reply.message


def test_failed_turn_ends_once_its_error_reply_is_out() -> None:
    failed = turn(Phase.FAILED, error=ReplyError("timeout", "too slow"))
    nxt, effect = step(failed, Replied(), LIMITS)
    assert nxt is failed and effect is None


def test_an_event_out_of_place_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="Stored cannot happen in state recalling"):
        step(turn(Phase.RECALLING), Stored(), LIMITS)
