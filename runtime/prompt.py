"""Builds the model request from who the bot is, what it remembers, and the conversation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from runtime.botcore import HistoryEntry, Identity, Memory, MemoryType
from runtime.llm import AssistantTurn, Message, ModelRequest, ToolSpec, UserText
from runtime.tokens import TokenCounter
from runtime.tools.catalogue import SEARCH, fit_tools, tools_text


def system_prompt(identity: Identity) -> str:
    """The stable part: identity, soul and user, in that order. Cacheable by providers."""
    intro = f"You are {identity.display_name}."
    traits = [
        f"You are a {identity.creature}." if identity.creature else "",
        f"Your vibe: {identity.vibe}." if identity.vibe else "",
        f"Your emoji: {identity.emoji}" if identity.emoji else "",
    ]
    parts = [" ".join(filter(None, [intro, *traits]))]
    for title, text in (
        ("Identity", identity.identity),
        ("Soul", identity.soul),
        ("About the user", identity.user),
    ):
        if text.strip():
            parts.append(f"# {title}\n{text.strip()}")
    parts.append(
        "Use your tools to read and write files in your workspace and to store and recall "
        "memories. Store what the user asks you to remember."
    )
    return "\n\n".join(parts)


def memory_context(memories: Sequence[Memory]) -> str:
    """The part that changes each turn: the memories recalled for this message."""
    lines = [f"## What you remember ({len(memories)})"]
    lines.extend(_memory_line(m) for m in memories)
    return "\n".join(lines)


def _memory_line(memory: Memory) -> str:
    """An episode shows when it was said (UTC) and by whom, so "when did…" has an answer."""
    if memory.type is not MemoryType.EPISODIC:
        return f"- [{memory.type.value}] {memory.content}"
    said = datetime.fromtimestamp(memory.created_at, UTC).strftime("%a %d %b %Y %H:%M UTC")
    who = f", from {memory.speaker}" if memory.speaker else ""
    return f"- [episodic, {said}{who}] {memory.content}"


MESSAGE_OVERHEAD = 4
"""Tokens a message costs beyond its text (role and separators), as OpenAI counts them."""
SUMMARY_TOKENS = 150
"""At most this much of the budget goes to the summary of older history."""


@attrs.frozen
class PromptTokens:
    """Where the prompt's tokens went; `total` is within `budget` (the user's message,
    `message`, is not counted against it)."""

    budget: int
    identity: int
    tools: int
    memories: int
    history: int
    summary: int
    message: int
    memories_left_out: int
    history_left_out: int
    tools_left_out: int = 0

    @property
    def total(self) -> int:
        return self.identity + self.tools + self.memories + self.history + self.summary

    def as_dict(self) -> dict[str, int]:
        return {**attrs.asdict(self), "total": self.total}


def build_request(
    identity: Identity,
    memories: Sequence[Memory],
    history: Sequence[HistoryEntry],
    text: str,
    tools: tuple[ToolSpec, ...],
    *,
    max_tokens: int = 1024,
    budget: int = 2000,
    counter: TokenCounter,
) -> tuple[ModelRequest, PromptTokens]:
    """The request for one turn, fitted into `budget` tokens: identity first, the tools'
    definitions, then the most relevant memories (up to half of what is left), then the most
    recent history, and older history as a short running summary. When all the tools'
    definitions would take too much, those most relevant to `text` go in full and the others
    by name in a catalogue the model can search (see `runtime.tools.catalogue`). Only a
    budget too small for identity and tools costs tools (the last ones, in `tools_left_out`)."""
    count = counter.count
    system = system_prompt(identity)
    if count(system) > budget:  # an identity larger than the budget is cut, the budget kept
        system = counter.truncate(system, budget)
    identity_tokens = count(system)
    left = budget - identity_tokens
    fitted, more = fit_tools(tools, text, left, count)
    tool_tokens = count(_tools_text(fitted)) if fitted else 0
    if more:  # the catalogue of the tools not sent: stable, so it goes with the system prompt
        system = f"{system}\n\n{counter.truncate(more, max(0, (left - tool_tokens) // 3))}"
        tool_tokens = count(system) - identity_tokens + count(_tools_text(fitted))
    left -= tool_tokens

    chosen: list[Memory] = []
    memory_tokens = count(memory_context(())) + 1
    for memory in memories:
        cost = count(_memory_line(memory)) + 1
        if memory_tokens + cost > left // 2:
            break
        chosen.append(memory)
        memory_tokens += cost
    if memory_tokens > left:
        memory_tokens = 0
    left -= memory_tokens

    kept: list[HistoryEntry] = []
    history_tokens = 0
    reserve = min(SUMMARY_TOKENS, left // 4) if history else 0
    for entry in reversed(history):
        cost = count(entry.content) + MESSAGE_OVERHEAD
        if history_tokens + cost > left - reserve:
            break
        kept.append(entry)
        history_tokens += cost
    kept.reverse()
    while kept and kept[0].role != "user":  # a conversation starts with the user
        history_tokens -= count(kept.pop(0).content) + MESSAGE_OVERHEAD
    left -= history_tokens

    older = history[: len(history) - len(kept)]
    context = memory_context(chosen) if memory_tokens else ""
    summary_tokens = 0
    if older and left > 16:
        summary = counter.truncate(_summary(older), min(SUMMARY_TOKENS, left - 2))
        summary_tokens = count(summary) + 2
        context = f"{context}\n\n{summary}" if context else summary

    messages: list[Message] = [
        UserText(entry.content) if entry.role == "user" else AssistantTurn(entry.content)
        for entry in kept
    ]
    messages.append(UserText(text))
    request = ModelRequest(
        system=system,
        context=context,
        messages=tuple(messages),
        tools=fitted,
        max_tokens=max_tokens,
    )
    return request, PromptTokens(
        budget=budget,
        identity=identity_tokens,
        tools=tool_tokens,
        memories=memory_tokens,
        history=history_tokens,
        summary=summary_tokens,
        message=count(text) + MESSAGE_OVERHEAD,
        memories_left_out=len(memories) - len(chosen),
        history_left_out=len(older),
        tools_left_out=len({t.name for t in tools} - {t.name for t in fitted} - {SEARCH})
        if not more
        else 0,
    )


def _summary(older: Sequence[HistoryEntry]) -> str:
    """Older turns in a few words: what the user said, the latest first."""
    said = [" ".join(e.content.split())[:200] for e in reversed(older) if e.role == "user"]
    return "## Earlier in this conversation, the user said\n" + "\n".join(f"- {s}" for s in said)


def _tools_text(tools: tuple[ToolSpec, ...]) -> str:
    """The tools as a provider sends them, to count."""
    return tools_text(tools)
