"""The bot's tasks in the workspace's `.gid/graph.yml`, the file format of the GID tool (Graph
Indexed Development), so people and that tool can read and edit them too.

Two shapes load: newer files have `project`, `nodes` as a list of `{id, title, type, status,
...}` and `edges` as a list of `{from, to, relation}`; older ones have `domain` and `nodes` as
a map from id to `{type, name, status, description, tasks: ["[ ] text", "[x] text"]}`.

Writing keeps what the bot does not touch byte for byte: comments, key order, quoting, fields
it does not know. ruamel.yaml edits the document; only the lines that edit changed are taken
from its output, every other line from the file as it was.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import io
import os
import re
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import attrs
import trio
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from runtime.botcore._errors import BotCoreError

GRAPH_FILE = Path(".gid") / "graph.yml"
DONE = frozenset({"done", "completed", "closed"})
STATUSES = ("todo", "in_progress", "blocked", "done")
LOCK_TIMEOUT = 10.0
"""Seconds a change waits for `.gid/graph.yml.lock` before giving up."""

T = TypeVar("T")


class TaskGraphError(BotCoreError):
    """The graph file cannot be read or written as asked; the message says why."""


@attrs.frozen
class TaskNode:
    id: str
    title: str
    type: str
    status: str
    description: str = ""
    tags: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    checklist: tuple[tuple[bool, str], ...] = ()
    """An older file's `tasks: ["[x] text", ...]`."""

    @property
    def done(self) -> bool:
        return self.status in DONE


@attrs.frozen
class GraphView:
    """The graph as read: its nodes in file order, and the `depends_on` cycles in it."""

    shape: Literal["list", "map"]
    name: str
    description: str
    nodes: tuple[TaskNode, ...]
    cycles: tuple[tuple[str, ...], ...]

    def node(self, node_id: str) -> TaskNode | None:
        return next((n for n in self.nodes if n.id == node_id), None)

    def ready(self) -> list[TaskNode]:
        """Not done, and every `depends_on` target exists and is done (never one in a cycle)."""
        done = {n.id for n in self.nodes if n.done}
        looped = {node for cycle in self.cycles for node in cycle}
        return [
            n
            for n in self.nodes
            if not n.done and n.id not in looped and all(d in done for d in n.depends_on)
        ]


class TaskGraph:
    """`bot.tasks`: read, create and update tasks in `.gid/graph.yml`.

    Each change reads the file fresh, under a lock file, and replaces it atomically (a temp
    file, then rename). If the file changed between reading and replacing (someone saved it
    in an editor), the change is made again on the new text; if it keeps changing, the
    change is refused with `TaskGraphError` rather than overwriting someone's edit.
    """

    def __init__(
        self,
        workspace: Path,
        *,
        limiter: trio.CapacityLimiter | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.path = workspace / GRAPH_FILE
        self._lock = trio.Lock()
        self._limiter = limiter
        self._lock_timeout = lock_timeout

    async def load(self) -> GraphView:
        return await self._thread(self._load)

    async def _thread(self, call: Callable[[], T]) -> T:
        """A worker thread under the tools' limiter, abandoned if the caller is cancelled."""
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=self._limiter)

    async def create(
        self,
        title: str,
        *,
        type: str = "task",
        status: str = "todo",
        description: str = "",
        tags: Sequence[str] = (),
        depends_on: Sequence[str] = (),
    ) -> TaskNode:
        if not title.strip():
            raise TaskGraphError("a task needs a title")

        _check_status(status)

        def change(doc: _Document) -> str:
            node_id = doc.new_id(title)
            doc.add_node(node_id, title.strip(), type, status, description, tags)
            for target in depends_on:
                doc.require(target)
                doc.add_edge(node_id, target)
            return node_id

        return await self._edit(change)

    async def update(
        self,
        node_id: str,
        *,
        status: str | None = None,
        title: str | None = None,
        description: str | None = None,
        depends_on: Sequence[str] = (),
    ) -> TaskNode:
        """Change what is given; `depends_on` adds dependencies."""
        if status is not None:
            _check_status(status)

        def change(doc: _Document) -> str:
            doc.require(node_id)
            if status is not None:
                doc.set_field(node_id, "status", status)
            if title is not None:
                doc.set_field(node_id, "title", title)
            if description is not None:
                doc.set_field(node_id, "description", description)
            for target in depends_on:
                doc.require(target)
                doc.add_edge(node_id, target)
            return node_id

        return await self._edit(change)

    async def _edit(self, change: Any) -> TaskNode:
        async with self._lock:
            node_id = await self._thread(lambda: self._edit_file(change))
        view = await self.load()
        node = view.node(node_id)
        assert node is not None
        return node

    def _load(self) -> GraphView:
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        return _Document(text, str(self.path)).view()

    def _edit_file(self, change: Any) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.path.with_name(self.path.name + ".lock"), self._lock_timeout):
            for _ in range(3):
                before = self.path.read_bytes() if self.path.exists() else b""
                doc = _Document(before.decode("utf-8"), str(self.path), editing=True)
                node_id: str = change(doc)
                data = doc.dump().encode("utf-8")
                temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                temp.write_bytes(data)
                with temp.open("rb") as written:
                    os.fsync(written.fileno())
                now = self.path.read_bytes() if self.path.exists() else b""
                if _digest(now) == _digest(before):
                    os.replace(temp, self.path)
                    return node_id
                temp.unlink()  # changed under our feet: redo the change on the new text
        raise TaskGraphError(
            f"{self.path} kept changing while the bot was updating it; nothing was written, "
            "try again"
        )


class _Document:
    """One read of the file: the ruamel.yaml document, and how to write it back."""

    def __init__(self, text: str, where: str, *, editing: bool = False) -> None:
        self.text = text
        self.where = where
        self.data = _parse(text, where)
        # How to write it back, chosen before anything changes (reading alone needs none).
        self._layout = _layout(text, self.data) if editing else None
        nodes = self.data.get("nodes")
        if nodes is None:
            nodes = self.data["nodes"] = CommentedSeq()
        if not isinstance(nodes, CommentedSeq | CommentedMap):
            raise TaskGraphError(f"{where}: 'nodes' must be a list or a map")
        self.nodes = nodes

    @property
    def shape(self) -> Literal["list", "map"]:
        return "map" if isinstance(self.nodes, CommentedMap) else "list"

    def entries(self) -> Iterator[tuple[str, MutableMapping[str, Any]]]:
        if isinstance(self.nodes, CommentedMap):
            for node_id, fields in self.nodes.items():
                yield str(node_id), fields if isinstance(fields, dict) else CommentedMap()
        else:
            for fields in self.nodes:
                if isinstance(fields, dict) and "id" in fields:
                    yield str(fields["id"]), fields

    def edges(self) -> list[tuple[str, str, str]]:
        found = []
        for edge in self.data.get("edges") or []:
            if isinstance(edge, dict) and "from" in edge and "to" in edge:
                found.append((str(edge["from"]), str(edge["to"]), str(edge.get("relation", ""))))
        return found

    def view(self) -> GraphView:
        depends: dict[str, list[str]] = {}
        for source, target, relation in self.edges():
            if relation == "depends_on":
                depends.setdefault(source, []).append(target)
        nodes = []
        for node_id, fields in self.entries():
            own = fields.get("depends_on") or []
            checklist = tuple(
                (item.startswith("[x]"), item[3:].strip())
                for item in fields.get("tasks") or []
                if isinstance(item, str) and item[:3] in ("[x]", "[ ]")
            )
            nodes.append(
                TaskNode(
                    id=node_id,
                    title=str(fields.get("title") or fields.get("name") or node_id),
                    type=str(fields.get("type", "task")),
                    status=str(fields.get("status", "todo")),
                    description=str(fields.get("description") or "").strip(),
                    tags=tuple(str(t) for t in fields.get("tags") or []),
                    depends_on=tuple(dict.fromkeys([*map(str, own), *depends.get(node_id, [])])),
                    checklist=checklist,
                )
            )
        project = self.data.get("project") or {}
        name = str(project.get("name") or self.data.get("domain") or "")
        return GraphView(
            self.shape,
            name,
            str(project.get("description") or ""),
            tuple(nodes),
            _cycles({n.id: n.depends_on for n in nodes}),
        )

    def require(self, node_id: str) -> None:
        if not any(existing == node_id for existing, _ in self.entries()):
            raise TaskGraphError(f"no task {node_id!r} in {self.where}")

    def new_id(self, title: str) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "task"
        taken = {node_id for node_id, _ in self.entries()}
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}-{number}", number + 1
        return candidate

    def add_node(
        self,
        node_id: str,
        title: str,
        type: str,
        status: str,
        description: str,
        tags: Sequence[str],
    ) -> None:
        fields = CommentedMap()
        if isinstance(self.nodes, CommentedMap):
            fields.update(type=type, name=title, status=status)
            if description:
                fields["description"] = description
            self.nodes[node_id] = fields
            return
        fields.update(id=node_id, title=title, type=type, status=status)
        if description:
            fields["description"] = description
        if tags:
            fields["tags"] = list(tags)
        self.nodes.append(fields)

    def set_field(self, node_id: str, key: str, value: str) -> None:
        fields = dict(self.entries())[node_id]
        if key == "title" and self.shape == "map":
            key = "name"
        fields[key] = value

    def add_edge(self, source: str, target: str) -> None:
        if (source, target, "depends_on") in self.edges():
            return
        edges = self.data.get("edges")
        if not isinstance(edges, CommentedSeq):
            edges = self.data["edges"] = CommentedSeq()
        edge = CommentedMap()
        edge.update({"from": source, "to": target, "relation": "depends_on"})
        if edges and isinstance(edges[-1], CommentedMap) and edges[-1].fa.flow_style():
            edge.fa.set_flow_style()  # written like the edges before it
        edges.append(edge)

    def dump(self) -> str:
        """The edited document: lines the edit did not change come from the original text."""
        assert self._layout is not None, "opened for reading only"
        yaml, canonical = self._layout
        after = _dump(yaml, self.data)
        if not self.text:
            return after
        original = self.text.splitlines(keepends=True)
        before = canonical.splitlines(keepends=True)
        if len(original) != len(before):
            return after  # ruamel moved lines around; its output is the best we have
        lines = after.splitlines(keepends=True)
        merged: list[str] = []
        matcher = difflib.SequenceMatcher(a=before, b=lines, autojunk=False)
        for op, a1, a2, b1, b2 in matcher.get_opcodes():
            merged.extend(original[a1:a2] if op == "equal" else lines[b1:b2])
        return "".join(merged)


def _yaml(mapping: int = 2, sequence: int = 2, offset: int = 0) -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _parse(text: str, where: str) -> CommentedMap:
    try:
        data = _yaml().load(text) if text.strip() else CommentedMap()
    except YAMLError as exc:
        raise TaskGraphError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(data, CommentedMap):
        raise TaskGraphError(f"{where}: expected a map with 'nodes' at the top")
    return data


def _layout(text: str, data: CommentedMap) -> tuple[YAML, str]:
    """The indentation that writes the unchanged document back most like `text`, and what
    it writes."""
    if not text.strip():
        return _yaml(), ""
    lines = text.splitlines()
    best: tuple[int, YAML, str] | None = None
    for mapping, sequence, offset in ((2, 2, 0), (2, 4, 2), (4, 4, 2), (4, 6, 4), (4, 4, 0)):
        yaml = _yaml(mapping, sequence, offset)
        dumped = _dump(yaml, data)
        out = dumped.splitlines()
        distance = sum(a != b for a, b in zip(lines, out, strict=False)) + 1000 * abs(
            len(lines) - len(out)
        )
        if best is None or distance < best[0]:
            best = (distance, yaml, dumped)
        if distance == 0:
            break
    assert best is not None
    return best[1], best[2]


def _dump(yaml: YAML, data: CommentedMap) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _cycles(depends: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """Each `depends_on` cycle once, as the path round it (`a → b → a` is `("a", "b", "a")`)."""
    found: list[tuple[str, ...]] = []
    seen_cycles: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1 on the path, 2 finished
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in depends.get(node, ()):
            if state.get(target) == 1:
                cycle = (*path[path.index(target) :], target)
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    found.append(cycle)
            elif target in depends and state.get(target) is None:
                visit(target)
        path.pop()
        state[node] = 2

    for node in depends:
        if state.get(node) is None:
            visit(node)
    return tuple(found)


def _check_status(status: str) -> None:
    if not re.fullmatch(r"[a-z][a-z_]{0,30}", status):
        raise TaskGraphError(
            f"status {status!r} is not a status word; use one of {', '.join(STATUSES)} (or "
            "another lower-case word the GID tool knows)"
        )


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """Between processes (two bots, the GID tool if it takes the same lock); waits at most
    `timeout` seconds, so a lock someone forgot never holds a worker thread for good."""
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TaskGraphError(
                        f"{path.name} is held by another process (a GID tool or another bot) "
                        f"for more than {timeout:g}s; nothing was written, try again later"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
