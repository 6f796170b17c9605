"""perturb.py: every op writes a readable copy in the source layout, changes the pixels as named, and bad input
gets one clear error."""
import numpy as np
import pytest
from PIL import Image

import dataset
from experiments import perturb
from conftest import write_tracklet


@pytest.fixture()
def src(tmp_path):
    for n in (4, 48):
        write_tracklet(tmp_path / "src" / str(n) / "player_1_seq_1" / "0", 2, text=str(n), seed=n)
    (tmp_path / "src" / "4" / "player_1_seq_1" / "0" / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path / "src"


def test_every_op_keeps_the_layout_and_changes_the_pixels(src, tmp_path):
    out = tmp_path / "out"
    counts = perturb.main(["--src", str(src), "--out", str(out)])
    assert counts["skipped (unreadable)"] == 1 and all(counts[op] == 4 for op in perturb.OPS)  # 2 tracklets x 2
    for op in perturb.OPS:
        samples = dataset.crawl(str(out / op))[0]
        assert sorted(s.number for s in samples) == [4, 48]  # a dataset root the other scripts read
    rel = "4/player_1_seq_1/0/stripes.png"  # mid-grey stripes: no op saturates them
    stripes = np.tile(np.repeat(np.array([90, 160], dtype=np.uint8), 4), (40, 4))
    Image.fromarray(stripes).convert("RGB").save(src / rel)
    perturb.main(["--src", str(src), "--out", str(out)])
    grey = {op: np.asarray(Image.open(out / op / rel).convert("L"), dtype=float) for op in perturb.OPS}
    orig = np.asarray(Image.open(src / rel).convert("L"), dtype=float)
    assert grey["bright"].mean() > orig.mean() + 10 and grey["dark"].mean() < orig.mean() - 10
    assert grey["contrast"].std() > orig.std() and grey["blur"].std() < orig.std()
    assert abs(grey["invert"].mean() - (255 - orig.mean())) < 3
    assert grey["lowres"].shape == orig.shape and np.array_equal(grey["copy"], orig)  # PNG: lossless
    # occlusion: a flat grey block over the right 30%, rows 20-70%; everything else untouched
    h, w = orig.shape
    block = (slice(round(0.2 * h), round(0.7 * h)), slice(round(0.7 * w), w))
    assert np.all(grey["occlude"][block] == 128)
    outside = np.ones_like(orig, dtype=bool)
    outside[block] = False
    assert np.array_equal(grey["occlude"][outside], orig[outside])
    # the turned copy moves the stripes but keeps the brightness (corners filled with the border's mean)
    assert np.abs(grey["rotate"] - orig).mean() > 10 and abs(grey["rotate"].mean() - orig.mean()) < 5
    # motion blur is horizontal: it smears these vertical stripes, not the same stripes turned on their side
    assert grey["motion"][2:-2, 2:-2].std() < 0.5 * orig.std()
    # off-centre: the picture moved right by 15% of the width (5 of 32 columns), the left strip one flat colour
    k = round(0.15 * w)
    assert np.array_equal(grey["offcentre"][:, k:], orig[:, :w - k]) and np.ptp(grey["offcentre"][:, :k]) == 0
    Image.fromarray(stripes.T.copy()).convert("RGB").save(src / rel)
    perturb.main(["--src", str(src), "--out", str(out), "--ops", "motion"])
    across = np.asarray(Image.open(out / "motion" / rel).convert("L"), dtype=float)
    assert np.abs(across - stripes.T)[2:-2, 2:-2].max() <= 1


def test_only_the_chosen_numbers_and_clear_errors(src, tmp_path):
    counts = perturb.main(["--src", str(src), "--out", str(tmp_path / "o"), "--ops", "blur", "--numbers", "48"])
    assert counts == {"blur": 2} and not (tmp_path / "o" / "blur" / "4").exists()
    with pytest.raises(SystemExit, match="unknown op"):
        perturb.main(["--src", str(src), "--ops", "sepia"])
    with pytest.raises(SystemExit, match="no folder for number"):
        perturb.main(["--src", str(src), "--numbers", "77"])
    with pytest.raises(SystemExit, match="not a folder"):
        perturb.main(["--src", str(tmp_path / "nope")])
