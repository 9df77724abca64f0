"""Every figure gift-mlx writes, drawn with matplotlib (Agg backend: no display needed).

scaling: pass@k and maj@k vs k per model, Average@n as reference (test-time scaling) for `gift eval`; training:
loss and learning-rate curves from a run's metrics.jsonl for `gift train`; methods: task accuracy vs retention
per method for `gift demo`.
"""

import json
from pathlib import Path

from .outputs import atomic_write

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
STYLES = {"pass@k": "-", "maj@k": "--"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window, also without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    # atomic, and a failed write is one error line naming the figure (outputs.py)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)


def _at(metric, k):
    return metric.get(k, metric.get(str(k)))  # int keys, or str keys from a summary read back from JSON


def scaling(path, summary):
    """PNG of accuracy (%) vs k (log2 axis) per model: pass@k solid, maj@k dashed, and Average@n (the same for
    every k) as a dotted horizontal reference line; one colour a model."""
    plt = _pyplot()
    ks = summary["ks"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, m in enumerate(summary["models"]):
        color = COLORS[i % len(COLORS)]
        for metric, style in STYLES.items():
            ax.plot(ks, [100 * _at(m[metric], k) for k in ks], style, color=color, marker="o", markersize=4,
                    linewidth=2, label=f"{m['name']} {metric}")
        ax.axhline(100 * _at(m["average@k"], ks[-1]), linestyle=":", color=color, linewidth=2,
                   label=f"{m['name']} Average@{ks[-1]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("accuracy (%)")
    data = Path(summary["data"]) if summary.get("data") else None  # task/test.jsonl vs retention.jsonl differ
    ax.set_title((f"{data.parent.name}/{data.name}: " if data else "") + "accuracy vs k (test-time scaling)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _save(fig, path)


def read_metrics(path):
    """The rows of a metrics.jsonl (training rows carry 'loss', validation rows 'val_loss')."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def training(path, rows):
    """PNG of a training run: weighted and plain training loss, validation losses, learning rate (right axis)."""
    plt = _pyplot()
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series = [(train, "loss", "training loss (weighted)", COLORS[0], "-"),
              (train, "plain_loss", "training loss (plain)", COLORS[0], "--"),
              (val, "val_loss", "validation loss (weighted)", COLORS[1], "-"),
              (val, "val_plain_loss", "validation loss (plain)", COLORS[1], "--")]
    for data, key, label, color, style in series:
        points = [(r["step"], r[key]) for r in data if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, color=color, marker="o" if data is val else None, markersize=4,
                    linewidth=2, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per target token)")
    ax.set_title("Training")
    ax.grid(True, alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    lr = [(r["step"], r["learning_rate"]) for r in train if "learning_rate" in r]
    if lr:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lr), ":", color="grey", linewidth=2, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        more = ax2.get_legend_handles_labels()
        lines, labels = lines + more[0], labels + more[1]
    ax.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    _save(fig, path)


def methods(path, summary):
    """PNG of the demo: task Average@k (x) vs retention Average@k (y) per model, the instruct model as reference."""
    plt = _pyplot()
    k = summary["samples"]
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for i, m in enumerate(summary["models"]):
        x, y = 100 * m["task"]["average"], 100 * m["retention"]["average"]  # percent, as report.md
        reference = m["name"] == "instruct"
        ax.scatter([x], [y], s=140 if reference else 90, color="black" if reference else COLORS[i % len(COLORS)],
                   marker="*" if reference else "osD^vP"[i % 6], zorder=3,
                   label=f"{m['name']}{' (reference)' if reference else ''}: task {x:.1f}%, retention {y:.1f}%")
        if reference:
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.axhline(y, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"task accuracy, Average@{k} (%)")
    ax.set_ylabel(f"retention accuracy, Average@{k} (%)")
    ax.set_title("Task vs retention per method\n(up and right is better; dotted lines: the instruct model)")
    xs = [100 * m["task"]["average"] for m in summary["models"]]
    ys = [100 * m["retention"]["average"] for m in summary["models"]]
    ax.set_xlim(0, max(xs) * 1.1 + 1)  # from zero, so that distances read as accuracy
    ax.set_ylim(0, max(ys) * 1.1 + 1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8, frameon=False)
    _save(fig, path)
