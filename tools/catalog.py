"""The function catalogue: what each function is, what it takes, and who can run it.

A function is vendor-neutral (``expand`` means the same at every vendor). Each vendor says
which functions it runs and which parameters it honours (``Vendor.capabilities``); this
module checks a request against the function itself, once, with messages a person reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tools.errors import InvalidParameter, UnknownFunction
from tools.models import EditRequest

MaskRule = Literal["required", "optional", "none"]

#: Parameters every function accepts (they are Retouch's, not the vendor's).
UNIVERSAL = frozenset({"images", "function", "vendor", "watermark", "options"})


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    summary: str
    min_images: int = 1
    max_images: int = 1
    mask: MaskRule = "none"
    prompt_required: bool = True
    params: frozenset[str] = field(default_factory=frozenset)
    prompt_hint: str = ""

    @property
    def accepted(self) -> frozenset[str]:
        extra = {"prompt"} | ({"mask"} if self.mask != "none" else set())
        return UNIVERSAL | self.params | extra


_GEN = frozenset({"n", "seed"})

FUNCTIONS: dict[str, FunctionSpec] = {
    spec.name: spec
    for spec in [
        FunctionSpec(
            "edit",
            "Edit one to three images by instruction (qwen-image-edit / gpt-image style): "
            "'put the cat from image 1 on the sofa of image 2'.",
            max_images=3,
            mask="optional",
            params=_GEN | {"negative_prompt", "size"},
        ),
        FunctionSpec(
            "stylization_all",
            "Restyle the whole image: 'make it an oil painting', 'pencil sketch'.",
            params=_GEN,
            prompt_hint="the style, e.g. 'oil painting'",
        ),
        FunctionSpec(
            "stylization_local",
            "Restyle one part of the image: the region named in the prompt or painted "
            "white in the mask.",
            mask="optional",
            params=_GEN,
        ),
        FunctionSpec(
            "description_edit",
            "Change the image as the prompt describes, keeping its layout.",
            params=_GEN,
        ),
        FunctionSpec(
            "description_edit_with_mask",
            "Repaint only the white region of the mask as the prompt describes.",
            mask="required",
            params=_GEN,
        ),
        FunctionSpec(
            "remove_watermark",
            "Remove text and watermarks (the white mask region, or detected text).",
            mask="optional",
            prompt_required=False,
            params=_GEN,
        ),
        FunctionSpec(
            "expand",
            "Extend the canvas outwards (outpainting) by 1.0–2.0× on each side.",
            prompt_required=False,
            params=_GEN | {"expand"},
        ),
        FunctionSpec(
            "super_resolution",
            "Upscale 1–4× with detail recovery.",
            prompt_required=False,
            params=_GEN | {"upscale_factor"},
        ),
        FunctionSpec(
            "colorization",
            "Colour a black-and-white photo; the prompt may name colours.",
            prompt_required=False,
            params=_GEN,
        ),
        FunctionSpec(
            "doodle",
            "Turn a line drawing or doodle into a picture described by the prompt.",
            params=_GEN,
        ),
        FunctionSpec(
            "control_cartoon_feature",
            "Put a cartoon character from the image into a new scene from the prompt.",
            params=_GEN,
        ),
        FunctionSpec(
            "adjust",
            "Simple exact edits: rotate, flip, crop, resize, brightness, contrast, "
            "grayscale, blur, sharpen — listed in the prompt, e.g. 'rotate 90; resize 50%'.",
            params=frozenset(),
            prompt_hint="'rotate 90; flip horizontal; crop 0 0 200 200; resize 512x512; "
            "brightness 1.2; contrast 0.8; grayscale; blur 2; sharpen'",
        ),
        FunctionSpec(
            "lineart",
            "Line drawing of the image (edge detection: XDoG or Canny).",
            prompt_required=False,
            params=frozenset(),
        ),
    ]
}


def get(name: str) -> FunctionSpec:
    try:
        return FUNCTIONS[name]
    except KeyError:
        known = ", ".join(FUNCTIONS)
        raise UnknownFunction(f"unknown function {name!r}; known functions: {known}") from None


def set_params(request: EditRequest) -> set[str]:
    """The parameters the client actually set (defaults do not count)."""
    names = set(request.model_fields_set)
    if request.n == 1:
        names.discard("n")
    if not request.options:
        names.discard("options")
    if not request.prompt:
        names.discard("prompt")
    return {n for n in names if getattr(request, n) is not None}


def validate(request: EditRequest) -> FunctionSpec:
    """Check a request against its function (not against any vendor)."""
    spec = get(request.function)
    count = len(request.images)
    if not spec.min_images <= count <= spec.max_images:
        want = (
            f"exactly {spec.min_images}"
            if spec.min_images == spec.max_images
            else f"{spec.min_images} to {spec.max_images}"
        )
        plural = "image" if spec.max_images == 1 else "images"
        raise InvalidParameter(
            f"{spec.name} takes {want} {plural}; got {count}", parameter="images"
        )
    if spec.mask == "required" and not request.mask:
        raise InvalidParameter(
            f"{spec.name} needs a mask: an image of the same size, white where to edit "
            "and black where to keep",
            parameter="mask",
        )
    if spec.prompt_required and not request.prompt.strip():
        hint = f" ({spec.prompt_hint})" if spec.prompt_hint else ""
        raise InvalidParameter(f"{spec.name} needs a prompt{hint}", parameter="prompt")
    stray = sorted(set_params(request) - spec.accepted)
    if stray:
        raise InvalidParameter(f"{spec.name} does not use {', '.join(stray)}", parameter=stray[0])
    if request.function == "expand" and request.expand is None:
        raise InvalidParameter(
            'expand needs the expand scales, e.g. {"left": 1.5, "right": 1.5}',
            parameter="expand",
        )
    return spec


def parameter_schema(spec: FunctionSpec) -> dict[str, Any]:
    """JSON Schema of the parameters a function uses, cut from EditRequest's schema."""
    full = EditRequest.model_json_schema()
    props = {k: v for k, v in full["properties"].items() if k in spec.accepted}
    required = ["images"] + (["prompt"] if spec.prompt_required else [])
    if spec.mask == "required":
        required.append("mask")
    schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
    if "$defs" in full and "expand" in props:
        schema["$defs"] = full["$defs"]
    props["images"] = {
        **props["images"],
        "minItems": spec.min_images,
        "maxItems": spec.max_images,
    }
    return schema
