"""The embedded offline model: deterministic, no network, and it drives the real tool path.

It reads only what a real model would read, the request, and answers:

* `remember <text>` → `memory_store`
* `recall <query>` / `what do you remember about <query>` → `memory_recall`
* `read <path>`, `list [<path>]`, `write <path>: <text>` → the filesystem tools
* `/tool <name> <json args>` → any registered tool
* anything else → a short greeting with the bot's name and how many memories it recalled.
"""

from __future__ import annotations

import json
import re

import trio

from runtime.llm.base import (
    AssistantTurn,
    ModelRequest,
    ModelResponse,
    OnText,
    StopReason,
    ToolCall,
    ToolResult,
    ToolResults,
    Usage,
    UserText,
)

_NAME = re.compile(r"^You are (?P<name>.+?)[.,]", re.MULTILINE)
_RECALLED = re.compile(r"^## What you remember \((?P<count>\d+)\)", re.MULTILINE)
_COMMANDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^remember\s+(?:that\s+)?(?P<arg>.+)$", re.I | re.S), "memory_store"),
    (re.compile(r"^what do you remember about\s+(?P<arg>.+?)\??$", re.I | re.S), "memory_recall"),
    (re.compile(r"^recall\s+(?P<arg>.+?)\??$", re.I | re.S), "memory_recall"),
    (re.compile(r"^read\s+(?P<arg>\S+)$", re.I), "filesystem_read"),
    (re.compile(r"^list(?:\s+(?P<arg>\S+))?$", re.I), "filesystem_list"),
    (re.compile(r"^write\s+(?P<arg>[^:\s]+):\s?(?P<text>.*)$", re.I | re.S), "filesystem_write"),
)


class OfflineModel:
    """A `Provider` that needs no key and no network."""

    name = "offline"

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse:
        await trio.lowlevel.checkpoint()
        last = request.messages[-1] if request.messages else UserText("")
        rounds = sum(isinstance(m, ToolResults) for m in request.messages)
        calls: tuple[ToolCall, ...] = ()
        if isinstance(last, ToolResults):
            text = _answer_results(last.results)
        elif isinstance(last, UserText):
            text, calls = _answer_user(last.text, request, rounds)
        else:
            text = ""
        if on_text is not None:
            for piece in re.findall(r"\S+\s*", text):
                on_text(piece)
                await trio.lowlevel.checkpoint()
        prompt_words = (
            len(request.system.split())
            + len(request.context.split())
            + sum(len(_message_text(m).split()) for m in request.messages)
        )
        return ModelResponse(
            text=text,
            tool_calls=calls,
            stop_reason=StopReason.TOOL_USE if calls else StopReason.END_TURN,
            usage=Usage(input_tokens=prompt_words, output_tokens=len(text.split())),
            model="offline",
        )

    async def reachable(self) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


def _answer_user(text: str, request: ModelRequest, rounds: int) -> tuple[str, tuple[ToolCall, ...]]:
    text = text.strip()
    call_id = f"offline-{rounds + 1}-1"
    if text.startswith("/tool"):
        parts = text.split(maxsplit=2)
        if len(parts) < 2:
            return "Usage: /tool <name> <json arguments>", ()
        try:
            arguments = json.loads(parts[2]) if len(parts) == 3 else {}
        except json.JSONDecodeError as exc:
            return f"Those arguments are not valid JSON: {exc.msg} (column {exc.colno}).", ()
        if not isinstance(arguments, dict):
            return "Tool arguments must be a JSON object.", ()
        return "", (ToolCall(call_id, parts[1], arguments),)
    for pattern, tool in _COMMANDS:
        match = pattern.match(text)
        if match is None:
            continue
        arg = (match["arg"] or ".").strip()
        if tool == "memory_store":
            return "", (ToolCall(call_id, tool, {"content": arg, "type": "factual"}),)
        if tool == "memory_recall":
            return "", (ToolCall(call_id, tool, {"query": arg}),)
        if tool == "filesystem_write":
            return "", (ToolCall(call_id, tool, {"path": arg, "content": match["text"]}),)
        return "", (ToolCall(call_id, tool, {"path": arg}),)
    name = _NAME.search(request.system)
    count = _RECALLED.search(request.context)
    who = name["name"] if name else "a BotCore bot"
    recalled = int(count["count"]) if count else 0
    noun = "memory" if recalled == 1 else "memories"
    return (
        f"Hi, I'm {who}, running on the offline model. I recalled {recalled} {noun} "
        f"for that. Try 'remember <fact>' or 'what do you remember about <topic>'.",
        (),
    )


def _answer_results(results: tuple[ToolResult, ...]) -> str:
    return "\n".join(_answer_result(result) for result in results)


def _answer_result(result: ToolResult) -> str:
    if result.is_error:
        return f"The {result.name} tool failed: {result.content}"
    if result.name == "memory_store":
        return "Got it, I'll remember that."
    if result.name == "memory_recall":
        try:
            found = json.loads(result.content)
        except json.JSONDecodeError:
            return result.content
        if not found:
            return "I don't remember anything about that yet."
        lines = [f"- {memory['content']}" for memory in found]
        return "Here is what I remember:\n" + "\n".join(lines)
    return result.content


def _message_text(message: UserText | AssistantTurn | ToolResults) -> str:
    if isinstance(message, UserText):
        return message.text
    if isinstance(message, AssistantTurn):
        return message.text
    return " ".join(result.content for result in message.results)
