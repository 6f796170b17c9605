"""Reading parts of the crop: the split reader (--split_views / --method=split: half views, their labels, the split
rule and its tuning) and the erased views (--erase_views / --method=erase)."""
import pytest
import torch

import config
import dataset
import evaluate as ev
import model as model_lib
import predict
import synth
import train
import utils
from dataset import EMPTY, NO_DIGIT


def two_colour(B=1, T=2, H=8, W=8):
    """[B, T, 3, H, W]: left half red, right half blue."""
    x = torch.zeros(B, T, 3, H, W)
    x[:, :, 0, :, :W // 2] = 1
    x[:, :, 2, :, W // 2:] = 1
    return x


def test_half_keeps_only_its_side_at_full_size():
    x = two_colour()
    left, right = dataset.half(x, "L"), dataset.half(x, "R")
    assert left.shape == right.shape == x.shape
    assert torch.allclose(left[:, :, 0], torch.ones(1, 2, 8, 8)) and left[:, :, 2].abs().max() < 1e-6
    assert torch.allclose(right[:, :, 2], torch.ones(1, 2, 8, 8)) and right[:, :, 0].abs().max() < 1e-6


def test_half_views_label_digits_of_two_digit_numbers_and_fragments_of_single_ones():
    torch.manual_seed(0)
    number = torch.tensor([49, 6, 8, 66])
    x, mask = two_colour(B=4, T=3), torch.tensor([[1, 1, 0]] * 4, dtype=torch.bool)
    mask[3] = True
    views, vmask, labels = dataset.half_views(x, mask, number, jitter=0.0)
    assert views.shape == (8, 3, 3, 8, 8) and vmask.shape == (8, 3)
    # 49 and 66 give (4, 9) and (6, 6); as many single digits (two) give fragments
    assert labels[:4].tolist() == [4, 9, 6, 6] and labels[4:].tolist() == [NO_DIGIT] * 4
    assert vmask[2:4].all() and not vmask[0, 2]  # each view keeps its source's padding mask
    assert views[0, :, 0].min() > 0.99 and views[1, :, 2].min() > 0.99  # left view red, right view blue


def test_half_views_need_a_two_digit_number_in_the_batch():
    x, mask = two_colour(B=2), torch.ones(2, 2, dtype=torch.bool)
    views, vmask, labels = dataset.half_views(x, mask, torch.tensor([4, 6]))
    assert len(views) == len(vmask) == len(labels) == 0
    views, _, labels = dataset.half_views(x, mask, torch.tensor([4, 66]))
    assert labels.tolist() == [6, 6, NO_DIGIT, NO_DIGIT]


def one_hot(rows, classes):
    """Probabilities with P(k) = v and the rest spread evenly, one row per (k, v)."""
    p = torch.empty(len(rows), classes)
    for i, (k, v) in enumerate(rows):
        p[i] = (1 - v) / (classes - 1)
        p[i, k] = v
    return p


def test_split_rule_reads_two_digits_from_halves_and_falls_back_to_argmax():
    # whole crop: 8 (tens empty). Halves: (4, 8) sure; (NO_DIGIT, 8); (0, 8); (4, 8) unsure
    pt = one_hot([(EMPTY, 0.9)] * 4, 11)
    pu = one_hot([(8, 0.9)] * 4, 10)
    pl = one_hot([(4, 0.9), (NO_DIGIT, 0.9), (0, 0.9), (4, 0.3)], 11)
    pr = one_hot([(8, 0.9), (8, 0.9), (8, 0.9), (8, 0.9)], 11)
    t, u, conf = ev.rule_split(pt, pu, pl, pr, threshold=0.5)
    assert dataset.reconstruct(t, u).tolist() == [48, 8, 8, 8]
    assert abs(conf[0] - pl[0, 4] * pr[0, 8]) < 1e-6 and abs(conf[1] - pt[1, EMPTY] * pu[1, 8]) < 1e-6
    # threshold 0: any two whole digits with a real tens digit count; threshold 1: never split
    assert dataset.reconstruct(*ev.rule_split(pt, pu, pl, pr, 0.0)[:2]).tolist() == [48, 8, 8, 48]
    assert torch.equal(dataset.reconstruct(*ev.rule_split(pt, pu, pl, pr, 1.0)[:2]), torch.tensor([8] * 4))


def test_split_rule_only_with_halves_and_its_threshold_is_tuned_on_validation():
    cfg = config.Config()
    pt, pu = one_hot([(EMPTY, 0.9)] * 3, 11), one_hot([(9, 0.9), (9, 0.9), (4, 0.9)], 10)
    pl = one_hot([(4, 0.7), (4, 0.3), (NO_DIGIT, 0.9)], 11)
    pr = one_hot([(9, 0.9), (9, 0.3), (NO_DIGIT, 0.9)], 11)
    res = {"p_tens": pt, "p_units": pu, "tens": torch.tensor([4, EMPTY, EMPTY]), "units": torch.tensor([9, 9, 4]),
           "number": torch.tensor([49, 9, 4])}
    assert "split" not in ev.score(res, cfg, {4: 1})[0]
    res |= {"p_left": pl, "p_right": pr}
    # 49 needs threshold < 0.63 (0.7 x 0.9), the 9 needs >= 0.09 (0.3 x 0.3): 0.6 .. 0.1 fit, and the grid
    # runs from 1 (never split) down, so the mildest that fits wins
    assert ev.tune_split_threshold(res) == 0.6
    cfg.split_threshold = 0.6
    rules, _ = ev.score(res, cfg, {4: 1})
    assert rules["split"]["accuracy"] == 100.0 and rules["argmax"]["accuracy"] < 100.0


def test_split_config_errors():
    for argv, msg in ((["--rule=split"], "rule=split or halves needs"), (["--rule=halves"], "rule=split or halves"),
                      (["--split_views=1", "--head=ctc"], "need --head=digits"),
                      (["--read_halves", "--head=compositional"], "need --head=digits")):
        with pytest.raises(config.ConfigError, match=msg):
            config.load(argv)
    cfg, _ = config.load(["--method=split"])
    assert cfg.split_views == 1.0 and cfg.rule == "split" and cfg.crop == config.TORSO_CROP
    assert config.load(["--read_halves", "--rule=halves"])[0].reads_halves()


def test_halves_rule_takes_both_digits_from_the_halves_where_the_whole_crop_reads_two():
    # whole crop: 49 (a memorised number), 8 (one digit). Halves: 4 and 8 for both; the left half's fragment
    # class and a 0 never become a tens digit
    pt, pu = one_hot([(4, 0.9), (EMPTY, 0.9), (6, 0.9)], 11), one_hot([(9, 0.9), (8, 0.9), (6, 0.9)], 10)
    pl = one_hot([(4, 0.6), (4, 0.6), (NO_DIGIT, 0.5)], 11)
    pl[2, 0], pl[2, 8] = 0.3, 0.15
    pr = one_hot([(8, 0.6)] * 3, 11)
    t, u, conf = ev.rule_halves(pt, pu, pl, pr)
    assert dataset.reconstruct(t, u).tolist() == [48, 8, 88]
    assert abs(float(conf[0]) - 0.36) < 1e-6 and abs(float(conf[1]) - 0.81) < 1e-6


def test_training_with_split_views_then_evaluate_and_predict_answer_with_the_split_rule(tmp_path):
    root = synth.generate(tmp_path / "data", counts={4: 6, 6: 6, 49: 6, 48: 3}, seed=0, workers=1, progress=False)
    common = [f"--data_root={root}", f"--checkpoint_dir={tmp_path}/ck", f"--results_dir={tmp_path}/res",
              f"--log_dir={tmp_path}/logs", f"--cache_dir={tmp_path}/cache", "--img_size=32", "--batch_size=4",
              "--pretrained=false", "--train_classes=4,6,49", "--test_classes=48", "--val_split=0.34"]
    train.main(common + ["--epochs=1", "--method=split"])
    ckpt = f"{tmp_path}/ck/best_model.pth"
    threshold = utils.load_checkpoint(ckpt)["config"]["split_threshold"]  # tuned on validation by train.py
    assert threshold in [round(0.1 * k, 1) for k in range(11)]
    res = ev.main([f"--checkpoint={ckpt}", f"--out={tmp_path}/eval.json", f"--results_dir={tmp_path}/res",
                   f"--cache_dir={tmp_path}/cache"])
    assert res["rule"] == "split" and set(res["rules"]) == set(ev.RULES) | {"split", "halves"}
    assert res["accuracy"] == res["rules"]["split"]["accuracy"] and len(res["predictions"]) == 3
    assert res["config"]["split_threshold"] == threshold
    preds, _ = predict.main(["--checkpoint", ckpt, str(root / "48"), "--out", str(tmp_path / "p.json"),
                             f"--cache_dir={tmp_path}/cache"])
    by_path = {p["path"]: p["pred"] for p in res["predictions"]}
    assert {p["tracklet"]: p["prediction"] for p in preds} == by_path
    # any digits model reads the halves at evaluation with --read_halves; predict.py follows --rule=halves
    flags = ["--split_views=0", "--read_halves", "--rule=halves", f"--cache_dir={tmp_path}/cache"]
    res = ev.main([f"--checkpoint={ckpt}", f"--out={tmp_path}/eval_h.json", f"--results_dir={tmp_path}/res", *flags])
    assert res["accuracy"] == res["rules"]["halves"]["accuracy"] and {"split", "halves"} <= set(res["rules"])
    preds, _ = predict.main(["--checkpoint", ckpt, str(root / "48"), "--out", str(tmp_path / "p.json"), *flags])
    assert {p["tracklet"]: p["prediction"] for p in preds} == {p["path"]: p["pred"] for p in res["predictions"]}


def test_answers_follow_the_split_or_halves_rule_only_when_set_to():
    pt, pu = one_hot([(EMPTY, 0.9)], 11), one_hot([(8, 0.9)], 10)
    res = {"p_tens": pt, "p_units": pu, "p_num": model_lib.number_probs(pt, pu),
           "p_left": one_hot([(4, 0.9)], 11), "p_right": one_hot([(8, 0.9)], 11)}
    cfg = config.Config(split_views=1.0, rule="split", split_threshold=0.5)
    number, conf = ev.answers(res, cfg)
    assert number.tolist() == [48] and abs(float(conf[0]) - 0.81) < 1e-6
    cfg.rule = "argmax"
    assert ev.answers(res, cfg)[0].tolist() == [8]
    res["p_tens"] = one_hot([(4, 0.9)], 11)  # the whole crop reads 49; the halves say 4 and 8
    res["p_units"] = one_hot([(9, 0.9)], 10)
    res["p_num"] = model_lib.number_probs(res["p_tens"], res["p_units"])
    assert ev.answers(res, cfg)[0].tolist() == [49]
    cfg.rule = "halves"
    assert ev.answers(res, cfg)[0].tolist() == [48]


def test_uncertain_threshold_uses_the_confidences_of_the_answers_predict_gives():
    # the whole crop reads 49 (wrong) at 0.81; the halves read 48 (right) at 0.36 = 0.6 x 0.6
    pt, pu = one_hot([(4, 0.9)], 11), one_hot([(9, 0.9)], 10)
    res = {"p_tens": pt, "p_units": pu, "p_num": model_lib.number_probs(pt, pu), "number": torch.tensor([48]),
           "p_left": one_hot([(4, 0.6)], 11), "p_right": one_hot([(8, 0.6)], 11)}
    assert train.uncertain_threshold(res, config.Config(read_halves=True)) == 0.5  # argmax: nothing right
    assert train.uncertain_threshold(res, config.Config(read_halves=True, rule="halves")) == pytest.approx(0.36)


def test_erased_views_hide_one_side_in_place_and_label_what_is_left():
    torch.manual_seed(0)
    number = torch.tensor([49, 6, 86, 4, 8])
    x, mask = torch.rand(5, 3, 3, 8, 10), torch.tensor([[1, 1, 0]] * 5, dtype=torch.bool)
    mask[2] = True
    views, vmask, labels, head = dataset.erased_views(x, mask, number, jitter=0.0)
    assert views.shape == (6, 3, 3, 8, 10) and vmask.shape == (6, 3)
    # tens views: 49 -> 4, 86 -> 8, two single digits -> EMPTY; units views: 49 -> 9, 86 -> 6
    assert labels.tolist() == [4, 8, EMPTY, EMPTY, 9, 6] and head.tolist() == [0, 0, 0, 0, 1, 1]
    assert torch.equal(vmask[[0, 1, 4, 5]], mask[[0, 2, 0, 2]])
    # what stays is untouched and in place; the painted side is one colour per frame and channel, its own mean
    assert torch.equal(views[0, ..., :5], x[0, ..., :5]) and torch.equal(views[4, ..., 5:], x[0, ..., 5:])
    painted = torch.cat([views[:4, ..., 5:], views[4:, ..., :5]])
    assert (painted.amax(dim=(-2, -1)) - painted.amin(dim=(-2, -1))).abs().max() < 1e-6
    assert torch.allclose(views[0, ..., 5:].mean(dim=(-2, -1)), x[0, ..., 5:].mean(dim=(-2, -1)))
    assert len(dataset.erased_views(x, mask, torch.tensor([4, 6, 8, 9, 4]))[0]) == 0


def test_erased_views_for_the_ctc_reader_are_the_digits_left_standing():
    number = torch.tensor([49, 6, 86, 4, 8])
    x, mask = torch.rand(5, 3, 3, 8, 10), torch.ones(5, 3, dtype=torch.bool)
    views, _, labels, head = dataset.erased_views(x, mask, number, jitter=0.0, empty_views=False)
    assert len(views) == 4 and labels.tolist() == [4, 8, 9, 6] and head.tolist() == [0, 0, 1, 1]
    # the CTC reader's loss on them: minus the mean log-likelihood of the digit left, times the weight
    logp = torch.full((4, 100), -9.0)
    logp[torch.arange(4), labels] = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    cfg = config.Config(head="ctc", erase_views=0.5)
    assert float(train.view_loss(cfg, None, (views, None, labels, head), None, {"number": logp})) == \
        pytest.approx(0.5 * 2.5)


def test_forward_with_views_returns_each_groups_own_outputs():
    cfg = config.Config(backbone="cnn", img_size=32, pretrained=False)
    net = model_lib.build(cfg).eval()
    x, mask = torch.rand(2, 3, 3, 32, 32), torch.ones(2, 3, dtype=torch.bool)
    g1 = (torch.rand(3, 3, 3, 32, 32), torch.ones(3, 3, dtype=torch.bool), None)
    g2 = (torch.rand(1, 3, 3, 32, 32), torch.ones(1, 3, dtype=torch.bool), None)
    empty = (x[:0], mask[:0], None)
    with torch.no_grad():
        out, (a, none1, none2, b) = train.forward_with_views(net, x, mask, g1, None, empty, g2)
        assert none1 is None and none2 is None and out["tens"].shape == (2, 11)
        for got, (v, m, _) in ((a, g1), (b, g2), (out, (x, mask, None))):
            assert torch.allclose(got["units"], net(v, m)["units"], atol=1e-5)


def test_erased_view_loss_trains_each_head_on_its_own_views():
    cfg = config.Config(erase_views=0.5, label_smoothing=0.0)
    labels, head = torch.tensor([4, EMPTY, 9]), torch.tensor([0, 0, 1])
    hot = lambda k: 20 * torch.nn.functional.one_hot(torch.tensor(k), 11).float()  # noqa: E731
    right = {"tens": hot([4, EMPTY, 0]), "units": hot([0, 0, 9])}
    swapped = {"tens": right["units"], "units": right["tens"]}  # each head right on the other head's views only
    views = (None, None, labels, head)
    assert train.view_loss(cfg, None, views, None, right) < 1e-6
    # wrong by a 20-logit margin: ~20 nats per view, mean per head (tens, units), both halved by the weight
    assert abs(float(train.view_loss(cfg, None, views, None, swapped)) - 0.5 * (20 + 20)) < 1e-3
    assert train.view_loss(cfg, None, None, None, None) == 0.0


def test_erase_config_and_a_training_run_with_erased_views(tmp_path):
    cfg, _ = config.load(["--method=erase"])
    assert cfg.erase_views == 1.0 and cfg.crop == config.TORSO_CROP and cfg.rule == "argmax"
    for argv, msg in ((["--erase_views=1", "--head=compositional"], "erase_views needs --head=digits or ctc"),
                      (["--erase_views=-1"], "erase_views must be >= 0")):
        with pytest.raises(config.ConfigError, match=msg):
            config.load(argv)
    root = synth.generate(tmp_path / "data", counts={4: 6, 49: 6, 66: 6}, seed=0, workers=1, progress=False)
    for head in ("digits", "ctc"):
        train.main([f"--data_root={root}", f"--checkpoint_dir={tmp_path}/{head}", f"--results_dir={tmp_path}/res",
                    f"--log_dir={tmp_path}/logs", f"--cache_dir={tmp_path}/cache", "--img_size=32", "--batch_size=4",
                    "--pretrained=false", "--train_classes=4,49,66", "--test_classes=48", "--val_split=0.34",
                    "--epochs=1", "--method=erase", f"--head={head}", "--backbone=cnn"])
        ckpt = utils.load_checkpoint(f"{tmp_path}/{head}/best_model.pth")
        assert ckpt["config"]["erase_views"] == 1.0 and ckpt["config"]["head"] == head
        assert [h["skipped_steps"] for h in ckpt["history"]] == [0] and ckpt["history"][0]["train_loss"] > 0
