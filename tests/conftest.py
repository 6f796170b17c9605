import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import synth  # noqa: E402 - the repo's modules import once the path is set


def tiny_synth(tmp):
    """A tiny generated dataset (4, 6, 49 to train on; 48, 64 held out) and the output folders of a run on it."""
    root = synth.generate(tmp / "data", counts={4: 6, 6: 6, 49: 6, 48: 3, 64: 3}, seed=0, workers=1, progress=False)
    return root, {k: str(tmp / k) for k in ("checkpoints", "results", "logs", "cache")}


def write_tracklet(folder, n_frames, anchor=None, size=(30, 60), text="4", seed=0):
    """A tiny sub-tracklet folder of drawn frames; anchor = index of the '_anchor' frame or None."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_frames):
        im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
        ImageDraw.Draw(im).text((4, size[1] // 3), text, fill=(255, 255, 255))
        im.save(os.path.join(folder, f"1_{100 + i}_0{'_anchor' if i == anchor else ''}.jpg"))


@pytest.fixture
def tiny_root(tmp_path):
    """Layout of SPEC.md with 3 numbers, 2 sequences each, 2 sub-tracklets each."""
    root = tmp_path / "data"
    for n in (4, 49, 48):
        for seq in range(2):
            for sub in range(2):
                write_tracklet(root / str(n) / f"player_{seq}_seq_{seq}" / str(sub), 4 + sub,
                               anchor=1 if sub == 0 else None, text=str(n), seed=n * 10 + seq)
    return root


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine its spin-waits cost seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
