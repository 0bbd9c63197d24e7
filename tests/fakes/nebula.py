"""Fake ai-nebula `POST /v1/images/generations` (a proxy for qwen-image-edit-plus).

Written from vendors.md §5 and seed 002 (the ai-nebula qwen-image-edit-plus page).

Constructor
    FakeNebula(api_key="sk-test-nebula", *, http_status_mirrors_code=True)

Routes (route name: method path)
    generations  POST /v1/images/generations
    files        GET  /files/{name}          result images

Request (seed 002): {"model", "prompt", "parameters": {n, negative_prompt, watermark, seed},
"contents": [{"role": "user", "parts": [{"image"}x1-3, {"text"} (last)]}]}.
Success: 200 {"code": 200, "msg": "Operation successful", "data": {"data": [{"url",
"b64_json": "", "revised_prompt": ""}], "created", "metadata": <raw DashScope body:
{"output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant",
"content": [{"image"}...]}}]}, "usage": {"width", "height", "image_count"}, "request_id"}>}}.
Errors: {"code": 400|401|403|429|500, "msg", "data": null}.

Choices where seed 002 is silent or unclear
- HTTP status: the seed lists 400/401/403/429/500 as statuses next to the `code` field but
  never shows the HTTP status line. By default the HTTP status mirrors `code`
  (http_status_mirrors_code=True); with False every error is HTTP 200 carrying the code in
  the body (the other plausible reading), so adapters can be tested against both.
- `parameters` is marked required in the seed although all its fields are optional: a
  request without it is rejected (400). Fields: n int 1-6 (default 1), negative_prompt str,
  watermark bool, seed int 0-2147483647.
- model: qwen-image-edit-plus or qwen-image-edit-plus-2025-10-30 (`models` attribute).
- `prompt` is required; the precedence of `prompt` over the text part is unstated, so both
  are only recorded (the text part must exist, as the seed marks it required and last).
- contents: exactly one entry, role "user"; parts: 1-3 images ("Image quantity exceeds
  limit" otherwise) then exactly one text, last. Images are http(s) URLs (fetched from
  loopback or remote_images) or data:{mime};base64 URIs; 384-3072 px, <= 10 MB.
- Messages follow the seed's "Parameter Error: ..." style for 400; the others are invented.
- Output: ~1024*1024 pixels with the last image's aspect ratio, multiples of 16 (the
  qwen-image-edit-plus default behind the proxy); revised_prompt is "" as in the seed.

Control API: blocked_words (prompt/text containing one -> 400), models, generations
(successful calls), expire_results(), inject(), reset().
Fault helpers: error(code, msg=None, *, http_status=None, headers=None) (http_status None =
same as code), bad_request(msg), unauthorized(), insufficient_balance(),
rate_limited(retry_after=None), server_error(). With a fake created with
http_status_mirrors_code=False pass http_status=200 to match.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.http import (
    FakeServer,
    Fault,
    FetchError,
    Recorded,
    new_id,
    open_image,
    render_result,
)

MODELS = ("qwen-image-edit-plus", "qwen-image-edit-plus-2025-10-30")
SEED_MAX = 2147483647
_DEFAULT_MSG = {
    400: "Parameter Error",
    401: "Authentication failed: invalid or expired API key",
    403: "Insufficient permissions or balance",
    429: "Request too frequent, rate limit exceeded",
    500: "Internal Server Error",
}


def error_body(code: int, msg: str | None = None) -> dict[str, Any]:
    return {"code": code, "msg": msg or _DEFAULT_MSG.get(code, "Error"), "data": None}


def error(
    code: int,
    msg: str | None = None,
    *,
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Fault:
    return Fault.status(
        http_status if http_status is not None else code, error_body(code, msg), headers
    )


def bad_request(msg: str = "Parameter Error: Image quantity exceeds limit", **kw: Any) -> Fault:
    return error(400, msg, **kw)


def unauthorized(**kw: Any) -> Fault:
    return error(401, **kw)


def insufficient_balance(**kw: Any) -> Fault:
    return error(403, "Insufficient balance", **kw)


def rate_limited(retry_after: float | None = None, **kw: Any) -> Fault:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return error(429, headers=headers, **kw)


def server_error(**kw: Any) -> Fault:
    return error(500, **kw)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _round16(value: float) -> int:
    return max(16, math.floor(value / 16.0 + 0.5) * 16)


class FakeNebula(FakeServer):
    """See the module docstring."""

    def __init__(
        self, api_key: str = "sk-test-nebula", *, http_status_mirrors_code: bool = True
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.http_status_mirrors_code = http_status_mirrors_code
        self._init_state()
        self.add_route("/v1/images/generations", "generations", ["POST"], self._generations)

    def _init_state(self) -> None:
        self.blocked_words: set[str] = set()
        self.models: tuple[str, ...] = MODELS
        self.generations = 0

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._init_state()

    def _error(self, code: int, msg: str | None = None) -> Response:
        status = code if self.http_status_mirrors_code else 200
        return JSONResponse(error_body(code, msg), status_code=status)

    def _validate(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Parameter Error: the request body must be a JSON object"
        if body.get("model") not in self.models:
            return f"Parameter Error: unsupported model {body.get('model')!r}"
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return "Parameter Error: prompt is required"
        params = body.get("parameters")
        if not isinstance(params, dict):
            return "Parameter Error: parameters is required"
        if "n" in params and not (_is_int(params["n"]) and 1 <= params["n"] <= 6):
            return f"Parameter Error: n must be an integer from 1 to 6, got {params['n']!r}"
        if "negative_prompt" in params and not isinstance(params["negative_prompt"], str):
            return "Parameter Error: negative_prompt must be a string"
        if "watermark" in params and not isinstance(params["watermark"], bool):
            return "Parameter Error: watermark must be a boolean"
        if "seed" in params and not (_is_int(params["seed"]) and 0 <= params["seed"] <= SEED_MAX):
            return f"Parameter Error: seed must be in [0, {SEED_MAX}]"
        contents = body.get("contents")
        if (
            not isinstance(contents, list)
            or len(contents) != 1
            or not isinstance(contents[0], dict)
        ):
            return "Parameter Error: contents must hold exactly one entry"
        if contents[0].get("role") != "user":
            return 'Parameter Error: contents[0].role must be "user"'
        parts = contents[0].get("parts")
        if not isinstance(parts, list) or not parts:
            return "Parameter Error: contents[0].parts is required"
        for part in parts:
            if not isinstance(part, dict) or len({"image", "text"} & part.keys()) != 1:
                return 'Parameter Error: each part must have exactly one of "image" or "text"'
            value = part.get("image", part.get("text"))
            if not isinstance(value, str) or not value.strip():
                return "Parameter Error: image and text parts must be non-empty strings"
        images = [p for p in parts if "image" in p]
        texts = [p for p in parts if "text" in p]
        if not images:
            return "Parameter Error: at least one image is required"
        if len(images) > 3:
            return "Parameter Error: Image quantity exceeds limit"
        if len(texts) != 1:
            return "Parameter Error: exactly one text part is required"
        if "text" not in parts[-1]:
            return "Parameter Error: the text part must be the last part"
        return None

    async def _generations(self, request: Request, rec: Recorded) -> Response:
        if rec.bearer != self.api_key:
            return self._error(401)
        if rec.json_error:
            return self._error(400, "Parameter Error: the request body is not valid JSON")
        problem = self._validate(rec.json)
        if problem:
            return self._error(400, problem)
        body = rec.json
        params = body["parameters"]
        parts = body["contents"][0]["parts"]
        text = parts[-1]["text"]
        lowered = f"{body['prompt']} {text}".lower()
        if any(w.lower() in lowered for w in self.blocked_words):
            return self._error(400, "Parameter Error: input data may contain inappropriate content")
        sources = []
        for index, part in enumerate(p for p in parts if "image" in p):
            url = part["image"]
            if not url.startswith(("http://", "https://", "data:")):
                return self._error(
                    400, f"Parameter Error: image {index + 1} must be a URL or a data: URI"
                )
            try:
                data = await self.fetch_url(url)
            except FetchError as exc:
                return self._error(
                    400, f"Parameter Error: cannot download image {index + 1}: {exc}"
                )
            if len(data) > 10 * 1024 * 1024:
                return self._error(
                    400, f"Parameter Error: image {index + 1} size over limit (10MB)"
                )
            try:
                img = open_image(data)
            except ValueError:
                return self._error(
                    400, f"Parameter Error: incorrect image format for image {index + 1}"
                )
            w, h = img.size
            if not (384 <= w <= 3072 and 384 <= h <= 3072):
                return self._error(
                    400, f"Parameter Error: image {index + 1} resolution {w}x{h} outside 384-3072"
                )
            sources.append(img)
        n = params.get("n", 1)
        lw, lh = sources[-1].size
        aspect = lw / lh
        width = math.sqrt(1024 * 1024 * aspect)
        size = (_round16(width), _round16(width / aspect))
        request_id = new_id()
        urls = []
        for index in range(n):
            meta = {
                "vendor": "nebula",
                "model": body["model"],
                "prompt": body["prompt"],
                "text": text,
            }
            png = await asyncio.to_thread(
                render_result,
                sources[0],
                size,
                index=index,
                meta=meta,
                watermark="Qwen-Image" if params.get("watermark") else None,
            )
            urls.append(self.put_file(png) + f"?Expires={int(time.time()) + 86400}")
        with self._lock:
            self.generations += 1
        created = int(time.time())
        return JSONResponse(
            {
                "code": 200,
                "msg": "Operation successful",
                "data": {
                    "data": [{"url": u, "b64_json": "", "revised_prompt": ""} for u in urls],
                    "created": created,
                    "metadata": {
                        "output": {
                            "choices": [
                                {
                                    "finish_reason": "stop",
                                    "message": {
                                        "content": [{"image": u} for u in urls],
                                        "role": "assistant",
                                    },
                                }
                            ]
                        },
                        "usage": {"width": size[0], "image_count": n, "height": size[1]},
                        "request_id": request_id,
                    },
                },
            }
        )
