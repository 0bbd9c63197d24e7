"""``GET /metrics``: the Prometheus text format (``tools.telemetry``): this process's own
metrics and the store's gauges, counted when scraped.

Open to a loopback client that no proxy forwarded; anyone else sends
``Authorization: Bearer <[metrics] token>`` (compared in constant time). An MCP user's
token does not open it, nor does the metrics token open ``/mcp``: a scraper and an editor
are different parties. A scrape carries no body; one that does is refused before anything
is read.
"""

from __future__ import annotations

from mcp.server import MCPServer
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from tools import telemetry
from tools.config import Settings
from tools.service import Editor

PATH = "/metrics"


def add_metrics(mcp: MCPServer[Editor], settings: Settings) -> None:
    digest = telemetry.token_digest(settings.metrics.token.get_secret_value())

    @mcp.custom_route(PATH, methods=["GET"])
    async def metrics(request: Request) -> Response:
        client = request.client.host if request.client else None
        headers = {key.lower(): value for key, value in request.headers.items()}
        if not telemetry.allowed(client, headers, digest):
            return PlainTextResponse(
                "send Authorization: Bearer <metrics token>\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        length = headers.get("content-length", "0")
        if "transfer-encoding" in headers or not length.isdigit() or int(length) > 0:
            return PlainTextResponse("a scrape has no body\n", status_code=413)
        editor: Editor = request.app.state.editor
        body = await telemetry.render(editor.metrics_view)
        return Response(body, media_type=telemetry.CONTENT_TYPE_LATEST)
