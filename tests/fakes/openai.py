"""Fake OpenAI `POST /v1/images/edits` (multipart), also serving DGrid's variant.

Written from vendors.md §4 (OpenAI, sources O1-O5) and §7 / seed 004 (DGrid).

Constructor
    FakeOpenAI(api_key="sk-test-openai", *, flavor="openai", path_prefix="")
    flavor="openai": OpenAI's models and rules (below).
    flavor="dgrid":  DGrid (https://api.dgrid.ai): any model name (OpenAI's models keep their
                     rules; for other models size is any WxH or auto = the first image's size,
                     quality is free, one or more images); every data item carries
                     url, b64_json and revised_prompt (the unused one is ""); usage always
                     present; response_format defaults to "url"; also accepts DGrid's JSON
                     variant {"model", "input": {"messages": [{"role", "content": <string>}]}}
                     (seed 004), answering one 1024x1024 image; the first http(s) URL found in
                     a message's content, if any, is fetched as the source image (the seed
                     leaves image referencing unclear; this is an assumption).

Routes (route name: method path)
    edits   POST P/v1/images/edits       (P = path_prefix, e.g. "" for https://api.openai.com)
    files   GET  /files/{name}           URL results (dall-e-2 / DGrid response_format=url)

Auth: `Authorization: Bearer <api_key>`; missing -> 401 "You didn't provide an API key..."
(code null), wrong -> 401 code invalid_api_key. Every error is
`{"error": {"message", "type", "param", "code"}}`; responses carry an `x-request-id` header.

Validation (400 invalid_request_error unless noted), openai flavor:
- Content-Type must be multipart/form-data.
- model: dall-e-2, gpt-image-1, gpt-image-1-mini, gpt-image-1.5 (`models` attribute). If
  absent: gpt-image-1 when a gpt-image-only field is sent, else dall-e-2 (O1).
- image: repeated `image[]` parts, or a single `image`; gpt-image: 1-16 png/webp/jpeg files
  < 50 MB; dall-e-2: exactly one square PNG < 4 MB. The part's Content-Type must be
  image/png, image/jpeg or image/webp (`strict_mimetype`; the real API rejects e.g.
  application/octet-stream with code unsupported_file_mimetype).
- prompt: required; <= 32000 chars (gpt-image) / 1000 (dall-e-2).
- mask: PNG with an alpha channel, the same size as the first image, < 4 MB (param "mask").
- n 1-10; size: gpt-image 1024x1024 / 1536x1024 / 1024x1536 / auto, dall-e-2 256x256 /
  512x512 / 1024x1024; quality: gpt-image low/medium/high/auto, dall-e-2 standard/auto.
- gpt-image only: background transparent/opaque/auto (transparent needs png or webp),
  output_format png/jpeg/webp, output_compression 0-100 (< 100 rejected for png),
  input_fidelity high/low (not for gpt-image-1-mini), partial_images 0-3.
- response_format url/b64_json: honoured for dall-e-2 (default url); gpt-image always
  returns b64_json and ignores it (vendors.md §4).
- stream=true is rejected (the fake does not stream).
- A prompt containing one of `blocked_words` -> 400 moderation_blocked
  (type image_generation_user_error, O5).

Success: {"created", "data": [{"b64_json"} | {"url"}]} plus, for gpt-image, "background",
"output_format", "quality", "size" and "usage" {input_tokens, input_tokens_details
{text_tokens, image_tokens}, output_tokens, total_tokens}. gpt-image data items carry no
revised_prompt (the real edits endpoint does not return one); DGrid's do. Result images are
the first input image resized to the output size, inverted, with a band per index, in the
requested output_format; size "auto" picks the listed size closest to the input's aspect.

Control API: blocked_words, strict_mimetype, models, edits (successful calls), reset().
Fault helpers: invalid_api_key(), moderation_blocked(), rate_limited(retry_after=None,
retry_after_ms=None), insufficient_quota(), server_error(), service_unavailable(),
bad_request(message, param=None, code=None).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.http import (
    FakeServer,
    Fault,
    FetchError,
    Recorded,
    has_alpha,
    open_image,
    render_result,
)

OPENAI_MODELS = ("dall-e-2", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
DALLE_SIZES = ("256x256", "512x512", "1024x1024")
GPT_ONLY = ("background", "output_format", "output_compression", "input_fidelity", "partial_images")
MIMETYPES = ("image/png", "image/jpeg", "image/webp")
_OUTPUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}


def error_body(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _request_id() -> str:
    return "req_" + uuid.uuid4().hex


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return JSONResponse(
        error_body(message, type_, param, code),
        status_code=status,
        headers={"x-request-id": _request_id(), **(headers or {})},
    )


# ------------------------------------------------------------------ fault helpers


def invalid_api_key() -> Fault:
    return Fault.status(
        401,
        error_body(
            "Incorrect API key provided: sk-***. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        ),
    )


def moderation_blocked() -> Fault:
    return Fault.status(
        400,
        error_body(
            "Your request was rejected by the safety system. If you believe this is an error, "
            "contact us at help.openai.com and include the request ID.",
            type_="image_generation_user_error",
            code="moderation_blocked",
        ),
    )


def rate_limited(retry_after: float | None = None, retry_after_ms: int | None = None) -> Fault:
    """429 rate_limit_exceeded (retryable) with optional retry-after / retry-after-ms."""
    headers = {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "0"}
    if retry_after is not None:
        headers["retry-after"] = (
            str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        )
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(int(retry_after_ms))
    wait = retry_after if retry_after is not None else (retry_after_ms or 12000) / 1000
    return Fault.status(
        429,
        error_body(
            "Rate limit reached for gpt-image-1 in organization org-fake on images per minute "
            f"(IPM): Limit 5, Used 5, Requested 1. Please try again in {wait:g}s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            type_="requests",
            code="rate_limit_exceeded",
        ),
        headers,
    )


def insufficient_quota() -> Fault:
    """429 insufficient_quota: "You exceeded your current quota..." (not retryable, O4)."""
    return Fault.status(
        429,
        error_body(
            "You exceeded your current quota, please check your plan and billing details. For "
            "more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            type_="insufficient_quota",
            code="insufficient_quota",
        ),
    )


def server_error() -> Fault:
    return Fault.status(
        500,
        error_body(
            "The server had an error processing your request. Sorry about that! You can retry "
            "your request, or contact us through our help center at help.openai.com if you keep "
            "seeing this error.",
            type_="server_error",
        ),
    )


def service_unavailable() -> Fault:
    return Fault.status(
        503,
        error_body(
            "The engine is currently overloaded, please try again later.", type_="server_error"
        ),
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> Fault:
    return Fault.status(400, error_body(message, param=param, code=code))


class _Invalid(Exception):
    def __init__(
        self, message: str, param: str | None = None, code: str | None = "invalid_value"
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def _int_field(form: dict[str, str], name: str, low: int, high: int) -> int | None:
    if name not in form:
        return None
    try:
        value = int(form[name])
    except ValueError:
        raise _Invalid(
            f"Invalid type for '{name}': expected an integer, got '{form[name]}'.", name
        ) from None
    if value < low:
        raise _Invalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if value > high:
        raise _Invalid(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, "
            f"but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def _enum_field(form: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    if name not in form:
        return None
    value = form[name]
    if value not in allowed:
        supported = ", ".join(f"'{a}'" for a in allowed)
        raise _Invalid(f"Invalid value: '{value}'. Supported values are: {supported}.", name)
    return value


class FakeOpenAI(FakeServer):
    """See the module docstring."""

    def __init__(
        self, api_key: str = "sk-test-openai", *, flavor: str = "openai", path_prefix: str = ""
    ) -> None:
        if flavor not in ("openai", "dgrid"):
            raise ValueError("flavor must be 'openai' or 'dgrid'")
        super().__init__()
        self.api_key = api_key
        self.flavor = flavor
        self.path_prefix = path_prefix.rstrip("/")
        self._init_state()
        self.add_route(f"{self.path_prefix}/v1/images/edits", "edits", ["POST"], self._edits)

    def _init_state(self) -> None:
        self.blocked_words: set[str] = set()
        self.strict_mimetype = True
        self.models: tuple[str, ...] = OPENAI_MODELS
        self.edits = 0

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._init_state()

    def url(self, path: str = "/v1/images/edits") -> str:
        return f"{self.base_url}{self.path_prefix}{path}"

    # ------------------------------------------------------------------ handler

    async def _edits(self, request: Request, rec: Recorded) -> Response:
        token = rec.bearer
        if token is None:
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or "
                "as the password field (with blank username) if you're accessing the API from your "
                "browser and are prompted for a username and password. You can obtain an API key "
                "from https://platform.openai.com/account/api-keys.",
            )
        if token != self.api_key:
            masked = token[:3] + "*" * max(0, len(token) - 7) + token[-4:]
            return _error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        if self.flavor == "dgrid" and not rec.is_multipart and rec.json is not None:
            return await self._dgrid_json(rec)
        if not rec.is_multipart:
            ctype = rec.headers.get("content-type", "none").split(";")[0]
            return _error(
                400,
                f"Invalid Content-Type header ({ctype}), expected multipart/form-data. (HINT: If "
                "you're using curl, you can pass -H 'Content-Type: multipart/form-data')",
            )
        if rec.form_error:
            return _error(400, f"Could not parse multipart form: {rec.form_error}")
        try:
            return await self._multipart(rec)
        except _Invalid as exc:
            return _error(400, exc.message, param=exc.param, code=exc.code)

    async def _multipart(self, rec: Recorded) -> Response:
        form = rec.form
        gpt_fields_sent = any(name in form for name in GPT_ONLY)
        model = form.get("model") or ("gpt-image-1" if gpt_fields_sent else "dall-e-2")
        if self.flavor == "openai" and model not in self.models:
            supported = ", ".join(f"'{m}'" for m in self.models)
            raise _Invalid(f"Invalid value: '{model}'. Supported values are: {supported}.", "model")
        gpt = model.startswith("gpt-image")
        dalle2 = model == "dall-e-2"

        # images
        images = rec.files_named("image[]", "image")
        if not images:
            if "image" in form or "image[]" in form:
                raise _Invalid("'image' must be a file upload, not a text field.", "image")
            raise _Invalid(
                "Missing required parameter: 'image'.", "image", "missing_required_parameter"
            )
        if dalle2 and len(images) != 1:
            raise _Invalid(f"dall-e-2 accepts exactly one image; got {len(images)}.", "image")
        if len(images) > 16:
            raise _Invalid(
                f"Invalid 'image': too many images ({len(images)}); the maximum is 16.", "image"
            )
        decoded = []
        for i, part in enumerate(images):
            allowed = ("image/png",) if dalle2 else MIMETYPES
            if self.strict_mimetype and (part.content_type or "").split(";")[0] not in allowed:
                formats = ", ".join(f"'{m}'" for m in allowed)
                raise _Invalid(
                    f"Invalid file 'image': unsupported mimetype ('{part.content_type}'). "
                    f"Supported file formats are {formats}.",
                    "image",
                    "unsupported_file_mimetype",
                )
            limit = 4 if dalle2 else 50
            if part.size >= limit * 1024 * 1024:
                raise _Invalid(
                    f"Invalid input image {i + 1}: must be less than {limit} MB.",
                    "image",
                    "image_too_large",
                )
            try:
                img = open_image(part.data)
            except ValueError:
                raise _Invalid(
                    f"Invalid image file or mode for image {i + 1}, please check your image file.",
                    "image",
                    "invalid_image",
                ) from None
            fmt = (img.format or "").upper()
            if (dalle2 and fmt != "PNG") or fmt not in ("PNG", "JPEG", "WEBP"):
                raise _Invalid(
                    f"Invalid input image {i + 1}: format {fmt or 'unknown'} is not supported.",
                    "image",
                    "invalid_image_format",
                )
            if dalle2 and img.size[0] != img.size[1]:
                raise _Invalid(
                    "Invalid input image - image must be square for dall-e-2.",
                    "image",
                    "invalid_image_format",
                )
            decoded.append(img)

        # prompt
        prompt = form.get("prompt")
        if not prompt:
            raise _Invalid(
                "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
            )
        max_prompt = 1000 if dalle2 else 32000
        if len(prompt) > max_prompt:
            raise _Invalid(
                f"Invalid 'prompt': string too long. Expected a string with maximum length "
                f"{max_prompt}, but got a string with length {len(prompt)} instead.",
                "prompt",
                "string_above_max_length",
            )

        # mask
        mask_part = rec.file("mask")
        if mask_part is None and "mask" in form:
            raise _Invalid("'mask' must be a file upload, not a text field.", "mask")
        if mask_part is not None:
            if mask_part.size >= 4 * 1024 * 1024:
                raise _Invalid(
                    "Invalid mask image: must be less than 4 MB.", "mask", "image_too_large"
                )
            try:
                mask = open_image(mask_part.data)
            except ValueError:
                raise _Invalid(
                    "Invalid mask image: cannot decode the file.", "mask", "invalid_image"
                ) from None
            if (mask.format or "").upper() != "PNG":
                raise _Invalid(
                    "Invalid mask image format - mask must be a PNG.",
                    "mask",
                    "invalid_image_format",
                )
            if not has_alpha(mask):
                raise _Invalid(
                    "Invalid mask image format - mask must have an alpha channel (RGBA, LA), "
                    f"got {mask.mode}.",
                    "mask",
                    "invalid_image_format",
                )
            if mask.size != decoded[0].size:
                raise _Invalid(
                    f"Invalid mask image format - mask size {mask.size[0]}x{mask.size[1]} does not "
                    f"match image size {decoded[0].size[0]}x{decoded[0].size[1]}.",
                    "mask",
                    "invalid_image_format",
                )

        # parameters
        n = _int_field(form, "n", 1, 10) or 1
        if self.flavor == "openai" or gpt or dalle2:
            size = _enum_field(form, "size", GPT_SIZES if gpt else DALLE_SIZES)
        else:
            size = form.get("size")
            if size is not None and size != "auto" and not re.fullmatch(r"\d+x\d+", size):
                raise _Invalid(f"Invalid value: '{size}'. Expected WIDTHxHEIGHT or 'auto'.", "size")
        if gpt or dalle2:
            qualities = ("low", "medium", "high", "auto") if gpt else ("standard", "auto")
            quality = _enum_field(form, "quality", qualities)
        else:  # a DGrid model we know nothing about
            quality = form.get("quality")
        if dalle2:
            for name in GPT_ONLY:
                if name in form:
                    raise _Invalid(
                        f"Invalid parameter: '{name}' is only supported for gpt-image models.",
                        name,
                        "unsupported_parameter",
                    )
        background = _enum_field(form, "background", ("transparent", "opaque", "auto")) or "auto"
        output_format = _enum_field(form, "output_format", ("png", "jpeg", "webp")) or "png"
        compression = _int_field(form, "output_compression", 0, 100)
        if background == "transparent" and output_format not in ("png", "webp"):
            raise _Invalid(
                "Transparent background requires output_format png or webp.", "background"
            )
        if compression is not None and compression < 100 and output_format == "png":
            raise _Invalid(
                "Compression less than 100 is not supported for PNG output format.",
                "output_compression",
            )
        fidelity = _enum_field(form, "input_fidelity", ("high", "low"))
        if fidelity is not None and model == "gpt-image-1-mini":
            raise _Invalid(
                "input_fidelity is not supported for gpt-image-1-mini.",
                "input_fidelity",
                "unsupported_parameter",
            )
        _int_field(form, "partial_images", 0, 3)
        response_format = _enum_field(form, "response_format", ("url", "b64_json"))
        if form.get("stream", "false").lower() == "true":
            raise _Invalid(
                "This fake does not implement streaming; send stream=false.",
                "stream",
                "unsupported_value",
            )
        if self._blocked(prompt):
            return _error(
                400,
                "Your request was rejected by the safety system. If you believe this is an error, "
                "contact us at help.openai.com and include the request ID.",
                type_="image_generation_user_error",
                code="moderation_blocked",
            )

        # results
        first = decoded[0]
        if size in (None, "auto"):
            if gpt or self.flavor == "openai":
                out = self._auto_size(first.size) if gpt else (1024, 1024)
            else:
                out = first.size
        else:
            w, h = size.split("x")
            out = (int(w), int(h))
        fmt = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[output_format]
        as_url = (not gpt) and (response_format or "url") == "url"
        meta = {"vendor": self.flavor, "model": model, "prompt": prompt}
        data = []
        for index in range(n):
            blob = await asyncio.to_thread(
                render_result,
                first,
                out,
                index=index,
                meta=meta,
                fmt=fmt,
                quality=compression,
                transparent=background == "transparent",
            )
            if self.flavor == "dgrid":
                url = self.put_file(blob, output_format) if as_url else ""
                b64 = "" if as_url else base64.b64encode(blob).decode()
                data.append({"url": url, "b64_json": b64, "revised_prompt": prompt})
            elif as_url:
                data.append({"url": self.put_file(blob, output_format)})
            else:
                data.append({"b64_json": base64.b64encode(blob).decode()})
        body: dict[str, Any] = {"created": int(time.time()), "data": data}
        if gpt:
            body.update(
                background="transparent" if background == "transparent" else "opaque",
                output_format=output_format,
                quality=quality if quality not in (None, "auto") else "medium",
                size=f"{out[0]}x{out[1]}",
            )
        if gpt or self.flavor == "dgrid":
            text_tokens = max(1, len(prompt) // 4)
            image_tokens = 194 * len(decoded) + (194 if mask_part is not None else 0)
            output_tokens = _OUTPUT_TOKENS.get(quality or "auto", 1056) * n
            body["usage"] = {
                "input_tokens": text_tokens + image_tokens,
                "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                "output_tokens": output_tokens,
                "total_tokens": text_tokens + image_tokens + output_tokens,
            }
        with self._lock:
            self.edits += 1
        return JSONResponse(body, headers={"x-request-id": _request_id()})

    @staticmethod
    def _auto_size(size: tuple[int, int]) -> tuple[int, int]:
        aspect = size[0] / size[1]
        if aspect > 1.25:
            return (1536, 1024)
        if aspect < 0.8:
            return (1024, 1536)
        return (1024, 1024)

    def _blocked(self, text: str) -> bool:
        lowered = text.lower()
        return any(w.lower() in lowered for w in self.blocked_words)

    async def _dgrid_json(self, rec: Recorded) -> Response:
        body = rec.json
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
            or not body["model"]
        ):
            return _error(400, "Missing required parameter: 'model'.", param="model")
        inp = body.get("input")
        messages = inp.get("messages") if isinstance(inp, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(
                400, "Missing required parameter: 'input.messages'.", param="input.messages"
            )
        texts = []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                return _error(
                    400, "input.messages[].content must be a string.", param="input.messages"
                )
            texts.append(message["content"])
        prompt = "\n".join(texts)
        if self._blocked(prompt):
            return _error(
                400,
                "Your request was rejected by the safety system.",
                type_="image_generation_user_error",
                code="moderation_blocked",
            )
        source = None
        match = re.search(r"https?://\S+", prompt)
        if match:
            try:
                source = open_image(await self.fetch_url(match.group(0).rstrip(").,;")))
            except (FetchError, ValueError) as exc:
                return _error(
                    400, f"Could not read the referenced image: {exc}", param="input.messages"
                )
        blob = await asyncio.to_thread(
            render_result,
            source,
            (1024, 1024),
            meta={"vendor": "dgrid", "model": body["model"], "prompt": prompt},
        )
        with self._lock:
            self.edits += 1
        return JSONResponse(
            {
                "created": int(time.time()),
                "data": [{"url": self.put_file(blob), "b64_json": "", "revised_prompt": prompt}],
            },
            headers={"x-request-id": _request_id()},
        )
