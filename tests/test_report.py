"""`gift train --report-to wandb`: every metrics.jsonl row also goes to Weights & Biases through mlx-lm's
callback. Offline (WANDB_MODE=offline): a real run is written under <adapter_path>/wandb; what was logged is
recorded on its way into wandb.log (wandb 0.31 keeps its run-file reader in its Go core)."""

import json

import pytest

from gift_mlx.config import TrainConfig
from gift_mlx.errors import GiftError
from gift_mlx.train import train

wandb = pytest.importorskip("wandb")  # the `wandb` extra


def test_report_to_wandb_offline(llama_pair, task_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_log = wandb.Run.log  # wandb.init rebinds wandb.log to the run's; spy on the method itself

    def log(run, data, step=None, **kwargs):
        logged.append((step, dict(data)))
        return real_log(run, data, step=step, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", log)
    base, instruct = llama_pair
    out = tmp_path / "a"
    train(TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(out), iters=4,
                      lora_rank=4, lora_alpha=8, batch_size=4, steps_per_report=2, steps_per_eval=4,
                      report_to="wandb", project_name="gift-test"), log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(step, {k: v for k, v in data.items() if k != "iteration"}) for step, data in logged] == [
        (r["step"], r) for r in rows]
    assert [r for r in rows if "val_loss" in r] and [r for r in rows if "loss" in r]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and next(runs[0].glob("run-*.wandb")).stat().st_size > 0
    assert wandb.run is None  # finished


def test_report_to_checks_the_service():
    with pytest.raises(GiftError, match="'tensorboard' is not wandb or swanlab"):
        TrainConfig(report_to="tensorboard").validate_options()
