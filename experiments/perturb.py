"""Perturbed copies of a tracklet dataset, for robustness checks (light, contrast, blur, resolution, colours,
angle, occlusion, motion, an off-centre box).

    python -m experiments.perturb --src data/synthetic/scale1_seed0 --out data/perturbed --numbers=4,8,49,48,64,88
    python predict.py --checkpoint checkpoints/best_model.pth data/perturbed/blur --quantize   # INT8 vs float
    python evaluate.py --checkpoint checkpoints/best_model.pth --data_root=data/perturbed/dark   # held-out numbers

Every op writes <out>/<op>/ in the layout of --src (SPEC layout: <number>/<sequence>/<sub-tracklet>/*.jpg), so
each is a dataset root the other scripts read. The ops are fixed, not random, so two runs give the same files:
  copy      unchanged (re-encoded only: the baseline for the others)
  bright    brightness x1.6            dark      brightness x0.45
  contrast  contrast x2.2              blur      Gaussian blur, radius 1.5 px
  lowres    down to half size and back up (bilinear), as a farther camera would see it
  invert    colours inverted (a light number on a dark shirt becomes dark on light)
  rotate    turned 12 degrees counter-clockwise about the centre, corners filled with the edge colour
  occlude   a grey block over the right 30% of the box from 20% to 70% of its height (a passing player's arm
            or body): often over the units digit
  motion    horizontal motion blur, 5 px (a player running across the image)
  offcentre the picture moved right by 15% of the box width, the strip it leaves filled with the edge colour (a
            tracker box that lags its player): tests crops that assume a centred player
Copies are saved in their own format (JPEG at quality 90, which adds its own small loss). Unreadable images are
skipped and counted.
"""
import argparse
import os
from collections import Counter

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tqdm import tqdm

from config import IMG_EXTS

OPS = {
    "copy": lambda im: im,  # re-encoded only: the baseline the others are compared with
    "bright": lambda im: ImageEnhance.Brightness(im).enhance(1.6),
    "dark": lambda im: ImageEnhance.Brightness(im).enhance(0.45),
    "contrast": lambda im: ImageEnhance.Contrast(im).enhance(2.2),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
    "lowres": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.BILINEAR)
    .resize(im.size, Image.BILINEAR),
    "invert": ImageOps.invert,
    "rotate": lambda im: im.rotate(12, resample=Image.BILINEAR, fillcolor=_edge_colour(im)),
    "occlude": lambda im: _occluded(im, (0.7, 0.2, 1.0, 0.7)),
    "motion": lambda im: im.filter(ImageFilter.Kernel((5, 5), [0] * 10 + [1] * 5 + [0] * 10, scale=5)),
    "offcentre": lambda im: _shifted(im, 0.15),
}


def _edge_colour(im: Image.Image) -> tuple:
    """Mean colour of the image's border pixels, so a turned frame's empty corners look like background."""
    a = np.asarray(im, dtype=np.float64)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(round(v)) for v in border.mean(0))


def _occluded(im: Image.Image, box: tuple) -> Image.Image:
    """A copy with a flat mid-grey block over `box` (left, top, right, bottom as fractions of the size)."""
    out, (w, h) = im.copy(), im.size
    out.paste((128, 128, 128), (round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    return out


def _shifted(im: Image.Image, fraction: float) -> Image.Image:
    """The picture moved right by `fraction` of its width; the strip it uncovers takes the border's mean colour."""
    out = Image.new("RGB", im.size, _edge_colour(im))
    out.paste(im, (round(fraction * im.width), 0))
    return out


def images(src: str, numbers: list[str] | None) -> list[str]:
    """Paths (relative to src) of every image under the chosen number folders (all of them by default)."""
    tops = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    chosen = [d for d in tops if numbers is None or d in numbers]
    missing = sorted(set(numbers or ()) - set(tops))
    if missing:
        raise SystemExit(f"error: no folder for number(s) {', '.join(missing)} in {src}")
    out = []
    for top in chosen:
        for root, _, files in os.walk(os.path.join(src, top)):
            out += [os.path.relpath(os.path.join(root, f), src) for f in sorted(files) if f.lower().endswith(IMG_EXTS)]
    return out


def perturb(src: str, out: str, ops: list[str], numbers: list[str] | None = None) -> Counter:
    """Write <out>/<op>/<same relative path> for every image and op; returns counts (written per op, skipped)."""
    if not os.path.isdir(src):
        raise SystemExit(f"error: --src {src} is not a folder")
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        raise SystemExit(f"error: unknown op(s) {', '.join(unknown)}; choose from {', '.join(OPS)}")
    counts = Counter()
    for rel in tqdm(images(src, numbers), desc="perturb", unit="img"):
        try:
            with Image.open(os.path.join(src, rel)) as im:
                im = im.convert("RGB")
        except OSError:
            counts["skipped (unreadable)"] += 1
            continue
        for op in ops:
            dst = os.path.join(out, op, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            OPS[op](im).save(dst, **({"quality": 90} if dst.lower().endswith((".jpg", ".jpeg")) else {}))
            counts[op] += 1
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="a dataset root in the SPEC layout")
    parser.add_argument("--out", default="data/perturbed")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, from {', '.join(OPS)}")
    parser.add_argument("--numbers", default=None, help="comma-separated number folders (default: all)")
    args = parser.parse_args(argv)
    numbers = args.numbers.split(",") if args.numbers else None
    counts = perturb(args.src, args.out, args.ops.split(","), numbers)
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) or "no images found", f"-> {args.out}")
    return counts


if __name__ == "__main__":
    main()
