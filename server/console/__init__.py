"""The operators' console at ``/console``: tasks live, a task's story, vendors, costs and
users, behind its own sign-in (``[console] tokens``); off unless a token is set."""

from __future__ import annotations

from mcp.server import MCPServer

from server.console.routes import Console
from tools.config import Settings
from tools.service import Editor

#: The paths the console answers, which the bearer guard leaves to it.
PREFIX = "/console"


def add_console(mcp: MCPServer[Editor], settings: Settings) -> Console | None:
    """Mount the console on the server's routes if ``[console]`` has a token."""
    if not settings.console.enabled:
        return None
    console = Console(settings)
    console.mount(mcp)
    return console
