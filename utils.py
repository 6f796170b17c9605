"""Run-time plumbing shared by the scripts: logging, seeding, devices, autocast, checkpoints, data set-up."""
import contextlib
import logging
import os
import random
import sys
import warnings

import numpy as np
import torch

import config
import dataset

log = logging.getLogger("jersey")
CHECKPOINT_VERSION = 1


def setup_logging(log_file: str = "") -> None:
    handlers = [logging.StreamHandler(sys.stdout)]
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers, force=True)
    warnings.filterwarnings("once")
    logging.captureWarnings(True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def device_of(cfg) -> torch.device:
    for w in cfg.warnings():
        log.warning("warning: %s", w)
    return torch.device(cfg.resolved_device())


def amp_dtype(device: torch.device, enabled: bool):
    """float16 on CUDA, bfloat16 on CPUs with native bf16 support, otherwise None (float32)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def adamw(params, device: torch.device, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one (CPU and CUDA): the default per-tensor loop costs ~4x
    longer per step on CPU, 10-20% of a ResNet-18 training step here. Same update rule. `params`: tensors, or
    parameter groups (dicts, e.g. with their own lr); frozen tensors are left out either way."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in ("cpu", "cuda"))


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """torch's clip_grad_norm_ with foreach kernels for the norm (on CPU torch loops over the tensors) and no
    rescale when the norm is already within max_norm (a factor of exactly 1: the same gradients); torch's
    took ~2.5% of a CPU training step here. On accelerators the rescale always runs, as torch's does, so
    the norm never needs a host sync."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if norm.device.type != "cpu" or norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


def atomic_save(obj, path: str) -> None:
    """Write to a temp file and rename, so a crash mid-write never leaves a broken checkpoint or result."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    if path.endswith(".json"):
        import json
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_jsonable)
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (torch.Tensor, np.ndarray)):
        return o.tolist()
    if isinstance(o, set):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class CheckpointError(SystemExit):
    def __init__(self, msg: str):
        super().__init__(f"error: {msg}")


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load with weights_only=True (a pickle carrying code is refused); one clear error on any problem."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found (train first: python train.py)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or unsafe pickle
        raise CheckpointError(f"checkpoint {path!r} could not be loaded safely ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path!r} is not a checkpoint of this repo (no 'model'/'config' keys)")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str = "checkpoint"):
    """Rebuild the exact model a checkpoint was trained with, from what it stores alone."""
    import model as model_lib
    try:
        cfg = config.from_dict(ckpt["config"])
        net = model_lib.build(cfg, pretrained=False)
    except (TypeError, ValueError, AttributeError) as err:  # a config from another version of this repo
        raise CheckpointError(f"{path}: its config does not describe a model this code can build "
                              f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    try:  # train.py validated and picked the averaged weights when it kept them (--ema_decay)
        net.load_state_dict(ckpt.get("model_ema", ckpt["model"]))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the architecture it describes "
                              f"({str(err).splitlines()[0][:160]})") from None
    return net, cfg


def uncertain_threshold(ckpt: dict, override: float = -1.0) -> float:
    """Confidence below which a prediction is flagged uncertain: `override` if >= 0, else the value train.py
    chose on the checkpoint's validation predictions, else 0.5."""
    value = override if override >= 0 else float(ckpt.get("uncertain_threshold", 0.5))
    if not 0 <= value <= 1:
        raise config.ConfigError(f"--uncertain_below must be in [0, 1], got {value}")
    return value


def data_root(cfg) -> str:
    """The user's data root, or the embedded synthetic data (generated once, then reused)."""
    if cfg.data_root:
        return cfg.data_root
    import synth
    root = os.path.join(cfg.synth_root, f"scale{cfg.synth_scale:g}_seed{cfg.synth_seed}")
    log.info("No data_root set: using the embedded synthetic data (--data_root=DIR for your own).")
    path = synth.ensure_dataset(root, scale=cfg.synth_scale, seed=cfg.synth_seed)
    sheet = os.path.join(cfg.results_dir, "synth_samples.png")
    if not os.path.isfile(sheet):  # one look at what the model is trained on
        synth.contact_sheet(path, sheet)
    return str(path)


def load_samples(cfg, numbers, root: str | None = None, workers: int = 0):
    """Crawl, decode once (cached) and clean the samples of `numbers`; returns (samples, store, skipped)."""
    root = root or data_root(cfg)
    try:
        samples, skipped = dataset.crawl(root, numbers)
    except (FileNotFoundError, ValueError) as err:  # ValueError: an unreadable SoccerNet *_gt.json
        raise config.ConfigError(str(err)) from None
    if not samples:
        raise config.ConfigError(f"no sub-tracklet with images for numbers {sorted(numbers)} under {root!r}")
    store = dataset.FrameStore.of(samples, cfg, cfg.cache_dir, workers)
    samples = store.drop_unreadable(samples, skipped)
    missing = sorted(set(numbers) - {s.number for s in samples})
    if missing:
        raise config.ConfigError(f"no usable sample for number(s) {missing} under {root!r}")
    dataset.report_skips(skipped)
    return samples, store, skipped
