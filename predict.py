"""Read jersey numbers from new tracklets with a trained checkpoint, or export the model to ONNX.

    python predict.py --checkpoint checkpoints/best_model.pth INPUT [INPUT ...] [--out preds.json|preds.csv]
    python predict.py --checkpoint checkpoints/best_model.pth --export_onnx model.onnx [--quantize]
    python predict.py --checkpoint=a.pth,b.pth INPUT    # an ensemble: the mean of their probabilities (float only)
    python predict.py --zero_shot INPUT [INPUT ...]     # no checkpoint: the text recognizer as shipped, views vote
    python predict.py --checkpoint C SPLIT --format=soccernet --out preds.json   # {tracklet folder: number or -1}

An INPUT is one image, a tracklet folder of images, a folder of tracklet folders, a dataset root in the SPEC
layout or a SoccerNet split folder (images/ + <split>_gt.json). With the last two the true numbers are known, so the output
also holds accuracy. The model and its preprocessing come from the checkpoint alone; frames are picked as in
evaluation (seq_len frames, eval_sampling, anchor frames ignored unless --eval_anchor), short tracklets are
padded by repeating their last frame, so one frame is enough, and long ones keep
dataset.MAX_TRACKLET_FRAMES evenly spaced frames to pick from.

Per tracklet: predicted number, confidence (its probability in the model's distribution over 0..99), top-3
numbers, per-digit probabilities, the temporal attention weight of every frame (next to the file it refers to)
and `uncertain: true` when confidence < --uncertain_below. That threshold defaults to the one train.py chose on
the checkpoint's validation answers (decoding.uncertain_threshold), else 0.5; an ensemble keeps its first
member's. --out must end in .json or .csv; it is checked before anything is read.

--quantize=auto|true|false (default auto): where the trunk (the convolutions, ~80% of the model's time) runs in
INT8 on the CPU: post-training static quantization with the activation ranges train.py stored in the checkpoint
(observed on 256 training frames at each epoch), else calibrated on up to 256 of the input's own frames (no
labels needed), about twice the speed of the bfloat16 trunk; the LSTM and heads keep the usual precision. auto
uses it when the model runs on a CPU and the checkpoint carries ranges for this machine's quantized engine: it
answers as the float model on 94-99% of tracklets, with seen and held-out accuracy unchanged, and on perturbed
footage (experiments/perturb.py: brighter, darker, blurred, ...) within 1.6 points, 0.3 on average
(TECHNICAL_REPORT.md); false keeps the float model. An explicit --quantize (true) on labelled inputs also runs the float model and reports both
accuracies. With --export_onnx, --quantize writes <name>.int8.onnx with onnxruntime's dynamic quantiser (about a
quarter of the float file; a text reader's keeps its convolutions in float, about half) and reports sizes and the
largest probability change. A text reader exports whole: the recognizer's graph, LSTM, attention and CTC in one file.
"""
import config

EXTRAS = config.options("predict", quantize="auto")
if __name__ == "__main__":  # --help before torch is imported, so it prints at once
    config.exit_on_help(__doc__, EXTRAS)

import csv
import dataclasses
import inspect
import io
import logging
import os
import sys
import tempfile
import warnings
from collections import Counter

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch.utils.data import DataLoader, Dataset

import dataset
import decoding
import engine
import evaluate
import model as model_lib
import ocr
import utils

log = utils.log
OUT_EXTS = (".json", ".csv")
FORMATS = ("", "soccernet")
CHOICE_FLAGS = {"quantize"}  # flags whose value is optional: true/false/auto, never an INPUT
CHOICE_WORDS = config.TRUE_WORDS + config.FALSE_WORDS + ("auto",)


# ---- finding tracklets ----------------------------------------------------------------------------------

def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Options for config.load, and the INPUT paths between them. `--key value` takes the next word as its
    value, except for flags, which only take their own words: true/false, and auto for CHOICE_FLAGS (so
    `--quantize DIR` works)."""
    bools = [k for k, v in EXTRAS.items() if isinstance(v, bool)]
    bools += [f.name for f in dataclasses.fields(config.Config) if f.type is bool]
    words = {**dict.fromkeys(bools, config.TRUE_WORDS + config.FALSE_WORDS), **dict.fromkeys(CHOICE_FLAGS, CHOICE_WORDS)}
    opts, inputs, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            inputs.append(a)
        else:
            opts.append(a)
            key = a[2:].replace("-", "_")
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            takes = nxt is not None and not nxt.startswith("--") and "=" not in a
            if takes and (key not in words or nxt.lower() in words[key]):
                opts.append(nxt)
                i += 1
        i += 1
    return opts, inputs


def _images(folder: str) -> list[str]:
    names = [e.name for e in os.scandir(folder) if e.name.lower().endswith(config.IMG_EXTS) and e.is_file()]
    return [os.path.join(folder, f) for f in sorted(names, key=dataset._natural_key)]


def _tracklet(folder: str, frames: list[str]) -> dataset.Sample:
    """An unlabelled tracklet (number None); an '_anchor' file is recognised as in the SPEC layout."""
    frames = dataset.evenly_spaced(frames, dataset.MAX_TRACKLET_FRAMES)
    anchors = [i for i, f in enumerate(frames) if "_anchor" in os.path.basename(f).lower()]
    return dataset.Sample(folder, None, frames, anchors[0] if anchors else None, folder)


def _walk(root: str) -> tuple[list[dataset.Sample], Counter]:
    """Every folder below root that holds images is one tracklet."""
    samples, skipped = [], Counter()
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        dirnames.sort(key=dataset._natural_key)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        skipped["symlinked folder not followed"] += len(links)
        dirnames[:] = [d for d in dirnames if d not in links and not d.startswith(".")]
        frames = _images(dirpath)
        if frames:
            samples.append(_tracklet(dirpath, frames))
        elif not dirnames:
            skipped["empty tracklet folder"] += 1
    return samples, +skipped


def find_tracklets(path: str) -> tuple[list[dataset.Sample], Counter]:
    """The tracklets of one INPUT; number is the true label when the layout says it, else None. One image file
    is a tracklet of one frame."""
    if os.path.isfile(path) and path.lower().endswith(config.IMG_EXTS):
        return [_tracklet(path, [path])], Counter()
    if not os.path.isdir(path):
        raise config.ConfigError(f"input {path!r} is neither a folder nor an image ({', '.join(config.IMG_EXTS)})")
    if dataset.is_soccernet(path):
        try:
            return dataset.crawl_soccernet(path)
        except ValueError as err:
            raise config.ConfigError(str(err)) from None
    frames = _images(path)
    if frames:
        return [_tracklet(path, frames)], Counter()
    subs = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
    numbered = any(dataset._number_of(os.path.basename(s)) is not None for s in subs)
    if numbered and not any(_images(s) for s in subs):  # number folders, no tracklet right below: SPEC layout
        samples, skipped = dataset.crawl(path)
        if samples:
            return samples, skipped
    return _walk(path)


def load_inputs(paths: list[str], cfg):
    """Samples of all INPUTs, cut to the frames that will be read, decoded once, unreadable frames dropped and
    counted (an unreadable chosen frame leaves the tracklet read from its other chosen frames); with
    --eval_sampling=legible the candidate frames' legibility too (else None)."""
    samples, skipped = [], Counter()
    for p in paths:
        s, k = find_tracklets(p)
        samples += s
        skipped.update(k)
    if not samples:
        raise config.ConfigError(f"no tracklet with images under {', '.join(map(repr, paths))}")
    scores = dataset.frame_legibility(samples, cfg, workers=cfg.num_workers) if cfg.eval_sampling == "legible" \
        else None
    samples, store = decode_picked(samples, cfg, skipped, scores)
    if not samples:
        raise config.ConfigError("no readable image in any tracklet")
    dataset.report_skips(skipped)
    return samples, store, skipped, scores


def decode_picked(samples, cfg, skipped: Counter, scores=None):
    """Samples cut to the frames that will be read, those decoded (no cache: new footage), unreadable ones
    dropped and counted in `skipped`; returns (samples, store)."""
    samples = dataset.keep_frames(samples, pick_frames(samples, cfg, scores))
    store = dataset.FrameStore.of(samples, cfg, "", cfg.num_workers)
    return store.drop_unreadable(samples, skipped), store


class Picked(Dataset):
    """Items as dataset.collate wants them, for frames chosen up front (labels may be unknown: zeros)."""

    def __init__(self, samples, store, picks):
        self.samples, self.store, self.picks = samples, store, picks

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        return torch.from_numpy(self.store.get([s.frames[j] for j in self.picks[i]])), 0, 0, 0, i


def pick_frames(samples, cfg, scores=None) -> list[list[int]]:
    """The evaluation frame choice (dataset.TrackletDataset.frame_indices), seeded, so runs repeat."""
    chooser = dataset.TrackletDataset(samples, None, cfg.seq_len, cfg.eval_sampling, cfg.eval_anchor, scores=scores)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return [chooser.frame_indices(i) for i in range(len(samples))]


# ---- prediction -----------------------------------------------------------------------------------------

def run(net, samples, store, picks, cfg, device, dtype, desc="predict") -> dict:
    loader = DataLoader(Picked(samples, store, picks), batch_size=cfg.batch_size, shuffle=False,
                        collate_fn=dataset.collate, num_workers=cfg.num_workers)
    return engine.predict_loader(net, loader, device, dtype, cfg, desc=desc)


def rows(res, samples, picks, threshold: float, not_visible: float = 0.0) -> list[dict]:
    """One JSON-ready record per tracklet, in input order; -1 where P(visible) < `not_visible`."""
    top_p, top_n = res["p_num"].topk(3, dim=1)
    number, confidence = decoding.answers(res)
    number = decoding.with_not_visible(number, res["p_visible"], not_visible)
    out = []
    for k, i in enumerate(res["index"].tolist()):
        s, conf = samples[i], float(confidence[k])
        row = {"tracklet": s.path, "prediction": int(number[k]), "confidence": round(conf, 4),
               "uncertain": conf < threshold, "p_visible": round(float(res["p_visible"][k]), 4),
               "top3": [{"number": int(n), "probability": round(float(p), 4)} for n, p in zip(top_n[k], top_p[k])],
               "tens_probs": {**{str(d): round(float(res["p_tens"][k, d]), 4) for d in range(10)},
                              "empty": round(float(res["p_tens"][k, config.EMPTY]), 4)},
               "units_probs": {str(d): round(float(res["p_units"][k, d]), 4) for d in range(10)},
               "frames": view_names(s, picks[i], len(res["attention"][k])),
               "attention": [round(float(w), 4) for w in res["attention"][k]]}
        if s.number is not None:
            row["true"] = s.number
        out.append(row)
    return out


def view_names(sample, picks, n_views: int) -> list[str]:
    """The file each attention weight refers to; a text reader reads each frame as several bands (file#band)."""
    names = [os.path.basename(sample.frames[j]) for j in picks]
    per = n_views // len(names)
    return names if per == 1 else [f"{n}#{b}" for n in names for b in range(per)]


def summary(preds: list[dict]) -> dict:
    """Counts, and where true numbers are known the accuracy with SoccerNet's -1 counted as an answer (right only
    on a -1 tracklet), and how the -1 answers fare."""
    out = {"num_tracklets": len(preds), "uncertain": sum(p["uncertain"] for p in preds)}
    labelled = [p for p in preds if "true" in p]
    if labelled:
        right = [p["prediction"] == p["true"] for p in labelled]
        sure = [r for p, r in zip(labelled, right) if not p["uncertain"]]
        out.update(labelled=len(labelled), correct=sum(right), accuracy=round(100.0 * sum(right) / len(right), 2),
                   accuracy_when_certain=round(100.0 * sum(sure) / len(sure), 2) if sure else None)
    if any(p.get("true") == dataset.NOT_VISIBLE or p["prediction"] == dataset.NOT_VISIBLE for p in preds):
        out["not_visible"] = decoding.not_visible_metrics(
            torch.tensor([p["prediction"] for p in labelled]), torch.tensor([p["true"] for p in labelled])) \
            if labelled else {"answered": sum(p["prediction"] < 0 for p in preds)}
    return out


def soccernet_format(preds: list[dict]) -> dict:
    """The challenge's submission: tracklet folder name -> number, or -1 where none is visible."""
    return {os.path.basename(os.path.normpath(p["tracklet"])): p["prediction"] for p in preds}


def check_out(path: str, fmt: str = "") -> None:
    """Fail before any reading or inference when --out has an unknown format or cannot be written."""
    if fmt not in FORMATS:
        raise config.ConfigError(f"--format must be one of {', '.join(FORMATS)} (or left out), got {fmt!r}")
    if not path.lower().endswith(".json" if fmt else OUT_EXTS):
        raise config.ConfigError(f"--out {path!r}: the file name must end in " + (".json" if fmt else ".json or .csv"))
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if os.path.isdir(path):
            raise IsADirectoryError(21, "it is a folder")
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError(13, "the file is read-only")
    except OSError as err:
        raise config.ConfigError(f"--out {path!r} cannot be written ({err.strerror})") from None


def write(preds: list[dict], meta: dict, path: str, fmt: str = "") -> None:
    if fmt == "soccernet":
        utils.atomic_save(soccernet_format(preds), path)
    elif path.lower().endswith(".csv"):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            w.writerows(csv_row(p) for p in preds)
    else:
        utils.atomic_save({**meta, "predictions": preds}, path)


CSV_COLUMNS = (["tracklet", "true", "prediction", "confidence", "uncertain", "top2", "p_top2", "top3", "p_top3"]
               + [f"p_tens_{d}" for d in range(10)] + ["p_tens_empty"] + [f"p_units_{d}" for d in range(10)]
               + ["attention", "frames"])


def csv_row(p: dict) -> list:
    """Flat: fixed-size probabilities as columns, per-frame attention and file names space-separated."""
    return ([p["tracklet"], p.get("true", ""), p["prediction"], p["confidence"], p["uncertain"],
             p["top3"][1]["number"], p["top3"][1]["probability"], p["top3"][2]["number"], p["top3"][2]["probability"]]
            + list(p["tens_probs"].values()) + list(p["units_probs"].values())
            + [" ".join(map(str, p["attention"])), " ".join(p["frames"])])


# ---- INT8 and ONNX --------------------------------------------------------------------------------------

def state_mb(net) -> float:
    """Size of the saved weights, as torch.save writes them."""
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return round(buf.tell() / 2**20, 2)


class OnnxView(torch.nn.Module):
    """The exported graph. Input `frames`: float [batch, time, 3, S, S], RGB in 0..1 after the checkpoint's crop,
    SPEC sharpening and resize (dataset.load_frame(path, img_size, sharpen, crop) / 255); ImageNet normalisation
    is inside. Outputs: number_probs [batch, 100], tens_probs [batch, 11] (index 10 = empty), units_probs
    [batch, 10], attention [batch, time]. There is no padding mask: pad short tracklets by repeating their last
    frame, as predict.py does."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, frames):
        out = self.net(dataset.normalize(frames))
        return (*model_lib.probabilities(out), out["attention"])


ONNX_OUTPUTS = ["number_probs", "tens_probs", "units_probs", "attention"]


def export_onnx(net, cfg, path: str) -> None:
    """ONNX with dynamic batch and sequence length (TorchScript exporter; the dynamo one needs onnxscript)."""
    view = OnnxView(net.cpu().eval()).eval()
    example = torch.rand(2, cfg.seq_len * cfg.views_per_frame(), 3, *cfg.frame_shape())
    axes = {"frames": {0: "batch", 1: "time"}, "attention": {0: "batch", 1: "time"},
            **{k: {0: "batch"} for k in ONNX_OUTPUTS[:3]}}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the mask branch and LSTM batch sizes; checked below
        torch.onnx.export(view, (example,), path, input_names=["frames"], output_names=ONNX_OUTPUTS,
                          dynamic_axes=axes, opset_version=17, **legacy)


def onnx_max_diff(net, path: str, cfg, shapes=((3, 7), (1, 1))) -> float:
    """Largest absolute difference between onnxruntime and PyTorch outputs, on batch/time shapes unlike the
    export example's, so the dynamic axes are exercised."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    view, worst = OnnxView(net.cpu().eval()).eval(), 0.0
    gen = torch.Generator().manual_seed(0)
    for b, t in shapes:
        x = torch.rand(b, t, 3, *cfg.frame_shape(), generator=gen)
        with torch.inference_mode():
            ref = view(x)
        got = sess.run(ONNX_OUTPUTS, {"frames": x.numpy()})
        worst = max(worst, max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref)))
    return worst


# A text reader's INT8 graph leaves its convolutions in float: dynamically quantized (one activation scale per
# tensor, computed at run time), the shipped recognizer's convolutions moved the output probabilities by up to 0.76
# and ran slower; its MatMuls, LSTM and Linear layers alone move them by about 0.01 (an untrained head).
TEXT_INT8_OPS = ["MatMul", "LSTM", "Gemm"]


def quantize_onnx(src: str, dst: str, op_types: list[str] | None = None) -> None:
    """onnxruntime's dynamic quantiser: INT8 weights for `op_types` (None: every type it supports, Conv,
    MatMul, LSTM, ...)."""
    logging.disable(logging.WARNING)  # it logs a line per tensor it leaves alone
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    finally:
        logging.disable(logging.NOTSET)


def export(net, cfg, path: str, int8: bool) -> dict:
    export_onnx(net, cfg, path)
    info = {"onnx": path, "onnx_mb": round(os.path.getsize(path) / 2**20, 2),
            "max_abs_diff_vs_pytorch": onnx_max_diff(net, path, cfg)}
    log.info("wrote %s (%.2f MB); onnxruntime vs PyTorch max abs diff %.2e", path, info["onnx_mb"],
             info["max_abs_diff_vs_pytorch"])
    if int8:
        q = os.path.splitext(path)[0] + ".int8.onnx"
        quantize_onnx(path, q, TEXT_INT8_OPS if net_is_text(net) else None)
        info.update(int8_onnx=q, int8_onnx_mb=round(os.path.getsize(q) / 2**20, 2),
                    int8_max_abs_diff_vs_pytorch=onnx_max_diff(net, q, cfg))
        log.info("wrote %s (%.2f MB, %.0f%% of float); INT8 vs PyTorch float max abs diff %.2e", q,
                 info["int8_onnx_mb"], 100 * info["int8_onnx_mb"] / info["onnx_mb"], info["int8_max_abs_diff_vs_pytorch"])
    return info


def compare(res_float, res_int8) -> dict:
    """How often the INT8 model answers as the float one, and its largest probability change."""
    a, b = res_float["p_num"].argmax(1), res_int8["p_num"].argmax(1)
    return {"agreement": round(100.0 * float((a == b).float().mean()), 2),
            "max_prob_diff": round(float((res_float["p_num"] - res_int8["p_num"]).abs().max()), 4)}


def quantize_choice(raw: str) -> str:
    """--quantize as 'true', 'false' or 'auto'; one clear error for anything else."""
    raw = raw.lower()
    if raw not in CHOICE_WORDS:
        raise config.ConfigError(f"--quantize takes true, false or auto, not {raw!r}")
    return "auto" if raw == "auto" else str(raw in config.TRUE_WORDS).lower()


def net_is_text(net) -> bool:
    return any(getattr(m, "text", False) for m in getattr(net, "members", [net]))


def wants_int8(choice: str, ckpt: dict, device: torch.device) -> bool:
    """Whether to run the trunk in INT8: --quantize=true/false as said; auto where the model runs on a CPU and the
    checkpoint carries activation ranges for this machine's quantized engine (then it needs no calibration pass;
    its accuracy against the float model: TECHNICAL_REPORT.md)."""
    if choice != "auto":
        return choice == "true"
    ranges = ckpt.get("int8_ranges")
    return device.type == "cpu" and bool(ranges) and ranges.get("engine") == model_lib.available_quant_engine()


# ---- main -----------------------------------------------------------------------------------------------

def zero_shot(opts, inputs):
    """predict.py --zero_shot: the shipped recognizer's vote over the views (ocr.ZeroShot); -1 = nothing read."""
    cfg, extra = evaluate.zero_shot_config(opts, EXTRAS)
    utils.setup_logging()
    if not inputs:
        raise config.ConfigError("no INPUT given: python predict.py --zero_shot FOLDER [FOLDER ...]")
    out = extra["out"] or os.path.join(cfg.results_dir, "predictions.json")
    if out.lower().endswith(".csv"):
        raise config.ConfigError("--zero_shot writes JSON (its rows hold no digit probabilities for the CSV)")
    check_out(out, extra["format"])
    samples, store, skipped, scores = load_inputs(inputs, cfg)
    picks = pick_frames(samples, cfg, scores)
    reader = ocr.ZeroShot(cfg.backbone)
    preds = []
    for batch in DataLoader(Picked(samples, store, picks), batch_size=cfg.batch_size, collate_fn=dataset.collate):
        for i, n, c, v in zip(batch["index"].tolist(), *reader(batch["frames"].numpy())):
            s = samples[i]
            preds.append({"tracklet": s.path, "prediction": n, "confidence": round(c, 4), "uncertain": n < 0,
                          "votes": {str(k): round(x, 4) for k, x in v.items()},
                          "frames": [os.path.basename(s.frames[j]) for j in picks[i]],
                          **({"true": s.number} if s.number is not None else {})})
    meta = {"zero_shot": cfg.backbone, "package": config.RECOGNIZERS[cfg.backbone][3], "skipped": dict(skipped),
            "uncertain_below": 0.0, **summary(preds)}
    write(preds, meta, out, extra["format"])
    report(preds, meta, out)
    return preds, meta


def checked_options(cfg, extra, net, inputs) -> str:
    """One clear error for options that do not go together; returns --quantize as true, false or auto."""
    choice = quantize_choice(extra["quantize"])
    if isinstance(net, model_lib.Ensemble):  # INT8 ranges and the ONNX graph belong to one checkpoint
        if extra["export_onnx"] or choice == "true":
            raise config.ConfigError("--export_onnx and --quantize=true read one checkpoint, not an ensemble")
        choice = "false"
    if net_is_text(net) and choice == "true" and not extra["export_onnx"]:
        raise config.ConfigError("--quantize at prediction covers the from-scratch readers (a text reader's frozen "
                                 "trunk already runs in onnxruntime); for an INT8 graph: --export_onnx M.onnx --quantize")
    if extra["export_onnx"] and inputs:
        raise config.ConfigError(f"--export_onnx takes no INPUT (got {inputs}); predict in a separate run")
    if not extra["export_onnx"] and not inputs:
        raise config.ConfigError("no INPUT given: python predict.py --checkpoint CKPT FOLDER [FOLDER ...]")
    return choice


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    config.exit_on_help(__doc__, EXTRAS, argv)
    opts, inputs = split_argv(argv)
    if config.flag_given(opts, "zero_shot"):
        return zero_shot(opts, inputs)
    cfg, extra, ckpt, net = evaluate.load_for_eval(opts, EXTRAS)
    utils.setup_logging()
    cfg.max_steps = 0  # a smoke-test checkpoint's step limit must not drop tracklets here
    extra["quantize"] = checked_options(cfg, extra, net, inputs)
    if extra["export_onnx"]:
        return export(net, cfg, extra["export_onnx"], extra["quantize"] == "true")
    out = extra["out"] or os.path.join(cfg.results_dir, "predictions.json")
    check_out(out, extra["format"])
    preds, meta = predict(net, ckpt, cfg, extra, inputs)
    write(preds, meta, out, extra["format"])
    report(preds, meta, out)
    return preds, meta


def predict(net, ckpt, cfg, extra, inputs) -> tuple[list[dict], dict]:
    """The records of every tracklet of `inputs` and a summary (INT8 or float, as --quantize says)."""
    threshold = utils.uncertain_threshold(ckpt, extra["uncertain_below"])
    not_visible = float(ckpt.get("not_visible_threshold", 0.0))
    device = utils.device_of(cfg)
    int8 = wants_int8(extra["quantize"], ckpt, device)
    device = torch.device("cpu") if int8 else device  # quantized kernels are CPU ones
    dtype = utils.amp_dtype(device, cfg.amp)
    samples, store, skipped, scores = load_inputs(inputs, cfg)
    picks = pick_frames(samples, cfg, scores)
    net.to(device).eval()
    meta = {"checkpoint": extra["checkpoint"], "uncertain_below": threshold, "not_visible_below": not_visible,
            "skipped": dict(skipped), "int8_trunk": int8}
    if int8:
        q_net, ranges_from = evaluate.quantized(net, samples, store, picks, ckpt.get("int8_ranges"))
        log.info("trunk in INT8 (activation ranges from the %s; --quantize=false for the float model)", ranges_from)
        res = run(q_net, samples, store, picks, cfg, device, dtype, desc="predict int8")
        meta["quantization"] = {"float_mb": state_mb(net), "int8_mb": state_mb(q_net), "ranges_from": ranges_from}
        labelled = any(s.number is not None for s in samples)
        if labelled and extra["quantize"] == "true":  # asked for: what INT8 costs, on these very tracklets
            res_float = run(model_lib.fused_for_inference(net), samples, store, picks, cfg, device, dtype,
                            desc="predict float (for comparison)")
            float_summary = summary(rows(res_float, samples, picks, threshold, not_visible))
            meta["quantization"].update(compare(res_float, res), float_accuracy=float_summary.get("accuracy"))
    else:
        res = run(model_lib.fused_for_inference(net), samples, store, picks, cfg, device, dtype)
    preds = rows(res, samples, picks, threshold, not_visible)
    meta.update(summary(preds))
    if "float_accuracy" in meta.get("quantization", {}):
        meta["quantization"]["int8_accuracy"] = meta.get("accuracy")
    return preds, meta


def report(preds, meta, out):
    for p in preds[:20]:
        log.info("%-50s %3d  conf %.3f%s%s", p["tracklet"][-50:], p["prediction"], p["confidence"],
                 "  uncertain" if p["uncertain"] else "", f"  (true {p['true']})" if "true" in p else "")
    if len(preds) > 20:
        log.info("... %d more", len(preds) - 20)
    log.info("%d tracklets, %d uncertain (confidence < %.3f)", meta["num_tracklets"], meta["uncertain"],
             meta["uncertain_below"])
    if "accuracy" in meta:
        log.info("accuracy %.2f%% on %d labelled tracklets (%s when not uncertain)", meta["accuracy"],
                 meta["labelled"], "n/a" if meta["accuracy_when_certain"] is None else f"{meta['accuracy_when_certain']}%")
    if meta.get("not_visible", {}).get("tracklets") is not None:
        nv = meta["not_visible"]
        log.info("not visible (-1): %d tracklets, %d answered -1: precision %s%%, recall %s%%", nv["tracklets"],
                 nv["answered"], nv["precision"], nv["recall"])
    if "quantization" in meta:
        log.info("INT8: %s", ", ".join(f"{k} {v}" for k, v in meta["quantization"].items()))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
