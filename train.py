"""Train JerseyTemporalNet on the training numbers; validate on a held-back split of the same numbers.

    python train.py                                   # embedded synthetic data, full recipe
    python train.py --synth_scale=0.1 --epochs=3      # a few minutes on a laptop CPU
    python train.py --data_root=/data/jersey --device=cuda --epochs=30
    python train.py --resume                          # continue from checkpoints/last.pth
"""
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import config
import dataset
import model as model_lib
import ocr
import plots
import pretrain
import utils
from dataset import EMPTY, decompose

log = utils.log
# splice: two whole single-digit crops' central bands, squeezed into one crop; paste: two narrow
# central bands (about one digit wide) side by side in the middle of the second crop
COMPOSE_MODES = {"splice": {"width": (0.35, 0.6), "mode": "splice"}, "paste": {"width": (0.15, 0.3), "mode": "paste"}}


class Criterion:
    """Weighted, label-smoothed cross-entropy per head, summed; optional logit-adjusted / balanced-softmax
    loss (Menon et al. 2021, Ren et al. 2020): logits + tau * log(prior) during training only."""

    def __init__(self, cfg, train_numbers, device):
        self.head, self.smoothing = cfg.head, cfg.label_smoothing
        tau = {"ce": 0.0, "logit_adjusted": cfg.loss_tau, "balanced_softmax": 1.0}[cfg.loss]
        kw = dict(method=cfg.class_weight, beta=cfg.beta, absent_weight=cfg.absent_weight, sqrt=cfg.sqrt_weights)
        if cfg.head == "digits":
            tens, units = zip(*map(decompose, train_numbers))
            suppression = cfg.empty_suppression
            if suppression == "auto":
                suppression = dataset.balanced_empty_suppression(tens, **kw)
                log.info("empty suppression (auto): x %.4f on the tens head's empty weight", suppression)
            self.weights = {"tens": dataset.class_weights(tens, 11, empty_index=EMPTY,
                                                          empty_suppression=suppression, **kw),
                            "units": dataset.class_weights(units, 11, **kw)}
            self.shift = {"tens": tau * log_prior(tens, 11), "units": tau * log_prior(units, 11)}
        else:  # compositional: softmax over 0..99; ctc: scores are already log P(number) under CTC
            self.weights = {"number": dataset.class_weights(train_numbers, 100, **kw)}
            self.shift = {"number": tau * log_prior(train_numbers, 100)}
        self.weights = {k: v.to(device) for k, v in self.weights.items()}
        self.shift = {k: v.to(device) for k, v in self.shift.items()}

    def __call__(self, out, tens, units, number):
        if self.head == "ctc":  # the CTC likelihood itself (no softmax over the 100 numbers, no smoothing)
            w = self.weights["number"][number]
            return -(w * out["number"].gather(1, number[:, None]).squeeze(1)).sum() / w.sum().clamp_min(1e-12)
        targets = {"tens": tens, "units": units, "number": number}
        return sum(weighted_ce(out[k].float() + self.shift[k], targets[k], self.weights[k], self.smoothing)
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


def log_prior(labels, num_classes):
    """log class frequencies; absent classes get the rarest present frequency so their logits stay anchored."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_classes).float()
    counts[counts == 0] = counts[counts > 0].min()
    return (counts / counts.sum()).log()


def init_distributed(cfg) -> tuple[int, int]:
    """(rank, world size). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; plain `python train.py` is a world of one.
    NCCL with one GPU per process on CUDA, Gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    cuda = cfg.resolved_device().startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg.device = f"cuda:{local}"
    return dist.get_rank(), dist.get_world_size()


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def make_loaders(cfg, train_samples, val_samples, store, device, rank=0, world=1):
    kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=dataset.collate,
              pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    train_ds = dataset.TrackletDataset(train_samples, store, cfg.seq_len, cfg.train_sampling, cfg.use_anchor)
    val_ds = dataset.TrackletDataset(val_samples, store, cfg.seq_len, cfg.eval_sampling, cfg.use_anchor)
    drop = len(train_ds) > cfg.batch_size * world  # a batch of one breaks BatchNorm in the heads
    if world > 1:  # every rank shuffles with the same seed and takes its own disjoint share
        train = DataLoader(train_ds, sampler=DistributedSampler(train_ds, world, rank, shuffle=True, seed=cfg.seed,
                                                                drop_last=True), drop_last=drop, **kw)
        return train, DataLoader(val_ds, sampler=DistributedSampler(val_ds, world, rank, shuffle=False), **kw)
    train = DataLoader(train_ds, shuffle=True, generator=torch.Generator(), drop_last=drop, **kw)
    return train, DataLoader(val_ds, shuffle=False, **kw)


def set_epoch(loader, seed: int, epoch: int) -> None:
    """The shuffle order depends on (seed, epoch) only, so a resumed run sees the batches an unbroken run would."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    else:
        loader.generator.manual_seed(seed + epoch)


def never_synthesised(cfg) -> list[int]:
    """Numbers composition and rendering never make, so that they may only teach digits and positions: the test
    numbers, --compose_exclude and, on the embedded data, every number the repo scores as unseen (44, 46, ...
    would otherwise be trained on by a plain train.py run and then scored as 'other unseen' by evaluate.py),
    except what --compose_allow lets through; never a test number."""
    scored = pretrain.excluded(cfg) if not cfg.data_root else cfg.test_classes
    return sorted(((set(cfg.compose_exclude) | set(scored)) - set(cfg.compose_allow)) | set(cfg.test_classes))


GLYPH_PAIRS, GLYPH_MIN_SIZE = 0.8, 0.15  # mostly two-digit renders; numbers 15-80% of the image height


def glyph_bank(cfg):
    """The renders --glyph_mix draws from (uint8 frames, labels), or None. Seeded by the run's seed."""
    if cfg.glyph_mix == 0:
        return None
    log.info("rendering %d numbers for --glyph_mix=%g", cfg.glyph_images, cfg.glyph_mix)
    with pretrain.isolated_rng():  # rendering must not shift training's random streams
        return pretrain.make_bank(cfg.glyph_images, cfg.img_size, cfg.seed, pairs=GLYPH_PAIRS,
                                  exclude=never_synthesised(cfg), min_size=GLYPH_MIN_SIZE)


def loss_numbers(cfg, train_numbers, glyphs) -> list[int]:
    """The numbers the loss sees, in the proportions it sees them, for the class weights: with --glyph_mix a
    rendered 41 is as common as it is in the batches (weights counted from the tracklets alone would call
    tens 4 rare and tens 1 absent, and push the tens head off 'empty')."""
    numbers = list(train_numbers)
    if cfg.swap_digits > 0:  # likewise a swapped 94
        numbers = dataset.swapped_counts(numbers, cfg.swap_digits, never_synthesised(cfg))
    if glyphs is None:
        return numbers
    labels = glyphs[1].tolist()
    m = round(cfg.glyph_mix / (1 - cfg.glyph_mix) * len(numbers))
    return numbers + (labels * (m // len(labels) + 1))[:m]


def prepare_batch(batch, cfg, device, train: bool, glyphs=None):
    """uint8 frames -> normalised float input (+ digit swaps, composition, rendered numbers and augmentation in
    training); cached trunk maps (float16, ocr.MapStore) go in as they are."""
    mask = batch["mask"].to(device)
    tens, units, number = (batch[k].to(device) for k in ("tens", "units", "number"))
    if batch["frames"].dtype == torch.float16:
        return batch["frames"].to(device).float(), mask, tens, units, number
    x = dataset.to_input(batch["frames"], device)
    if train:
        if cfg.swap_digits > 0:
            x, tens, units, number = dataset.swap_digits(x, tens, units, number, cfg.swap_digits, never_synthesised(cfg))
        if cfg.compose_prob > 0:
            x, tens, units, number = dataset.compose_batch(x, tens, units, number, cfg.compose_prob,
                                                           never_synthesised(cfg),
                                                           **COMPOSE_MODES[cfg.compose_mode])
        if glyphs is not None:
            x, mask, tens, units, number = dataset.mix_renders(x, mask, number, *glyphs, cfg.glyph_mix)
        x = dataset.augment(x, shift=cfg.shift, zoom=cfg.zoom)
        if cfg.blur_aug > 0:
            x = dataset.random_blur(x, cfg.blur_aug)
    return dataset.normalize(x), mask, tens, units, number


def train_step(model, criterion, optimizer, scaler, batch, cfg, device, dtype) -> float | None:
    """One optimisation step of the recipe on a prepared batch (x, mask, tens, units, number): the extra views,
    MixUp, forward, loss, clipping, update. Returns the loss, or None when it was not finite (no update)."""
    x, mask, tens, units, number = batch
    split = dataset.half_views(x, mask, number) if cfg.split_views > 0 else None
    erased = dataset.erased_views(x, mask, number, empty_views=cfg.head == "digits") if cfg.erase_views > 0 else None
    mix = cfg.mixup_alpha > 0 and random.random() < cfg.mixup_prob
    lam, perm = (np.random.beta(cfg.mixup_alpha, cfg.mixup_alpha), torch.randperm(x.shape[0], device=device)) \
        if mix else (1.0, None)
    if mix:
        x = lam * x + (1 - lam) * x[perm]
    with utils.autocast(device, dtype):
        out, view_outs = forward_with_views(model, x, mask, split, erased)
    loss = lam * criterion(out, tens, units, number)
    if mix:
        loss = loss + (1 - lam) * criterion(out, tens[perm], units[perm], number[perm])
    loss = loss + view_loss(cfg, split, erased, *view_outs)
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):  # one bad batch should not poison the weights
        return None
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    utils.clip_grad_norm(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def make_ema(cfg, model):
    """An exponential moving average of the weights and BatchNorm statistics (torchvision's --model-ema), or None.
    The decay warms up as min(d, (1 + n) / (10 + n)) at update n, so on a small dataset the random initial weights
    do not linger for the ~1 / (1 - d) steps a fixed decay would keep them."""
    if cfg.ema_decay <= 0:
        return None

    def update(averaged, current, n):
        w = 1 - torch.clamp((1 + n) / (10 + n), max=cfg.ema_decay)
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, w.to(a.dtype))
            else:  # num_batches_tracked
                a.copy_(c)
    return torch.optim.swa_utils.AveragedModel(unwrap(model), multi_avg_fn=update, use_buffers=True)


def train_one_epoch(model, criterion, optimizer, loader, device, dtype, scaler, cfg, epoch, glyphs=None, ema=None):
    model.train()
    totals = {"loss": 0.0, "n": 0, "skipped_steps": 0}
    seen = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs} train", leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        seen += batch["index"].tolist()
        prepared = prepare_batch(batch, cfg, device, train=True, glyphs=glyphs)
        loss = train_step(model, criterion, optimizer, scaler, prepared, cfg, device, dtype)
        if loss is None:  # many non-finite losses in one epoch means the run is broken
            totals["skipped_steps"] += 1
            if totals["skipped_steps"] > 10:
                raise FloatingPointError("loss was NaN/inf on more than 10 steps; stopping (last good "
                                         "checkpoint kept). Try a lower --lr or --amp=false.")
            continue
        if ema is not None:
            ema.update_parameters(unwrap(model))
        n = prepared[0].shape[0]
        totals["loss"] += loss * n
        totals["n"] += n
        bar.set_postfix(loss=f"{totals['loss'] / totals['n']:.3f}")
    if distributed():  # the epoch's loss over every rank's share
        t = torch.tensor([totals["loss"], totals["n"], totals["skipped_steps"]], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        totals = {"loss": t[0].item(), "n": t[1].item(), "skipped_steps": int(t[2].item())}
    return {"loss": totals["loss"] / max(totals["n"], 1), "skipped_steps": totals["skipped_steps"], "indices": seen}


def forward_with_views(model, x, mask, *groups):
    """One forward pass over the batch and every group of extra views (views, mask, labels; or None), so
    BatchNorm sees them together. Returns the batch's outputs and, per group, its views' outputs (None when it
    has no views)."""
    used = [g for g in groups if g is not None and len(g[0])]
    out = model(torch.cat([x, *(g[0] for g in used)]), torch.cat([mask, *(g[1] for g in used)])) if used \
        else model(x, mask)
    start, views_out = x.shape[0], []
    for g in groups:
        n = 0 if g is None else len(g[0])
        views_out.append({k: v[start:start + n] for k, v in out.items()} if n else None)
        start += n
    return {k: v[:x.shape[0]] for k, v in out.items()}, views_out


def view_loss(cfg, split, erased, split_out, erased_out):
    """Extra loss of the half views (units head, NO_DIGIT for fragments) and of the erased views (each on the
    head it is labelled for; for the CTC reader, the one digit left standing read as a number); unweighted, as
    every digit is as welcome there."""
    def ce(logits, y):
        return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    loss = 0.0
    if split_out is not None:
        loss = loss + cfg.split_views * ce(split_out["units"], split[2])
    if erased_out is not None and cfg.head == "ctc":
        loss = loss - cfg.erase_views * erased_out["number"].float().gather(1, erased[2][:, None]).mean()
    elif erased_out is not None:
        labels, head = erased[2], erased[3]
        loss = loss + cfg.erase_views * sum(ce(erased_out[name][head == h], labels[head == h])
                                            for h, name in enumerate(("tens", "units")) if (head == h).any())
    return loss


def read_halves(model, x, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Units-head probabilities (11 classes, NO_DIGIT last) of the left and the right half of every tracklet."""
    return tuple(torch.softmax(model(dataset.half(x, side), mask)["units"].float(), 1) for side in "LR")


@torch.inference_mode()
def predict_loader(model, loader, device, dtype, cfg, criterion=None, desc="eval"):
    """Run the model over a loader; returns probabilities, labels, attention and (optionally) the mean loss."""
    model.eval()
    keep = {k: [] for k in ("p_num", "p_tens", "p_units", "tens", "units", "number", "index", "attention", "logits",
                            *(("p_left", "p_right") if cfg.reads_halves() else ()),
                            *(("columns",) if cfg.head == "ctc" else ()))}
    loss_sum, n = 0.0, 0
    for step, batch in enumerate(tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)):
        if cfg.max_steps and step >= cfg.max_steps:
            break
        x, mask, tens, units, number = prepare_batch(batch, cfg, device, train=False)
        with utils.autocast(device, dtype):
            out = model(x, mask)
            halves = read_halves(model, x, mask) if cfg.reads_halves() else ()
        if criterion is not None:
            loss_sum += criterion(out, tens, units, number).item() * x.shape[0]
        n += x.shape[0]
        p_num, p_tens, p_units = model_lib.probabilities(out)
        logits = out["tens"].float() if "tens" in out else out["number"].float()
        for k, v in zip(keep, (p_num, p_tens, p_units, tens, units, number, batch["index"], out["attention"], logits,
                               *halves, *((out["columns"],) if "columns" in out else ()))):
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


def digit_metrics(res) -> dict:
    """Accuracy in percent: whole number (argmax of the joint), tens, units, both digits."""
    if len(res["number"]) == 0:
        return {"acc": 0.0, "tens_acc": 0.0, "units_acc": 0.0, "both_acc": 0.0}
    pred_num = res["p_num"].argmax(1)
    pred_t, pred_u = res["p_tens"].argmax(1), res["p_units"].argmax(1)
    true_t = res["tens"]
    pct = lambda b: 100.0 * b.float().mean().item()  # noqa: E731
    return {"acc": pct(pred_num == res["number"]), "tens_acc": pct(pred_t == true_t),
            "units_acc": pct(pred_u == res["units"]), "both_acc": pct((pred_t == true_t) & (pred_u == res["units"]))}


def uncertain_threshold(res, cfg, percentile: float = 5.0, fallback: float = 0.5) -> float:
    """Confidence below which predict.py flags a tracklet `uncertain`: the 5th percentile of the confidence of
    the correct validation answers (the answers predict.py gives: the most probable number, or the split or
    halves rule's with its own confidence when cfg.rule says so): 95% of the answers the model gets right stay
    unflagged, anything less sure than that is flagged. `fallback` if nothing is correct."""
    import evaluate  # evaluate imports this module
    if len(res["number"]) == 0:
        return fallback
    pred, conf = evaluate.answers(res, cfg)
    ok = pred == res["number"]
    if not bool(ok.any()):
        return fallback
    return round(float(np.percentile(conf[ok].numpy(), percentile)), 4)


def checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch, best_acc, history, stopper, extra=None):
    np_state = np.random.get_state()
    return {
        "version": utils.CHECKPOINT_VERSION, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "best_acc": best_acc,
        "history": history, "config": config.to_dict(cfg), "early_stopping": dict(stopper),
        "rng": {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                         *np_state[2:]],
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        **(extra or {}),
    }


def ema_state(ema) -> dict:
    """The averaged weights (what evaluate.py and predict.py load) and the update count (for --resume)."""
    if ema is None:
        return {}
    return {"model_ema": ema.module.state_dict(), "ema_updates": int(ema.n_averaged)}


def restore_rng(rng):
    torch.set_rng_state(rng["torch"])
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy().astype(np.uint32), *rng["numpy"][2:]))
    random.setstate(_tuplify(rng["python"]))
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def int8_ranges(model, calibration):
    """The INT8 trunk's activation ranges (model.int8_ranges) observed on `calibration` (training frames), for the
    checkpoint: `--quantize` then builds its INT8 model without a calibration pass over the input (~1 s here per
    epoch). None where this torch cannot quantize the trunk; the checkpoint is written all the same."""
    try:
        return model_lib.int8_ranges(unwrap(model), calibration)
    except Exception as e:  # noqa: BLE001 - an optional extra must never cost a checkpoint
        log.warning("no INT8 activation ranges stored (%s): --quantize will calibrate on its input", e)
        return None


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def log_tensorboard(writer, row, lr):
    if writer is None:
        return
    e = row["epoch"]
    writer.add_scalar("Loss/train", row["train_loss"], e)
    writer.add_scalar("Loss/val", row["val_loss"], e)
    writer.add_scalars("Loss/train_vs_val", {"train": row["train_loss"], "val": row["val_loss"]}, e)
    for k in ("acc", "tens_acc", "units_acc", "both_acc"):
        writer.add_scalar(f"Accuracy/val_{k}", row[f"val_{k}"], e)
    writer.add_scalar("LR", lr, e)
    writer.flush()


def log_tensorboard_media(writer, model, val_loader, res, cfg, device, dtype, step, k=4):
    """Per epoch: a few validation tracklets (frames, true vs predicted number, temporal attention per frame)
    and the validation confusion matrix, as figures. The same tracklets every epoch, so changes are visible."""
    if writer is None or len(res["number"]) == 0:
        return
    writer.add_figure("Validation/confusion_matrix", plots.confusion_figure(res["number"], res["p_num"].argmax(1)), step)
    if not isinstance(val_loader.dataset.store, dataset.FrameStore):  # cached trunk maps: no pictures to show
        return
    ds = val_loader.dataset
    with torch.random.fork_rng(devices=[]):  # sampling frames for a picture must not shift training's RNG
        batch = dataset.collate([ds[i] for i in showcase(ds.samples, k)])
    x, mask = prepare_batch(batch, cfg, device, train=False)[:2]
    with utils.autocast(device, dtype):
        out = unwrap(model).predict(x, mask)
    out = {key: v.cpu() for key, v in out.items()}
    writer.add_figure("Validation/tracklets", plots.tracklet_figure(batch["frames"], batch["number"], out), step)
    writer.add_figure("Validation/attention", plots.attention_figure(out["attention"], batch["number"]), step)
    writer.flush()


def showcase(samples, k: int) -> list[int]:
    """Up to k sample indices, one per number first, so the grid shows several numbers."""
    first = {}
    for i, s in enumerate(samples):
        first.setdefault(s.number, i)
    picks = [first[n] for n in sorted(first)][:k]
    return picks + [i for i in range(len(samples)) if i not in picks][:k - len(picks)]


def make_writer(cfg, run_name):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("warning: tensorboard not installed; no TensorBoard logs")
        return None
    return SummaryWriter(os.path.join(cfg.log_dir, run_name))


class _GraphView(torch.nn.Module):
    """The tracer wants tuples, not dicts, as outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return tuple(self.net(x).values())


def add_graph(writer, model, example):
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writer.add_graph(_GraphView(unwrap(model)).eval(), example[:2])
    except Exception as err:  # noqa: BLE001 - the graph is a nice-to-have; tracing can fail on some builds
        log.warning("warning: could not add the model graph to TensorBoard (%s)", type(err).__name__)


def glyph_init(cfg, rank: int, make: bool) -> str:
    """Path of pretrain.py trunk weights to start from when ImageNet weights are not loaded ('' = random).
    backbone_init=auto stands in for wanted-but-unavailable ImageNet weights: the trunk is pretrained once
    (on rank 0) and cached; `make` is False on the first try, so nothing is made if ImageNet loads."""
    if cfg.backbone_init == "none" or (cfg.backbone_init == "auto" and not cfg.pretrained):
        return ""
    if cfg.backbone_init != "auto":
        return cfg.backbone_init
    path = pretrain.weights_path(cfg)
    if make and not os.path.exists(path):
        if rank == 0:
            log.info("no ImageNet weights: pretraining the %s trunk on rendered digits first (%d steps, "
                     "cached as %s; --backbone_init=none to skip)", cfg.backbone, cfg.pretrain_steps, path)
            if cfg.backbone not in model_lib.SMALL_CNNS:
                log.warning("warning: on a CPU, --backbone=cnn learns from rendered digits far sooner than a "
                            "ResNet does (TECHNICAL_REPORT.md, section 6)")
            pretrain.pretrain(cfg, path)
        if distributed():
            dist.barrier()
    return path if os.path.exists(path) else ""


def param_groups(model, cfg) -> list[dict]:
    """A text recognizer's own weights (its neck and digit classifier) learn at lr x pretrained_lr, so fine-tuning
    on a few numbers moves them less than the new temporal model; everything else at lr."""
    net = unwrap(model)
    if not net.text:
        return [{"params": list(model.parameters())}]
    slow = {id(p) for p in net.backbone.parameters()}
    return [{"params": [p for p in model.parameters() if id(p) in slow], "lr": cfg.lr * cfg.pretrained_lr},
            {"params": [p for p in model.parameters() if id(p) not in slow]}]


def build_model(cfg, device, rank=0):
    init_rng = torch.get_rng_state()
    model = model_lib.build(cfg, init_path=glyph_init(cfg, rank, make=False))
    if not model.pretrained_loaded and cfg.pretrained and cfg.backbone_init == "auto":
        path = glyph_init(cfg, rank, make=True)
        torch.set_rng_state(init_rng)  # the same initial heads as a later run that finds the trunk cached
        model = model_lib.build(cfg, pretrained=False, init_path=path)
    if not model.pretrained_loaded and cfg.freeze_fraction > 0:
        # frozen random filters are just noise: with no ImageNet weights every layer has to learn
        log.warning("warning: no pretrained weights, so nothing is frozen (freeze_fraction 0)")
        cfg.freeze_fraction = 0.0
        model.freeze_backbone(0.0)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    total, trainable = model_lib.count_parameters(model)
    log.info("JerseyTemporalNet(%s, head=%s, reader=%s): %.2fM parameters, %.2fM trainable", cfg.backbone, cfg.head,
             cfg.reader, total / 1e6, trainable / 1e6)
    return model


def resume(path, model, optimizer, scheduler, scaler, ema=None):
    """Restore everything a checkpoint holds; returns (start epoch, best acc, history, early-stopping state)."""
    ck = utils.load_checkpoint(path)
    if (ema is None) != ("model_ema" not in ck):
        raise utils.CheckpointError(f"{path} was trained with --ema_decay={ck['config'].get('ema_decay', 0)}; "
                                    "resume with the same setting")
    try:
        unwrap(model).load_state_dict(ck["model"])
        if ema is not None:
            ema.module.load_state_dict(ck["model_ema"])
            ema.n_averaged.fill_(ck["ema_updates"])
    except RuntimeError as err:  # resuming with other architecture settings than the checkpoint's
        raise utils.CheckpointError(f"{path} does not match this configuration "
                                    f"({str(err).splitlines()[0][:160]})") from None
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    scaler.load_state_dict(ck["scaler"])
    restore_rng(ck["rng"])
    log.info("resumed from %s at epoch %d", path, ck["epoch"] + 2)
    return ck["epoch"] + 1, ck["best_acc"], ck["history"], ck["early_stopping"]


def load_data(cfg, rank):
    """Rank 0 generates/decodes first; the others then read its cache instead of racing to write it."""
    if rank > 0:
        dist.barrier()
    samples, store, skipped = utils.load_samples(cfg, cfg.train_classes)
    if cfg.is_ocr() and cfg.finetune != "all":  # a frozen trunk's maps are computed once, not every epoch
        store = ocr.MapStore(store, cfg.backbone, cfg.cache_dir)
    if rank == 0 and distributed():
        dist.barrier()
    return samples, store, skipped


def log_digit_coverage(cfg) -> None:
    """Whether each test number's digits occur in training at their place: the research question's premise."""
    seen = lambda ok: "seen" if ok else "NEVER SEEN"  # noqa: E731
    for n, cov in cfg.digit_coverage().items():
        log.info("test number %d: tens digit %d %s in training, units digit %d %s", n, cov["tens"] % 10,
                 seen(cov["tens_seen"]), cov["units"], seen(cov["units_seen"]))


def early_stopping(stopper: dict, val_loss: float, min_delta: float) -> dict:
    """The patience counter after one epoch: reset by a validation loss at least min_delta below the best."""
    if val_loss < stopper["best_loss"] - min_delta:
        return {"best_loss": val_loss, "bad_epochs": 0}
    return {**stopper, "bad_epochs": stopper["bad_epochs"] + 1}


def should_stop(stopper: dict, cfg, epoch: int, lr: float) -> bool:
    if stopper["bad_epochs"] < cfg.patience:
        return False
    log.info("early stopping: validation loss has not improved for %d epochs", cfg.patience)
    if lr > 0.1 * cfg.lr:  # report 6.28: a long cosine schedule cut off before its rate came down
        log.warning("stopped at epoch %d of %d with the learning rate still %.0f%% of its peak; "
                    "raise --patience to run the schedule out", epoch + 1, cfg.epochs, 100 * lr / cfg.lr)
    return True


def tune_thresholds(res, cfg, extras: dict) -> None:
    """Decoding thresholds from this epoch's validation pass, so each checkpoint carries its own weights' values."""
    if cfg.split_views > 0 and "split_threshold" not in getattr(cfg, "_explicit", ()):
        import evaluate  # evaluate imports this module
        cfg.split_threshold = evaluate.tune_split_threshold(res)  # stored in the checkpoint's config
    extras["uncertain_threshold"] = uncertain_threshold(res, cfg)


def save_checkpoints(state: dict, ckpt_dir: str, improved: bool) -> None:
    utils.atomic_save(state, os.path.join(ckpt_dir, "last.pth"))  # every epoch: --resume continues from here
    if improved:
        utils.atomic_save(state, os.path.join(ckpt_dir, "best_model.pth"))


def main(argv=None):
    cfg, extra = config.load(argv, extras={"resume": ""})
    rank, world = init_distributed(cfg)
    run_name = cfg.run_name or time.strftime("run_%Y%m%d_%H%M%S")
    utils.setup_logging(os.path.join(cfg.log_dir, run_name, "train.log") if rank == 0 else "")
    if rank > 0:
        log.setLevel("WARNING")  # one rank speaks
    utils.seed_everything(cfg.seed + rank)  # DDP copies rank 0's initial weights to every rank
    device = utils.device_of(cfg)
    dtype = utils.amp_dtype(device, cfg.amp)
    log.info("device %s x %d process(es), autocast %s, method %s", device, world, dtype or "off (float32)", cfg.method)

    samples, store, skipped = load_data(cfg, rank)
    train_samples, val_samples = dataset.train_val(samples, cfg)
    log.info("%d training / %d validation sub-tracklets of numbers %s", len(train_samples), len(val_samples),
             cfg.train_classes)
    log_digit_coverage(cfg)
    train_loader, val_loader = make_loaders(cfg, train_samples, val_samples, store, device, rank, world)

    model = build_model(cfg, device, rank)
    glyphs = glyph_bank(cfg)
    criterion = Criterion(cfg, loss_numbers(cfg, [s.number for s in train_samples], glyphs), device)
    optimizer = utils.adamw(param_groups(model, cfg), device, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    ema = make_ema(cfg, model)
    start, best_acc, history = 0, -1.0, []
    stopper = {"best_loss": math.inf, "bad_epochs": 0}
    ckpt_dir = cfg.checkpoint_dir
    if extra["resume"]:
        path = os.path.join(ckpt_dir, "last.pth") if extra["resume"] in ("1", "true", "True") else extra["resume"]
        start, best_acc, history, stopper = resume(path, model, optimizer, scheduler, scaler, ema)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    evaluated = model if ema is None else ema.module  # the weights validated, picked and shipped

    writer = make_writer(cfg, run_name) if rank == 0 else None
    if writer is not None and start == 0:
        with torch.random.fork_rng(devices=[]):  # a picture of the graph must not shift training's RNG
            add_graph(writer, model, prepare_batch(next(iter(val_loader)), cfg, device, train=False)[0])
    # 256 frames for the INT8 ranges, fixed once (the text trunk is not quantized by torch.ao)
    calibration = None if cfg.is_ocr() else dataset.calibration_frames(train_samples, store)
    counts = np.bincount([s.number for s in train_samples], minlength=100)
    best_threshold = None
    extras = {"skipped": dict(skipped), "train_counts": {int(n): int(c) for n, c in enumerate(counts) if c},
              "world_size": world}
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.time()
            set_epoch(train_loader, cfg.seed, epoch)
            tr = train_one_epoch(model, criterion, optimizer, train_loader, device, dtype, scaler, cfg, epoch, glyphs,
                                 ema)
            res = predict_loader(evaluated, val_loader, device, dtype, cfg, criterion, desc="validate")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            m = digit_metrics(res)
            row = {"epoch": epoch + 1, "train_loss": tr["loss"], "val_loss": res["loss"], "lr": lr,
                   "skipped_steps": tr["skipped_steps"], "seconds": time.time() - t0,
                   **{f"val_{k}": v for k, v in m.items()}}
            history.append(row)
            if world > 1:  # which samples this rank trained on, so disjoint shares can be checked
                utils.atomic_save(tr["indices"], os.path.join(cfg.log_dir, run_name, f"rank{rank}_samples.json"))
            improved = m["acc"] > best_acc
            best_acc = max(best_acc, m["acc"])
            stopper = early_stopping(stopper, res["loss"], cfg.min_delta)
            log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val acc %.2f%% (tens %.2f, units %.2f)  %.0fs%s",
                     epoch + 1, cfg.epochs, tr["loss"], res["loss"], m["acc"], m["tens_acc"], m["units_acc"],
                     row["seconds"], "  *best*" if improved else "")
            tune_thresholds(res, cfg, extras)
            if improved:
                best_threshold = extras["uncertain_threshold"]
            if rank == 0:
                log_tensorboard(writer, row, lr)
                log_tensorboard_media(writer, evaluated, val_loader, res, cfg, device, dtype, row["epoch"])
                state = checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch, best_acc, history, stopper,
                                         {**extras, "int8_ranges": None if calibration is None
                                          else int8_ranges(evaluated, calibration),
                                          **ema_state(ema)})
                save_checkpoints(state, ckpt_dir, improved)
            if should_stop(stopper, cfg, epoch, lr):
                break
    except KeyboardInterrupt:
        log.info("interrupted: checkpoints so far are kept; continue with python train.py --resume")
    finally:
        if rank == 0:
            finish(cfg, writer, history, best_acc, best_threshold, skipped)
        if distributed():
            dist.destroy_process_group()
    log.info("best validation accuracy %.2f%%. Next:\n  python evaluate.py --checkpoint %s\n  tensorboard --logdir %s",
             best_acc, os.path.join(ckpt_dir, "best_model.pth"), cfg.log_dir)
    return best_acc, history


def finish(cfg, writer, history, best_acc, best_threshold, skipped):
    """Curves, hparams with the final metrics and a small results file; runs even after a crash."""
    plots.plot_curves(history, os.path.join(cfg.results_dir, "training_curves.png"))
    if writer is not None:
        if history:
            last = history[-1]
            writer.add_hparams({k: v for k, v in config.to_dict(cfg).items() if isinstance(v, (int, float, str, bool))},
                               {"hparam/best_val_acc": best_acc, "hparam/final_val_loss": last["val_loss"],
                                **{f"hparam/final_val_{k}": last[f"val_{k}"]
                                   for k in ("acc", "tens_acc", "units_acc", "both_acc")}},
                               run_name=".")
        writer.close()
    utils.atomic_save({"best_val_acc": best_acc, "epochs": len(history), "skipped": dict(skipped),
                       "uncertain_threshold": best_threshold, "history": history},
                      os.path.join(cfg.results_dir, "training_results.json"))


if __name__ == "__main__":
    try:
        main()
    except (FloatingPointError, model_lib.InitError) as err:
        sys.exit(f"error: {err}")
