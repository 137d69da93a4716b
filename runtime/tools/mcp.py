"""Tools from MCP servers, through the official `mcp` SDK (anyio, so it runs under trio).

Each `[mcp.NAME]` server of botcore.toml is started with the bot and supervised: connect
(spawn it over stdio, or reach its streamable-HTTP URL), initialize, list its tools and
register them as `NAME__tool`; then watch it (a call that finds the connection closed, or
a ping it does not answer in time). A server lost is connected again with exponential
backoff and jitter; meanwhile its tools stay registered and answer an error saying so, and
the rest of the bot keeps working. Everything runs in the nursery of `McpServers.run`:
cancelling it stops every server (the SDK closes stdin, then terminates the process).

A call is bounded by the executor's tool timeout like any tool's; cancelling it cancels
the request on the server.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx2
import mcp_types
import trio
from mcp import ClientSession, MCPError, StdioServerParameters, stdio_client
from mcp.client._transport import TransportStreams  # the SDK names no public alias
from mcp.client.streamable_http import streamable_http_client

from runtime.config import McpServerSettings
from runtime.llm import ToolSpec
from runtime.tools.registry import JSONObject, Tool, ToolContext, ToolRegistry

log = logging.getLogger("runtime.tools.mcp")

MAX_RESULT_CHARS = 100_000
"""A result longer than this is cut (with a note saying so) before it reaches the model."""


class McpToolError(Exception):
    """A call that did not give a result: its text goes back to the model as an error."""


@attrs.frozen
class McpServerStatus:
    name: str
    connected: bool
    tools: int
    restarts: int
    problem: str | None
    """Why it is not connected (or was last lost), in words."""


@attrs.frozen
class Backoff:
    """Waits between reconnections: `first`, doubling up to `longest`, with ±`jitter`."""

    first: float = 1.0
    longest: float = 60.0
    jitter: float = 0.2

    def after(self, failures: int) -> float:
        wait: float = min(self.longest, self.first * 2.0 ** max(0, failures - 1))
        return wait * random.uniform(1 - self.jitter, 1 + self.jitter)


class McpServers:
    """The bot's MCP servers: `run` starts and supervises them; their tools go into
    `registry` as each one connects."""

    def __init__(
        self,
        servers: Mapping[str, McpServerSettings],
        registry: ToolRegistry,
        *,
        workspace: Path,
        timeout: float = 30.0,
        ping_every: float = 15.0,
        backoff: Backoff = Backoff(),
    ) -> None:
        self._servers = [
            _Server(name, settings, registry, workspace, timeout, ping_every, backoff)
            for name, settings in servers.items()
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect every server (at once, each within the timeout; one that fails keeps
        being retried), report started, then supervise them until cancelled."""
        async with trio.open_nursery() as nursery:
            tried = []
            for server in self._servers:
                first = trio.Event()
                tried.append(first)
                nursery.start_soon(server.supervise, first)
            for first in tried:
                await first.wait()
            task_status.started()

    def statistics(self) -> tuple[McpServerStatus, ...]:
        return tuple(server.status() for server in self._servers)


class _Server:
    def __init__(
        self,
        name: str,
        settings: McpServerSettings,
        registry: ToolRegistry,
        workspace: Path,
        timeout: float,
        ping_every: float,
        backoff: Backoff,
    ) -> None:
        self.name = name
        self._settings = settings
        self._registry = registry
        self._cwd = workspace / settings.cwd if settings.cwd else workspace
        self._timeout = timeout
        self._ping_every = ping_every
        self._backoff = backoff
        self._session: ClientSession | None = None
        self._lost = trio.Event()
        self._problem: str | None = "not connected yet"
        self._restarts = 0
        self._tools = 0

    def status(self) -> McpServerStatus:
        return McpServerStatus(
            self.name, self._session is not None, self._tools, self._restarts, self._problem
        )

    async def supervise(self, first: trio.Event) -> None:
        failures = 0
        while True:
            began = trio.current_time()
            try:
                await self._connected(first)
            except Exception as exc:
                self._problem = _reason(exc)
            self._session = None
            first.set()
            # A server that stayed up a while starts the backoff over.
            up_long = trio.current_time() - began > self._backoff.longest
            failures = 1 if up_long else failures + 1
            wait = self._backoff.after(failures)
            log.warning(
                "MCP server %s: %s; connecting again in %.1fs", self.name, self._problem, wait
            )
            await trio.sleep(wait)
            self._restarts += 1

    async def _connected(self, first: trio.Event) -> None:
        """Connect, list the tools, then watch the server; returns once it is lost."""
        async with self._transport() as (read, write), ClientSession(read, write) as session:
            with trio.fail_after(self._timeout):
                await session.initialize()
                tools = await _list_tools(session)
            self._registry.replace(self.name, [self._tool(tool) for tool in tools])
            self._tools = len(tools)
            self._lost = trio.Event()
            self._session, self._problem = session, None
            log.info("MCP server %s connected: %d tool(s)", self.name, len(tools))
            first.set()
            try:
                await self._watch(session)
            finally:  # lost: calls from now on are told so, not sent to a closed session
                self._session = None

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[TransportStreams]:
        settings = self._settings
        if settings.url is not None:
            timeout = httpx2.Timeout(self._timeout, read=None)
            async with (
                httpx2.AsyncClient(headers=settings.headers, timeout=timeout) as http,
                streamable_http_client(settings.url, http_client=http) as streams,
            ):
                yield streams
            return
        assert settings.command is not None
        parameters = StdioServerParameters(
            command=settings.command, args=settings.args, env=settings.env, cwd=self._cwd
        )
        async with stdio_client(parameters) as streams:
            yield streams

    async def _watch(self, session: ClientSession) -> None:
        """Returns when the server is lost: a call found the connection closed, or a ping
        went unanswered for the timeout (a server stopped, or wedged as a whole)."""
        while True:
            with trio.move_on_after(self._ping_every):
                await self._lost.wait()
                return
            try:
                with trio.fail_after(self._timeout):
                    await session.send_ping()
            except trio.TooSlowError:
                self._problem = f"did not answer a ping within {self._timeout:g}s"
                return
            except Exception as exc:
                self._problem = _reason(exc)
                return

    def _tool(self, tool: mcp_types.Tool) -> Tool:
        name = f"{self.name}__{tool.name}"
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
        description = (tool.description or tool.title or tool.name).strip()
        spec = ToolSpec(name, f"[{self.name}] {description}", dict(tool.input_schema))

        async def call(context: ToolContext, arguments: JSONObject) -> str:
            return await self.call(tool.name, arguments)

        return Tool(spec, call)

    async def call(self, tool: str, arguments: JSONObject) -> str:
        session = self._session
        if session is None:
            raise McpToolError(
                f"the MCP server {self.name!r} is not connected ({self._problem}); "
                "it is being restarted, try again in a little while"
            )
        try:
            result = await session.call_tool(tool, dict(arguments))
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self._problem = "the connection closed during a call"
                self._session = None
                self._lost.set()
                raise McpToolError(
                    f"the MCP server {self.name!r} went away during the call; "
                    "it is being restarted, try again in a little while"
                ) from exc
            raise McpToolError(f"the MCP server {self.name!r} refused: {exc.message}") from exc
        text = _text(result)
        if result.is_error:
            raise McpToolError(text)
        return text


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a server paging forever cannot hang the start
        page = await session.list_tools(
            params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        )
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _text(result: mcp_types.CallToolResult) -> str:
    """The result as the model reads it: text as is, anything else as a note."""
    parts: list[str] = []
    for block in result.content:
        match block:
            case mcp_types.TextContent(text=text):
                parts.append(text)
            case mcp_types.ImageContent(mime_type=kind, data=data):
                parts.append(f"[an image ({kind}, {_decoded_size(data)} bytes), not shown]")
            case mcp_types.AudioContent(mime_type=kind, data=data):
                parts.append(f"[audio ({kind}, {_decoded_size(data)} bytes), not played]")
            case mcp_types.EmbeddedResource(resource=mcp_types.TextResourceContents() as res):
                parts.append(f"[{res.uri}]\n{res.text}")
            case mcp_types.EmbeddedResource(resource=resource):
                parts.append(f"[a binary resource, {resource.uri}, not shown]")
            case mcp_types.ResourceLink(uri=uri, name=name):
                parts.append(f"[resource {name}: {uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    text = "\n".join(parts) or "(no output)"
    if len(text) > MAX_RESULT_CHARS:
        cut = len(text) - MAX_RESULT_CHARS
        text = f"{text[:MAX_RESULT_CHARS]}\n[cut: {cut} more characters]"
    return text


def _decoded_size(data: str) -> int:
    """Bytes in base64 `data`, without decoding it."""
    return len(data) * 3 // 4 - (len(data) - len(data.rstrip("=")))


def _reason(exc: BaseException) -> str:
    """A failure in words; the SDK's task groups wrap errors in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, trio.TooSlowError):
        return "did not answer in time"
    if isinstance(exc, MCPError):
        return exc.message
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(inner) for inner in exc.exceptions)
    return str(exc) or type(exc).__name__
