"""Run-time plumbing shared by the scripts: logging, seeding, devices, autocast, checkpoint files. Imports no
module of this repo but config."""
import contextlib
import json
import logging
import os
import random
import sys
import warnings

import numpy as np
import torch

import config

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


def resolved_device(name: str) -> str:
    """auto -> cuda when available, else cpu; a CUDA device asked for on a machine without CUDA -> cpu."""
    if name == "auto" or not torch.cuda.is_available():
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def device_of(cfg) -> torch.device:
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("warning: device=%s asked for but CUDA is not available: falling back to CPU", cfg.device)
    return torch.device(resolved_device(cfg.device))


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
    with open(path, "rb") as f:
        head = f.read(2)
    if head not in (b"PK", b"\x80\x02"):  # torch.save writes a zip archive (legacy: a protocol-2 pickle)
        raise CheckpointError(f"{path!r} is not a PyTorch checkpoint (a text file, or something else torch.save "
                              "did not write)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or unsafe pickle
        raise CheckpointError(f"checkpoint {path!r} could not be loaded safely ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path!r} is not a checkpoint of this repo (no 'model'/'config' keys)")
    return ckpt


def uncertain_threshold(ckpt: dict, override: float = -1.0) -> float:
    """Confidence below which a prediction is flagged uncertain: `override` if >= 0, else the value train.py
    chose on the checkpoint's validation predictions, else 0.5."""
    value = override if override >= 0 else float(ckpt.get("uncertain_threshold", 0.5))
    if not 0 <= value <= 1:
        raise config.ConfigError(f"--uncertain_below must be in [0, 1], got {value}")
    return value
