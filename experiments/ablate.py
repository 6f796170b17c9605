"""Method x seed grid at a CPU-sized budget: seen-number validation, held-out and other unseen numbers.

    python -m experiments.ablate                            # default grid, original split
    python -m experiments.ablate --split=hard               # more digits, several two-digit numbers held out
    python -m experiments.ablate --methods=original,ctc_nomix --seeds=1,2,3 --epochs=6 --synth_scale=0.2
    python -m experiments.ablate --jobs=2 ...               # two runs at a time, one thread each

Writes results/ablation.json (every run, incrementally: an interrupted grid resumes where it stopped)
and results/ablation.md (mean +- std per method). The method is chosen on seen-number validation only;
held-out numbers are never looked at to pick anything. The grid that produced the report's experiments
(composition, rendered numbers, split and erased views, ...) is at tag lab-2026-12-07.
"""
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

import config
import dataset
import evaluate
import pretrain
import synth
import train
import utils

log = utils.log
EXTRA_UNSEEN = sorted(synth.EXTRA_UNSEEN_COUNTS)
GRID = {
    "original": [],
    # empty suppression: the recipe's 0.01 (above), milder, stronger, none, and a factor from the counts
    "suppress_0.1": ["--empty_suppression=0.1"],
    "suppress_0.001": ["--empty_suppression=0.001"],
    "ctc_nomix": ["--head=ctc", "--mixup_prob=0"],  # MixUp overlays two players' prints: two strings at once
    # the torso band of a full-body box (the resize spends its rows on the number), pinned so the report's torso_*
    # runs keep their meaning now that the default crop is narrower
    "torso_crop": ["--method=torso", "--crop=0,0.05,1,0.65"],
}
GRID |= {f"torso_{m}": GRID["torso_crop"] + GRID[m] for m in ("ctc_nomix",)}
GRID["torso_suppress_1"] = GRID["torso_crop"] + ["--empty_suppression=1"]
GRID["torso_suppress_auto"] = GRID["torso_crop"] + ["--empty_suppression=auto"]
# a reader that cannot see two digits at once: each column of the trunk's map sees a 22 px strip (one digit)
# and the CTC column classifier reads each column alone, so '49' cannot be learnt as one pattern
GRID["torso_narrow_ctc"] = GRID["torso_ctc_nomix"] + ["--backbone=cnn_narrow", "--ctc_context=0"]
# the torso box (the default crop): the band's rows and the central 70% of its width
GRID |= {f"box_{m}": GRID[f"torso_{m}"] + ["--crop=0.15,0.05,0.85,0.65"] for m in ("suppress_1", "narrow_ctc")}
HARD_TRAIN, HARD_TEST = synth.HARD_TRAIN, synth.HARD_TEST  # the harder split, defined in synth.py


def split_settings(split: str, scale: float, seed: int, passthrough=()):
    """(data root, train numbers, test numbers, extra unseen numbers) of a split. Any data to generate is
    generated here, in the parent: parallel runs would otherwise each start writing the same folder."""
    if split == "original":  # "": each run resolves the embedded data itself, as train.py does
        dataset.data_root(config.load(list(passthrough) + [f"--synth_scale={scale}"])[0])
        return "", synth.TRAIN_COUNTS, sorted(synth.HELDOUT_COUNTS), EXTRA_UNSEEN
    counts = {n: 200 if n < 10 else 60 for n in HARD_TRAIN} | {n: 60 for n in HARD_TEST}
    root = synth.ensure_dataset(os.path.join("data", "synthetic_hard", f"scale{scale:g}_seed{seed}"),
                                counts=counts, scale=scale, seed=seed)
    return str(root), HARD_TRAIN, HARD_TEST, []


def method_flags(method, passthrough):
    """Every method on the SPEC recipe (empty x 0.01 and 64 px included, so the report's runs keep their meaning
    now that the defaults differ); the method's flags and then the grid's own override it."""
    return ["--method=original", "--empty_suppression=0.01", "--img_size=64"] + GRID[method] + list(passthrough)


def run_one(split, method, seed, args, data_root, train_nums, test_nums, extra):
    tag = f"{split}/{method}_s{seed}"
    out = os.path.join(args["out_dir"], tag)
    common = [f"--checkpoint_dir={out}", f"--results_dir={out}", f"--train_classes={','.join(map(str, train_nums))}",
              f"--synth_scale={args['synth_scale']}", f"--seed={seed}"]
    common += [f"--data_root={data_root}"] if data_root else []
    flags = method_flags(method, args["passthrough"])
    # named after the grid's out_dir (default 'ablation'), so grids of other budgets keep apart logs
    run_name = f"{os.path.basename(os.path.normpath(args['out_dir']))}_{split}_{method}_s{seed}"
    train.main(common + flags + [f"--epochs={args['epochs']}", f"--run_name={run_name}",
                                 f"--log_dir={args['log_dir']}", f"--test_classes={','.join(map(str, test_nums))}"])
    ckpt = ["--checkpoint=" + os.path.join(out, "best_model.pth"), f"--results_dir={out}"]
    row = {"split": split, "method": method, "seed": seed}
    val = evaluate.main(ckpt + ["--split=val", f"--out={out}/val.json"])
    row["val"] = {r: m["accuracy"] for r, m in val["rules"].items()}
    row["val_per_number"] = {n: v["accuracy"] for n, v in val["per_number"].items()}
    row["val_two_digit"] = two_digit(val["per_number"])
    row["val_by_height"] = val["by_frame_height"]
    row["crop"] = val["config"]["crop"]
    for name, nums in (("heldout", test_nums), ("extra_unseen", extra)):
        if nums:
            res = evaluate.main(ckpt + [f"--test_classes={','.join(map(str, nums))}", f"--out={out}/{name}.json"]
                                + (["--stability"] if name == "heldout" else []))
            row[name] = {r: m["accuracy"] for r, m in res["rules"].items()}
            row[f"{name}_one_digit"] = one_digit_share(res["predictions"])
            row[f"{name}_seen_number"] = seen_number_share(res)
            row[f"{name}_per_number"] = {n: v["accuracy"] for n, v in res["per_number"].items()}
            row[f"{name}_by_height"] = res["by_frame_height"]
            if "stability" in res:
                row["stability"] = res["stability"]
    return row


def two_digit(per_number) -> float | None:
    """Argmax accuracy (%) on the seen two-digit numbers alone: whether a model reads two digits at all."""
    hits = sum(v["correct"] for n, v in per_number.items() if int(n) >= 10)
    total = sum(v["total"] for n, v in per_number.items() if int(n) >= 10)
    return 100.0 * hits / total if total else None


def one_digit_share(predictions) -> float:
    """% of (two-digit, unseen) tracklets answered with a one-digit number: the model did not see two digits."""
    return 100.0 * sum(p["pred"] < 10 for p in predictions) / max(len(predictions), 1)


def seen_number_share(res) -> float:
    """% of (unseen) tracklets answered with a two-digit training number (48 -> 49): the model recalls a
    whole number it was trained on instead of putting two digits together."""
    seen = {n for n in res["config"]["train_classes"] if n >= 10}
    return 100.0 * sum(p["pred"] in seen for p in res["predictions"]) / max(len(res["predictions"]), 1)


def summarize(rows) -> list[dict]:
    """mean and std per (split, method) of seen validation and unseen accuracy, argmax and anti_empty."""
    out = []
    for split, method in dict.fromkeys((r["split"], r["method"]) for r in rows):
        runs = [r for r in rows if r["split"] == split and r["method"] == method]
        entry = {"split": split, "method": method, "seeds": [r["seed"] for r in runs]}
        for key in ("val", "heldout", "extra_unseen"):
            for rule in ("argmax", "anti_empty"):
                _mean_std(entry, f"{key}_{rule}", [r[key][rule] for r in runs if rule in r.get(key, {})])
        for key in ("val_two_digit", "heldout_one_digit", "heldout_seen_number"):
            _mean_std(entry, key, [r[key] for r in runs if r.get(key) is not None])
        out.append(entry)
    return out


def _mean_std(entry, key, vals):
    if vals:
        entry[key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def markdown(summary, args) -> str:
    cols = [("seen val", "val_argmax"), ("seen two-digit", "val_two_digit"), ("held-out", "heldout_argmax"),
            ("held-out anti_empty", "heldout_anti_empty"), ("held-out answered with one digit", "heldout_one_digit"),
            ("held-out answered with a seen two-digit number", "heldout_seen_number"),
            ("other unseen", "extra_unseen_argmax"), ("other unseen anti_empty", "extra_unseen_anti_empty")]
    fmt = lambda e, k: f"{e[k][0]:.1f} ± {e[k][1]:.1f}" if k in e else "–"  # noqa: E731
    head = "| split | method | seeds | " + " | ".join(c for c, _ in cols) + " |\n|" + "---|" * (3 + len(cols)) + "\n"
    lines = [f"| {e['split']} | {e['method']} | {len(e['seeds'])} | " + " | ".join(fmt(e, k) for _, k in cols) + " |"
             for e in summary]
    seeds = ",".join(map(str, sorted({s for e in summary for s in e["seeds"]})))  # a resumed file: all of them
    budget = (f"Budget: {args['epochs']} epochs, synth_scale {args['synth_scale']}, seeds {seeds}, "
              f"extra flags {' '.join(args['passthrough']) or 'none'}. Accuracy in %, mean ± std over seeds; "
              "argmax unless a rule is named; seen two-digit = the training split's two-digit numbers in validation.\n\n")
    return budget + head + "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    mine = {"methods": ",".join(GRID), "seeds": "1,2,3", "split": "original", "epochs": 6, "synth_scale": 0.2,
            "out_dir": "checkpoints/ablation", "results": "results/ablation.json", "log_dir": "logs", "jobs": 1}
    own = [a for a in argv if a.split("=")[0].lstrip("-") in mine]
    args = {**mine, **{a.split("=", 1)[0].lstrip("-"): a.split("=", 1)[1] for a in own}}
    args["passthrough"] = [a for a in argv if a not in own]
    args["epochs"], args["jobs"] = int(args["epochs"]), int(args["jobs"])
    args["synth_scale"] = float(args["synth_scale"])
    methods = args["methods"].split(",")
    unknown = [m for m in methods if m not in GRID]
    if unknown:
        raise config.ConfigError(f"unknown method(s) {unknown}; choose from {list(GRID)}")
    seeds = [int(s) for s in args["seeds"].split(",")]
    utils.setup_logging()
    rows = read_json(args["results"])["runs"] if os.path.isfile(args["results"]) else []
    done = {(r["split"], r["method"], r["seed"]) for r in rows}  # from an earlier (interrupted) invocation
    todo = []
    for split in args["split"].split(","):
        settings = split_settings(split, args["synth_scale"], 0, args["passthrough"])
        todo += [(split, m, s, args, *settings) for m in methods for s in seeds if (split, m, s) not in done]
    if args["jobs"] > 1:
        make_trunks({t[1] for t in todo}, args["passthrough"])
    for row in _run_all(todo, args["jobs"]):
        rows.append(row)
        save(rows, args)
    if rows:
        save(backfill(rows, args["out_dir"]), args)
        log.info("\n%s", markdown(summarize(rows), args))


def make_trunks(methods, passthrough):
    """Make here, once, every glyph-pretrained trunk the runs will look for (train.glyph_init): parallel runs
    would otherwise each spend minutes pretraining the same trunk. Each run then finds it in the cache."""
    for m in sorted(methods):
        cfg = config.load(method_flags(m, passthrough))[0]
        if cfg.backbone_init == "auto" and cfg.pretrained and not os.path.exists(pretrain.weights_path(cfg)):
            train.build_model(cfg, torch.device("cpu"))  # tries ImageNet weights first, as a run does


def _run_all(todo, jobs: int):
    """Rows of every run, in order of completion; jobs > 1 runs that many at once, one thread each
    (on a 2-core CPU two one-thread runs finish sooner than two two-thread runs sharing the cores)."""
    if jobs <= 1:
        yield from (run_one(*t) for t in todo)
        return
    # not multiprocessing.Pool: its daemonic workers may not start the decoding pools a run uses
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(os.getpid(),)) as pool:
        yield from (f.result() for f in as_completed([pool.submit(run_one, *t) for t in todo]))


def _worker_init(parent: int, poll: float = 2.0):
    """One thread per run, and a watchdog: a worker is busy training and only hears from the pool between
    runs, so a killed grid would leave its runs training on (and writing checkpoints) as orphans."""
    torch.set_num_threads(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)  # checkpoints are written atomically, so none is left half-written
    threading.Thread(target=watch, daemon=True).start()


def save(rows, args):
    summary = summarize(rows)
    utils.atomic_save({"runs": rows, "summary": summary, "budget": args}, args["results"])
    with open(args["results"].replace(".json", ".md"), "w") as f:
        f.write(markdown(summary, args))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def backfill(rows, out_dir):
    """Figures an older ablate.py did not record, from the run's own val.json and heldout.json."""
    for r in rows:
        run = os.path.join(out_dir, r["split"], f"{r['method']}_s{r['seed']}")
        for key, name, fn in (("val_two_digit", "val.json", lambda res: two_digit(res["per_number"])),
                              ("heldout_one_digit", "heldout.json", lambda res: one_digit_share(res["predictions"])),
                              ("heldout_seen_number", "heldout.json", seen_number_share),
                              ("crop", "val.json", lambda res: config.from_dict(res["config"]).crop)):
            path = os.path.join(run, name)
            if key not in r and os.path.isfile(path):
                r[key] = fn(read_json(path))
    return rows


if __name__ == "__main__":
    main()
