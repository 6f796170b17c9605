"""Interruption and scale-out: SIGKILL mid-epoch then --resume equals an uninterrupted run; torchrun x2."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("d") / "data", counts={4: 12, 6: 12, 49: 10}, seed=0, workers=1,
                          progress=False)


def args(root, out, *extra):
    return [f"--data_root={root}", f"--checkpoint_dir={out}/ck", f"--results_dir={out}/res", f"--log_dir={out}/logs",
            f"--cache_dir={out}/cache", "--img_size=32", "--batch_size=4", "--pretrained=false", "--lstm_hidden=32",
            "--head_hidden=32", "--train_classes=4,6,49", "--val_split=0.3", "--run_name=r", *extra]


def train_cmd(*a):
    return [sys.executable, os.path.join(REPO, "train.py"), *a]


def epoch_of(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001 - not written yet
        return -1


def test_sigkill_then_resume_matches_uninterrupted(data, tmp_path):
    run = ("--epochs=3",)
    full = tmp_path / "full"
    subprocess.run(train_cmd(*args(data, full, *run)), check=True, cwd=REPO, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(train_cmd(*args(data, cut, *run)), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = cut / "ck" / "last.pth"
    deadline = time.time() + 300
    while epoch_of(last) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert epoch_of(last) == 1, "the kill should land during epoch 3 (two epochs done)"
    subprocess.run(train_cmd(*args(data, cut, *run, "--resume")), check=True, cwd=REPO, capture_output=True)
    a = torch.load(full / "ck" / "last.pth", weights_only=True)["history"]
    b = torch.load(last, weights_only=True)["history"]
    assert [h["epoch"] for h in b] == [1, 2, 3]
    for ha, hb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_acc", "val_tens_acc", "val_units_acc"):
            assert ha[k] == pytest.approx(hb[k], rel=1e-5, abs=1e-6), k


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_disjoint_data_one_checkpoint(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           os.path.join(REPO, "train.py"), *args(data, out, "--epochs=1", "--amp=false")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [set(json.load(open(out / "logs" / "r" / f"rank{r}_samples.json"))) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert sorted(os.listdir(out / "ck")) == ["best_model.pth", "last.pth"]
    ck = torch.load(out / "ck" / "last.pth", weights_only=True)
    assert ck["world_size"] == 2
