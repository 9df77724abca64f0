"""The figures (matplotlib): each is written, readable, and draws what it says."""

import json

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from gift_mlx import plot


def read_rgb(path):
    return (imread(path)[..., :3] * 255).round().astype(int)


def rgb(color):
    return np.array([round(255 * c) for c in to_rgb(color)])


def painted(image, color):
    return int((image == rgb(color)).all(axis=-1).sum())


def test_scaling_plot_from_a_summary_read_back_from_json(tmp_path):
    """pass@k and maj@k rise with k; Average@n is one horizontal line across the axes per model."""
    ks = [1, 2, 4, 8]
    summary = {"ks": ks, "models": [
        {"name": name, "average@k": {str(k): base for k in ks},
         "pass@k": {str(k): min(1.0, base + 0.08 * (k - 1)) for k in ks},
         "maj@k": {str(k): base + 0.02 * (k - 1) for k in ks}}
        for name, base in (("instruct", 0.2), ("gift", 0.4))]}
    plot.scaling(tmp_path / "s.png", json.loads(json.dumps(summary)))
    image = read_rgb(tmp_path / "s.png")
    for color in plot.COLORS[:2]:
        mask = (image == rgb(color)).all(axis=-1)
        assert mask.sum() > 100
        assert mask.sum(axis=1).max() > 0.3 * image.shape[1] // 2  # a dotted line across the axes


def test_training_plot_has_losses_and_learning_rate(tmp_path):
    rows = [{"step": s, "loss": 2 / s, "plain_loss": 2.5 / s, "learning_rate": 1e-3 * min(1, s / 3)}
            for s in range(1, 11)]
    rows += [{"step": s, "val_loss": 2.2 / s, "val_plain_loss": 2.6 / s} for s in (5, 10)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot.training(tmp_path / "loss.png", plot.read_metrics(tmp_path / "metrics.jsonl"))
    image = read_rgb(tmp_path / "loss.png")
    assert painted(image, plot.COLORS[0]) > 100 and painted(image, plot.COLORS[1]) > 30  # training, validation
    assert painted(image, "grey") > 30  # the learning rate


def test_methods_plot_marks_every_method(tmp_path):
    summary = {"samples": 4, "models": [
        {"name": n, "task": {"average": t}, "retention": {"average": r}}
        for n, t, r in (("instruct", 0.1, 0.6), ("direct", 0.5, 0.2), ("shadow-ft", 0.4, 0.5), ("gift", 0.45, 0.55))]}
    plot.methods(tmp_path / "m.png", summary)
    image = read_rgb(tmp_path / "m.png")
    assert all(painted(image, c) > 30 for c in plot.COLORS[1:4])
