import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import config
import model
import pretrain
from experiments import ablate


def test_grid_writes_every_run_and_a_table_and_resumes(tmp_path):
    res = tmp_path / "ablation.json"
    argv = ["--methods=original,suppress_0.1,torso_crop", "--seeds=1", "--epochs=1", "--synth_scale=0.01",
            f"--out_dir={tmp_path / 'ck'}", f"--results={res}", f"--log_dir={tmp_path / 'logs'}",
            f"--synth_root={tmp_path / 'synth'}", f"--cache_dir={tmp_path / 'cache'}", "--img_size=32", "--seq_len=2",
            "--pretrained=false", "--lstm_hidden=8", "--head_hidden=8", "--max_steps=2", "--amp=false",
            "--batch_size=4"]
    ablate.main(argv)
    rows = json.loads(res.read_text())["runs"]
    assert [(r["method"], r["seed"]) for r in rows] == [("original", 1), ("suppress_0.1", 1), ("torso_crop", 1)]
    for r in rows:
        assert 0 <= r["val"]["argmax"] <= 100 and "heldout" in r and "extra_unseen" in r
    # every method runs on the SPEC's whole frame, whatever train.py's default, except the torso band, pinned
    assert [r["crop"] for r in rows] == [[0.0, 0.0, 1.0, 1.0]] * 2 + [[0.0, 0.05, 1.0, 0.65]]
    # each run logs under its grid's out_dir name, so grids of other budgets do not share a TensorBoard folder
    assert sorted(os.listdir(tmp_path / "logs")) == [f"ck_original_{m}_s1" for m in sorted(
        ("original", "suppress_0.1", "torso_crop"))]
    # the box_* methods run on the default crop, the band's with its width narrowed (report 6.22)
    box = config.load(["--method=original"] + ablate.GRID["box_suppress_1"])[0]
    assert box.crop == config.TORSO_CROP and box.crop[0] > 0 and box.empty_suppression == 1
    table = (tmp_path / "ablation.md").read_text()
    assert "| original |" in table and "| suppress_0.1 |" in table
    assert "seen two-digit" in table and "held-out anti_empty" in table
    # a results file from an older ablate.py (no two-digit figure) is completed from each run's val.json
    old = json.loads(res.read_text())
    keys = ("val_two_digit", "heldout_one_digit", "heldout_seen_number", "crop")
    expected = [tuple(r.pop(k) for k in keys) for r in old["runs"]]
    assert all(0 <= one <= 100 and 0 <= seen <= 100 - one for _, one, seen, _ in expected)
    res.write_text(json.dumps(old))
    ablate.main(argv)  # everything done: nothing is run again
    rows = json.loads(res.read_text())["runs"]
    assert len(rows) == 3 and [tuple(r[k] for k in keys) for r in rows] == expected
    assert "held-out answered with a seen two-digit number" in (tmp_path / "ablation.md").read_text()


def test_two_digit_accuracy_counts_only_numbers_from_10():
    per = {"4": {"correct": 9, "total": 10}, "49": {"correct": 1, "total": 4}, "89": {"correct": 2, "total": 4}}
    assert ablate.two_digit(per) == 37.5


def test_seen_number_share_counts_answers_that_are_two_digit_training_numbers():
    res = {"config": {"train_classes": [4, 6, 8, 9, 49, 66, 89]},
           "predictions": [{"pred": p} for p in (49, 8, 48, 66, 89, 9, 49, 64)]}
    assert ablate.seen_number_share(res) == 50.0  # 49, 66, 89, 49; not 8 or 9 (one digit), not 48 or 64


def test_parallel_grid_runs_every_job_once(tmp_path):
    res = tmp_path / "ablation.json"
    argv = ["--methods=ctc_nomix,torso_narrow_ctc", "--seeds=3", "--epochs=1", "--synth_scale=0.01", "--jobs=2",
            f"--out_dir={tmp_path / 'ck'}", f"--results={res}", f"--log_dir={tmp_path / 'logs'}",
            f"--synth_root={tmp_path / 'synth'}", f"--cache_dir={tmp_path / 'cache'}", "--img_size=32", "--seq_len=2",
            "--pretrained=false", "--backbone=cnn", "--lstm_hidden=8", "--head_hidden=8", "--max_steps=2",
            "--amp=false", "--batch_size=4"]
    ablate.main(argv)
    rows = json.loads(res.read_text())["runs"]
    assert sorted((r["method"], r["seed"]) for r in rows) == [("ctc_nomix", 3), ("torso_narrow_ctc", 3)]
    ctc, narrow = sorted(rows, key=lambda r: r["method"])
    for r in (ctc, narrow):
        assert "heldout" in r and sorted(r["extra_unseen_per_number"]) == ["44", "46", "68", "69", "84", "86"]
    # every held-out tracklet falls in one frame-height band
    heldout = json.loads((tmp_path / "ck" / "original" / "ctc_nomix_s3" / "heldout.json").read_text())
    assert sum(b["total"] for b in ctc["heldout_by_height"].values()) == heldout["num_tracklets"] > 0
    table = (tmp_path / "ablation.md").read_text()
    assert "| torso_narrow_ctc |" in table and "other unseen" in table


def test_original_split_data_is_made_by_the_parent_before_parallel_runs(tmp_path):
    synth_root = tmp_path / "synth"
    root, train, test, extra = ablate.split_settings("original", 0.01, 0, [f"--synth_root={synth_root}",
                                                                           f"--results_dir={tmp_path}"])
    assert root == "" and sorted(test) == [48, 64, 88] and 49 in train and 44 in extra
    assert (synth_root / "scale0.01_seed0" / ".complete").is_file()  # the runs find it made, not half-written


def test_parallel_grid_pretrains_each_glyph_trunk_once_in_the_parent(tmp_path, monkeypatch):
    made = []

    def fake_pretrain(cfg, path, steps=pretrain.STEPS):
        made.append((cfg.backbone, path))  # the cache file the runs will look for, with untrained weights
        torch.save({"trunk": model.trunk(cfg.backbone, False)[0].state_dict()}, path)
    monkeypatch.setattr(ablate.pretrain, "pretrain", fake_pretrain)
    flags = [f"--cache_dir={tmp_path}", "--img_size=32", "--lstm_hidden=8", "--head_hidden=8"]
    methods = {"torso_narrow_ctc", "box_narrow_ctc"}  # two methods, one trunk
    ablate.make_trunks(methods, flags)
    assert [b for b, _ in made] == ["cnn_narrow"] and os.path.isfile(made[0][1])
    ablate.make_trunks(methods, flags)  # cached now: nothing is made again
    ablate.make_trunks(methods, flags + ["--pretrained=false"])  # random initialisation: no trunk to make
    assert len(made) == 1


def test_table_budget_names_every_seed_in_the_file_not_only_the_last_invocations():
    rows = [{"split": "original", "method": "original", "seed": s,
             "val": {"argmax": 50.0 + s, "anti_empty": 0.0}} for s in (1, 2)]
    table = ablate.markdown(ablate.summarize(rows), {"epochs": 3, "synth_scale": 0.1, "seeds": "2", "passthrough": []})
    assert "seeds 1,2," in table and "| original | original | 2 | 51.5 ± 0.7 |" in table


def test_a_killed_grid_leaves_no_run_behind(tmp_path):
    """Kill the grid's parent with SIGKILL: its busy workers must exit instead of training on as orphans."""
    script = tmp_path / "grid.py"
    script.write_text(
        "import sys, time, multiprocessing\n"
        f"sys.path.insert(0, {str(Path(ablate.__file__).parent.parent)!r})\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from experiments import ablate\n"
        "def busy(_):\n"
        "    import os\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                               initializer=ablate._worker_init, initargs=(multiprocessing.current_process().pid,))\n"
        "    pool.submit(busy, 0)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _alive(worker):
        time.sleep(0.5)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; only its parent has not reaped it
        return f.read().split()[2] != "Z"


def test_grid_methods_keep_the_recipe_they_were_measured_with_unless_the_grid_says_otherwise():
    # the report's runs were made at 64 px with empty x 0.01: a later change of the defaults must not move them
    box = config.load(ablate.method_flags("box_suppress_1", []), env_file="/nonexistent")[0]
    assert (box.img_size, box.empty_suppression, box.crop) == (64, 1.0, config.TORSO_CROP)
    assert config.load(ablate.method_flags("original", []), env_file="/nonexistent")[0].empty_suppression == 0.01
    wide = config.load(ablate.method_flags("box_suppress_1", ["--img_size=96"]), env_file="/nonexistent")[0]
    assert wide.img_size == 96
