"""The committed editor page (server/static/editor.html) is the build of the sources under
ui/ (``make ui``), and stays within what the MCP Apps default CSP lets a page do."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UI = ROOT / "ui"
PAGE = ROOT / "server" / "static" / "editor.html"
#: Besides ui/src/: what ui/build.mjs also hashes (its EXTRA).
EXTRA = ("build.mjs", "package.json", "package-lock.json")


def sources_hash() -> str:
    """ui/build.mjs's sourcesHash(): sha256 over each source's path (relative to ui/,
    sorted), length and bytes."""
    paths = sorted(
        [p.relative_to(UI).as_posix() for p in (UI / "src").rglob("*") if p.is_file()] + list(EXTRA)
    )
    digest = hashlib.sha256()
    for path in paths:
        data = (UI / path).read_bytes()
        digest.update(f"{path}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def test_the_committed_page_is_built_from_the_current_sources() -> None:
    page = PAGE.read_text(encoding="utf-8")
    recorded = re.search(r'<meta name="retouch-ui-sources" content="sha256:([0-9a-f]{64})">', page)
    assert recorded, "server/static/editor.html has no source hash: rebuild it with make ui"
    assert recorded.group(1) == sources_hash(), (
        "server/static/editor.html is older than ui/: rebuild it with make ui and commit it"
    )


def test_the_page_is_one_self_contained_document() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert len(page.encode()) < 100_000
    # Inline script and style only: nothing is loaded from anywhere.
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|@import|url\(", page)
    assert not re.search(r"https?://|//cdn|wss?://", page)
    # What the default App CSP forbids: blob: URLs, workers, eval, and network calls.
    assert not re.search(r"[\"'`]blob:", page)  # a blob: URL (``blob:`` keys are fine)
    for banned in (
        "createObjectURL",
        "Worker(",
        "eval(",
        "new Function",
        "fetch(",
        "XMLHttpRequest",
        "WebSocket",
        "localStorage",
        "import(",
    ):
        assert banned not in page, banned
