"""Method x seed grid at a CPU-sized budget: seen-number validation, held-out and other unseen numbers.

    python ablate.py                                        # default grid, original split
    python ablate.py --split=hard                           # more digits, several two-digit numbers held out
    python ablate.py --methods=original,compose --seeds=1,2,3 --epochs=6 --synth_scale=0.2
    python ablate.py --jobs=2 ...                           # two runs at a time, one thread each

Writes results/ablation.json (every run, incrementally: an interrupted grid resumes where it stopped)
and results/ablation.md (mean +- std per method). Rules, tau and the method are chosen on seen-number
validation only; held-out numbers are never looked at to pick anything.
"""
import json
import multiprocessing
import os
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

import config
import evaluate
import pretrain
import synth
import train
import utils

log = utils.log
EXTRA_UNSEEN = sorted(synth.EXTRA_UNSEEN_COUNTS)
METHODS = {
    "original": [],
    # the torso band of a full-body box: the resize spends its 64 px rows on the number, not on legs and pitch
    # (with the recipe's empty x 0.01, as every method here unless it says otherwise; the default was this until 6.17).
    # Pinned, so the torso_* runs of the report keep their meaning now that the default crop is narrower (6.22)
    "torso_crop": ["--method=torso", "--crop=0,0.05,1,0.65"],
    "suppress_0.1": ["--empty_suppression=0.1"],
    "suppress_0.001": ["--empty_suppression=0.001"],
    "balanced_softmax": ["--loss=balanced_softmax", "--class_weight=none"],
    "compositional": ["--head=compositional", "--loss=balanced_softmax", "--class_weight=none"],
    "positional": ["--reader=positional"],
    "compose": ["--compose_prob=0.5"],
    "compose_positional": ["--compose_prob=0.5", "--reader=positional"],
    "compose_paste": ["--compose_prob=0.5", "--compose_mode=paste", "--reader=positional", "--empty_suppression=1"],
    "compose_paste_compositional": ["--compose_prob=0.5", "--compose_mode=paste", "--reader=positional",
                                    "--head=compositional", "--loss=balanced_softmax", "--class_weight=none"],
    # renders pair each digit with many partners (train.glyph_bank); they bring ten tens digits into the loss, and
    # empty x 0.1 keeps empty's share of the tens loss near the original recipe's (x 0.01 with three tens digits)
    "glyph_mix": ["--glyph_mix=0.25", "--empty_suppression=0.1"],
    "ctc": ["--head=ctc"],
    "ctc_nomix": ["--head=ctc", "--mixup_prob=0"],  # MixUp overlays two players' prints: two strings at once
    "ctc16_nomix": ["--head=ctc", "--mixup_prob=0", "--ctc_columns=16"],  # two cells hold 8, blank, 8
    "ctc_paste": ["--head=ctc", "--compose_prob=0.5", "--compose_mode=paste"],
}
METHODS |= {f"torso_{m}": METHODS["torso_crop"] + METHODS[m] for m in ("ctc_nomix", "glyph_mix", "compose_paste")}
# each half of the crop read on its own, so a tens digit cannot lean on its neighbour (train.read_halves)
METHODS["torso_split"] = ["--method=split"]
METHODS["torso_split_paste"] = ["--method=split", "--compose_prob=0.25", "--compose_mode=paste"]
# each digit of a two-digit print also read with the other painted over (dataset.erased_views)
METHODS["torso_erase"] = ["--method=erase"]
METHODS["torso_erase_0.2"] = ["--method=erase", "--erase_views=0.2"]
# pooled features cannot say where a digit is; the positional reader keeps left and right apart
METHODS["torso_positional"] = ["--method=torso", "--reader=positional"]
METHODS["torso_erase_positional"] = ["--method=erase", "--reader=positional"]
# the recipe's empty x 0.01 fights a split whose tracklets are not mostly single digits (the hard split: 55%):
# there the tens head stops saying 'empty' and single digits are read as pairs (report 6.15). The default
# since report 6.17: no suppression reads seen numbers best on both splits
METHODS["torso_suppress_1"] = METHODS["torso_crop"] + ["--empty_suppression=1"]
# the factor from the counts: 'empty' gets the total weight of an average tens digit (0.02 on the original
# data, near the recipe's 0.01; 0.08 on the hard split; report 6.17)
METHODS["torso_suppress_auto"] = METHODS["torso_crop"] + ["--empty_suppression=auto"]
# composition may pair 4 with 4 and 6, 6 with 8 and 9, 8 with 4 and 6 (44 ... 86): a tens 4 then meets partners
# other than 9, and 48, 64, 88 stay unseen (section 6.12)
METHODS["torso_compose_paste_pairs"] = METHODS["torso_compose_paste"] + [
    "--compose_allow=" + ",".join(map(str, EXTRA_UNSEEN))]
# a reader that cannot see two digits at once: each column of the trunk's map sees a 22 px strip (one digit)
# and the CTC column classifier reads each column alone, so '49' cannot be learnt as one pattern (report 6.13)
METHODS["torso_narrow_ctc"] = METHODS["torso_ctc_nomix"] + ["--backbone=cnn_narrow", "--ctc_context=0"]
# the default with blurred training frames (30% of frames, Gaussian or motion; dataset.random_blur)
METHODS["torso_suppress_1_blur"] = METHODS["torso_suppress_1"] + ["--blur_aug=0.3"]
# the narrow reader also reads each digit of a two-digit print with the other painted over: labelled with the
# digit left, so a tens 4 is read as a 4 without its 9 (erase views without the digits heads' EMPTY conflict)
METHODS["torso_narrow_ctc_erase"] = METHODS["torso_narrow_ctc"] + ["--erase_views=1"]
# the same reader with columns 4 px apart: an '88' has room for the blank between its two 8s
METHODS["torso_narrow16_ctc"] = METHODS["torso_ctc_nomix"] + ["--backbone=cnn_narrow16", "--ctc_context=0"]
# columns that see 10 px strips, 4 px apart: one digit of a two-digit print (~16-20 px wide at 64 px, by eye)
METHODS["torso_thin_ctc"] = METHODS["torso_ctc_nomix"] + ["--backbone=cnn_thin", "--ctc_context=0"]
# the same reader shown two-digit prints of every allowed pair: single-digit bands pasted side by side on one
# shirt (section 6.4), in case a column reader takes a pasted pair for a printed one
METHODS["torso_narrow_ctc_paste"] = METHODS["torso_narrow_ctc"] + ["--compose_prob=0.5", "--compose_mode=paste"]
# single digits sit in the middle of the crop, a tens digit left of it: each tracklet moved sideways by up to
# 20% of the width shows every digit where either digit of a print stands (report 6.18)
METHODS |= {f"{m}_shift": METHODS[m] + ["--shift=0.2"] for m in ("torso_narrow_ctc", "torso_suppress_1")}
# the narrow trunk under the digits heads: its features each see one 22 px strip, and the positional reader
# pools the left and right halves apart, so the tens head can read the left strips' digit (report 6.19)
METHODS["torso_narrow_positional"] = METHODS["torso_suppress_1"] + ["--backbone=cnn_narrow", "--reader=positional"]
# the torso box, the default since 6.22: the band's rows and the central 70% of its width (1.43x the columns);
# pinned like the band
METHODS |= {f"box_{m}": METHODS[f"torso_{m}"] + ["--crop=0.15,0.05,0.85,0.65"] for m in ("suppress_1", "narrow_ctc")}
# every tracklet shrunk by up to 30% (one draw for its frames): a print too wide for the back is printed smaller
# (synth.py's two-digit glyphs: 0.83x the height of the same kit's single digit, median; report 6.25), so a
# single 8 is also seen at the size of the 8 of a 48 (negative at the default budget)
METHODS |= {f"box_{m}_zoom": METHODS[f"box_{m}"] + ["--zoom=0.3"] for m in ("suppress_1", "narrow_ctc")}
# the narrow reader co-trained on rendered numbers (6.8's --glyph_mix): many pairs, each digit with many partners
# (6.25: negative at the half budget)
METHODS["box_narrow_ctc_glyph"] = METHODS["box_narrow_ctc"] + ["--glyph_mix=0.25"]
# each two-digit print also seen with its digits exchanged on the same shirt (49 -> 94, 89 -> 98; dataset.swap_digits),
# half the time: a 4 and an 8 then stand where the units digit of 48, 64 and 88 stands, beside a new partner
METHODS |= {f"box_{m}_swap": METHODS[f"box_{m}"] + ["--swap_digits=0.5"] for m in ("suppress_1", "narrow_ctc")}
# validated, picked and shipped as an exponential moving average of the weights (decay 0.999 per step: about the
# last 1,000 steps, 3.4 epochs of the default data), against the epoch-to-epoch swings of seen validation
METHODS |= {f"box_{m}_ema": METHODS[f"box_{m}"] + ["--ema_decay=0.999"] for m in ("suppress_1", "narrow_ctc")}
HARD_TRAIN, HARD_TEST = synth.HARD_TRAIN, synth.HARD_TEST  # the harder split, defined in synth.py


def split_settings(split: str, scale: float, seed: int, passthrough=()):
    """(data root, train numbers, test numbers, extra unseen numbers) of a split. Any data to generate is
    generated here, in the parent: parallel runs would otherwise each start writing the same folder."""
    if split == "original":  # "": each run resolves the embedded data itself, as train.py does
        utils.data_root(config.load(list(passthrough) + [f"--synth_scale={scale}"])[0])
        return "", synth.TRAIN_COUNTS, sorted(synth.HELDOUT_COUNTS), EXTRA_UNSEEN
    counts = {n: 200 if n < 10 else 60 for n in HARD_TRAIN} | {n: 60 for n in HARD_TEST}
    root = synth.ensure_dataset(os.path.join("data", "synthetic_hard", f"scale{scale:g}_seed{seed}"),
                                counts=counts, scale=scale, seed=seed)
    return str(root), HARD_TRAIN, HARD_TEST, []


def method_flags(method, passthrough):
    """Every method on the SPEC recipe (empty x 0.01 and 64 px included, so the report's runs keep their meaning
    now that the defaults differ); the method's flags and then the grid's own override it."""
    return ["--method=original", "--empty_suppression=0.01", "--img_size=64"] + METHODS[method] + list(passthrough)


def run_one(split, method, seed, args, data_root, train_nums, test_nums, extra):
    tag = f"{split}/{method}_s{seed}"
    out = os.path.join(args["out_dir"], tag)
    common = [f"--checkpoint_dir={out}", f"--results_dir={out}", f"--train_classes={','.join(map(str, train_nums))}",
              f"--synth_scale={args['synth_scale']}", f"--seed={seed}"]
    common += [f"--data_root={data_root}"] if data_root else []
    flags = method_flags(method, args["passthrough"])
    # composition and --glyph_mix leave out the test numbers; the other scored ones too, on any data, unless the
    # method lets them be composed: those are then scored apart, as 'composed', not as unseen
    allowed = set(config.load(flags)[0].compose_allow)
    composed, extra = [n for n in extra if n in allowed], [n for n in extra if n not in allowed]
    if extra:
        flags.append(f"--compose_exclude={','.join(map(str, extra))}")
    # named after the grid's out_dir (default 'ablation'), so grids of other budgets keep apart logs
    run_name = f"{os.path.basename(os.path.normpath(args['out_dir']))}_{split}_{method}_s{seed}"
    train.main(common + flags + [f"--epochs={args['epochs']}", f"--run_name={run_name}",
                                 f"--log_dir={args['log_dir']}", f"--test_classes={','.join(map(str, test_nums))}"])
    ckpt = ["--checkpoint=" + os.path.join(out, "best_model.pth"), f"--results_dir={out}", "--tune_tau"]
    row = {"split": split, "method": method, "seed": seed}
    val = evaluate.main(ckpt + ["--split=val", f"--out={out}/val.json"])
    row["val"] = {r: m["accuracy"] for r, m in val["rules"].items()}
    row["val_per_number"] = {n: v["accuracy"] for n, v in val["per_number"].items()}
    row["val_two_digit"] = two_digit(val["per_number"])
    row["val_by_height"] = val["by_frame_height"]
    row["tau"] = val["config"]["logit_tau"]
    row["split_threshold"] = val["config"]["split_threshold"] if "split" in val["rules"] else None
    row["crop"] = val["config"]["crop"]
    for name, nums in (("heldout", test_nums), ("extra_unseen", extra), ("extra_composed", composed)):
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
    """mean and std per (split, method) of seen validation and unseen accuracy, argmax and tuned logit adjustment."""
    out = []
    for split, method in dict.fromkeys((r["split"], r["method"]) for r in rows):
        runs = [r for r in rows if r["split"] == split and r["method"] == method]
        entry = {"split": split, "method": method, "seeds": [r["seed"] for r in runs]}
        for key in ("val", "heldout", "extra_unseen", "extra_composed"):
            for rule in ("argmax", "anti_empty", "logit_adjusted", "split", "halves"):
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
            ("held-out anti_empty", "heldout_anti_empty"), ("held-out logit adj. (tau on val)", "heldout_logit_adjusted"),
            ("held-out split read (threshold on val)", "heldout_split"), ("seen val split read", "val_split"),
            ("held-out halves rule", "heldout_halves"), ("seen val halves rule", "val_halves"),
            ("held-out answered with one digit", "heldout_one_digit"),
            ("held-out answered with a seen two-digit number", "heldout_seen_number"),
            ("other unseen", "extra_unseen_argmax"), ("other unseen anti_empty", "extra_unseen_anti_empty"),
            ("other 'unseen' composed in training", "extra_composed_argmax")]
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
    import sys
    argv = sys.argv[1:] if argv is None else argv
    mine = {"methods": ",".join(METHODS), "seeds": "1,2,3", "split": "original", "epochs": 6, "synth_scale": 0.2,
            "out_dir": "checkpoints/ablation", "results": "results/ablation.json", "log_dir": "logs", "jobs": 1}
    own = [a for a in argv if a.split("=")[0].lstrip("-") in mine]
    args = {**mine, **{a.split("=", 1)[0].lstrip("-"): a.split("=", 1)[1] for a in own}}
    args["passthrough"] = [a for a in argv if a not in own]
    args["epochs"], args["jobs"] = int(args["epochs"]), int(args["jobs"])
    args["synth_scale"] = float(args["synth_scale"])
    methods = args["methods"].split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise config.ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
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
