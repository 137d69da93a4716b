"""Anthropic's Messages API on the official SDK (`AsyncAnthropic`), always streamed."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import attrs

from runtime.llm._sdk import SdkProvider
from runtime.llm.base import (
    AssistantTurn,
    Message,
    ModelRequest,
    ModelResponse,
    OnText,
    ProviderUnavailable,
    StopReason,
    ToolCall,
    ToolResults,
    Usage,
    UserText,
)

_STOP = {
    "end_turn": StopReason.END_TURN,
    "stop_sequence": StopReason.END_TURN,
    "tool_use": StopReason.TOOL_USE,
    "max_tokens": StopReason.MAX_TOKENS,
}


class AnthropicProvider(SdkProvider[anthropic.AsyncAnthropic]):
    label = "Anthropic"
    prefix = "anthropic"
    key_variable = "ANTHROPIC_API_KEY"
    sdk_errors = (anthropic.AnthropicError,)

    def _connect(self, hooks: dict[str, list[Any]], **options: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            http_client=anthropic.DefaultAsyncHttpxClient(event_hooks=hooks), **options
        )

    async def _stream(self, request: ModelRequest, on_text: OnText | None) -> ModelResponse:
        arguments: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "system": system_blocks(request),
            "messages": [wire_message(message) for message in request.messages],
        }
        if request.tools:
            arguments["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
                for t in request.tools
            ]
        text: list[str] = []
        tools: dict[int, tuple[str, str, list[str]]] = {}
        usage, stop, finished = Usage(), StopReason.OTHER, False
        stream = await self._client.messages.create(stream=True, **arguments)
        async with stream:
            async for event in stream:
                if event.type == "message_start":
                    got = event.message.usage
                    usage = Usage(
                        input_tokens=got.input_tokens or 0,
                        cache_read_tokens=got.cache_read_input_tokens or 0,
                        cache_write_tokens=got.cache_creation_input_tokens or 0,
                    )
                elif event.type == "content_block_start" and event.content_block.type == "tool_use":
                    tools[event.index] = (event.content_block.id, event.content_block.name, [])
                elif event.type == "content_block_delta":
                    if event.delta.type == "text_delta":
                        text.append(event.delta.text)
                        if on_text is not None:
                            on_text(event.delta.text)
                    elif event.delta.type == "input_json_delta" and event.index in tools:
                        tools[event.index][2].append(event.delta.partial_json)
                elif event.type == "message_delta":
                    stop = _STOP.get(event.delta.stop_reason or "", StopReason.OTHER)
                    usage = attrs.evolve(usage, output_tokens=event.usage.output_tokens or 0)
                elif event.type == "message_stop":
                    finished = True
        if not finished:
            raise ProviderUnavailable("Anthropic's stream ended before the message was complete")
        calls = tuple(
            ToolCall(call_id, name, json.loads("".join(parts) or "{}"))
            for _, (call_id, name, parts) in sorted(tools.items())
        )
        return ModelResponse("".join(text), calls, stop, usage, self.model)


def system_blocks(request: ModelRequest) -> list[dict[str, Any]]:
    """The stable part marked for prompt caching (it covers the tools, which come before it
    in the cached prefix); the per-turn context after the mark."""
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}
    ]
    if request.context:
        blocks.append({"type": "text", "text": request.context})
    return blocks


def wire_message(message: Message) -> dict[str, Any]:
    if isinstance(message, UserText):
        return {"role": "user", "content": message.text}
    if isinstance(message, AssistantTurn):
        content: list[dict[str, Any]] = []
        if message.text:
            content.append({"type": "text", "text": message.text})
        content.extend(
            {"type": "tool_use", "id": c.id, "name": c.name, "input": dict(c.arguments)}
            for c in message.tool_calls
        )
        return {"role": "assistant", "content": content or message.text}
    assert isinstance(message, ToolResults)
    return {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": r.call_id,
                "content": r.content,
                "is_error": r.is_error,
            }
            for r in message.results
        ],
    }
