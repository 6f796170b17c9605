"""Speed and memory benchmark: this repo's path against the original recipe's way of doing the same work.

    python bench.py                      # ~2-3 minutes on a 2-core CPU; writes results/bench.json
    python bench.py --device=cuda --bench_steps=50

Measured (sequences per second unless noted):
  train_model_bound      the recipe's train step (engine.train_step: MixUp, loss, clipping, fused AdamW) on a
                         batch of input already in memory (the ceiling for end-to-end training)
  train_end_to_end       train_one_epoch on the embedded data: cached uint8 frames, batched augmentation
  train_reference        the original way: float32, contiguous tensors, every frame decoded, sharpened,
                         resized and augmented with PIL in __getitem__ on every epoch
  pipeline / pipeline_naive   the data pipeline alone (ours / the PIL-per-frame one), no model
  infer_model_bound      inference on in-memory tensors at batch 64, with predict.py's default model
                         (infer_path: on a CPU the trunk in INT8, built from activation ranges observed on training
                         frames as a checkpoint stores them, int8_build_s its one-off cost; on a GPU the float model)
  infer_end_to_end       from image files, as predict.py does: decode only the frames read, in parallel,
                         + batched inference at batch 64, the same model
  infer_*_float          the same two with the float model under autocast (predict.py --quantize=false), where
                         the default is INT8
  infer_reference        from image files, PIL per frame, float32, batch 64
  infer_decode           decoding alone, as predict.py does it (the part of infer_end_to_end that is not the model)
  latency_ms_batch1[_float]  one tracklet, model only
  reader_infer_end_to_end  the pretrained-recognizer reader (--method=reader) from image files, as predict.py
                         reads them: its views decoded, the frozen trunk in onnxruntime on a CPU, the rest in torch
  reader_onnx[_int8]_end_to_end  the same, the reader exported whole (predict.py --export_onnx [--quantize]) in
                         onnxruntime; reader_onnx[_int8]_mb its file sizes
  zero_shot_end_to_end   its baseline (evaluate.py / predict.py --zero_shot): the same views, the shipped recognizer
                         in onnxruntime, greedy decoding and the vote
  reader_train_on_maps   the reader's training step on cached trunk maps (train.py, --finetune=neck)
  long_legible / long_uniform  long SoccerNet-style tracklets (synth.py --long, tracklets per second) through
                         predict.py: list the frames, score the legibility of up to 32 evenly spaced candidates
                         with the shipped recognizer and read the most legible (or read evenly spaced ones)
Every rate is the best of several timed blocks after a warm-up, ours and the reference alike. The paths a
ratio compares are timed in 5 interleaved rounds (model-bound, ours, reference, model-bound, ...), so that a slow
spell of a shared machine falls on both sides of the ratio, not on one.
"""
import config

if __name__ == "__main__":  # --help before torch is imported, so it prints at once
    config.exit_on_help(__doc__, config.options("bench"))

import copy
import dataclasses
import itertools
import os
import platform
import resource
import sys
import tempfile
import time
from collections import Counter

import onnxruntime as ort
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import dataset
import engine
import evaluate
import model as model_lib
import ocr
import predict
import synth
import utils

log = utils.log


class NaiveTrackletDataset(Dataset):
    """The original recipe's data path: PIL decode + sharpen + resize + PIL augmentation per frame, per epoch."""

    def __init__(self, samples, cfg, train_mode: bool):
        self.samples, self.cfg = samples, cfg
        aug = [T.RandomAffine(5, translate=(0.05, 0.05), scale=(0.95, 1.05)), T.ColorJitter(0.2, 0.2)] \
            if train_mode else []
        self.tf = T.Compose(aug + [T.ToTensor(), T.Normalize(dataset.MEAN.tolist(), dataset.STD.tolist())])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        idx = dataset.select_frames(len(s.frames), s.anchor, self.cfg.seq_len, "uniform", None)
        c = self.cfg
        frames = [self.tf(Image.fromarray(dataset.load_frame(s.frames[j], c.img_size, c.sharpen, c.crop, enhance=True)))
                  for j in idx]
        t, u = dataset.decompose(s.number)
        return torch.stack(frames), t, u, s.number


def paired_rates(blocks: dict, repeats: int = 3) -> dict:
    """Best items per second of each block (a callable returning how many items it did), timed in interleaved
    rounds (a, b, c, a, b, c, ...): the paths a ratio compares meet the same machine state, so drift on a shared
    CPU does not land on one side of it. The best, not the mean: slower calls measure interference (timeit's rule)."""
    best = dict.fromkeys(blocks, 0.0)
    for _ in range(repeats):
        for name, block in blocks.items():
            t0 = time.perf_counter()
            n = block()
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def repeat(fn, n_items: int, times: int, warmup: int = 2):
    """A block of `times` calls of fn (after `warmup` calls now), returning the items it did."""
    for _ in range(warmup):
        fn()

    def block():
        for _ in range(times):
            fn()
        return n_items * times
    return block


def rate(fn, n_items: int, steps: int, warmup: int = 2, repeats: int = 3) -> float:
    return paired_rates({"": repeat(fn, n_items, max(1, steps // repeats), warmup)}, repeats)[""]


def make_model(cfg, device, fast: bool):
    net = model_lib.build(cfg, pretrained=False)
    net.channels_last = fast and net.channels_last
    net.to(device)
    if net.channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def model_bound_train(cfg, device, dtype, block):
    """The recipe's training step (engine.train_step: MixUp, loss, clipping, update) on one batch of input
    already in memory, as prepare_batch leaves it: the ceiling end-to-end training can reach."""
    net = make_model(cfg, device, dtype is not None).train()
    crit = engine.Criterion(cfg, cfg.train_classes, device)
    opt = utils.adamw(net.parameters(), device, lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    B = cfg.batch_size
    number = torch.tensor(cfg.train_classes, device=device)[torch.randint(0, len(cfg.train_classes), (B,))]
    tens, units = (torch.tensor(v, device=device) for v in zip(*map(dataset.decompose, number.tolist())))
    batch = (torch.randn(B, cfg.seq_len * cfg.views_per_frame(), 3, *cfg.frame_shape(), device=device),
             torch.ones(B, cfg.seq_len * cfg.views_per_frame(), dtype=torch.bool, device=device), tens, units, number)
    return repeat(lambda: engine.train_step(net, crit, opt, scaler, batch, cfg, device, dtype), B, block)


def model_bound_infer(net, cfg, device, dtype, steps):
    """`net` (an inference_model) at batch 64 on in-memory tensors (a block of calls), and the latency of one
    tracklet (ms)."""
    x = torch.randn(64, cfg.seq_len * cfg.views_per_frame(), 3, *cfg.frame_shape(), device=device)
    with torch.inference_mode(), utils.autocast(device, dtype):
        latency = 1000.0 / rate(lambda: net(x[:1]), 1, steps)

    def call():
        with torch.inference_mode(), utils.autocast(device, dtype):
            net(x)
    return repeat(call, 64, max(1, steps // 12)), latency


def predict_mode(device) -> str:
    """The path predict.py takes by default (--quantize=auto) for a checkpoint train.py wrote, which stores
    activation ranges: the INT8 trunk on a CPU with a quantized engine, else the float model under autocast."""
    return "int8" if device.type == "cpu" and model_lib.available_quant_engine() else "float"


def pipeline_blocks(cfg, samples, store, steps):
    """Blocks of training batches through the data pipeline alone: ours (cached uint8 frames, batched
    augmentation) and the naive PIL-per-frame one."""
    ours = dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.train_sampling, cfg.use_anchor)
    ours_loader = DataLoader(ours, batch_size=cfg.batch_size, shuffle=True, collate_fn=dataset.collate)
    naive_loader = DataLoader(NaiveTrackletDataset(samples, cfg, True), batch_size=cfg.batch_size, shuffle=True)
    # endless, so any --bench_steps fits in the data
    ours_it, naive_it = (itertools.chain.from_iterable(itertools.repeat(dl)) for dl in (ours_loader, naive_loader))
    return {"pipeline": repeat(lambda: engine.prepare_batch(next(ours_it), torch.device("cpu"), train=True),
                               cfg.batch_size, max(1, steps // 3)),
            "pipeline_naive": repeat(lambda: next(naive_it), cfg.batch_size, max(1, steps // 12), 1)}


def end_to_end_train(cfg, samples, store, device, dtype, block, reference: bool):
    """A block of `block` training steps from the embedded data (warmed up): ours through train_one_epoch, or
    the reference's PIL-per-frame loader, float32 model and loop."""
    net = make_model(cfg, device, not reference)
    crit = engine.Criterion(cfg, [s.number for s in samples], device)
    # the original recipe used torch's default AdamW (a per-tensor loop on CPU)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4) if reference else utils.adamw(net.parameters(), device, 1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if reference:
        loader = DataLoader(NaiveTrackletDataset(samples, cfg, True), batch_size=cfg.batch_size, shuffle=True,
                            collate_fn=_naive_collate)
        _reference_train(net, crit, opt, loader, device, 2)  # warm-up, as for ours
        return lambda: _reference_train(net, crit, opt, loader, device, block)
    loader = DataLoader(dataset.TrackletDataset(samples, store, cfg.seq_len, cfg.train_sampling, cfg.use_anchor),
                        batch_size=cfg.batch_size, shuffle=True, collate_fn=dataset.collate, drop_last=True)

    def run(k):
        engine.train_one_epoch(net, crit, opt, loader, device, dtype, scaler, dataclasses.replace(cfg, max_steps=k,
                                                                                                  epochs=1), 0)
        return min(k, len(loader)) * cfg.batch_size
    run(2)
    return lambda: run(block)


def _naive_collate(batch):
    x, t, u, n = zip(*batch)
    return torch.stack(x), torch.tensor(t), torch.tensor(u), torch.tensor(n)


def _reference_train(net, crit, opt, loader, device, steps):
    net.train()
    n = 0
    for k, (x, t, u, num) in enumerate(loader):
        if k >= steps:
            break
        loss = crit(net(x.to(device)), t.to(device), u.to(device), num.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        n += x.shape[0]
    return n


def inference_model(cfg, samples, store, device, mode: str):
    """The model as an inference path runs it (mode reference | float | int8), and the seconds its one-off
    preparation took (INT8: building the quantized trunk from the activation ranges a checkpoint stores, as
    predict.py does; train.py observes them on training frames, as here, outside the timing)."""
    net = make_model(cfg, device, mode != "reference").eval()
    ranges = model_lib.int8_ranges(net, dataset.calibration_frames(samples, store)) if mode == "int8" else None
    start = time.perf_counter()
    if mode == "int8":
        net = evaluate.quantized(net, samples, store, ranges=ranges)[0]
    elif mode == "float":
        net = model_lib.fused_for_inference(net)
    return net, time.perf_counter() - start


def end_to_end_infer(net, cfg, samples, device, dtype, reference: bool = False):
    """From image files to numbers for every sample with `net` (an inference_model), as a long-lived predictor:
    warmed up on the batch shapes it will see (first calls build the kernels). Returns a block doing one full
    pass."""
    shape = (cfg.seq_len * cfg.views_per_frame(), 3, *cfg.frame_shape())
    with torch.inference_mode(), utils.autocast(device, None if reference else dtype):
        for b in {64, len(samples) % 64} - {0}:
            net(torch.randn(b, *shape, device=device))

    def run_reference():
        loader = DataLoader(NaiveTrackletDataset(samples, cfg, False), batch_size=64, collate_fn=_naive_collate)
        with torch.inference_mode():
            for x, *_ in loader:
                net(x.to(device))
        return len(samples)

    def run_ours():
        picked, store = predict.decode_picked(samples, cfg, Counter())  # predict.py's path, no cache
        ds = dataset.TrackletDataset(picked, store, cfg.seq_len, cfg.eval_sampling, use_anchor=False)
        with torch.inference_mode(), utils.autocast(device, dtype):
            for b in DataLoader(ds, batch_size=64, collate_fn=dataset.collate):
                net(engine.prepare_batch(b, device, train=False)[0])
        return len(samples)
    return run_reference if reference else run_ours


def inference_blocks(cfg, samples, store, device, dtype, steps) -> tuple[dict, dict]:
    """Timed blocks of inference: predict.py's default path (infer_*), the float model when that default is INT8
    (infer_*_float), the reference and the decoding alone; and the untimed facts (latency, INT8 build time)."""
    mode = predict_mode(device)
    paths = {"": mode} if mode == "float" else {"": mode, "_float": "float"}
    blocks, facts = {}, {"infer_path": mode}
    for suffix, m in paths.items():
        net, prep_s = inference_model(cfg, samples, store, device, m)
        blocks["infer_model_bound" + suffix], facts["latency_ms_batch1" + suffix] = model_bound_infer(
            net, cfg, device, dtype, steps)
        blocks["infer_end_to_end" + suffix] = end_to_end_infer(net, cfg, samples, device, dtype)
        if m == "int8":
            facts["int8_build_s"] = prep_s
    reference = inference_model(cfg, samples, store, device, "reference")[0]
    blocks["infer_reference"] = end_to_end_infer(reference, cfg, samples, device, None, reference=True)
    blocks["infer_decode"] = decode_block(cfg, samples)
    return blocks, facts


def rates(blocks: dict) -> dict:
    """{name_seq_per_s: best rate} of blocks timed together (paired_rates, 5 rounds)."""
    return {f"{k}_seq_per_s": v for k, v in paired_rates(blocks, 5).items()}


def decode_block(cfg, samples):
    """predict.py's decoding alone (tracklets): with infer_model_bound it bounds infer_end_to_end, as the two
    run one after the other on the same cores."""
    return lambda: len(predict.decode_picked(samples, cfg, Counter())[0])


def reader_blocks(cfg, samples, device, dtype, steps) -> tuple[dict, dict]:
    """The pretrained-recognizer reader (--method=reader) beside its zero-shot baseline, each from image files as
    predict.py reads them (decode the views of the frames read, then the model / the shipped recognizer's
    vote, batch 64), and the reader's training step on cached trunk maps (train.py with --finetune=neck)."""
    net = model_lib.build(cfg).to(device).eval()
    zero_shot = ocr.ZeroShot(cfg.backbone)

    def ours(batch):
        with torch.inference_mode(), utils.autocast(device, dtype):
            net(engine.prepare_batch(batch, device, train=False)[0])

    def end_to_end(read):
        def block():
            picked, store = predict.decode_picked(samples, cfg, Counter())
            for b in DataLoader(dataset.TrackletDataset(picked, store, cfg.seq_len, cfg.eval_sampling, False),
                                batch_size=64, collate_fn=dataset.collate):
                read(b)
            return len(samples)
        block()  # warm-up: kernels and the runtime's session
        return block
    views = cfg.seq_len * cfg.views_per_frame()
    x = torch.randn(1, views, 3, *cfg.frame_shape(), device=device)
    with torch.inference_mode(), utils.autocast(device, dtype):
        latency = 1000.0 / rate(lambda: net(x), 1, steps)
    train_net = model_lib.build(cfg).to(device).train()
    opt = utils.adamw(engine.param_groups(train_net, cfg), device, cfg.lr)
    crit = engine.Criterion(cfg, cfg.train_classes, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    B, c = cfg.batch_size, train_net.backbone.channels
    number = torch.tensor(cfg.train_classes, device=device)[torch.randint(0, len(cfg.train_classes), (B,))]
    maps = torch.randn(B, views, c, 1, cfg.line_width // 8, device=device)
    batch = (maps, torch.ones(B, views, dtype=torch.bool, device=device), None, None, number)
    total, trainable = model_lib.count_parameters(train_net)
    onnx_blocks, onnx_facts = onnx_reader(net, cfg, end_to_end)
    blocks = {"reader_infer_end_to_end": end_to_end(ours), **onnx_blocks,
              "zero_shot_end_to_end": end_to_end(lambda b: zero_shot(b["frames"].numpy())),
              "reader_train_on_maps": repeat(lambda: engine.train_step(train_net, crit, opt, scaler, batch, cfg,
                                                                      device, dtype), B, max(1, steps // 2))}
    return blocks, {"reader_latency_ms_batch1": latency, "reader_params_m": total / 1e6,
                    "reader_trainable_m": trainable / 1e6, "reader_views_per_tracklet": views, **onnx_facts}


def onnx_reader(net, cfg, end_to_end) -> tuple[dict, dict]:
    """The same reader as predict.py --export_onnx --quantize writes it (float and INT8), in onnxruntime on the
    CPU. Its head is untrained here, so the INT8 probability change is a check, not the trained model's."""
    with tempfile.TemporaryDirectory() as tmp:
        info = predict.export(copy.deepcopy(net).cpu(), cfg, os.path.join(tmp, "reader.onnx"), int8=True)
        sessions = {name: ort.InferenceSession(info[key], providers=["CPUExecutionProvider"])
                    for name, key in (("reader_onnx", "onnx"), ("reader_onnx_int8", "int8_onnx"))}

    def read(sess):
        return lambda b: sess.run(["number_probs"], {"frames": dataset.to_input(b["frames"], "cpu").numpy()})
    blocks = {f"{name}_end_to_end": end_to_end(read(sess)) for name, sess in sessions.items()}
    return blocks, {"reader_onnx_mb": info["onnx_mb"], "reader_onnx_int8_mb": info["int8_onnx_mb"],
                    "reader_onnx_int8_max_abs_diff": info["int8_max_abs_diff_vs_pytorch"]}


def long_blocks(cfg, device, dtype, scale: float) -> tuple[dict, dict]:
    """predict.py on the long SoccerNet-style tracklets (synth.py --long, test split) from image files: list
    the frames, score the candidates' legibility and read the most legible (long_legible), or read evenly spaced
    frames (long_uniform); the float model of `cfg` (untrained: speed only)."""
    root = synth.ensure_long_dataset(os.path.join(cfg.synth_root, f"long_scale{scale:g}_seed0"), scale=scale)
    split = str(root / "test")
    net = model_lib.fused_for_inference(make_model(cfg, device, True).eval())

    def block(sampling):
        c = dataclasses.replace(cfg, eval_sampling=sampling)

        def run():
            samples, store, _, scores = predict.load_inputs([split], c)
            predict.run(net, samples, store, predict.pick_frames(samples, c, scores), c, device, dtype)
            return len(samples)
        run()  # warm-up: kernels and the recognizer's session
        return run
    frames = [len(os.listdir(e.path)) for e in os.scandir(os.path.join(split, "images"))]
    return {"long_legible": block("legible"), "long_uniform": block("uniform")}, \
        {"long_tracklets": len(frames), "long_mean_frames": sum(frames) / len(frames),
         "long_candidates": dataset.MAX_TRACKLET_FRAMES}


def configs(argv) -> tuple:
    """The from-scratch reader the speed work was measured on (the user's --method unless it is a text
    recognizer's, else torso) and the pretrained-recognizer reader (the user's if it is one, else reader)."""
    extras = config.options("bench")
    cfg, extra = config.load(argv, extras=extras, doc=__doc__)
    rest = [a for a in argv if not a.startswith("--method")]
    other = config.load(rest + ["--method=" + ("torso" if cfg.is_ocr() else "reader")], extras=extras)[0]
    return (other, cfg, extra) if cfg.is_ocr() else (cfg, other, extra)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg, rcfg, extra = configs(argv)
    utils.setup_logging()
    utils.seed_everything(cfg.seed)
    cfg.synth_scale = rcfg.synth_scale = extra["bench_scale"]
    cfg.pretrained = False
    device = utils.device_of(cfg)
    dtype = utils.amp_dtype(device, cfg.amp)
    steps = extra["bench_steps"]
    samples, store, _ = dataset.load_samples(cfg, cfg.train_classes)
    samples = samples[: max(cfg.batch_size * (steps + 3), 64)]
    r = {"device": str(device), "autocast": str(dtype), "threads": torch.get_num_threads(),
         "torch": torch.__version__, "cpu": platform.processor() or platform.machine(), "samples": len(samples),
         "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "img_size": cfg.img_size}
    log.info("benchmarking on %s (%s autocast, %d threads)", device, dtype, r["threads"])
    # each group is timed in interleaved rounds, so a ratio's two sides meet the same machine state; inference
    # first, so that the pipeline is timed in a process that has run the model, as it is in training (in one
    # that has not, it moved batches 2-3x slower in an ad hoc test)
    blocks, facts = inference_blocks(cfg, samples, store, device, dtype, steps)
    r.update(facts)
    r.update(rates(blocks))
    r.update(rates(pipeline_blocks(cfg, samples, store, steps)))
    block = max(1, steps // 2)
    blocks = {"train_model_bound": model_bound_train(cfg, device, dtype, block),
              "train_end_to_end": end_to_end_train(cfg, samples, store, device, dtype, block, False),
              "train_reference": end_to_end_train(cfg, samples, store, device, None, block, True)}
    r.update(rates(blocks))
    blocks, facts = reader_blocks(rcfg, samples, device, dtype, steps)
    r.update(facts)
    r.update(rates(blocks))
    blocks, facts = long_blocks(cfg, device, dtype, extra["bench_scale"])
    r.update(facts)
    r.update(rates(blocks))
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r["ratios"] = {
        "train_end_to_end_vs_reference": r["train_end_to_end_seq_per_s"] / r["train_reference_seq_per_s"],
        "train_end_to_end_vs_model_bound": r["train_end_to_end_seq_per_s"] / r["train_model_bound_seq_per_s"],
        "infer_end_to_end_vs_reference": r["infer_end_to_end_seq_per_s"] / r["infer_reference_seq_per_s"],
        "infer_end_to_end_vs_model_bound": r["infer_end_to_end_seq_per_s"] / r["infer_model_bound_seq_per_s"],
        # decode then model, in series as predict.py runs them: where infer_end_to_end lands without overlap
        "infer_serial_bound_vs_reference": 1 / (1 / r["infer_model_bound_seq_per_s"] + 1 / r["infer_decode_seq_per_s"])
        / r["infer_reference_seq_per_s"],
        "pipeline_vs_naive": r["pipeline_seq_per_s"] / r["pipeline_naive_seq_per_s"],
        "reader_vs_zero_shot": r["reader_infer_end_to_end_seq_per_s"] / r["zero_shot_end_to_end_seq_per_s"],
        "reader_onnx_int8_vs_zero_shot": r["reader_onnx_int8_end_to_end_seq_per_s"]
        / r["zero_shot_end_to_end_seq_per_s"],
    }
    if "infer_end_to_end_float_seq_per_s" in r:
        r["ratios"]["infer_end_to_end_float_vs_reference"] = \
            r["infer_end_to_end_float_seq_per_s"] / r["infer_reference_seq_per_s"]
    out = extra["out"] or os.path.join(cfg.results_dir, "bench.json")
    utils.atomic_save(r, out)
    for k, v in r.items():
        if isinstance(v, float):
            log.info("%-32s %10.2f", k, v)
    for k, v in r["ratios"].items():
        log.info("%-32s %9.2fx", k, v)
    log.info("wrote %s", out)
    return r


if __name__ == "__main__":
    main()
