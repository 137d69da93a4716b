"""The bot's memory as JSON, for the HTTP API (`/api/v1/memory/*`) and `botcorebot memory`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from runtime.botcore import Bot, InvalidMemory, Memory, Summarize, consolidate
from runtime.botcore._memory import check


def memory_json(memory: Memory) -> dict[str, Any]:
    return {
        "id": memory.id,
        "content": memory.content,
        "type": memory.type.value,
        "importance": memory.importance,
        "confidence": memory.confidence,
        "strength": memory.strength,
        "created_at": memory.created_at,
        "accessed_at": memory.accessed_at,
        "access_count": memory.access_count,
        "metadata": dict(memory.metadata),
        "speaker": memory.speaker,
        "conversation": memory.conversation,
    }


def memory_from_json(data: object) -> Memory:
    """One exported memory (a line of `memory export`); `InvalidMemory` says what is wrong."""
    if not isinstance(data, dict):
        raise InvalidMemory("expected a JSON object")
    content, kind, metadata = (
        data.get("content"),
        data.get("type", "factual"),
        data.get("metadata", {}),
    )
    if not isinstance(content, str) or not isinstance(kind, str):
        raise InvalidMemory("'content' and 'type' must be strings")
    if not isinstance(metadata, dict):
        raise InvalidMemory("'metadata' must be an object")

    def number(name: str, default: float) -> float:
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidMemory(f"'{name}' must be a number")
        return float(value)

    speaker, conversation = data.get("speaker"), data.get("conversation")
    if not all(value is None or isinstance(value, str) for value in (speaker, conversation)):
        raise InvalidMemory("'speaker' and 'conversation' must be strings")
    content, memory_type, importance = check(content, kind, number("importance", 0.5))
    created = number("created_at", time.time())
    accessed = number("accessed_at", created)
    uses = int(number("access_count", 0))
    return Memory(
        0,
        content,
        memory_type,
        importance,
        created,
        accessed_at=accessed,
        access_count=uses,
        metadata=metadata,
        speaker=speaker,
        conversation=conversation,
    )


class MemoryApi:
    """What the HTTP API and the CLI do with memory, in JSON-ready shapes."""

    def __init__(self, bot: Bot, summarize: Summarize | None = None) -> None:
        self._bot = bot
        self._summarize = summarize

    async def recall(
        self, query: str, limit: int, types: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        found = await self._bot.memory.recall(query, limit=limit, types=types)
        return [memory_json(m) for m in found]

    async def store(
        self, content: str, type: str, importance: float, metadata: Mapping[str, Any]
    ) -> int:
        return await self._bot.memory.store(
            content, type=type, importance=importance, metadata=metadata
        )

    async def consolidate(self) -> dict[str, Any]:
        stats = await consolidate(self._bot.db, summarize=self._summarize)
        return {
            "consolidated": True,
            "stats": {
                "memories_before": stats.memories_before,
                "memories_after": stats.memories_after,
                "merged": stats.merged,
                "forgotten": stats.forgotten,
            },
        }

    async def stats(self) -> dict[str, Any]:
        return attrs.asdict(await self._bot.memory.stats())

    async def export(self) -> Iterable[str]:
        """JSON Lines, oldest first."""
        exported = await self._bot.memory.export()
        fields = ("confidence", "strength")
        return (
            json.dumps(
                {k: v for k, v in memory_json(m).items() if k not in fields}, ensure_ascii=False
            )
            for m in exported
        )
