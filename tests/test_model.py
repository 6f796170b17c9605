import pytest
import torch

import model as model_lib
from model import JerseyTemporalNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return JerseyTemporalNet(pretrained=False, lstm_hidden=32, head_hidden=32).eval()


def test_output_shapes(net):
    out = net(torch.randn(3, 4, 3, 32, 32))
    assert out["tens"].shape == (3, 11) and out["units"].shape == (3, 11) and out["attention"].shape == (3, 4)
    assert torch.allclose(out["attention"].sum(1), torch.ones(3))


def test_mask_ignores_padding(net):
    x = torch.randn(2, 5, 3, 32, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    padded = x.clone()
    padded[0, 3:] = 123.0  # garbage in the padding must not change the answer
    with torch.no_grad():
        a, b = net(x, mask), net(padded, mask)
        alone = net(x[:1, :3])
    assert torch.allclose(a["tens"], b["tens"], atol=1e-5)
    assert torch.allclose(a["tens"][0], alone["tens"][0], atol=1e-4)
    assert (a["attention"][0, 3:] == 0).all()


def test_parameter_counts_and_freezing():
    m = JerseyTemporalNet(pretrained=False, freeze_fraction=0.6)
    total, trainable = model_lib.count_parameters(m)
    bb = list(m.backbone.parameters())
    frozen = int(len(bb) * 0.6)
    assert sum(not p.requires_grad for p in bb) == frozen
    assert trainable == total - sum(p.numel() for p in bb[:frozen])
    # ResNet-18 trunk (11,176,512) + BiLSTM 2x256 on 512-d input (3,153,920) + attention and two heads
    assert sum(p.numel() for p in bb) == 11_176_512
    assert sum(p.numel() for p in m.lstm.parameters()) == 3_153_920
    m.unfreeze(1.0)
    assert all(p.requires_grad for p in m.parameters())


def test_digit_probabilities_joint():
    tens = torch.full((1, 11), -9.0)
    tens[0, 4] = 9.0
    units = torch.full((1, 11), -9.0)
    units[0, 8] = 9.0
    p_num, p_tens, p_units = model_lib.probabilities({"tens": tens, "units": units})
    assert p_num.argmax(1).item() == 48 and p_units.shape == (1, 10)
    assert torch.allclose(p_num.sum(1), torch.ones(1))


def test_predict_returns_numbers():
    m = JerseyTemporalNet(pretrained=False, lstm_hidden=16, head_hidden=16, head="ctc")
    out = m.predict(torch.randn(2, 3, 3, 32, 32))
    assert out["number"].shape == (2,) and ((0 <= out["number"]) & (out["number"] < 100)).all()
    assert torch.allclose(out["confidence"], out["number_probs"].max(1).values)
    assert m.training  # predict restores the mode


def test_bad_backbone():
    with pytest.raises(ValueError, match="backbone"):
        JerseyTemporalNet(backbone="vgg", pretrained=False)


def test_small_cnn_backbone_keeps_an_eight_times_finer_map():
    m = JerseyTemporalNet(backbone="cnn", pretrained=True, lstm_hidden=16, head_hidden=16).eval()
    assert not m.pretrained_loaded  # there are no ImageNet weights for it: nothing is claimed
    assert m.backbone(torch.randn(1, 3, 64, 64)).shape == (1, 256, 8, 8)
    out = m(torch.randn(2, 3, 3, 64, 64))
    assert out["tens"].shape == (2, 11) and out["units"].shape == (2, 11)


def test_ensemble_reads_the_mean_of_its_members_probabilities(net):
    torch.manual_seed(1)
    ctc = JerseyTemporalNet(backbone="cnn_narrow", pretrained=False, lstm_hidden=32, head_hidden=32, head="ctc").eval()
    x = torch.randn(3, 4, 3, 32, 32)
    with torch.no_grad():
        members = [model_lib.probabilities(m(x))[0] for m in (net, ctc)]
        out = model_lib.Ensemble([net, ctc])(x)
        alone = model_lib.Ensemble([net, net])(x)
    p_num, p_tens, p_units = model_lib.probabilities(out)
    assert torch.allclose(p_num, (members[0] + members[1]) / 2, atol=1e-6)
    assert torch.allclose(p_tens.sum(1), torch.ones(3)) and torch.allclose(p_units.sum(1), torch.ones(3))
    assert torch.equal(model_lib.probabilities(alone)[0].argmax(1), members[0].argmax(1))  # one model twice: itself
    assert out["attention"].shape == (3, 4)
    fused = model_lib.fused_for_inference(model_lib.Ensemble([net, ctc]))
    with torch.no_grad():
        assert torch.allclose(model_lib.probabilities(fused(x))[0], p_num, atol=1e-4)
