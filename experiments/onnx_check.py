"""A checkpoint against its ONNX exports on labelled tracklets: the argmax accuracy of each and how often each
export answers as the PyTorch model, on the same frames (predict.py --export_onnx [--quantize] writes them).

    python predict.py --checkpoint C --export_onnx results/m.onnx --quantize
    python -m experiments.onnx_check --checkpoint C --onnx=results/m.onnx,results/m.int8.onnx [--split=val] \
        [--test_classes=...] [--out=results/onnx_check.json]

Every model reads the same frames: evaluation's, a short tracklet padded by repeating its last frame, as predict.py
feeds the graph (it has no padding mask).
"""
import os
import sys

import onnxruntime as ort
import torch
from tqdm import tqdm

import config
import dataset
import engine
import evaluate
import model as model_lib
import utils

EXTRAS = {"onnx": "", "split": "test", "out": ""}


def read_all(loader, readers: dict) -> tuple[dict, torch.Tensor]:
    """Each reader's number probabilities [N, 100] for frames in 0..1 (as the exported graph takes them), and the
    true numbers."""
    probs, truth = {k: [] for k in readers}, []
    for batch in tqdm(loader, desc="onnx check", leave=False, dynamic_ncols=True):
        x = dataset.to_input(batch["frames"], "cpu")
        truth.append(batch["number"])
        for name, read in readers.items():
            probs[name].append(read(x))
    return {k: torch.cat(v) for k, v in probs.items()}, torch.cat(truth)


def onnx_reader(path: str):
    if not os.path.isfile(path):
        raise config.ConfigError(f"--onnx: no such file {path!r} (write it with predict.py --export_onnx)")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(sess.run(["number_probs"], {"frames": x.numpy()})[0])


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    config.exit_on_help(__doc__, EXTRAS, argv)
    cfg, extra, _, net = evaluate.load_for_eval(argv, EXTRAS)
    utils.setup_logging()
    paths = [p for p in extra["onnx"].split(",") if p.strip()]
    if not paths:
        raise config.ConfigError("--onnx: give one or more exported graphs, comma-separated")
    net = net.cpu().eval()

    def torch_reader(x):
        with torch.inference_mode():
            return model_lib.probabilities(net(dataset.normalize(x)))[0].float()
    readers = {"pytorch": torch_reader, **{os.path.basename(p): onnx_reader(p) for p in paths}}
    data = evaluate.eval_samples(cfg, extra["split"])
    probs, number = read_all(engine.eval_loader(evaluate.tracklets(cfg, data), cfg), readers)
    ref = probs["pytorch"]
    out = {"split": extra["split"], "tracklets": len(ref), "models": {}}
    for name, p in probs.items():
        out["models"][name] = {
            "accuracy": round(100.0 * float((p.argmax(1) == number).float().mean()), 2),
            "agreement_with_pytorch": round(100.0 * float((p.argmax(1) == ref.argmax(1)).float().mean()), 2),
            "max_prob_diff": round(float((p - ref).abs().max()), 4)}
        utils.log.info("%-28s accuracy %6.2f%%  agrees with PyTorch on %6.2f%%  max prob diff %.4f",
                       name, *out["models"][name].values())
    utils.atomic_save(out, extra["out"] or os.path.join(cfg.results_dir, "onnx_check.json"))
    return out


if __name__ == "__main__":
    main()
