"""The CTC reader (head=ctc), eval-time frame de-duplication and conv+BN folding."""
import json

import pytest
import torch
import torch.nn.functional as F

import analyze_weights
import config
import decoding
import engine
import evaluate
import model as model_lib
import predict
import synth
import train
from model import JerseyTemporalNet


def _ctc_reference(logp, n):
    """log P(digits of n) from PyTorch's own CTC loss."""
    N, W, _ = logp.shape
    tgt = torch.tensor([[n]] if n < 10 else [[n // 10, n % 10]]).expand(N, -1)
    return -F.ctc_loss(logp.transpose(0, 1), tgt, torch.full((N,), W), torch.full((N,), tgt.shape[1]),
                       blank=model_lib.BLANK, reduction="none")


@pytest.mark.parametrize("n", [0, 4, 9, 10, 44, 48, 49, 88, 99])
def test_ctc_forward_matches_torch_ctc_loss(n):
    torch.manual_seed(n)
    logp = torch.randn(5, 8, 11).log_softmax(-1)
    assert torch.allclose(model_lib.ctc_number_logprob(logp)[:, n], _ctc_reference(logp, n), atol=1e-4)


def test_ctc_reads_a_crafted_alignment():
    """Columns that say blank, 4, 4, blank, 8, blank... read as 48; blank, 8, 8, blank as 8, not 88."""
    def columns(symbols):
        logp = torch.full((1, len(symbols), 11), -20.0)
        for t, s in enumerate(symbols):
            logp[0, t, s] = 0.0
        return logp
    b = model_lib.BLANK
    assert model_lib.ctc_number_logprob(columns([b, 4, 4, b, 8, b, b, b]))[0].argmax() == 48
    assert model_lib.ctc_number_logprob(columns([b, 8, 8, b, b, b, b, b]))[0].argmax() == 8
    assert model_lib.ctc_number_logprob(columns([b, 8, b, 8, b, b, b, b]))[0].argmax() == 88
    # the probabilities of the 100 numbers never exceed the whole CTC mass
    assert model_lib.ctc_number_logprob(torch.randn(3, 8, 11).log_softmax(-1)).exp().sum(1).le(1 + 1e-5).all()


def test_blank_penalty_turns_a_faint_tens_digit_into_a_two_digit_read():
    """One frame whose first column leans blank (0.6) over 4 (0.4), then a clear 8: read 8 without a penalty and
    48 once blank costs a little more; penalty 0 is the plain mixture of the per-frame CTC scores."""
    b = model_lib.BLANK
    p = torch.full((1, 1, 6, 11), 1e-4)
    p[0, 0, 0, [b, 4]] = torch.tensor([0.6, 0.4])
    p[0, 0, 1, 8] = p[0, 0, 2:, b] = 1.0
    cols, attn = (p / p.sum(-1, keepdim=True)).log(), torch.ones(1, 1)
    assert torch.allclose(model_lib.ctc_mixture(cols, attn), model_lib.ctc_number_logprob(cols[:, 0]))
    assert model_lib.ctc_mixture(cols, attn).argmax() == 8
    assert model_lib.ctc_mixture(cols, attn, blank_penalty=1.0).argmax() == 48


def test_blank_penalty_applies_when_decoding_only():
    torch.manual_seed(0)
    net = JerseyTemporalNet(backbone="cnn", pretrained=False, lstm_hidden=16, head_hidden=16, head="ctc")
    x = torch.randn(2, 3, 3, 64, 64)
    net.eval()
    plain = net(x)
    net.blank_penalty = 2.0
    pen = net(x)
    assert torch.equal(plain["columns"], pen["columns"]) and not torch.allclose(plain["number"], pen["number"])
    assert torch.allclose(pen["number"], model_lib.ctc_mixture(plain["columns"], plain["attention"], 2.0))
    res = {"columns": plain["columns"], "attention": plain["attention"]}
    assert torch.allclose(decoding.with_blank_penalty(res, 2.0)["p_num"], model_lib.probabilities(pen)[0])
    net.train()  # the training loss is the CTC likelihood itself, never the penalised one
    torch.manual_seed(1)
    trained = net(x)["number"]
    net.blank_penalty = 0.0
    torch.manual_seed(1)
    assert torch.equal(trained, net(x)["number"])


@pytest.mark.parametrize("backbone", ["resnet18", "cnn", "cnn_narrow"])
def test_ctc_model_shapes_and_finite_gradients(backbone):
    torch.manual_seed(0)
    net = JerseyTemporalNet(backbone=backbone, pretrained=False, lstm_hidden=16, head_hidden=16, head="ctc")
    x = torch.randn(3, 4, 3, 64, 64)
    out = net(x)
    assert out["number"].shape == (3, 100) and (out["number"] <= 1e-4).all()
    cfg = config.Config(head="ctc")
    crit = engine.Criterion(cfg, [4, 6, 49], "cpu")
    number = torch.tensor([4, 49, 6])
    loss = crit(out, number, number, number)
    expected = -(crit.weights["number"][number] * out["number"][torch.arange(3), number]).sum() \
        / crit.weights["number"][number].sum()
    assert torch.allclose(loss, expected)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    p_num, p_tens, p_units = model_lib.probabilities(out)
    assert torch.allclose(p_num.sum(1), torch.ones(3), atol=1e-5) and p_tens.shape == (3, 11)


def test_ctc_columns_stretch_a_narrow_map():
    """A ResNet's 2-column map at 64 px is read as 8 columns, so '88' (8, blank, 8) still fits."""
    torch.manual_seed(0)
    net = JerseyTemporalNet(pretrained=False, lstm_hidden=16, head_hidden=16, head="ctc").eval()
    _, _, cols = net.encode(torch.randn(2, 3, 3, 64, 64))
    assert cols.shape == (2, 3, 8, 11) and torch.allclose(cols.exp().sum(-1), torch.ones(2, 3, 8), atol=1e-4)


def _input_columns_seen(fn, x, col):
    """The input columns (x positions) output column `col` of fn(x) [N, C, (h,) W] depends on."""
    x = x.clone().requires_grad_(True)
    y = fn(x)
    y[..., col].sum().backward()
    seen = (x.grad.abs().sum(tuple(range(x.dim() - 1))) > 0).nonzero().flatten()
    return seen.min().item(), seen.max().item()


def test_narrow_trunk_sees_strips_of_the_crop_and_the_plain_one_the_whole_crop():
    name, strip, columns = "cnn_narrow", 22, 8
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    net = model_lib.trunk(name, False)[0].eval()
    assert net(x).shape == (1, config.BACKBONES[name], 8, columns)
    (lo, hi), (lo2, hi2) = _input_columns_seen(net, x, columns // 2), _input_columns_seen(net, x, columns // 2 + 1)
    assert hi - lo + 1 == hi2 - lo2 + 1 == strip and lo2 - lo == 64 // columns
    assert lo <= 36 <= hi  # the middle column is centred near the middle of the crop
    lo, hi = _input_columns_seen(model_lib.trunk("cnn", False)[0].eval(), x, 4)
    assert hi - lo + 1 > 50


def test_ctc_context_zero_reads_each_column_alone_and_survives_the_checkpoint_config():
    torch.manual_seed(0)
    fmap = torch.randn(2, 16, 4, 8)
    alone = model_lib.ColumnReader(16, 8, 0.0, 8, context=0).eval()
    assert _input_columns_seen(lambda f: alone(f).transpose(1, 2), fmap, 3) == (3, 3)
    wide = model_lib.ColumnReader(16, 8, 0.0, 8).eval()  # the default sees one column on each side
    assert _input_columns_seen(lambda f: wide(f).transpose(1, 2), fmap, 3) == (2, 4)
    assert config.from_dict({"head": "ctc", "ctc_context": 0}).ctc_context == 0
    assert config.from_dict({"head": "ctc"}).ctc_context == 1  # checkpoints from before the option
    with pytest.raises(config.ConfigError, match="ctc_context"):
        config.load(["--ctc_context=-1"], env_file="")


@pytest.mark.parametrize("head", ["digits", "ctc"])
def test_repeated_frames_are_computed_once_with_the_same_answer(head, monkeypatch):
    torch.manual_seed(0)
    net = JerseyTemporalNet(backbone="cnn", pretrained=False, lstm_hidden=16, head_hidden=16, head=head).eval()
    x = torch.randn(2, 5, 3, 32, 32)
    x[0, 3:] = x[0, 2]  # padding by repeating the last frame
    x[1, 4] = x[1, 3]
    assert model_lib.repeats(x).tolist() == [False] * 3 + [True, True] + [False] * 4 + [True]
    calls = []
    monkeypatch.setattr(net.backbone, "forward", lambda f, fwd=net.backbone.forward: calls.append(len(f)) or fwd(f))
    with torch.no_grad():
        fast = net(x)
        monkeypatch.setattr(model_lib, "repeats", lambda x: torch.zeros(x.shape[0] * x.shape[1], dtype=torch.bool))
        slow = net(x)
    assert calls == [7, 10]
    key = "tens" if head == "digits" else "number"
    assert torch.allclose(fast[key], slow[key], atol=1e-5)


def test_fused_for_inference_gives_the_same_outputs():
    torch.manual_seed(0)
    net = JerseyTemporalNet(pretrained=False, lstm_hidden=16, head_hidden=16)
    net.train()(torch.randn(4, 2, 3, 32, 32))  # non-trivial BatchNorm running statistics
    net.eval()
    fused = model_lib.fused_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbone.modules())
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)["tens"], fused(x)["tens"], atol=1e-4)
    assert net.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.backbone.modules())


def test_ctc_end_to_end_train_evaluate_analyze(tmp_path):
    root = synth.generate(tmp_path / "data", counts={4: 4, 6: 4, 49: 4, 48: 2}, seed=0, workers=1, progress=False)
    common = [f"--data_root={root}", f"--checkpoint_dir={tmp_path / 'ck'}", f"--results_dir={tmp_path / 'res'}",
              f"--log_dir={tmp_path / 'logs'}", f"--cache_dir={tmp_path / 'cache'}", "--img_size=32", "--batch_size=4",
              "--pretrained=false", "--backbone=cnn", "--train_classes=4,6,49", "--test_classes=48",
              "--val_split=0.34", "--lstm_hidden=16", "--head_hidden=16"]
    best, history = train.main(common + ["--epochs=1", "--head=ctc", "--mixup_prob=0"])
    assert len(history) == 1 and torch.isfinite(torch.tensor([history[0]["train_loss"], history[0]["val_loss"]])).all()
    ckpt = f"--checkpoint={tmp_path / 'ck' / 'best_model.pth'}"
    res = evaluate.main([ckpt, f"--out={tmp_path / 'eval.json'}", f"--cache_dir={tmp_path / 'cache'}"])
    assert set(res["rules"]) == set(config.RULES) and sum(v["total"] for v in res["per_number"].values()) == 2
    assert all(0 <= p["pred"] <= 99 for p in json.loads((tmp_path / "eval.json").read_text())["predictions"])
    s = analyze_weights.main([ckpt, f"--results_dir={tmp_path / 'res'}"])
    assert "columns" in s["components"] and s["heads"]["columns"]["weight"]["shape"] == [11, 16, 1]
    tuned = evaluate.main([ckpt, "--tune_blank", f"--out={tmp_path / 'tuned.json'}", f"--cache_dir={tmp_path / 'cache'}"])
    penalty = tuned["config"]["blank_penalty"]
    assert penalty in decoding.BLANK_PENALTIES
    fixed = evaluate.main([ckpt, f"--blank_penalty={penalty}", f"--out={tmp_path / 'fixed.json'}",
                           f"--cache_dir={tmp_path / 'cache'}"])  # the model's own penalty reads as the re-decoding
    assert [p["confidence"] for p in fixed["predictions"]] == [p["confidence"] for p in tuned["predictions"]]
    info = predict.main([ckpt, "--export_onnx", str(tmp_path / "ctc.onnx")])  # the CTC forward exports too
    assert info["max_abs_diff_vs_pytorch"] < 1e-4
