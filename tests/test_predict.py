"""predict.py: every input kind, JSON and CSV output, the uncertainty flag, ONNX export, INT8, clear errors."""
import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import config
import dataset
import model as model_lib
import predict
import utils
from conftest import write_tracklet

NUMBERS = (4, 6, 49)
THRESHOLD = 0.6  # stored in the checkpoint as if train.py had chosen it


def fit(net, samples, cfg, steps=30):
    """Fit the digit heads on the (random) backbone's embeddings of the tracklets predict.py will see: cheap,
    and the checkpoint then makes real, confident predictions to compare INT8 against."""
    store = dataset.FrameStore(samples, cfg.img_size, cfg.sharpen, crop=cfg.crop)
    ds = dataset.TrackletDataset(samples, store, cfg.seq_len, "uniform", use_anchor=False)
    batch = dataset.collate([ds[i] for i in range(len(ds))])
    net.eval()
    with torch.no_grad():
        z = net.encode(dataset.normalize(dataset.to_input(batch["frames"], "cpu")))[0]
    heads = (net.tens, net.units)
    opt = torch.optim.Adam([p for h in heads for p in h.parameters()], lr=1e-2)
    for h in heads:
        h.train()
    for _ in range(steps):
        loss = F.cross_entropy(net.tens(z), batch["tens"]) + F.cross_entropy(net.units(z), batch["units"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in (m for h in heads for m in h.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        m.reset_running_stats()
        m.momentum = None  # the next forward sets the running statistics to this batch's, for eval mode
    with torch.no_grad():
        net.tens(z), net.units(z)
    return net.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint (fitted on the SPEC-layout tree) and one input of every kind predict.py accepts."""
    tmp = tmp_path_factory.mktemp("predict")
    spec = tmp / "spec"
    for n in NUMBERS:
        for seq in range(3):
            write_tracklet(spec / str(n) / f"player_{seq}_seq_{seq}" / "0", 3 + seq, anchor=0 if seq == 0 else None,
                           text=str(n), seed=n + seq)
    cfg = config.Config(img_size=32, seq_len=4, pretrained=False, lstm_hidden=16, head_hidden=16, batch_size=4,
                        dropout=0.0, train_classes=list(NUMBERS), test_classes=[48], amp=False,
                        crop=config.TORSO_CROP)  # predict.py must cut new footage as the checkpoint was trained
    torch.manual_seed(0)
    net = fit(model_lib.build(cfg), dataset.crawl(str(spec))[0], cfg)
    ckpt = tmp / "model.pth"
    torch.save({"model": net.state_dict(), "config": config.to_dict(cfg), "uncertain_threshold": THRESHOLD}, ckpt)

    single = tmp / "single"  # one tracklet in every image mode real crops come in
    write_tracklet(single, 2, anchor=1, text="6", seed=1)
    Image.new("L", (20, 50), 90).save(single / "f_gray.jpg")
    Image.new("CMYK", (25, 40), (0, 80, 160, 20)).save(single / "f_cmyk.jpg")
    Image.new("RGBA", (30, 30), (200, 10, 10, 120)).save(single / "f_alpha.png")
    Image.new("P", (12, 70), 3).save(single / "f_palette.png")
    Image.new("RGB", (1, 1), (5, 5, 5)).save(single / "f_1px.jpg")
    write_tracklet(tmp / "one", 1, text="9", seed=2)  # one frame long
    for name in ("a", "b"):
        write_tracklet(tmp / "many" / name, 3, text="49", seed=3)
    (tmp / "many" / "empty").mkdir()
    sn = tmp / "soccernet" / "valid"  # SoccerNet layout: images/<id>/ and <split>_gt.json
    for tid, n in (("0", 4), ("1", -1), ("2", 49)):
        write_tracklet(sn / "images" / tid, 2 + int(tid), text=str(abs(n)), seed=int(tid))
    (sn / "valid_gt.json").write_text(json.dumps({"0": 4, "1": -1, "2": 49}))
    inputs = {"spec": spec, "single": single, "one": tmp / "one", "many": tmp / "many", "soccernet": sn}
    return tmp, str(ckpt), net, cfg, {k: str(v) for k, v in inputs.items()}


@pytest.fixture(scope="module")
def predicted(setup):
    tmp, ckpt, _, _, inputs = setup
    out = tmp / "preds.json"
    predict.main(["--checkpoint", ckpt, *inputs.values(), "--out", str(out)])
    return json.loads(out.read_text())


def direct(net, cfg, row):
    """The model run by hand on exactly the frames the row says it used."""
    frames = np.stack([dataset.load_frame(os.path.join(row["tracklet"], f), cfg.img_size, cfg.sharpen, cfg.crop)
                       for f in row["frames"]])
    return net.predict(dataset.normalize(dataset.to_input(torch.from_numpy(frames)[None], "cpu")))


def test_every_input_kind_gives_one_record_per_tracklet(setup, predicted):
    tmp, _, _, cfg, inputs = setup
    preds = predicted["predictions"]
    by_dir = {}
    for p in preds:
        by_dir.setdefault(os.path.relpath(p["tracklet"], tmp).split(os.sep)[0], []).append(p)
    assert {k: len(v) for k, v in by_dir.items()} == {"spec": 9, "single": 1, "one": 1, "many": 2, "soccernet": 3}
    assert predicted["num_tracklets"] == 16 and predicted["skipped"] == {"empty tracklet folder": 1}
    assert predicted["int8_trunk"] is False  # --quantize=auto, and this checkpoint stores no activation ranges
    assert sorted(p["true"] for p in by_dir["spec"]) == sorted(n for n in NUMBERS for _ in range(3))
    assert sorted(p["true"] for p in by_dir["soccernet"]) == [-1, 4, 49]
    assert not any("true" in p for k in ("single", "one", "many") for p in by_dir[k])
    # anchor frames are never used (new footage has none); one-frame tracklets are padded by repetition
    assert not any("_anchor" in f for p in preds for f in p["frames"])
    assert by_dir["one"][0]["frames"] == ["1_100_0.jpg"] * cfg.seq_len
    odd = {"f_gray.jpg", "f_cmyk.jpg", "f_alpha.png", "f_palette.png", "f_1px.jpg"}
    assert set(by_dir["single"][0]["frames"]) - {"1_100_0.jpg"} <= odd  # no anchor; none skipped (above)


def test_record_contents_are_consistent(predicted):
    for p in predicted["predictions"]:
        top = p["top3"]
        assert top[0]["number"] == p["prediction"] and top[0]["probability"] == p["confidence"]
        assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
        assert len({t["number"] for t in top}) == 3
        assert list(p["tens_probs"]) == [str(d) for d in range(10)] + ["empty"] and len(p["units_probs"]) == 10
        assert sum(p["tens_probs"].values()) == pytest.approx(1, abs=2e-3)
        assert sum(p["units_probs"].values()) == pytest.approx(1, abs=2e-3)
        assert len(p["attention"]) == len(p["frames"]) == 4 and sum(p["attention"]) == pytest.approx(1, abs=2e-3)


def test_predictions_equal_the_model_on_the_listed_frames(setup, predicted):
    _, _, net, cfg, _ = setup
    for p in predicted["predictions"][::3]:
        out = direct(net, cfg, p)
        assert int(out["number"][0]) == p["prediction"]
        assert float(out["confidence"][0]) == pytest.approx(p["confidence"], abs=1e-4)
        assert out["attention"][0].tolist() == pytest.approx(p["attention"], abs=1e-4)


def test_uncertain_flag_uses_the_checkpoint_threshold(setup, predicted):
    tmp, ckpt, _, _, inputs = setup
    assert predicted["uncertain_below"] == THRESHOLD
    preds = predicted["predictions"]
    assert all(p["uncertain"] == (p["confidence"] < THRESHOLD) for p in preds)
    assert predicted["uncertain"] == sum(p["uncertain"] for p in preds)
    # this checkpoint stores no not-visible threshold: it never answers -1, so its -1 tracklet is a miss
    assert predicted["not_visible"] == {"tracklets": 1, "answered": 0, "precision": None, "recall": 0.0}
    labelled = [p for p in preds if "true" in p]
    assert predicted["labelled"] == len(labelled) == 12
    assert predicted["accuracy"] == round(100 * sum(p["prediction"] == p["true"] for p in labelled) / 12, 2)
    for value, flagged in (("1", 3), ("0", 0)):
        _, meta = predict.main(["--checkpoint", ckpt, inputs["soccernet"], f"--uncertain_below={value}",
                                "--out", str(tmp / f"u{value}.json")])
        assert meta["uncertain"] == flagged and meta["uncertain_below"] == float(value)


def test_csv_output_matches_json(setup, predicted):
    tmp, ckpt, _, _, inputs = setup
    out = tmp / "preds.csv"
    predict.main(["--checkpoint", ckpt, inputs["spec"], inputs["one"], "--out", str(out)])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 and list(rows[0]) == predict.CSV_COLUMNS
    ref = {p["tracklet"]: p for p in predicted["predictions"]}
    for r in rows:
        p = ref[r["tracklet"]]
        assert int(r["prediction"]) == p["prediction"] and float(r["confidence"]) == p["confidence"]
        assert float(r["p_tens_empty"]) == p["tens_probs"]["empty"] and int(r["top3"]) == p["top3"][2]["number"]
        assert r["frames"].split() == p["frames"] and [float(a) for a in r["attention"].split()] == p["attention"]
    assert {r["true"] for r in rows} == {"4", "6", "49", ""}


def test_onnx_export_matches_pytorch(setup, tmp_path):
    import onnxruntime as ort
    _, ckpt, net, cfg, _ = setup
    path = tmp_path / "model.onnx"
    info = predict.main(["--checkpoint", ckpt, "--export-onnx", str(path)])
    assert info["max_abs_diff_vs_pytorch"] < 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", "time", 3, 32, 32]
    view = predict.OnnxView(net).eval()
    for b, t in ((1, 1), (5, 9)):  # neither is the export example's (2, seq_len)
        x = torch.rand(b, t, 3, 32, 32)
        with torch.no_grad():
            ref = view(x)
        got = sess.run(predict.ONNX_OUTPUTS, {"frames": x.numpy()})
        assert [g.shape for g in got] == [(b, 100), (b, 11), (b, 10), (b, t)]
        for g, r in zip(got, ref):
            assert np.abs(g - r.numpy()).max() < 1e-4


def test_int8_trunk_size_and_accuracy_change(setup, tmp_path):
    _, ckpt, net, cfg, inputs = setup
    _, meta = predict.main(["--checkpoint", ckpt, "--quantize", inputs["spec"], "--out", str(tmp_path / "q.json")])
    q = meta["quantization"]
    print("INT8 trunk on the tiny set:", q)
    assert q["int8_mb"] < 0.4 * q["float_mb"]  # the trunk holds nearly all the weights
    assert q["float_accuracy"] >= 50  # the fitted model reads its own training tracklets
    assert abs(q["int8_accuracy"] - q["float_accuracy"]) <= 100 / 9 + 0.01  # at most one of 9 tracklets flips
    # heads fitted to a random trunk's small feature differences move more than a trained model's (report 8)
    assert q["agreement"] >= 85 and q["max_prob_diff"] < 0.3
    _, meta = predict.main(["--checkpoint", ckpt, "--quantize", inputs["many"], "--out", str(tmp_path / "u.json")])
    assert set(meta["quantization"]) == {"float_mb", "int8_mb", "ranges_from"}  # unlabelled: the INT8 model alone
    assert meta["quantization"]["ranges_from"] == "input"  # this checkpoint stores no ranges
    samples = dataset.crawl(inputs["spec"])[0]
    store = dataset.FrameStore(samples, cfg.img_size, cfg.sharpen, crop=cfg.crop)
    calib = dataset.calibration_frames(samples, store, n=10)
    assert calib.shape == (10, 3, cfg.img_size, cfg.img_size) and abs(float(calib.mean())) < 3
    int8 = model_lib.int8_trunk(net, calib)
    kinds = {type(m).__module__ for m in int8.backbone.modules()}
    assert any("quantized" in k for k in kinds) and not any("quantized" in type(m).__module__ for m in net.modules())
    x = dataset.normalize(dataset.to_input(torch.from_numpy(store.get(samples[0].frames[:2]))[None], "cpu"))
    with torch.no_grad():
        a, b = net.backbone(x[0]), int8.backbone(x[0])
    assert a.shape == b.shape and float((a - b).norm() / a.norm()) < 0.15
    info = predict.main(["--checkpoint", ckpt, "--export_onnx", str(tmp_path / "m.onnx"), "--quantize"])
    print("onnxruntime dynamic INT8:", info)
    assert os.path.isfile(info["int8_onnx"]) and info["int8_onnx_mb"] < 0.4 * info["onnx_mb"]
    # dynamic INT8 on a barely trained tiny model: 0.05-0.11 on machines of one kind (CPU kernels differ), so the
    # bound catches a broken export (probabilities off by ~1), not kernel noise
    assert info["int8_max_abs_diff_vs_pytorch"] < 0.3


def test_int8_ranges_stored_in_a_checkpoint(setup, tmp_path):
    """Ranges observed once and loaded later give the very INT8 model a calibration pass on the same frames gives;
    predict.py uses a checkpoint's ranges, and calibrates on its input when they were made for another engine."""
    _, ckpt, net, cfg, inputs = setup
    samples = dataset.crawl(inputs["spec"])[0]
    store = dataset.FrameStore(samples, cfg.img_size, cfg.sharpen, crop=cfg.crop)
    calib = dataset.calibration_frames(samples, store)
    state = torch.load(ckpt, weights_only=True)
    state["int8_ranges"] = model_lib.int8_ranges(net, calib)
    path = tmp_path / "with_ranges.pth"
    torch.save(state, path)
    ranges = torch.load(path, weights_only=True)["int8_ranges"]  # plain tensors: the safe loader takes them
    x = calib[:6]
    with torch.no_grad():
        a, b = model_lib.int8_trunk(net, calib).backbone(x), model_lib.int8_trunk(net, ranges=ranges).backbone(x)
    assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="engine"):
        model_lib.int8_trunk(net, ranges={**ranges, "engine": "not-" + ranges["engine"]})
    other = model_lib.build(dataclasses.replace(cfg, backbone="cnn"))
    with pytest.raises(RuntimeError, match="do not fit"):
        model_lib.int8_trunk(other, ranges=ranges)
    _, meta = predict.main(["--checkpoint", str(path), "--quantize", inputs["one"], "--out", str(tmp_path / "o.json")])
    assert meta["quantization"]["ranges_from"] == "checkpoint" and meta["num_tracklets"] == 1
    # the default (auto) on a CPU: INT8 from the stored ranges, with no float run beside it even on labelled input
    preds, meta = predict.main(["--checkpoint", str(path), inputs["spec"], "--out", str(tmp_path / "a.json")])
    assert meta["int8_trunk"] and set(meta["quantization"]) == {"float_mb", "int8_mb", "ranges_from"}
    assert meta["quantization"]["ranges_from"] == "checkpoint"
    explicit, _ = predict.main(["--checkpoint", str(path), "--quantize", "true", inputs["spec"],
                                "--out", str(tmp_path / "t.json")])
    assert [p["prediction"] for p in preds] == [p["prediction"] for p in explicit]
    _, meta = predict.main(["--checkpoint", str(path), "--quantize=false", inputs["one"], "--out", str(tmp_path / "f.json")])
    assert not meta["int8_trunk"] and "quantization" not in meta
    state["int8_ranges"] = {**ranges, "engine": "not-" + ranges["engine"]}
    torch.save(state, path)
    _, meta = predict.main(["--checkpoint", str(path), "--quantize", inputs["one"], "--out", str(tmp_path / "o.json")])
    assert meta["quantization"]["ranges_from"] == "input"
    _, meta = predict.main(["--checkpoint", str(path), inputs["one"], "--out", str(tmp_path / "o.json")])
    assert not meta["int8_trunk"]  # auto: ranges for another engine would need a calibration pass, so float


def test_argv_splitting():
    opts, inputs = predict.split_argv(["--checkpoint", "c.pth", "a", "--quantize", "b", "--out=x.csv", "c",
                                       "--quantize", "true", "--batch_size", "8", "d"])
    assert inputs == ["a", "b", "c", "d"]
    assert opts == ["--checkpoint", "c.pth", "--quantize", "--out=x.csv", "--quantize", "true", "--batch_size", "8"]
    opts, inputs = predict.split_argv(["--quantize", "auto", "a", "--quantize", "FALSE", "b"])
    assert inputs == ["a", "b"] and opts == ["--quantize", "auto", "--quantize", "FALSE"]
    opts, inputs = predict.split_argv(["--amp", "auto", "--amp", "no"])  # 'auto' is no word for a true/false flag
    assert inputs == ["auto"] and opts == ["--amp", "--amp", "no"]
    assert [predict.quantize_choice(v) for v in ("auto", "1", "FALSE", "yes")] == ["auto", "true", "false", "true"]
    with pytest.raises(SystemExit, match="true, false or auto"):
        predict.quantize_choice("maybe")


def test_clear_errors(setup, tmp_path):
    _, ckpt, _, cfg, inputs = setup
    with pytest.raises(SystemExit, match="^error: checkpoint .* not found"):
        predict.main(["--checkpoint", str(tmp_path / "none.pth"), inputs["one"]])
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit, match="could not be loaded"):
        predict.main(["--checkpoint", str(tmp_path / "corrupt.pth"), inputs["one"]])
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "config": {**state["config"], "lstm_hidden": 32}}, tmp_path / "other.pth")
    with pytest.raises(SystemExit, match="do not match"):
        predict.main(["--checkpoint", str(tmp_path / "other.pth"), inputs["one"]])
    torch.save({**state, "config": {**state["config"], "backbone": "vit_b_16"}}, tmp_path / "future.pth")
    with pytest.raises(SystemExit, match="does not describe a model"):
        predict.main(["--checkpoint", str(tmp_path / "future.pth"), inputs["one"]])
    with pytest.raises(SystemExit, match="no INPUT"):
        predict.main(["--checkpoint", ckpt])
    with pytest.raises(SystemExit, match="is neither a folder nor an image"):
        predict.main(["--checkpoint", ckpt, str(tmp_path / "missing")])
    (tmp_path / "blank" / "x").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no tracklet with images"):
        predict.main(["--checkpoint", ckpt, str(tmp_path / "blank")])
    with pytest.raises(SystemExit, match="uncertain_below must be in"):
        predict.main(["--checkpoint", ckpt, inputs["one"], "--uncertain_below=2"])
    with pytest.raises(SystemExit, match="seq_len must be >= 1"):
        predict.main(["--checkpoint", ckpt, inputs["one"], "--seq_len=0"])
    assert utils.uncertain_threshold({}) == 0.5 and utils.uncertain_threshold({"uncertain_threshold": 0.3}) == 0.3
    (tmp_path / "notes.pth").write_text("best epoch 3\n")
    with pytest.raises(SystemExit, match="not a PyTorch checkpoint"):
        predict.main(["--checkpoint", str(tmp_path / "notes.pth"), inputs["one"]])


def test_out_is_checked_before_anything_is_read(setup, tmp_path, monkeypatch):
    """An unknown --out format or an unwritable --out fails at once, not after inference; nothing is written."""
    _, ckpt, _, _, inputs = setup
    monkeypatch.setattr(predict, "load_inputs", lambda *a: pytest.fail("inputs read before --out was checked"))
    with pytest.raises(SystemExit, match=r"\.json or \.csv"):
        predict.main(["--checkpoint", ckpt, inputs["one"], f"--out={tmp_path / 'preds.pkl'}"])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root may write anywhere: then only the folder case is checked
            with pytest.raises(SystemExit, match="cannot be written"):
                predict.main(["--checkpoint", ckpt, inputs["one"], f"--out={locked / 'preds.json'}"])
    finally:
        locked.chmod(0o700)
    (tmp_path / "taken.json").mkdir()
    with pytest.raises(SystemExit, match="cannot be written"):
        predict.main(["--checkpoint", ckpt, inputs["one"], f"--out={tmp_path / 'taken.json'}"])
    with pytest.raises(SystemExit, match="cannot be written"):
        predict.main(["--zero_shot", inputs["one"], f"--out={tmp_path / 'taken.json'}"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith("preds")]


def test_an_ensemble_of_one_checkpoint_twice_answers_as_it_does(setup, predicted):
    tmp, ckpt, _, _, inputs = setup
    out = tmp / "ens.json"
    predict.main([f"--checkpoint={ckpt},{ckpt}", inputs["spec"], "--out", str(out)])
    alone = {p["tracklet"]: p for p in predicted["predictions"]}
    for p in json.loads(out.read_text())["predictions"]:
        assert p["prediction"] == alone[p["tracklet"]]["prediction"]
        assert abs(p["confidence"] - alone[p["tracklet"]]["confidence"]) < 1e-3
    with pytest.raises(config.ConfigError, match="not an ensemble"):
        predict.main([f"--checkpoint={ckpt},{ckpt}", "--export_onnx", str(tmp / "ens.onnx")])
