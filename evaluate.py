"""Evaluate a checkpoint on numbers never seen in training, with every decoding rule side by side.

    python evaluate.py --checkpoint checkpoints/best_model.pth
    python evaluate.py --checkpoint checkpoints/best_model.pth --test_classes=44,46,68 --stability
    python evaluate.py --checkpoint ... --split=val          # the seen-number validation split instead
    python evaluate.py --checkpoint ... --split=train        # its training side, read as validation is (fit vs. gap)
    python evaluate.py --checkpoint ... --tune_blank         # ctc head: the blank penalty chosen on seen validation
    python evaluate.py --checkpoint ... --quantize           # the trunk in INT8 on the CPU (predict.py --quantize)
    python evaluate.py --checkpoint=a.pth,b.pth,c.pth       # an ensemble: the mean of their probabilities
    python evaluate.py --zero_shot                          # no checkpoint: the text recognizer as shipped
    python evaluate.py --predictions=preds.json --data_root=SPLIT   # score a SoccerNet-format predictions file

The model and data settings come from the checkpoint; any --field=value overrides them.
"""
import config

if __name__ == "__main__":  # --help before torch is imported, so it prints at once
    config.exit_on_help(__doc__, config.options("evaluate"))

import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import dataset
import decoding
import engine
import model as model_lib
import ocr
import plots
import utils
from config import EMPTY

log = utils.log
SPLIT_FILES = {"test": "evaluation_results.json", "val": "validation_results.json", "train": "training_split_results.json"}


# Frame heights (px, as stored) bounding the bands of accuracy_by_height. Broadcast crops of players are often
# well under 64 px tall; below ~64 px a number has only a handful of rows.
HEIGHT_EDGES = (48, 64, 80, 96, 112, 128)


def frame_height(sample) -> int:
    """Median height (px) of a tracklet's frames as stored, before any crop or resize: how many pixels the footage
    gave the player, hence the number. Reads image headers only."""
    heights = []
    for p in sample.frames:
        with Image.open(p) as im:
            heights.append(im.size[1])
    return int(np.median(heights))


def height_band(h: int, edges=HEIGHT_EDGES) -> str:
    k = int(np.searchsorted(edges, h, side="right"))
    return f"<{edges[0]}" if k == 0 else f">={edges[-1]}" if k == len(edges) else f"{edges[k - 1]}-{edges[k] - 1}"


def accuracy_by_height(samples, res, pred, edges=HEIGHT_EDGES) -> dict:
    """Accuracy per band of median frame height ({band: total, correct, accuracy}, bands in order, empty ones left
    out): whether the mistakes are the boxes that give the number too few pixels to be read."""
    bands = [height_band(frame_height(samples[i]), edges) for i in res["index"].tolist()]
    hits = (pred == res["number"]).tolist()
    order = [height_band(h, edges) for h in (0, *edges)]
    out = {}
    for band in order:
        sel = [hit for b, hit in zip(bands, hits) if b == band]
        if sel:
            out[band] = {"total": len(sel), "correct": sum(sel), "accuracy": round(100.0 * sum(sel) / len(sel), 2)}
    return out


# ---- temporal stability ----------------------------------------------------------------------------------

class FrameModeDataset(dataset.TrackletDataset):
    """'anchor': the anchor (or first) frame repeated; 'random_frame': one random frame repeated; an int k: the
    k-th of the frames the sequence reads, repeated (every frame read alone)."""

    def __init__(self, *args, mode, **kw):
        super().__init__(*args, **kw)
        self.mode = mode

    def frame_indices(self, i):
        s = self.samples[i]
        if isinstance(self.mode, int):
            j = super().frame_indices(i)[self.mode]
        elif self.mode == "anchor":
            j = s.anchor if s.anchor is not None else 0
        else:
            j = int(torch.randint(len(s.frames), (1,)))
        return [j] * self.seq_len


def _stability_row(number, conf, truth) -> dict:
    return {"accuracy": round(100.0 * (number == truth).float().mean().item(), 2),
            "mean_confidence": round(conf.mean().item(), 4),
            "confidence_variance": round(conf.var().item(), 6) if len(conf) > 1 else 0.0}


def single_frames(model, samples, store, cfg, device, dtype, kw) -> dict:
    """Every frame of the sequence read alone: 'best_frame' answers with the frame the model is surest of,
    'frame_vote' with the answer most frames give (ties: the larger summed confidence)."""
    probs, truth = [], None
    for k in range(cfg.seq_len):
        res = engine.predict_loader(model, engine.eval_loader(FrameModeDataset(samples, store, mode=k, **kw), cfg),
                                    device, dtype, cfg, desc=f"stability frame {k + 1}")
        probs.append(res["p_num"])
        truth = res["number"]
    (best, best_conf), (vote, vote_conf) = decoding.best_frame_and_vote(torch.stack(probs, 1))
    return {"best_frame": _stability_row(best, best_conf, truth), "frame_vote": _stability_row(vote, vote_conf, truth)}


def stability(model, data, cfg, device, dtype) -> dict:
    """The sequence against the anchor frame repeated, a random frame repeated, its surest frame and a vote of its
    frames (single_frames), on eval_samples' `data`."""
    samples, store, _, anchor, scores = data
    out = {}
    kw = dict(seq_len=cfg.seq_len, strategy=cfg.eval_sampling, use_anchor=anchor, scores=scores)
    for mode in ("sequence", "anchor", "random_frame"):
        ds = dataset.TrackletDataset(samples, store, **kw) if mode == "sequence" else \
            FrameModeDataset(samples, store, mode=mode, **kw)
        res = engine.predict_loader(model, engine.eval_loader(ds, cfg), device, dtype, cfg, desc=f"stability {mode}")
        metrics, decoded = decoding.score(res)
        conf = decoded[cfg.rule][3]
        out[mode] = {"accuracy": metrics[cfg.rule]["accuracy"], "mean_confidence": round(conf.mean().item(), 4),
                     "confidence_variance": round(conf.var().item(), 6) if len(conf) > 1 else 0.0}
    return {**out, **single_frames(model, samples, store, cfg, device, dtype, kw)}


# ---- the zero-shot baseline ------------------------------------------------------------------------------

def zero_shot_reads(cfg, ds) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """The shipped recognizer's vote (ocr.ZeroShot) on each tracklet of `ds`, reading the views a trained reader
    of the same config reads: (numbers, -1 where no view read one; the winner's share of the votes; the votes)."""
    reader = ocr.ZeroShot(cfg.backbone)
    utils.seed_everything(cfg.seed)
    numbers, conf, votes = [], [], []
    for batch in tqdm(engine.eval_loader(ds, cfg), desc="zero-shot", leave=False, dynamic_ncols=True):
        n, c, v = reader(batch["frames"].numpy())
        numbers += n
        conf += c
        votes += v
    return torch.tensor(numbers), torch.tensor(conf), votes


def zero_shot_config(argv, extras: dict):
    """The config a --zero_shot run reads with: the reader preset's views unless argv names another method, which
    must still use a text recognizer (evaluate.py and predict.py)."""
    cfg, extra = config.load(["--method=reader", *argv], extras=extras)
    if not cfg.is_ocr():
        raise config.ConfigError(f"--zero_shot reads with a text recognizer: --backbone must be one of "
                                 f"{list(config.RECOGNIZERS)}, got {cfg.backbone!r}")
    return cfg, extra


def zero_shot_main(argv) -> dict:
    """evaluate.py --zero_shot: no checkpoint, no training; the results JSON of a trained reader, rule 'vote'."""
    cfg, extra = zero_shot_config(argv, config.options("evaluate", zero_shot=True))
    if extra["split"] not in SPLIT_FILES:
        raise config.ConfigError(f"--split must be one of {', '.join(SPLIT_FILES)}")
    data = eval_samples(cfg, extra["split"])
    samples, skipped, anchor = data[0], data[2], data[3]
    pred, conf, votes = zero_shot_reads(cfg, tracklets(cfg, data))
    true = torch.tensor([s.number for s in samples])
    results = {
        "accuracy": round(100.0 * (pred == true).float().mean().item(), 2), "rule": "zero_shot_vote",
        "per_number": decoding.per_number(true, pred), "no_answer": int((pred < 0).sum()), "skipped": dict(skipped),
        "not_visible": decoding.not_visible_metrics(pred, true),
        "split": extra["split"], "anchor_frames_used": anchor, "numbers": sorted(set(true.tolist())),
        "num_tracklets": len(samples),
        "zero_shot": {"recognizer": cfg.backbone, "package": config.RECOGNIZERS[cfg.backbone][3],
                      "licence": config.RECOGNIZERS[cfg.backbone][4]},
        "by_frame_height": accuracy_by_height(samples, {"number": true, "index": torch.arange(len(samples))}, pred),
        "config": config.to_dict(cfg),
        "predictions": [{"path": s.path, "true": s.number, "pred": int(p), "confidence": round(float(c), 4),
                         "votes": {str(k): round(v, 4) for k, v in vo.items()}}
                        for s, p, c, vo in zip(samples, pred, conf, votes)],
    }
    out = extra["out"] or os.path.join(cfg.results_dir, "zero_shot_" + SPLIT_FILES[extra["split"]])
    utils.atomic_save(results, out)
    log.info("zero-shot %s (%s): %.2f%% of %d tracklets, %d with no number read", cfg.backbone, extra["split"],
             results["accuracy"], len(samples), results["no_answer"])
    log.info("per number: %s", ", ".join(f"{n}: {v['correct']}/{v['total']}" for n, v in results["per_number"].items()))
    log.info("wrote %s", out)
    return results


# ---- a predictions file, scored as the SoccerNet challenge scores it ---------------------------------------

MISSING = 100  # the answer of a tracklet the predictions file leaves out: never right, never -1


def read_predictions(path: str) -> dict:
    try:
        with open(path) as f:
            preds = json.load(f)
    except (OSError, ValueError) as err:
        raise config.ConfigError(f"--predictions {path!r} could not be read as JSON ({type(err).__name__})") from None
    if not isinstance(preds, dict):
        raise config.ConfigError(f"--predictions {path!r} must map tracklet -> number or -1 (predict.py "
                                 f"--format=soccernet writes one), got a {type(preds).__name__}")
    return {str(k): dataset.soccernet_number(v) for k, v in preds.items()}


def predictions_main(argv) -> dict:
    """evaluate.py --predictions=FILE --data_root=SPLIT: no model; every labelled tracklet of the split scored,
    -1 right only on a -1 tracklet, a tracklet the file leaves out wrong."""
    cfg, extra = config.load(argv, extras=config.options("evaluate"), doc=__doc__)
    if not config.is_soccernet(cfg.data_root):
        raise config.ConfigError("--predictions scores against a SoccerNet split: --data_root must be a folder "
                                 "holding images/ and <split>_gt.json")
    preds = read_predictions(extra["predictions"])
    labels = {k: n for k, v in dataset.soccernet_labels(cfg.data_root).items()
              if (n := dataset.soccernet_number(v)) is not None}
    true = torch.tensor(list(labels.values()))
    pred = torch.tensor([MISSING if preds.get(k) is None else preds[k] for k in labels])
    results = {"accuracy": decoding.pct(pred == true), "num_tracklets": len(labels),
               "missing": sum(preds.get(k) is None for k in labels), "unknown": len(set(preds) - set(labels)),
               "per_number": decoding.per_number(true, pred),
               "not_visible": decoding.not_visible_metrics(pred, true),
               "predictions": extra["predictions"], "data_root": cfg.data_root}
    out = extra["out"] or os.path.join(cfg.results_dir, "soccernet_scores.json")
    utils.atomic_save(results, out)
    log.info("%s: %.2f%% of %d tracklets (-1 included); %d missing from the file, %d not in the split",
             extra["predictions"], results["accuracy"], len(labels), results["missing"], results["unknown"])
    log.info("wrote %s", out)
    return results


# ---- main ------------------------------------------------------------------------------------------------

def load_for_eval(argv, extras):
    """Checkpoint config, overridden by whatever the user set on the command line. Several comma-separated
    checkpoints are read as one ensemble (model.Ensemble) under the first one's config and stored values."""
    cli, extra = config.load(argv, extras={"checkpoint": config.OPTIONS["checkpoint"][0], **extras}, doc=__doc__)
    members = [load_member(path, cli) for path in extra["checkpoint"].split(",") if path.strip()]
    if not members:
        raise config.ConfigError("--checkpoint: no checkpoint given")
    _, cfg, ckpt, net = members[0]
    if len(members) > 1:
        net = ensemble(members, extra.get("split", "test"))
    return cfg, extra, ckpt, net


def load_member(path, cli):
    ckpt = utils.load_checkpoint(path)
    net, cfg = model_lib.model_from_checkpoint(ckpt, path)
    for k in cli._explicit:
        setattr(cfg, k, getattr(cli, k))
    cfg._explicit = cli._explicit
    if "max_steps" not in cli._explicit:
        cfg.max_steps = 0  # a smoke-test checkpoint's step limit must not cut evaluation short
    net.blank_penalty = cfg.blank_penalty  # a decoding setting, so --blank_penalty may override the checkpoint's
    errors = cfg.validate()
    if errors:
        raise config.ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return path, cfg, ckpt, net


# what every member of an ensemble must share: the frames it reads, and (to be scored on a side of the training
# split, which must be unseen by all of them) the data and split it was trained on
ENSEMBLE_INPUT = ("img_size", "crop", "sharpen", "seq_len", "eval_sampling", "eval_anchor", "use_anchor")
ENSEMBLE_SPLIT = ("data_root", "synth_scale", "synth_seed", "train_classes", "val_split", "seed")


def ensemble(members, split: str):
    first = members[0][1]
    split_of = lambda c: [getattr(c, k) for k in ENSEMBLE_SPLIT]  # noqa: E731
    for path, cfg, _, _ in members:
        differ = [k for k in ENSEMBLE_INPUT if getattr(cfg, k) != getattr(first, k)]
        if differ:
            raise config.ConfigError(f"ensemble: {path} reads other frames than {members[0][0]} ({', '.join(differ)})")
        if split != "test" and split_of(cfg) != split_of(first):
            raise config.ConfigError(f"ensemble: {path} was trained on another train/val split than {members[0][0]}, "
                                     f"so --split={split} would score tracklets one of them trained on; "
                                     "use --split=test")
    log.info("ensemble of %d checkpoints: the mean of their probabilities", len(members))
    return model_lib.Ensemble([m[3] for m in members])


def eval_samples(cfg, split):
    """(samples, store, skipped, whether anchors are used, frame legibility or None) of a split. The test split
    of a SoccerNet root is every tracklet it holds, -1 included, unless --test_classes says otherwise."""
    if split != "test":  # a side of the split train.py made (same numbers, fraction, seed)
        samples, store, skipped = dataset.load_samples(cfg, dataset.training_numbers(cfg))
        train_side, val_side = dataset.train_val(samples, cfg)
        samples, anchor = (val_side if split == "val" else train_side), cfg.use_anchor
    else:
        whole = config.is_soccernet(cfg.data_root) and "test_classes" not in getattr(cfg, "_explicit", ())
        samples, store, skipped = dataset.load_samples(cfg, None if whole else cfg.test_classes)
        anchor = cfg.eval_anchor
    scores = dataset.frame_legibility(samples, cfg, cfg.cache_dir) if cfg.eval_sampling == "legible" else None
    return samples, store, skipped, anchor, scores


def tracklets(cfg, data) -> dataset.TrackletDataset:
    """The evaluation dataset of eval_samples' `data`."""
    samples, store, _, anchor, scores = data
    return dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.eval_sampling, anchor, scores=scores)


def run_split(model, cfg, split, device, dtype, data=None):
    """Predictions on a split and its eval_samples (`data`, when the caller has them already)."""
    data = data or eval_samples(cfg, split)
    utils.seed_everything(cfg.seed)
    loader = engine.eval_loader(tracklets(cfg, data), cfg)
    return engine.predict_loader(model, loader, device, dtype, cfg, desc=f"evaluate {split}"), data


def tune_blank_penalty(model, cfg, extra, res, device, dtype) -> dict:
    """The ctc head's blank penalty chosen on seen-number validation only, never on the numbers being tested;
    returns `res` decoded with it."""
    val = res if extra["split"] == "val" else run_split(model, cfg, "val", device, dtype)[0]
    cfg.blank_penalty = model.blank_penalty = decoding.tune_blank(val)
    log.info("blank penalty %.1f (tuned on seen-number validation)", cfg.blank_penalty)
    return decoding.with_blank_penalty(res, cfg.blank_penalty)


def quantized(net, samples, store, picks=None, ranges=None):
    """The model with its trunk in INT8 (model.int8_trunk), with the activation ranges a checkpoint stores
    (`ranges`, observed on training frames), else calibrated on frames of the tracklets to be read."""
    try:
        if ranges:
            try:
                return model_lib.int8_trunk(net, ranges=ranges), "checkpoint"
            except RuntimeError as e:  # another engine (e.g. an x86 checkpoint on ARM): calibrate here instead
                log.warning("INT8: %s; calibrating on the input instead", e)
        return model_lib.int8_trunk(net, dataset.calibration_frames(samples, store, picks)), "input"
    except (ImportError, RuntimeError) as e:
        raise config.ConfigError(f"--quantize: {e}") from None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if config.flag_given(argv, "zero_shot") or any(a.startswith("--predictions") for a in argv):
        utils.setup_logging()
        return zero_shot_main(argv) if config.flag_given(argv, "zero_shot") else predictions_main(argv)
    cfg, extra, ckpt, model = load_for_eval(argv, config.options("evaluate"))
    utils.setup_logging()
    if extra["split"] not in SPLIT_FILES:
        raise config.ConfigError(f"--split must be one of {', '.join(SPLIT_FILES)}")
    if extra["tune_blank"] and cfg.head != "ctc":
        raise config.ConfigError(f"--tune_blank needs a checkpoint with the ctc head; this one has head={cfg.head}")
    if isinstance(model, model_lib.Ensemble) and (extra["tune_blank"] or extra["quantize"]):
        raise config.ConfigError("--tune_blank and --quantize read one checkpoint, not an ensemble")
    device = torch.device("cpu") if extra["quantize"] else utils.device_of(cfg)  # quantized kernels are CPU ones
    dtype = utils.amp_dtype(device, cfg.amp)
    model.to(device).eval()
    data = eval_samples(cfg, extra["split"])
    calibration = None
    if extra["quantize"]:  # the checkpoint's ranges, else calibrated on the frames of the split (no labels used)
        model, calibration = quantized(model, *data[:2], ranges=ckpt.get("int8_ranges"))
    res, data = run_split(model, cfg, extra["split"], device, dtype, data)
    samples, store, skipped, anchor, _ = data
    if extra["tune_blank"]:
        res = tune_blank_penalty(model, cfg, extra, res, device, dtype)
    seen = res["number"] >= 0
    decoded = decoding.decode_all(res["p_tens"], res["p_units"])
    # the rules' digit reading is scored on the tracklets that show a number
    rules = decoding.score(decoding.subset(res, seen), {k: tuple(v[seen] for v in d) for k, d in decoded.items()})[0]
    t, u, rule_num, conf = decoded[cfg.rule]
    nv_threshold = float(ckpt.get("not_visible_threshold", 0.0))
    num = decoding.with_not_visible(rule_num, res["p_visible"], nv_threshold)
    results = {
        "accuracy": decoding.pct(num == res["number"]), "rule": cfg.rule,
        "per_number": decoding.per_number(res["number"], num),
        "not_visible": {"threshold": nv_threshold, **decoding.not_visible_metrics(num, res["number"])},
        "rules": rules, "skipped": dict(skipped), "split": extra["split"], "anchor_frames_used": anchor,
        "int8_trunk": extra["quantize"], "int8_ranges_from": calibration,
        "numbers": sorted({s.number for s in samples}), "num_tracklets": len(samples),
        "checkpoint": {"path": extra["checkpoint"], "epoch": ckpt.get("epoch", -1) + 1,
                       "best_val_acc": ckpt.get("best_acc"),
                       "members": len(model.members) if isinstance(model, model_lib.Ensemble) else 1},
        "by_frame_height": accuracy_by_height(samples, res, num),
        "digit_coverage": {str(k): v for k, v in cfg.digit_coverage().items()},
        "config": config.to_dict(cfg),
        "predictions": [{"path": samples[i].path, "true": int(res["number"][k]), "pred": int(num[k]),
                         "confidence": round(float(conf[k]), 4), "p_visible": round(float(res["p_visible"][k]), 4),
                         "tens_confidence": round(float(res["p_tens"][k, t[k]]), 4),
                         "units_confidence": round(float(res["p_units"][k, u[k]]), 4),
                         "p_empty": round(float(res["p_tens"][k, EMPTY]), 4)}
                        for k, i in enumerate(res["index"].tolist())],
    }
    threshold = utils.uncertain_threshold(ckpt, extra["uncertain_below"])
    results["uncertain"] = {"threshold": threshold, "flagged": int((res["p_num"].max(1).values < threshold).sum())}
    if extra["stability"]:
        results["stability"] = stability(model, data, cfg, device, dtype)
    out = extra["out"] or os.path.join(cfg.results_dir, SPLIT_FILES[extra["split"]])
    utils.atomic_save(results, out)
    plots.plot_confusion(decoding.subset(res, seen), [d[seen] for d in decoded[cfg.rule]],
                         os.path.join(cfg.results_dir, "confusion_matrices", "confusion_matrices.png"))
    plots.plot_per_number(results["per_number"], os.path.join(cfg.results_dir, "per_class_accuracy.png"),
                    f"{extra['split']} accuracy per number ({cfg.rule})")
    gallery = os.path.join(cfg.results_dir, "worst_mistakes.png")
    plots.plot_mistakes(res, num, conf, tracklets(cfg, data), gallery)
    print_summary(results)
    log.info("wrote %s", out)
    return results


def print_summary(results):
    log.info("%-15s %8s %8s %8s %8s %8s", "rule", "number%", "tens%", "units%", "conf", "changed")
    for name, m in results["rules"].items():
        log.info("%-15s %8.2f %8.2f %8.2f %8.3f %8d", name, m["accuracy"], m["tens_accuracy"], m["units_accuracy"],
                 m["mean_confidence"], m["changed_vs_argmax"])
    per = results["per_number"]
    log.info("per number (%s): %s", results["rule"], ", ".join(f"{n}: {v['correct']}/{v['total']}" for n, v in per.items()))
    log.info("by frame height (px): %s", ", ".join(f"{b}: {v['correct']}/{v['total']} ({v['accuracy']:.0f}%)"
                                                  for b, v in results.get("by_frame_height", {}).items()))
    if "uncertain" in results:
        log.info("uncertain (confidence < %.3f): %d of %d", results["uncertain"]["threshold"],
                 results["uncertain"]["flagged"], results["num_tracklets"])
    nv = results.get("not_visible", {})
    if nv.get("tracklets") or nv.get("answered"):
        log.info("not visible (-1): %d tracklets, %d answered -1 (P(visible) < %.3f): precision %s%%, recall %s%%",
                 nv["tracklets"], nv["answered"], nv["threshold"], nv["precision"], nv["recall"])
    if "stability" in results:
        for mode, m in results["stability"].items():
            log.info("stability %-13s acc %6.2f  conf %.3f  var %.4f", mode, m["accuracy"], m["mean_confidence"],
                     m["confidence_variance"])


if __name__ == "__main__":
    main()
