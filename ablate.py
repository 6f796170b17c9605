"""Method x seed grid at a CPU-sized budget: seen-number validation, held-out and other unseen numbers.

    python ablate.py                                        # default grid, original split
    python ablate.py --split=hard                           # more digits, several two-digit numbers held out
    python ablate.py --methods=original,compose --seeds=1,2,3 --epochs=6 --synth_scale=0.2

Writes results/ablation.json (every run, incrementally: an interrupted grid resumes where it stopped)
and results/ablation.md (mean +- std per method). Rules, tau and the method are chosen on seen-number
validation only; held-out numbers are never looked at to pick anything.
"""
import json
import os
import statistics

import config
import evaluate
import synth
import train
import utils

log = utils.log
EXTRA_UNSEEN = sorted(synth.EXTRA_UNSEEN_COUNTS)
METHODS = {
    "original": [],
    "suppress_0.1": ["--empty_suppression=0.1"],
    "suppress_0.001": ["--empty_suppression=0.001"],
    "balanced_softmax": ["--loss=balanced_softmax", "--class_weight=none"],
    "compositional": ["--head=compositional", "--loss=balanced_softmax", "--class_weight=none"],
    "positional": ["--reader=positional"],
    "compose": ["--compose_prob=0.5"],
    "compose_no_test_pairs": ["--compose_prob=0.5"],  # + --compose_exclude=<every evaluated unseen number>
    "compose_positional": ["--compose_prob=0.5", "--reader=positional"],
    "compose_paste": ["--compose_prob=0.5", "--compose_mode=paste", "--reader=positional", "--empty_suppression=1"],
    "compose_paste_compositional": ["--compose_prob=0.5", "--compose_mode=paste", "--reader=positional",
                                    "--head=compositional", "--loss=balanced_softmax", "--class_weight=none"],
}
HARD_TRAIN, HARD_TEST = synth.HARD_TRAIN, synth.HARD_TEST  # the harder split, defined in synth.py


def split_settings(split: str, scale: float, seed: int):
    """(data root, train numbers, test numbers, extra unseen numbers) of a split."""
    if split == "original":
        return "", synth.TRAIN_COUNTS, sorted(synth.HELDOUT_COUNTS), EXTRA_UNSEEN
    counts = {n: 200 if n < 10 else 60 for n in HARD_TRAIN} | {n: 60 for n in HARD_TEST}
    root = synth.ensure_dataset(os.path.join("data", "synthetic_hard", f"scale{scale:g}_seed{seed}"),
                                counts=counts, scale=scale, seed=seed)
    return str(root), HARD_TRAIN, HARD_TEST, []


def run_one(split, method, seed, args, data_root, train_nums, test_nums, extra):
    tag = f"{split}/{method}_s{seed}"
    out = os.path.join(args["out_dir"], tag)
    common = [f"--checkpoint_dir={out}", f"--results_dir={out}", f"--train_classes={','.join(map(str, train_nums))}",
              f"--synth_scale={args['synth_scale']}", f"--seed={seed}"]
    common += [f"--data_root={data_root}"] if data_root else []
    flags = METHODS[method] + args["passthrough"]
    if method == "compose_no_test_pairs":
        flags.append(f"--compose_exclude={','.join(map(str, test_nums + extra))}")
    train.main(common + flags + [f"--epochs={args['epochs']}", f"--run_name=ablation_{split}_{method}_s{seed}",
                                 f"--log_dir={args['log_dir']}", f"--test_classes={','.join(map(str, test_nums))}"])
    ckpt = ["--checkpoint=" + os.path.join(out, "best_model.pth"), f"--results_dir={out}", "--tune_tau"]
    row = {"split": split, "method": method, "seed": seed}
    val = evaluate.main(ckpt + ["--split=val", f"--out={out}/val.json"])
    row["val"] = {r: m["accuracy"] for r, m in val["rules"].items()}
    row["tau"] = val["config"]["logit_tau"]
    for name, nums in (("heldout", test_nums), ("extra_unseen", extra)):
        if nums:
            res = evaluate.main(ckpt + [f"--test_classes={','.join(map(str, nums))}", f"--out={out}/{name}.json"]
                                + (["--stability"] if name == "heldout" else []))
            row[name] = {r: m["accuracy"] for r, m in res["rules"].items()}
            row[f"{name}_per_number"] = {n: v["accuracy"] for n, v in res["per_number"].items()}
            if "stability" in res:
                row["stability"] = res["stability"]
    return row


def summarize(rows) -> list[dict]:
    """mean and std per (split, method) of seen validation and unseen accuracy, argmax and tuned logit adjustment."""
    out = []
    for split, method in dict.fromkeys((r["split"], r["method"]) for r in rows):
        runs = [r for r in rows if r["split"] == split and r["method"] == method]
        entry = {"split": split, "method": method, "seeds": [r["seed"] for r in runs]}
        for key in ("val", "heldout", "extra_unseen"):
            for rule in ("argmax", "logit_adjusted"):
                vals = [r[key][rule] for r in runs if key in r]
                if vals:
                    entry[f"{key}_{rule}"] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        out.append(entry)
    return out


def markdown(summary, args) -> str:
    head = ("| split | method | seeds | seen val (argmax) | held-out (argmax) | held-out (logit adj., tau on val) "
            "| other unseen (argmax) | other unseen (logit adj.) |\n|---|---|---|---|---|---|---|---|\n")
    fmt = lambda e, k: f"{e[k][0]:.1f} ± {e[k][1]:.1f}" if k in e else "–"  # noqa: E731
    lines = [f"| {e['split']} | {e['method']} | {len(e['seeds'])} | {fmt(e, 'val_argmax')} | {fmt(e, 'heldout_argmax')} "
             f"| {fmt(e, 'heldout_logit_adjusted')} | {fmt(e, 'extra_unseen_argmax')} "
             f"| {fmt(e, 'extra_unseen_logit_adjusted')} |" for e in summary]
    budget = (f"Budget: {args['epochs']} epochs, synth_scale {args['synth_scale']}, seeds {args['seeds']}, "
              f"extra flags {' '.join(args['passthrough']) or 'none'}. Accuracy in %, mean ± std over seeds.\n\n")
    return budget + head + "\n".join(lines) + "\n"


def main(argv=None):
    import sys
    argv = sys.argv[1:] if argv is None else argv
    mine = {"methods": ",".join(METHODS), "seeds": "1,2,3", "split": "original", "epochs": 6, "synth_scale": 0.2,
            "out_dir": "checkpoints/ablation", "results": "results/ablation.json", "log_dir": "logs"}
    own = [a for a in argv if a.split("=")[0].lstrip("-") in mine]
    args = {**mine, **{a.split("=", 1)[0].lstrip("-"): a.split("=", 1)[1] for a in own}}
    args["passthrough"] = [a for a in argv if a not in own]
    args["epochs"], args["synth_scale"] = int(args["epochs"]), float(args["synth_scale"])
    methods = args["methods"].split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise config.ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    seeds = [int(s) for s in args["seeds"].split(",")]
    utils.setup_logging()
    rows = json.load(open(args["results"]))["runs"] if os.path.isfile(args["results"]) else []
    for split in args["split"].split(","):
        settings = split_settings(split, args["synth_scale"], 0)
        for method in methods:
            for seed in seeds:
                if any(r["split"] == split and r["method"] == method and r["seed"] == seed for r in rows):
                    continue  # done in an earlier (interrupted) invocation
                rows.append(run_one(split, method, seed, args, *settings))
                summary = summarize(rows)
                utils.atomic_save({"runs": rows, "summary": summary, "budget": args}, args["results"])
                with open(args["results"].replace(".json", ".md"), "w") as f:
                    f.write(markdown(summary, args))
    log.info("\n%s", markdown(summarize(rows), args))


if __name__ == "__main__":
    main()
