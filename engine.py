"""The loops every script shares: the loss, one training epoch, and one pass of a model over a loader.

train.py trains with them; evaluate.py, predict.py and bench.py read with predict_loader.
"""
import random

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import dataset
import model as model_lib
import utils
from config import EMPTY

GRAD_CLIP = 1.0    # max gradient norm (the original recipe)
MIXUP_ALPHA = 1.0  # MixUp's Beta(alpha, alpha) (the original recipe)
# class weights (Cui et al. 2019, the original recipe): beta; weight of a class absent from training; square root
CLASS_WEIGHTS = {"beta": 0.9999, "absent_weight": 0.001, "sqrt": True}
PRETRAINED_LR = 0.1  # a text recognizer's own weights (neck, digit classifier) learn at lr x this


class Criterion:
    """Weighted, label-smoothed cross-entropy per digit head, summed; for the ctc head the weighted CTC
    likelihood of the true number. Where the training numbers hold -1 tracklets (no number visible), those
    train only the 'visible' head (binary cross-entropy on every tracklet); the digits learn from the others."""

    def __init__(self, cfg, train_numbers, device):
        self.head, self.smoothing = cfg.head, cfg.label_smoothing
        self.learn_visible = any(n < 0 for n in train_numbers)
        train_numbers = [n for n in train_numbers if n >= 0]
        kw = dict(method=cfg.class_weight, **CLASS_WEIGHTS)
        if cfg.head == "digits":
            tens, units = zip(*map(dataset.decompose, train_numbers))
            suppression = cfg.empty_suppression
            if suppression == "auto":
                suppression = dataset.balanced_empty_suppression(tens, **kw)
                utils.log.info("empty suppression (auto): x %.4f on the tens head's empty weight", suppression)
            self.weights = {"tens": dataset.class_weights(tens, 11, empty_index=EMPTY,
                                                          empty_suppression=suppression, **kw),
                            "units": dataset.class_weights(units, 11, **kw)}
        else:  # ctc: scores are already log P(number) under CTC
            self.weights = {"number": dataset.class_weights(train_numbers, 100, **kw)}
        self.weights = {k: v.to(device) for k, v in self.weights.items()}

    def __call__(self, out, tens, units, number):
        seen = number >= 0
        # every output in the graph, each step: DistributedDataParallel stops on parameters without a gradient
        loss = sum(torch.nan_to_num(v.float(), posinf=0.0, neginf=0.0).sum() for v in out.values()
                   if v.is_floating_point()) * 0
        if bool(seen.any()):
            loss = loss + self.digits(out, tens, units, number, seen)
        if self.learn_visible:
            loss = loss + F.binary_cross_entropy_with_logits(out["visible"].float(), seen.float())
        return loss

    def digits(self, out, tens, units, number, seen):
        if self.head == "ctc":  # the CTC likelihood itself (no softmax over the 100 numbers, no smoothing)
            w = self.weights["number"][number[seen]]
            ll = out["number"][seen].gather(1, number[seen, None]).squeeze(1)
            return -(w * ll).sum() / w.sum().clamp_min(1e-12)
        targets = {"tens": tens[seen], "units": units[seen]}
        return sum(weighted_ce(out[k][seen].float(), targets[k], self.weights[k], self.smoothing)
                   for k in self.weights)


def weighted_ce(logits, target, weight, smoothing):
    """Class-balanced, label-smoothed CE (Cui et al.): each sample's smoothed loss times w[y], weighted mean.

    Not F.cross_entropy(weight=..., label_smoothing=...): that weights the smoothing term of every class by
    that class's own weight, so with a heavily suppressed 'empty' class the smoothing term outweighs the
    target term and the tens head is trained towards a uniform output on single-digit numbers."""
    logp = F.log_softmax(logits, 1)
    loss = -(1 - smoothing) * logp.gather(1, target[:, None]).squeeze(1) - smoothing * logp.mean(1)
    w = weight[target]
    return (w * loss).sum() / w.sum().clamp_min(1e-12)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def param_groups(model, cfg) -> list[dict]:
    """A text recognizer's own weights (its neck and digit classifier) learn at lr x pretrained_lr, so fine-tuning
    on a few numbers moves them less than the new temporal model; everything else at lr."""
    net = unwrap(model)
    if not net.text:
        return [{"params": list(model.parameters())}]
    slow = {id(p) for p in net.backbone.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in slow], "lr": cfg.lr * PRETRAINED_LR},
            {"params": [p for p in model.parameters() if id(p) not in slow]}]


def prepare_batch(batch, device, train: bool):
    """uint8 frames -> normalised float input (augmented in training); cached trunk maps (float16,
    ocr.MapStore) go in as they are. Returns x, mask, tens, units, number."""
    mask = batch["mask"].to(device)
    tens, units, number = (batch[k].to(device) for k in ("tens", "units", "number"))
    if batch["frames"].dtype == torch.float16:
        return batch["frames"].to(device).float(), mask, tens, units, number
    x = dataset.to_input(batch["frames"], device)
    if train:
        x = dataset.augment(x)
    return dataset.normalize(x), mask, tens, units, number


def train_step(model, criterion, optimizer, scaler, batch, cfg, device, dtype) -> float | None:
    """One optimisation step on a prepared batch (x, mask, tens, units, number): MixUp, forward, loss,
    clipping, update. Returns the loss, or None when it was not finite (no update)."""
    x, mask, tens, units, number = batch
    mix = random.random() < cfg.mixup_prob
    lam, perm = (np.random.beta(MIXUP_ALPHA, MIXUP_ALPHA), torch.randperm(x.shape[0], device=device)) \
        if mix else (1.0, None)
    if mix:
        x = lam * x + (1 - lam) * x[perm]
    with utils.autocast(device, dtype):
        out = model(x, mask)
    loss = lam * criterion(out, tens, units, number)
    if mix:
        loss = loss + (1 - lam) * criterion(out, tens[perm], units[perm], number[perm])
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):  # one bad batch should not poison the weights
        return None
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    utils.clip_grad_norm(model.parameters(), GRAD_CLIP)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def train_one_epoch(model, criterion, optimizer, loader, device, dtype, scaler, cfg, epoch):
    model.train()
    totals = {"loss": 0.0, "n": 0, "skipped_steps": 0}
    seen = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs} train", leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        seen += batch["index"].tolist()
        prepared = prepare_batch(batch, device, train=True)
        loss = train_step(model, criterion, optimizer, scaler, prepared, cfg, device, dtype)
        if loss is None:  # many non-finite losses in one epoch means the run is broken
            totals["skipped_steps"] += 1
            if totals["skipped_steps"] > 10:
                raise FloatingPointError("loss was NaN/inf on more than 10 steps; stopping (last good "
                                         "checkpoint kept). Try a lower --lr or --amp=false.")
            continue
        n = prepared[0].shape[0]
        totals["loss"] += loss * n
        totals["n"] += n
        bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}")
    if distributed():  # the epoch's loss over every rank's share
        t = torch.tensor([totals["loss"], totals["n"], totals["skipped_steps"]], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        totals = {"loss": t[0].item(), "n": t[1].item(), "skipped_steps": int(t[2].item())}
    return {"loss": totals["loss"] / max(totals["n"], 1), "skipped_steps": totals["skipped_steps"], "indices": seen}


@torch.inference_mode()
def predict_loader(model, loader, device, dtype, cfg, criterion=None, desc="eval"):
    """Run the model over a loader; returns probabilities, labels, attention and (optionally) the mean loss."""
    model.eval()
    keep = {k: [] for k in ("p_num", "p_tens", "p_units", "tens", "units", "number", "index", "attention", "logits",
                            "p_visible", *(("columns",) if cfg.head == "ctc" else ()))}
    loss_sum, n = 0.0, 0
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        x, mask, tens, units, number = prepare_batch(batch, device, train=False)
        with utils.autocast(device, dtype):
            out = model(x, mask)
        if criterion is not None:
            loss_sum += criterion(out, tens, units, number).item() * x.shape[0]
        n += x.shape[0]
        p_num, p_tens, p_units = model_lib.probabilities(out)
        logits = out["tens"].float() if "tens" in out else out["number"].float()
        for k, v in zip(keep, (p_num, p_tens, p_units, tens, units, number, batch["index"], out["attention"], logits,
                               torch.sigmoid(out["visible"].float()),
                               *((out["columns"],) if "columns" in out else ()))):
            keep[k].append(v.float().cpu() if v.is_floating_point() else v.cpu())
    res = {k: torch.cat(v) if v else torch.empty(0) for k, v in keep.items()}
    res["loss"], res["n"] = loss_sum / max(n, 1), n
    return gather_ranks(res) if distributed() else res


def gather_ranks(res):
    """Every rank gets every rank's predictions; DistributedSampler pads with repeats, so each sample once."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, res)
    n = sum(p["n"] for p in parts)
    cat = {k: torch.cat([p[k] for p in parts]) for k in res if k not in ("loss", "n")}
    first = torch.as_tensor(np.unique(cat["index"].numpy(), return_index=True)[1])
    return {**{k: v[first] for k, v in cat.items()}, "loss": sum(p["loss"] * p["n"] for p in parts) / max(n, 1),
            "n": n}


def eval_loader(ds, cfg) -> DataLoader:
    """A loader that reads `ds` in order, in batches of at least 32 (no gradients, so memory allows)."""
    return DataLoader(ds, batch_size=max(cfg.batch_size, 32), shuffle=False, collate_fn=dataset.collate,
                      num_workers=cfg.num_workers)
