"""The tools every bot has: its files and its memory."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping

from runtime.botcore import MemoryType, TaskNode
from runtime.tools.registry import Tool, ToolContext

JSONObject = Mapping[str, object]

_PATH = {"type": "string", "minLength": 1}


def _file(args: JSONObject) -> str:
    """The file a call touches, so that calls on one file run in order."""
    return "file:" + posixpath.normpath(str(args.get("path", ".")))


def _graph(args: JSONObject) -> str:
    return "file:.gid/graph.yml"


def _schema(required: list[str], **properties: object) -> dict[str, object]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


async def _read(context: ToolContext, args: JSONObject) -> str:
    return await context.files.read(str(args["path"]))


async def _write(context: ToolContext, args: JSONObject) -> str:
    size = await context.files.write(str(args["path"]), str(args["content"]))
    return f"wrote {size} bytes to {args['path']}"


async def _edit(context: ToolContext, args: JSONObject) -> str:
    size = await context.files.edit(str(args["path"]), str(args["old_text"]), str(args["new_text"]))
    return f"edited {args['path']} ({size} bytes now)"


async def _list(context: ToolContext, args: JSONObject) -> str:
    entries = await context.files.list(str(args.get("path", ".")))
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


def _task_line(task: TaskNode) -> str:
    after = f" (after {', '.join(task.depends_on)})" if task.depends_on else ""
    return f"[{'x' if task.done else ' '}] {task.id}: {task.title} ({task.status}){after}"


async def _task_create(context: ToolContext, args: JSONObject) -> str:
    task = await context.tasks.create(
        str(args["title"]),
        type=str(args.get("type", "task")),
        description=str(args.get("description", "")),
        depends_on=[str(d) for d in _strings(args.get("depends_on"))],
        tags=[str(t) for t in _strings(args.get("tags"))],
    )
    return f"created {_task_line(task)}"


async def _task_update(context: ToolContext, args: JSONObject) -> str:
    status, title = args.get("status"), args.get("title")
    description = args.get("description")
    task = await context.tasks.update(
        str(args["id"]),
        status=None if status is None else str(status),
        title=None if title is None else str(title),
        description=None if description is None else str(description),
        depends_on=[str(d) for d in _strings(args.get("depends_on"))],
    )
    return f"updated {_task_line(task)}"


async def _task_list(context: ToolContext, args: JSONObject) -> str:
    graph = await context.tasks.load()
    tasks = graph.ready() if args.get("ready") else list(graph.nodes)
    if args.get("status"):
        tasks = [t for t in tasks if t.status == args["status"]]
    lines = [_task_line(t) for t in tasks] or ["(no tasks)"]
    lines += [f"cycle in depends_on: {' -> '.join(cycle)}" for cycle in graph.cycles]
    return "\n".join(lines)


def _strings(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


_IDS = {"type": "array", "items": {"type": "string", "minLength": 1}}


def builtin_tools() -> list[Tool]:
    """The built-in tools, their definitions kept short: every prompt carries them, and
    with the `schedule` tool they fit the default budget without the catalogue."""
    return [
        Tool.compact(
            "filesystem_read",
            "Read a workspace text file.",
            _schema(["path"], path=_PATH),
            _read,
            _file,
        ),
        Tool.compact(
            "filesystem_write",
            "Create or overwrite a workspace text file.",
            _schema(["path", "content"], path=_PATH, content={"type": "string"}),
            _write,
            _file,
        ),
        Tool.compact(
            "filesystem_edit",
            "Replace one exact occurrence of old_text with new_text in a workspace file.",
            _schema(
                ["path", "old_text", "new_text"],
                path=_PATH,
                old_text={"type": "string", "minLength": 1},
                new_text={"type": "string"},
            ),
            _edit,
            _file,
        ),
        Tool.compact(
            "filesystem_list",
            "List a workspace folder ('.' is the root); folders end with '/'.",
            _schema([], path=_PATH),
            _list,
            _file,
        ),
        Tool.compact(
            "memory_recall",
            "Search long-term memory; the best matches as JSON.",
            _schema(
                ["query"],
                query={"type": "string", "minLength": 1},
                limit={"type": "integer", "minimum": 1, "maximum": 50},
            ),
            _recall,
        ),
        Tool.compact(
            "memory_store",
            "Remember something in long-term memory.",
            _schema(
                ["content"],
                content={"type": "string", "minLength": 1},
                type={"type": "string", "enum": [t.value for t in MemoryType]},
                importance={"type": "number", "minimum": 0, "maximum": 1},
            ),
            _store,
        ),
        Tool.compact(
            "task_create",
            "Add a task to the task graph; returns its id.",
            _schema(
                ["title"],
                title={"type": "string", "minLength": 1},
                description={"type": "string"},
                type={"type": "string", "description": "task, feature, issue ..."},
                depends_on={**_IDS, "description": "ids to finish first"},
                tags=_IDS,
            ),
            _task_create,
            _graph,
        ),
        Tool.compact(
            "task_update",
            "Change a task's status, title or description, or add dependencies.",
            _schema(
                ["id"],
                id={"type": "string", "minLength": 1},
                status={"type": "string", "description": "todo, in_progress, blocked, done"},
                title={"type": "string", "minLength": 1},
                description={"type": "string"},
                depends_on=_IDS,
            ),
            _task_update,
            _graph,
        ),
        Tool.compact(
            "task_list",
            "List the tasks; ready=true: only those that can start now.",
            _schema([], ready={"type": "boolean"}, status={"type": "string"}),
            _task_list,
            _graph,
        ),
    ]
