"""The smallest MCP server the SDK makes (one tool), over stdio: the floor under any
server's start-up time and idle memory (``bench/stdio.py`` launches it beside Retouch)."""

from mcp.server import MCPServer

server = MCPServer("empty")


@server.tool()
async def ping() -> str:
    """Answer pong."""
    return "pong"


if __name__ == "__main__":
    server.run("stdio")
