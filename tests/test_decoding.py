import pytest
import torch

import config
import dataset
import decoding as dec
import engine
import evaluate
from config import EMPTY


def probs(tens: dict, units: dict):
    """Crafted distributions: {class: p}; the rest spread evenly."""
    def dist(d, k):
        p = torch.full((k,), (1 - sum(d.values())) / (k - len(d)))
        for c, v in d.items():
            p[c] = v
        return p
    return dist(tens, 11)[None], dist(units, 10)[None]


def number(fn, *a, **kw):
    return int(dataset.reconstruct(*fn(*a, **kw))[0])


def test_argmax():
    assert number(dec.rule_argmax, *probs({4: 0.6}, {8: 0.9})) == 48
    assert number(dec.rule_argmax, *probs({EMPTY: 0.6}, {8: 0.9})) == 8


def test_anti_empty():
    pt, pu = probs({EMPTY: 0.5, 6: 0.3}, {4: 0.9})
    assert number(dec.rule_anti_empty, pt, pu, 0.55) == 64   # weak empty -> best digit
    pt, pu = probs({EMPTY: 0.6, 6: 0.3}, {4: 0.9})
    assert number(dec.rule_anti_empty, pt, pu, 0.55) == 4    # confident empty stays


def test_confidence_rule():
    assert number(dec.rule_confidence, *probs({4: 0.5}, {8: 0.9})) == 48
    assert number(dec.rule_confidence, *probs({4: 0.5}, {8: 0.4})) == 8   # unsure units: units alone
    assert number(dec.rule_confidence, *probs({4: 0.09}, {8: 0.9})) == 8  # unsure tens: units alone


def test_same_digit_rule():
    assert number(dec.rule_same_digit, *probs({8: 0.5, 4: 0.3}, {8: 0.9}), 0.7) == 48
    assert number(dec.rule_same_digit, *probs({8: 0.8, 4: 0.1}, {8: 0.9}), 0.7) == 88
    assert number(dec.rule_same_digit, *probs({4: 0.5, 8: 0.3}, {8: 0.9}), 0.7) == 48


def test_vote_majority():
    pt, pu = probs({EMPTY: 0.45, 6: 0.4}, {4: 0.9})
    # thresholds 0.3, 0.4 keep empty (p >= th); 0.5, 0.6 switch to 6: tie -> more probable number
    assert number(dec.rule_vote, pt, pu, (0.3, 0.4, 0.5, 0.6)) == 4
    assert number(dec.rule_vote, pt, pu, (0.5, 0.6, 0.7)) == 64


def test_decode_all_and_metrics():
    pt, pu = probs({EMPTY: 0.5, 4: 0.4}, {8: 0.9})
    pt, pu = pt.repeat(2, 1), pu.repeat(2, 1)
    res = {"p_tens": pt, "p_units": pu, "tens": torch.tensor([4, 4]), "units": torch.tensor([8, 8]),
           "number": torch.tensor([48, 48])}
    rules, decoded = dec.score(res)
    assert set(rules) == set(config.RULES)
    assert rules["argmax"]["accuracy"] == 0.0 and rules["anti_empty"]["accuracy"] == 100.0
    assert rules["anti_empty"]["changed_vs_argmax"] == 2
    assert rules["anti_empty"]["per_number"]["48"] == {"total": 2, "correct": 2, "accuracy": 100.0}
    assert 0 < rules["anti_empty"]["mean_confidence"] < 1


def test_weighted_ce_matches_definition():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    w = torch.tensor([1.0, 2.0, 0.5, 0.1])
    got = engine.weighted_ce(logits, target, w, 0.0)
    ref = torch.nn.functional.cross_entropy(logits, target, weight=w)  # identical without smoothing
    assert torch.allclose(got, ref, atol=1e-6)
    smooth = engine.weighted_ce(logits, target, torch.ones(4), 0.1)
    assert torch.allclose(smooth, torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)


def test_accuracy_by_height(tmp_path):
    """Bands by each tracklet's median frame height, read from the files; hits counted per band in order."""
    from PIL import Image
    from dataset import Sample

    def tracklet(name, heights, number):
        frames = []
        for k, h in enumerate(heights):
            p = tmp_path / f"{name}_{k}.jpg"
            Image.new("RGB", (30, h)).save(p)
            frames.append(str(p))
        return Sample(str(tmp_path / name), number, frames, None, name)

    samples = [tracklet("a", [40, 41, 200], 4), tracklet("b", [70, 70], 8), tracklet("c", [130], 49),
               tracklet("d", [64, 60, 66], 6)]
    assert [evaluate.frame_height(s) for s in samples] == [41, 70, 130, 64]
    # the loader's order differs from the samples': res['index'] maps it back
    res = {"index": torch.tensor([2, 0, 1, 3]), "number": torch.tensor([49, 4, 8, 6])}
    pred = torch.tensor([49, 8, 8, 6])
    out = evaluate.accuracy_by_height(samples, res, pred)
    assert list(out) == ["<48", "64-79", ">=128"]
    assert out["<48"] == {"total": 1, "correct": 0, "accuracy": 0.0}
    assert out["64-79"] == {"total": 2, "correct": 2, "accuracy": 100.0}
    assert out[">=128"]["correct"] == 1


def test_best_frame_and_vote():
    p = torch.zeros(2, 3, 100)
    p[0, 0, 48], p[0, 1, 8], p[0, 2, 8] = 0.9, 0.6, 0.5    # surest frame says 48, two frames say 8
    p[1, 0, 64], p[1, 1, 4], p[1, 2, 44] = 0.7, 0.8, 0.3   # one each: the summed confidence breaks the tie
    (best, best_conf), (vote, vote_conf) = dec.best_frame_and_vote(p)
    assert best.tolist() == [48, 4] and best_conf.tolist() == pytest.approx([0.9, 0.8])
    assert vote.tolist() == [8, 4] and vote_conf.tolist() == pytest.approx([0.55, 0.8])
