"""OpenAI Chat Completions on the official SDK (`AsyncOpenAI`), always streamed.

Also serves any OpenAI-compatible server (Ollama, vLLM, llama.cpp, OpenRouter) through
`OPENAI_BASE_URL`.
"""

from __future__ import annotations

import json
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

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
    "stop": StopReason.END_TURN,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "length": StopReason.MAX_TOKENS,
}
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class OpenAIProvider(SdkProvider[openai.AsyncOpenAI]):
    label = "OpenAI"
    prefix = "openai"
    key_variable = "OPENAI_API_KEY"
    sdk_errors = (openai.OpenAIError,)

    def _connect(self, hooks: dict[str, list[Any]], **options: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks), **options
        )

    async def _stream(self, request: ModelRequest, on_text: OnText | None) -> ModelResponse:
        system = request.system + ("\n\n" + request.context if request.context else "")
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        for message in request.messages:
            messages.extend(wire_messages(message))
        limit = (
            "max_completion_tokens" if self.model.startswith(_REASONING_PREFIXES) else "max_tokens"
        )
        arguments: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            limit: request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            arguments["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": dict(t.parameters),
                    },
                }
                for t in request.tools
            ]
        text: list[str] = []
        tools: dict[int, list[str]] = {}  # index → [id, name, argument fragments...]
        usage, stop, finished = Usage(), StopReason.OTHER, False
        # The SDK's `chat.completions.create` walks the body against its TypedDicts first
        # (`async_maybe_transform`: a third of the event loop under load, more with a long
        # history) to rename and drop fields; ours is built in the wire form already. `post`
        # is the same call after that step: the SDK's retries, errors and stream parsing.
        stream = await self._client.post(
            "/chat/completions",
            body=arguments,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
            options={"security": {"bearer_auth": True}},
        )
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    details = chunk.usage.prompt_tokens_details
                    usage = Usage(
                        input_tokens=chunk.usage.prompt_tokens or 0,
                        output_tokens=chunk.usage.completion_tokens or 0,
                        cache_read_tokens=(details.cached_tokens or 0) if details else 0,
                    )
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        if on_text is not None:
                            on_text(delta.content)
                    for piece in delta.tool_calls or ():
                        slot = tools.setdefault(piece.index, ["", ""])
                        if piece.id:
                            slot[0] = piece.id
                        if piece.function and piece.function.name:
                            slot[1] = piece.function.name
                        if piece.function and piece.function.arguments:
                            slot.append(piece.function.arguments)
                    if choice.finish_reason:
                        stop = _STOP.get(choice.finish_reason, StopReason.OTHER)
                        finished = True
        if not finished:
            raise ProviderUnavailable("OpenAI's stream ended before the answer was complete")
        calls = tuple(
            ToolCall(slot[0] or f"call_{index}", slot[1], json.loads("".join(slot[2:]) or "{}"))
            for index, slot in sorted(tools.items())
        )
        return ModelResponse("".join(text), calls, stop, usage, self.model)


def wire_messages(message: Message) -> list[dict[str, Any]]:
    if isinstance(message, UserText):
        return [{"role": "user", "content": message.text}]
    if isinstance(message, AssistantTurn):
        wire: dict[str, Any] = {"role": "assistant", "content": message.text or None}
        if message.tool_calls:
            wire["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(dict(c.arguments))},
                }
                for c in message.tool_calls
            ]
        return [wire]
    assert isinstance(message, ToolResults)
    return [
        {
            "role": "tool",
            "tool_call_id": r.call_id,
            "content": f"ERROR: {r.content}" if r.is_error else r.content,
        }
        for r in message.results
    ]
