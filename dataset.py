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

from config import FULL_FRAME, IMAGENET_MEAN, IMAGENET_STD, LINE_HEIGHT

log = logging.getLogger("jersey")
EMPTY = 10          # tens class meaning "no tens digit"
NO_DIGIT = 10       # units class of a half view holding no whole digit (half of a centred single digit)
NUM_DIGIT_CLASSES = 11
IMG_EXTS = (".jpg", ".jpeg", ".png")
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


def is_soccernet(root: str) -> bool:
    """SoccerNet jersey-number layout: <split>/images/<tracklet_id>/*.jpg beside <split>/<split>_gt.json."""
    return os.path.isdir(os.path.join(root, "images")) and bool(glob.glob(os.path.join(glob.escape(root), "*_gt.json")))


def _soccernet_labels(root: str) -> dict:
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


def _soccernet_number(v) -> int | None:
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
    labels = _soccernet_labels(root)
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
        n = _soccernet_number(labels[tid])
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
    missing = [t for t, v in labels.items() if t not in folders and (wanted is None or _soccernet_number(v) in wanted)]
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
                  pad: bool = True) -> list[int]:
    """Anchor first (if any), the rest from the non-anchor frames; pad by repeating the last frame."""
    first = [] if anchor is None else [anchor]
    others = [i for i in range(n_frames) if i != anchor]
    need = seq_len - len(first)
    if need <= 0:
        return first[:seq_len]
    if len(others) <= need:
        picked = others
    elif strategy == "uniform":
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
# so one 3x3 kernel gives the same bytes in one pass instead of a filter, a blend and a copy (report section 8)
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
                 use_anchor: bool = True, pad: bool = True):
        self.samples, self.store = samples, store
        self.seq_len, self.strategy, self.use_anchor, self.pad = seq_len, strategy, use_anchor, pad

    def __len__(self):
        return len(self.samples)

    def frame_indices(self, i: int) -> list[int]:
        s = self.samples[i]
        # seeded from torch's RNG so torch.manual_seed (and resumed RNG state) governs sampling
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        anchor = s.anchor if self.use_anchor else None
        n = len(s.frames)
        if not self.use_anchor and s.anchor is not None and n > 1:
            # evaluation without anchors: the anchor file is not part of the footage at all
            keep = [j for j in range(n) if j != s.anchor]
            return [keep[j] for j in select_frames(len(keep), None, self.seq_len, self.strategy, rng, self.pad)]
        return select_frames(n, anchor, self.seq_len, self.strategy, rng, self.pad)

    def __getitem__(self, i):
        s = self.samples[i]
        frames = self.store.get([s.frames[j] for j in self.frame_indices(i)])
        tens, units = decompose(s.number)
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


def augment(x: torch.Tensor, degrees=5.0, translate=0.05, scale=(0.95, 1.05), brightness=0.2, contrast=0.2,
            shift=0.0, zoom=0.0):
    """The SPEC's per-frame random affine and colour jitter, on a whole batch [B, T, 3, H, W] at once; `shift`
    adds one horizontal move per tracklet, uniform in +-shift of the width (config.shift), `zoom` one shrink per
    tracklet by a factor uniform in [1 - zoom, 1] (config.zoom).
    The sampling grid is F.affine_grid's written out, and the jitter runs in place: on a 2-core CPU the
    generic affine_grid (a batched matmul with K = 3) and out-of-place passes cost 3x the time (same values)."""
    B, T, C, H, W = x.shape
    n = B * T
    dev = x.device
    ang = torch.empty(n, device=dev).uniform_(-degrees, degrees).deg2rad_()
    s = torch.empty(n, device=dev).uniform_(*scale)
    tx, ty = (torch.empty(n, device=dev).uniform_(-translate, translate).mul_(2).view(n, 1, 1) for _ in range(2))

    def per_tracklet(lo, hi):  # one draw per tracklet, shared by its T frames: [n]
        return torch.empty(B, 1, device=dev).uniform_(lo, hi).expand(B, T).reshape(n)

    if shift > 0:  # grid units: the width spans [-1, 1]
        tx = tx + per_tracklet(-2 * shift, 2 * shift).view(n, 1, 1)
    if zoom > 0:
        s = s * per_tracklet(1 - zoom, 1)
    cos, sin = (torch.cos(ang) / s).view(n, 1, 1), (torch.sin(ang) / s).view(n, 1, 1)
    # pixel centres in [-1, 1], as affine_grid(align_corners=False) has them
    xs = ((torch.arange(W, device=dev, dtype=x.dtype) * 2 + 1) / W - 1).view(1, 1, W)
    ys = ((torch.arange(H, device=dev, dtype=x.dtype) * 2 + 1) / H - 1).view(1, H, 1)
    grid = torch.stack([cos * xs - sin * ys + tx, sin * xs + cos * ys + ty], -1)
    # a shrunk frame would get a black frame around it, which no test frame has
    pad = "border" if zoom > 0 else "zeros"
    flat = F.grid_sample(x.reshape(n, C, H, W), grid, mode="bilinear", padding_mode=pad, align_corners=False)
    b = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - brightness, 1 + brightness)
    c = torch.empty(n, 1, 1, 1, device=dev).uniform_(1 - contrast, 1 + contrast)
    flat.mul_(b).clamp_(0, 1)
    # mean of the grey image = grey of the channel means (linear)
    gray = (flat.mean((2, 3)) @ torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=flat.dtype)).view(n, 1, 1, 1)
    flat.mul_(c).add_(gray * (1 - c)).clamp_(0, 1)
    return flat.view(B, T, C, H, W)


def blur_kernels(n: int, size: int = 7, max_sigma: float = 1.5, max_length: float = 6.0, device=None):
    """n random normalised blur kernels [n, size, size]: half Gaussian (sigma uniform in 0.3..max_sigma), half
    motion (a soft line through the centre, length uniform in 2..max_length px, at any angle)."""
    r = size // 2
    ys, xs = torch.meshgrid(*(torch.arange(-r, r + 1, device=device, dtype=torch.float32),) * 2, indexing="ij")
    sigma = torch.empty(n, 1, 1, device=device).uniform_(0.3, max_sigma)
    gauss = (-(xs ** 2 + ys ** 2) / (2 * sigma ** 2)).exp()
    theta = torch.empty(n, 1, 1, device=device).uniform_(0, torch.pi)
    half = torch.empty(n, 1, 1, device=device).uniform_(1.0, max_length / 2)
    along = (xs * theta.cos() + ys * theta.sin()).clamp(-half, half)  # nearest point of the segment
    dist2 = (xs - along * theta.cos()) ** 2 + (ys - along * theta.sin()) ** 2
    motion = (-dist2 / (2 * 0.5 ** 2)).exp()
    k = torch.where(torch.rand(n, 1, 1, device=device) < 0.5, gauss, motion)
    return k / k.sum((1, 2), keepdim=True)


def random_blur(x: torch.Tensor, p: float) -> torch.Tensor:
    """Each frame of [B, T, C, H, W] blurred with probability p (config.blur_aug) by a blur_kernels kernel, edges
    replicated: broadcast footage is blurred by focus and by motion, at rates no generator gets right."""
    B, T, C, H, W = x.shape
    hit = torch.nonzero(torch.rand(B * T, device=x.device) < p).flatten()
    if len(hit) == 0:
        return x
    k = blur_kernels(len(hit), device=x.device).to(x.dtype)
    r = k.shape[-1] // 2
    frames = x.reshape(B * T, C, H, W)
    sel = F.pad(frames[hit].reshape(1, len(hit) * C, H, W), (r, r, r, r), mode="replicate")
    out = frames.clone()
    out[hit] = F.conv2d(sel, k.repeat_interleave(C, 0)[:, None], groups=len(hit) * C).view(len(hit), C, H, W)
    return out.view(B, T, C, H, W)


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


def split(samples: list[Sample], val_fraction: float, seed: int, by: str = "sequence"):
    """Random train/val split; by='sequence' splits whole player sequences (no player on both sides)."""
    rng = np.random.default_rng(seed)
    if by == "sample":
        perm = rng.permutation(len(samples))
        n_val = int(round(len(samples) * val_fraction))
        val_idx = set(perm[:n_val].tolist())
        return [s for i, s in enumerate(samples) if i not in val_idx], [samples[i] for i in sorted(val_idx)]
    # stratify per number, so rare numbers (e.g. 89) still land in validation
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
    return split(samples, cfg.val_split, cfg.resolved_split_seed(), cfg.split_by)


def report_skips(skipped: Counter) -> None:
    for reason, count in sorted(skipped.items()):
        log.warning("skipped %d x %s", count, reason)


def mix_renders(x, mask, number, renders, labels, share: float):
    """Replace a random `share` of the batch by rendered numbers (uint8 [n, H, W, 3] and their labels), each
    shown in every frame of its tracklet (augmentation then moves each frame differently). The renders pair
    every digit with many partners, which the training numbers do not: in 4, 6, 8, 9, 49, 66, 89 a tens 4
    always stands next to a 9. x: float [B, T, 3, H, W] in 0..1. Returns x, mask, tens, units, number."""
    B, T = x.shape[:2]
    k = int(round(share * B))
    x, mask, number = x.clone(), mask.clone(), number.clone()
    if k:
        slots = torch.randperm(B, device=x.device)[:k]
        pick = torch.randint(len(renders), (k,))
        x[slots] = to_input(renders[pick].unsqueeze(1), x.device).expand(-1, T, -1, -1, -1)
        mask[slots] = True
        number[slots] = labels[pick].to(number.device)
    return x, mask, *decompose(number), number


# Distance between the two digits' centres of a two-digit print, as a fraction of the crop width: a print fills
# about half the back's width, so its digits sit about a quarter of the crop apart (drawn per tracklet).
SWAP_PITCH = (0.2, 0.3)


def swap_number(n):
    """49 -> 94 (int or tensor); meaningless for one-digit numbers and for units 0, which swap_digits leaves out."""
    return 10 * (n % 10) + n // 10


def swappable(number, exclude=()) -> torch.Tensor:
    """Which numbers swap_digits may exchange: two digits, units not 0 (no 'tens 0'), different digits, and the
    swapped number not in `exclude` (the test numbers and the other scored unseen ones)."""
    number = torch.as_tensor(number)
    ok = (number >= 10) & (number % 10 > 0) & (swap_number(number) != number)
    return ok & ~torch.isin(swap_number(number), torch.as_tensor(list(exclude), dtype=number.dtype))


def swap_digits(x, tens, units, number, prob: float, exclude=(), pitch=SWAP_PITCH):
    """Two-digit tracklets with their digits exchanged in place (49 -> 94), on any data (no digit boxes needed).

    A two-digit print sits across the middle of the back, its tens digit in the band of one pitch left of the
    crop's centre and its units digit in the band right of it. Swapping the two bands (pitch drawn per tracklet
    from `pitch` x W, the same for all its frames) moves each digit to the other's place on the same shirt, so a
    units digit is seen right of a tens digit it was never printed beside, in the position and size a real print
    gives it; with 49, 66 and 89 in training, 94 and 98 put a 4 and an 8 where the units of 48, 64 and 88 stand.
    Each eligible tracklet (`swappable`) is swapped with probability `prob`. x: float [B, T, 3, H, W]."""
    B, W = x.shape[0], x.shape[-1]
    hit = torch.nonzero(swappable(number.cpu(), exclude) & (torch.rand(B) < prob)).flatten().tolist()
    if not hit:
        return x, tens, units, number
    x, tens, units, number = x.clone(), tens.clone(), units.clone(), number.clone()
    c = W // 2
    for i in hit:
        w = min(c, max(1, int(round(W * float(torch.empty(1).uniform_(*pitch))))))
        left = x[i, ..., c - w:c].clone()
        x[i, ..., c - w:c] = x[i, ..., c:c + w]
        x[i, ..., c:c + w] = left
    number[hit] = swap_number(number[hit])
    tens[hit], units[hit] = number[hit] // 10, number[hit] % 10
    return x, tens, units, number


def swapped_counts(numbers, prob: float, exclude=()) -> list[int]:
    """The labels the loss sees under swap_digits, in expectation: `prob` of each swappable number's tracklets
    counted as its swap (so class weights do not call 94 absent and weigh it out of the loss)."""
    out = []
    for n, k in sorted(Counter(int(v) for v in numbers).items()):
        moved = round(prob * k) if bool(swappable(torch.tensor([n]), exclude)) else 0
        out += [n] * (k - moved) + [swap_number(n)] * moved
    return out


def compose_batch(x, tens, units, number, prob: float, exclude=(), width=(0.35, 0.6), mode: str = "splice"):
    """Synthetic two-digit tracklets from single-digit ones, on any data (no digit boxes needed).

    Single-digit numbers sit in the middle of the back, so the central vertical band of a single-digit
    crop holds its digit. For a random `prob` share of the batch, the central band (a random fraction
    `width` of the crop width) of single-digit tracklet A is placed left of that of single-digit tracklet
    B, frame by frame, and the pair is resized back to the crop size: labels tens = a, units = b.
    mode 'paste' keeps B's single body and print instead: a central band of width `width` x W from A and
    one from B are put side by side at B's centre, like a two-digit print on one shirt.
    x: float [B, T, 3, H, W]. Numbers in `exclude` are never produced.
    """
    singles = torch.nonzero((number < 10) & (number > 0)).flatten()  # a tens digit of 0 is no jersey number
    any_single = torch.nonzero(number < 10).flatten()
    B, T, C, H, W = x.shape
    n = int(round(prob * B))
    if n == 0 or len(singles) == 0 or len(any_single) < 2:
        return x, tens, units, number
    left = singles[torch.randint(len(singles), (n,), device=x.device)]
    right = any_single[torch.randint(len(any_single), (n,), device=x.device)]
    new_num = 10 * number[left] + number[right]
    if len(exclude):
        keep = ~torch.isin(new_num, torch.as_tensor(list(exclude), device=x.device))
        left, right, new_num = left[keep], right[keep], new_num[keep]
    slots = torch.randperm(B, device=x.device)[:len(left)]
    src = x
    x, tens, units, number = x.clone(), tens.clone(), units.clone(), number.clone()
    for k in range(len(slots)):
        frac = float(torch.empty(1).uniform_(*width))
        band = max(2, int(round(W * frac)))
        band = min(band, W // 2) if mode == "paste" else band  # both bands must fit in the crop
        lo = (W - band) // 2
        pair = torch.cat([src[left[k], ..., lo:lo + band], src[right[k], ..., lo:lo + band]], dim=-1)
        if mode == "paste":
            x[slots[k]] = src[right[k]]
            x[slots[k], ..., W // 2 - band:W // 2 + band] = pair
        else:
            x[slots[k]] = F.interpolate(pair, size=(H, W), mode="bilinear", align_corners=False, antialias=True)
    tens[slots], units[slots], number[slots] = number[left], number[right], new_num
    return x, tens, units, number


def half(x: torch.Tensor, side: str, cut: float = 0.5) -> torch.Tensor:
    """The part of every frame left ('L') or right ('R') of column `cut` x W, resized back to H x W.
    x: [B, T, C, H, W]. A two-digit print sits across the middle of the back, so each half holds one digit."""
    B, T, C, H, W = x.shape
    c = min(max(int(round(cut * W)), 2), W - 2)
    part = x[..., :c] if side == "L" else x[..., c:]
    out = F.interpolate(part.reshape(B * T, C, H, -1).float(), size=(H, W), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.to(x.dtype).view(B, T, C, H, W)


def _jittered_cut(W: int, jitter: float) -> int:
    """A column near the middle: prints are not always centred in the box."""
    return min(max(int(round((0.5 + jitter * (2 * float(torch.rand(1)) - 1)) * W)), 2), W - 2)


def two_digit_and_as_many_single(number):
    """Indices of the two-digit tracklets of a batch and of as many randomly chosen single-digit ones: views
    need both kinds in balance, or the plentiful single digits decide what the views teach."""
    two = torch.nonzero(number >= 10).flatten()
    one = torch.nonzero(number < 10).flatten()
    return two, one[torch.randperm(len(one), device=one.device)[:len(two)]]


def erased_views(x, mask, number, jitter: float = 0.08, empty_views: bool = True):
    """Training views for --erase_views, each a tracklet with the part of every frame on one side of a cut near
    the middle painted in that part's mean colour. Tens-head views (right part painted): every two-digit
    tracklet in the batch, labelled with its tens digit, and as many single digits, labelled EMPTY (half of a
    centred digit is no tens digit). Units-head views (left part painted): the two-digit tracklets, labelled
    with their units digit. The digit left standing keeps its place and size, so the tens head has to read the
    4 of 49 without the 9 beside it: "the left digit is 4", not "this looks like 49". Without the EMPTY views
    every tens view would hold a digit and the tens head would learn that anything left of centre is one.
    `empty_views=False` leaves those out: for the CTC reader a view is labelled with the number it shows, and a
    half-painted single digit shows none.
    Returns views [K, T, C, H, W], their mask, labels [K] and head [K] (0 tens, 1 units)."""
    two, one = two_digit_and_as_many_single(number)
    one = one if empty_views else one[:0]
    src = torch.cat([two, one, two])
    head = torch.cat([torch.zeros(len(two) + len(one)), torch.ones(len(two))]).long().to(number.device)
    labels = torch.cat([number[two] // 10, torch.full_like(number[one], EMPTY), number[two] % 10])
    views = x[src].clone()
    for k in range(len(src)):
        c = _jittered_cut(x.shape[-1], jitter)
        part = views[k, ..., c:] if head[k] == 0 else views[k, ..., :c]
        part.copy_(part.mean(dim=(-2, -1), keepdim=True).expand_as(part))
    return views, mask[src], labels, head


def half_views(x, mask, number, jitter: float = 0.08):
    """Training views for the split reader (--split_views): the left and right halves of each two-digit tracklet
    in the batch, labelled with its tens and its units digit, and of as many single-digit tracklets, labelled
    NO_DIGIT (half of a centred digit is a fragment); none in a batch without a two-digit number, else the
    plentiful single digits teach the halves to answer NO_DIGIT whatever they show. A tens digit read from a
    half cannot lean on the digit next to it, so a 4 learnt from 49 alone is still a 4 beside an 8. The cut
    moves by +-`jitter` x W because prints are not always centred in the box.
    Returns views [K, T, C, H, W], their mask, units labels [K]."""
    two, one = two_digit_and_as_many_single(number)
    src = torch.cat([two, one])
    if len(src) == 0:
        return x[:0], mask[:0], number[:0]
    views, labels = [], []
    for i in src.tolist():
        cut = _jittered_cut(x.shape[-1], jitter) / x.shape[-1]
        n = int(number[i])
        for side, digit in (("L", n // 10), ("R", n % 10)):
            views.append(half(x[i:i + 1], side, cut))
            labels.append(digit if n >= 10 else NO_DIGIT)
    idx = src.repeat_interleave(2)
    return torch.cat(views), mask[idx], torch.tensor(labels, device=number.device)
