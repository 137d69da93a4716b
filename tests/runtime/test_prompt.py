"""The token budget: what goes into the prompt, in which order, and never more than allowed."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx2
import pytest

from runtime.botcore import HistoryEntry, Identity, Memory, MemoryType
from runtime.llm import AssistantTurn, ModelRequest, UserText
from runtime.prompt import MESSAGE_OVERHEAD, _tools_text, build_request
from runtime.testing import local_config, serve_bot
from runtime.tokens import TokenCounter
from runtime.tools import builtin_tools

COUNTER = TokenCounter()
TOOLS = tuple(tool.spec for tool in builtin_tools())


def memories(n: int, words: int = 12) -> list[Memory]:
    return [
        Memory(i, f"memory number {i} " + "detail " * words, MemoryType.FACTUAL, 0.5, 0.0)
        for i in range(n)
    ]


def history(turns: int, words: int = 30) -> list[HistoryEntry]:
    entries = []
    for i in range(turns):
        entries.append(HistoryEntry("user", f"question {i}: " + "blah " * words, f"t{i}", 0.0))
        entries.append(HistoryEntry("assistant", f"answer {i}: " + "yes " * words, f"t{i}", 0.0))
    return entries


def spent(request: ModelRequest) -> int:
    """Recount what is really in the request, the last (user's own) message excluded."""
    count = COUNTER.count
    total = count(request.system) + count(_tools_text(request.tools))
    if request.context:
        total += count(request.context)
    for message in request.messages[:-1]:
        assert isinstance(message, UserText | AssistantTurn)
        total += count(message.text) + MESSAGE_OVERHEAD
    return total


@pytest.mark.parametrize(
    ("identity_words", "n_memories", "turns", "budget"),
    list(itertools.product([5, 300, 3000], [0, 8, 40], [0, 3, 30], [600, 2000])),
)
def test_the_budget_is_never_exceeded(
    identity_words: int, n_memories: int, turns: int, budget: int
) -> None:
    identity = Identity(name="Pip", soul="Be kind. " * identity_words)
    request, tokens = build_request(
        identity,
        memories(n_memories),
        history(turns),
        "and now?",
        TOOLS,
        budget=budget,
        counter=COUNTER,
    )
    assert tokens.total <= budget
    assert spent(request) <= budget + 2  # joins between context parts
    assert request.messages[-1] == UserText("and now?")
    assert request.system.startswith("You are Pip.")  # identity comes first, even cut


def test_best_memories_first_then_recent_history_then_a_summary_of_the_rest() -> None:
    request, tokens = build_request(
        Identity(name="Pip"),
        memories(60, words=20),
        history(20),
        "what now?",
        TOOLS,
        budget=2000,
        counter=COUNTER,
    )
    kept = 60 - tokens.memories_left_out
    assert 0 < kept < 60
    assert f"memory number {kept - 1} " in request.context
    assert f"memory number {kept} " not in request.context
    first, *_ = request.messages
    assert isinstance(first, UserText) and first.text.startswith("question ")
    assert "answer 19:" in request.messages[-2].text  # the latest turn is in full
    assert tokens.history_left_out > 0 and tokens.summary > 0
    assert "## Earlier in this conversation" in request.context
    assert "question 0:" not in "".join(m.text for m in request.messages)


def test_small_conversations_fit_whole() -> None:
    request, tokens = build_request(
        Identity(name="Pip"), memories(3), history(2), "hi", TOOLS, budget=2000, counter=COUNTER
    )
    assert tokens.memories_left_out == tokens.history_left_out == tokens.summary == 0
    assert len(request.messages) == 5


async def test_the_reply_says_where_the_tokens_went(
    workspace: Path, client: httpx2.AsyncClient
) -> None:
    async with serve_bot(local_config(workspace, prompt_token_budget=1200)) as bot:
        await client.post(f"{bot.url}/api/message", json={"message": "remember the boat is blue"})
        body = (await client.post(f"{bot.url}/api/message", json={"message": "recall boat"})).json()
    tokens = body["metadata"]["prompt_tokens"]
    assert tokens["budget"] == 1200 and 0 < tokens["total"] <= 1200
    assert tokens["identity"] > 0 and tokens["tools"] > 0 and tokens["message"] > 0
