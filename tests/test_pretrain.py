import os

import numpy as np
import pytest
import torch

import config
import model as model_lib
import pretrain
import train


@pytest.fixture(autouse=True)
def tiny_budget(monkeypatch):
    """3 steps on a bank of 20 renders (the product: 1,500 on 20,000)."""
    monkeypatch.setattr(pretrain, "STEPS", 3)
    monkeypatch.setattr(pretrain, "IMAGES", 20)


def tiny_cfg(tmp_path, **kw):
    kw = {"img_size": 32, "cache_dir": str(tmp_path / "cache"), "amp": False, "lstm_hidden": 16, "head_hidden": 16,
          **kw}
    return config.Config(**kw)


def test_render_is_a_deterministic_low_res_digit_image():
    a = pretrain.render(np.random.default_rng(3), 7, 48)
    b = pretrain.render(np.random.default_rng(3), 7, 48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and a.std() > 5  # not a blank canvas


def test_bank_labels_and_bytes_do_not_depend_on_workers():
    f1, y1 = pretrain.make_bank(30, 24, seed=1, workers=1)
    f2, y2 = pretrain.make_bank(30, 24, seed=1, workers=2)
    assert f1.shape == (30, 24, 24, 3) and torch.equal(f1, f2)
    assert y1.tolist() == [i % 10 for i in range(30)] and torch.equal(y1, y2)


def test_pretrained_trunk_is_loaded_into_the_jersey_model(tmp_path):
    cfg = tiny_cfg(tmp_path)
    path = pretrain.pretrain(cfg, str(tmp_path / "trunk.pth"))
    trunk = torch.load(path, weights_only=True)["trunk"]
    net = model_lib.build(cfg, pretrained=False, init_path=path)
    assert net.pretrained_loaded
    # backbone = Sequential(conv1, bn1, relu, maxpool, layer1..4): child 0 is conv1, child 4 is layer1
    assert torch.equal(net.backbone[0].weight, trunk["0.weight"])
    assert torch.equal(net.backbone[4][0].conv1.weight, trunk["4.0.conv1.weight"])
    with pytest.raises(ValueError, match="does not fit this backbone"):
        model_lib.build(config.Config(backbone="resnet50"), pretrained=False, init_path=path)


def test_pretraining_leaves_the_callers_random_streams_alone(tmp_path):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    pretrain.pretrain(tiny_cfg(tmp_path), str(tmp_path / "t.pth"))
    assert torch.equal(torch.rand(3), expected)


def test_auto_init_pretrains_once_when_imagenet_weights_are_missing(tmp_path, monkeypatch):
    real = model_lib._resnet
    monkeypatch.setattr(model_lib, "_resnet", lambda name, pretrained: real(name, False))  # offline
    cfg = tiny_cfg(tmp_path)
    net = train.build_model(cfg, torch.device("cpu"))
    path = pretrain.weights_path(cfg)
    assert net.pretrained_loaded and os.path.exists(path)
    assert cfg.freeze_fraction == 0.6  # pretrained trunk: the SPEC's freezing applies
    stamp = os.path.getmtime(path)
    train.build_model(cfg, torch.device("cpu"))
    assert os.path.getmtime(path) == stamp  # cached, not pretrained again
    # pretrained=False means random weights: no pretraining, nothing frozen
    cold = tiny_cfg(tmp_path / "cold", pretrained=False)
    assert not train.build_model(cold, torch.device("cpu")).pretrained_loaded
    assert not os.path.exists(pretrain.weights_path(cold))


def test_missing_init_file_is_a_config_error(tmp_path):
    errors = config.Config(backbone_init=str(tmp_path / "nope.pth")).validate()
    assert any("backbone_init" in e for e in errors)


def test_cli_writes_a_cnn_trunk_where_asked(tmp_path):
    out = tmp_path / "trunk.pth"
    pretrain.main(["--backbone=cnn", "--img_size=32", "--steps=2", "--amp=false",
                   f"--out_path={out}"])
    ck = torch.load(out, weights_only=True)
    assert ck["backbone"] == "cnn" and ck["steps"] == 2 and 0 <= ck["glyph_val_acc"] <= 100
    net = model_lib.build(config.Config(backbone="cnn", lstm_hidden=8, head_hidden=8), pretrained=False,
                          init_path=str(out))
    assert torch.equal(net.backbone[0].weight, ck["trunk"]["0.weight"])


def test_interrupted_pretraining_resumes_to_the_same_trunk(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    monkeypatch.setattr(pretrain, "STEPS", 5)
    whole = torch.load(pretrain.pretrain(cfg, str(tmp_path / "whole.pth")), weights_only=True)["trunk"]
    monkeypatch.setattr(pretrain, "SAVE_EVERY", 2)
    real = pretrain._batches

    def crash_after_three(*a):
        for i, b in enumerate(real(*a)):
            if i == 3:
                raise KeyboardInterrupt
            yield b
    monkeypatch.setattr(pretrain, "_batches", crash_after_three)
    out = str(tmp_path / "resumed.pth")
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(cfg, out)
    assert torch.load(out + ".partial", weights_only=True)["step"] == 2 and not os.path.exists(out)
    steps_run = []

    def counting(*a):
        for b in real(*a):
            steps_run.append(1)
            yield b
    monkeypatch.setattr(pretrain, "_batches", counting)
    resumed = torch.load(pretrain.pretrain(cfg, out), weights_only=True)["trunk"]
    assert len(steps_run) == 3  # steps 3-5 only: it continued, not restarted
    assert not os.path.exists(out + ".partial")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # a partial file from other settings is ignored, not loaded into the wrong run
    torch.save({"key": ["other"]}, out + ".partial")
    assert pretrain._resume(out + ".partial", ["resnet18"], {}) == (0, 0.0)


class _Always(torch.nn.Module):
    """A glyph net that answers `number` for every image."""

    def __init__(self, number):
        super().__init__()
        self.number = number

    def forward(self, x):
        tens, units = torch.zeros(len(x), 11), torch.zeros(len(x), 10)
        tens[:, self.number // 10], units[:, self.number % 10] = 1, 1
        return tens, units
