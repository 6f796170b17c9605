import hashlib
import json
import subprocess
import sys
from pathlib import Path

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
