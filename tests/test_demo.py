import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_plot import read_rgb

from gift_mlx.cli import main
from gift_mlx.demo import SETTINGS, demo
from gift_mlx.errors import GiftError


def test_demo_trains_merges_and_evaluates_every_method(tmp_path):
    summary = demo(tmp_path, iters=3, samples=2, limit=4, gift_base=True, log=lambda m: None)
    names = [m["name"] for m in summary["models"]]
    assert names == ["instruct", "direct", "shadow-ft", "gift", "gift-base"]
    for method in names[1:]:
        assert json.loads((tmp_path / method / "gift_run.json").read_text())["method"] == method
        assert (tmp_path / "merged" / method / "config.json").exists()
    assert (tmp_path / "gift" / "scores" / "train-instruct.safetensors").exists()
    assert (tmp_path / "gift-base" / "scores" / "train-base.safetensors").exists()
    assert summary["task_problems"] == summary["retention_problems"] == 4
    for m in summary["models"]:
        for part in ("task", "retention"):
            assert 0 <= m[part]["average"] <= m[part]["pass"] <= 1
    for f in ("report.md", "summary.json", "methods.png"):
        assert (tmp_path / "eval" / f).stat().st_size > 0
    for part in ("task", "retention"):
        for f in ("results.md", "summary.json", "samples.jsonl", "scaling.png"):
            assert (tmp_path / "eval" / part / f).stat().st_size > 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert all(f"| {n} |" in report for n in names)
    for part in ("task", "retention"):  # links to every file behind the table
        for f in ("results.md", "samples.jsonl", "summary.json", "scaling.png"):
            assert f"]({part}/{f})" in report
    assert "| val loss, plain | val loss, weighted |" in report and "Average@2: the accuracy over the 2" in report
    gift = next(m for m in summary["models"] if m["name"] == "gift")
    assert f"| gift | {100 * gift['task']['average']:.1f} |" in report  # percents, as the README
    assert f"| {gift['val_plain_loss']:.3f} | {gift['val_loss']:.3f} |" in report
    cut = any(m[p]["truncated"] > 0.5 for m in summary["models"] for p in ("task", "retention"))
    assert ("most completions hit the token limit" in report) == cut
    titles = [read_rgb(tmp_path / "eval" / part / "scaling.png")[:40] for part in ("task", "retention")]
    assert not np.array_equal(*titles)  # the two plots say which set they show


def test_a_second_demo_refuses_then_repeats_exactly_with_force(tmp_path):
    from safetensors.numpy import load_file

    tiny = dict(iters=2, samples=1, limit=2, methods=("gift",), log=lambda m: None)
    first = demo(tmp_path, **tiny)
    adapter = load_file(tmp_path / "gift" / "adapters.safetensors")
    r = subprocess.run([sys.executable, "-m", "gift_mlx", "demo", "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--force" in r.stderr, r.stderr
    second = demo(tmp_path, force=True, **tiny)  # scores are recomputed: the folder was replaced
    again = load_file(tmp_path / "gift" / "adapters.safetensors")
    assert all(np.array_equal(adapter[k], again[k]) for k in adapter)
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}
    assert strip(first) == strip(second)
    # --force deletes only files the demo wrote, unchanged: a user's file anywhere, or an adapter retrained
    # into a folder of the same name, stops it before anything is deleted.
    for planted in ("notes.txt", "eval/notes.txt", "gift/adapters.safetensors"):
        (tmp_path / planted).write_bytes(b"mine")
        with pytest.raises(GiftError, match=f"not a gift demo folder: {planted} was not written by the demo"):
            demo(tmp_path, force=True, **tiny)
        assert (tmp_path / planted).read_bytes() == b"mine" and (tmp_path / "eval" / "summary.json").exists()
        if planted.endswith(".txt"):
            (tmp_path / planted).unlink()


def test_a_demo_on_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path, monkeypatch):
    import mlx.core as mx

    real = mx.save_safetensors

    def full(path, tensors, metadata=None):  # half a file on disk, then MLX's error, as a full disk does
        real(path, tensors, metadata=metadata or {})
        Path(path).write_bytes(Path(path).read_bytes()[:100])
        raise RuntimeError("[write] Unable to write 8 bytes to file.")

    monkeypatch.setattr(mx, "save_safetensors", full)
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), "--iters", "1"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.startswith(f"error: {tmp_path / 'd'}") and "cannot write" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


def test_demo_checks_its_budget_and_world_before_any_work(tmp_path):
    with pytest.raises(GiftError, match="must be at least 1"):
        demo(tmp_path / "a", iters=0)
    with pytest.raises(GiftError, match="not a toy world"):
        demo(tmp_path / "b", world=tmp_path)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_demo_config_matches_the_demo_settings():
    from gift_mlx.config import load_config

    root = Path(__file__).parent.parent
    cfg = load_config(root / "configs" / "demo.yaml")
    assert {k: getattr(cfg, k) for k in SETTINGS} == SETTINGS
    for name in ("base", "instruct", "data"):  # the preset points at the committed world
        assert (root / getattr(cfg, name)).exists()
