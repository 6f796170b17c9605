"""A checkpoint against its ONNX exports on labelled tracklets: the argmax accuracy of each and how often each
export answers as the PyTorch model, on the same frames (predict.py --export_onnx [--quantize] writes them).

    python predict.py --checkpoint C --export_onnx results/m.onnx --quantize
    python -m experiments.onnx_check --checkpoint C --onnx=results/m.onnx,results/m.int8.onnx [--split=val] \
        [--test_classes=...] [--out=results/onnx_check.json]

Every model reads the same input as predict.py feeds it: the evaluation frames, a short tracklet padded by
repeating its last frame (the graph has no padding mask).
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


def repeat_padded(x, mask):
    """[B, T, ...] with each row's padding replaced by its last real frame."""
    last = mask.sum(1).clamp(min=1) - 1
    idx = torch.minimum(torch.arange(x.shape[1])[None], last[:, None])
    return x[torch.arange(x.shape[0])[:, None], idx]


def read_all(loader, readers: dict) -> tuple[dict, torch.Tensor]:
    """Each reader's number probabilities [N, 100], and the true numbers."""
    probs, truth = {k: [] for k in readers}, []
    for batch in tqdm(loader, desc="onnx check", leave=False, dynamic_ncols=True):
        x, mask, _, _, number = engine.prepare_batch(batch, "cpu", train=False)
        x = repeat_padded(x, mask)
        truth.append(number)
        for name, read in readers.items():
            probs[name].append(read(x))
    return {k: torch.cat(v) for k, v in probs.items()}, torch.cat(truth)


def onnx_reader(path: str):
    if not os.path.isfile(path):
        raise config.ConfigError(f"--onnx: no such file {path!r} (write it with predict.py --export_onnx)")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # the graph normalises inside: it takes frames in 0..1 (predict.OnnxView)
    return lambda x: torch.from_numpy(sess.run(["number_probs"], {"frames": unnormalize(x).numpy()})[0])


def unnormalize(x):
    mean, std = (t.view(1, 1, 3, 1, 1) for t in (dataset.MEAN, dataset.STD))
    return (x * std + mean).contiguous()


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
            return model_lib.probabilities(net(x))[0].float()
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
