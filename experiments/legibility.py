"""How often each frame-sampling strategy picks frames that show the number, on a split made by synth.py --long
(whose <split>_legible.json says, per frame, whether the number can be read by construction; real data has no
such file, so this is a measurement of the embedded data only).

    python -m experiments.legibility --data_root=data/synthetic_long/test [--seq_len=5] [--bands_scored=1]

--bands_scored: how many text-line bands of each frame the recognizer reads for its score (the product: 1, the
middle one).
"""
import json
import os
import sys

import numpy as np
import torch

import config
import dataset
import utils


def legible_share(samples, truth: dict, picks: list[list[int]]) -> float:
    """% of picked frames that show the number, over the tracklets that have a number."""
    hits = total = 0
    for s, p in zip(samples, picks):
        if s.number < 0:
            continue
        shown = truth[os.path.basename(s.path)]
        names = [os.path.basename(f) for f in s.frames]
        order = sorted(os.listdir(s.path), key=dataset._natural_key)
        hits += sum(shown[order.index(names[j])] for j in p)
        total += len(p)
    return round(100.0 * hits / max(total, 1), 2)


def main(argv=None):
    cfg, extra = config.load(sys.argv[1:] if argv is None else argv, extras={"bands_scored": dataset.LEGIBILITY_VIEWS["bands"]})
    utils.setup_logging()
    root = cfg.data_root
    sidecar = os.path.join(root, f"{os.path.basename(os.path.normpath(root))}_legible.json")
    if not os.path.isfile(sidecar):
        raise config.ConfigError(f"{sidecar} not found: --data_root must be a split made by synth.py --long")
    with open(sidecar) as f:
        truth = json.load(f)
    samples, _ = dataset.crawl(root)
    scores = dataset.frame_legibility(samples, cfg, cfg.cache_dir, bands=extra["bands_scored"])
    out = {"tracklets": len(samples), "seq_len": cfg.seq_len, "bands_scored": extra["bands_scored"],
           "candidates_showing_the_number": legible_share(samples, truth, [range(len(s.frames)) for s in samples])}
    for strategy in ("uniform", "legible"):
        ds = dataset.TrackletDataset(samples, None, cfg.seq_len, strategy, use_anchor=False, scores=scores)
        torch.manual_seed(cfg.seed)
        picks = [sorted(set(ds.frame_indices(i))) for i in range(len(samples))]
        out[f"{strategy}_picks_showing_the_number"] = legible_share(samples, truth, picks)
    hidden = [max(scores[f] for f in s.frames) for s in samples if s.number < 0]
    out["minus_one_tracklets_with_a_read"] = round(100.0 * float(np.mean([h > 0 for h in hidden])), 2) if hidden \
        else None
    utils.log.info(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
