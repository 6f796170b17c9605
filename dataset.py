"""Hierarchical tracklet dataset: DATA_ROOT/<number>/<player sequence>/<sub-tracklet>/*.jpg.
The SoccerNet jersey-number layout is read too: DATA_ROOT is then one split folder holding images/<tracklet_id>/
and <split>_gt.json (see crawl_soccernet).

Every frame is decoded, sharpened and resized once (the SPEC recipe) into a uint8 array that is cached
on disk; augmentation then runs on whole batches of tensors (see `augment`). __getitem__ only picks
frame indices, so an epoch costs no image decoding.
"""
import atexit
import glob
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFile, ImageFilter
from torch.utils.data import Dataset
from tqdm import tqdm

import ocr
import synth
from config import (BAND_HEIGHT, EMPTY, FULL_FRAME, IMAGENET_MEAN, IMAGENET_STD, IMG_EXTS, LINE_HEIGHT, ConfigError,
                    is_soccernet)

log = logging.getLogger("jersey")
# the text line frame_legibility reads: the crop's middle band, where back numbers sit (a third of the cost of all
# three bands, and fewer spurious reads on shirts with no number); no sharpening, as the recognizer was trained
LEGIBILITY_VIEWS = {"line_width": 80, "bands": 1, "band_height": BAND_HEIGHT, "sharpen": 1.0}
MEAN, STD = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a counted skip, not a half-grey frame
NOT_VISIBLE = -1    # SoccerNet label: the number cannot be read in this tracklet
MAX_TRACKLET_FRAMES = 32  # long real tracklets (SoccerNet: hundreds of frames) keep this many, evenly spaced


def decompose(n):
    """Works on ints and on tensors: N < 10 -> (EMPTY, N), else (N // 10, N % 10)."""
    if isinstance(n, torch.Tensor):
        return torch.where(n < 10, torch.full_like(n, EMPTY), n // 10), n % 10
    return (EMPTY, n) if n < 10 else (n // 10, n % 10)


def reconstruct(tens, units):
    """Works on ints and on tensors: tens == EMPTY -> units, else 10 * tens + units."""
    if isinstance(tens, torch.Tensor):
        return torch.where(tens == EMPTY, units, 10 * tens + units)
    return units if tens == EMPTY else 10 * tens + units


@dataclass
class Sample:
    path: str            # the sub-tracklet folder
    number: int
    frames: list[str]    # sorted frame paths
    anchor: int | None   # index into frames of the '_anchor' frame
    group: str           # player sequence, so splits never put one player on both sides


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _number_of(name: str) -> int | None:
    return int(name) if re.fullmatch(r"0|[1-9]\d?", name) else None


def crawl(root: str, numbers=None) -> tuple[list[Sample], Counter]:
    """All sub-tracklets below root whose number is in `numbers` (all if None), plus skip counts."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data root {root!r} does not exist")
    if is_soccernet(root):
        return crawl_soccernet(root, numbers)
    wanted = None if numbers is None else set(numbers)
    samples, skipped = [], Counter()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_symlink() and not entry.name.startswith("."):
            skipped["symlinked folder not followed"] += 1  # a link may loop back; counted, never walked
            continue
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue
        n = _number_of(entry.name)
        if n is None:
            skipped["folder name not a number 0..99"] += 1
            log.warning("skipping folder %s: name is not a jersey number 0..99", entry.path)
            continue
        if wanted is None or n in wanted:
            samples += _crawl_number(entry.path, n, skipped)
    return samples, skipped


def _crawl_number(folder: str, n: int, skipped: Counter) -> list[Sample]:
    out = []
    # followlinks=False: a symlink loop in user data must not hang the crawl
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort(key=_natural_key)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        if links:  # os.walk lists links to folders but never enters them: count them so nothing vanishes silently
            skipped["symlinked folder not followed"] += len(links)
            dirnames[:] = [d for d in dirnames if d not in links]
        imgs = sorted((f for f in filenames if f.lower().endswith(IMG_EXTS)), key=_natural_key)
        if dirpath == folder:
            continue
        if not imgs:
            if not dirnames:
                skipped["empty sub-tracklet folder"] += 1
            continue
        frames = [os.path.join(dirpath, f) for f in imgs]
        anchors = [i for i, f in enumerate(imgs) if "_anchor" in f.lower()]
        group = os.path.relpath(dirpath, folder).split(os.sep)[0]
        out.append(Sample(dirpath, n, frames, anchors[0] if anchors else None, f"{n}/{group}"))
    return out


def soccernet_labels(root: str) -> dict:
    """tracklet id -> label from <split>_gt.json (the one named after the folder if there are several)."""
    found = sorted(glob.glob(os.path.join(glob.escape(root), "*_gt.json")))
    named = os.path.join(root, f"{os.path.basename(os.path.normpath(root))}_gt.json")
    if len(found) > 1 and named not in found:
        raise ValueError(f"{root!r} holds several *_gt.json files {[os.path.basename(f) for f in found]}; "
                         f"expected one named {os.path.basename(named)}")
    path = named if named in found else found[0]
    try:
        with open(path) as f:
            gt = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path!r} could not be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(gt, dict):
        raise ValueError(f"{path!r} must map tracklet id -> number, got a {type(gt).__name__}")
    return {str(k): v for k, v in gt.items()}


def soccernet_number(v) -> int | None:
    """Labels are ints (maybe written as strings); -1 = not visible; anything else outside 0..99 is bad."""
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    elif isinstance(v, str) and re.fullmatch(r"-1|0|[1-9]\d?", v.strip()):
        n = int(v)
    else:
        return None
    return n if n == NOT_VISIBLE or 0 <= n <= 99 else None


def crawl_soccernet(root: str, numbers=None) -> tuple[list[Sample], Counter]:
    """SoccerNet jersey-number layout; root is one split folder (e.g. jersey-2023/train), so --data_root picks
    the split. One tracklet = one sample and its own group. Not-visible (-1) tracklets are returned only when
    -1 is in `numbers` (or numbers is None); otherwise they are counted, so digit training never sees them but
    the log and results JSON report how many there were. Long tracklets keep MAX_TRACKLET_FRAMES frames."""
    labels = soccernet_labels(root)
    wanted = None if numbers is None else set(numbers)
    samples, skipped, trimmed = [], Counter(), 0
    folders = {}
    for entry in os.scandir(os.path.join(root, "images")):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            skipped["symlinked folder not followed"] += 1
        elif entry.is_dir(follow_symlinks=False):
            folders[entry.name] = entry.path
    for tid in sorted(folders, key=_natural_key):
        if tid not in labels:
            skipped["tracklet folder without a label in gt.json"] += 1
            continue
        n = soccernet_number(labels[tid])
        if n is None:
            skipped["label not a number 0..99 or -1"] += 1
            continue
        if n == NOT_VISIBLE and wanted is not None and NOT_VISIBLE not in wanted:
            skipped["number not visible (-1)"] += 1
            continue
        if wanted is not None and n not in wanted:
            continue
        imgs = sorted((e.name for e in os.scandir(folders[tid]) if e.name.lower().endswith(IMG_EXTS)
                       and e.is_file()), key=_natural_key)
        if not imgs:
            skipped["empty tracklet folder"] += 1
            continue
        trimmed += len(imgs) > MAX_TRACKLET_FRAMES
        frames = evenly_spaced([os.path.join(folders[tid], f) for f in imgs], MAX_TRACKLET_FRAMES)
        samples.append(Sample(folders[tid], n, frames, None, f"soccernet/{tid}"))
    missing = [t for t, v in labels.items() if t not in folders and (wanted is None or soccernet_number(v) in wanted)]
    if missing:
        skipped["labelled tracklet with no image folder"] += len(missing)
    if trimmed:
        log.info("SoccerNet layout: %d long tracklets use %d evenly spaced frames each", trimmed, MAX_TRACKLET_FRAMES)
    return samples, skipped


def evenly_spaced(items: list, k: int) -> list:
    """At most k items, evenly spaced, first and last kept."""
    if len(items) <= k:
        return list(items)
    return [items[int(round(j))] for j in np.linspace(0, len(items) - 1, k)]


def select_frames(n_frames: int, anchor: int | None, seq_len: int, strategy: str, rng: np.random.Generator,
                  pad: bool = True, scores=None, explore: bool = False) -> list[int]:
    """Anchor first (if any), the rest from the non-anchor frames; pad by repeating the last frame.
    'legible' takes the frames with the highest `scores` (one per frame), in time order; with `explore`
    (training) a random choice among the twice as many most legible ones, so an epoch does not always show the
    same frames. Where no frame scores above 0 it falls back to evenly spaced frames."""
    first = [] if anchor is None else [anchor]
    others = [i for i in range(n_frames) if i != anchor]
    need = seq_len - len(first)
    if need <= 0:
        return first[:seq_len]
    if strategy == "legible" and scores is not None and len(others) > need and max(scores[i] for i in others) > 0:
        ranked = sorted(others, key=lambda i: -scores[i])  # stable: ties keep time order
        pool = ranked[:2 * need] if explore else ranked[:need]
        picked = sorted(rng.choice(pool, need, replace=False).tolist() if explore else pool)
    elif len(others) <= need:
        picked = others
    elif strategy in ("uniform", "legible"):
        picked = [others[int(round(j))] for j in np.linspace(0, len(others) - 1, need)]
    elif strategy == "random":
        picked = [others[j] for j in sorted(rng.choice(len(others), need, replace=False))]
    elif strategy == "center":
        start = (len(others) - need) // 2
        picked = others[start:start + need]
    else:
        raise ValueError(f"unknown sampling strategy {strategy!r}")
    idx = first + picked
    if pad and len(idx) < seq_len:
        idx += [idx[-1]] * (seq_len - len(idx))
    return idx


def keep_frames(samples: list[Sample], picks: list[list[int]]) -> list[Sample]:
    """Each sample cut down to the frames it will be read from (temporal order kept), so inference on new
    footage decodes 5 frames per tracklet instead of all of them; re-picking on the result gives the same frames."""
    out = []
    for s, idx in zip(samples, picks):
        keep = sorted(set(idx))
        anchor = keep.index(s.anchor) if s.anchor in keep else None
        out.append(Sample(s.path, s.number, [s.frames[j] for j in keep], anchor, s.group))
    return out


# ImageEnhance.Sharpness(2.0) is 2 * image - SMOOTH(image) (blend truncates, SMOOTH rounds; x / 13 is never a tie),
# so one 3x3 kernel gives the same bytes in one pass instead of a filter, a blend and a copy
SHARPEN_2 = ImageFilter.Kernel((3, 3), [-1, -1, -1, -1, 21, -1, -1, -1, -1], scale=13)


def band_boxes(height: int, bands: int, band_height: float) -> list[tuple[int, int]]:
    """(top, bottom) rows of `bands` evenly spaced horizontal bands, each `band_height` of `height` tall."""
    h = max(1, round(band_height * height))
    tops = np.linspace(0, height - h, bands) if bands > 1 else [(height - h) / 2]
    return [(round(t), round(t) + h) for t in tops]


def text_lines(im: Image.Image, rows: int, width: int, bands: int, band_height: float) -> np.ndarray:
    """[bands, rows, width, 3]: each band of `im` resized to `rows` with its aspect kept (at most `width` columns),
    padded on the right with grey, as text recognizers read a line."""
    out = np.full((bands, rows, width, 3), 128, np.uint8)
    for k, (top, bottom) in enumerate(band_boxes(im.height, bands, band_height)):
        band = im.crop((0, top, im.width, bottom))
        w = max(1, min(width, round(band.width * rows / band.height)))
        out[k, :, :w] = np.asarray(band.resize((w, rows), Image.LANCZOS), dtype=np.uint8)
    return out


def load_frame(path: str, size: int, sharpen: float = 2.0, crop=FULL_FRAME, enhance: bool = False,
               line_width: int = 0, bands: int = 1, band_height: float = 1.0) -> np.ndarray:
    """SPEC recipe: RGB -> sharpen -> LANCZOS to size x size. Any PIL mode (L, CMYK, RGBA, P) works.
    `crop` (left, top, right, bottom as fractions) is cut out first, so the resize spends its pixels there.
    `line_width` > 0: text lines for a recognizer instead, [bands, size, line_width, 3] (text_lines).
    `enhance`: sharpen with ImageEnhance as the original recipe did (same bytes, slower; bench.py's reference)."""
    left, top, right, bottom = crop
    with Image.open(path) as im:
        # JPEG: decode big images at reduced scale (far faster), but never below what the crop needs
        need = size / band_height if line_width else size
        im.draft("RGB", (math.ceil(size / (right - left)), math.ceil(need / (bottom - top))))
        im = im.convert("RGB")
        if tuple(crop) != FULL_FRAME:
            w, h = im.size
            box = (round(left * w), round(top * h), round(right * w), round(bottom * h))
            im = im.crop((box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)))
        if sharpen == 2.0 and not enhance:
            im = im.filter(SHARPEN_2)
        elif sharpen != 1.0:
            im = ImageEnhance.Sharpness(im).enhance(sharpen)
        if line_width:
            return text_lines(im, size, line_width, bands, band_height)
        im = im.resize((size, size), Image.LANCZOS)
    return np.asarray(im, dtype=np.uint8)


def _load_or_none(args):
    path, size, sharpen, crop, views = args
    try:
        return load_frame(path, size, sharpen, crop, **views)
    except Exception:  # noqa: BLE001 - any unreadable file is a counted skip
        return None


class FrameStore:
    """Every frame of every sample, preprocessed once into one uint8 array, cached on disk: (N, S, S, 3), or with
    text-line `views` (config.views) (N, bands, 48, line_width, 3). `get` returns each frame's views in turn."""

    def __init__(self, samples: list[Sample], size: int, sharpen: float, cache_dir: str = "", workers: int = 0,
                 crop=FULL_FRAME, views: dict | None = None):
        paths = sorted({p for s in samples for p in s.frames})
        self.index = {p: i for i, p in enumerate(paths)}
        crop, views = tuple(float(c) for c in crop), dict(views or {})
        self.fingerprint = _fingerprint(paths, size, sharpen, crop, views)
        cache = os.path.join(cache_dir, f"frames_{self.fingerprint}.npz") if cache_dir else ""
        if cache and os.path.isfile(cache):
            with np.load(cache) as z:
                self.frames, self.ok = z["frames"], z["ok"]
        else:
            self.frames, self.ok = _decode_all(paths, size, sharpen, crop, workers, views)
            if cache:
                os.makedirs(cache_dir, exist_ok=True)
                tmp = f"{cache}.tmp{os.getpid()}.npz"  # per process: parallel runs may build the same cache
                np.savez(tmp, frames=self.frames, ok=self.ok)
                os.replace(tmp, cache)
        self.bad = {p for p, i in self.index.items() if not self.ok[i]}

    @classmethod
    def of(cls, samples: list[Sample], cfg, cache_dir: str = "", workers: int = 0) -> "FrameStore":
        """The store a config's preprocessing (size, sharpening, crop) makes: what checkpoints are trained on."""
        size = LINE_HEIGHT if cfg.is_ocr() else cfg.img_size
        return cls(samples, size, cfg.sharpen, cache_dir, workers, crop=cfg.crop, views=cfg.views())

    def drop_unreadable(self, samples: list[Sample], skipped: Counter) -> list[Sample]:
        """Remove unreadable frames from samples (and samples left with none), counting both."""
        out = []
        for s in samples:
            good = [f for f in s.frames if f not in self.bad]
            if len(good) < len(s.frames):
                skipped["unreadable image"] += len(s.frames) - len(good)
            if not good:
                skipped["sub-tracklet with no readable image"] += 1
                continue
            anchor = None if s.anchor is None or s.frames[s.anchor] in self.bad else good.index(s.frames[s.anchor])
            out.append(Sample(s.path, s.number, good, anchor, s.group))
        return out

    def get(self, paths: list[str]) -> np.ndarray:
        """[len(paths) x views, H, W, 3]."""
        out = self.frames[[self.index[p] for p in paths]]
        return out.reshape(-1, *out.shape[-3:])


def _fingerprint(paths, size, sharpen, crop, views=None) -> str:
    # the full frame keeps the key it had before crops existed, so old caches stay valid
    h = hashlib.sha1((f"{size}|{sharpen}|v1" + ("" if crop == FULL_FRAME else f"|crop{crop}")
                      + (f"|{sorted(views.items())}" if views else "")).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:16]


_POOLS = {}  # (pid, workers) -> Pool


def decode_pool(workers: int) -> Pool:
    """A pool of decoding processes kept for the life of this process. Forking a process that already holds a
    model costs ~40 ms, as much as decoding a few hundred small frames, so a predictor that reads folder after
    folder would pay it on every call. Keyed by pid: a forked child (a DataLoader worker) makes its own."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = pool = Pool(workers)
        atexit.register(pool.terminate)
    return _POOLS[key]


def _decode_all(paths, size, sharpen, crop, workers, views=None):
    views = views or {}
    shape = (views["bands"], size, views["line_width"]) if views else (size, size)
    frames = np.zeros((len(paths), *shape, 3), np.uint8)
    ok = np.zeros(len(paths), bool)
    jobs = [(p, size, sharpen, crop, views) for p in paths]
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = dict(total=len(paths), desc="decoding frames", unit="img", leave=False, mininterval=1)
    if workers > 1 and len(paths) > 128:
        # a few chunks per worker: each result crosses a pipe, so tiny chunks cost more in messages than they save
        chunk = max(8, min(128, len(paths) // (4 * workers)))
        _fill(frames, ok, tqdm(decode_pool(workers).imap(_load_or_none, jobs, chunksize=chunk), **bar))
    else:
        _fill(frames, ok, tqdm(map(_load_or_none, jobs), **bar))
    return frames, ok


def _fill(frames, ok, results):
    for i, img in enumerate(results):
        if img is not None:
            frames[i], ok[i] = img, True


class TrackletDataset(Dataset):
    """Item: (frames uint8 [T, S, S, 3], tens, units, number, index). Augmentation happens per batch."""

    def __init__(self, samples: list[Sample], store: FrameStore, seq_len: int, strategy: str,
                 use_anchor: bool = True, pad: bool = True, scores: dict | None = None, explore: bool = False):
        """`scores`: frame path -> legibility (frame_legibility), for strategy 'legible'; `explore`: training."""
        self.samples, self.store = samples, store
        self.seq_len, self.strategy, self.use_anchor, self.pad = seq_len, strategy, use_anchor, pad
        self.scores, self.explore = scores, explore

    def __len__(self):
        return len(self.samples)

    def frame_indices(self, i: int) -> list[int]:
        s = self.samples[i]
        # seeded from torch's RNG so torch.manual_seed (and resumed RNG state) governs sampling
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        anchor = s.anchor if self.use_anchor else None
        n = len(s.frames)
        scores = None if self.scores is None else [self.scores.get(f, 0.0) for f in s.frames]
        kw = dict(pad=self.pad, explore=self.explore)
        if not self.use_anchor and s.anchor is not None and n > 1:
            # evaluation without anchors: the anchor file is not part of the footage at all
            keep = [j for j in range(n) if j != s.anchor]
            kept_scores = None if scores is None else [scores[j] for j in keep]
            return [keep[j] for j in select_frames(len(keep), None, self.seq_len, self.strategy, rng,
                                                   scores=kept_scores, **kw)]
        return select_frames(n, anchor, self.seq_len, self.strategy, rng, scores=scores, **kw)

    def __getitem__(self, i):
        s = self.samples[i]
        frames = self.store.get([s.frames[j] for j in self.frame_indices(i)])
        tens, units = decompose(s.number) if s.number >= 0 else (0, 0)  # -1: no digits to learn, only 'not visible'
        return torch.from_numpy(frames), tens, units, s.number, i


def collate(batch):
    """Pads variable-length sequences with zeros; mask is True on real frames (uint8 frames, or float16 maps)."""
    lengths = [b[0].shape[0] for b in batch]
    T = max(lengths)
    frames = torch.zeros((len(batch), T) + tuple(batch[0][0].shape[1:]), dtype=batch[0][0].dtype)
    mask = torch.zeros(len(batch), T, dtype=torch.bool)
    for k, (b, n) in enumerate(zip(batch, lengths)):
        frames[k, :n], mask[k, :n] = b[0], True
    cols = list(zip(*[b[1:] for b in batch]))
    return {"frames": frames, "mask": mask, "tens": torch.tensor(cols[0]), "units": torch.tensor(cols[1]),
            "number": torch.tensor(cols[2]), "index": torch.tensor(cols[3])}


def to_input(frames: torch.Tensor, device) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float [B, T, 3, H, W] in 0..1 on device (normalised later)."""
    return frames.to(device, non_blocking=True).permute(0, 1, 4, 2, 3).float().div_(255)


def calibration_frames(samples: list[Sample], store: "FrameStore", picks=None, n: int = 256):
    """Up to n distinct frames (of `picks` per sample, else any), spread evenly over the tracklets, normalised
    [n, 3, H, W]: what INT8 calibration observes (model.int8_trunk)."""
    picks = picks or [range(len(s.frames)) for s in samples]
    paths = list(dict.fromkeys(s.frames[j] for s, p in zip(samples, picks) for j in p))
    frames = torch.from_numpy(store.get(evenly_spaced(paths, n)))
    return normalize(to_input(frames[None], torch.device("cpu")))[0]


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN.to(x.device).view(1, 1, 3, 1, 1)) / STD.to(x.device).view(1, 1, 3, 1, 1)


def augment(x: torch.Tensor, degrees=5.0, translate=0.05, scale=(0.95, 1.05), brightness=0.2, contrast=0.2):
    """The SPEC's per-frame random affine and colour jitter, on a whole batch [B, T, 3, H, W] at once.
    The sampling grid is F.affine_grid's written out, and the jitter runs in place: on a 2-core CPU the
    generic affine_grid (a batched matmul with K = 3) and out-of-place passes cost 3x the time (same values)."""
    B, T, C, H, W = x.shape
    n = B * T
    dev = x.device
    ang = torch.empty(n, device=dev).uniform_(-degrees, degrees).deg2rad_()
    s = torch.empty(n, device=dev).uniform_(*scale)
    tx, ty = (torch.empty(n, device=dev).uniform_(-translate, translate).mul_(2).view(n, 1, 1) for _ in range(2))
    cos, sin = (torch.cos(ang) / s).view(n, 1, 1), (torch.sin(ang) / s).view(n, 1, 1)
    # pixel centres in [-1, 1], as affine_grid(align_corners=False) has them
    xs = ((torch.arange(W, device=dev, dtype=x.dtype) * 2 + 1) / W - 1).view(1, 1, W)
    ys = ((torch.arange(H, device=dev, dtype=x.dtype) * 2 + 1) / H - 1).view(1, H, 1)
    grid = torch.stack([cos * xs - sin * ys + tx, sin * xs + cos * ys + ty], -1)
    flat = F.grid_sample(x.reshape(n, C, H, W), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    b = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - brightness, 1 + brightness)
    c = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - contrast, 1 + contrast)
    flat.mul_(b).clamp_(0, 1)
    # mean of the grey image = grey of the channel means (linear)
    gray = (flat.mean((2, 3)) @ torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=flat.dtype)).view(n, 1, 1, 1)
    flat.mul_(c).add_(gray * (1 - c)).clamp_(0, 1)
    return flat.view(B, T, C, H, W)


def class_weights(labels, num_classes: int, method: str = "effective_number", beta: float = 0.9999,
                  absent_weight: float = 0.001, empty_index: int | None = None, empty_suppression: float = 1.0,
                  sqrt: bool = True) -> torch.Tensor:
    """Per-class loss weights. effective_number (Cui et al. 2019): (1 - beta) / (1 - beta^n_c);
    balanced: N / (K * n_c) over the K present classes. Absent classes get `absent_weight`; the tens head's
    empty class is multiplied by `empty_suppression`; then optionally the square root of every weight."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    present = counts > 0
    w = torch.full((num_classes,), float(absent_weight), dtype=torch.double)
    if method == "effective_number":
        w[present] = (1 - beta) / (1 - beta ** counts[present])
    elif method == "balanced":
        w[present] = counts.sum() / (present.sum() * counts[present])
    elif method == "none":
        w[:] = 1.0
    else:
        raise ValueError(f"unknown class weight method {method!r}")
    if empty_index is not None:
        w[empty_index] *= empty_suppression
    return (w.sqrt() if sqrt else w).float()


def balanced_empty_suppression(tens_labels, **weight_kw) -> float:
    """The factor on the tens head's empty weight that gives 'empty' the total loss weight (count x weight) of an
    average tens digit present. The recipe's fixed 0.01 was set where 94% of tracklets are single digits, and
    there this comes to about the same (0.017 on SPEC.md's counts); where single digits are fewer it suppresses
    less (0.08 on the hard split's 55%), and never more than 1 (no boost where they are rare)."""
    counts = torch.bincount(torch.as_tensor(tens_labels, dtype=torch.long), minlength=EMPTY + 1).double()
    w = class_weights(tens_labels, EMPTY + 1, empty_index=EMPTY, empty_suppression=1.0, **weight_kw).double()
    digits = counts[:EMPTY] > 0
    if counts[EMPTY] == 0 or not digits.any():
        return 1.0
    ratio = float((counts[:EMPTY] * w[:EMPTY])[digits].mean() / (counts[EMPTY] * w[EMPTY]))
    return min(1.0, ratio ** 2 if weight_kw.get("sqrt", True) else ratio)  # the factor acts before the root


def split(samples: list[Sample], val_fraction: float, seed: int):
    """Random train/val split of whole player sequences (no player on both sides), stratified per number so rare
    numbers (e.g. 89) still land in validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for n in sorted({s.number for s in samples}):
        groups = sorted({s.group for s in samples if s.number == n})
        perm = rng.permutation(len(groups))
        n_val = max(1, int(round(len(groups) * val_fraction))) if len(groups) > 1 else 0
        val_groups = {groups[i] for i in perm[:n_val]}
        for s in samples:
            if s.number == n:
                (val if s.group in val_groups else train).append(s)
    return train, val


def train_val(samples: list[Sample], cfg):
    """A run's train/val split from its config: what train.py trains and validates on, and what evaluate.py
    --split=train|val reads back."""
    return split(samples, cfg.val_split, cfg.seed)


def report_skips(skipped: Counter) -> None:
    for reason, count in sorted(skipped.items()):
        log.warning("skipped %d x %s", count, reason)


def data_root(cfg) -> str:
    """The user's data root, or the embedded synthetic data (generated once, then reused)."""
    if cfg.data_root:
        return cfg.data_root
    root = os.path.join(cfg.synth_root, f"scale{cfg.synth_scale:g}_seed{cfg.synth_seed}")
    log.info("No data_root set: using the embedded synthetic data (--data_root=DIR for your own).")
    path = synth.ensure_dataset(root, scale=cfg.synth_scale, seed=cfg.synth_seed)
    sheet = os.path.join(cfg.results_dir, "synth_samples.png")
    if not os.path.isfile(sheet):  # one look at what the model is trained on
        synth.contact_sheet(path, sheet)
    return str(path)


def training_numbers(cfg, root: str | None = None) -> list[int] | None:
    """The numbers to train on: cfg.train_classes, or for train_classes=all every number folder the data holds
    except the test numbers, which may sit in the same root (None: all of a SoccerNet split, scored whole)."""
    if cfg.train_classes:
        return list(cfg.train_classes)
    root = root or data_root(cfg)
    if is_soccernet(root):
        return None
    found = sorted(n for e in os.scandir(root) if e.is_dir(follow_symlinks=False)
                   and (n := _number_of(e.name)) is not None)
    kept = [n for n in found if n not in cfg.test_classes]
    if len(kept) < len(found):
        log.info("train_classes=all: every number under %s except the test numbers %s", root,
                 sorted(set(found) - set(kept)))
    if found and not kept:
        raise ConfigError(f"no number folder under {root!r} other than the test numbers {cfg.test_classes}")
    return kept or None  # None: no number folder at all, which load_samples reports as no sub-tracklet


def load_samples(cfg, numbers, root: str | None = None, workers: int = 0):
    """Crawl, decode once (cached) and clean the samples of `numbers` (empty or None: every number the data holds,
    SoccerNet's -1 included); returns (samples, store, skipped)."""
    root = root or data_root(cfg)
    numbers = list(numbers) if numbers else None
    try:
        samples, skipped = crawl(root, numbers)
    except (FileNotFoundError, ValueError) as err:  # ValueError: an unreadable SoccerNet *_gt.json
        raise ConfigError(str(err)) from None
    if not samples:
        raise ConfigError(f"no sub-tracklet with images for numbers {sorted(numbers or ['any'])} under {root!r}")
    store = FrameStore.of(samples, cfg, cfg.cache_dir, workers)
    samples = store.drop_unreadable(samples, skipped)
    missing = sorted(set(numbers or ()) - {s.number for s in samples})
    if missing:
        raise ConfigError(f"no usable sample for number(s) {missing} under {root!r}")
    report_skips(skipped)
    return samples, store, skipped


def frame_legibility(samples: list[Sample], cfg, cache_dir: str = "", workers: int = 0,
                     bands: int = LEGIBILITY_VIEWS["bands"]) -> dict:
    """frame path -> how legible a jersey number is in it: the shipped text recognizer's best confidence in a
    1-2 digit read over `bands` text-line bands of the frame (0: none reads a number). Cached by files and
    settings."""
    views = {**LEGIBILITY_VIEWS, "bands": bands}
    store = FrameStore(samples, LINE_HEIGHT, views.pop("sharpen"), cache_dir, workers, crop=cfg.crop, views=views)
    paths = sorted(store.index, key=store.index.get)
    cache = os.path.join(cache_dir, f"legibility_{store.fingerprint}.npy") if cache_dir else ""
    if cache and os.path.isfile(cache):
        scores = np.load(cache)
    else:
        scores = ocr.legibility(store.frames, desc="frame legibility")
        if cache:
            np.save(cache, scores)
    return dict(zip(paths, scores.tolist()))
