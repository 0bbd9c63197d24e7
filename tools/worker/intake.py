"""Result intake: a finished outcome's images are downloaded, checked, stamped and stored,
and the task's end is recorded once.

The worker and the vendor-callback route both take results in here. A task keeps at most
its ``n`` images, whatever the vendor delivers. Vendor URLs expire, so every image kept is
stored at once; a cancel asked for while the vendor worked wins over its results (checked
inside the finishing write).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
from PIL import Image

from tools import media, pixel_budget
from tools.errors import RetouchError, VendorError, VendorFault, VendorTimeout, error_from_dict
from tools.limits import delay
from tools.models import ImageFailure, ResultImage, TaskStatus
from tools.notifier import Notifier
from tools.store import Store, TaskRecord
from tools.timeline import Timeline
from tools.vendors.base import KEEP_DECODED_PX, Finished, OutputImage, Vendor

RESULT_LIMIT = 200 * 1024 * 1024
RESULT_MAX_PX = 400_000_000
#: A task's first results up to KEEP_DECODED_PX are kept decoded for the preview of a caller
#: that waited (``Editor.decoded_result``): at most 2 × 1536² pixels (19 MB) a task, outside
#: the pixel budget. Others are let go once checked; their previews decode them again, within
#: it.
KEEP_DECODED_PER_TASK = 2
#: Result downloads: attempts on a transient failure (5xx, 429, a broken connection), and
#: the time one attempt may take in all (httpx's timeout is per read, not per body).
RESULT_ATTEMPTS = 3
RESULT_DOWNLOAD_S = 300.0


class Intake:
    def __init__(self, store: Store, notifier: Notifier, timeline: Timeline | None = None) -> None:
        self.store = store
        self.notifier = notifier
        self.timeline = timeline or Timeline()

    async def take(
        self,
        record: TaskRecord,
        vendor: Vendor,
        outcome: Finished | RetouchError,
        *,
        client: httpx.AsyncClient,
        worker: str | None = None,
        notes: list[str] | None = None,
        policy: media.MediaPolicy | None = None,
        decoded: dict[int, Image.Image] | None = None,
    ) -> bool:
        """End a task with the vendor's outcome; False if it had ended some other way.

        ``worker``: the lease the end is recorded under (None: the callback route).
        ``notes``: the task's notes so far (default: the record's). With ``policy``, result
        URLs are fetched like user URLs (public addresses only, pinned): for outcomes that
        did not come from the configured vendor endpoint itself, such as an unauthenticated
        completion callback. ``decoded``: filled with each stored result's decoded image by
        its index, for a caller that shows them (checking a result decodes it anyway).
        """
        if record.finished:
            return False
        notes = list(record.notes) if notes is None else notes
        if isinstance(outcome, RetouchError):
            ended = await self.store.finish(
                record.id, worker, TaskStatus.failed, error=outcome.to_dict()
            )
        else:
            outcome = at_most(outcome, record.n, vendor.name)
            results, failures = await self._store_images(
                record, vendor, outcome, client, policy, decoded
            )
            ended = await self._record_end(
                record, vendor, outcome, results, failures, notes, worker
            )
        self.timeline.mark(record.id, "ended")
        self.notifier.changed(record.id, ended=True)
        return ended

    async def _store_images(
        self,
        record: TaskRecord,
        vendor: Vendor,
        outcome: Finished,
        client: httpx.AsyncClient,
        policy: media.MediaPolicy | None,
        decoded: dict[int, Image.Image] | None,
    ) -> tuple[list[ResultImage], list[ImageFailure]]:
        """Every delivered image downloaded, checked, stamped and stored; the images that
        failed (the vendor's own failures first)."""
        store = self.store
        text_mark = record.request.get("watermark")
        results: list[ResultImage] = []
        failures = list(outcome.failures)
        mark = self.timeline.mark
        for index, image in enumerate(outcome.images):
            # Pixels are wanted to stamp a watermark, or to keep for a waiting caller's
            # preview; otherwise the check need not decode the image in full.
            if isinstance(text_mark, str):
                keep_px = RESULT_MAX_PX
            elif decoded is not None and len(results) < KEEP_DECODED_PER_TASK:
                keep_px = KEEP_DECODED_PX
            else:
                keep_px = 0
            try:
                stored, pixels = await fetch_decoded(
                    image, client, vendor.name, policy, keep_px=keep_px
                )
                mark(record.id, "decoded")
                if isinstance(text_mark, str):
                    assert pixels is not None  # keep_px let every result through decoded
                    stored, pixels = await _stamp(pixels, stored.format, text_mark)
                small = pixels is not None and pixels.width * pixels.height <= KEEP_DECODED_PX
                kept = pixels if small and len(results) < KEEP_DECODED_PER_TASK else None
                del pixels  # a large result is not held past its check, outside the budget
                # Paid for: kept past the size cap if nothing can be evicted (a full disk
                # is still StorageFull, recorded as this image's failure).
                sha = await store.put_blob(stored, owner=record.owner, strict=False)
                mark(record.id, "result stored")
            except RetouchError as exc:
                failures.append(ImageFailure(index=index, code=exc.code, message=exc.message))
                continue
            if decoded is not None and kept is not None:
                decoded[len(results)] = kept
            results.append(
                ResultImage(
                    index=len(results),
                    uri=f"retouch://tasks/{record.id}/{len(results)}",
                    sha256=sha,
                    mime_type=stored.mime_type,
                    width=stored.width,
                    height=stored.height,
                    bytes=len(stored.data),
                    vendor_url=image.url,
                )
            )
        return results, failures

    async def _record_end(
        self,
        record: TaskRecord,
        vendor: Vendor,
        outcome: Finished,
        results: list[ResultImage],
        failures: list[ImageFailure],
        notes: list[str],
        worker: str | None,
    ) -> bool:
        """Succeeded with any image, else failed with the first failure; a cancel asked for
        meanwhile wins (checked inside the finishing write)."""
        billed = outcome.billed_images if outcome.billed_images is not None else len(outcome.images)
        price, currency = vendor.price_for(record.function)
        cost = round(billed * price, 6) if price is not None else None
        ended_notes = notes + outcome.notes
        if results:
            ended = await self.store.finish(
                record.id,
                worker,
                TaskStatus.succeeded,
                results=results,
                failures=failures,
                notes=ended_notes,
                billed_images=billed,
                cost=cost,
                currency=currency,
                unless_canceled=True,
            )
            return ended or await self._end_canceled(record.id, worker, notes)
        first = failures[0] if failures else None
        error: dict[str, object] = {"code": "vendor_fault", "vendor": vendor.name}
        if first is None:
            error["message"] = f"{vendor.name} delivered no image"
        elif error_from_dict({"code": first.code}).code == first.code:  # one of Retouch's codes
            error = {"code": first.code, "message": first.message}
        else:  # the vendor's own code ("InternalError.Timeout"): the task's code stays Retouch's
            error.update(message=first.message, vendor_code=first.code)
        ended = await self.store.finish(
            record.id,
            worker,
            TaskStatus.failed,
            failures=failures,
            error=error,
            notes=ended_notes,
            billed_images=billed,
            cost=cost,
            currency=currency,
            unless_canceled=True,
        )
        return ended or await self._end_canceled(record.id, worker, notes)

    async def _end_canceled(self, task_id: str, worker: str | None, notes: list[str]) -> bool:
        """A task whose cancel was asked for while the vendor worked ends canceled (its
        results are not kept); False if it had already ended some other way."""
        latest = await self.store.get(task_id)
        if not latest.cancel_requested or latest.finished:
            return False
        return await self.store.finish(task_id, worker, TaskStatus.canceled, notes=notes)


def at_most(outcome: Finished, n: int, vendor: str) -> Finished:
    """The outcome with at most the task's ``n`` images and failures in all: what is beyond
    is neither fetched, stored nor billed (a note says so)."""
    if len(outcome.images) + len(outcome.failures) <= n:
        return outcome
    images = outcome.images[:n]
    failures = outcome.failures[: n - len(images)]
    note = (
        f"{vendor} delivered {len(outcome.images)} image(s) and {len(outcome.failures)} "
        f"failure(s) for n={n}: only the first {n} kept"
    )
    billed = outcome.billed_images
    return replace(
        outcome,
        images=images,
        failures=failures,
        billed_images=len(images) if billed is None else billed,
        notes=[*outcome.notes, note],
    )


async def _stamp(image: Image.Image, fmt: str, text: str) -> tuple[media.InputImage, Image.Image]:
    """The image with a text watermark, in its own format (JPEG stays JPEG, else PNG),
    within the pixel budget (the stamped copy, the encoder)."""

    def run() -> tuple[media.InputImage, Image.Image]:
        from tools.engine.watermark import stamp  # numpy: loaded off the event loop

        out = stamp(image, text).image
        return media.encode(out, "JPEG" if fmt == "jpeg" else "PNG"), out

    cost = 3 * pixel_budget.decoded_bytes(image.width, image.height)
    return await pixel_budget.PIXELS.run(cost, run, bounded=False)


async def fetch_result(
    image: OutputImage,
    client: httpx.AsyncClient,
    vendor: str,
    safe: media.MediaPolicy | None = None,
) -> media.InputImage:
    """One delivered image, checked; ``safe``: fetch its URL like a user URL."""
    return (await fetch_decoded(image, client, vendor, safe, keep_px=0))[0]


async def fetch_decoded(
    image: OutputImage,
    client: httpx.AsyncClient,
    vendor: str,
    safe: media.MediaPolicy | None = None,
    *,
    keep_px: int = RESULT_MAX_PX,
) -> tuple[media.InputImage, Image.Image | None]:
    """``fetch_result``, and the image its check decoded when it has at most ``keep_px``
    pixels (within the pixel budget, waiting its turn: the vendor's work is done and maybe
    paid for); a larger one is checked without a full decode where it can be."""
    policy = media.MediaPolicy(max_bytes=RESULT_LIMIT, max_pixels=RESULT_MAX_PX)
    if image.data is not None and image.pixels is not None and image.mime_type:
        w, h = image.pixels.size  # made and encoded in this process: nothing to check
        return media.InputImage(image.data, image.mime_type, w, h), image.pixels
    if image.data is not None:
        return await _checked(image.data, policy, keep_px)
    if not image.url:
        raise VendorFault(f"{vendor} returned a result with neither data nor URL", vendor=vendor)
    if safe is not None:  # a URL that did not come from the vendor's own answer
        limits = replace(safe, max_bytes=RESULT_LIMIT, timeout_s=RESULT_DOWNLOAD_S)
        data = await media.fetch(image.url, limits, client, "result")
    else:
        data = await _download_retrying(image.url, client, vendor)
    return await _checked(data, policy, keep_px)


async def _checked(
    data: bytes, policy: media.MediaPolicy, keep_px: int
) -> tuple[media.InputImage, Image.Image | None]:
    return await media.check_keeping(data, policy, "result", keep_px=keep_px, bounded=False)


async def _download_retrying(url: str, client: httpx.AsyncClient, vendor: str) -> bytes:
    """A result URL's bytes; transient failures are retried (the URL expires, so now)."""
    for attempt in range(RESULT_ATTEMPTS):
        try:
            async with asyncio.timeout(RESULT_DOWNLOAD_S):
                return await _download(url, client, vendor)
        except TimeoutError:
            error: VendorError = VendorTimeout(
                f"{vendor}: result download took longer than {RESULT_DOWNLOAD_S:g} s",
                vendor=vendor,
            )
        except VendorFault as exc:
            error = exc
        if not error.retryable or attempt + 1 >= RESULT_ATTEMPTS:
            raise error
        await asyncio.sleep(delay(None, attempt))
    raise AssertionError("unreachable")


async def _download(url: str, client: httpx.AsyncClient, vendor: str) -> bytes:
    """GET a result URL; a transient failure (5xx, 429, a broken connection) is retryable."""
    try:
        async with client.stream("GET", url, timeout=120) as response:
            status = response.status_code
            if status != 200:
                raise VendorFault(
                    f"{vendor}: result download answered HTTP {status}"
                    + (" (the URL has expired)" if status in (403, 404) else ""),
                    vendor=vendor,
                    status=status,
                    transient=status >= 500 or status in (408, 429),
                )
            return await media.read_capped(response, RESULT_LIMIT, "result", raw_errors=True)
    except httpx.HTTPError as exc:
        raise VendorFault(
            f"{vendor}: result download failed ({type(exc).__name__})", vendor=vendor
        ) from None
