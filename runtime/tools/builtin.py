"""The tools every bot has: its files and its memory."""

from __future__ import annotations

import json
from collections.abc import Mapping

from runtime.botcore import MemoryType
from runtime.llm import ToolSpec
from runtime.tools.registry import Tool, ToolContext

JSONObject = Mapping[str, object]

_PATH = {"type": "string", "minLength": 1, "description": "Path relative to the workspace."}


def _schema(required: list[str], **properties: object) -> dict[str, object]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


async def _read(context: ToolContext, args: JSONObject) -> str:
    return await context.bot.tools.fs.read(str(args["path"]))


async def _write(context: ToolContext, args: JSONObject) -> str:
    size = await context.bot.tools.fs.write(str(args["path"]), str(args["content"]))
    return f"wrote {size} bytes to {args['path']}"


async def _edit(context: ToolContext, args: JSONObject) -> str:
    size = await context.bot.tools.fs.edit(
        str(args["path"]), str(args["old_text"]), str(args["new_text"])
    )
    return f"edited {args['path']} ({size} bytes now)"


async def _list(context: ToolContext, args: JSONObject) -> str:
    entries = await context.bot.tools.fs.list(str(args.get("path", ".")))
    return "\n".join(entries) if entries else "(empty folder)"


async def _recall(context: ToolContext, args: JSONObject) -> str:
    limit = args.get("limit", 5)
    assert isinstance(limit, int)
    memories = await context.bot.memory.recall(str(args["query"]), limit=limit)
    return json.dumps(
        [
            {"id": m.id, "content": m.content, "type": m.type.value, "confidence": m.confidence}
            for m in memories
        ]
    )


async def _store(context: ToolContext, args: JSONObject) -> str:
    importance = args.get("importance", 0.5)
    assert isinstance(importance, int | float)
    memory_id = await context.bot.memory.store(
        str(args["content"]),
        type=str(args.get("type", "factual")),
        importance=float(importance),
        metadata={"session": context.session_key},
    )
    return json.dumps({"id": memory_id, "stored": True})


def builtin_tools() -> list[Tool]:
    return [
        Tool(
            ToolSpec(
                "filesystem_read",
                "Read a text file from the bot's workspace.",
                _schema(["path"], path=_PATH),
            ),
            _read,
        ),
        Tool(
            ToolSpec(
                "filesystem_write",
                "Create or overwrite a text file in the bot's workspace.",
                _schema(["path", "content"], path=_PATH, content={"type": "string"}),
            ),
            _write,
        ),
        Tool(
            ToolSpec(
                "filesystem_edit",
                "Replace one exact occurrence of old_text with new_text in a workspace file.",
                _schema(
                    ["path", "old_text", "new_text"],
                    path=_PATH,
                    old_text={"type": "string", "minLength": 1},
                    new_text={"type": "string"},
                ),
            ),
            _edit,
        ),
        Tool(
            ToolSpec(
                "filesystem_list",
                "List a folder of the bot's workspace; folders end with '/'.",
                _schema([], path={**_PATH, "description": "Folder, '.' for the workspace root."}),
            ),
            _list,
        ),
        Tool(
            ToolSpec(
                "memory_recall",
                "Search the bot's long-term memory; returns the best matches as JSON.",
                _schema(
                    ["query"],
                    query={"type": "string", "minLength": 1},
                    limit={"type": "integer", "minimum": 1, "maximum": 50},
                ),
            ),
            _recall,
        ),
        Tool(
            ToolSpec(
                "memory_store",
                "Store something worth remembering in the bot's long-term memory.",
                _schema(
                    ["content"],
                    content={"type": "string", "minLength": 1},
                    type={"type": "string", "enum": [t.value for t in MemoryType]},
                    importance={"type": "number", "minimum": 0, "maximum": 1},
                ),
            ),
            _store,
        ),
    ]
