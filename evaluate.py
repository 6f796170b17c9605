"""Evaluate a checkpoint on numbers never seen in training, with every decoding rule side by side.

    python evaluate.py --checkpoint checkpoints/best_model.pth
    python evaluate.py --checkpoint checkpoints/best_model.pth --test_classes=44,46,68 --stability
    python evaluate.py --checkpoint ... --split=val          # the seen-number validation split instead
    python evaluate.py --checkpoint ... --split=train        # its training side, read as validation is (fit vs. gap)
    python evaluate.py --checkpoint ... --tune_tau           # tau and the split threshold re-tuned on seen validation
    python evaluate.py --checkpoint ... --tune_blank         # ctc head: the blank penalty chosen on seen validation
    python evaluate.py --checkpoint ... --quantize           # the trunk in INT8 on the CPU (predict.py --quantize)
    python evaluate.py --checkpoint=a.pth,b.pth,c.pth       # an ensemble: the mean of their probabilities
    python evaluate.py --zero_shot                          # no checkpoint: the text recognizer as shipped

The model and data settings come from the checkpoint; any --field=value overrides them.
"""
import os
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

import config
import dataset
import model as model_lib
import ocr
import plots
import train
import utils
from dataset import EMPTY

log = utils.log
RULES = ("argmax", "anti_empty", "confidence", "same_digit", "vote", "logit_adjusted")
SPLIT_FILES = {"test": "evaluation_results.json", "val": "validation_results.json", "train": "training_split_results.json"}


# ---- decoding rules: (p_tens [N, 11], p_units [N, 10]) -> (tens [N], units [N]) -------------------------

def rule_argmax(p_tens, p_units):
    return p_tens.argmax(1), p_units.argmax(1)


def best_nonempty(p_tens):
    """Best real tens digit (1..9)."""
    return p_tens[:, 1:10].argmax(1) + 1


def rule_anti_empty(p_tens, p_units, threshold=0.55):
    """If the tens head says empty with probability below `threshold`, take the best non-empty tens digit."""
    t, u = rule_argmax(p_tens, p_units)
    weak_empty = (t == EMPTY) & (p_tens[:, EMPTY] < threshold)
    return torch.where(weak_empty, best_nonempty(p_tens), t), u


def rule_confidence(p_tens, p_units, conf_tens=0.10, conf_units=0.50):
    """Two digits only if tens is a digit with P > conf_tens and P(units) > conf_units; else units alone."""
    t, u = rule_argmax(p_tens, p_units)
    pt = p_tens.gather(1, t[:, None]).squeeze(1)
    pu = p_units.gather(1, u[:, None]).squeeze(1)
    two = (t != EMPTY) & (pt > conf_tens) & (pu > conf_units)
    return torch.where(two, t, torch.full_like(t, EMPTY)), u


def rule_same_digit(p_tens, p_units, threshold=0.7):
    """A doubled digit (e.g. 88) with P(tens) < threshold takes the second-best tens class instead."""
    t, u = rule_argmax(p_tens, p_units)
    pt = p_tens.gather(1, t[:, None]).squeeze(1)
    second = p_tens.topk(2, dim=1).indices[:, 1]
    return torch.where((t == u) & (pt < threshold), second, t), u


def rule_vote(p_tens, p_units, thresholds=(0.3, 0.4, 0.5, 0.6)):
    """Majority vote of the anti-empty rule over several thresholds; ties go to the more probable number."""
    votes = torch.stack([dataset.reconstruct(*rule_anti_empty(p_tens, p_units, th)) for th in thresholds], 1)
    out = torch.empty(len(votes), dtype=torch.long)
    for i, row in enumerate(votes.tolist()):
        counts = Counter(row)
        top = max(counts.values())
        tied = [n for n in counts if counts[n] == top]
        out[i] = max(tied, key=lambda n: number_prob(p_tens[i], p_units[i], n))
    return dataset.decompose(out)


def rule_logit_adjusted(p_tens, p_units, log_prior_tens, tau=1.0):
    """Post-hoc logit adjustment (Menon et al. 2021): argmax of log p(tens) - tau * log prior(tens)."""
    adj = p_tens.clamp_min(1e-12).log() - tau * log_prior_tens
    return adj.argmax(1), p_units.argmax(1)


def rule_split(p_tens, p_units, p_left, p_right, threshold=0.5):
    """The split reader (--split_views): two digits read from the left and the right half of the crop when both
    halves hold a whole digit (the left one 1..9) and P(left) x P(right) > threshold, else the whole-crop argmax.
    p_left, p_right: [N, 11], index NO_DIGIT = a fragment. Returns tens, units and the answer's confidence."""
    (pl, a), (pr, b) = p_left.max(1), p_right.max(1)
    two = (a >= 1) & (a <= 9) & (b <= 9) & (pl * pr > threshold)
    return _halves_or_argmax(p_tens, p_units, two, a, b, pl * pr)


def rule_halves(p_tens, p_units, p_left, p_right):
    """Where the whole crop's argmax has a tens digit, take both digits from the crop's halves instead (the best
    1..9 of the left half, the best 0..9 of the right): the whole crop decides one digit or two, the halves say
    which, each without seeing its neighbour. Returns tens, units and the answer's confidence."""
    (pl, a), (pr, b) = p_left[:, 1:10].max(1), p_right[:, :10].max(1)
    return _halves_or_argmax(p_tens, p_units, p_tens.argmax(1) != EMPTY, a + 1, b, pl * pr)


def _halves_or_argmax(p_tens, p_units, two, a, b, conf_two):
    """Digits (a, b) with confidence conf_two where `two`, the whole crop's argmax and its confidence elsewhere."""
    t, u = rule_argmax(p_tens, p_units)
    conf = torch.where(two, conf_two, digit_confidence(p_tens, p_units, t, u))
    return torch.where(two, a, t), torch.where(two, b, u), conf


def digit_confidence(p_tens, p_units, t, u):
    """P(tens = t) x P(units = u), per row."""
    return p_tens.gather(1, t[:, None]).squeeze(1) * p_units.gather(1, u[:, None]).squeeze(1)


def number_prob(p_tens, p_units, n: int) -> float:
    t, u = dataset.decompose(n)
    return float(p_tens[t] * p_units[u])


def decode_all(p_tens, p_units, cfg, log_prior_tens, halves=None) -> dict:
    """Every rule at once: rule -> (tens, units, number, confidence). `split` and `halves` only with the halves'
    probabilities (p_left, p_right)."""
    fns = {
        "argmax": lambda: rule_argmax(p_tens, p_units),
        "anti_empty": lambda: rule_anti_empty(p_tens, p_units, cfg.anti_empty_threshold),
        "confidence": lambda: rule_confidence(p_tens, p_units, cfg.conf_tens, cfg.conf_units),
        "same_digit": lambda: rule_same_digit(p_tens, p_units, cfg.same_digit_threshold),
        "vote": lambda: rule_vote(p_tens, p_units, cfg.vote_thresholds),
        "logit_adjusted": lambda: rule_logit_adjusted(p_tens, p_units, log_prior_tens, cfg.logit_tau),
    }
    if halves is not None:
        fns |= half_rules(p_tens, p_units, halves, cfg)
    out = {}
    for name, fn in fns.items():
        t, u, *conf = fn()
        conf = conf[0] if conf else digit_confidence(p_tens, p_units, t, u)
        out[name] = (t, u, dataset.reconstruct(t, u), conf)
    return out


def half_rules(p_tens, p_units, halves, cfg) -> dict:
    """The rules that read the crop's halves: name -> () -> (tens, units, confidence)."""
    return {"split": lambda: rule_split(p_tens, p_units, *halves, cfg.split_threshold),
            "halves": lambda: rule_halves(p_tens, p_units, *halves)}


def halves_of(res):
    return (res["p_left"], res["p_right"]) if "p_left" in res else None


def answers(res, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(number, confidence) per tracklet: the split or halves rule's when set to use it (--rule, --method=split),
    else the most probable number."""
    if cfg.rule in ("split", "halves") and "p_left" in res:
        t, u, conf = half_rules(res["p_tens"], res["p_units"], halves_of(res), cfg)[cfg.rule]()
        return dataset.reconstruct(t, u), conf
    conf, number = res["p_num"].max(1)
    return number, conf


def tune(res, decode, grid) -> float:
    """The value in `grid` whose decoding (value -> tens, units, ...) has the best mean per-number accuracy on `res`
    (seen validation, where the few two-digit numbers count as much as the many single digits). Ties go to the
    earlier value: list the grid from the mildest change to the decoding."""
    def balanced(v):
        pred = dataset.reconstruct(*decode(v)[:2])
        return np.mean([m["accuracy"] for m in per_number(res["number"], pred).values()])
    return float(max(grid, key=balanced))


def tune_tau(res, train_counts, taus=tuple(np.round(np.arange(0, 2.01, 0.25), 2))) -> float:
    prior = tens_log_prior(train_counts)
    return tune(res, lambda tau: rule_logit_adjusted(res["p_tens"], res["p_units"], prior, tau), taus)


def tune_split_threshold(res, grid=tuple(np.round(np.arange(1.0, -0.01, -0.1), 1))) -> float:
    return tune(res, lambda th: rule_split(res["p_tens"], res["p_units"], *halves_of(res), th), grid)


BLANK_PENALTIES = tuple(np.round(np.arange(0, 3.01, 0.5), 1))


def with_blank_penalty(res, penalty: float) -> dict:
    """Predictions of a ctc checkpoint decoded again from their kept column log-probs with another blank penalty
    (model.ctc_mixture); the columns themselves never carry one."""
    number = model_lib.ctc_mixture(res["columns"], res["attention"], penalty)
    p_num, p_tens, p_units = model_lib.probabilities({"number": number})
    return {**res, "p_num": p_num, "p_tens": p_tens, "p_units": p_units, "logits": number}


def tune_blank(res, grid=BLANK_PENALTIES) -> float:
    def decode(penalty):
        r = with_blank_penalty(res, penalty)
        return rule_argmax(r["p_tens"], r["p_units"])
    return tune(res, decode, grid)


def tens_log_prior(train_counts: dict) -> torch.Tensor:
    """log prior of the tens classes (index 10 = empty) from the training counts stored in the checkpoint."""
    labels = [dataset.decompose(int(n))[0] for n, c in train_counts.items() for _ in range(int(c))]
    return train.log_prior(labels, 11) if labels else torch.zeros(11)


# ---- metrics ---------------------------------------------------------------------------------------------

def rule_metrics(tens, units, number, conf, res, baseline_number) -> dict:
    true_n, true_t, true_u = res["number"], res["tens"], res["units"]
    pct = lambda b: round(100.0 * b.float().mean().item(), 2) if len(b) else 0.0  # noqa: E731
    return {"accuracy": pct(number == true_n), "tens_accuracy": pct(tens == true_t),
            "units_accuracy": pct(units == true_u), "both_digits_accuracy": pct((tens == true_t) & (units == true_u)),
            "mean_confidence": round(conf.mean().item(), 4) if len(conf) else 0.0,
            "changed_vs_argmax": int((number != baseline_number).sum()),
            "per_number": per_number(true_n, number)}


def per_number(true_n, pred_n) -> dict:
    out = {}
    for n in sorted(set(true_n.tolist())):
        sel = true_n == n
        correct = int((pred_n[sel] == n).sum())
        out[str(n)] = {"total": int(sel.sum()), "correct": correct, "accuracy": round(100.0 * correct / int(sel.sum()), 2)}
    return out


def score(res, cfg, train_counts) -> dict:
    decoded = decode_all(res["p_tens"], res["p_units"], cfg, tens_log_prior(train_counts), halves_of(res))
    base = decoded["argmax"][2]
    return {name: rule_metrics(*d, res, base) for name, d in decoded.items()}, decoded


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
        res = train.predict_loader(model, _loader(FrameModeDataset(samples, store, mode=k, **kw), cfg), device,
                                   dtype, cfg, desc=f"stability frame {k + 1}")
        probs.append(res["p_num"])
        truth = res["number"]
    (best, best_conf), (vote, vote_conf) = best_frame_and_vote(torch.stack(probs, 1))
    return {"best_frame": _stability_row(best, best_conf, truth), "frame_vote": _stability_row(vote, vote_conf, truth)}


def best_frame_and_vote(p):
    """Per-frame probabilities [N, T, 100] -> ((answer of the surest frame, its confidence), (the answer most
    frames give, ties to the larger summed confidence; the mean confidence of its frames))."""
    conf, answer = p.max(2)
    rows = torch.arange(len(p))
    best = conf.argmax(1)
    count = torch.zeros(len(p), 100).scatter_add_(1, answer, torch.ones_like(conf))
    total = torch.zeros(len(p), 100).scatter_add_(1, answer, conf)
    vote = (count + total / (conf.shape[1] + 1)).argmax(1)  # a summed confidence < 1 vote: it only breaks ties
    return (answer[rows, best], conf[rows, best]), (vote, total[rows, vote] / count[rows, vote])


def stability(model, samples, store, cfg, device, dtype, train_counts) -> dict:
    out = {}
    kw = dict(seq_len=cfg.seq_len, strategy=cfg.eval_sampling, use_anchor=cfg.eval_anchor)
    for mode in ("sequence", "anchor", "random_frame"):
        ds = dataset.TrackletDataset(samples, store, **kw) if mode == "sequence" else \
            FrameModeDataset(samples, store, mode=mode, **kw)
        res = train.predict_loader(model, _loader(ds, cfg), device, dtype, cfg, desc=f"stability {mode}")
        metrics, decoded = score(res, cfg, train_counts)
        conf = decoded[cfg.rule][3]
        out[mode] = {"accuracy": metrics[cfg.rule]["accuracy"], "mean_confidence": round(conf.mean().item(), 4),
                     "confidence_variance": round(conf.var().item(), 6) if len(conf) > 1 else 0.0}
    return {**out, **single_frames(model, samples, store, cfg, device, dtype, kw)}


def _loader(ds, cfg):
    return DataLoader(ds, batch_size=max(cfg.batch_size, 32), shuffle=False, collate_fn=dataset.collate,
                      num_workers=cfg.num_workers)


# ---- not-visible tracklets and the worst mistakes -------------------------------------------------------

def score_not_visible(model, cfg, device, dtype, threshold: float) -> dict | None:
    """SoccerNet's -1 (number not visible) tracklets: right when the model abstains, i.e. its confidence (top
    probability over 0..99, as predict.py's `uncertain`) is below `threshold`. None for other layouts."""
    root = utils.data_root(cfg)
    if not dataset.is_soccernet(root):
        return None
    samples, _ = dataset.crawl(root, [dataset.NOT_VISIBLE])  # its other skips were counted by the main crawl
    if not samples:
        return None
    store = dataset.FrameStore.of(samples, cfg, cfg.cache_dir)
    unreadable = Counter()
    samples = store.drop_unreadable(samples, unreadable)
    for reason, count in sorted(unreadable.items()):
        log.warning("not-visible tracklets: skipped %d x %s", count, reason)
    out = {"total": len(samples), "abstained": 0, "accuracy": 0.0, "threshold": threshold, "skipped": dict(unreadable)}
    if samples:
        ds = dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.eval_sampling, cfg.eval_anchor)
        res = train.predict_loader(model, _loader(ds, cfg), device, dtype, cfg, desc="evaluate not visible")
        out["abstained"] = int((res["p_num"].max(1).values < threshold).sum())
        out["accuracy"] = round(100.0 * out["abstained"] / len(samples), 2)
    return out


# ---- the zero-shot baseline ------------------------------------------------------------------------------

def zero_shot_reads(cfg, samples, store, anchor) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """The shipped recognizer's vote (ocr.ZeroShot) on each tracklet, reading the views a trained reader of the
    same config reads: (numbers, -1 where no view read one; the winner's share of the votes; the votes)."""
    reader = ocr.ZeroShot(cfg.backbone)
    ds = dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.eval_sampling, anchor)
    utils.seed_everything(cfg.seed)
    numbers, conf, votes = [], [], []
    for batch in tqdm(_loader(ds, cfg), desc="zero-shot", leave=False, dynamic_ncols=True):
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
    cfg, extra = zero_shot_config(argv, {"zero_shot": True, "out": "", "split": "test"})
    if extra["split"] not in SPLIT_FILES:
        raise config.ConfigError(f"--split must be one of {', '.join(SPLIT_FILES)}")
    samples, store, skipped, anchor = eval_samples(cfg, extra["split"])
    pred, conf, votes = zero_shot_reads(cfg, samples, store, anchor)
    true = torch.tensor([s.number for s in samples])
    results = {
        "accuracy": round(100.0 * (pred == true).float().mean().item(), 2), "rule": "zero_shot_vote",
        "per_number": per_number(true, pred), "no_answer": int((pred < 0).sum()), "skipped": dict(skipped),
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


# ---- main ------------------------------------------------------------------------------------------------

def load_for_eval(argv, extras):
    """Checkpoint config, overridden by whatever the user set on the command line. Several comma-separated
    checkpoints are read as one ensemble (model.Ensemble) under the first one's config and stored values."""
    cli, extra = config.load(argv, extras={"checkpoint": "checkpoints/best_model.pth", **extras})
    members = [load_member(path, cli) for path in extra["checkpoint"].split(",") if path.strip()]
    if not members:
        raise config.ConfigError("--checkpoint: no checkpoint given")
    _, cfg, ckpt, net = members[0]
    if len(members) > 1:
        net = ensemble(members, extra.get("split", "test"))
    return cfg, extra, ckpt, net


def load_member(path, cli):
    ckpt = utils.load_checkpoint(path)
    net, cfg = utils.model_from_checkpoint(ckpt, path)
    for k in cli._explicit:
        setattr(cfg, k, getattr(cli, k))
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
ENSEMBLE_SPLIT = ("data_root", "synth_scale", "synth_seed", "train_classes", "val_split", "split_by")


def ensemble(members, split: str):
    first = members[0][1]
    split_of = lambda c: [getattr(c, k) for k in ENSEMBLE_SPLIT] + [c.resolved_split_seed()]  # noqa: E731
    for path, cfg, _, _ in members:
        differ = [k for k in ENSEMBLE_INPUT if getattr(cfg, k) != getattr(first, k)]
        if differ:
            raise config.ConfigError(f"ensemble: {path} reads other frames than {members[0][0]} ({', '.join(differ)})")
        if cfg.reads_halves():
            raise config.ConfigError(f"ensemble: {path} reads the crop's halves (--split_views); not in an ensemble")
        if split != "test" and split_of(cfg) != split_of(first):
            raise config.ConfigError(f"ensemble: {path} was trained on another train/val split than {members[0][0]}, "
                                     f"so --split={split} would score tracklets one of them trained on; train the "
                                     "members with one --split_seed, or use --split=test")
    log.info("ensemble of %d checkpoints: the mean of their probabilities", len(members))
    return model_lib.Ensemble([m[3] for m in members])


def eval_samples(cfg, split):
    if split != "test":  # a side of the split train.py made (same numbers, fraction, seed)
        samples, store, skipped = utils.load_samples(cfg, cfg.train_classes)
        train_side, val_side = dataset.train_val(samples, cfg)
        return (val_side if split == "val" else train_side), store, skipped, cfg.use_anchor
    samples, store, skipped = utils.load_samples(cfg, cfg.test_classes)
    return samples, store, skipped, cfg.eval_anchor


def run_split(model, cfg, split, device, dtype, data=None):
    """Predictions on a split; `data`: its eval_samples, when the caller has them already."""
    samples, store, skipped, anchor = data or eval_samples(cfg, split)
    ds = dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.eval_sampling, anchor)
    utils.seed_everything(cfg.seed)
    return train.predict_loader(model, _loader(ds, cfg), device, dtype, cfg, desc=f"evaluate {split}"), \
        samples, store, skipped, anchor


def tune_decoding(model, cfg, extra, res, train_counts, device, dtype) -> dict:
    """Set the decoding knobs asked for (blank penalty first, then tau and the split threshold, on the penalised
    reading) on seen-number validation only, never on the numbers being tested; `res` decoded with them."""
    val = res if extra["split"] == "val" else run_split(model, cfg, "val", device, dtype)[0]
    if extra["tune_blank"]:
        cfg.blank_penalty = model.blank_penalty = tune_blank(val)
        val, res = with_blank_penalty(val, cfg.blank_penalty), with_blank_penalty(res, cfg.blank_penalty)
        log.info("blank penalty %.1f (tuned on seen-number validation)", cfg.blank_penalty)
    if extra["tune_tau"]:
        cfg.logit_tau = tune_tau(val, train_counts)
        log.info("logit adjustment tau %.2f (tuned on seen-number validation)", cfg.logit_tau)
        if halves_of(val) is not None:
            cfg.split_threshold = tune_split_threshold(val)
            log.info("split threshold %.1f (tuned on seen-number validation)", cfg.split_threshold)
    return res


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
    if config.flag_given(argv, "zero_shot"):
        utils.setup_logging()
        return zero_shot_main(argv)
    cfg, extra, ckpt, model = load_for_eval(argv, {"out": "", "stability": False, "split": "test", "tune_tau": False,
                                                   "tune_blank": False, "uncertain_below": -1.0, "quantize": False})
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
    train_counts = ckpt.get("train_counts", {})
    res, samples, store, skipped, anchor = run_split(model, cfg, extra["split"], device, dtype, data)
    if extra["tune_tau"] or extra["tune_blank"]:
        res = tune_decoding(model, cfg, extra, res, train_counts, device, dtype)
    rules, decoded = score(res, cfg, train_counts)
    t, u, num, conf = decoded[cfg.rule]
    results = {
        "accuracy": rules[cfg.rule]["accuracy"], "rule": cfg.rule, "per_number": rules[cfg.rule]["per_number"],
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
                         "confidence": round(float(conf[k]), 4),
                         "tens_confidence": round(float(res["p_tens"][k, t[k]]), 4),
                         "units_confidence": round(float(res["p_units"][k, u[k]]), 4),
                         "p_empty": round(float(res["p_tens"][k, EMPTY]), 4)}
                        for k, i in enumerate(res["index"].tolist())],
    }
    threshold = utils.uncertain_threshold(ckpt, extra["uncertain_below"])
    results["uncertain"] = {"threshold": threshold, "flagged": int((res["p_num"].max(1).values < threshold).sum())}
    not_visible = score_not_visible(model, cfg, device, dtype, threshold) if extra["split"] == "test" else None
    if not_visible is not None:
        results["not_visible"] = not_visible
    if extra["stability"]:
        results["stability"] = stability(model, samples, store, cfg, device, dtype, train_counts)
    out = extra["out"] or os.path.join(cfg.results_dir, SPLIT_FILES[extra["split"]])
    utils.atomic_save(results, out)
    plots.plot_confusion(res, decoded[cfg.rule], os.path.join(cfg.results_dir, "confusion_matrices", "confusion_matrices.png"))
    plots.plot_per_number(results["per_number"], os.path.join(cfg.results_dir, "per_class_accuracy.png"),
                    f"{extra['split']} accuracy per number ({cfg.rule})")
    gallery = os.path.join(cfg.results_dir, "worst_mistakes.png")
    plots.plot_mistakes(res, num, conf, dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.eval_sampling, anchor), gallery)
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
    if "not_visible" in results:
        nv = results["not_visible"]
        log.info("not visible (-1): %d of %d abstained (%.2f%%)", nv["abstained"], nv["total"], nv["accuracy"])
    if "stability" in results:
        for mode, m in results["stability"].items():
            log.info("stability %-13s acc %6.2f  conf %.3f  var %.4f", mode, m["accuracy"], m["mean_confidence"],
                     m["confidence_variance"])


if __name__ == "__main__":
    main()
