"""An example Retouch vendor kind: answers at once with the negative of the image."""

from __future__ import annotations

from collections.abc import Mapping

from PIL import ImageOps

from tools.media import encode
from tools.vendors.base import Capability, Finished, Job, OutputImage, Vendor


class ExampleVendor(Vendor):
    """Synchronous: ``submit`` returns the result; no polling, no callback."""

    idempotent_submit = True  # nothing is billed

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        return {"stylization_all": Capability(note="inverts the colours (an example plugin)")}

    async def submit(self, job: Job) -> Finished:
        negative = ImageOps.invert(job.images[0].to_pil().convert("RGB"))
        return Finished(images=[OutputImage(data=encode(negative, "PNG").data)])
