"""Digit-glyph pretraining of the trunk: the offline stand-in for ImageNet weights.

Without internet there are no ImageNet weights, and a trunk trained from random weights on a few thousand
tracklets stays on the majority-class plateau instead of finding the small, soft digits.
Text recognisers solve the same cold start with synthetic text (MJSynth, SynthText): this renders numbers
in many fonts, sizes, colours, positions and degradations onto cluttered backgrounds and trains the trunk to
read them with a tens head (10 = empty) and a units head. Every render is a single digit 0-9, so no number
the repo scores is ever rendered (two-digit renders did not move held-out accuracy).

The fonts are matplotlib's, but none of the font files `synth.py` prints jersey numbers with, so the
embedded data does not share glyph shapes with the pretraining images.

    python pretrain.py --backbone=cnn       # writes data/cache/glyph_cnn_96px_1500steps_20000img.pth
    python pretrain.py --steps=3000 --img_size=64 --out_path=trunk.pth
train.py uses it when --backbone_init=auto (default) and ImageNet weights cannot be had.
An interrupted run continues from <out>.partial, written every SAVE_EVERY steps, when started again.
"""
import config

if __name__ == "__main__":  # --help before torch is imported, so it prints at once
    config.exit_on_help(__doc__, config.options("pretrain"))

import os
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

import dataset
import model as model_lib
import utils

log = utils.log
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
# (font file, extra stroke as a fraction of the font size); disjoint from synth.FONT_STYLES' files
FONTS = [("DejaVuSans-BoldOblique.ttf", 0.0), ("DejaVuSans-Oblique.ttf", 0.04), ("DejaVuSansMono.ttf", 0.05),
         ("DejaVuSansMono-BoldOblique.ttf", 0.0), ("DejaVuSerif.ttf", 0.04), ("DejaVuSerif-BoldItalic.ttf", 0.0),
         ("STIXGeneral.ttf", 0.04), ("STIXGeneralBolIta.ttf", 0.0), ("cmr10.ttf", 0.05), ("cmtt10.ttf", 0.05)]
SEED = 0  # fixed like ImageNet weights are: every run and seed starts from the same trunk
SAVE_EVERY = 250  # steps between resumable snapshots (<out>.partial), so a crash costs at most that many
RENDER = 3  # glyphs are drawn at 3x and downscaled, so they end up soft like printed numbers seen from afar
STEPS = config.OPTIONS["steps"][0]  # the budget train.py pretrains with when it needs a trunk
IMAGES = 20000  # renders in the training bank


@lru_cache(maxsize=None)
def _font(name: str, size: int):
    try:
        return ImageFont.truetype(str(FONT_DIR / name), size)
    except OSError:
        return None


def _colour(rng, away_from=None):
    """A random RGB colour; with `away_from`, one that differs from it by at least ~100 in some channel."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if away_from is None or np.abs(c - away_from).max() > 100:
            return tuple(int(v) for v in c)
    return tuple(int(255 - v) for v in away_from)


def _background(rng, s: int) -> Image.Image:
    """Flat colour, a gradient and a few random boxes/ellipses: clutter the net must learn to ignore."""
    base = rng.integers(0, 256, 3).astype(np.float32)
    ramp = np.linspace(-1, 1, s, dtype=np.float32)
    grad = rng.uniform(-60, 60) * ramp[None, :, None] + rng.uniform(-60, 60) * ramp[:, None, None]
    im = Image.fromarray(np.clip(base + grad, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(0, 6)):
        x0, y0 = rng.integers(-s // 4, s, 2)
        x1, y1 = x0 + rng.integers(s // 8, s), y0 + rng.integers(s // 8, s)
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=_colour(rng))
    return im


def render(rng: np.random.Generator, number: int, size: int, min_size: float = 0.3) -> np.ndarray:
    """One size x size uint8 RGB image holding `number` (one or two digits) somewhere, degraded like a low-res
    broadcast crop; the number's font size is min_size..0.8 of the image (see _glyph), placed anywhere it fits."""
    s = size * RENDER
    im = _background(rng, s)
    glyph = _glyph(rng, number, s, min_size)
    gw, gh = glyph.size
    x, y = rng.integers(0, max(1, s - gw)), rng.integers(0, max(1, s - gh))
    ink = np.asarray(im.crop((x, y, x + gw, y + gh))).reshape(-1, 3).mean(0)
    if rng.random() < 0.4:  # outlined numbers, common on kits
        edge = glyph.filter(ImageFilter.MaxFilter(2 * (s // 64) + 1 + 2 * int(rng.integers(1, 4))))
        im.paste(_colour(rng, ink), (x, y), edge)
    im.paste(_colour(rng, ink), (x, y), glyph)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0) * RENDER))
    low = int(size * rng.uniform(0.5, 1.0))  # real crops are often far below the model's input size
    im = im.resize((low, low), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, rng.uniform(0, 12), (size, size, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def _glyph(rng: np.random.Generator, number: int, s: int, min_size: float) -> Image.Image:
    """The number's ink mask on an s x s canvas, cropped to its ink: font size min_size..0.8 of s, squashed or
    stretched and tilted like a number on a turning, leaning torso."""
    name, stroke = FONTS[rng.integers(len(FONTS))]
    font = _font(name, int(s * rng.uniform(min_size, 0.8))) or ImageFont.load_default()
    glyph = Image.new("L", (s, s))
    sw = int(stroke * font.size * rng.uniform(0.5, 1.5)) if hasattr(font, "size") else 0
    ImageDraw.Draw(glyph).text((s // 2, s // 2), str(number), fill=255, font=font, anchor="mm", stroke_width=sw,
                               stroke_fill=255)
    sx = rng.uniform(0.6, 1.4)
    glyph = glyph.resize((max(1, int(s * sx)), s)).rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
    box = glyph.getbbox()
    if box:
        glyph = glyph.crop(box)
    if max(glyph.size) > s:  # two wide digits: shrink to fit the canvas
        f = s / max(glyph.size)
        glyph = glyph.resize((max(1, int(glyph.width * f)), max(1, int(glyph.height * f))))
    return glyph


def _render_chunk(args):
    seed, start, labels, size, min_size = args
    rng = np.random.default_rng([seed, start])
    return np.stack([render(rng, int(k), size, min_size) for k in labels])


def make_bank(n: int, size: int, seed: int, workers: int = 0, min_size: float = 0.3,
              labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """n rendered numbers (uint8 [n, size, size, 3]) and their labels (the digits 0-9 in turn, or the given
    `labels`); the same bytes for any worker count."""
    labels = np.arange(n) % 10 if labels is None else np.asarray(labels)
    chunks = [(seed, i, labels[i:i + 500], size, min_size) for i in range(0, n, 500)]
    workers = workers or min(len(chunks), os.cpu_count() or 1)
    with Pool(workers) if workers > 1 else nullcontext() as pool:
        parts = list(tqdm((pool.imap if pool else map)(_render_chunk, chunks), total=len(chunks),
                          desc="rendering digits", unit="chunk", leave=False))
    return torch.from_numpy(np.concatenate(parts)), torch.from_numpy(labels)


def weights_path(cfg, steps: int = 0) -> str:
    """Where backbone_init=auto caches the trunk: like ImageNet weights, one file shared by every run and seed."""
    return os.path.join(cfg.cache_dir, f"glyph_{cfg.backbone}_{cfg.img_size}px_{steps or STEPS}steps_{IMAGES}img.pth")


def _batches(frames, labels, batch_size, steps, gen):
    for _ in range(steps):
        i = torch.randint(len(frames), (batch_size,), generator=gen)
        yield frames[i], labels[i]


def _to_input(frames, device, train: bool):
    x = dataset.to_input(frames.unsqueeze(1), device)
    if train:
        x = dataset.augment(x)
    return dataset.normalize(x)[:, 0].contiguous(memory_format=torch.channels_last)


class GlyphNet(nn.Module):
    """Trunk + a tens (11 classes, 10 = empty) and a units head on the whole, left-half and right-half pooled
    feature map: where a digit sits must survive in the trunk's features for the tens head to name it."""

    def __init__(self, body: nn.Module, c: int):
        super().__init__()
        self.body, self.tens, self.units = body, nn.Linear(3 * c, 11), nn.Linear(3 * c, 10)

    def forward(self, x):
        f = self.body(x)
        half = max(1, f.shape[-1] // 2)
        z = torch.cat([f.mean((2, 3)), f[..., :half].mean((2, 3)), f[..., -half:].mean((2, 3))], 1)
        return self.tens(z), self.units(z)


def _loss(net, x, number):
    tens, units = net(x)
    t, u = dataset.decompose(number)
    return F.cross_entropy(tens.float(), t) + F.cross_entropy(units.float(), u)


@torch.inference_mode()
def accuracy(net, frames, labels, device, dtype) -> float:
    """% of renders whose whole number (both digit positions) is read right."""
    net.eval()
    hits = 0
    for i in range(0, len(frames), 256):
        with utils.autocast(device, dtype):
            tens, units = net(_to_input(frames[i:i + 256], device, False))
        t, u = dataset.decompose(labels[i:i + 256].to(device))
        hits += int(((tens.argmax(1) == t) & (units.argmax(1) == u)).sum())
    net.train()
    return 100.0 * hits / max(len(frames), 1)


def pretrain(cfg, out: str = "", steps: int = 0) -> str:
    """Train a `cfg.backbone` digit classifier on rendered glyphs (`steps`, default STEPS); save its trunk where
    model.build finds it."""
    steps = steps or STEPS
    out = out or weights_path(cfg, steps)
    with isolated_rng():
        return _pretrain(cfg, out, steps)


@contextmanager
def isolated_rng():
    """Pretraining inside train.py must not move the caller's random streams."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(np_state)


def _pretrain(cfg, out, steps):
    device = torch.device(utils.resolved_device(cfg.device))
    dtype = utils.amp_dtype(device, cfg.amp)
    utils.seed_everything(SEED)
    frames, labels = make_bank(IMAGES, cfg.img_size, SEED)
    val_frames, val_labels = make_bank(min(1000, IMAGES), cfg.img_size, SEED + 1)
    body = model_lib.trunk(cfg.backbone, pretrained=False)[0]
    net = GlyphNet(body, config.BACKBONES[cfg.backbone]).to(device, memory_format=torch.channels_last)
    opt = utils.adamw(net.parameters(), device, cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(SEED)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)  # float16 autocast on CUDA
    state = {"net": net, "opt": opt, "sched": sched, "scaler": scaler, "gen": gen}
    partial = out + ".partial"
    key = [cfg.backbone, cfg.img_size, steps, IMAGES, cfg.lr]
    start, run = _resume(partial, key, state)
    bar = tqdm(_batches(frames, labels, 64, steps - start, gen), initial=start, total=steps,
               desc="glyph pretraining", dynamic_ncols=True)
    t0 = time.time()
    for step, (x, y) in enumerate(bar, start):
        with utils.autocast(device, dtype):
            loss = _loss(net, _to_input(x, device, True), y.to(device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        run = loss.item() if step == 0 else 0.98 * run + 0.02 * loss.item()
        bar.set_postfix(loss=f"{run:.3f}")
        if (step + 1) % SAVE_EVERY == 0 and step + 1 < steps:
            _save_partial(partial, key, state, step + 1, run)
    acc = accuracy(net, val_frames, val_labels, device, dtype)
    log.info("glyph accuracy: %.1f%% on training renders, %.1f%% on %d new ones",
             accuracy(net, frames[:1000], labels[:1000], device, dtype), acc, len(val_labels))
    utils.atomic_save({"trunk": {k: v.cpu() for k, v in body.state_dict().items()}, "backbone": cfg.backbone,
                       "img_size": cfg.img_size, "steps": steps, "images": IMAGES, "seed": SEED,
                       "glyph_val_acc": acc}, out)
    if os.path.exists(partial):
        os.remove(partial)
    log.info("glyph pretraining: %d steps (%d this call) in %.0f s, held-out render accuracy %.1f%% -> %s",
             steps, steps - start, time.time() - t0, acc, out)
    return out


def _save_partial(path, key, state, step, run):
    """Everything a crashed pretraining needs to continue exactly where it stopped (the bank is re-rendered)."""
    utils.atomic_save({"key": key, "step": step, "run": run, "rng": torch.get_rng_state(),
                       "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                       **{k: v.get_state() if k == "gen" else v.state_dict() for k, v in state.items()}}, path)


def _resume(path, key, state) -> tuple[int, float]:
    """(first step, running loss) from an interrupted run's partial file; (0, 0) when there is none that fits."""
    if not os.path.exists(path):
        return 0, 0.0
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck["key"] != key:
            raise ValueError(f"settings differ ({ck['key']} vs {key})")
        for k, v in state.items():
            if k == "gen":
                v.set_state(ck[k])
            else:
                v.load_state_dict(ck[k])
    except Exception as err:  # noqa: BLE001 - a stale or broken partial file only costs the steps it held
        log.warning("ignoring %s (%s: %s); pretraining from step 0", path, type(err).__name__, str(err)[:120])
        return 0, 0.0
    torch.set_rng_state(ck["rng"])
    if ck["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["cuda_rng"])
    log.info("resuming glyph pretraining from %s at step %d", path, ck["step"])
    return ck["step"], ck["run"]


def main(argv=None):
    utils.setup_logging()
    cfg, extra = config.load(sys.argv[1:] if argv is None else argv, extras=config.options("pretrain"),
                             doc=__doc__)
    pretrain(cfg, extra["out_path"], extra["steps"])


if __name__ == "__main__":
    main()
