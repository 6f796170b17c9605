"""Bad and real-world input: a fuzz tree in the SPEC layout, the SoccerNet layout, odd image files, and one-line
errors (no traceback) for every user mistake."""
import json
import os
import re
import runpy
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import config
import dataset
import evaluate
import plots
import train
import utils
from conftest import write_tracklet

REPO = Path(__file__).resolve().parents[1]
NOT_NUMBERS = ("abc", "-1", "100", "07")
TRAIN_SKIPS = {"folder name not a number 0..99": 4, "symlinked folder not followed": 2, "empty sub-tracklet folder": 1,
               "unreadable image": 5, "sub-tracklet with no readable image": 1}
TEST_SKIPS = {"folder name not a number 0..99": 4, "symlinked folder not followed": 1, "empty sub-tracklet folder": 1,
              "unreadable image": 1}


def fuzz_tree(root: Path) -> None:
    """Good tracklets of 4, 49 (train) and 48 (test), plus every kind of bad input next to them."""
    for n, seqs in ((4, 3), (49, 3), (48, 2)):
        for seq in range(seqs):
            write_tracklet(root / str(n) / f"player_{seq}_seq_{seq}" / "0", 3, anchor=0 if seq == 0 else None,
                           text=str(n), seed=n + seq)
    bad = root / "4" / "player_0_seq_0" / "0"
    (bad / "zero.jpg").write_bytes(b"")
    whole = (bad / "1_101_0.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(whole[:len(whole) // 2])
    (bad / "text.jpg").write_text("this is not a JPEG")
    odd = root / "4" / "player_1_seq_1" / "0"  # readable, just unusual: must be used, not skipped
    Image.new("RGB", (1, 1), (200, 30, 30)).save(odd / "1_200_0.jpg")
    Image.new("RGB", (4000, 4000), (20, 90, 30)).save(odd / "1_201_0.jpg", quality=30)
    Image.new("L", (30, 60), 128).save(odd / "1_202_0.jpg")
    Image.new("CMYK", (30, 60), (0, 90, 200, 10)).save(odd / "1_203_0.jpg")
    Image.new("RGBA", (30, 60), (10, 10, 200, 90)).save(odd / "1_204_0.png")
    (root / "48" / "player_0_seq_0" / "0" / "zero.jpg").write_bytes(b"")
    dead = root / "49" / "player_9_seq_9" / "0"  # nothing readable at all
    dead.mkdir(parents=True)
    (dead / "1_1_0.jpg").write_bytes(b"")
    (dead / "1_2_0.jpg").write_text("nope")
    (root / "4" / "player_0_seq_0" / "1").mkdir()
    (root / "48" / "player_5_seq_5" / "0").mkdir(parents=True)
    for name in NOT_NUMBERS:
        write_tracklet(root / name / "player_0_seq_0" / "0", 2)
    os.symlink("..", root / "4" / "player_0_seq_0" / "loop")  # 4/player_0_seq_0/loop -> 4/
    os.symlink(".", root / "loop")                             # the root inside itself


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    fuzz_tree(tmp / "data")
    out = {k: str(tmp / k) for k in ("ckpt", "results", "logs", "cache")}
    args = [f"--data_root={tmp / 'data'}", f"--checkpoint_dir={out['ckpt']}", f"--results_dir={out['results']}",
            f"--log_dir={out['logs']}", f"--cache_dir={out['cache']}", "--img_size=32", "--seq_len=3",
            "--batch_size=4", "--pretrained=false", "--lstm_hidden=16", "--head_hidden=16", "--amp=false",
            "--train_classes=4,49", "--test_classes=48", "--val_split=0.34", "--epochs=1", "--run_name=fuzz"]
    best, history = train.main(args)
    return tmp, out, args, history


def logged_skips(text: str) -> list[tuple[int, str]]:
    return [(int(n), r) for n, r in re.findall(r"skipped (\d+) x (.+)", text)]


def test_training_runs_to_the_end_and_counts_every_skip_once(fuzz):
    tmp, out, _, history = fuzz
    assert len(history) == 1
    ck = utils.load_checkpoint(os.path.join(out["ckpt"], "best_model.pth"))
    assert ck["skipped"] == TRAIN_SKIPS
    assert json.loads(Path(out["results"], "training_results.json").read_text())["skipped"] == TRAIN_SKIPS
    log = Path(out["logs"], "fuzz", "train.log").read_text()
    assert sorted(logged_skips(log)) == sorted((n, r) for r, n in TRAIN_SKIPS.items())  # each reason exactly once
    assert ck["train_counts"] and sum(ck["train_counts"].values()) == 4  # 6 usable tracklets, 2 to validation


def test_unusual_images_are_decoded_not_skipped(fuzz):
    tmp, *_ = fuzz
    samples, _ = dataset.crawl(str(tmp / "data"), [4])
    odd = next(s for s in samples if s.path.endswith(os.path.join("player_1_seq_1", "0")))
    store = dataset.FrameStore([odd], 32, 2.0)
    assert len(odd.frames) == 8 and not store.bad
    frames = store.get(odd.frames)
    assert frames.shape == (8, 32, 32, 3) and all(f.std() > 0 or f.mean() > 0 for f in frames)


def test_evaluation_runs_to_the_end_and_writes_the_gallery(fuzz, capsys):
    tmp, out, _, _ = fuzz
    res = evaluate.main([f"--checkpoint={out['ckpt']}/best_model.pth", f"--out={tmp / 'eval.json'}",
                         f"--results_dir={out['results']}", f"--cache_dir={out['cache']}"])
    printed = capsys.readouterr().out
    saved = json.loads((tmp / "eval.json").read_text())
    assert saved["skipped"] == TEST_SKIPS and sorted(logged_skips(printed)) == sorted((n, r) for r, n in TEST_SKIPS.items())
    assert saved["num_tracklets"] == len(saved["predictions"]) == 2  # both 48 tracklets, the broken frame dropped
    assert res["uncertain"]["threshold"] == utils.load_checkpoint(f"{out['ckpt']}/best_model.pth")["uncertain_threshold"]
    assert saved["not_visible"]["tracklets"] == saved["not_visible"]["answered"] == 0  # no -1 in this layout
    with Image.open(Path(out["results"], "worst_mistakes.png")) as im:
        assert im.width > 100 and im.height > 100


def test_mistake_gallery_shows_the_most_confident_errors(tiny_root, tmp_path):
    samples, _ = dataset.crawl(str(tiny_root))
    ds = dataset.TrackletDataset(samples, dataset.FrameStore(samples, 32, 2.0), 3, "uniform", use_anchor=False)
    n = len(samples)
    res = {"number": torch.tensor([s.number for s in samples]), "index": torch.arange(n)}
    pred = res["number"].clone()
    pred[[1, 5, 7]] = 99
    conf = torch.linspace(0.1, 0.9, n)
    shown = plots.plot_mistakes(res, pred, conf, ds, str(tmp_path / "g.png"), k=2)
    assert shown == 2 and os.path.getsize(tmp_path / "g.png") > 1000
    assert plots.plot_mistakes(res, res["number"], conf, ds, str(tmp_path / "none.png")) == 0


# ---- SoccerNet layout ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def soccernet(tmp_path_factory):
    """<split>/images/<id>/ + <split>/<split>_gt.json, with the oddities real data has."""
    split = tmp_path_factory.mktemp("sn") / "test"
    labels = {"0": 48, "1": 48, "2": -1, "3": -1, "4": 4, "5": "49", "6": 48, "7": 123, "9": 48}
    for tid in ("0", "1", "2", "3", "4", "5", "7", "8"):
        write_tracklet(split / "images" / tid, {"0": 40, "2": 1}.get(tid, 3), text="48", seed=int(tid))
    Image.new("L", (20, 44), 70).save(split / "images" / "1" / "gray.jpg")
    Image.new("RGBA", (20, 44), (9, 9, 9, 0)).save(split / "images" / "3" / "alpha.png")
    (split / "images" / "9").mkdir()  # labelled, but empty; "6" is labelled with no folder; "8" has no label
    (split / "test_gt.json").write_text(json.dumps(labels))
    return split


def test_soccernet_layout_is_detected_and_counted(soccernet):
    assert dataset.is_soccernet(str(soccernet)) and not dataset.is_soccernet(str(soccernet / "images"))
    samples, skipped = dataset.crawl(str(soccernet), [48, 4, 49])
    assert sorted((os.path.basename(s.path), s.number) for s in samples) == [("0", 48), ("1", 48), ("4", 4), ("5", 49)]
    assert skipped == Counter({"number not visible (-1)": 2, "tracklet folder without a label in gt.json": 1,
                               "label not a number 0..99 or -1": 1, "empty tracklet folder": 1,
                               "labelled tracklet with no image folder": 1})
    long = next(s for s in samples if s.path.endswith("0"))
    assert len(long.frames) == dataset.MAX_TRACKLET_FRAMES and long.frames[0].endswith("1_100_0.jpg")
    assert long.frames[-1].endswith("1_139_0.jpg") and long.anchor is None and len({s.group for s in samples}) == 4
    hidden, _ = dataset.crawl(str(soccernet), [dataset.NOT_VISIBLE])
    assert sorted(os.path.basename(s.path) for s in hidden) == ["2", "3"]
    assert len(dataset.crawl(str(soccernet))[0]) == 6


def test_soccernet_through_load_samples(soccernet, tmp_path):
    cfg, _ = config.load([f"--data_root={soccernet}", "--img_size=32", f"--cache_dir={tmp_path}"],
                         env_file="/nonexistent")
    samples, store, skipped = dataset.load_samples(cfg, [48])
    assert len(samples) == 2 and skipped["number not visible (-1)"] == 2
    assert store.get(samples[1].frames).shape == (4, 32, 32, 3)  # grayscale frame included
    with pytest.raises(SystemExit, match=r"no usable sample for number\(s\) \[7\]"):
        dataset.load_samples(cfg, [48, 7])
    (tmp_path / "bad" / "images").mkdir(parents=True)
    (tmp_path / "bad" / "bad_gt.json").write_text("{not json")
    cfg.data_root = str(tmp_path / "bad")
    with pytest.raises(SystemExit, match="could not be read as JSON"):
        dataset.load_samples(cfg, [48])


def test_soccernet_evaluation_scores_the_whole_split_with_not_visible_as_an_answer(fuzz, soccernet):
    tmp, out, _, _ = fuzz
    common = [f"--checkpoint={out['ckpt']}/best_model.pth", f"--data_root={soccernet}",
              f"--results_dir={out['results']}", f"--cache_dir={out['cache']}"]
    res = evaluate.main(common + [f"--out={tmp / 'sn.json'}"])  # no flags: every tracklet of the split, -1 included
    assert res["num_tracklets"] == 6 and res["numbers"] == [-1, 4, 48, 49] and "number not visible (-1)" not in \
        res["skipped"]
    # this checkpoint saw no -1 tracklet in training, so it never answers -1: every -1 tracklet is a miss
    assert res["not_visible"] == {"threshold": 0.0, "tracklets": 2, "answered": 0, "precision": None, "recall": 0.0}
    assert res["per_number"]["-1"] == {"total": 2, "correct": 0, "accuracy": 0.0}
    only = evaluate.main(common + ["--test_classes=48", f"--out={tmp / 'sn48.json'}"])  # what the user names
    assert only["num_tracklets"] == 2 and only["skipped"]["number not visible (-1)"] == 2
    assert only["not_visible"]["tracklets"] == 0


# ---- user errors: one line, no traceback -----------------------------------------------------------------

def test_user_errors_are_clear(fuzz, tmp_path):
    tmp, out, args, _ = fuzz
    args = args + ["--run_name=errors"]  # keep the fixture run's train.log as it was
    with pytest.raises(SystemExit, match=r"^error: no usable sample for number\(s\) \[66\]"):
        train.main([a for a in args if not a.startswith("--train_classes")] + ["--train_classes=4,49,66"])
    with pytest.raises(SystemExit, match="data_root .* does not exist"):
        train.main(args + [f"--data_root={tmp_path / 'nowhere'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="^error: no sub-tracklet with images"):
        train.main(args + [f"--data_root={tmp_path / 'empty'}"])
    with pytest.raises(SystemExit, match="lr must be > 0"):
        train.main(args + ["--lr=-1"])
    with pytest.raises(SystemExit, match="^error: checkpoint .* not found"):
        evaluate.main([f"--checkpoint={tmp_path / 'none.pth'}"])
    state = torch.load(f"{out['ckpt']}/best_model.pth", weights_only=True)
    torch.save({**state, "config": {**state["config"], "head_hidden": 64}}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="do not match"):
        evaluate.main([f"--checkpoint={tmp_path / 'other.pth'}"])
    with pytest.raises(SystemExit, match="^error: .* does not match this configuration"):
        train.main([a for a in args if not a.startswith("--head_hidden")] + ["--head_hidden=64", "--epochs=2",
                                                                           "--resume"])


def test_scripts_end_with_one_error_line_and_no_traceback(tmp_path, monkeypatch):
    """Each script's __main__ block lets only SystemExit out for user errors, which Python prints as its bare
    message; checked in-process for train.py and evaluate.py, and end to end in a real interpreter for one."""
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    for script, argv in (("train.py", [f"--data_root={tmp_path / 'empty'}", "--pretrained=false"]),
                         ("evaluate.py", [f"--checkpoint={tmp_path / 'corrupt.pth'}"])):
        monkeypatch.setattr(sys, "argv", [script, *argv])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(REPO / script), run_name="__main__")
        assert type(e.value) in (config.ConfigError, utils.CheckpointError), script
        assert str(e.value).startswith("error: ") and len(str(e.value).splitlines()) == 1, script
    p = subprocess.run([sys.executable, str(REPO / "predict.py"), "--checkpoint", str(tmp_path / "missing.pth"),
                        str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [f"error: checkpoint {str(tmp_path / 'missing.pth')!r} not found "
                                             f"(train first: python train.py)"]


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch_whether_or_not_it_clips(max_norm):
    torch.manual_seed(0)
    nets = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)]
    nets[1].load_state_dict(nets[0].state_dict())
    nets[0].weight.requires_grad_(False)  # frozen tensors have no gradient; both must skip them
    nets[1].weight.requires_grad_(False)
    x = torch.randn(16, 8)
    for net in nets:
        net(x).pow(2).sum().backward()
    ours = utils.clip_grad_norm(nets[0].parameters(), max_norm)
    ref = torch.nn.utils.clip_grad_norm_(nets[1].parameters(), max_norm)
    assert torch.allclose(ours, ref) and (ref > max_norm) == (max_norm == 0.5)
    assert torch.equal(nets[0].bias.grad, nets[1].bias.grad)
