"""Many tools within the token budget: the definitions a prompt carries, and `tool_search`.

When every tool's definition fits in `ALL_SHARE` of what the identity leaves of the budget,
the prompt carries them all (a bot with only the built-in tools). Otherwise (MCP servers
bring 50 tools) it carries, in full, the tools most relevant to the message (by words shared
with their names and descriptions, rarer words counting more) up to `CHOSEN_SHARE`, plus
`tool_search`; the others appear by name only, in a compact catalogue. When the model calls
`tool_search`, the definitions it found are added to the request for the rest of the turn,
so the model can call them in its next answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence

from runtime.llm import ToolCall, ToolResult, ToolSpec
from runtime.tools.registry import JSONObject, Tool, ToolContext, ToolRegistry

SEARCH = "tool_search"
ALL_SHARE = 0.6
"""Every definition is sent while they all take at most this share of what is left."""
CHOSEN_SHARE = 0.35
"""Otherwise the definitions chosen for the message take at most this share."""
MOST_CHOSEN = 8
FOUND = 5
"""Definitions one search loads."""

Count = Callable[[str], int]


def tools_text(tools: Sequence[ToolSpec]) -> str:
    """The tools as a provider sends them, to count their tokens."""
    return json.dumps(
        [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in tools
        ]
    )


def fit_tools(
    tools: Sequence[ToolSpec], text: str, left: int, count: Count
) -> tuple[tuple[ToolSpec, ...], str]:
    """The definitions to send in full for a message, and the catalogue of the others
    (empty when all are sent), within `left` tokens."""
    others = [t for t in tools if t.name != SEARCH]
    search = next((t for t in tools if t.name == SEARCH), None)
    if not others or count(tools_text(others)) <= left * ALL_SHARE or search is None:
        fitted = list(others)
        while fitted and count(tools_text(fitted)) > left:
            fitted.pop()  # without tool_search the last tools are dropped when they do not fit
        return tuple(fitted), ""
    room = int(left * CHOSEN_SHARE)
    chosen = [search]
    for spec in rank(others, text):
        if len(chosen) > MOST_CHOSEN or count(tools_text([*chosen, spec])) > room:
            break
        chosen.append(spec)
    named = {spec.name for spec in chosen}
    return tuple(chosen), catalogue([t for t in others if t.name not in named])


def catalogue(tools: Sequence[ToolSpec]) -> str:
    """The tools by name only, grouped by MCP server: a few tokens each."""
    groups: dict[str, list[str]] = {}
    for spec in tools:
        server, _, name = spec.name.rpartition("__")
        groups.setdefault(server, []).append(name)
    lines = [
        f"- {server}__: {', '.join(names)}" if server else f"- {', '.join(names)}"
        for server, names in groups.items()
    ]
    return (
        f"## More tools ({len(tools)}), not loaded: call {SEARCH} with what you need "
        "to load their definitions\n" + "\n".join(lines)
    )


_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "by",
        "from",
        "at",
        "is",
        "are",
        "be",
        "it",
        "this",
        "that",
        "my",
        "me",
        "i",
        "you",
        "your",
        "please",
        "can",
        "could",
        "would",
        "will",
        "do",
        "does",
        "what",
        "which",
        "when",
        "how",
    ]
)


def _words(text: str) -> set[str]:
    """The words of `text` cut to six letters, a stemmer that needs no language:
    'remembering' meets 'remember', 'commits' meets 'commit'."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text).replace("_", " ").lower()
    return {word[:6] for word in _WORD.findall(spaced) if word not in _STOP}


def rank(tools: Sequence[ToolSpec], text: str) -> list[ToolSpec]:
    """The tools sharing words with `text`, best first (rarer words weigh more; a word in
    the name counts double); ties keep the tools' order."""
    query = _words(text)
    bags = [(_words(t.name), _words(t.description)) for t in tools]
    seen: dict[str, int] = {}
    for name, description in bags:
        for word in name | description:
            seen[word] = seen.get(word, 0) + 1
    scored = []
    for position, (spec, (name, description)) in enumerate(zip(tools, bags, strict=True)):
        score = sum(
            math.log(1 + len(tools) / seen[word]) * (2 if word in name else 1)
            for word in query & (name | description)
        )
        if score > 0:
            scored.append((-score, position, spec))
    return [spec for _, _, spec in sorted(scored, key=lambda item: item[:2])]


def search(registry: ToolRegistry, query: str) -> list[ToolSpec]:
    """What `tool_search` finds for `query`: the best `FOUND` tools."""
    return rank([s for s in registry.specs() if s.name != SEARCH], query)[:FOUND]


def loaded(
    registry: ToolRegistry, calls: Sequence[ToolCall], results: Sequence[ToolResult]
) -> tuple[ToolSpec, ...]:
    """The definitions the `tool_search` calls of an answer loaded (the same search again:
    it depends only on the query and the registry)."""
    found: dict[str, ToolSpec] = {}
    for call, result in zip(calls, results, strict=False):
        if call.name == SEARCH and not result.is_error:
            found.update((s.name, s) for s in search(registry, str(call.arguments["query"])))
    return tuple(found.values())


def search_tool(registry: ToolRegistry) -> Tool:
    async def find(context: ToolContext, arguments: JSONObject) -> str:
        found = search(registry, str(arguments["query"]))
        if not found:
            return "no tool matches that; try other words, or the names in the catalogue"
        lines = [f"- {spec.name}: {spec.description}" for spec in found]
        return "Loaded, callable now:\n" + "\n".join(lines)

    return Tool(
        ToolSpec(
            SEARCH,
            "Load the definitions of tools from the catalogue that match what you need "
            "(words or tool names); they can be called in your next answer.",
            {
                "type": "object",
                "properties": {"query": {"type": "string", "minLength": 1}},
                "required": ["query"],
                "additionalProperties": False,
            },
        ),
        find,
    )
