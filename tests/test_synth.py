import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import synth  # noqa: E402

TINY = {4: 3, 49: 2}


def digest(root):
    """path -> sha1 of every file under root, so two datasets can be compared byte for byte."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".complete"}


def subtracklets(root):
    return [d for n in root.iterdir() if n.is_dir() for seq in n.iterdir() for d in seq.iterdir()]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The same tiny dataset rendered with one and with two workers."""
    base = tmp_path_factory.mktemp("synth")
    one = synth.generate(base / "w1", TINY, seed=0, workers=1, progress=False)
    two = synth.generate(base / "w2", TINY, seed=0, workers=2, progress=False)
    return one, two


def test_layout(tiny):
    root = tiny[0]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["4", "49"]
    for number, count in TINY.items():
        seqs = list((root / str(number)).iterdir())
        assert all(s.name.startswith("player_") and "_seq_" in s.name for s in seqs)
        subs = [d for s in seqs for d in s.iterdir()]
        assert len(subs) == count
        for sub in subs:
            assert sub.name.isdigit()
            jpgs = list(sub.glob("*.jpg"))
            assert 3 <= len(jpgs) <= 15
            assert len(list(sub.iterdir())) == len(jpgs)
            assert sum("_anchor" in p.name for p in jpgs) <= 1
            player = sub.parent.name.split("_")[1]
            for p in jpgs:
                parts = p.stem.split("_")
                assert parts[0] == player and parts[1].isdigit() and parts[2] == sub.name
                assert parts[3:] in ([], ["anchor"])


def test_frame_sizes(tiny):
    for p in tiny[0].rglob("*.jpg"):
        with Image.open(p) as im:
            w, h = im.size
            assert im.mode == "RGB"
        assert 25 <= w <= 90 and 55 <= h <= 140, (p, w, h)


def test_deterministic_across_workers_and_seed_sensitive(tiny, tmp_path):
    assert digest(tiny[0]) == digest(tiny[1])
    other = synth.generate(tmp_path / "s1", TINY, seed=1, workers=1, progress=False)
    assert digest(other) != digest(tiny[0])


def test_complete_marker(tiny):
    meta = json.loads((tiny[0] / ".complete").read_text())
    assert meta["version"] == synth.VERSION and meta["seed"] == 0 and meta["scale"] == 1.0
    assert meta["counts"] == {"4": 3, "49": 2}
    assert meta["n_subtracklets"] == 5 and meta["n_frames"] == len(list(tiny[0].rglob("*.jpg")))


def test_some_subtracklets_without_anchor(tmp_path):
    root = synth.generate(tmp_path / "many", {8: 40}, seed=0, workers=2, progress=False)
    anchors = [sum("_anchor" in p.name for p in d.glob("*.jpg")) for d in subtracklets(root)]
    assert len(anchors) == 40
    assert 0 < anchors.count(0) < 20 and set(anchors) <= {0, 1}


def test_ensure_dataset_reuses_and_regenerates(tmp_path, capsys):
    out = tmp_path / "cache"
    synth.ensure_dataset(out, {6: 2}, scale=1.0, seed=0, workers=1)
    assert "Generating" in capsys.readouterr().out
    stamp = (out / ".complete").stat().st_mtime_ns
    synth.ensure_dataset(out, {6: 2}, scale=1.0, seed=0, workers=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Using cached synthetic data at")
    assert (out / ".complete").stat().st_mtime_ns == stamp
    synth.ensure_dataset(out, {6: 2}, scale=2.0, seed=0, workers=1)
    assert "Generating" in capsys.readouterr().out
    assert len(subtracklets(out)) == 4
    assert json.loads((out / ".complete").read_text())["scale"] == 2.0


def test_generate_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError):
        synth.generate(tmp_path, {4: 1}, workers=1, progress=False)
    assert (tmp_path / "notes.txt").exists()


def test_incomplete_dataset_is_replaced(tmp_path):
    out = tmp_path / "half"
    (out / "4" / "player_1_seq_1" / "0").mkdir(parents=True)
    (out / "4" / "player_1_seq_1" / "0" / "1_1_0.jpg").write_bytes(b"junk")
    synth.ensure_dataset(out, {9: 1}, workers=1)
    assert not (out / "4").exists() and (out / "9").is_dir() and (out / ".complete").exists()


def test_scaled_counts():
    assert synth.scaled_counts({4: 1029, 49: 121, 7: 1}, 0.1) == {4: 103, 49: 12, 7: 1}
    assert synth.scaled_counts({4: 10}, 1.0) == {4: 10}
    assert sum(synth.scaled_counts(synth.DEFAULT_COUNTS, 1.0).values()) == sum(synth.DEFAULT_COUNTS.values())
    with pytest.raises(ValueError):
        synth.scaled_counts({4: 10}, 0)


def test_contact_sheet(tiny, tmp_path):
    png = synth.contact_sheet(tiny[0], tmp_path / "nested" / "sheet.png", per_number=2, frames=4)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100


def test_cli_rejects_out_of_range_number(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "synth.py"), "--out", str(tmp_path / "x"), "--numbers", "100"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "0..99" in res.stderr
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------------
# long tracklets (SoccerNet layout)

LONG_SCALE = 0.01   # 4 train + 2 test tracklets


@pytest.fixture(scope="module")
def long_pair(tmp_path_factory):
    """The same tiny long-tracklet dataset rendered with one and with two workers (one train tracklet is -1, one
    test tracklet held out)."""
    base = tmp_path_factory.mktemp("long")
    kw = dict(scale=LONG_SCALE, seed=0, progress=False, not_visible=0.25)
    return synth.generate_long(base / "w1", workers=1, **kw), synth.generate_long(base / "w2", workers=2, **kw)


def read_split(root, split):
    return (json.loads((root / split / f"{split}_gt.json").read_text()),
            json.loads((root / split / f"{split}_legible.json").read_text()))


def shots(labels, seed=0):
    """(label, legible flags, yaw) of long tracklets planned but not rendered: cheap enough for large samples."""
    out = []
    for i, label in enumerate(labels):
        rng = np.random.default_rng([seed, 2000, 10_000 + i])
        *_, fr, _, legible = synth.long_shot(rng, label, synth.HARD_TRAIN)
        out.append((label, legible, fr["yaw"]))
    return out


def test_long_layout_read_by_crawl_soccernet(long_pair):
    import dataset
    root = long_pair[0]
    assert sorted(p.name for p in root.iterdir()) == [".complete", "test", "train"]
    for split, count in synth.scaled_counts(synth.LONG_COUNTS, LONG_SCALE).items():
        gt, legible = read_split(root, split)
        assert list(gt) == [str(i) for i in range(count)] and list(legible) == list(gt)
        assert dataset.is_soccernet(str(root / split))
        samples, skipped = dataset.crawl_soccernet(str(root / split))
        assert not skipped and {Path(s.path).name: s.number for s in samples} == gt
        for s in samples:
            files = sorted(p.name for p in Path(s.path).iterdir())
            assert files == [f"{i + 1:04d}.jpg" for i in range(len(files))]   # natural order = time order
            assert len(legible[Path(s.path).name]) == len(files)
            assert s.frames and all(Path(f).name in files for f in s.frames)
        hidden = sum(v == -1 for v in gt.values())
        samples, skipped = dataset.crawl_soccernet(str(root / split), synth.HARD_TRAIN + synth.HARD_TEST)
        assert skipped.get("number not visible (-1)", 0) == hidden and len(samples) == count - hidden


def test_long_frames_and_lengths(long_pair):
    for p in long_pair[0].rglob("*.jpg"):
        with Image.open(p) as im:
            w, h = im.size
            assert im.mode == "RGB"
        assert synth.MIN_W <= w <= synth.MAX_W and synth.MIN_H <= h <= synth.MAX_H, (p, w, h)
    for split in ("train", "test"):
        assert all(30 <= len(v) <= 400 for v in read_split(long_pair[0], split)[1].values())
    lengths = [synth.long_length(np.random.default_rng(i)) for i in range(3000)]
    assert min(lengths) == 30 and max(lengths) >= 390 and max(lengths) <= 400
    assert np.median(lengths) < 150   # log-uniform: many short, some long


def test_long_deterministic_across_workers(long_pair):
    assert digest(long_pair[0]) == digest(long_pair[1])
    meta = json.loads((long_pair[0] / ".complete").read_text())
    assert meta["mode"] == "long" and meta["not_visible"] == 0.25 and meta["scaled_counts"] == {"train": 4, "test": 2}
    assert meta["n_frames"] == len(list(long_pair[0].rglob("*.jpg")))


def test_long_labels_share_and_held_out_numbers():
    for count, share in ((400, 0.2), (200, 0.2), (37, 0.3), (10, 0.0)):
        for split in ("train", "test"):
            labels = synth.long_labels(split, count, 0, share)
            assert len(labels) == count and abs(labels.count(-1) / count - share) <= 0.5 / count
    train = synth.long_labels("train", 400, 0, 0.2)
    test = synth.long_labels("test", 200, 0, 0.2)
    assert set(train) == set(synth.HARD_TRAIN) | {-1}
    assert set(test) == set(synth.HARD_TRAIN) | set(synth.HARD_TEST) | {-1}
    assert sum(v in synth.HARD_TEST for v in test) == 80   # half the numbered test tracklets are held out
    assert synth.long_labels("train", 400, 1, 0.2) != train


def test_long_held_out_numbers_only_in_test(long_pair):
    gt = {split: read_split(long_pair[0], split)[0] for split in ("train", "test")}
    assert not set(gt["train"].values()) & set(synth.HARD_TEST)
    assert set(gt["train"].values()) <= set(synth.HARD_TRAIN) | {-1}
    assert set(gt["test"].values()) & set(synth.HARD_TEST)


def test_long_legible_frames_by_construction(long_pair):
    on_disk = [(gt[t], leg[t]) for split in ("train", "test") for gt, leg in [read_split(long_pair[0], split)]
               for t in gt]
    planned = [(label, list(leg)) for label, leg, _ in shots([-1 if i % 4 == 0 else 7 for i in range(160)])]
    for label, flags in on_disk + planned:
        assert any(flags) == (label != -1), label   # -1: never readable; numbered: readable somewhere
    shares = [np.mean(flags) for label, flags in planned if label != -1]
    assert 0.15 < np.mean(shares) < 0.35 and np.percentile(shares, 90) <= 0.45   # a minority of frames


def test_long_not_visible_for_varied_reasons():
    """-1 is not just 'never turns his back': some -1 players do turn, and are covered or smeared then."""
    turned = [np.cos(yaw).max() > 0.9 for _, _, yaw in shots([-1] * 40)]
    assert 0 < sum(turned) < len(turned)


def test_ensure_long_dataset_reuses(long_pair, capsys, monkeypatch):
    root = long_pair[0]
    stamp = (root / ".complete").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(synth, "generate_long", lambda *a, **k: calls.append((a, k)))
    assert synth.ensure_long_dataset(root, scale=LONG_SCALE, seed=0, not_visible=0.25) == root
    assert capsys.readouterr().out.startswith("Using cached synthetic data at")
    assert (root / ".complete").stat().st_mtime_ns == stamp and not calls
    synth.ensure_long_dataset(root, scale=LONG_SCALE, seed=1, not_visible=0.25)
    synth.ensure_long_dataset(root, scale=LONG_SCALE, seed=0)   # default not_visible 0.2 differs
    assert len(calls) == 2 and "Generating" in capsys.readouterr().out


def test_long_cli_reuses_and_draws_sheet(long_pair, tmp_path, capsys):
    synth.main(["--long", "--out", str(long_pair[0]), "--scale", str(LONG_SCALE), "--not_visible", "0.25",
                "--sheet", str(tmp_path / "long.png")])
    assert "Using cached" in capsys.readouterr().out
    with Image.open(tmp_path / "long.png") as im:
        assert im.format == "PNG" and im.width > 100


def test_long_refuses_foreign_directory_and_short_options(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError):
        synth.generate_long(tmp_path, scale=LONG_SCALE, workers=1, progress=False)
    assert (tmp_path / "notes.txt").exists()
    with pytest.raises(SystemExit):
        synth.main(["--long", "--out", str(tmp_path / "x"), "--numbers", "4"])
    assert not (tmp_path / "x").exists()
