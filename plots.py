"""Every figure the repo draws: training curves, TensorBoard figures, evaluation plots. Matplotlib (Agg)."""
import os

import numpy as np
import torch


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path):
    """Temp file + rename, so a crash never leaves half a PNG; then free the figure."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    _pyplot().close(fig)


def plot_curves(history, path):
    if not history:
        return
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(ep, [h["train_loss"] for h in history], label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], label="val")
    ax[0].set(title="loss", xlabel="epoch")
    for k in ("acc", "tens_acc", "units_acc"):
        ax[1].plot(ep, [h[f"val_{k}"] for h in history], label=f"val {k}")
    ax[1].set(title="validation accuracy (%)", xlabel="epoch", ylim=(0, 100))
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def tracklet_figure(frames, true, out):
    """Rows: tracklets (true, predicted, confidence); columns: the frames the model saw, with attention."""
    plt = _pyplot()
    n, T = frames.shape[:2]
    fig, axes = plt.subplots(n, T, figsize=(1.2 * T + 1.0, 1.4 * n + 0.2), squeeze=False)
    for r in range(n):
        for c in range(T):
            axes[r, c].imshow(frames[r, c].numpy())
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            axes[r, c].set_title(f"attn {float(out['attention'][r, c]):.2f}", fontsize=7)
        right = int(out["number"][r]) == int(true[r])
        axes[r, 0].set_ylabel(f"true {int(true[r])}\npred {int(out['number'][r])} ({float(out['confidence'][r]):.2f})",
                              fontsize=8, color="tab:green" if right else "tab:red")
    fig.tight_layout()
    return fig


def attention_figure(attn, true):
    """Temporal attention weight of every frame (columns) of the showcased tracklets (rows)."""
    plt = _pyplot()
    n, T = attn.shape
    fig, ax = plt.subplots(figsize=(0.7 * T + 1.5, 0.45 * n + 1.0))
    ax.imshow(attn.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for r in range(n):
        for c in range(T):
            ax.text(c, r, f"{float(attn[r, c]):.2f}", ha="center", va="center", fontsize=7, color="white")
    ax.set(xticks=range(T), yticks=range(n), yticklabels=[f"true {int(t)}" for t in true], xlabel="frame",
           title="temporal attention")
    fig.tight_layout()
    return fig


def confusion_figure(true, pred):
    """Number-level confusion matrix over every number that occurs as a label or a prediction."""
    plt = _pyplot()
    labels = sorted(set(true.tolist()) | set(pred.tolist()))
    pos = {n: i for i, n in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), int)
    for t, p in zip(true.tolist(), pred.tolist()):
        cm[pos[t], pos[p]] += 1
    size = 0.4 * len(labels) + 2.5
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    for r, c in zip(*np.nonzero(cm)):
        ax.text(c, r, str(cm[r, c]), ha="center", va="center", fontsize=7,
                color="white" if cm[r, c] > cm.max() / 2 else "black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted number", ylabel="true number", title="validation confusion")
    fig.tight_layout()
    return fig


def plot_confusion(res, decoded, path):
    import seaborn as sns
    from sklearn.metrics import confusion_matrix
    plt = _pyplot()
    t, u = decoded[0], decoded[1]
    fig, ax = plt.subplots(1, 2, figsize=(13, 5.5))
    tens_labels = [str(i) for i in range(10)] + ["empty"]
    for a, true, pred, labels, title in ((ax[0], res["tens"], t, tens_labels, "tens digit"),
                                         (ax[1], res["units"], u, tens_labels[:10], "units digit")):
        cm = confusion_matrix(true.numpy(), pred.numpy(), labels=list(range(len(labels))))
        sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", xticklabels=labels, yticklabels=labels, ax=a, cbar=False)
        a.set(title=title, xlabel="predicted", ylabel="true")
    fig.tight_layout()
    save(fig, path)


def plot_per_number(per_num: dict, path, title):
    plt = _pyplot()
    nums = list(per_num)
    acc = [per_num[n]["accuracy"] for n in nums]
    colours = ["tab:green" if a >= 80 else "tab:orange" if a >= 60 else "tab:red" for a in acc]
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(nums) + 2), 4))
    bars = ax.bar(range(len(nums)), acc, color=colours, tick_label=nums)
    for b, n in zip(bars, nums):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 1, f"{per_num[n]['correct']}/{per_num[n]['total']}",
                ha="center", fontsize=8)
    ax.set(ylim=(0, 108), ylabel="accuracy (%)", xlabel="jersey number", title=title)
    fig.tight_layout()
    save(fig, path)


def plot_mistakes(res, pred, conf, ds, path, k=8) -> int:
    """Gallery of the k most confident wrong answers: the frames the model saw (evaluation sampling), true vs
    predicted number, confidence. Returns how many are shown."""
    plt = _pyplot()
    wrong = torch.nonzero(pred != res["number"]).flatten()
    worst = wrong[conf[wrong].argsort(descending=True)][:k].tolist()
    if not worst:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        save(fig, path)
        return 0
    with torch.random.fork_rng(devices=[]):
        shown = [int(res["index"][j]) for j in worst]
        frames = [ds[i][0] for i in shown]
    T = max(len(f) for f in frames)
    fig, axes = plt.subplots(len(worst), T, figsize=(1.2 * T + 1.4, 1.5 * len(worst) + 0.5), squeeze=False)
    for r, (j, i, f) in enumerate(zip(worst, shown, frames)):
        for c in range(T):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if c < len(f):
                axes[r, c].imshow(f[c].numpy())
        axes[r, 0].set_ylabel(f"true {int(res['number'][j])}\npred {int(pred[j])}\nconf {float(conf[j]):.2f}",
                              fontsize=8, color="tab:red")
        axes[r, 0].set_title(os.path.join(*ds.samples[i].path.split(os.sep)[-3:]), fontsize=6, loc="left")
    fig.suptitle("most confident mistakes", fontsize=9)
    fig.tight_layout()
    save(fig, path)
    return len(worst)
