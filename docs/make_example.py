"""Draw docs/example.png: five frames of one tracklet and what the zero-shot reader answers for it.

    python docs/make_example.py [TRACKLET_FOLDER]     # run from the repository root

The default tracklet is a held-out 48 of the embedded data (made by `python train.py` on first run).
The answer comes from `python predict.py --zero_shot`, and the frames shown are the ones it read.
"""
import json
import os
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

DEFAULT = "data/synthetic/scale1_seed0/48/player_10127_seq_44816/1"


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else DEFAULT
    out = os.path.join(tempfile.mkdtemp(), "zero_shot.json")
    subprocess.run([sys.executable, "predict.py", "--zero_shot", folder, "--out", out], check=True)
    pred = json.load(open(out))["predictions"][0]
    frames = pred["frames"]
    true = pred.get("true", os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(folder)))))
    fig, axes = plt.subplots(1, len(frames), figsize=(1.5 * len(frames), 3.2))
    for ax, name in zip(axes, frames):
        ax.imshow(Image.open(os.path.join(folder, name)).convert("RGB"))
        ax.set_axis_off()
    fig.suptitle(f"true number {true}   |   zero-shot answer {pred['prediction']} "
                 f"(confidence {pred['confidence']:.2f})", fontsize=11)
    fig.tight_layout()
    fig.savefig("docs/example.png", dpi=100)
    Image.open("docs/example.png").convert("RGB").quantize(colors=128).save("docs/example.png", optimize=True)
    print("wrote docs/example.png")


if __name__ == "__main__":
    main()
