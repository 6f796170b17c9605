"""Tiny end to end run: generate data -> train -> evaluate -> analyze, checking the files and keys written."""
import json
import os

import pytest
import torch

import analyze_weights
import evaluate
import model as model_lib
import train
import utils
from conftest import tiny_synth


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    root, out = tiny_synth(tmp)
    common = [f"--data_root={root}", f"--checkpoint_dir={out['checkpoints']}", f"--results_dir={out['results']}",
              f"--log_dir={out['logs']}", f"--cache_dir={out['cache']}", "--img_size=32", "--batch_size=4",
              "--pretrained=false", "--train_classes=4,6,49", "--test_classes=48,64", "--val_split=0.34"]
    best, history = train.main(common + ["--epochs=2", "--run_name=t"])
    return tmp, out, common, best, history


def test_training_writes_checkpoints_curves_and_tensorboard(run):
    tmp, out, _, best, history = run
    assert len(history) == 2 and 0 <= best <= 100
    for name in ("best_model.pth", "last.pth"):
        ck = utils.load_checkpoint(os.path.join(out["checkpoints"], name))
        assert {"model", "optimizer", "scheduler", "scaler", "epoch", "best_acc", "history", "config", "rng"} <= set(ck)
    assert ck["epoch"] == 1 and ck["config"]["img_size"] == 32 and ck["train_counts"]
    assert os.path.getsize(os.path.join(out["results"], "training_curves.png")) > 1000
    events = [f for _, _, fs in os.walk(out["logs"]) for f in fs if f.startswith("events.out")]
    assert events
    assert not [f for f in os.listdir(out["checkpoints"]) if ".tmp" in f]


def test_early_stopping_with_the_rate_still_high_says_so(run, monkeypatch):
    tmp, out, common, _, _ = run
    ckpt = str(tmp / "early")  # a min_delta only the first epoch beats: stops after two of five, rate at 90%
    monkeypatch.setattr(train, "MIN_DELTA", 100.0)
    _, history = train.main(common + ["--epochs=5", "--patience=1", "--run_name=early",
                                      f"--checkpoint_dir={ckpt}", f"--results_dir={ckpt}"])
    assert len(history) == 2 and os.path.exists(os.path.join(ckpt, "last.pth"))
    with open(os.path.join(out["logs"], "early", "train.log")) as f:
        assert "stopped at epoch 2 of 5 with the learning rate still 90% of its peak" in f.read()


def test_early_stopping_counter_resets_only_on_a_real_improvement():
    s = {"best_loss": float("inf"), "bad_epochs": 0}
    s = train.early_stopping(s, 1.0, min_delta=0.001)
    assert s == {"best_loss": 1.0, "bad_epochs": 0}
    s = train.early_stopping(s, 0.9995, min_delta=0.001)  # better, but by less than min_delta: counts as bad
    assert s == {"best_loss": 1.0, "bad_epochs": 1}
    s = train.early_stopping(s, 1.2, min_delta=0.001)
    assert s["bad_epochs"] == 2
    assert train.early_stopping(s, 0.5, min_delta=0.001) == {"best_loss": 0.5, "bad_epochs": 0}


def test_evaluate_json_and_plots(run):
    tmp, out, common, _, _ = run
    res_path = tmp / "eval.json"
    evaluate.main([f"--checkpoint={out['checkpoints']}/best_model.pth", f"--out={res_path}", "--stability",
                   f"--results_dir={out['results']}", f"--cache_dir={out['cache']}"])
    res = json.loads(res_path.read_text())
    assert {"accuracy", "per_number", "rules", "skipped", "config", "predictions", "stability"} <= set(res)
    assert set(res["rules"]) == set(evaluate.config.RULES) and set(res["per_number"]) == {"48", "64"}
    assert sum(v["total"] for v in res["per_number"].values()) == len(res["predictions"]) == 6
    assert res["anchor_frames_used"] is False and set(res["stability"]) == {"sequence", "anchor", "random_frame",
                                                                           "best_frame", "frame_vote"}
    assert res["config"]["data_root"] and res["digit_coverage"]["48"]["tens_seen"] is True
    for p in ("confusion_matrices/confusion_matrices.png", "per_class_accuracy.png"):
        assert os.path.getsize(os.path.join(out["results"], p)) > 1000


def test_evaluate_validation_split(run):
    tmp, out, _, best, _ = run
    res = evaluate.main([f"--checkpoint={out['checkpoints']}/best_model.pth", f"--out={tmp / 'val.json'}",
                         "--split=val", f"--results_dir={out['results']}", f"--cache_dir={out['cache']}"])
    assert set(res["per_number"]) <= {"4", "6", "49"} and res["anchor_frames_used"] is True
    q = evaluate.main([f"--checkpoint={out['checkpoints']}/best_model.pth", f"--out={tmp / 'val_int8.json'}",
                       "--split=val", "--quantize", f"--results_dir={out['results']}", f"--cache_dir={out['cache']}"])
    assert q["int8_trunk"] is True and res["int8_trunk"] is False and q["num_tracklets"] == res["num_tracklets"]
    assert q["int8_ranges_from"] == "checkpoint"  # train.py stored them: no calibration pass over the split
    agree = sum(a["pred"] == b["pred"] for a, b in zip(res["predictions"], q["predictions"]))
    assert agree >= 0.8 * len(res["predictions"])  # the same tracklets, nearly the same answers
    tr = evaluate.main([f"--checkpoint={out['checkpoints']}/best_model.pth", "--split=train",
                        f"--results_dir={out['results']}", f"--cache_dir={out['cache']}"])
    assert os.path.isfile(os.path.join(out["results"], "training_split_results.json"))
    train_paths, val_paths = {p["path"] for p in tr["predictions"]}, {p["path"] for p in res["predictions"]}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 18  # the 6 + 6 + 6 of numbers 4, 6, 49
    with pytest.raises(evaluate.config.ConfigError, match="--split must be one of test, val, train"):
        evaluate.main([f"--checkpoint={out['checkpoints']}/best_model.pth", "--split=tran"])
    with pytest.raises(evaluate.config.ConfigError, match="--tune_blank needs a checkpoint with the ctc head"):
        evaluate.main([f"--checkpoint={out['checkpoints']}/best_model.pth", "--tune_blank"])


def test_evaluate_an_ensemble_and_refuse_members_that_do_not_match(run):
    tmp, out, _, _, _ = run
    best, last = (os.path.join(out["checkpoints"], n) for n in ("best_model.pth", "last.pth"))
    kw = [f"--results_dir={tmp / 'ens'}", f"--cache_dir={out['cache']}"]
    both = evaluate.main([f"--checkpoint={best},{last}", f"--out={tmp / 'ens.json'}", "--split=val"] + kw)
    alone = evaluate.main([f"--checkpoint={best}", f"--out={tmp / 'alone.json'}", "--split=val"] + kw)
    saved = json.loads((tmp / "ens.json").read_text())
    assert saved["checkpoint"]["members"] == 2 and alone["checkpoint"]["members"] == 1
    assert [p["path"] for p in both["predictions"]] == [p["path"] for p in alone["predictions"]]
    for field, value, split, message in (("img_size", 48, "test", "reads other frames.*img_size"),
                                         ("seed", 7, "val", "another train/val split")):
        ck = utils.load_checkpoint(last)
        ck["config"][field] = value
        torch.save(ck, tmp / "other.pth")
        with pytest.raises(evaluate.config.ConfigError, match=message):
            evaluate.main([f"--checkpoint={best},{tmp / 'other.pth'}", f"--split={split}"] + kw)
    with pytest.raises(evaluate.config.ConfigError, match="not an ensemble"):
        evaluate.main([f"--checkpoint={best},{last}", "--quantize"] + kw)
    with pytest.raises(evaluate.config.ConfigError, match="no checkpoint given"):
        evaluate.main(["--checkpoint=,"] + kw)


def test_analyze_weights(run):
    tmp, out, _, _, _ = run
    s = analyze_weights.main([f"--checkpoint={out['checkpoints']}/best_model.pth", f"--results_dir={out['results']}"])
    saved = json.loads((tmp / "results" / "weight_summary.json").read_text())
    assert saved["total_parameters"] == s["total_parameters"] > 14_000_000
    assert {"backbone", "spatial", "lstm", "temporal", "tens", "units"} <= set(saved["components"])
    assert set(saved["heads"]["tens"]["weight"]) >= {"mean", "std", "min", "max"} and saved["model_size_mb"] > 10


def test_resume_continues(run):
    tmp, out, common, _, _ = run
    best, history = train.main(common + ["--epochs=3", "--run_name=t", "--resume"])
    assert [h["epoch"] for h in history] == [1, 2, 3]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        utils.load_checkpoint(str(tmp_path / "nope.pth"))
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(SystemExit, match="is not a PyTorch checkpoint"):
        utils.load_checkpoint(str(tmp_path / "corrupt.pth"))
    (tmp_path / "notes.pth").write_text("epoch 3, best 88%\n")  # a text file: said so, not 'KeyError: 101'
    with pytest.raises(SystemExit, match=r"is not a PyTorch checkpoint \(a text file"):
        utils.load_checkpoint(str(tmp_path / "notes.pth"))
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(SystemExit, match="could not be loaded"):
        utils.load_checkpoint(str(tmp_path / "truncated.pth"))
    torch.save({"model": Evil(), "config": {}}, tmp_path / "evil.pth")
    with pytest.raises(SystemExit, match="could not be loaded safely"):
        utils.load_checkpoint(str(tmp_path / "evil.pth"))
    torch.save({"model": {"x": torch.zeros(1)}, "config": {}}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="do not match"):
        model_lib.model_from_checkpoint(utils.load_checkpoint(str(tmp_path / "other.pth")), "other.pth")


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        train.main([f"--data_root={tmp_path / 'none'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no sub-tracklet"):
        train.main([f"--data_root={tmp_path / 'empty'}", "--pretrained=false", f"--log_dir={tmp_path / 'logs'}"])
