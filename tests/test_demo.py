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
