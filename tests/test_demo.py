import json
from pathlib import Path

import pytest

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
