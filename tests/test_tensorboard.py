"""What train.py writes for TensorBoard, read back with tensorboard's own event reader."""
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

import config
import dataset
import decoding
import engine
import model as model_lib
import train
import utils
from conftest import write_tracklet

FIGURES = ("Validation/tracklets", "Validation/attention", "Validation/confusion_matrix")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tb")
    for n in (4, 6, 49):
        for seq in range(3):
            write_tracklet(tmp / "data" / str(n) / f"player_{seq}_seq_{seq}" / "0", 3, text=str(n), seed=n + seq)
    out = {k: str(tmp / k) for k in ("ckpt", "results", "logs", "cache")}
    best, history = train.main([f"--data_root={tmp / 'data'}", f"--checkpoint_dir={out['ckpt']}",
                                f"--results_dir={out['results']}", f"--log_dir={out['logs']}",
                                f"--cache_dir={out['cache']}", "--img_size=32", "--seq_len=3", "--batch_size=3",
                                "--pretrained=false", "--lstm_hidden=16", "--head_hidden=16", "--amp=false",
                                "--train_classes=4,6,49", "--test_classes=48", "--val_split=0.34", "--epochs=2",
                                "--run_name=tb"])
    return out, history


def events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_scalars_figures_and_hparams_are_logged(run):
    out, history = run
    acc = events(os.path.join(out["logs"], "tb"))
    tags = acc.Tags()
    assert {"Loss/train", "Loss/val", "Accuracy/val_acc", "Accuracy/val_tens_acc", "LR"} <= set(tags["scalars"])
    for tag in FIGURES:  # one figure per epoch, rendered to a real image
        imgs = acc.Images(tag)
        assert [i.step for i in imgs] == [1, 2] and all(i.width > 100 and i.height > 100 for i in imgs)
    assert tags["graph"]
    final = {k: acc.Scalars(f"hparam/final_val_{k}")[-1].value for k in ("acc", "tens_acc", "units_acc", "both_acc")}
    assert final["acc"] == pytest.approx(history[-1]["val_acc"]) and final["tens_acc"] == pytest.approx(
        history[-1]["val_tens_acc"])
    assert acc.Scalars("hparam/best_val_acc")[-1].value == pytest.approx(max(h["val_acc"] for h in history))
    # one run per training: every event file sits in the run's own folder (add_scalars would add two more)
    folders = {os.path.relpath(d, out["logs"]) for d, _, fs in os.walk(out["logs"])
               if any(f.startswith("events.out") for f in fs)}
    assert folders == {"tb"}
    assert "custom_scalars" in acc.Tags().get("tensors", []) or acc.PluginTagToContent("custom_scalars")


def test_hparams_experiment_lists_final_metrics(run):
    from tensorboard.plugins.hparams import plugin_data_pb2
    out, _ = run
    content = events(os.path.join(out["logs"], "tb")).PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in exp.metric_infos}
    assert {"hparam/best_val_acc", "hparam/final_val_acc", "hparam/final_val_loss"} <= metrics
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["img_size"].number_value == 32 and start.hparams["method"].string_value == "torso"


def test_checkpoint_and_results_carry_the_uncertainty_threshold(run):
    out, _ = run
    ck = utils.load_checkpoint(os.path.join(out["ckpt"], "best_model.pth"))
    assert 0 < ck["uncertain_threshold"] <= 1
    saved = json.loads(open(os.path.join(out["results"], "training_results.json")).read())
    assert saved["uncertain_threshold"] == ck["uncertain_threshold"] and saved["skipped"] == {} and saved["epochs"] == 2


def test_uncertain_threshold_is_a_low_percentile_of_correct_confidences():
    p = torch.full((21, 100), 0.0)
    conf = torch.linspace(0.3, 0.9, 20)
    p[torch.arange(20), 4] = conf  # 20 correct answers (number 4) with rising confidence
    p[20, 7] = 0.99                # a confident mistake never sets the threshold
    res = {"p_num": p, "number": torch.tensor([4] * 20 + [6])}
    assert decoding.uncertain_threshold(res) == pytest.approx(0.3 + 0.05 * 19 * (0.6 / 19), abs=1e-4)
    assert decoding.uncertain_threshold({"p_num": p[20:], "number": torch.tensor([6])}) == 0.5
    assert decoding.uncertain_threshold({"p_num": torch.empty(0), "number": torch.empty(0)}) == 0.5


class Recorder:
    def __init__(self):
        self.figures = {}

    def add_figure(self, tag, fig, step):
        self.figures[tag] = (fig, step)

    def flush(self):
        pass


def test_media_shows_frames_with_attention_and_keeps_the_training_rng(tiny_root):
    samples, _ = dataset.crawl(str(tiny_root))
    cfg = config.Config(img_size=32, seq_len=3, pretrained=False, lstm_hidden=16, head_hidden=16, amp=False)
    ds = dataset.TrackletDataset(samples, dataset.FrameStore(samples, 32, 2.0), 3, "random", use_anchor=True)
    loader = DataLoader(ds, batch_size=4, collate_fn=dataset.collate)
    net = model_lib.build(cfg).eval()
    res = engine.predict_loader(net, loader, torch.device("cpu"), None, cfg)
    rec, before = Recorder(), torch.get_rng_state()
    train.log_tensorboard_media(rec, net, loader, res, cfg, torch.device("cpu"), None, step=3)
    assert torch.equal(torch.get_rng_state(), before)  # logging must not change what training samples next
    assert set(rec.figures) == set(FIGURES) and all(step == 3 for _, step in rec.figures.values())
    grid = rec.figures["Validation/tracklets"][0].axes
    assert len(grid) == 4 * 3  # four tracklets (k=4), seq_len frames each
    trues = [int(grid[3 * r].get_ylabel().split()[1]) for r in range(4)]
    assert trues[:3] == [4, 48, 49]  # every number first, then more tracklets
    for r in range(4):
        row = grid[3 * r:3 * r + 3]
        assert "pred " in row[0].get_ylabel()
        assert sum(float(a.get_title().split()[1]) for a in row) == pytest.approx(1, abs=0.02)
    labels = {int(t.get_text()) for t in rec.figures["Validation/confusion_matrix"][0].axes[0].get_yticklabels()}
    assert labels == set(res["number"].tolist()) | set(res["p_num"].argmax(1).tolist())
