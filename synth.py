"""
Synthetic jersey-number tracklets that look like low-res broadcast crops of players seen from behind.

The real tracklets are private, so this renders stand-ins in two layouts.

Short mode (default), the original data's layout:

    OUT/<number>/player_<pid>_seq_<sid>/<sub>/<pid>_<frame>_<sub>.jpg
    OUT/<number>/player_<pid>_seq_<sid>/<sub>/<pid>_<frame>_<sub>_anchor.jpg   (clearest frame)
    OUT/.complete      JSON with the generation parameters, written last

A player sequence (one kit, body, font) holds 1-3 sub-tracklets of 3-15 frames; a sub-tracklet is the unit a
model sees. About 15% of sub-tracklets have no anchor frame (like new real footage); the rest mark exactly one.

Long mode (--long), SoccerNet's jersey-number layout:

    OUT/<split>/images/<tracklet id>/<frame>.jpg     split = train, test; ids "0", "1", ...; frames "0001.jpg", ...
    OUT/<split>/<split>_gt.json                      {"<tracklet id>": number, or -1 if it is never visible}
    OUT/<split>/<split>_legible.json                 {"<tracklet id>": [1 if readable by construction, per frame]}
    OUT/.complete

A long tracklet is one player in one shot, 30-400 frames (log-uniform: many short, some long). He turns: long
stretches side-on or facing the camera, so his back number is readable in a minority of frames; players cross
in front of him and the camera pans (heavy motion blur) at times. A share of tracklets (default 0.2) never show
the number (label -1), for one of three reasons: he never turns his back, every turn is covered by a player
standing in front of him, or every turn is smeared by a pan. Train numbers are HARD_TRAIN; half the numbered
test tracklets wear a held-out HARD_TEST number, the rest HARD_TRAIN numbers on new players. The legible file
is ground truth for tests and for measuring frame selection; real data has nothing like it, so the product must
never read it.

Realism choices, because models trained here are judged on real broadcast crops and other renderers:
- appearance (kit colours and pattern, number colour/outline, font, printed name, skin, hair, pitch, camera) is
  sampled independently of the number, so nothing but the digits themselves predicts the label;
- the body is a small 3D stick figure with a yawing elliptic torso: the number wraps around it, is foreshortened
  and shifted as the player turns and disappears in side/front views; arms, other players and crop edges hide it;
- the number is rendered large from fonts matplotlib ships, wave-warped like fabric, shaded with the shirt
  (folds, cylinder falloff, light direction) and only then downscaled, so it ends up as soft low-res print;
- frames get camera drift, motion blur, defocus, lighting and colour casts, stadium shadow, hard downscaling,
  sensor noise, sometimes broadcast sharpening, and JPEG at quality 30-95.
Each player sequence (short mode) or tracklet (long mode) draws from its own numpy Generator seeded by (seed,
number, sequence index) or (seed, split, tracklet index), so the bytes written do not depend on the worker count.
"""

import argparse
import json
import math
import os
import shutil
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

VERSION = 1

TRAIN_COUNTS = {4: 1029, 6: 867, 8: 2057, 9: 1499, 49: 121, 66: 145, 89: 87}   # sub-tracklets (original data mix)
HELDOUT_COUNTS = {48: 100, 64: 100, 88: 100}                                   # held-out test numbers
EXTRA_UNSEEN_COUNTS = {44: 100, 46: 100, 68: 100, 69: 100, 84: 100, 86: 100}   # other unseen combos of seen digits
DEFAULT_COUNTS = {**TRAIN_COUNTS, **HELDOUT_COUNTS, **EXTRA_UNSEEN_COUNTS}
# The harder split (ablate.py --split=hard): all ten digits, 24 two-digit training numbers, 8 held-out two-digit
# numbers whose tens digit is a training tens digit and whose units digit is a training units digit.
HARD_TRAIN = list(range(1, 10)) + [10, 12, 15, 21, 23, 27, 31, 34, 39, 42, 50, 53, 56, 61, 67, 70, 72, 75, 81,
                                   85, 90, 94, 97, 18]
HARD_TEST = [13, 25, 37, 41, 58, 64, 79, 92]
# every number this repo scores as unseen; pretrain.py never renders them
EVALUATED_UNSEEN = sorted(set(HELDOUT_COUNTS) | set(EXTRA_UNSEEN_COUNTS) | set(HARD_TEST))

MIN_W, MAX_W, MIN_H, MAX_H = 25, 90, 55, 140
NO_ANCHOR_P = 0.15

# long mode (SoccerNet layout)
LONG_COUNTS = {"train": 400, "test": 200}      # tracklets per split at scale 1
HELD_OUT_SHARE = {"train": 0.0, "test": 0.5}   # share of a split's numbered tracklets wearing a HARD_TEST number
MIN_LONG, MAX_LONG = 30, 400                   # frames per long tracklet
NOT_VISIBLE_SHARE = 0.2                        # tracklets labelled -1
NOT_VISIBLE_CAUSES = {"front": 0.4, "covered": 0.3, "smeared": 0.3}
BACK_COS = math.cos(math.radians(35))   # legible: back within 35 deg of the camera (jitter never takes a held
                                        # back view past 30, three-quarter holds never come closer than 40)
SHARP_BLUR = 0.07    # legible: motion blur at most this share of the working height; a camera's own blur stays
                     # under it, pan events go above
PAN_BLUR = (0.15, 0.4)       # pan blur peak as a share of the working height: the digits smear
SMEAR_BLUR = (0.3, 0.45)     # on -1 "smeared" tracklets: several times the print's size, nothing left to read
OFFSTAGE = 9.0       # other player's x (crop widths from the main player) while he is not in the shot

FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
# (file, extra stroke as a fraction of the font size): the stroke turns regular faces into heavier block styles
FONT_STYLES = [
    ("DejaVuSans-Bold.ttf", 0.0), ("DejaVuSans-Bold.ttf", 0.035), ("DejaVuSans.ttf", 0.05),
    ("DejaVuSansMono-Bold.ttf", 0.0), ("DejaVuSansMono-Bold.ttf", 0.03), ("DejaVuSerif-Bold.ttf", 0.0),
    ("STIXGeneralBol.ttf", 0.0), ("STIXGeneralBol.ttf", 0.03), ("cmss10.ttf", 0.06), ("cmb10.ttf", 0.02),
]
NAME_FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf"]
FONT_SIZE = 80   # px; prints are downscaled 2-6x onto the canvas, so this is still well oversampled

KIT_COLOURS = np.array([
    (245, 245, 245), (20, 20, 24), (200, 25, 35), (120, 20, 40), (25, 65, 175), (115, 175, 230), (18, 28, 75),
    (245, 205, 25), (240, 120, 25), (25, 130, 65), (95, 45, 135), (135, 135, 140), (235, 130, 170), (20, 140, 150),
    (185, 220, 45), (160, 130, 80),
], dtype=np.float64)
SKIN_TONES = np.array([(236, 200, 175), (222, 178, 146), (198, 145, 108), (160, 110, 75), (120, 80, 55),
                       (88, 58, 42)], dtype=np.float64)
HAIR_COLOURS = np.array([(20, 16, 14), (55, 35, 22), (100, 70, 40), (190, 150, 90), (140, 60, 30), (120, 120, 120),
                         (225, 210, 160)], dtype=np.float64)
WHITE, BLACK = np.array([245.0, 245, 245]), np.array([18.0, 18, 20])
NUMBER_COLOURS = np.array([(245, 245, 245), (18, 18, 20), (250, 215, 30), (205, 170, 70), (210, 30, 35),
                           (20, 30, 90), (30, 90, 200)], dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------
# small helpers

def rgb(c):
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def lum(c):
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) / 255.0


def hsv_colour(rng):
    h, s, v = rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.15, 1.0)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return 255 * np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def kit_colour(rng):
    if rng.random() < 0.65:
        return np.clip(KIT_COLOURS[rng.integers(len(KIT_COLOURS))] + rng.normal(0, 12, 3), 0, 255)
    return hsv_colour(rng)


def contrasting(rng, base, min_diff=0.35):
    """A print colour readable on `base`: mostly white/black, sometimes club colours."""
    for _ in range(30):
        c = NUMBER_COLOURS[rng.integers(len(NUMBER_COLOURS))] if rng.random() < 0.8 else hsv_colour(rng)
        if abs(lum(c) - lum(base)) >= min_diff:
            return np.clip(c + rng.normal(0, 6, 3), 0, 255)
    return WHITE.copy() if lum(base) < 0.5 else BLACK.copy()


@lru_cache(maxsize=None)
def available_fonts():
    styles = [(str(FONT_DIR / f), emb) for f, emb in FONT_STYLES if (FONT_DIR / f).exists()]
    styles = [s for s in styles if _font(s[0], FONT_SIZE) is not None]
    return styles or [("", 0.04)]   # "" = Pillow's built-in font; keeps generation alive without matplotlib fonts


@lru_cache(maxsize=64)
def _font(path, size):
    try:
        return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)
    except (OSError, TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------------
# appearance: kit, body, printed number (per player sequence)

def sample_kit(rng):
    shirt = kit_colour(rng)
    second = kit_colour(rng)
    pattern = rng.choice(["solid", "stripes", "hoops", "halves", "sleeves"], p=[0.64, 0.14, 0.06, 0.05, 0.11])
    shorts = rng.choice([shirt, second, WHITE, BLACK, kit_colour(rng)], p=[0.3, 0.25, 0.2, 0.15, 0.1])
    socks = rng.choice([shirt, shorts, second, WHITE, BLACK], p=[0.3, 0.25, 0.2, 0.15, 0.1])
    boots = rng.choice([BLACK, WHITE, hsv_colour(rng)], p=[0.4, 0.15, 0.45])
    return dict(shirt=shirt, second=second, pattern=str(pattern), shorts=np.array(shorts), socks=np.array(socks),
                boots=np.array(boots), sleeve=second if pattern == "sleeves" else shirt,
                long_sleeves=rng.random() < 0.2, n_stripes=int(rng.integers(8, 15)),
                hoop_period=rng.uniform(0.05, 0.09))


def sample_body(rng):
    skin = np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 8, 3), 0, 255)
    hair = np.clip(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.normal(0, 8, 3), 0, 255)
    style = str(rng.choice(["short", "shaved", "long", "big"], p=[0.6, 0.15, 0.13, 0.12]))
    if style == "shaved":
        hair = 0.55 * skin + 0.45 * hair
    return dict(skin=skin, hair=hair, hair_style=style, build=rng.uniform(0.88, 1.15),
                hem=rng.uniform(0.43, 0.48), head=rng.uniform(0.9, 1.1))


def sample_print_style(rng, kit):
    base = kit["shirt"]
    if kit["pattern"] in ("stripes", "hoops", "halves"):
        base = 0.5 * (kit["shirt"] + kit["second"])
    panel = None
    if kit["pattern"] in ("stripes", "hoops") and rng.random() < 0.5:
        panel = kit["shirt"] if rng.random() < 0.5 else WHITE
        base = panel
    colour = contrasting(rng, base, 0.35 if rng.random() < 0.9 else 0.2)
    outline = contrasting(rng, colour, 0.3) if rng.random() < 0.35 else None
    font, emb = available_fonts()[rng.integers(len(available_fonts()))]
    name = None
    if rng.random() < 0.45:
        letters = "ABCDEFGHIJKLMNOPRSTUVWYZ"
        name = "".join(letters[i] for i in rng.integers(len(letters), size=int(rng.integers(3, 10))))
    return dict(font=font, emb=emb, squeeze=rng.uniform(0.72, 1.1), gap=rng.uniform(-0.02, 0.2), colour=colour,
                outline=outline, outline_w=rng.uniform(0.03, 0.07), name=name, name_font=str(rng.choice(NAME_FONTS)),
                panel=panel, height=rng.uniform(0.42, 0.6), top=rng.uniform(0.1, 0.2))


def glyph_masks(text, font, stroke, outline):
    """Fill and outline masks (L, same origin) of `text` rendered with extra stroke (embolden) and outline."""
    size = font.size
    pad = stroke + outline + 4
    w = int(font.getlength(text)) + 2 * pad
    h = int(size * 1.35) + 2 * pad
    masks = []
    for s in (stroke, stroke + outline):
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).text((pad, pad), text, fill=255, font=font, stroke_width=s, stroke_fill=255)
        masks.append(np.asarray(im))
    return masks


def ink_box(mask, axis):
    idx = np.nonzero(mask.max(axis=axis) > 0)[0]
    return (idx[0], idx[-1] + 1) if len(idx) else (0, mask.shape[1 - axis])


def render_digits(number, style):
    """Each digit rendered separately so the pair can be centred with a per-kit gap, then squeezed like
    condensed jersey fonts. Returns (fill, outline) float masks in [0, 1]."""
    font = _font(style["font"], FONT_SIZE)
    stroke = int(round(style["emb"] * FONT_SIZE))
    outline = int(round(style["outline_w"] * FONT_SIZE)) if style["outline"] is not None else 0
    fills, outs = [], []
    for ch in str(number):
        f, o = glyph_masks(ch, font, stroke, outline)
        x0, x1 = ink_box(o, 0)
        fills.append(f[:, x0:x1])
        outs.append(o[:, x0:x1])
    gap = np.zeros((fills[0].shape[0], max(0, int(style["gap"] * FONT_SIZE))), np.uint8)
    if style["gap"] < 0 and len(fills) == 2:   # slight overlap of the pair: trim instead of negative gap
        cut = int(-style["gap"] * FONT_SIZE)
        fills[0], outs[0] = fills[0][:, :-cut or None], outs[0][:, :-cut or None]
    fill = np.concatenate([fills[0]] + ([gap, fills[1]] if len(fills) == 2 else []), axis=1)
    out = np.concatenate([outs[0]] + ([gap, outs[1]] if len(outs) == 2 else []), axis=1)
    y0, y1 = ink_box(out, 1)
    fill, out = fill[y0:y1], out[y0:y1]
    new_w = max(2, int(fill.shape[1] * style["squeeze"]))
    fill = np.asarray(Image.fromarray(fill).resize((new_w, fill.shape[0]), Image.BILINEAR))
    out = np.asarray(Image.fromarray(out).resize((new_w, out.shape[0]), Image.BILINEAR))
    return fill / 255.0, out / 255.0


def render_name(name, style, width):
    size = int(FONT_SIZE * 0.26)
    font = _font(str(FONT_DIR / style["name_font"]), size) or _font(style["font"], size)
    fill, _ = glyph_masks(name, font, 0, 0)
    x0, x1 = ink_box(fill, 0)
    y0, y1 = ink_box(fill, 1)
    fill = fill[y0:y1, x0:x1]
    w = min(fill.shape[1], int(width * 1.3))   # long names get squeezed to the back width, as on real shirts
    return np.asarray(Image.fromarray(fill).resize((max(2, w), fill.shape[0]), Image.BILINEAR)) / 255.0


def centre_pad(mask, width):
    extra = width - mask.shape[1]
    return np.pad(mask, ((0, 0), (extra // 2, extra - extra // 2)))


def render_print(number, style):
    """The shirt's back print (optional name above the number, optional panel) as a high-res RGBA uint8 array."""
    fill, out = render_digits(number, style)
    h, w = fill.shape
    rows_f, rows_o = [fill], [out]
    if style["name"]:
        name = render_name(style["name"], style, w)
        gap = int(0.12 * h)
        nw = max(w, name.shape[1])
        rows_f = [centre_pad(name, nw), np.zeros((gap, nw)), centre_pad(fill, nw)]
        rows_o = [centre_pad(name, nw), np.zeros((gap, nw)), centre_pad(out, nw)]
    fill, out = np.concatenate(rows_f), np.concatenate(rows_o)
    colour = style["colour"]
    edge = style["outline"] if style["outline"] is not None else colour
    rgb_ = edge[None, None] * (1 - fill[..., None]) + colour[None, None] * fill[..., None]
    alpha = np.maximum(fill, out)
    if style["panel"] is not None:   # plain patch behind the number, as clubs with striped shirts use
        m = int(0.08 * h)
        ink = np.pad(alpha, m)
        rgb_ = np.pad(rgb_, ((m, m), (m, m), (0, 0)))
        rgb_ = rgb_ * ink[..., None] + style["panel"][None, None] * (1 - ink[..., None])
        alpha = np.ones_like(ink)
    arr = np.dstack([rgb_, alpha[..., None] * 255]).round().clip(0, 255).astype(np.uint8)
    return arr, h / arr.shape[0]


COLOUR_KEYS = ("shirt", "second", "shorts", "socks", "boots", "sleeve", "skin", "hair")


def as_tuples(app):
    """Drawing wants int tuples; convert once per player rather than per stroke."""
    return {k: (rgb(v) if k in COLOUR_KEYS else v) for k, v in app.items()}


def sample_sponsor(rng, shirt):
    """A word across the chest, so front views are not simply blank shirts."""
    if rng.random() > 0.6:
        return []
    letters = "ABCDEFGHIKLMNOPRSTUVXYZ"
    word = "".join(letters[i] for i in rng.integers(len(letters), size=int(rng.integers(3, 9))))
    font = _font(str(FONT_DIR / str(rng.choice(NAME_FONTS))), 48) or _font(available_fonts()[0][0], 48)
    fill, _ = glyph_masks(word, font, int(rng.integers(0, 3)), 0)
    y0, y1 = ink_box(fill, 1)
    x0, x1 = ink_box(fill, 0)
    fill = fill[y0:y1, x0:x1] / 255.0
    colour = contrasting(rng, shirt, 0.3)
    arr = np.dstack([np.broadcast_to(colour, fill.shape + (3,)), 255 * fill[..., None]]).round().astype(np.uint8)
    return [dict(arr=arr, facing=math.pi, height=rng.uniform(0.1, 0.2), width=0.75, top=rng.uniform(0.22, 0.35))]


def sample_appearance(rng, number):
    kit = sample_kit(rng)
    app = {**kit, **sample_body(rng)}
    style = sample_print_style(rng, kit)
    arr, num_frac = render_print(number, style)
    # the number gets its sampled height; a name above it adds to that, but the print stays on the back
    back = dict(arr=arr, facing=0.0, height=min(style["height"] / num_frac, 0.88 - style["top"]), width=0.85,
                top=style["top"])
    app["decals"] = [back] + sample_sponsor(rng, kit["shirt"])
    return as_tuples(app)


def sample_other_player(rng, main):
    """Another player in the crop: a team-mate (same kit) or an opponent/referee; never shows a number."""
    mate = rng.random() < 0.3
    kit = sample_kit(rng)
    app = as_tuples({**kit, **sample_body(rng)})
    if mate:
        app.update({k: main[k] for k in ("shirt", "second", "shorts", "socks", "sleeve", "pattern")})
    app["decals"] = sample_sponsor(rng, kit["shirt"])
    return app


# ----------------------------------------------------------------------------------------------------------------
# scene: pitch background (per sequence) and camera (per sub-tracklet)

def sample_scene(rng):
    if rng.random() < 0.9:
        grass = np.array([rng.uniform(40, 100), rng.uniform(85, 150), rng.uniform(30, 80)])
    else:   # worn, artificial or floodlit-dark pitches
        grass = np.array([rng.uniform(70, 130), rng.uniform(90, 130), rng.uniform(40, 90)]) * rng.uniform(0.6, 1.1)
    return dict(grass=grass, stripe_angle=rng.uniform(0, np.pi), stripe_period=rng.uniform(0.6, 3.0),
                stripe_contrast=rng.uniform(0.0, 0.12), texture=rng.uniform(2, 9), grad=rng.uniform(-0.2, 0.2),
                lines=rng.random() < 0.35, boards=rng.random() < 0.15)


def sample_camera(rng):
    fh = int(round(math.exp(rng.uniform(math.log(MIN_H), math.log(MAX_H)))))
    fw = int(np.clip(round(fh * rng.uniform(0.35, 0.7)), MIN_W, MAX_W))
    work = float(np.clip(180 / fh, 1.6, 3.0))   # render at ~180 px tall, then downscale hard
    return dict(
        fw=fw, fh=fh, W=int(round(fw * work)), H=int(round(fh * work)), work=work,
        lowres=1.0 if rng.random() < 0.35 else rng.uniform(0.45, 0.95),
        down=[Image.BOX, Image.BILINEAR, Image.BICUBIC, Image.NEAREST][rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])],
        up=[Image.BILINEAR, Image.BICUBIC, Image.NEAREST][rng.choice(3, p=[0.5, 0.4, 0.1])],
        blur=rng.choice([0.0, 1.0, 2.5, 5.0], p=[0.3, 0.3, 0.25, 0.15]) * work / 2,
        blur_angle=rng.normal(0, 0.4) if rng.random() < 0.7 else rng.uniform(0, np.pi),
        defocus=rng.uniform(0.3, 0.9) if rng.random() < 0.35 else 0.0,
        noise=rng.uniform(0.5, 7), quality=int(rng.integers(30, 96)), subsampling=int(rng.choice([0, 1, 2, 2])),
        sharpen=rng.uniform(40, 160) if rng.random() < 0.3 else 0.0,
        gain=rng.uniform(0.7, 1.25), gamma=rng.uniform(0.8, 1.25), cast=1 + rng.normal(0, 0.05, 3),
        contrast=rng.uniform(0.75, 1.2), saturation=rng.uniform(0.55, 1.15),
        shadow=(rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3), rng.uniform(0.5, 0.8))
        if rng.random() < 0.15 else None,
    )


def smooth_noise(rng, w, h, cells):
    small = rng.normal(0, 1, (cells[1], cells[0])).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.BICUBIC))


def make_background(rng, scene, w, h, ref_h):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a, period = scene["stripe_angle"], scene["stripe_period"] * ref_h
    stripes = np.tanh(3 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period + rng.uniform(0, 6.3)))
    bright = (1 + scene["stripe_contrast"] * stripes) * (1 + scene["grad"] * (yy / h - 0.5))
    bright *= 1 + 0.06 * smooth_noise(rng, w, h, (4, 5))
    img = scene["grass"].astype(np.float32)[None, None] * bright[..., None]
    img += scene["texture"] * rng.standard_normal((h, w, 1), np.float32)   # grass texture
    img += 1.5 * rng.standard_normal((h, w, 3), np.float32)
    if scene["lines"]:
        for _ in range(rng.integers(1, 3)):
            img = draw_line(rng, img, xx, yy, ref_h)
    if scene["boards"]:
        img = draw_boards(rng, img, ref_h)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def draw_line(rng, img, xx, yy, ref_h):
    ang = rng.normal(0, 0.35) if rng.random() < 0.6 else rng.uniform(0, np.pi)
    c = rng.uniform(0, 1) * (xx.shape[1] * abs(np.sin(ang)) + yy.shape[0] * abs(np.cos(ang)))
    d = np.abs(xx * np.sin(ang) - yy * np.cos(ang) + c * np.sign(np.cos(ang) + 1e-6))
    width = rng.uniform(0.008, 0.025) * ref_h
    alpha = np.clip(width / 2 + 0.7 - d, 0, 1)[..., None] * rng.uniform(0.5, 0.9)
    return img * (1 - alpha) + 235 * alpha


def draw_boards(rng, img, ref_h):
    """Advertising boards with crowd above: the top of a crop near the touchline."""
    h, w = img.shape[:2]
    y_board = int(rng.uniform(0.15, 0.45) * h)
    bh = max(2, int(rng.uniform(0.04, 0.1) * ref_h))
    crowd = smooth_noise(rng, w, y_board, (max(2, w // 6), max(2, y_board // 6)))
    tint = rng.uniform(40, 140, 3)
    img[:y_board] = np.clip(tint[None, None] * (1 + 0.5 * crowd[..., None]) + rng.normal(0, 25, (y_board, w, 3)),
                            0, 255)
    x = 0
    while x < w:
        seg = int(rng.uniform(0.3, 1.2) * ref_h)
        col = hsv_colour(rng) if rng.random() < 0.7 else (WHITE if rng.random() < 0.5 else BLACK)
        img[max(0, y_board - bh):y_board, x:x + seg] = col
        txt = contrasting(rng, col, 0.3)
        for tx in range(x + 2, min(w, x + seg) - 2, max(3, int(0.04 * ref_h))):
            if rng.random() < 0.6:   # blocky "lettering"
                img[max(0, y_board - int(0.75 * bh)):max(0, y_board - int(0.25 * bh)), tx:tx + 2] = txt
        x += seg
    return img


# ----------------------------------------------------------------------------------------------------------------
# motion over a sub-tracklet

def yaw_track(rng, n):
    """Body yaw per frame (0 = back to camera). Always passes through a back view so the number is readable
    somewhere, but often turns to side/front where it is hidden."""
    t = np.arange(n, dtype=np.float64)
    walk = np.cumsum(rng.normal(0, np.radians(5), n))
    mode = rng.choice(3, p=[0.45, 0.4, 0.15])
    if mode == 0:       # mostly back
        yaw = rng.normal(0, np.radians(20)) + walk
    elif mode == 1:     # turning away or towards
        end = rng.choice([-1, 1]) * np.radians(rng.uniform(60, 180))
        yaw = np.linspace(rng.normal(0, np.radians(15)), end, n)[::rng.choice([-1, 1])] + walk
    else:               # a brief glimpse of the back
        t0 = rng.integers(n)
        yaw = rng.choice([-1, 1]) * np.radians(rng.uniform(25, 60)) * np.abs(t - t0) + walk - walk[t0]
    return yaw


def sample_frames(rng, n, cam):
    running = rng.random() < 0.6
    fr = dict(
        yaw=yaw_track(rng, n),
        phase=rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(0.3, 1.6) * np.ones(n)),
        leg_amp=rng.uniform(0.35, 0.7) if running else rng.uniform(0.02, 0.2),
        arm_amp=rng.uniform(0.4, 0.9) if running else rng.uniform(0.02, 0.2),
        cx=0.5 + rng.normal(0, 0.04) + np.cumsum(rng.normal(0, 0.012, n)),
        ph=rng.uniform(0.82, 0.97) * (1 + np.cumsum(rng.normal(0, 0.012, n))),
        dy=rng.normal(0, 0.02) + rng.normal(0, 0.01, n),
        lean=rng.normal(0, 3) + rng.normal(0, 1.5, n),
        blur=cam["blur"] * rng.uniform(0.2, 1.4, n) * (rng.random(n) < 0.8),
        light=1 + rng.normal(0, 0.04, n),
        size=1 + rng.normal(0, 0.03, n),
        quality=np.clip(cam["quality"] + rng.integers(-5, 6, n), 30, 95),
        shear=rng.normal(0, 0.06, n), wave=rng.uniform(0, 0.05, n), wave_len=rng.uniform(0.4, 1.2, n),
        wave_phase=rng.uniform(0, 2 * np.pi, n), vscale=rng.uniform(0.9, 1.0, n),
        fold_phase=rng.uniform(0, 2 * np.pi, n),
    )
    fr["spread"] = rng.uniform(0.1, 0.3)
    return fr


def other_player(rng, app, x, front, scale, dy, spin=0.1):
    """Another player at x (per frame, crop widths from the tracked player), drawn in front of him or behind;
    scale and dy (offset of his head, in player heights) are drawn from the given ranges."""
    return dict(app=sample_other_player(rng, app), front=front, x=x, scale=rng.uniform(*scale), dy=rng.uniform(*dy),
                yaw=rng.uniform(0, 2 * np.pi), phase=rng.uniform(0, 6.3), spin=spin)


def sample_others(rng, app, n):
    """Other players: a bigger one in front crossing the crop (occluder) and/or a smaller one behind."""
    others = []
    if rng.random() < 0.25:
        side = rng.choice([-1, 1])
        x = np.linspace(side * rng.uniform(0.45, 0.8), side * rng.uniform(0.2, 0.6) * rng.choice([-1, 1]), n)
        others.append(other_player(rng, app, x, True, (0.95, 1.3), (0.0, 0.15)))
    if rng.random() < 0.3:
        x = rng.uniform(-0.7, 0.7) + np.cumsum(rng.normal(0, 0.02, n))
        others.append(other_player(rng, app, x, False, (0.5, 0.85), (-0.25, -0.05)))
    return others


def occlusion(fr, others, cam):
    """Per frame, how much of the back players in front cover (0 = none)."""
    occ = np.zeros(len(fr["yaw"]))
    for o in others:
        if o["front"]:   # overlap of the occluder's body (~0.12 ph half-width) with the back (~0.1 ph)
            dist = np.abs(o["x"]) * cam["W"] / (fr["ph"] * cam["H"])
            occ = np.maximum(occ, np.clip(1 - dist / (0.12 * o["scale"] + 0.1), 0, 1))
    return occ


def clarity(fr, others, cam):
    """How readable the number is in each frame: back-facing, unoccluded, unblurred."""
    vis = np.clip(np.cos(fr["yaw"]), 0, 1)
    return vis * (1 - occlusion(fr, others, cam)) / (1 + 0.3 * fr["blur"])


def settle_anchor(rng, fr, others, cam, anchored):
    """Rotate the yaw track so the best frame faces away from the camera, then pick it as anchor."""
    best = int(np.argmax(clarity(fr, others, cam)))
    if np.cos(fr["yaw"][best]) < 0.85:
        fr["yaw"] = fr["yaw"] - fr["yaw"][best] + rng.normal(0, np.radians(12))
    fr["blur"][best] = min(fr["blur"][best], 0.5)
    return int(np.argmax(clarity(fr, others, cam))) if anchored else None


# ----------------------------------------------------------------------------------------------------------------
# drawing a player (body frame: l = lateral right, f = forward, y = down from head top; units of player height)

def project(pose, l, f, y):
    y = pose["top"] + y * pose["ph"]
    return lean(pose, pose["cx"] + (l * pose["cos"] + f * pose["sin"]) * pose["ph"], y), y


def lean(pose, x, y):
    """Body lean as a shear about the feet: cheaper than rotating the layer and keeps the feet planted."""
    return x + (pose["top"] + pose["ph"] - y) * pose["lean"]


def limb(root, alpha, beta, length):
    """End of a limb swung by alpha (forward) and splayed by beta (sideways) from root (l, f, y)."""
    l, f, y = root
    return (l + length * math.sin(beta), f + length * math.sin(alpha) * math.cos(beta),
            y + length * math.cos(alpha) * math.cos(beta))


def stroke(draw, pose, a, b, width, colour):
    p0, p1 = project(pose, *a), project(pose, *b)
    w = max(1, int(round(width * pose["ph"])))
    draw.line([p0, p1], fill=colour, width=w)
    r = w / 2
    for p in (p0, p1):
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=colour)


def closeness(pose, l):
    return l * pose["sin"]   # > 0: this side of the body is nearer the camera


def half_width(pose, a, b):
    return math.sqrt((a * pose["cos"]) ** 2 + (b * pose["sin"]) ** 2)


def leg_joints(pose, app, side):
    ph_ = pose["phase"] + (0 if side < 0 else math.pi)
    alpha = pose["leg_amp"] * math.sin(ph_)
    knee_bend = 0.15 + 1.4 * pose["leg_amp"] * max(0.0, -math.sin(ph_ + 0.6))
    hip = (side * 0.05 * app["build"], 0.0, 0.5)
    knee = limb(hip, alpha, side * 0.05, 0.24)
    ankle = limb(knee, alpha - knee_bend, side * 0.02, 0.235)
    return hip, knee, ankle


def draw_leg(draw, pose, app, side):
    hip, knee, ankle = leg_joints(pose, app, side)
    sock_top = tuple(k + 0.3 * (a - k) for k, a in zip(knee, ankle))
    toe = (ankle[0], ankle[1] + 0.05, ankle[2] + 0.012)
    stroke(draw, pose, hip, knee, 0.085, app["skin"])
    stroke(draw, pose, knee, sock_top, 0.064, app["skin"])
    stroke(draw, pose, sock_top, ankle, 0.06, app["socks"])
    stroke(draw, pose, ankle, toe, 0.045, app["boots"])


def draw_shorts(draw, pose, app):
    hw = half_width(pose, 0.095 * app["build"], 0.065)
    y0, y1 = pose["top"] + (app["hem"] - 0.04) * pose["ph"], pose["top"] + 0.535 * pose["ph"]
    cx = pose["cx"]
    pts = [(cx - hw * pose["ph"], y0), (cx + hw * pose["ph"], y0), (cx + hw * 1.1 * pose["ph"], y1),
           (cx - hw * 1.1 * pose["ph"], y1)]
    draw.polygon([(lean(pose, x, y), y) for x, y in pts], fill=app["shorts"])
    for side in (-1, 1):
        hip, knee, _ = leg_joints(pose, app, side)
        stroke(draw, pose, hip, tuple(h + 0.45 * (k - h) for h, k in zip(hip, knee)), 0.1, app["shorts"])


def draw_arm(draw, pose, app, side):
    ph_ = pose["phase"] + (math.pi if side < 0 else 0)
    alpha = -pose["arm_amp"] * math.sin(ph_)
    shoulder = (side * (0.115 * app["build"] + 0.005), 0.0, 0.185)
    elbow = limb(shoulder, alpha, side * pose["spread"], 0.165)
    hand = limb(elbow, alpha + 0.2 + 1.1 * pose["arm_amp"], side * pose["spread"] * 0.5, 0.15)
    sleeve, skin = app["sleeve"], app["skin"]
    stroke(draw, pose, shoulder, elbow, 0.052, skin)
    stroke(draw, pose, elbow, hand, 0.045, sleeve if app["long_sleeves"] else skin)
    cuff = elbow if app["long_sleeves"] else tuple(s + 0.55 * (e - s) for s, e in zip(shoulder, elbow))
    stroke(draw, pose, shoulder, cuff, 0.062, sleeve)
    hx, hy = project(pose, *hand)
    r = 0.022 * pose["ph"]
    draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=skin)


def torso_polygon(pose, app):
    b = app["build"]
    hs, hw = half_width(pose, 0.115 * b, 0.07) * pose["ph"], half_width(pose, 0.095 * b, 0.065) * pose["ph"]
    cx, top, ph = pose["cx"], pose["top"], pose["ph"]
    y_neck, y_sh, y_hem = top + 0.135 * ph, top + 0.155 * ph, top + app["hem"] * ph
    left = [(cx - 0.35 * hs, y_neck), (cx - 0.9 * hs, y_sh), (cx - hs, y_sh + 0.035 * ph),
            (cx - 0.95 * hw, y_hem - 0.12 * ph), (cx - 1.05 * hw, y_hem)]
    return [(lean(pose, x, y), y) for x, y in left + [(2 * cx - x, y) for x, y in reversed(left)]]


def draw_pattern(layer, mask, pose, app):
    """Stripes/hoops/halves painted on the torso, projected through the same yaw as the number."""
    pat = Image.new("L", layer.size, 0)
    d = ImageDraw.Draw(pat)
    b, ph, top = app["build"], pose["ph"], pose["top"]
    y0, y1 = top + 0.13 * ph, top + app["hem"] * ph
    if app["pattern"] == "hoops":
        step = app["hoop_period"] * ph
        for k in range(int((y1 - y0) / step) + 1):
            if k % 2:
                d.rectangle([0, y0 + k * step, layer.size[0], y0 + (k + 1) * step], fill=255)
    else:
        bands = [(0.0, math.pi)] if app["pattern"] == "halves" else [
            (2 * math.pi * k / app["n_stripes"], 2 * math.pi * (k + 0.5) / app["n_stripes"])
            for k in range(app["n_stripes"])]
        for p0, p1 in bands:
            phis = np.linspace(p0, p1, 6)
            vis = np.cos(phis - pose["yaw"]) > 0
            if vis.sum() < 2:
                continue
            phis = phis[vis]
            xt = [pose["cx"] + surface_x(pose, 0.115 * b, 0.07, p) * ph for p in phis]
            xb = [pose["cx"] + surface_x(pose, 0.095 * b, 0.065, p) * ph for p in phis]
            d.polygon([(lean(pose, x, y0), y0) for x in xt] + [(lean(pose, x, y1), y1) for x in reversed(xb)], fill=255)
    layer.paste(app["second"], mask=ImageChops.multiply(pat, mask))


def surface_x(pose, a, b, phi):
    """Image x (body units) of the torso-ellipse point at angle phi from the back centre."""
    return a * math.sin(phi) * pose["cos"] - b * math.cos(phi) * pose["sin"]


def draw_torso(layer, draw, pose, app):
    poly = torso_polygon(pose, app)
    draw.polygon(poly, fill=app["shirt"])
    mask = Image.new("L", layer.size, 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    if app["pattern"] in ("stripes", "hoops", "halves"):
        draw_pattern(layer, mask, pose, app)
    for decal in app["decals"]:
        if math.cos(pose["yaw"] - decal["facing"]) > 0.05:
            paste_decal(layer, mask, pose, app, decal)
    collar = poly[0], poly[-1]
    draw.line(collar, fill=app["second"], width=max(1, int(0.012 * pose["ph"])))


def paste_decal(layer, mask, pose, app, decal):
    """Wrap a print around the torso (an elliptic cylinder seen at the body yaw), add fabric waves and a twist,
    downscale it to canvas size and clip it to the shirt."""
    arr = decal["arr"]
    h, w = arr.shape[:2]
    ph = pose["ph"]
    yaw = pose["yaw"] - decal["facing"]
    torso_h = (app["hem"] - 0.155) * ph
    a, b = 0.105 * app["build"] * ph, 0.068 * ph
    s = min(decal["height"] * torso_h / h, decal["width"] * 2 * a / w)   # canvas px per print px
    phi_max = math.asin(min(0.92, w * s / (2 * a)))
    phis = np.linspace(-phi_max, phi_max, w)
    vis = np.cos(phis - yaw) > 0.08
    if vis.sum() < 3:
        return
    xs = a * np.sin(phis) * math.cos(yaw) - b * np.cos(phis) * math.sin(yaw)
    cols, xv = np.nonzero(vis)[0], np.maximum.accumulate(xs[vis])
    n_out = max(2, int(round((xv[-1] - xv[0]) / s)))
    src = np.interp(np.linspace(xv[0], xv[-1], n_out), xv, cols)
    rows = np.arange(h)[:, None]
    wave = pose["wave"] * h * np.sin(2 * np.pi * np.arange(n_out) / (pose["wave_len"] * n_out) + pose["wave_phase"])
    ri = np.clip(rows + wave[None, :], 0, h - 1).astype(np.int32)
    ci = np.clip(src[None, :] + pose["shear"] * (rows - h / 2), 0, w - 1).astype(np.int32)
    size = (max(1, int(round(n_out * s))), max(1, int(round(h * s * pose["vscale"]))))
    warped = Image.fromarray(arr[ri, ci]).resize(size, Image.BILINEAR)
    y0 = int(round(pose["top"] + 0.155 * ph + decal["top"] * torso_h))
    x0 = int(round(lean(pose, pose["cx"] + xv[0], y0 + size[1] / 2)))
    alpha = ImageChops.multiply(warped.getchannel("A"), mask.crop((x0, y0, x0 + size[0], y0 + size[1])))
    layer.paste(warped.convert("RGB"), (x0, y0), mask=alpha)


def draw_head(draw, pose, app):
    ph = pose["ph"]
    skin, hair = app["skin"], app["hair"]
    stroke(draw, pose, (0, 0, 0.1), (0, 0, 0.16), 0.045, skin)
    cx, cy = project(pose, 0, 0.01, 0.066)
    rx, ry = 0.05 * ph * app["head"], 0.066 * ph
    box = [cx - rx, cy - ry, cx + rx, cy + ry]
    if app["hair_style"] == "long" and pose["cos"] > -0.3:
        draw.polygon([(cx - rx, cy), (cx + rx, cy), (cx + rx * 0.9, cy + 1.5 * ry), (cx - rx * 0.9, cy + 1.5 * ry)],
                     fill=hair)
    draw.ellipse(box, fill=skin)
    big = 1.25 if app["hair_style"] == "big" else 1.0
    hbox = [cx - rx * big, cy - ry * big, cx + rx * big, cy + ry * (0.6 + 0.4 * big)]
    below = 15 + 45 * max(0.0, pose["cos"])   # from behind hair covers most of the head
    draw.chord(hbox, 180 - below, 360 + below, fill=hair)


def draw_player(layer, app, pose):
    draw = ImageDraw.Draw(layer)
    sides = sorted((-1, 1), key=lambda s: closeness(pose, s))
    far_arm = sides[0] if abs(pose["sin"]) > 0.35 else None
    if far_arm is not None:
        draw_arm(draw, pose, app, far_arm)
    for side in sides:
        draw_leg(draw, pose, app, side)
    draw_shorts(draw, pose, app)
    draw_torso(layer, draw, pose, app)
    for side in sides:
        if side != far_arm:
            draw_arm(draw, pose, app, side)
    draw_head(draw, pose, app)


# ----------------------------------------------------------------------------------------------------------------
# one frame

def frame_pose(fr, i, cam):
    # python floats, not numpy scalars: a float64 scalar would silently upcast every float32 image op
    at = {k: float(v[i]) if isinstance(v, np.ndarray) else float(v) for k, v in fr.items()}
    H, ph, yaw = cam["H"], at["ph"] * cam["H"], at["yaw"]
    return dict(at, cx=at["cx"] * cam["W"], top=(H - ph) / 2 + at["dy"] * H, ph=ph, cos=math.cos(yaw),
                sin=math.sin(yaw), lean=math.tan(math.radians(at["lean"])))


def other_pose(o, main, i, cam):
    ph = main["ph"] * o["scale"]
    yaw = o["yaw"] + o["spin"] * i
    return dict(main, cx=main["cx"] + o["x"][i] * cam["W"], top=main["top"] + o["dy"] * main["ph"], ph=ph, lean=0.0,
                yaw=yaw, cos=math.cos(yaw), sin=math.sin(yaw), phase=o["phase"] + 0.8 * i)


def shade(rgb_, pose, folds, fold_phase):
    """In-place multiplicative shading: cylinder falloff around the body axis and light direction everywhere,
    fabric folds only on the band of the frame holding shirt and shorts."""
    H, W = rgb_.shape[:2]
    x = np.clip((np.arange(W, dtype=np.float32) - pose["cx"]) / (0.12 * pose["ph"]), -1.3, 1.3)
    rgb_ *= np.clip((1 - folds["cyl"] * x ** 2 * 0.5) * (1 + folds["light"] * x), 0.35, 1.3)[None, :, None]
    y0 = int(np.clip(pose["top"] + 0.13 * pose["ph"], 0, H))
    y1 = int(np.clip(pose["top"] + 0.62 * pose["ph"], y0, H))
    x0 = int(np.clip(pose["cx"] - 0.3 * pose["ph"], 0, W))
    x1 = int(np.clip(pose["cx"] + 0.3 * pose["ph"], x0, W))
    xs, ys = np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
    band = np.ones((y1 - y0, x1 - x0), np.float32)
    for ang, period, depth, ph0 in folds["waves"]:
        k = 2 * math.pi / (period * pose["ph"])
        u, v = xs * np.float32(k * math.cos(ang)), ys * np.float32(k * math.sin(ang)) + np.float32(ph0 + fold_phase)
        # sin(u + v) = sin u cos v + cos u sin v: two outer products instead of a 2D sin
        crease = np.maximum(0, np.outer(np.cos(v), np.sin(u)) + np.outer(np.sin(v), np.cos(u)))
        band *= 1 - depth * crease * crease * crease
    rgb_[y0:y1, x0:x1] *= band[..., None]


def sample_folds(rng):
    waves = [(rng.normal(np.pi / 2, 0.5) if rng.random() < 0.6 else rng.uniform(0, np.pi),
              rng.uniform(0.05, 0.2), rng.uniform(0.04, 0.2), rng.uniform(0, 6.3)) for _ in range(rng.integers(1, 4))]
    return dict(cyl=rng.uniform(0.1, 0.4), light=rng.uniform(-0.15, 0.15), waves=waves)


def motion_blur(img, length, angle):
    n = int(round(length))
    if n < 2:
        return img
    pad = n
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    acc = np.zeros_like(img)
    H, W = img.shape[:2]
    for k in range(n):
        t = k - (n - 1) / 2
        dy, dx = int(round(t * math.sin(angle))), int(round(t * math.cos(angle)))
        acc += padded[pad + dy:pad + dy + H, pad + dx:pad + dx + W]
    return acc / n


def tone(img, cam, gain):
    """Per-channel tone curve (gamma, contrast, gain, colour cast) as lookup tables on the uint8 image."""
    v = np.arange(256) / 255.0
    v = (v ** cam["gamma"] - 0.45) * cam["contrast"] + 0.45
    u8 = np.clip(img, 0, 255).astype(np.uint8)
    for c in range(3):
        u8[..., c] = np.clip(v * gain * cam["cast"][c] * 255, 0, 255).round().astype(np.uint8)[u8[..., c]]
    return Image.fromarray(u8)


def stadium_shadow(img, cam):
    ang, off, depth = cam["shadow"]
    H, W = img.shape[:2]
    d = (((np.arange(W, dtype=np.float32) / W - 0.5) * math.cos(ang))[None, :]
         + ((np.arange(H, dtype=np.float32) / H - 0.5) * math.sin(ang))[:, None] - off) * 25
    img *= (depth + (1 - depth) / (1 + np.exp(-d)))[..., None]
    return img


def render_frame(app, bg, cam, fr, others, folds, i, rng):
    """One frame: players on the drifting background, shaded, lit, blurred, downscaled, noised. Returns PIL RGB."""
    W, H = cam["W"], cam["H"]
    ox = int(round(fr["bg_x"][i]))
    oy = int(round(fr["bg_y"][i]))
    canvas = bg[oy:oy + H, ox:ox + W]
    pose = frame_pose(fr, i, cam)
    others = [o for o in others if abs(o["x"][i]) < 2]   # long tracklets park absent players off stage
    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    shadow_w, feet = 0.16 * pose["ph"], pose["top"] + 0.99 * pose["ph"]
    ImageDraw.Draw(layer).ellipse([pose["cx"] - shadow_w, feet - 0.025 * pose["ph"], pose["cx"] + shadow_w,
                                   feet + 0.02 * pose["ph"]], fill=(0, 0, 0, 70))
    for o in others:
        if not o["front"]:
            draw_player(layer, o["app"], other_pose(o, pose, i, cam))
    draw_player(layer, app, pose)
    for o in others:
        if o["front"]:
            draw_player(layer, o["app"], other_pose(o, pose, i, cam))
    lay = np.asarray(layer, dtype=np.float32)
    players = lay[..., :3]
    shade(players, pose, folds, pose["fold_phase"])
    img = canvas + (players - canvas) * (lay[..., 3:] * np.float32(1 / 255))
    if cam["shadow"] is not None:
        img = stadium_shadow(img, cam)
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)   # broadcast colour grading varies saturation
    img = grey[..., None] + (img - grey[..., None]) * np.float32(cam["saturation"])
    img = motion_blur(img, fr["blur"][i], cam["blur_angle"] + rng.normal(0, 0.15))
    return degrade(tone(img, cam, fr["light"][i]), cam, fr, i, rng)


def degrade(im, cam, fr, i, rng):
    fw = int(np.clip(round(cam["fw"] * fr["size"][i]), MIN_W, MAX_W))
    fh = int(np.clip(round(cam["fh"] * fr["size"][i]), MIN_H, MAX_H))
    if cam["lowres"] < 1:
        small = (max(8, int(fw * cam["lowres"])), max(16, int(fh * cam["lowres"])))
        im = im.resize(small, cam["down"]).resize((fw, fh), cam["up"])
    else:
        im = im.resize((fw, fh), cam["down"] if cam["down"] != Image.NEAREST else Image.BOX)
    if cam["defocus"] > 0:   # at output resolution: same look as blurring the big canvas, a fraction of the cost
        im = im.filter(ImageFilter.GaussianBlur(cam["defocus"]))
    if cam["sharpen"]:
        im = im.filter(ImageFilter.UnsharpMask(1, int(cam["sharpen"]), 2))
    arr = np.array(im, dtype=np.float32)
    arr += cam["noise"] * (rng.standard_normal((fh, fw, 1), np.float32)
                           + 0.5 * rng.standard_normal((fh, fw, 3), np.float32))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# sub-tracklets, sequences, dataset

def frame_count(rng):
    return int(np.clip(3 + rng.binomial(12, 0.42), 3, 15))


def render_subtracklet(rng, app, scene, n):
    """Returns (frames, anchor index or None, JPEG quality per frame, chroma subsampling). Appearance and pitch
    are shared with the sequence; camera, motion and other players are not."""
    cam = sample_camera(rng)
    fr = sample_frames(rng, n, cam)
    others = sample_others(rng, app, n)
    anchor = settle_anchor(rng, fr, others, cam, rng.random() >= NO_ANCHOR_P)
    frames = list(render_frames(rng, app, scene, cam, fr, others, drift))
    return frames, anchor, [int(q) for q in fr["quality"]], cam["subsampling"]


def drift(rng, n, m):
    """Background offset of a short shot (margin m): a steady pan plus jitter."""
    return m + np.linspace(0, rng.normal(0, m / 2), n) + rng.normal(0, 1, n)


def render_frames(rng, app, scene, cam, fr, others, pan):
    """Yield the frames of one shot. The background is drawn once with margins the camera moves in, offset per
    frame by pan(rng, n, margin); the other inputs come from sample_camera, sample_frames and the others."""
    n = len(fr["yaw"])
    mx, my = int(0.25 * cam["W"]), int(0.12 * cam["H"])
    bg = np.asarray(make_background(rng, scene, cam["W"] + 2 * mx, cam["H"] + 2 * my, cam["H"]), np.float32)
    fr["bg_x"] = np.clip(pan(rng, n, mx), 0, 2 * mx)
    fr["bg_y"] = np.clip(pan(rng, n, my), 0, 2 * my)
    folds = sample_folds(rng)
    for i in range(n):
        yield render_frame(app, bg, cam, fr, others, folds, i, rng)


def render_sequence(job):
    """Worker: render and write one player sequence. job = (out, seed, number, seq_idx, n_sub, player, seq_id)."""
    out, seed, number, seq_idx, n_sub, player, seq_id = job
    rng = np.random.default_rng([seed, number, 1, seq_idx])
    app = sample_appearance(rng, number)
    scene = sample_scene(rng)
    seq_dir = Path(out) / str(number) / f"player_{player}_seq_{seq_id}"
    frame = int(rng.integers(0, 60000))
    n_frames = 0
    for sub in range(n_sub):
        n = frame_count(rng)
        stride = int(rng.choice([1, 2, 4, 8, 8, 12]))
        frames, anchor, quality, subsampling = render_subtracklet(rng, app, scene, n)
        sub_dir = seq_dir / str(sub)
        sub_dir.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(frames):
            name = f"{player}_{frame + i * stride}_{sub}" + ("_anchor" if i == anchor else "") + ".jpg"
            im.save(sub_dir / name, quality=quality[i], subsampling=subsampling)
        frame += n * stride + int(rng.integers(20, 400))
        n_frames += n
    return n_sub, n_frames


def scaled_counts(counts, scale):
    """count -> max(1, round(count * scale)) under the same keys; scale must be > 0."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return {k: max(1, int(round(v * scale))) for k, v in counts.items()}


def partition(count, seed, number):
    """Split a number's sub-tracklets into player sequences of 1-3; prefix-stable across scales."""
    rng = np.random.default_rng([seed, number, 0])
    sizes = []
    while sum(sizes) < count:
        sizes.append(min(int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])), count - sum(sizes)))
    return sizes


def plan(out, counts, seed):
    jobs = [(number, i, n) for number in sorted(counts) for i, n in enumerate(partition(counts[number], seed, number))]
    rng = np.random.default_rng([seed, 1000, 2])   # arbitrary unique ids that say nothing about the number
    players = 100 + rng.choice(20 * len(jobs) + 100, len(jobs), replace=False)
    seqs = 1000 + rng.choice(20 * len(jobs) + 100, len(jobs), replace=False)
    return [(str(out), seed, number, i, n, int(p), int(s)) for (number, i, n), p, s in zip(jobs, players, seqs)]


def check_counts(counts):
    counts = {int(k): int(v) for k, v in counts.items()}
    bad = [k for k in counts if not 0 <= k <= 99]
    if bad:
        raise ValueError(f"jersey numbers must be in 0..99, got {bad}")
    return counts


def params(counts, scale, seed):
    return dict(version=VERSION, seed=int(seed), scale=float(scale),
                counts={str(k): int(v) for k, v in sorted(counts.items())})


def read_complete(out):
    try:
        return json.loads((Path(out) / ".complete").read_text())
    except (OSError, ValueError):
        return None


def is_number_dir(p):
    return p.is_dir() and p.name.isdigit()


def is_split_dir(p):
    return p.is_dir() and p.name in LONG_COUNTS


def looks_like_synth(out, ours=is_number_dir):
    """A finished dataset of either mode, or a folder holding nothing but what `ours` accepts (a partial run)."""
    out = Path(out)
    if (out / ".complete").exists():
        return True
    return all(ours(p) for p in out.iterdir())


def fresh_dir(out, ours):
    """Empty `out` for a new dataset: an existing one is deleted only if it looks like a synthetic dataset, so a
    mistyped --out never wipes someone's folder."""
    if out.exists():
        if not out.is_dir() or not looks_like_synth(out, ours):
            raise RuntimeError(f"{out} exists and does not look like a synthetic dataset; not deleting it")
        shutil.rmtree(out)
    out.mkdir(parents=True)


def write_complete(out, meta):
    """Written last: its presence means every file before it is in place."""
    (out / ".complete").write_text(json.dumps(meta, indent=1))


def reusable(out, wanted, desc):
    """True if out's .complete matches every item of `wanted`; says which way it goes either way."""
    meta = read_complete(out)
    if meta is not None and all(meta.get(k) == v for k, v in wanted.items()):
        print(f"Using cached synthetic data at {out} {desc}")
        return True
    print(f"Generating synthetic data at {out} {desc}; this happens once")
    return False


def run_jobs(worker, jobs, workers, chunksize=4):
    """Yield worker(job) per finished job, in any order; one worker runs in-process, which is easier to debug."""
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1:
        yield from map(worker, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap_unordered(worker, jobs, chunksize=chunksize)


def generate(out, counts=None, scale=1.0, seed=0, workers=None, progress=True):
    """Write the dataset (counts default DEFAULT_COUNTS, scaled by `scale`) into `out`; writes .complete last.
    An existing `out` is deleted first, but only if it looks like a synthetic dataset."""
    out = Path(out)
    base = check_counts(DEFAULT_COUNTS if counts is None else counts)
    todo = scaled_counts(base, scale)
    fresh_dir(out, is_number_dir)
    jobs = plan(out, todo, seed)
    total_sub, total_frames = 0, 0
    with tqdm(total=sum(todo.values()), desc="synth", unit="tracklet", disable=not progress) as bar:
        for n_sub, n_frames in run_jobs(render_sequence, jobs, workers):
            total_sub += n_sub
            total_frames += n_frames
            bar.update(n_sub)
    write_complete(out, dict(params(base, scale, seed), scaled_counts={str(k): v for k, v in sorted(todo.items())},
                             n_sequences=len(jobs), n_subtracklets=total_sub, n_frames=total_frames))
    return out


def ensure_dataset(out, counts=None, scale=1.0, seed=0, workers=None):
    """Reuse `out` if its .complete matches (counts, scale, seed, version); else generate it."""
    out = Path(out)
    base = check_counts(DEFAULT_COUNTS if counts is None else counts)
    n = sum(scaled_counts(base, scale).values())
    if reusable(out, params(base, scale, seed), f"(scale {scale:g}, seed {seed}, {n} tracklets)"):
        return out
    return generate(out, base, scale, seed, workers)


# ----------------------------------------------------------------------------------------------------------------
# long tracklets (SoccerNet layout): one player in one shot, 30-400 frames

def ar1(rng, n, step, sd):
    """Mean-reverting random walk (per-frame step `step`, spread `sd`): jitter that, unlike a cumulative sum,
    stays bounded over hundreds of frames."""
    rho = math.sqrt(max(0.0, 1 - (step / sd) ** 2))
    noise = rng.normal(0, step, n)
    x, prev = np.empty(n), rng.normal(0, sd)
    for t in range(n):
        prev = rho * prev + noise[t]
        x[t] = prev
    return x


def wander(rng, n, m):
    """Background offset of a long shot (margin m): a steady pan would run out of margin, so it wanders."""
    return m + ar1(rng, n, m / 15, m / 2)


def smooth(x, w):
    """Moving average over w frames, edges held: a turn takes w frames instead of one."""
    return np.convolve(np.pad(x, (w // 2, w - 1 - w // 2), mode="edge"), np.ones(w) / w, mode="valid")


def runs(mask):
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], np.asarray(mask, int), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist()))


def long_length(rng):
    """Log-uniform: many short tracklets, some long, as a tracker's output."""
    return int(round(math.exp(rng.uniform(math.log(MIN_LONG), math.log(MAX_LONG)))))


def long_frames(rng, n, cam):
    """sample_frames for a long shot; its cumulative walks of position and size would leave the crop over hundreds
    of frames, so they become mean-reverting (a detector keeps the player centred)."""
    fr = sample_frames(rng, n, cam)
    fr["cx"] = 0.5 + rng.normal(0, 0.04) + ar1(rng, n, 0.012, 0.03)
    fr["ph"] = np.clip(rng.uniform(0.82, 0.97) * (1 + ar1(rng, n, 0.012, 0.04)), 0.7, 1.0)
    return fr


def spread(rng, total, parts, minimum):
    """`parts` random integers >= minimum summing to total (total >= parts * minimum)."""
    return minimum + rng.multinomial(total - parts * minimum, rng.dirichlet(np.ones(parts)))


def back_windows(rng, n, share, min_len, min_gap):
    """Disjoint [start, end) windows with the back to the camera: about share * n frames in all, split into a few
    turns at random places, at least min_gap frames apart."""
    total = min(n - 1, max(min_len, int(round(share * n))))
    k = int(np.clip(1 + rng.poisson(n / 150), 1, max(1, total // min_len)))
    k = max(1, min(k, (n - total) // min_gap + 1))
    lengths = spread(rng, total, k, min_len)
    gaps = spread(rng, n - total - (k - 1) * min_gap, k + 1, 0) + np.array([0] + [min_gap] * (k - 1) + [0])
    starts = gaps[0] + np.concatenate([[0], np.cumsum(lengths + gaps[1:])[:-1]])
    return [(int(a), int(a + d)) for a, d in zip(starts, lengths)]


def hold_angle(rng, front_only):
    """Degrees away from the back: three-quarter (number foreshortened and cut), side-on or facing the camera.
    front_only keeps past 105, where the print is never drawn (paste_decal needs cos(yaw) > 0.05)."""
    if front_only:
        return rng.uniform(105, 255)
    return rng.uniform(*[(50, 68), (70, 110), (110, 250)][rng.choice(3, p=[0.15, 0.45, 0.4])])


def turned_holds(rng, n, front_only):
    """Yaw targets for n frames turned away: holds of 10-80 frames, all on one side, so going from one to the next
    never swings through the back (the unwrapped angle keeps its sign)."""
    sign = rng.choice([-1, 1])
    out = np.empty(n)
    t = 0
    while t < n:
        d = int(rng.integers(10, 81))
        out[t:t + d] = sign * np.radians(hold_angle(rng, front_only))
        t += d
    return out


def long_yaw(rng, n, share, front_only):
    """Body yaw per frame (0 = back to camera) and the back windows. A back window is at least 3 frames longer
    than a turn, so its core sits at the hold (within 20 deg, plus jitter within 10)."""
    turn = int(rng.integers(3, 8))
    windows = back_windows(rng, n, share, turn + 3, 2 * turn) if share > 0 else []
    target = np.zeros(n)
    edges = [0] + [t for w in windows for t in w] + [n]
    for a, b in zip(edges[::2], edges[1::2]):
        if b > a:
            target[a:b] = turned_holds(rng, b - a, front_only)
    for a, b in windows:
        target[a:b] = np.radians(np.clip(rng.normal(0, 10), -20, 20))
    jitter = np.clip(ar1(rng, n, np.radians(2), np.radians(4)), -np.radians(10), np.radians(10))
    return smooth(target, turn) + jitter, windows


def back_share(rng, cause):
    """Share of frames in back windows. Numbered: turns and events leave 10-40% legible. Smeared: brief glimpses."""
    if cause is None:
        return rng.uniform(0.12, 0.42)
    return {"front": 0.0, "covered": rng.uniform(0.1, 0.3), "smeared": rng.uniform(0.04, 0.12)}[cause]


def place(rng, n, length, avoid):
    """Start of a `length`-frame event clear of the frame range `avoid` (None: anywhere), or None if none found."""
    for _ in range(5):
        a = int(rng.integers(0, max(1, n - length + 1)))
        if avoid is None or a + length <= avoid[0] or a >= avoid[1]:
            return a
    return None


def crossing(rng, app, n, a, b):
    """A player passing in front during [a, b): in from one edge, past the middle (covering the back there), out by
    either edge."""
    x = np.full(n, OFFSTAGE)
    path = [rng.choice([-1, 1]) * rng.uniform(0.9, 1.3), rng.uniform(-0.5, 0.5),
            rng.choice([-1, 1]) * rng.uniform(0.9, 1.3)]
    x[a:b] = np.interp(np.linspace(0, 1, b - a), [0, rng.uniform(0.3, 0.7), 1], path)
    return other_player(rng, app, x, True, (0.95, 1.3), (0.0, 0.15))


def passer_by(rng, app, n, a, b):
    """A smaller, further player behind the tracked one during [a, b)."""
    x = np.full(n, OFFSTAGE)
    x[a:b] = np.clip(rng.uniform(-0.7, 0.7) + ar1(rng, b - a, 0.02, 0.3), -1.2, 1.2)
    return other_player(rng, app, x, False, (0.5, 0.85), (-0.25, -0.05))


def cover(rng, app, cam, fr, a, b, step=4):
    """A bigger player standing square in front of the back during [a, b), stepping in and out around it. Scale
    1.3-1.4, build >= 1.1 and head 7-11% of a player height higher: his torso is wider than the tracked player's
    and spans it from above the print to below the hem; he follows the tracked torso's lean, so no pixel of the
    number shows."""
    n = len(fr["yaw"])
    x = np.full(n, OFFSTAGE)
    side = rng.choice([-1, 1])
    t = np.arange(max(0, a - step), min(n, b + step))
    x[t] = np.interp(t, [a - step, a, b - 1, b - 1 + step], [side * 1.2, 0, 0, -side * 1.2])
    # lean() shears the tracked player about his feet; the print sits ~0.7 player heights above them
    x[t] += 0.7 * fr["ph"][t] * cam["H"] * np.tan(np.radians(fr["lean"][t])) / cam["W"]
    o = other_player(rng, app, x, True, (1.3, 1.4), (-0.11, -0.07), spin=0.0)
    o["yaw"] = np.pi * rng.integers(2) + rng.normal(0, 0.1)   # square on: his widest
    o["app"]["build"] = rng.uniform(1.1, 1.15)
    return o


def pan_blur(n, a, b, peak, ramp=2):
    """Motion blur per frame of a fast camera pan: `peak` over [a, b), ramping up and down `ramp` frames around."""
    t = np.arange(n)
    return peak * np.clip(np.minimum(t - a + ramp + 1, b + ramp - t) / (ramp + 1), 0, 1)


def add_events(rng, app, n, cam, fr, others, keep_clear):
    """Players crossing in front, players passing behind and camera pans at random times; crossings and pans stay
    off the frame range keep_clear (None: anywhere) so a numbered tracklet keeps one clean look at its back."""
    for _ in range(rng.poisson(n / 90)):
        d = int(rng.integers(10, 61))
        a = place(rng, n, d, keep_clear)
        if a is not None:
            others.append(crossing(rng, app, n, a, min(n, a + d)))
    for _ in range(rng.poisson(n / 150)):
        d = int(rng.integers(20, 151))
        a = place(rng, n, d, None)
        others.append(passer_by(rng, app, n, a, min(n, a + d)))
    for _ in range(rng.poisson(n / 120)):
        d = int(rng.integers(3, 21))
        a = place(rng, n, d + 4, keep_clear)   # + the ramps
        if a is not None:
            fr["blur"] = np.maximum(fr["blur"], pan_blur(n, a + 2, a + 2 + d, rng.uniform(*PAN_BLUR) * cam["H"]))


def hide_number(rng, app, n, cam, fr, others, cause):
    """Make every frame that shows any of the back unreadable: a player standing in front of it ("covered") or a
    pan smearing it ("smeared"). cos(yaw) > 0 (the print needs > 0.05), widened by two frames either side."""
    exposed = np.convolve(np.cos(fr["yaw"]) > 0, np.ones(5), mode="same") > 0
    for a, b in runs(exposed):
        if cause == "covered":
            others.append(cover(rng, app, cam, fr, a, b))
        else:
            fr["blur"] = np.maximum(fr["blur"], pan_blur(n, a, b, rng.uniform(*SMEAR_BLUR) * cam["H"]))


def legible_frames(fr, others, cam):
    """Readable by construction: back within 35 deg of the camera, no player in front of it, no pan blur."""
    return ((np.cos(fr["yaw"]) >= BACK_COS) & (occlusion(fr, others, cam) == 0)
            & (fr["blur"] <= SHARP_BLUR * cam["H"]))


def long_shot(rng, label, pool):
    """Everything about one long tracklet but its pixels. A -1 player wears a number from `pool` that never shows,
    for one of NOT_VISIBLE_CAUSES; a numbered one shows it in at least one clean back window."""
    n = long_length(rng)
    app = sample_appearance(rng, label if label >= 0 else int(rng.choice(pool)))
    scene, cam = sample_scene(rng), sample_camera(rng)
    fr = long_frames(rng, n, cam)
    causes = list(NOT_VISIBLE_CAUSES)
    cause = None if label >= 0 else causes[rng.choice(len(causes), p=list(NOT_VISIBLE_CAUSES.values()))]
    fr["yaw"], windows = long_yaw(rng, n, back_share(rng, cause), front_only=cause == "front")
    others = []
    add_events(rng, app, n, cam, fr, others, max(windows, key=lambda w: w[1] - w[0]) if cause is None else None)
    if cause is not None:
        hide_number(rng, app, n, cam, fr, others, cause)
    legible = legible_frames(fr, others, cam)
    assert legible.any() == (label >= 0), (label, cause)
    return app, scene, cam, fr, others, legible


def render_long(job):
    """Worker: render and write one long tracklet. job = (out, seed, split, index, label).
    Returns (split, index, label, legible flag per frame)."""
    out, seed, split, idx, label = job
    rng = np.random.default_rng([seed, 2000 + list(LONG_COUNTS).index(split), idx])
    pool = HARD_TRAIN + HARD_TEST if HELD_OUT_SHARE[split] else HARD_TRAIN
    app, scene, cam, fr, others, legible = long_shot(rng, label, pool)
    folder = Path(out) / split / "images" / str(idx)
    folder.mkdir(parents=True)
    for i, im in enumerate(render_frames(rng, app, scene, cam, fr, others, wander)):
        im.save(folder / f"{i + 1:04d}.jpg", quality=int(fr["quality"][i]), subsampling=cam["subsampling"])
    return split, idx, label, legible.astype(int).tolist()


def cycled(rng, pool, k):
    """k numbers from whole shuffled passes over pool: every number gets its share, give or take one."""
    passes = [rng.permutation(pool) for _ in range(-(-k // len(pool)))]
    return np.concatenate(passes)[:k] if passes else np.zeros(0, int)


def long_labels(split, count, seed, not_visible):
    """Labels of a split's tracklets in index order: round(not_visible * count) -1s, the rest cycling through
    HARD_TRAIN and (HELD_OUT_SHARE of them) HARD_TEST, at random places."""
    rng = np.random.default_rng([seed, 2100 + list(LONG_COUNTS).index(split)])
    hidden = int(round(not_visible * count))
    held = int(round(HELD_OUT_SHARE[split] * (count - hidden)))
    labels = np.concatenate([np.full(hidden, -1), cycled(rng, HARD_TEST, held),
                             cycled(rng, HARD_TRAIN, count - hidden - held)])
    return [int(v) for v in rng.permutation(labels)]


def long_params(scale, seed, not_visible):
    return dict(version=VERSION, mode="long", seed=int(seed), scale=float(scale), not_visible=float(not_visible),
                counts=dict(LONG_COUNTS))


def write_split(root, split, tracklets):
    """<split>_gt.json and the <split>_legible.json sidecar, ids in numeric order. tracklets: id -> (label, flags)."""
    ids = sorted(tracklets, key=int)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}_gt.json").write_text(json.dumps({t: tracklets[t][0] for t in ids}))
    (root / f"{split}_legible.json").write_text(json.dumps({t: tracklets[t][1] for t in ids}))


def long_stats(done):
    """For .complete: frames, -1 tracklets, and the mean share of legible frames over numbered tracklets."""
    tracks = [t for split in done.values() for t in split.values()]
    shares = [np.mean(flags) for label, flags in tracks if label >= 0]
    return dict(n_tracklets=len(tracks), n_frames=sum(len(flags) for _, flags in tracks),
                n_not_visible=sum(label < 0 for label, _ in tracks),
                legible_share=round(float(np.mean(shares)), 4) if shares else 0.0)


def generate_long(out, scale=1.0, seed=0, workers=None, progress=True, not_visible=NOT_VISIBLE_SHARE):
    """Write the long-tracklet dataset (SoccerNet layout, LONG_COUNTS scaled by `scale`, a `not_visible` share of
    -1 tracklets) into `out`; writes .complete last. An existing `out` is deleted first, but only if it looks like
    a synthetic dataset."""
    if not 0 <= not_visible <= 1:
        raise ValueError(f"not_visible must be in [0, 1], got {not_visible}")
    out = Path(out)
    counts = scaled_counts(LONG_COUNTS, scale)
    fresh_dir(out, is_split_dir)
    jobs = [(str(out), int(seed), split, i, label) for split, count in counts.items()
            for i, label in enumerate(long_labels(split, count, seed, not_visible))]
    done = {split: {} for split in counts}
    with tqdm(total=len(jobs), desc="synth long", unit="tracklet", disable=not progress) as bar:
        for split, i, label, flags in run_jobs(render_long, jobs, workers, chunksize=1):
            done[split][str(i)] = (label, flags)
            bar.update()
    for split, tracklets in done.items():
        write_split(out / split, split, tracklets)
    write_complete(out, dict(long_params(scale, seed, not_visible), scaled_counts=counts, **long_stats(done)))
    return out


def ensure_long_dataset(out, scale=1.0, seed=0, workers=None, not_visible=NOT_VISIBLE_SHARE):
    """Reuse `out` if its .complete matches (mode, scale, seed, not_visible, version); else generate it."""
    out = Path(out)
    n = sum(scaled_counts(LONG_COUNTS, scale).values())
    desc = f"(long tracklets, scale {scale:g}, seed {seed}, {n} tracklets)"
    if reusable(out, long_params(scale, seed, not_visible), desc):
        return out
    return generate_long(out, scale, seed, workers, not_visible=not_visible)


# ----------------------------------------------------------------------------------------------------------------
# contact sheet

def frame_key(p):
    parts = p.stem.split("_")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def contact_sheet(root, out_png, numbers=None, per_number=2, frames=6):
    """Grid of frames, one row per sub-tracklet, labelled with its number; anchors get a yellow underline."""
    root = Path(root)
    found = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    numbers = [n for n in (numbers or found) if n in found]
    rows = []
    for n in numbers:
        subs = [d for seq in (root / str(n)).iterdir() if seq.is_dir() for d in seq.iterdir() if d.is_dir()]
        subs.sort(key=lambda d: (int(d.name), d.parent.name))   # first sub-tracklets of different players first
        for sub in subs[:per_number]:
            files = sorted(sub.glob("*.jpg"), key=frame_key)[:frames]
            rows.append((n, files, ["_anchor" in f.name for f in files]))
    return draw_sheet(rows, out_png, frames, (240, 200, 0))


def long_contact_sheet(root, out_png, split="train", tracklets=12, frames=8):
    """Evenly spaced frames of a split's first tracklets, one row each, labelled with the number (-1: never
    visible); frames legible by construction get a green underline."""
    root = Path(root) / split
    gt = json.loads((root / f"{split}_gt.json").read_text())
    legible = json.loads((root / f"{split}_legible.json").read_text())
    rows = []
    for tid in list(gt)[:tracklets]:
        files = sorted((root / "images" / tid).glob("*.jpg"))
        picks = np.linspace(0, len(files) - 1, min(frames, len(files))).round().astype(int)
        rows.append((gt[tid], [files[i] for i in picks], [bool(legible[tid][i]) for i in picks]))
    return draw_sheet(rows, out_png, frames, (40, 200, 60))


def draw_sheet(rows, out_png, frames, mark_colour):
    """rows: (label, frame files, whether to underline each) -> PNG grid of 2x-enlarged frames."""
    out_png = Path(out_png)
    cell_w, cell_h, label_w, pad = 2 * MAX_W, 2 * MAX_H, 60, 6
    sheet = Image.new("RGB", (label_w + frames * (cell_w + pad), max(1, len(rows)) * (cell_h + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(str(FONT_DIR / "DejaVuSans-Bold.ttf"), 28) or ImageFont.load_default()
    for r, (n, files, marks) in enumerate(rows):
        y = r * (cell_h + pad)
        draw.text((6, y + cell_h // 2 - 14), str(n), fill=(0, 0, 0), font=font)
        for c, (f, mark) in enumerate(zip(files, marks)):
            im = Image.open(f).convert("RGB")
            im = im.resize((im.width * 2, im.height * 2), Image.NEAREST)   # 2x nearest: shows the real pixels
            x = label_w + c * (cell_w + pad)
            sheet.paste(im, (x, y + cell_h - im.height))
            if mark:
                draw.rectangle([x, y + cell_h - 3, x + im.width, y + cell_h + 2], fill=mark_colour)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png


# ----------------------------------------------------------------------------------------------------------------
# CLI

def parse_numbers(parser, text):
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--numbers must be comma-separated integers in 0..99, got '{text}'")
    bad = [n for n in numbers if not 0 <= n <= 99]
    if not numbers or bad:
        parser.error(f"--numbers must be integers in 0..99, got {bad or text!r}")
    return numbers


def main(argv=None):
    parser = argparse.ArgumentParser(description="Generate synthetic jersey-number tracklets (reused if cached).")
    parser.add_argument("--long", action="store_true",
                        help="long tracklets in SoccerNet's layout (OUT/train, OUT/test) instead of short ones")
    parser.add_argument("--out", default=None, help="default: data/synthetic, or data/synthetic_long with --long")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the sub-tracklet or tracklet counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--numbers", default=None, help="comma-separated, e.g. 4,6,48 (default: all default numbers)")
    parser.add_argument("--count", type=int, default=None, help="sub-tracklets per number, replaces the default counts")
    parser.add_argument("--not_visible", type=float, default=NOT_VISIBLE_SHARE,
                        help="with --long: share of tracklets whose number never shows (label -1)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--sheet", default=None, help="contact sheet written afterwards "
                        "(default: results/synth_samples.png, or results/synth_long_samples.png with --long)")
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        parser.error("--scale must be > 0")
    if args.long:
        run_long(parser, args)
    else:
        run_short(parser, args)


def run_long(parser, args):
    if args.numbers is not None or args.count is not None:
        parser.error("--numbers and --count apply to short tracklets only; --long uses HARD_TRAIN/HARD_TEST")
    if not 0 <= args.not_visible <= 1:
        parser.error("--not_visible must be in [0, 1]")
    out = args.out or "data/synthetic_long"
    if args.force:
        generate_long(out, args.scale, args.seed, args.workers, not_visible=args.not_visible)
    else:
        ensure_long_dataset(out, args.scale, args.seed, args.workers, not_visible=args.not_visible)
    print(f"Contact sheet: {long_contact_sheet(out, args.sheet or 'results/synth_long_samples.png')}")


def run_short(parser, args):
    if args.count is not None and args.count < 1:
        parser.error("--count must be >= 1")
    numbers = parse_numbers(parser, args.numbers) if args.numbers else sorted(DEFAULT_COUNTS)
    if args.count is not None:
        counts = {n: args.count for n in numbers}
    else:
        counts = {n: DEFAULT_COUNTS.get(n, 100) for n in numbers}
    out = args.out or "data/synthetic"
    if args.force:
        generate(out, counts, args.scale, args.seed, args.workers)
    else:
        ensure_dataset(out, counts, args.scale, args.seed, args.workers)
    print(f"Contact sheet: {contact_sheet(out, args.sheet or 'results/synth_samples.png')}")


if __name__ == "__main__":
    main()
