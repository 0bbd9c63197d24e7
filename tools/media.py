"""Image input: load from a URL (SSRF-safe), data: URI, local path, upload or earlier result;
check the bytes by content, refuse decompression bombs before decoding, decode within the
process's pixel budget (:mod:`tools.pixel_budget`), and fit images to a vendor's limits.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import io
import ipaddress
import re
import socket
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote_to_bytes

import httpx
import pybase64
from PIL import Image, ImageOps, UnidentifiedImageError

from tools import pixel_budget, png
from tools.errors import (
    ImageError,
    ImageTooLarge,
    InvalidParameter,
    NotAnImage,
    NotFound,
    UnsafeURL,
)

#: Pillow format → MIME type, for the formats Retouch accepts.
FORMATS = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
}
#: The only Pillow plugins ever asked to parse untrusted bytes (no EPS/Ghostscript, PSD...);
#: the JPEG plugin opens MPO files itself.
OPEN_FORMATS = tuple(f for f in FORMATS if f != "MPO")
#: MIME type → file name extension, for stored files and files sent to users.
EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tif",
    "image/gif": "gif",
}
RESULT_URI = re.compile(r"^retouch://tasks/([0-9a-f]{32})/(\d{1,3})$")
UPLOAD_URI = re.compile(r"^retouch://uploads/([0-9a-f]{32})$")

T = TypeVar("T")
Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ResultLookup = Callable[[str, int], Awaitable[bytes]]  # (task id, index) → the result's bytes
UploadLookup = Callable[[str], Awaitable[bytes]]  # upload id → the upload's bytes

# Pillow's own bomb guard is a warning up to 2× its limit; we check sizes ourselves first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class InputImage:
    """An image ready to use: bytes checked by content, with its real size."""

    data: bytes
    mime_type: str
    width: int
    height: int

    @property
    def format(self) -> str:
        return self.mime_type.split("/", 1)[1]

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "tiff": "tif"}.get(self.format, self.format)

    def to_pil(self) -> Image.Image:
        """The image decoded (a PNG of the common kinds by libspng, :mod:`tools.png`)."""
        if self.mime_type == "image/png":
            pixels = png.decode(self.data)
            if pixels is not None:
                return pixels
        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image

    def data_uri(self) -> str:
        return f"data:{self.mime_type};base64,{pybase64.b64encode(self.data).decode()}"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass
class MediaPolicy:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 50_000_000
    allow_local_paths: bool = False
    allow_networks: list[str] = field(default_factory=list)
    timeout_s: float = 30
    max_redirects: int = 5
    resolver: Resolver = system_resolver

    def network_allowed(self, ip: IPAddress) -> bool:
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.allow_networks)


# ---- checking bytes ------------------------------------------------------------------------


def inspect(data: bytes, policy: MediaPolicy, label: str = "image") -> InputImage:
    """Check bytes are one acceptable image within the limits; normalise what must be.

    The pixel count is checked from the header, before anything is decoded. A GIF becomes
    its first frame as PNG; an EXIF rotation is applied so every vendor sees the same image.
    """
    return _checked(_open(data, policy, label), data, label)


def inspect_decoded(
    data: bytes, policy: MediaPolicy, label: str = "image"
) -> tuple[InputImage, Image.Image]:
    """``inspect``, and the image it decoded on the way (what the bytes show), for a caller
    that would otherwise decode them again."""
    return _decode(_open(data, policy, label), data, label)


#: Images this small are checked on the event loop: their header, inflating or decoding
#: them take less time than the two hand-overs to a worker thread (~0.1 ms each here).
INLINE_BYTES = 64 * 1024
INLINE_PX = 256 * 256


async def check(
    data: bytes, policy: MediaPolicy, label: str = "image", *, bounded: bool = True
) -> InputImage:
    """:func:`inspect` in worker threads, decoding only within the process's pixel budget.
    ``bounded``: a client's request, refused with Busy after ``wait_s``; else (work already
    accepted, such as a task's results) it waits its turn as long as that takes."""
    return (await check_keeping(data, policy, label, keep_px=0, bounded=bounded))[0]


async def check_keeping(
    data: bytes, policy: MediaPolicy, label: str, *, keep_px: int, bounded: bool = True
) -> tuple[InputImage, Image.Image | None]:
    """:func:`check_decoded` for an image of at most ``keep_px`` pixels (its decode is its
    check); a larger one is checked as :func:`check` does, at less cost where it can be,
    and no pixels come back (unless normalising it decoded them anyway)."""
    image, inline = await _opened(data, policy, label)
    if image.width * image.height > keep_px and verifiable(image, data):
        cost = verify_cost(image, data)
        async with pixel_budget.PIXELS.hold(cost, bounded=bounded, label=label):
            return await _run(inline, _checked, image, data, label), None
    async with pixel_budget.PIXELS.hold(inspect_cost(image, data), bounded=bounded, label=label):
        return await _run(inline, _decode, image, data, label)


async def _opened(data: bytes, policy: MediaPolicy, label: str) -> tuple[Image.Image, bool]:
    """The image's checked header, and whether the rest of its check runs on the event loop
    (:data:`INLINE_BYTES` and :data:`INLINE_PX` at most)."""
    if len(data) > INLINE_BYTES:
        return await asyncio.to_thread(_open, data, policy, label), False
    image = _open(data, policy, label)
    return image, image.width * image.height <= INLINE_PX


async def _run(inline: bool, fn: Callable[..., T], *args: object) -> T:
    return fn(*args) if inline else await asyncio.to_thread(fn, *args)


def inspect_cost(image: Image.Image, data: bytes) -> int:
    """Bytes that decoding an opened image (and normalising it) takes at its peak."""
    w, h = image.size
    cost = pixel_budget.decoded_bytes(w, h, image.mode)
    normalised = _normalised(image, data)
    if image.format == "PNG" and not normalised and png.fast(data):
        cost += w * h * len(image.getbands())  # libspng's array beside Pillow's copy
    if normalised:  # a converted copy, a rotated one, the PNG encoder's buffers
        cost += 2 * pixel_budget.decoded_bytes(w, h, "RGBA")
    return cost


def _open(data: bytes, policy: MediaPolicy, label: str) -> Image.Image:
    """The image's header, checked: size in bytes, format by content, pixel count."""
    if len(data) > policy.max_bytes:
        raise ImageTooLarge(
            f"{label} is {len(data) / 1e6:.1f} MB; the limit is {policy.max_bytes / 1e6:.0f} MB"
        )
    if not data:
        raise ImageError(f"{label} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NotAnImage(
            f"{label} is not an image Retouch can read (JPEG, PNG, WEBP, BMP, TIFF or GIF)"
        ) from None
    except Exception as exc:
        raise ImageError(f"{label} is corrupt ({type(exc).__name__})") from None
    if image.format not in FORMATS:
        raise NotAnImage(f"{label} is {image.format}; use JPEG, PNG, WEBP, BMP, TIFF or GIF")
    width, height = image.size
    if width < 1 or height < 1 or width * height > policy.max_pixels:
        raise ImageTooLarge(
            f"{label} is {width}×{height} = {width * height / 1e6:.0f} MP; the limit is "
            f"{policy.max_pixels / 1e6:.0f} MP (decompression bombs are refused)"
        )
    return image


#: Bytes that verifying a JPEG without keeping its pixels takes at its peak (decoded at 1/8
#: scale: at most 1/64 of its pixels), or a PNG inflated in slices (zlib's window, a slice).
VERIFY_COST = 4 * 1024 * 1024


def verify_cost(image: Image.Image, data: bytes) -> int:
    """Bytes :func:`_checked` takes at its peak: a PNG's rows inflated at once (a copy of its
    pixel stream beside them), else :data:`VERIFY_COST`."""
    head = png.header(data) if image.format == "PNG" else None
    if head is None or head.rows_bytes > png.WHOLE_STREAM_MAX:
        return VERIFY_COST
    return max(VERIFY_COST, head.rows_bytes + len(data))


def verifiable(image: Image.Image, data: bytes) -> bool:
    """Whether :func:`_checked` can prove an opened image whole without decoding its pixels
    in full: a PNG (not interlaced) or JPEG that is kept as it is (no GIF frame, rotation or
    odd mode to normalise)."""
    if image.format == "JPEG":
        return not _normalised(image, data)
    if image.format == "PNG":
        return not image.info.get("interlace") and not _normalised(image, data)
    return False


def _checked(image: Image.Image, data: bytes, label: str) -> InputImage:
    """An opened image proven whole, as :func:`_decode` proves it, at less cost where
    :func:`verifiable`: a PNG's pixel stream inflated in slices and its rows' filter bytes
    checked, not unfiltered (what a decode adds: about 60% of its time); a JPEG decoded at
    1/8 scale (every entropy-coded block is still read, so a cut file shows)."""
    if not verifiable(image, data):
        return _decode(image, data, label)[0]
    width, height = image.size
    try:
        if image.format == "PNG":
            _verify_png(data, width, height, label)
        else:
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{label} is corrupt or truncated ({type(exc).__name__})") from None
    return InputImage(data=data, mime_type=FORMATS[image.format], width=width, height=height)


def _verify_png(data: bytes, width: int, height: int, label: str) -> None:
    """A non-interlaced PNG's pixel stream is whole (:func:`tools.png.verify`), under the
    header Pillow read."""
    head = png.header(data)
    try:
        if head is None or (head.width, head.height) != (width, height):
            raise png.Corrupt("the header is not the one Pillow read")
        png.verify(data, head)
    except png.Corrupt:
        raise ImageError(f"{label} is corrupt or truncated (the PNG's pixel data)") from None


def _normalised(image: Image.Image, data: bytes) -> bool:
    """Whether :func:`_decode` re-encodes the image (a GIF, a rotation, an odd mode), told
    before decoding (Pillow decodes a whole PNG to find its EXIF block)."""
    orientation = _png_orientation(data) if image.format == "PNG" else _orientation(image)
    return (
        image.format == "GIF" or orientation not in (None, 1) or image.mode in ("P", "CMYK", "I;16")
    )


def _png_orientation(data: bytes) -> int | None:
    """A PNG's EXIF orientation, read from its chunks (the eXIf chunk may follow the pixels)."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"eXIf":
            exif = Image.Exif()
            try:
                exif.load(data[pos + 8 : pos + 8 + length])
                return exif.get(0x0112)
            except Exception:  # a corrupt block: decoding finds it, as before
                return None
        if kind == b"IEND":
            break
        pos += 12 + length
    return None


def _decode(image: Image.Image, data: bytes, label: str) -> tuple[InputImage, Image.Image]:
    """Decode an opened image whole (a truncated file shows only now) and normalise it."""
    if image.format == "PNG" and not _normalised(image, data):
        pixels = png.decode(data)  # libspng, for the common kinds; else None
        if pixels is not None:
            return _as_input(image, data), pixels
    try:
        image.seek(0)
        image.load()
    except Exception as exc:
        raise ImageError(f"{label} is corrupt or truncated ({type(exc).__name__})") from None
    mime = FORMATS[image.format]
    try:
        rotated = ImageOps.exif_transpose(image) if _orientation(image) not in (None, 1) else None
        if image.format == "GIF" or rotated is not None or image.mode in ("P", "CMYK", "I;16"):
            out = rotated if rotated is not None else image
            if out.mode not in ("RGB", "RGBA", "L", "LA"):
                out = out.convert(
                    "RGBA" if "transparency" in out.info or "A" in out.mode else "RGB"
                )
            return encode(out, "PNG"), out
    except Exception as exc:  # a corrupt EXIF block or palette surfaces only here
        raise ImageError(f"{label} is corrupt ({type(exc).__name__})") from None
    return InputImage(data=data, mime_type=mime, width=image.width, height=image.height), image


def _as_input(image: Image.Image, data: bytes) -> InputImage:
    """The bytes of an opened image, kept as they are."""
    return InputImage(
        data=data, mime_type=FORMATS[image.format], width=image.width, height=image.height
    )


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:
        return None


def encode(image: Image.Image, fmt: str = "PNG", quality: int = 92) -> InputImage:
    """Encode a PIL image; JPEG drops alpha (composited on white)."""
    buf = io.BytesIO()
    if fmt == "JPEG" and image.mode not in ("RGB", "L"):
        if "A" in image.mode or image.mode == "P":
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        else:
            image = image.convert("RGB")
    options = {"quality": quality, "optimize": True} if fmt in ("JPEG", "WEBP") else {}
    if fmt == "PNG":
        options = {"compress_level": 1}  # 4× faster than 6 for ~13 % more bytes
    image.save(buf, fmt, **options)
    return InputImage(buf.getvalue(), FORMATS[fmt], image.width, image.height)


# ---- loading from a source -----------------------------------------------------------------


async def load(
    source: str,
    policy: MediaPolicy,
    client: httpx.AsyncClient,
    results: ResultLookup | None = None,
    label: str = "image",
    uploads: UploadLookup | None = None,
) -> InputImage:
    """Load one image from any accepted source and check it. ``results`` and ``uploads``
    read ``retouch://`` URIs (the caller's own: the lookups decide whose)."""
    source = source.strip()
    if not source:
        raise InvalidParameter(f"{label} is an empty string")
    lowered = source[:16].lower()
    if lowered.startswith("data:"):
        data = decode_data_uri(source, policy, label)
    elif lowered.startswith(("http://", "https://")):
        data = await fetch(source, policy, client, label)
    elif lowered.startswith("retouch:"):
        data = await _read_stored(source, results, uploads, label)
    elif re.match(r"^[a-z][a-z0-9+.-]*://", lowered):
        scheme = source.split(":", 1)[0]
        raise UnsafeURL(f"{label}: the {scheme}: scheme is not accepted; use http(s) or data:")
    else:
        data = _read_local(source, policy, label)
    return await check(data, policy, label)


def decode_data_uri(uri: str, policy: MediaPolicy, label: str = "image") -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ImageError(f"{label}: malformed data: URI (no comma)")
    if len(payload) > policy.max_bytes * 4 // 3 + 16:
        raise ImageTooLarge(f"{label} is larger than the {policy.max_bytes / 1e6:.0f} MB limit")
    try:
        if header.endswith(";base64"):
            return pybase64.b64decode(payload, validate=True)
        return unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise ImageError(f"{label}: the data: URI is not valid base64") from None


def _read_local(path: str, policy: MediaPolicy, label: str) -> bytes:
    if not policy.allow_local_paths:
        raise UnsafeURL(
            f"{label}: local paths are not accepted by this server; send a URL or a data: URI"
        )
    try:
        file = Path(path).expanduser()
        size = file.stat().st_size
        regular = file.is_file()
    except (OSError, ValueError, RuntimeError):  # missing, NUL byte, unknown ~user...
        raise ImageError(f"{label}: no readable file at {path!r}") from None
    if not regular:
        raise ImageError(f"{label}: {path!r} is not a file")
    limit = f"the limit is {policy.max_bytes / 1e6:.0f} MB"
    if size > policy.max_bytes:
        raise ImageTooLarge(f"{label} is {size / 1e6:.1f} MB; {limit}")
    # Read at most one byte past the limit: files like /proc/self/pagemap claim 0 bytes and
    # never end, and a file may grow after stat().
    try:
        with open(file, "rb") as fh:
            data = fh.read(policy.max_bytes + 1)
    except OSError:
        raise ImageError(f"{label}: no readable file at {path!r}") from None
    if len(data) > policy.max_bytes:
        raise ImageTooLarge(f"{label} is larger than {policy.max_bytes / 1e6:.0f} MB; {limit}")
    return data


async def _read_stored(
    uri: str, results: ResultLookup | None, uploads: UploadLookup | None, label: str
) -> bytes:
    if match := UPLOAD_URI.match(uri):
        if uploads is None:
            raise NotFound(f"{label}: uploads are not available here")
        return await uploads(match.group(1))
    match = RESULT_URI.match(uri)
    if not match:
        raise InvalidParameter(
            f"{label}: a result URI looks like retouch://tasks/<task id>/<n>, an upload's "
            "like retouch://uploads/<id>"
        )
    if results is None:
        raise NotFound(f"{label}: earlier results are not available here")
    return await results(match.group(1), int(match.group(2)))


# ---- SSRF-safe download --------------------------------------------------------------------


async def check_url(url: httpx.URL, policy: MediaPolicy, label: str = "image") -> list[str]:
    """Resolve a URL's host and refuse anything that is not a public address."""
    if url.scheme not in ("http", "https"):
        raise UnsafeURL(f"{label}: only http and https URLs are accepted")
    if url.userinfo:
        raise UnsafeURL(f"{label}: URLs with a user name or password are not accepted")
    host = url.host.rstrip(".")
    if not host:
        raise UnsafeURL(f"{label}: the URL has no host")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = await policy.resolver(host, port)
    except OSError:
        raise ImageError(f"{label}: cannot resolve host {host!r}") from None
    if not addresses:
        raise ImageError(f"{label}: host {host!r} has no address")
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not all(_public(a) or policy.network_allowed(a) for a in _reaches(ip)):
            raise UnsafeURL(
                f"{label}: {host} resolves to a private or reserved address; "
                "only public addresses are fetched"
            )
    return addresses


def _public(ip: IPAddress) -> bool:
    site_local = isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local  # fec0::/10
    return ip.is_global and not (
        ip.is_multicast or ip.is_reserved or ip.is_unspecified or site_local
    )


def _reaches(ip: IPAddress) -> list[IPAddress]:
    """The addresses a connection to ``ip`` really reaches: an IPv4-mapped address is its
    IPv4 address; a 6to4 address (2002::/16, "global") also carries one, so
    ``[2002:7f00:1::]`` must not open a way to 127.0.0.1 through a relay."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return [ip.ipv4_mapped]
        if ip.sixtofour:
            return [ip, ip.sixtofour]
    return [ip]


async def fetch(
    url: str, policy: MediaPolicy, client: httpx.AsyncClient, label: str = "image"
) -> bytes:
    """GET a public URL: every hop re-checked, the address pinned, the body capped, and the
    whole download (every hop, every byte) within ``policy.timeout_s``."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            return await _fetch(url, policy, client, label)
    except TimeoutError:
        raise ImageError(f"{label}: the download took longer than {policy.timeout_s:g} s") from None


async def _fetch(url: str, policy: MediaPolicy, client: httpx.AsyncClient, label: str) -> bytes:
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise UnsafeURL(f"{label}: not a valid URL ({exc})") from None
    for _ in range(policy.max_redirects + 1):
        addresses = await check_url(current, policy, label)
        pinned = current.copy_with(host=addresses[0])
        headers = {"Host": current.netloc.decode("ascii"), "Accept": "image/*"}
        extensions = {"sni_hostname": current.host} if current.scheme == "https" else {}
        try:
            request = client.build_request(
                "GET", pinned, headers=headers, extensions=extensions, timeout=policy.timeout_s
            )
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise ImageError(f"{label}: download failed ({type(exc).__name__})") from None
        try:
            if response.is_redirect:
                location = response.headers.get("location", "")
                current = current.join(location)
                continue
            if response.status_code != 200:
                raise ImageError(f"{label}: the server answered HTTP {response.status_code}")
            return await read_capped(response, policy.max_bytes, label)
        finally:
            await response.aclose()
    raise ImageError(f"{label}: more than {policy.max_redirects} redirects")


async def read_capped(
    response: httpx.Response, limit: int, label: str, *, raw_errors: bool = False
) -> bytes:
    """Read a streamed body, stopping as soon as it passes ``limit`` bytes. A connection that
    breaks off is an ImageError, or, with ``raw_errors``, the httpx error itself."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ImageTooLarge(
            f"{label} is {int(declared) / 1e6:.1f} MB; the limit is {limit / 1e6:.0f} MB"
        )
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > limit:
                raise ImageTooLarge(f"{label} is larger than the {limit / 1e6:.0f} MB limit")
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        if raw_errors:
            raise
        raise ImageError(f"{label}: download broke off ({type(exc).__name__})") from None
    return b"".join(chunks)


# ---- fitting to a vendor's limits ----------------------------------------------------------


def fit(
    image: InputImage,
    *,
    min_side: int | None = None,
    max_side: int | None = None,
    max_bytes: int | None = None,
    formats: tuple[str, ...] | None = None,
    label: str = "image",
    vendor: str = "the vendor",
) -> tuple[InputImage, list[str]]:
    """Bring an image within limits where that keeps its intent; say what changed.

    ``formats`` are MIME subtypes ("png", "jpeg", ...). Raises InvalidParameter when no
    resize can satisfy both side limits (an extreme aspect ratio).
    """
    notes: list[str] = []
    w, h = image.width, image.height
    scale = 1.0
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
    if min_side and min(w, h) * scale < min_side:
        scale = min_side / min(w, h)
    if max_side and max(w, h) * scale > max_side + 0.5:
        raise InvalidParameter(
            f"{label} is {w}×{h}; {vendor} needs every side between {min_side} and "
            f"{max_side} px, which this aspect ratio cannot meet",
            parameter="images",
        )
    out = image
    pil: Image.Image | None = None
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if min_side:
            size = (max(size[0], min_side), max(size[1], min_side))
        if max_side:
            size = (min(size[0], max_side), min(size[1], max_side))
        pil = image.to_pil().resize(size, Image.Resampling.LANCZOS)
        verb = "downscaled" if scale < 1 else "upscaled"
        notes.append(f"{label}: {verb} {w}×{h} → {size[0]}×{size[1]} for {vendor}")
    target = image.format
    if formats and image.format not in formats:
        target = "png" if "png" in formats else formats[0]
        notes.append(f"{label}: re-encoded {image.format.upper()} as {target.upper()} for {vendor}")
    if pil is not None or target != image.format:
        out = encode(pil or image.to_pil(), target.upper())
    if max_bytes and len(out.data) > max_bytes:
        out, note = _shrink(out, max_bytes, formats, label, vendor)
        notes.append(note)
    return out, notes


async def fit_async(
    image: InputImage,
    *,
    min_side: int | None = None,
    max_side: int | None = None,
    max_bytes: int | None = None,
    formats: tuple[str, ...] | None = None,
    label: str = "image",
    vendor: str = "the vendor",
) -> tuple[InputImage, list[str]]:
    """:func:`fit` in a worker thread, within the pixel budget (a task's work: it waits its
    turn); an image that already fits is returned as it is, at once."""
    w, h = image.width, image.height
    if (
        (not max_side or max(w, h) <= max_side)
        and (not min_side or min(w, h) >= min_side)
        and (not formats or image.format in formats)
        and (not max_bytes or len(image.data) <= max_bytes)
    ):
        return image, []
    grow = max(1.0, (min_side or 0) / min(w, h))  # upscaled to min_side
    out = pixel_budget.decoded_bytes(round(w * grow), round(h * grow))
    cost = 2 * pixel_budget.decoded_bytes(w, h) + out  # decoded, resized, decoded again to shrink
    limits = {"min_side": min_side, "max_side": max_side, "max_bytes": max_bytes}
    return await pixel_budget.PIXELS.run(
        cost,
        functools.partial(fit, image, **limits, formats=formats, label=label, vendor=vendor),
        bounded=False,
    )


def _shrink(
    image: InputImage, max_bytes: int, formats: tuple[str, ...] | None, label: str, vendor: str
) -> tuple[InputImage, str]:
    pil = image.to_pil()
    if not formats or "jpeg" in formats:
        for quality in (92, 85, 75):
            out = encode(pil, "JPEG", quality)
            if len(out.data) <= max_bytes:
                return (
                    out,
                    f"{label}: re-encoded as JPEG (quality {quality}) to fit {vendor}'s size limit",
                )
    while True:
        pil = pil.resize(
            (max(1, pil.width * 3 // 4), max(1, pil.height * 3 // 4)), Image.Resampling.LANCZOS
        )
        fmt = "JPEG" if (not formats or "jpeg" in formats) else "PNG"
        out = encode(pil, fmt)
        if len(out.data) <= max_bytes or pil.width < 64:
            return out, f"{label}: reduced to {pil.width}×{pil.height} to fit {vendor}'s size limit"


def fit_mask(
    mask: InputImage, size: tuple[int, int], label: str = "mask"
) -> tuple[InputImage, list[str]]:
    """A black-and-white mask at exactly ``size``; refuses a different aspect ratio."""
    check_mask_shape(mask, size, label)
    pil = mask.to_pil()
    notes: list[str] = []
    if pil.size != size:
        pil = pil.resize(size, Image.Resampling.NEAREST)
        notes.append(f"{label}: resized to {size[0]}×{size[1]} to match the image")
    gray = pil.convert("L") if "A" not in pil.getbands() or pil.mode == "LA" else _alpha_aware(pil)
    binary = gray.point(lambda v: 255 if v >= 128 else 0)
    out = encode(binary, "PNG")
    return out, notes


def check_mask_shape(mask: InputImage, size: tuple[int, int], label: str = "mask") -> None:
    """Refuse a mask whose aspect ratio is not the image's (from the sizes: nothing decoded)."""
    if (mask.width, mask.height) != size and abs(
        mask.width / mask.height - size[0] / size[1]
    ) > 0.01:
        raise InvalidParameter(
            f"{label} is {mask.width}×{mask.height} but the image is {size[0]}×{size[1]}; "
            "the mask must have the image's shape",
            parameter="mask",
        )


async def fit_mask_async(
    mask: InputImage, size: tuple[int, int], label: str = "mask"
) -> tuple[InputImage, list[str]]:
    """:func:`fit_mask` in a worker thread, within the pixel budget (a task's work: it waits
    its turn)."""
    w, h = size  # decoded, resized in its own mode, made gray, made black and white
    cost = pixel_budget.decoded_bytes(mask.width, mask.height) + pixel_budget.decoded_bytes(w, h)
    cost += 2 * pixel_budget.decoded_bytes(w, h, "L")
    return await pixel_budget.PIXELS.run(cost, fit_mask, mask, size, label, bounded=False)


def _alpha_aware(pil: Image.Image) -> Image.Image:
    """An RGBA mask: transparent areas count as black (keep)."""
    rgba = pil.convert("RGBA")
    flat = Image.new("L", rgba.size, 0)
    flat.paste(rgba.convert("L"), mask=rgba.getchannel("A"))
    return flat
