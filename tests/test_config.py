import dataclasses
import subprocess
import sys

import pytest
import torch

import config
import utils


def test_defaults_match_spec():
    cfg, _ = config.load([], env_file="/nonexistent")
    assert cfg.train_classes == [4, 6, 8, 9, 49, 66, 89] and cfg.test_classes == [48, 64, 88]
    assert (cfg.batch_size, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.mixup_prob) == (16, 30, 1e-3, 1e-4, 0.5)
    assert len(dataclasses.fields(config.Config)) <= 50  # experiments that lost left the product


def test_cli_overrides_types_and_lists(tmp_path):
    cfg, extra = config.load(["--data_root", str(tmp_path), "--epochs=5", "--lr=0.01", "--amp=false",
                              "--train_classes=4,6,49", "--eval_anchor", "--checkpoint=x.pth"],
                             extras={"checkpoint": ""}, env_file="/nonexistent")
    assert cfg.data_root == str(tmp_path) and cfg.epochs == 5 and cfg.lr == 0.01
    assert cfg.amp is False and cfg.eval_anchor is True and cfg.train_classes == [4, 6, 49]
    assert extra["checkpoint"] == "x.pth"
    assert {"epochs", "lr", "amp", "train_classes", "data_root"} <= cfg._explicit


def test_env_file_then_cli(tmp_path):
    env = tmp_path / ".env"
    env.write_text("EPOCHS=7\nJERSEY_BATCH_SIZE=4\n")
    cfg, _ = config.load([], env_file=str(env))
    assert cfg.epochs == 7 and cfg.batch_size == 4
    cfg, _ = config.load(["--epochs=2"], env_file=str(env))
    assert cfg.epochs == 2 and cfg.batch_size == 4


def test_validation_reports_all_errors_at_once():
    with pytest.raises(SystemExit) as e:
        config.load(["--data_root=/no/such/dir", "--test_classes=4,48", "--val_split=1.5", "--train_classes=4,120"],
                    env_file="/nonexistent")
    msg = str(e.value)
    assert "does not exist" in msg and "overlap" in msg and "val_split" in msg and "0..99" in msg


def test_unknown_and_bad_values_are_clear():
    with pytest.raises(SystemExit, match="did you mean --epochs"):
        config.load(["--epoch=3"], env_file="/nonexistent")
    with pytest.raises(SystemExit, match="epochs"):
        config.load(["--epochs=three"], env_file="/nonexistent")
    with pytest.raises(SystemExit, match="backbone"):
        config.load(["--backbone=vgg"], env_file="/nonexistent")
    with pytest.raises(SystemExit, match="mixup_prob must be in"):
        config.load(["--mixup_prob=1.5"], env_file="/nonexistent")
    with pytest.raises(SystemExit, match="unknown option --compose_prob"):  # pruned: the lab tag keeps it
        config.load(["--compose_prob=0.5"], env_file="/nonexistent")
    with pytest.raises(SystemExit, match="unexpected argument"):
        config.load(["data/x"], env_file="/nonexistent")


def test_cuda_fallback_warning(caplog):
    cfg, _ = config.load(["--device=cuda"], env_file="/nonexistent")
    if not torch.cuda.is_available():
        assert utils.device_of(cfg).type == "cpu"
        assert "falling back to CPU" in caplog.text


def test_help_lists_every_field_with_default_and_description_without_torch():
    """--help and -h print every option with its default and a description, before any heavy import."""
    text = config.help_text("doc line", config.options("train"))
    assert text.startswith("doc line")
    for f in dataclasses.fields(config.Config):
        assert f.metadata["help"], f"{f.name} has no description"
        assert f"--{f.name}=" in text
    assert "--epochs=30 " in text and "training epochs" in text and "--resume=" in text
    for flag in ("--help", "-h"):
        out = subprocess.run([sys.executable, "train.py", flag, "--epochs=3"], capture_output=True, text=True,
                             check=True)
        assert "--epochs=30" in out.stdout and "training epochs" in out.stdout
    # help exits before torch is imported: that import alone takes seconds
    probe = ("import runpy, sys\nsys.argv = ['train.py', '--help']\ntry:\n    runpy.run_path('train.py', "
             "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")


def test_digit_coverage():
    cfg, _ = config.load(["--test_classes=48,64,88,27"], env_file="/nonexistent")
    cov = cfg.digit_coverage()
    assert cov[48] == {"tens": 4, "tens_seen": True, "units": 8, "units_seen": True}
    assert cov[27]["tens_seen"] is False and cov[27]["units_seen"] is False


def test_method_preset_respects_explicit_fields():
    cfg, _ = config.load(["--method=original", "--empty_suppression=0.1"], env_file="/nonexistent")
    assert cfg.empty_suppression == 0.1 and cfg.img_size == 64
    cfg, _ = config.load(["--empty_suppression=auto"], env_file="/nonexistent")
    assert cfg.empty_suppression == "auto"
    for bad in ("0", "-1", "often"):
        with pytest.raises(config.ConfigError, match="empty_suppression must be > 0 or auto"):
            config.load([f"--empty_suppression={bad}"], env_file="/nonexistent")
    cfg, _ = config.load(["--method=narrow"], env_file="/nonexistent")
    assert (cfg.head, cfg.backbone, cfg.ctc_context, cfg.mixup_prob, cfg.img_size) == ("ctc", "cnn_narrow", 0, 0.0, 64)
    cfg, _ = config.load(["--method=narrow", "--mixup_prob=0.5"], env_file="/nonexistent")
    assert cfg.mixup_prob == 0.5
    cfg, _ = config.load(["--method=reader"], env_file="/nonexistent")
    assert cfg.backbone == "ppocr_v4" and cfg.head == "ctc" and cfg.is_ocr()
    assert sorted(config.PRESETS) == ["narrow", "original", "reader", "torso"]
    # the default reads the torso band; the SPEC recipe (whole frame) is one flag away; a user's crop wins
    cfg, _ = config.load([], env_file="/nonexistent")
    assert cfg.method == "torso" and cfg.crop == config.TORSO_CROP and cfg.crop is not config.TORSO_CROP
    assert cfg.empty_suppression == 1.0 and cfg.img_size == 96  # no extra suppression (6.17), 96 px (6.31)
    cfg, _ = config.load(["--method=original"], env_file="/nonexistent")
    assert cfg.crop == [0.0, 0.0, 1.0, 1.0] and cfg.empty_suppression == 0.01  # the SPEC recipe, one flag away
    assert cfg.img_size == 64
    assert config.load(["--method=original", "--img_size=96"], env_file="/nonexistent")[0].img_size == 96
    cfg, _ = config.load(["--crop=0,0,1,1"], env_file="/nonexistent")
    assert cfg.method == "torso" and cfg.crop == [0.0, 0.0, 1.0, 1.0]
    cfg, _ = config.load(["--method=original", "--crop=0,0.1,1,0.6"], env_file="/nonexistent")
    assert cfg.crop == [0.0, 0.1, 1.0, 0.6]


def test_roundtrip_dict():
    cfg, _ = config.load(["--epochs=3"], env_file="/nonexistent")
    again = config.from_dict({**config.to_dict(cfg), "unknown_future_key": 1})
    assert again.epochs == 3 and again.train_classes == cfg.train_classes and again.crop == config.TORSO_CROP
    old = {k: v for k, v in config.to_dict(cfg).items() if k != "crop"}  # a checkpoint from before --crop
    assert config.from_dict(old).crop == [0.0, 0.0, 1.0, 1.0]  # was trained on whole frames: read them so


def test_seen_test_numbers_need_explicit_opt_in():
    with pytest.raises(SystemExit, match="allow_seen_test"):
        config.load(["--test_classes=4,48"], env_file="/nonexistent")
    cfg, _ = config.load(["--test_classes=4,48", "--allow_seen_test"], env_file="/nonexistent")
    assert cfg.test_classes == [4, 48]


def test_flag_given_reads_a_boolean_flag_before_the_full_parse():
    assert config.flag_given(["--zero_shot", "data/x"], "zero_shot")
    assert config.flag_given(["--zero_shot=true"], "zero_shot") and not config.flag_given(["--zero_shot=0"], "zero_shot")
    assert not config.flag_given(["--zero_shot", "false"], "zero_shot") and not config.flag_given(["--out=a"], "zero_shot")
