"""From probabilities to numbers: the decoding rules, the CTC blank penalty, and the metrics every script reports.

Digit heads give p_tens [N, 11] (index 10 = empty) and p_units [N, 10]; a rule turns them into (tens, units).
The thresholds are the original system's (SPEC), kept fixed: the rules are reported side by side, not tuned.
"""
from collections import Counter

import numpy as np
import torch

import dataset
import model as model_lib
from config import EMPTY

ANTI_EMPTY = 0.55             # anti_empty: a tens 'empty' less sure than this gives way to the best digit
CONF_TENS, CONF_UNITS = 0.10, 0.50  # confidence: two digits only when both heads are this sure
SAME_DIGIT = 0.7              # same_digit: a doubled digit less sure than this takes the second-best tens
VOTE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)  # vote: anti_empty at each of these, majority wins
BLANK_PENALTIES = tuple(np.round(np.arange(0, 3.01, 0.5), 1))  # the grid --tune_blank searches


def rule_argmax(p_tens, p_units):
    return p_tens.argmax(1), p_units.argmax(1)


def best_nonempty(p_tens):
    """Best real tens digit (1..9)."""
    return p_tens[:, 1:10].argmax(1) + 1


def rule_anti_empty(p_tens, p_units, threshold=ANTI_EMPTY):
    """If the tens head says empty with probability below `threshold`, take the best non-empty tens digit."""
    t, u = rule_argmax(p_tens, p_units)
    weak_empty = (t == EMPTY) & (p_tens[:, EMPTY] < threshold)
    return torch.where(weak_empty, best_nonempty(p_tens), t), u


def rule_confidence(p_tens, p_units, conf_tens=CONF_TENS, conf_units=CONF_UNITS):
    """Two digits only if tens is a digit with P > conf_tens and P(units) > conf_units; else units alone."""
    t, u = rule_argmax(p_tens, p_units)
    pt = p_tens.gather(1, t[:, None]).squeeze(1)
    pu = p_units.gather(1, u[:, None]).squeeze(1)
    two = (t != EMPTY) & (pt > conf_tens) & (pu > conf_units)
    return torch.where(two, t, torch.full_like(t, EMPTY)), u


def rule_same_digit(p_tens, p_units, threshold=SAME_DIGIT):
    """A doubled digit (e.g. 88) with P(tens) < threshold takes the second-best tens class instead."""
    t, u = rule_argmax(p_tens, p_units)
    pt = p_tens.gather(1, t[:, None]).squeeze(1)
    second = p_tens.topk(2, dim=1).indices[:, 1]
    return torch.where((t == u) & (pt < threshold), second, t), u


def rule_vote(p_tens, p_units, thresholds=VOTE_THRESHOLDS):
    """Majority vote of the anti-empty rule over several thresholds; ties go to the more probable number."""
    votes = torch.stack([dataset.reconstruct(*rule_anti_empty(p_tens, p_units, th)) for th in thresholds], 1)
    out = torch.empty(len(votes), dtype=torch.long)
    for i, row in enumerate(votes.tolist()):
        counts = Counter(row)
        top = max(counts.values())
        tied = [n for n in counts if counts[n] == top]
        out[i] = max(tied, key=lambda n: number_prob(p_tens[i], p_units[i], n))
    return dataset.decompose(out)


RULE_FNS = {"argmax": rule_argmax, "anti_empty": rule_anti_empty, "confidence": rule_confidence,
            "same_digit": rule_same_digit, "vote": rule_vote}


def digit_confidence(p_tens, p_units, t, u):
    """P(tens = t) x P(units = u), per row."""
    return p_tens.gather(1, t[:, None]).squeeze(1) * p_units.gather(1, u[:, None]).squeeze(1)


def number_prob(p_tens, p_units, n: int) -> float:
    t, u = dataset.decompose(n)
    return float(p_tens[t] * p_units[u])


def decode_all(p_tens, p_units) -> dict:
    """Every rule at once: rule -> (tens, units, number, confidence)."""
    out = {}
    for name, fn in RULE_FNS.items():
        t, u = fn(p_tens, p_units)
        out[name] = (t, u, dataset.reconstruct(t, u), digit_confidence(p_tens, p_units, t, u))
    return out


def answers(res) -> tuple[torch.Tensor, torch.Tensor]:
    """(number, confidence) per tracklet: the most probable number, as predict.py answers."""
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


def with_not_visible(number, p_visible, threshold: float):
    """-1 (no number visible) where the model's P(visible) is below `threshold`; 0 never answers -1."""
    return torch.where(p_visible < threshold, torch.full_like(number, dataset.NOT_VISIBLE), number)


def tune_not_visible(res) -> float:
    """The P(visible) threshold under which a tracklet is answered -1, chosen for the best accuracy on `res`
    (validation) with -1 counted as an answer; 0 (never -1) when `res` holds no -1 tracklet to learn it from.
    Candidates lie halfway between neighbouring P(visible) values, so the cut does not sit on a tracklet."""
    hidden = res["number"] < 0
    if not bool(hidden.any()):
        return 0.0
    p = res["p_visible"]
    values = torch.unique(p)
    cuts = torch.cat([values[:1] / 2, (values[1:] + values[:-1]) / 2, (values[-1:] + 1) / 2])
    right_if_shown = res["p_num"].argmax(1) == res["number"]
    below = p[None, :] < cuts[:, None]  # [cuts, tracklets]
    acc = torch.where(below, hidden[None, :], right_if_shown[None, :]).float().mean(1)
    return round(float(cuts[acc.argmax()]), 4)  # ties: the lowest cut, the fewest -1 answers


def not_visible_metrics(pred, true) -> dict:
    """How the -1 answers fare: precision (of the -1 answers, how many are -1 tracklets) and recall (of the -1
    tracklets, how many got -1), in %; None where there is nothing to divide by."""
    said, hidden = pred < 0, true < 0
    hit = int((said & hidden).sum())
    ratio = lambda a, b: round(100.0 * a / b, 2) if b else None  # noqa: E731
    return {"tracklets": int(hidden.sum()), "answered": int(said.sum()), "precision": ratio(hit, int(said.sum())),
            "recall": ratio(hit, int(hidden.sum()))}


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


# ---- metrics ---------------------------------------------------------------------------------------------

def subset(res: dict, keep: torch.Tensor) -> dict:
    """The predictions `res` (predict_loader) of the tracklets where `keep` is true."""
    return {k: v[keep] if torch.is_tensor(v) and v.dim() and len(v) == len(keep) else v for k, v in res.items()}


def pct(b: torch.Tensor) -> float:
    return round(100.0 * b.float().mean().item(), 2) if len(b) else 0.0


def digit_metrics(res) -> dict:
    """Validation accuracy in percent on the tracklets with a visible number: whole number (argmax of the joint),
    tens, units, both digits."""
    seen = res["number"] >= 0
    pred_t, pred_u = res["p_tens"][seen].argmax(1), res["p_units"][seen].argmax(1)
    true_t, true_u = res["tens"][seen], res["units"][seen]
    return {"acc": pct(res["p_num"][seen].argmax(1) == res["number"][seen]), "tens_acc": pct(pred_t == true_t),
            "units_acc": pct(pred_u == true_u), "both_acc": pct((pred_t == true_t) & (pred_u == true_u))}


def validation_metrics(res) -> tuple[dict, float]:
    """digit_metrics, plus where validation holds -1 tracklets `acc_all`: the accuracy with -1 counted as an
    answer at the threshold tune_not_visible chooses (what SoccerNet scores, so what picks the checkpoint); and
    that threshold."""
    m, threshold = digit_metrics(res), tune_not_visible(res)
    if bool((res["number"] < 0).any()):
        m["acc_all"] = pct(with_not_visible(res["p_num"].argmax(1), res["p_visible"], threshold) == res["number"])
    return m, threshold


def uncertain_threshold(res, percentile: float = 5.0, fallback: float = 0.5) -> float:
    """Confidence below which predict.py flags a tracklet `uncertain`: the 5th percentile of the confidence of
    the correct validation answers, so 95% of the answers the model gets right stay unflagged. `fallback` if
    nothing is correct."""
    if len(res["number"]) == 0:
        return fallback
    pred, conf = answers(res)
    ok = pred == res["number"]
    if not bool(ok.any()):
        return fallback
    return round(float(np.percentile(conf[ok].numpy(), percentile)), 4)


def rule_metrics(tens, units, number, conf, res, baseline_number) -> dict:
    true_n, true_t, true_u = res["number"], res["tens"], res["units"]
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


def score(res, decoded: dict | None = None) -> tuple[dict, dict]:
    """Every rule's metrics on predictions `res`, and every rule's decoding (decode_all, unless given)."""
    decoded = decoded or decode_all(res["p_tens"], res["p_units"])
    base = decoded["argmax"][2]
    return {name: rule_metrics(*d, res, base) for name, d in decoded.items()}, decoded
