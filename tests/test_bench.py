import json

import bench

KEYS = ("train_model_bound_seq_per_s", "train_end_to_end_seq_per_s", "pipeline_seq_per_s", "pipeline_naive_seq_per_s",
        "infer_model_bound_seq_per_s", "infer_end_to_end_seq_per_s", "latency_ms_batch1", "peak_rss_mb",
        "train_reference_seq_per_s", "infer_reference_seq_per_s", "infer_decode_seq_per_s",
        "infer_end_to_end_float_seq_per_s", "infer_model_bound_float_seq_per_s", "latency_ms_batch1_float",
        "int8_build_s", "reader_infer_end_to_end_seq_per_s", "zero_shot_end_to_end_seq_per_s",
        "reader_train_on_maps_seq_per_s", "reader_latency_ms_batch1", "reader_params_m", "reader_trainable_m",
        "long_legible_seq_per_s", "long_uniform_seq_per_s", "long_tracklets", "long_mean_frames",
        "reader_onnx_end_to_end_seq_per_s", "reader_onnx_int8_end_to_end_seq_per_s", "reader_onnx_mb",
        "reader_onnx_int8_mb", "reader_onnx_int8_max_abs_diff")


def test_bench_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    r = bench.main([f"--out={out}", "--bench_steps=2", "--bench_scale=0.01", f"--synth_root={tmp_path / 'synth'}",
                    f"--cache_dir={tmp_path / 'cache'}", f"--results_dir={tmp_path}", "--img_size=32", "--batch_size=4", "--lstm_hidden=32",
                    "--head_hidden=32", "--train_classes=4,6,8,9,49,66,89", "--bands=1", "--line_width=32"])
    saved = json.loads(out.read_text())
    for k in KEYS:
        assert saved[k] == r[k] and saved[k] > 0, k
    assert set(saved["ratios"]) == {"train_end_to_end_vs_reference", "train_end_to_end_vs_model_bound",
                                    "infer_end_to_end_vs_reference", "pipeline_vs_naive",
                                    "infer_end_to_end_vs_model_bound", "infer_serial_bound_vs_reference",
                                    "infer_end_to_end_float_vs_reference", "reader_vs_zero_shot",
                                    "reader_onnx_int8_vs_zero_shot"}
    assert saved["reader_onnx_int8_mb"] < saved["reader_onnx_mb"]  # the reader's INT8 graph is the smaller
    assert saved["infer_path"] == "int8"  # predict.py's default on this CPU: the INT8 trunk (float beside it)
    assert saved["torch"] and saved["threads"] >= 1
    assert 30 <= saved["long_mean_frames"] <= 400 and saved["long_candidates"] == 32  # long tracklets, 32 scored
    assert (tmp_path / "synth_samples.png").stat().st_size > 1000  # generated data comes with a contact sheet


def test_paired_rates_interleaves_blocks_and_keeps_each_best():
    calls = []

    def block(name, items):
        return lambda: calls.append(name) or items
    r = bench.paired_rates({"a": block("a", 10), "b": block("b", 20)}, repeats=3)
    assert calls == ["a", "b"] * 3
    assert set(r) == {"a", "b"} and r["b"] > 0 and r["a"] > 0
