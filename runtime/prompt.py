"""Builds the model request from who the bot is, what it remembers, and the conversation."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.botcore import HistoryEntry, Identity, Memory
from runtime.llm import AssistantTurn, Message, ModelRequest, ToolSpec, UserText


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
    lines.extend(f"- [{m.type.value}] {m.content}" for m in memories)
    return "\n".join(lines)


def build_request(
    identity: Identity,
    memories: Sequence[Memory],
    history: Sequence[HistoryEntry],
    text: str,
    tools: tuple[ToolSpec, ...],
    *,
    max_tokens: int = 1024,
) -> ModelRequest:
    messages: list[Message] = [
        UserText(entry.content) if entry.role == "user" else AssistantTurn(entry.content)
        for entry in history
    ]
    messages.append(UserText(text))
    return ModelRequest(
        system=system_prompt(identity),
        context=memory_context(memories),
        messages=tuple(messages),
        tools=tools,
        max_tokens=max_tokens,
    )
