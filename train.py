"""Train JerseyTemporalNet on the training numbers; validate on a held-back split of the same numbers.

    python train.py                                   # embedded synthetic data, full recipe
    python train.py --synth_scale=0.1 --epochs=3      # a few minutes on a laptop CPU
    python train.py --data_root=/data/jersey --device=cuda --epochs=30
    python train.py --resume                          # continue from checkpoints/last.pth
"""
import config

if __name__ == "__main__":  # --help before torch is imported, so it prints at once
    config.exit_on_help(__doc__, config.options("train"))

import math
import os
import random
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import dataset
import decoding
import engine
import model as model_lib
import ocr
import plots
import pretrain
import utils
from engine import distributed, unwrap

log = utils.log
MIN_DELTA = 0.001  # early stopping: the validation loss must fall by this much to count as better


def init_distributed(cfg) -> tuple[int, int]:
    """(rank, world size). torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; plain `python train.py` is a world of one.
    NCCL with one GPU per process on CUDA, Gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    cuda = utils.resolved_device(cfg.device).startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg.device = f"cuda:{local}"
    return dist.get_rank(), dist.get_world_size()


def make_loaders(cfg, train_samples, val_samples, store, device, rank=0, world=1, scores=None):
    """Training and validation loaders; `scores` (frame legibility) for the 'legible' sampling strategy."""
    kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=dataset.collate,
              pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    train_ds = dataset.TrackletDataset(train_samples, store, cfg.seq_len, cfg.train_sampling, cfg.use_anchor,
                                       scores=scores, explore=True)
    val_ds = dataset.TrackletDataset(val_samples, store, cfg.seq_len, cfg.eval_sampling, cfg.use_anchor,
                                     scores=scores)
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


def log_tensorboard(writer, row, lr):
    if writer is None:
        return
    e = row["epoch"]
    writer.add_scalar("Loss/train", row["train_loss"], e)
    writer.add_scalar("Loss/val", row["val_loss"], e)
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
    x, mask = engine.prepare_batch(batch, device, train=False)[:2]
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
    """One TensorBoard run per training; train and validation loss overlaid by a custom-scalars layout (not
    add_scalars, which adds a run per curve)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: training runs without tensorboard
    except ImportError:
        log.warning("warning: tensorboard not installed; no TensorBoard logs")
        return None
    writer = SummaryWriter(os.path.join(cfg.log_dir, run_name))
    writer.add_custom_scalars({"Loss": {"train vs val": ["Multiline", ["Loss/train", "Loss/val"]]}})
    return writer


class _GraphView(torch.nn.Module):
    """The tracer wants tuples, not dicts, as outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return tuple(self.net(x).values())


def add_graph(writer, model, example):
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
                     "cached as %s; --backbone_init=none to skip)", cfg.backbone, pretrain.STEPS, path)
            if cfg.backbone not in model_lib.SMALL_CNNS:
                log.warning("warning: on a CPU, --backbone=cnn learns from rendered digits far sooner than a "
                            "ResNet does")
            pretrain.pretrain(cfg, path)
        if distributed():
            dist.barrier()
    return path if os.path.exists(path) else ""


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
    if model.channels_last:
        model.to(memory_format=torch.channels_last)
    total, trainable = model_lib.count_parameters(model)
    log.info("JerseyTemporalNet(%s, head=%s): %.2fM parameters, %.2fM trainable", cfg.backbone, cfg.head,
             total / 1e6, trainable / 1e6)
    return model


def resume(path, model, optimizer, scheduler, scaler):
    """Restore everything a checkpoint holds; returns (start epoch, best acc, history, early-stopping state)."""
    ck = utils.load_checkpoint(path)
    try:
        unwrap(model).load_state_dict(ck["model"])
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
    """Samples, frames (or cached trunk maps), skip counts and frame legibility (None unless a sampling strategy
    is 'legible'). train_classes=all becomes the numbers found, -1 included, so the checkpoint names them.
    Rank 0 generates/decodes first; the others then read its cache instead of racing to write it."""
    if rank > 0:
        dist.barrier()
    samples, store, skipped = dataset.load_samples(cfg, dataset.training_numbers(cfg))
    cfg.train_classes = cfg.train_classes or sorted({s.number for s in samples})
    scores = None
    if "legible" in (cfg.train_sampling, cfg.eval_sampling):
        scores = dataset.frame_legibility(samples, cfg, cfg.cache_dir)
        log.info("frame legibility: the text recognizer reads a number in %d of %d frames", sum(v > 0 for v in
                 scores.values()), len(scores))
    if cfg.is_ocr() and cfg.finetune != "all":  # a frozen trunk's maps are computed once, not every epoch
        store = ocr.MapStore(store, cfg.backbone, cfg.cache_dir)
    if rank == 0 and distributed():
        dist.barrier()
    return samples, store, skipped, scores


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
    if lr > 0.1 * cfg.lr:  # a long cosine schedule cut off before its rate came down learns little more
        log.warning("stopped at epoch %d of %d with the learning rate still %.0f%% of its peak; "
                    "raise --patience to run the schedule out", epoch + 1, cfg.epochs, 100 * lr / cfg.lr)
    return True


def save_checkpoints(state: dict, ckpt_dir: str, improved: bool) -> None:
    utils.atomic_save(state, os.path.join(ckpt_dir, "last.pth"))  # every epoch: --resume continues from here
    if improved:
        utils.atomic_save(state, os.path.join(ckpt_dir, "best_model.pth"))


def main(argv=None):
    cfg, extra = config.load(argv, extras=config.options("train"), doc=__doc__)
    rank, world = init_distributed(cfg)
    run_name = cfg.run_name or time.strftime("run_%Y%m%d_%H%M%S")
    utils.setup_logging(os.path.join(cfg.log_dir, run_name, "train.log") if rank == 0 else "")
    if rank > 0:
        log.setLevel("WARNING")  # one rank speaks
    utils.seed_everything(cfg.seed + rank)  # DDP copies rank 0's initial weights to every rank
    device = utils.device_of(cfg)
    dtype = utils.amp_dtype(device, cfg.amp)
    log.info("device %s x %d process(es), autocast %s, method %s", device, world, dtype or "off (float32)", cfg.method)

    samples, store, skipped, scores = load_data(cfg, rank)
    train_samples, val_samples = dataset.train_val(samples, cfg)
    log.info("%d training / %d validation sub-tracklets of numbers %s", len(train_samples), len(val_samples),
             cfg.train_classes)
    if not config.is_soccernet(cfg.data_root):  # a SoccerNet split is scored whole, not by test_classes
        log_digit_coverage(cfg)
    train_loader, val_loader = make_loaders(cfg, train_samples, val_samples, store, device, rank, world, scores)

    model = build_model(cfg, device, rank)
    criterion = engine.Criterion(cfg, [s.number for s in train_samples], device)
    optimizer = utils.adamw(engine.param_groups(model, cfg), device, cfg.lr, cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start, best_acc, history = 0, -1.0, []
    stopper = {"best_loss": math.inf, "bad_epochs": 0}
    ckpt_dir = cfg.checkpoint_dir
    if extra["resume"]:
        path = os.path.join(ckpt_dir, "last.pth") if extra["resume"] in ("1", "true", "True") else extra["resume"]
        start, best_acc, history, stopper = resume(path, model, optimizer, scheduler, scaler)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = make_writer(cfg, run_name) if rank == 0 else None
    if writer is not None and start == 0:
        with torch.random.fork_rng(devices=[]):  # a picture of the graph must not shift training's RNG
            add_graph(writer, model, engine.prepare_batch(next(iter(val_loader)), device, train=False)[0])
    # 256 frames for the INT8 ranges, fixed once (the text trunk is not quantized by torch.ao)
    calibration = None if cfg.is_ocr() else dataset.calibration_frames(train_samples, store)
    counts = np.bincount([s.number for s in train_samples if s.number >= 0], minlength=100)
    best_threshold = None
    extras = {"skipped": dict(skipped), "train_counts": {int(n): int(c) for n, c in enumerate(counts) if c},
              "train_not_visible": sum(s.number < 0 for s in train_samples),
              "world_size": world}
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.time()
            set_epoch(train_loader, cfg.seed, epoch)
            tr = engine.train_one_epoch(model, criterion, optimizer, train_loader, device, dtype, scaler, cfg, epoch)
            res = engine.predict_loader(model, val_loader, device, dtype, cfg, criterion, desc="validate")
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            m, not_visible = decoding.validation_metrics(res)
            score = m.get("acc_all", m["acc"])  # with -1 tracklets in validation, -1 answers count too
            row = {"epoch": epoch + 1, "train_loss": tr["loss"], "val_loss": res["loss"], "lr": lr,
                   "skipped_steps": tr["skipped_steps"], "seconds": time.time() - t0,
                   **{f"val_{k}": v for k, v in m.items()}}
            history.append(row)
            if world > 1:  # which samples this rank trained on, so disjoint shares can be checked
                utils.atomic_save(tr["indices"], os.path.join(cfg.log_dir, run_name, f"rank{rank}_samples.json"))
            improved = score > best_acc
            best_acc = max(best_acc, score)
            stopper = early_stopping(stopper, res["loss"], MIN_DELTA)
            log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val acc %.2f%% (tens %.2f, units %.2f%s)  %.0fs%s",
                     epoch + 1, cfg.epochs, tr["loss"], res["loss"], m["acc"], m["tens_acc"], m["units_acc"],
                     f"; -1 counted {m['acc_all']:.2f}" if "acc_all" in m else "", row["seconds"],
                     "  *best*" if improved else "")
            extras["uncertain_threshold"] = decoding.uncertain_threshold(res)
            extras["not_visible_threshold"] = not_visible
            if improved:
                best_threshold = extras["uncertain_threshold"]
            if rank == 0:
                log_tensorboard(writer, row, lr)
                log_tensorboard_media(writer, model, val_loader, res, cfg, device, dtype, row["epoch"])
                state = checkpoint_state(model, optimizer, scheduler, scaler, cfg, epoch, best_acc, history, stopper,
                                         {**extras, "int8_ranges": None if calibration is None
                                          else int8_ranges(model, calibration)})
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
