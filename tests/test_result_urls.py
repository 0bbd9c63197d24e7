"""Result links: every result of a tool call served over HTTP carries a signed URL that a
browser opens without a token; any change to it is 403, an expired one 410; over stdio (or
in memory, without links) results simply have none."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from mcp import Client

from server.app import build_server
from server.result_urls import SECRET_FILE, ResultURLs, load_secret, public_base
from tests.conftest import MakeSettings, data_uri, decode, png
from tests.test_mcp_tasks import LINEART, TasksClient
from tests.test_uploads import AUTH, TOKEN, Served, serve
from tools.config import Settings
from tools.errors import ConfigError

TTL = 600


@pytest.fixture
def link_settings(make_settings: MakeSettings) -> Settings:
    return make_settings(f'[mcp]\nauth_token = "{TOKEN}"\nresult_url_ttl_s = {TTL}\n')


@pytest.fixture
def now() -> list[float]:
    """The links' clock: move it on to expire them."""
    return [time.time()]


@pytest.fixture
async def served(link_settings: Settings, now: list[float]) -> AsyncIterator[Served]:
    async with serve(link_settings, clock=lambda: now[0]) as running:
        yield running


async def finished_edit(served: Served) -> tuple[dict, list]:
    """An edit through the MCP server the app serves: (structured content, content)."""
    async with Client(served.mcp) as client:
        done = await client.call_tool(
            "edit_image",
            {
                "images": [data_uri(png((40, 30)))],
                "function": "adjust",
                "prompt": "rotate 90",
                "wait_seconds": 30,
            },
        )
    assert not done.is_error and done.structured_content["status"] == "succeeded", done.content
    return done.structured_content, done.content


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return f"{parts.path}?{urlencode(query)}"


async def test_each_result_has_a_link_in_the_structure_and_the_text(served: Served) -> None:
    task, content = await finished_edit(served)
    urls = [r["url"] for r in task["results"]]
    assert len(urls) == 1
    for index, url in enumerate(urls):
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == "http://127.0.0.1:8765"
        assert parts.path == f"/results/{task['id']}/{index}"
        query = parse_qs(parts.query)
        assert set(query) == {"exp", "sig"}
        assert int(query["exp"][0]) == pytest.approx(time.time() + TTL, abs=5)
        assert url in content[0].text
    # list_tasks shows the same links.
    async with Client(served.mcp) as client:
        listed = await client.call_tool("list_tasks", {"limit": 1})
    [listed_task] = listed.structured_content["tasks"]
    assert path_of(listed_task["results"][0]["url"]).split("?")[0] == urlsplit(urls[0]).path
    # The resource links stay.
    links = [c for c in content if c.type == "resource_link"]
    assert [str(link.uri) for link in links] == [r["uri"] for r in task["results"]]


async def test_a_link_serves_the_stored_image_without_a_token(served: Served) -> None:
    task, _ = await finished_edit(served)
    for result in task["results"]:
        answer = await served.http.get(path_of(result["url"]))  # no Authorization header
        assert answer.status_code == 200, answer.text
        stored, mime = await served.editor.result(task["id"], result["index"])
        assert answer.content == stored
        assert answer.headers["content-type"] == mime == result["mime_type"]
        assert answer.headers["content-length"] == str(len(stored)) == str(result["bytes"])
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-disposition"] == (
            f'inline; filename="retouch-{task["id"][:8]}-{result["index"]}.png"'
        )
        cache = answer.headers["cache-control"]
        assert cache.startswith("private, max-age=") and 0 < int(cache.split("=")[1]) <= TTL + 1
        assert decode(answer.content).size == (result["width"], result["height"])
    head = await served.http.head(path_of(task["results"][0]["url"]))
    assert head.status_code == 200 and head.content == b""


async def test_a_changed_link_is_forbidden(served: Served) -> None:
    task, _ = await finished_edit(served)
    url = task["results"][0]["url"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    sig, exp = query["sig"], query["exp"]
    other_task, _ = await finished_edit(served)
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    forged = [
        with_query(url, sig=flipped),  # signature
        with_query(url, sig=""),
        with_query(url, sig=sig + "A"),
        with_query(url, exp=str(int(exp) + 1)),  # expiry pushed back
        with_query(url, exp=str(int(exp) - 1)),
        with_query(url, exp="x" + exp),
        with_query(url, exp=exp + "0" * 20),
        path_of(url).replace(f"/{task['id']}/0", f"/{task['id']}/1"),  # index
        path_of(url).replace(f"/{task['id']}/0", f"/{task['id']}/00"),
        path_of(url).replace(f"/{task['id']}/0", f"/{task['id']}/x"),
        path_of(url).replace(task["id"], other_task["id"]),  # another task
        path_of(url).replace(task["id"], task["id"].upper()),
        urlsplit(url).path,  # no query at all
        f"{urlsplit(url).path}?sig={sig}",
        f"{urlsplit(url).path}?exp={exp}",
    ]
    for path in forged:
        answer = await served.http.get(path)
        assert answer.status_code == 403, (path, answer.status_code)
        assert answer.json() == {"error": "forbidden", "message": "this link is not valid"}
    # A path that leaves /results/ is not a link at all (the token guard answers).
    escaped = path_of(url).replace(task["id"], "../../etc/passwd")
    assert (await served.http.get(escaped)).status_code == 401
    # The other task's own link still works, and sending a token changes nothing.
    ok = await served.http.get(path_of(other_task["results"][0]["url"]), headers=AUTH)
    assert ok.status_code == 200


async def test_an_expired_link_is_gone(served: Served, now: list[float]) -> None:
    task, _ = await finished_edit(served)
    path = path_of(task["results"][0]["url"])
    now[0] += TTL - 5
    assert (await served.http.get(path)).status_code == 200
    now[0] += 10
    answer = await served.http.get(path)
    assert answer.status_code == 410 and answer.json()["error"] == "expired"
    # A fresh check_task gives fresh links.
    async with Client(served.mcp) as client:
        again = await client.call_tool("check_task", {"task_id": task["id"]})
    fresh = path_of(again.structured_content["results"][0]["url"])
    assert fresh != path and (await served.http.get(fresh)).status_code == 200


async def test_a_link_to_a_result_no_longer_stored_is_gone(served: Served) -> None:
    task, _ = await finished_edit(served)
    await served.editor.store.cleanup(retention_days=-1)
    answer = await served.http.get(path_of(task["results"][0]["url"]))
    assert answer.status_code == 410 and answer.json()["error"] == "gone"


async def test_an_edit_run_as_an_mcp_task_ends_with_links_too(served: Served) -> None:
    extension = TasksClient()
    async with Client(served.mcp, extensions=[extension]) as client:
        done = await client.call_tool("edit_image", LINEART)  # polled through tasks/get
    assert extension.seen[-1] == "completed"
    [result] = done.structured_content["results"]
    assert result["url"] in done.content[0].text
    assert (await served.http.get(path_of(result["url"]))).status_code == 200


async def test_without_http_results_have_no_link(settings: Settings) -> None:
    async with Client(build_server(settings)) as client:
        done = await client.call_tool(
            "edit_image",
            {
                "images": [data_uri(png())],
                "function": "adjust",
                "prompt": "rotate 90",
                "wait_seconds": 30,
            },
        )
    assert done.structured_content["results"][0]["url"] is None
    assert "/results/" not in done.content[0].text


# ---- the secret and the base ---------------------------------------------------------------


def test_the_secret_is_made_once_private_and_kept(settings: Settings) -> None:
    path = settings.store.dir / SECRET_FILE
    assert not path.exists()
    first = load_secret(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(settings) == first and len(first) >= 32
    signed = ResultURLs.from_settings(settings).sign("a" * 32, "0", "99")
    assert ResultURLs.from_settings(settings).sign("a" * 32, "0", "99") == signed
    assert [p.name for p in settings.store.dir.iterdir() if "secret" in p.name] == [SECRET_FILE]


def test_processes_starting_at_once_share_one_secret(settings: Settings) -> None:
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: load_secret(settings), range(16)))
    assert len(secrets) == 1
    assert [p.name for p in settings.store.dir.iterdir() if "secret" in p.name] == [SECRET_FILE]


def test_a_configured_secret_wins_and_must_be_long(make_settings: MakeSettings) -> None:
    secret = "s" * 40
    settings = make_settings(f'[mcp]\nurl_secret = "{secret}"\n')
    assert load_secret(settings) == secret.encode()
    assert not (settings.store.dir / SECRET_FILE).exists()
    assert secret not in repr(settings)
    with pytest.raises(ConfigError, match=r"url_secret.*at least 32"):
        make_settings('[mcp]\nurl_secret = "short"\n', name="short.toml")
    with pytest.raises(ConfigError, match="result_url_ttl_s"):
        make_settings("[mcp]\nresult_url_ttl_s = 0\n", name="zero.toml")
    assert make_settings("[mcp]\nresult_url_ttl_s = 1.5\n", name="ok.toml").mcp.result_url_ttl_s


def test_links_of_another_secret_are_forbidden() -> None:
    ours = ResultURLs(b"x" * 32, "http://h", 60)
    theirs = ResultURLs(b"y" * 32, "http://h", 60)
    query = parse_qs(urlsplit(theirs.url("a" * 32, 0)).query)
    assert ours.check("a" * 32, "0", query["exp"][0], query["sig"][0]) == 403
    mine = parse_qs(urlsplit(ours.url("a" * 32, 0)).query)
    assert ours.check("a" * 32, "0", mine["exp"][0], mine["sig"][0]) is None


def test_the_base_is_the_public_url_else_the_listening_address(
    make_settings: MakeSettings,
) -> None:
    public = make_settings('[mcp]\npublic_url = "https://retouch.example.com/"\n')
    assert public_base(public) == "https://retouch.example.com"
    listening = make_settings('[mcp]\nhost = "127.0.0.2"\nport = 9000\n', name="b.toml")
    assert public_base(listening) == "http://127.0.0.2:9000"
    six = make_settings('[mcp]\nhost = "::1"\nport = 9001\n', name="c.toml")
    assert public_base(six) == "http://[::1]:9001"
    url = ResultURLs(b"k" * 32, public_base(public), 60).url("b" * 32, 3)
    assert url.startswith(f"https://retouch.example.com/results/{'b' * 32}/3?exp=")
