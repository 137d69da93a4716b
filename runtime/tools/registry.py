from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from runtime.botcore import Bot, FileTools, TaskGraph
from runtime.llm import ToolCall, ToolResult, ToolSpec
from runtime.logs import Redactor

if TYPE_CHECKING:
    from runtime.schedules import Schedules

log = logging.getLogger("runtime.tools")

JSONObject = Mapping[str, object]


@attrs.frozen
class ToolContext:
    """What a tool may touch: the bot, and the session it runs for.

    `files` and `tasks` are the bot's own unless the runtime gives ones configured for it
    (its tool thread limiter, whether identity files are writable).
    """

    bot: Bot
    session_key: str
    files: FileTools = attrs.field(
        default=attrs.Factory(lambda self: self.bot.tools.fs, takes_self=True)
    )
    tasks: TaskGraph = attrs.field(
        default=attrs.Factory(lambda self: self.bot.tasks, takes_self=True)
    )
    inbox_id: int | None = None
    """The inbox row of the message being answered (a schedule is answered where it was)."""
    schedules: Schedules | None = None


Handler = Callable[[ToolContext, JSONObject], Awaitable[str]]
Resource = Callable[[JSONObject], str | None]
"""What a call touches that another call of the same answer may touch too (a file): calls
on the same resource run one after the other, in the order the model gave them."""


def _touches_nothing(arguments: JSONObject) -> str | None:
    return None


_UNSHOWN = frozenset({"minLength", "additionalProperties"})
"""Schema rules the model is not shown: an error names them when broken, and every prompt
pays for them otherwise."""


def shown(schema: JSONObject) -> dict[str, object]:
    """The schema as the model reads it: without the rules in `_UNSHOWN`, or an empty
    `required`."""
    return {
        key: _shown(value)
        for key, value in schema.items()
        if key not in _UNSHOWN and not (key == "required" and value == [])
    }


def _shown(value: object) -> object:
    if isinstance(value, Mapping):
        return shown(value)
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value


@attrs.frozen
class Tool:
    spec: ToolSpec
    handler: Handler = attrs.field(eq=False)
    resource: Resource = attrs.field(default=_touches_nothing, eq=False)
    checks: JSONObject | None = attrs.field(default=None, eq=False)
    """The schema the executor enforces, when the model is shown a shorter one."""

    @classmethod
    def compact(
        cls,
        name: str,
        description: str,
        schema: JSONObject,
        handler: Handler,
        resource: Resource = _touches_nothing,
    ) -> Tool:
        """A tool whose definition costs fewer tokens (`shown`) and whose calls are still
        checked against the whole `schema`."""
        return cls(ToolSpec(name, description, shown(schema)), handler, resource, schema)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def schema(self) -> JSONObject:
        return self.spec.parameters if self.checks is None else self.checks


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._groups: dict[str, tuple[str, ...]] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def replace(self, group: str, tools: Iterable[Tool]) -> None:
        """Put `tools` in place of those last given for `group` (an MCP server's, listed
        again after a restart); a name taken by a tool outside the group is refused."""
        tools = list(tools)
        for name in self._groups.pop(group, ()):
            self._tools.pop(name, None)
        added: list[str] = []
        try:
            for tool in tools:
                self.add(tool)
                added.append(tool.name)
        finally:
            self._groups[group] = tuple(added)

    def specs(self) -> tuple[ToolSpec, ...]:
        return tuple(tool.spec for tool in self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools


OnProgress = Callable[[ToolCall, ToolResult | None], None]
"""Told when a call starts (no result yet) and when it ends (with its result)."""


class ToolExecutor:
    """Runs the model's tool calls. It never raises for a tool's sake (only `Cancelled`):
    an unknown tool, bad arguments, an exception or a timeout become an error result that
    goes back to the model, which can then correct itself or tell the user.

    Configured secrets are redacted from the arguments (nothing a tool writes or stores holds
    one) and from the result (nothing a tool reads reaches the model with one)."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        timeout: float = 30.0,
        redact: Redactor | None = None,
        concurrency: int = 4,
    ) -> None:
        self._registry = registry
        self._timeout = timeout
        self._redact = redact or Redactor()
        self._concurrency = concurrency

    async def run_all(
        self,
        calls: Sequence[ToolCall],
        context: ToolContext,
        on_progress: OnProgress | None = None,
    ) -> tuple[ToolResult, ...]:
        """The calls of one model answer, run concurrently (at most `concurrency` at once,
        each within its own timeout); the results come back in the order of the calls.

        Calls on the same resource (a file's path) run one after the other in call order:
        each waits for the one before it to finish, so a write then an edit of one file
        behaves as the model meant. Waiting for a turn is not counted against the timeout.
        """
        results: list[ToolResult | None] = [None] * len(calls)
        limiter = trio.CapacityLimiter(self._concurrency)
        last_on: dict[str, trio.Event] = {}

        async def run_one(
            index: int, call: ToolCall, before: trio.Event | None, done: trio.Event
        ) -> None:
            try:
                if before is not None:
                    await before.wait()
                async with limiter:
                    if on_progress is not None:
                        on_progress(call, None)
                    result = await self.run(call, context)
                    if on_progress is not None:
                        on_progress(call, result)
                results[index] = result
            finally:
                done.set()

        async with trio.open_nursery() as nursery:
            for index, call in enumerate(calls):
                resource = self._resource(call)
                before = last_on.get(resource) if resource is not None else None
                done = trio.Event()
                if resource is not None:
                    last_on[resource] = done
                nursery.start_soon(run_one, index, call, before, done)
        assert all(result is not None for result in results)
        return tuple(result for result in results if result is not None)

    def _resource(self, call: ToolCall) -> str | None:
        tool = self._registry.get(call.name)
        if tool is None:
            return None
        try:
            return tool.resource(call.arguments)
        except Exception:  # malformed arguments: validation answers the call
            return None

    async def run(self, call: ToolCall, context: ToolContext) -> ToolResult:
        if self._redact:
            call = attrs.evolve(call, arguments=self._redact.value(call.arguments))
        result = await self._run(call, context)
        content = self._redact(result.content)
        if content != result.content:
            log.warning("tool %s: a configured secret was redacted from its result", call.name)
        if result.is_error:
            # Error texts may carry absolute paths; the model learns nothing of where the
            # workspace lives: paths in it become relative, the folder itself '.'.
            root = str(context.bot.workspace)
            content = content.replace(root + "/", "").replace(root, ".")
        return attrs.evolve(result, content=content)

    async def _run(self, call: ToolCall, context: ToolContext) -> ToolResult:
        tool = self._registry.get(call.name)
        if tool is None:
            known = ", ".join(spec.name for spec in self._registry.specs())
            return ToolResult(
                call.id, call.name, f"unknown tool {call.name!r}; known: {known}", True
            )
        problems = validate(call.arguments, tool.schema)
        if problems:
            return ToolResult(call.id, call.name, "invalid arguments: " + "; ".join(problems), True)
        try:
            with trio.fail_after(self._timeout):
                content = await tool.handler(context, call.arguments)
        except trio.TooSlowError:
            return ToolResult(call.id, call.name, f"timed out after {self._timeout:g}s", True)
        except Exception as exc:
            log.info("tool %s failed: %r", call.name, exc)
            return ToolResult(call.id, call.name, _describe(exc), True)
        return ToolResult(call.id, call.name, content)


def _describe(exc: Exception) -> str:
    """The error in words for the model. An `OSError` gives only its reason: its file names
    are absolute paths (the file tools put the path the model gave into the reason)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def validate(arguments: JSONObject, schema: JSONObject, at: str = "$") -> list[str]:
    """Check tool arguments against the subset of JSON Schema our tools use.

    Covers `type`, `properties`, `required`, `additionalProperties: false`, `enum`,
    `minimum`/`maximum` and `minLength`; returns what is wrong, in words, empty when valid.
    """
    problems: list[str] = []
    properties = schema.get("properties", {})
    assert isinstance(properties, dict)
    required = schema.get("required", [])
    assert isinstance(required, list)
    for name in required:
        if name not in arguments:
            problems.append(f"missing required field {at}.{name}")
    if schema.get("additionalProperties") is False:
        problems.extend(
            f"unexpected field {at}.{name}" for name in arguments if name not in properties
        )
    for name, value in arguments.items():
        rule = properties.get(name)
        if isinstance(rule, dict):
            problems.extend(_check(value, rule, f"{at}.{name}"))
    return problems


def _check(value: object, rule: dict[str, object], at: str) -> list[str]:
    expected = rule.get("type")
    if isinstance(expected, str):
        kinds = _TYPES.get(expected, (object,))
        if not isinstance(value, kinds) or (
            expected in ("integer", "number") and isinstance(value, bool)
        ):
            return [f"{at} must be {expected}, got {type(value).__name__}"]
    problems: list[str] = []
    choices = rule.get("enum")
    if isinstance(choices, list) and value not in choices:
        problems.append(f"{at} must be one of {', '.join(map(str, choices))}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = rule.get("minimum"), rule.get("maximum")
        if isinstance(low, int | float) and value < low:
            problems.append(f"{at} must be at least {low}")
        if isinstance(high, int | float) and value > high:
            problems.append(f"{at} must be at most {high}")
    shortest = rule.get("minLength")
    if isinstance(value, str) and isinstance(shortest, int) and len(value) < shortest:
        problems.append(f"{at} must not be empty" if shortest == 1 else f"{at} is too short")
    if isinstance(value, dict) and rule.get("type") == "object":
        problems.extend(validate(value, rule, at))
    return problems
