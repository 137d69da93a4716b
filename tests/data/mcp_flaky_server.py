"""A small MCP server (stdio) for the failure cases of the MCP client tests.

`pid` names the process (a restart shows as a new one), `crash` exits mid-call, `hang` never
answers, `picture` answers with an image, `refuse` answers with an error result."""

from __future__ import annotations

import base64
import os

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent

server = MCPServer("flaky")


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


@server.tool()
def crash() -> str:
    """Exit at once, mid-call."""
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answer."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
def picture() -> list[TextContent | ImageContent]:
    """A caption and a small PNG."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(92)).decode()
    return [TextContent(text="a red dot"), ImageContent(data=png, mime_type="image/png")]


@server.tool()
def refuse(reason: str) -> str:
    """Fail with the reason given."""
    raise ToolError(f"refused: {reason}")


if __name__ == "__main__":
    server.run()
