"""The pretrained-recognizer reader end to end on a tiny generated set: train (trunk maps cached), evaluate,
predict, and the zero-shot baseline through evaluate.py and predict.py."""
import json
import os

import onnx
import pytest
import torch

import config
import evaluate
import model as model_lib
import predict
import train
import utils
from conftest import tiny_synth
from experiments import onnx_check


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reader")
    root, out = tiny_synth(tmp)
    common = [f"--data_root={root}", f"--results_dir={out['results']}", f"--cache_dir={out['cache']}",
              "--method=reader", "--line_width=48", "--bands=2", "--batch_size=4", "--seq_len=3",
              "--train_classes=4,6,49", "--test_classes=48,64", "--val_split=0.34"]
    best, history = train.main(common + [f"--checkpoint_dir={out['checkpoints']}", f"--log_dir={out['logs']}",
                                         "--epochs=2", "--run_name=r"])
    return tmp, root, out, common, best, history


def test_reader_trains_on_cached_trunk_maps_and_keeps_the_trunk(run):
    tmp, _, out, _, best, history = run
    assert len(history) == 2 and 0 <= best <= 100
    assert [f for f in os.listdir(out["cache"]) if f.startswith("maps_ppocr_v4_")]  # the frozen trunk's maps
    ck = utils.load_checkpoint(os.path.join(out["checkpoints"], "best_model.pth"))
    assert ck["config"]["backbone"] == "ppocr_v4" and ck["config"]["finetune"] == "neck"
    net, _ = model_lib.model_from_checkpoint(ck)
    fresh = model_lib.build(config.from_dict(ck["config"])).backbone
    stem, neck = dict(fresh.stem.named_parameters()), dict(fresh.neck.named_parameters())
    assert stem and all(torch.equal(p, stem[k]) for k, p in net.backbone.stem.named_parameters())  # frozen
    assert any(not torch.equal(p, neck[k]) for k, p in net.backbone.neck.named_parameters())  # fine-tuned


def test_evaluate_reads_held_out_numbers_from_images(run):
    tmp, _, out, common, _, _ = run
    res = evaluate.main(common + [f"--checkpoint={out['checkpoints']}/best_model.pth",
                                  f"--out={tmp}/eval.json"])
    assert res["num_tracklets"] == 6 and res["numbers"] == [48, 64] and 0 <= res["accuracy"] <= 100
    assert len(res["predictions"]) == 6 and all(0 <= p["pred"] <= 99 for p in res["predictions"])


def test_zero_shot_baseline_in_evaluate_and_predict(run):
    tmp, root, out, common, _, _ = run
    res = evaluate.main(common + ["--zero_shot", f"--out={tmp}/zs.json"])
    with open(tmp / "zs.json") as f:
        saved = json.load(f)
    assert saved["rule"] == "zero_shot_vote" and saved["num_tracklets"] == 6 == len(saved["predictions"])
    assert saved["zero_shot"]["package"] == "rapidocr_onnxruntime==1.4.4"
    assert saved["accuracy"] == res["accuracy"] and 0 <= saved["no_answer"] <= 6
    preds, meta = predict.main(["--zero_shot", "--line_width=48", "--bands=2", "--seq_len=3",
                                str(root), "--out", str(tmp / "zs_pred.json")])
    assert meta["num_tracklets"] == 24 == meta["labelled"] and meta["zero_shot"] == "ppocr_v4"
    assert all((p["prediction"] == -1) == p["uncertain"] and len(p["frames"]) == 3 for p in preds)
    assert {p["true"] for p in preds} == {4, 6, 49, 48, 64}


def test_zero_shot_needs_a_text_recognizer(run):
    _, _, _, common, _, _ = run
    with pytest.raises(SystemExit, match="--zero_shot reads with a text recognizer"):
        evaluate.main(common + ["--zero_shot", "--method=torso"])


def test_predict_with_a_reader_checkpoint(run):
    tmp, root, out, _, _, _ = run
    ckpt = f"{out['checkpoints']}/best_model.pth"
    preds, meta = predict.main(["--checkpoint", ckpt, str(root / "48"), "--out", str(tmp / "p.json")])
    assert meta["num_tracklets"] == 3 and meta["int8_trunk"] is False
    assert all(0 <= p["prediction"] <= 99 and len(p["attention"]) == len(p["frames"]) == 3 * 2 for p in preds)
    assert preds[0]["frames"][1].endswith("#1")  # 3 frames x 2 bands, each weight beside its file and band
    with pytest.raises(SystemExit, match="already runs in onnxruntime"):
        predict.main(["--checkpoint", ckpt, str(root / "48"), "--quantize=true"])


def test_reader_exports_to_onnx_and_int8(run):
    """The whole reader (the recognizer's graph as torch ops, LSTM, attention, CTC) as one ONNX graph with
    dynamic batch and sequence length; its INT8 version quantizes the MatMuls and the LSTM, not the stem."""
    tmp, _, out, _, _, _ = run
    info = predict.main(["--checkpoint", f"{out['checkpoints']}/best_model.pth", "--export_onnx",
                         str(tmp / "r.onnx"), "--quantize"])
    assert info["max_abs_diff_vs_pytorch"] < 1e-3  # the same model, other batch and sequence lengths
    assert info["int8_onnx_mb"] < 0.75 * info["onnx_mb"] and info["int8_max_abs_diff_vs_pytorch"] < 0.25
    quantized = {n.op_type for n in onnx.load(info["int8_onnx"]).graph.node}
    assert "DynamicQuantizeLSTM" in quantized and "Conv" in quantized and "ConvInteger" not in quantized
    res = onnx_check.main([f"--checkpoint={out['checkpoints']}/best_model.pth", f"--onnx={tmp / 'r.onnx'},{info['int8_onnx']}",
                           f"--out={tmp / 'check.json'}", f"--cache_dir={out['cache']}"])
    float_graph, int8_graph = res["models"]["r.onnx"], res["models"]["r.int8.onnx"]
    assert res["tracklets"] == 6 and float_graph["agreement_with_pytorch"] == 100.0
    assert float_graph["accuracy"] == res["models"]["pytorch"]["accuracy"] and 0 <= int8_graph["accuracy"] <= 100
    with pytest.raises(SystemExit, match="no such file"):
        onnx_check.main([f"--checkpoint={out['checkpoints']}/best_model.pth", f"--onnx={tmp / 'none.onnx'}"])
