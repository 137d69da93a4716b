"""Does the model find the tool it needs among 50+? A labelled set and a scripted model.

`tests/data/tool_choice/mcp_tools.json` holds 49 MCP tool definitions (those of the real
`mcp-server-time` and `mcp-server-git`, and of typical servers: weather, calendar, mail,
GitHub, web, SQLite, chat, home, finance, maps, translation); with the built-in tools and
`tool_search` a bot has 59. `labelled.json` pairs messages with the tool each needs and the
words a model would search the catalogue with.

`ChoosingModel` plays a model that knows which tool it wants: it calls the tool if its
definition is in the request; else, if the tool is named in the catalogue and `tool_search`
is offered, it searches with the labelled words and calls the tool once loaded; else it
gives up. So the score measures what the prompt offers, not a model's judgement.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

from adapters import Inbound, Reply
from adapters.base import WaitingResponder
from runtime.botcore import Bot
from runtime.config import Config
from runtime.lifecycle import Runtime
from runtime.llm import (
    ModelRequest,
    ModelResponse,
    OnText,
    StopReason,
    ToolCall,
    ToolResults,
    ToolSpec,
    UserText,
)
from runtime.tools import Tool, ToolContext, ToolRegistry, builtin_tools
from runtime.tools.catalogue import SEARCH, search_tool
from runtime.tools.schedule import schedule_tool

TOOL_CHOICE = Path(__file__).resolve().parents[2] / "tests" / "data" / "tool_choice"


@attrs.frozen
class Labelled:
    message: str
    tool: str
    query: str


@attrs.frozen
class ToolChoiceScore:
    tools: int
    budget: int
    turns: int
    offered: int
    """Turns whose prompt carried the needed tool's definition."""
    searched: int
    """Turns that found it through `tool_search`."""
    misses: tuple[tuple[str, str], ...]
    tokens: tuple[int, ...]
    """Prompt tokens of each message (`prompt_tokens.total`)."""

    @property
    def found(self) -> float:
        return round((self.offered + self.searched) / self.turns, 3)


def labelled_set(path: Path = TOOL_CHOICE / "labelled.json") -> list[Labelled]:
    return [Labelled(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


def many_tools(*, search: bool = True) -> ToolRegistry:
    """The built-in tools and `schedule`, 49 MCP tools (answering 'ok') and, unless told
    not to, `tool_search`."""
    registry = ToolRegistry([*builtin_tools(), schedule_tool()])
    specs = json.loads((TOOL_CHOICE / "mcp_tools.json").read_text(encoding="utf-8"))

    async def ok(context: ToolContext, arguments: Mapping[str, object]) -> str:
        return "ok"

    for spec in specs:
        registry.add(Tool(ToolSpec(spec["name"], spec["description"], spec["parameters"]), ok))
    if search:
        registry.add(search_tool(registry))
    return registry


class ChoosingModel:
    """A scripted model that looks for the labelled tool of each message; see the module."""

    def __init__(self, items: list[Labelled], *, search_with_message: bool = False) -> None:
        self._items = {item.message: item for item in items}
        self._search_with_message = search_with_message
        self.how: dict[str, str] = {}
        """message -> 'offered', 'searched' or 'missed'."""

    @property
    def name(self) -> str:
        return "choosing"

    async def complete(
        self, request: ModelRequest, *, on_text: OnText | None = None
    ) -> ModelResponse:
        message = next(m.text for m in request.messages if isinstance(m, UserText))
        item = self._items[message]
        offered = {spec.name for spec in request.tools}
        last = request.messages[-1]
        searched = isinstance(last, ToolResults) and last.results[0].name == SEARCH
        if isinstance(last, ToolResults) and not searched:
            return _say("done")
        if item.tool in offered:
            self.how.setdefault(message, "searched" if searched else "offered")
            return _call(item.tool, {})
        if not searched and SEARCH in offered and item.tool.split("__")[-1] in request.system:
            return _call(SEARCH, {"query": message if self._search_with_message else item.query})
        self.how[message] = "missed"
        return _say("I have no tool for that.")

    async def reachable(self) -> str | None:
        return None

    async def aclose(self) -> None:
        pass


def _call(name: str, arguments: dict[str, object]) -> ModelResponse:
    return ModelResponse("", (ToolCall(f"call-{name}", name, arguments),), StopReason.TOOL_USE)


def _say(text: str) -> ModelResponse:
    return ModelResponse(text, (), StopReason.END_TURN)


async def score_tool_choice(
    config: Config,
    registry: ToolRegistry,
    items: list[Labelled] | None = None,
    *,
    search_with_message: bool = False,
) -> ToolChoiceScore:
    """Send every labelled message, each in its own session, to a bot with `registry`;
    the model searches with the labelled words, or with the message itself if told."""
    items = items if items is not None else labelled_set()
    model = ChoosingModel(items, search_with_message=search_with_message)
    tokens = []
    async with await Bot.open(config.workspace, config.database) as bot:
        runtime = Runtime(config, bot, model, tools=registry)
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            for number, item in enumerate(items):
                responder = WaitingResponder()
                await runtime.deliver(Inbound("bench", f"s{number}", item.message, responder))
                with trio.fail_after(30):
                    reply: Reply = await responder.wait()
                tokens.append(dict(reply.prompt_tokens)["total"])
            runtime.close()
    how = [model.how.get(item.message, "missed") for item in items]
    return ToolChoiceScore(
        tools=len(registry),
        budget=config.prompt_token_budget,
        turns=len(items),
        offered=how.count("offered"),
        searched=how.count("searched"),
        misses=tuple((i.message, i.tool) for i, h in zip(items, how, strict=True) if h == "missed"),
        tokens=tuple(tokens),
    )
