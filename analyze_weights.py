"""Per-component parameter counts and weight statistics of a trained checkpoint.

    python analyze_weights.py --checkpoint checkpoints/best_model.pth     # -> results/weight_summary.json
"""
import config

if __name__ == "__main__":  # --help before torch is imported, so it prints at once
    config.exit_on_help(__doc__, config.options("analyze_weights"))

import os

import torch

import model as model_lib
import utils

COMPONENTS = ("backbone", "spatial", "lstm", "temporal", "tens", "units", "columns")


def component_summary(module) -> dict:
    params = list(module.named_parameters())
    return {
        "total_parameters": sum(p.numel() for _, p in params),
        "trainable_parameters": sum(p.numel() for _, p in params if p.requires_grad),
        "tensors": len(params),
        "example_shapes": {n: list(p.shape) for n, p in params[:4]},
    }


def output_layer_stats(head) -> dict:
    """Statistics of a head's final layer (the one that produces the class logits; a 1x1 Conv1d for ctc)."""
    last = head.out[-1] if hasattr(head, "out") else head.net[-1]
    return {name: {"mean": p.mean().item(), "std": p.std().item(), "min": p.min().item(), "max": p.max().item(),
                   "shape": list(p.shape)} for name, p in (("weight", last.weight), ("bias", last.bias))}


def summarize(model) -> dict:
    parts = {n: getattr(model, n) for n in COMPONENTS if isinstance(getattr(model, n, None), torch.nn.Module)}
    total = sum(p.numel() for p in model.parameters())
    size_mb = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**20
    return {
        "components": {name: component_summary(m) for name, m in parts.items()},
        "heads": {name: output_layer_stats(parts[name]) for name in ("tens", "units", "single", "columns")
                  if name in parts},
        "total_parameters": total,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "model_size_mb": round(size_mb, 2),
    }


def main(argv=None):
    _, extra = config.load(argv, extras=config.options("analyze_weights"), doc=__doc__)
    utils.setup_logging()
    ckpt = utils.load_checkpoint(extra["checkpoint"])
    model, cfg = model_lib.model_from_checkpoint(ckpt, extra["checkpoint"])
    summary = {"checkpoint": extra["checkpoint"], "epoch": ckpt.get("epoch", -1) + 1, **summarize(model),
               "config": config.to_dict(cfg)}
    out = extra["out"] or os.path.join(cfg.results_dir, "weight_summary.json")
    utils.atomic_save(summary, out)
    log = utils.log
    log.info("%-10s %12s %12s %8s", "component", "parameters", "trainable", "tensors")
    for name, c in summary["components"].items():
        log.info("%-10s %12s %12s %8d", name, f"{c['total_parameters']:,}", f"{c['trainable_parameters']:,}", c["tensors"])
    log.info("%-10s %12s %12s", "total", f"{summary['total_parameters']:,}", f"{summary['trainable_parameters']:,}")
    for head, stats in summary["heads"].items():
        w = stats["weight"]
        log.info("%s output layer: weight mean %.4f std %.4f min %.4f max %.4f", head, w["mean"], w["std"], w["min"], w["max"])
    log.info("model size %.2f MB; wrote %s", summary["model_size_mb"], out)
    return summary


if __name__ == "__main__":
    main()
