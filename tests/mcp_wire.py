"""MCP by hand over HTTP, for what the SDK's client cannot send (a task-augmented call in the
2025-11-25 form, a request that declares the tasks extension by hand) and to see every field
as it is on the wire."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx

TASKS = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"
LEGACY = "2025-11-25"


class Wire:
    """One client speaking raw JSON-RPC to ``url``: each call returns the JSON-RPC response
    (its ``result`` or its ``error``)."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.ids = itertools.count(1)
        self.session: str | None = None

    async def modern(
        self, method: str, params: dict[str, Any] | None = None, *, declare: bool = True
    ) -> dict[str, Any]:
        """A 2026-07-28 request; ``declare`` puts the tasks extension in its capabilities."""
        capabilities = {"extensions": {TASKS: {}}} if declare else {}
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": capabilities,
        }
        headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        if method == "tools/call":
            headers["Mcp-Name"] = (params or {})["name"]
        return await self._post(method, {**(params or {}), "_meta": meta}, headers)

    async def initialize(self) -> dict[str, Any]:
        """The 2025-11-25 handshake; later :meth:`legacy` calls use its session, if any."""
        self.session = None
        answer = await self._post(
            "initialize",
            {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "wire", "version": "0"},
            },
            {},
        )
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self.http.post(self.url, json=note, headers=self._legacy_headers())
        return answer

    async def legacy(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A request on the 2025-11-25 connection :meth:`initialize` opened."""
        return await self._post(method, params or {}, self._legacy_headers())

    def _legacy_headers(self) -> dict[str, str]:
        headers = {"MCP-Protocol-Version": LEGACY}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        return headers

    async def _post(
        self, method: str, params: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        ident = next(self.ids)
        response = await self.http.post(
            self.url,
            json={"jsonrpc": "2.0", "id": ident, "method": method, "params": params},
            headers={"Accept": "application/json, text/event-stream", **headers},
        )
        if method == "initialize":
            self.session = response.headers.get("mcp-session-id")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for line in response.text.splitlines():
                if line.startswith("data:") and line[5:].strip():
                    message = json.loads(line[5:])
                    if message.get("id") == ident:
                        return dict(message)
            raise AssertionError(f"no answer to {method} in {response.text!r}")
        assert response.status_code < 500, response.text
        return dict(response.json())
