"""Tools from MCP servers: real ones from PyPI over stdio, a flaky one of ours for the
failure cases, and one over streamable HTTP, all driven through the running bot."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx2
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from mcp.server.mcpserver import MCPServer

from adapters import Inbound, Reply
from adapters.base import WaitingResponder
from runtime.botcore import Bot
from runtime.config import Config, ConfigError, McpServerSettings
from runtime.lifecycle import Runtime
from runtime.testing import FakeLLM, Text, ToolUse, local_config, open_runtime, serve_bot
from runtime.testing.waiting import wait_until
from runtime.tools import ToolContext, ToolRegistry
from runtime.tools.mcp import Backoff, McpServers

ROOT = Path(__file__).parents[2]
SERVERS = ROOT / ".venv-mcp" / "bin"
FLAKY = McpServerSettings(
    command=sys.executable, args=[str(ROOT / "tests" / "data" / "mcp_flaky_server.py")]
)



@pytest.fixture
def real_servers() -> Path:
    """Installed by scripts/test. Missing, the test fails: a skip would let a fresh machine
    pass without ever talking to a real MCP server."""
    if not (SERVERS / "mcp-server-git").exists():
        pytest.fail("the real MCP servers are missing: scripts/test installs them into .venv-mcp")
    return SERVERS


needs_servers = pytest.mark.usefixtures("real_servers")


async def ask(runtime: Runtime, text: str, session: str = "s") -> str:
    responder = WaitingResponder()
    await runtime.deliver(Inbound("test", session, text, responder))
    with trio.fail_after(30):
        reply: Reply = await responder.wait()
    return reply.message


def tool(name: str, **arguments: object) -> str:
    """What the offline model turns into one call of `name`."""
    return f"/tool {name} {json.dumps(arguments)}"


@needs_servers
async def test_the_model_answers_with_a_tool_of_a_real_stdio_server(
    workspace: Path, fake_llm: tuple[FakeLLM, str], client: httpx2.AsyncClient
) -> None:
    fake, url = fake_llm
    config = local_config(
        workspace,
        default_model="claude-test",
        anthropic_api_key="sk-ant-key-0123456789",
        anthropic_base_url=url,
        mcp={"time": McpServerSettings(command=str(SERVERS / "mcp-server-time"))},
    )
    fake.script(
        ToolUse(("time__get_current_time", {"timezone": "Europe/Paris"})), Text("It is late.")
    )
    async with serve_bot(config) as bot:
        response = await client.post(f"{bot.url}/api/message", json={"message": "time?"})
    assert response.json()["message"] == "It is late."
    first, second = fake.requests_for("anthropic")
    offered = {t["name"]: t for t in first.body["tools"]}
    assert {"time__get_current_time", "time__convert_time"} <= set(offered)
    assert offered["time__get_current_time"]["description"].startswith("[time] ")
    assert "timezone" in offered["time__get_current_time"]["input_schema"]["properties"]
    (result,) = second.body["messages"][-1]["content"]
    assert result["is_error"] is False
    assert '"timezone": "Europe/Paris"' in str(result["content"])


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A local git repository with one commit."""
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notes.md").write_text("milk\n")
    subprocess.run([*git, "add", "notes.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "Remember the milk"], check=True)
    return repo


@needs_servers
async def test_the_git_server_reads_a_local_repository(
    tmp_path: Path, workspace: Path, repo: Path
) -> None:
    server = McpServerSettings(
        command=str(SERVERS / "mcp-server-git"), args=["--repository", str(repo)]
    )
    async with open_runtime(local_config(workspace, mcp={"git": server})) as runtime:
        log = await ask(runtime, tool("git__git_log", repo_path=str(repo)))
        status = await ask(runtime, tool("git__git_status", repo_path=str(repo)))
        outside = await ask(runtime, tool("git__git_log", repo_path=str(tmp_path)))
    assert "Remember the milk" in log
    assert "working tree clean" in status
    assert outside.startswith("The git__git_log tool failed:")


async def test_a_server_that_dies_mid_conversation_is_restarted_and_the_bot_keeps_working(
    workspace: Path,
) -> None:
    async with open_runtime(local_config(workspace, mcp={"flaky": FLAKY})) as runtime:
        assert runtime.mcp is not None
        first = await ask(runtime, tool("flaky__pid"))
        crashed = await ask(runtime, tool("flaky__crash"))
        meanwhile = await ask(runtime, tool("flaky__pid"))
        other = await ask(runtime, "remember the bot still works")
        await wait_until(lambda: runtime.mcp and runtime.mcp.statistics()[0].connected, within=20)
        (status,) = runtime.mcp.statistics()
        second = await ask(runtime, tool("flaky__pid"))
    assert first.isdigit() and second.isdigit() and first != second
    assert "The flaky__crash tool failed: the MCP server 'flaky' went away" in crashed
    assert "being restarted, try again in a little while" in meanwhile
    assert other == "Got it, I'll remember that."
    assert status.restarts == 1 and status.tools == 5


async def test_servers_stop_with_the_bot(workspace: Path) -> None:
    async with open_runtime(local_config(workspace, mcp={"flaky": FLAKY})) as runtime:
        pid = int(await ask(runtime, tool("flaky__pid")))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_hanging_server_is_bounded_by_the_tool_timeout(workspace: Path) -> None:
    config = local_config(workspace, mcp={"flaky": FLAKY}, tool_timeout_seconds=1)
    async with open_runtime(config) as runtime:
        hung = await ask(runtime, tool("flaky__hang"))
        after = await ask(runtime, tool("flaky__pid"))
    assert hung == "The flaky__hang tool failed: timed out after 1s"
    assert after.isdigit()


async def test_images_and_error_results_reach_the_model_as_text(workspace: Path) -> None:
    async with open_runtime(local_config(workspace, mcp={"flaky": FLAKY})) as runtime:
        picture = await ask(runtime, tool("flaky__picture"))
        refused = await ask(runtime, tool("flaky__refuse", reason="not today"))
        invalid = await ask(runtime, tool("flaky__refuse"))
    assert picture == "a red dot\n[an image (image/png, 100 bytes), not shown]"
    assert (
        refused == "The flaky__refuse tool failed: Error executing tool refuse: refused: not today"
    )
    assert (
        invalid
        == "The flaky__refuse tool failed: invalid arguments: missing required field $.reason"
    )


async def test_a_server_that_cannot_start_leaves_the_rest_of_the_bot_working(
    workspace: Path,
) -> None:
    broken = McpServerSettings(command=str(workspace / "no-such-server"))
    async with open_runtime(local_config(workspace, mcp={"gone": broken})) as runtime:
        assert runtime.mcp is not None
        (status,) = runtime.mcp.statistics()
        reply = await ask(runtime, "remember the bot started anyway")
        health = await runtime.health()
    assert not status.connected and status.problem and "no-such-server" in status.problem
    assert reply == "Got it, I'll remember that."
    assert health[0] == 200 and health[1]["mcp"] == {"gone": "down"}


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def _requiring(token: str, app: ASGIApp) -> ASGIApp:
    """`app`, answering 401 to a request without `Authorization: Bearer <token>`."""

    async def guarded(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers", []))
        if scope["type"] == "http" and headers.get(b"authorization") != f"Bearer {token}".encode():
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
            return
        await app(scope, receive, send)

    return guarded


@pytest.fixture
async def calculator() -> AsyncIterator[str]:
    """A streamable-HTTP MCP server on 127.0.0.1 (the SDK's own server side) that wants a
    bearer token; yields its URL."""
    server = MCPServer("calc")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    app = _requiring("calc-token-0123456789", server.streamable_http_app())
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        yield f"{binds[0]}/mcp"
        nursery.cancel_scope.cancel()


async def test_a_streamable_http_server_configured_in_botcore_toml(
    workspace: Path, calculator: str
) -> None:
    (workspace / "botcore.toml").write_text(
        f'[mcp.calc]\nurl = "{calculator}"\n'
        'headers = { Authorization = "Bearer ${CALC_TOKEN}" }\n'
    )
    config = Config.load({"CALC_TOKEN": "calc-token-0123456789"}, workspace=workspace)
    assert "calc-token-0123456789" in config.secrets
    async with open_runtime(local_config(workspace, mcp=config.mcp)) as runtime:
        answer = await ask(runtime, tool("calc__add", a=2, b=3))
    assert answer == "5"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[mcp.x]\nargs = ["a"]\n', "MCP server 'x': set either command (stdio) or url"),
        ('[mcp.x]\ncommand = "a"\nurl = "http://h/mcp"\n', "set either command"),
        ('[mcp.x]\nurl = "ftp://h/mcp"\n', "url must start with http:// or https://"),
        ('[mcp.a__b]\ncommand = "a"\n', "its tools are named NAME__tool"),
        (
            '[mcp.x]\ncommand = "a"\nenv = { K = "${NOT_SET}" }\n',
            "K needs $NOT_SET, which is not set",
        ),
    ],
)
def test_a_bad_mcp_table_is_refused_with_what_to_fix(
    workspace: Path, table: str, problem: str
) -> None:
    (workspace / "botcore.toml").write_text(table)
    with pytest.raises(ConfigError, match="MCP server") as refused:
        Config.load({}, workspace=workspace)
    assert problem in str(refused.value)


async def test_a_server_that_stops_answering_pings_is_replaced(workspace: Path) -> None:
    registry = ToolRegistry()
    servers = McpServers(
        {"flaky": FLAKY},
        registry,
        workspace=workspace,
        timeout=2,
        ping_every=0.2,
        backoff=Backoff(first=0.1),
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(servers.run)
        tool = registry.get("flaky__pid")
        assert tool is not None
        context = ToolContext(await Bot.open(workspace), "s")
        async with context.bot:
            first = int(await tool.handler(context, {}))
            os.kill(first, signal.SIGSTOP)  # alive, but answers nothing
            try:
                await wait_until(lambda: servers.statistics()[0].restarts >= 1, within=20)
                await wait_until(lambda: servers.statistics()[0].connected, within=20)
                second = int(await tool.handler(context, {}))
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(first, signal.SIGKILL)
        nursery.cancel_scope.cancel()
    assert second != first
