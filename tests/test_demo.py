import json

from gift_mlx.demo import demo


def test_demo_trains_merges_and_evaluates_every_method(tmp_path):
    summary = demo(tmp_path, iters=3, samples=2, log=lambda m: None)
    names = [m["name"] for m in summary["models"]]
    assert names == ["instruct", "shadow-ft", "gift", "direct"]
    for method in ("shadow-ft", "gift", "direct"):
        assert json.loads((tmp_path / method / "gift_run.json").read_text())["method"] == method
        assert (tmp_path / "merged" / method / "config.json").exists()
    assert (tmp_path / "gift" / "scores" / "train-instruct.safetensors").exists()
    for f in ("results.md", "summary.json", "samples.jsonl", "scaling.png"):
        assert (tmp_path / "eval" / f).stat().st_size > 0


def test_demo_config_matches_the_demo_settings():
    from pathlib import Path

    from gift_mlx.config import load_config
    from gift_mlx.demo import SETTINGS

    cfg = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml")
    assert {k: getattr(cfg, k) for k in SETTINGS} == SETTINGS and cfg.iters == 60
