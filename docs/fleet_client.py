"""The MCP client of ``docs/fleet-example.sh``: an edit through one front end, its result read
back through another, with the MCP SDK's own client over streamable HTTP.

    python docs/fleet_client.py http://127.0.0.1:8801/mcp http://127.0.0.1:8802/mcp TOKEN

Prints what it did, one line a step; exits 1 if the edit does not succeed or the second
front end does not serve the same image.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image


def small_png() -> str:
    """A 64×48 PNG as a data: URI (HTTP front ends take no local paths)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 30)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def main(first: str, second: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(first, http_client=http)) as client,
    ):
        started = await client.call_tool(
            "edit_image",
            {
                "images": [small_png()],
                "function": "adjust",
                "vendor": "local",
                "prompt": "rotate 90",
                "wait_seconds": 30,
            },
        )
        task = started.structured_content or {}
        print(f"front end 1: task {task.get('id')} {task.get('status')}")
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(second, http_client=http)) as client,
    ):
        checked = await client.call_tool("check_task", {"task_id": task["id"], "wait_seconds": 30})
        done = checked.structured_content or {}
        print(f"front end 2: task {done.get('id')} {done.get('status')}")
        if done.get("status") != "succeeded":
            print(f"the edit did not succeed: {checked.content}", file=sys.stderr)
            return 1
        resource = await client.read_resource(done["results"][0]["uri"])
        data = base64.b64decode(resource.contents[0].blob)  # type: ignore[union-attr]
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
    print(
        f"front end 2: result {done['results'][0]['uri']}: {size[0]}x{size[1]}, {len(data)} bytes"
    )
    return 0 if size == (48, 64) else 1  # the 64×48 image, rotated


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(*sys.argv[1:])))
