"""Exact resume after a real SIGKILL, Ctrl-C-free; non-finite losses stop or skip cleanly."""

import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from gift_mlx import train as train_mod
from gift_mlx.config import TrainConfig
from gift_mlx.errors import GiftError


def args(base, instruct, data, out, iters):
    return ["--base", base, "--instruct", instruct, "--data", data, "--adapter-path", out, "--iters", iters,
            "--save-every", 2, "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 2,
            "--grad-accumulation-steps", 2, "--steps-per-eval", 1000]


def gift(*a):
    return [sys.executable, "-m", "gift_mlx", "train", *map(str, a)]


def test_sigkill_then_resume_gives_the_same_adapter_bit_for_bit(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    iters = 24
    straight = subprocess.run(gift(*args(base, instruct, task_data, tmp_path / "straight", iters)),
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(gift(*args(base, instruct, task_data, out, iters)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-[0-9]*[0-9].safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.stem.split("-")[1]) for p in out.glob("checkpoint-[0-9]*[0-9].safetensors"))
    assert steps and steps[-1] < iters, "the run finished before it could be killed"

    resumed = subprocess.run(gift(*args(base, instruct, task_data, out, iters), "--resume"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: from step {steps[-1]}" in resumed.stdout
    a = mx.load(str(tmp_path / "straight" / "adapters.safetensors"))
    b = mx.load(str(out / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert mx.array_equal(a[k], b[k]), k


def test_resume_with_other_settings_is_refused(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    common = dict(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path),
                  lora_rank=4, lora_alpha=8, batch_size=4, save_every=2)
    train_mod.train(TrainConfig(iters=2, **common), log=lambda m: None)
    with pytest.raises(GiftError, match="written with other settings"):
        train_mod.train(TrainConfig(iters=2, learning_rate=1e-3, resume=True, **common), log=lambda m: None)


@pytest.mark.parametrize("skip", [False, True])
def test_non_finite_loss_stops_or_skips(tmp_path, llama_pair, task_data, monkeypatch, skip):
    base, instruct = llama_pair
    real = train_mod.token_weights
    calls = {"n": 0}

    def poisoned(q, floor, gamma):  # one training example gets NaN weights
        calls["n"] += 1
        w = real(q, floor, gamma)
        return np.full_like(w, np.nan) if calls["n"] == 3 else w

    monkeypatch.setattr(train_mod, "token_weights", poisoned)
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path),
                      lora_rank=4, lora_alpha=8, batch_size=4, iters=32, save_every=1, steps_per_report=1,
                      skip_nonfinite=skip)
    if not skip:
        with pytest.raises(GiftError, match=r"step \d+: the loss is not finite"):
            train_mod.train(cfg, log=lambda m: None)
        kept = mx.load(str(tmp_path / "adapters.safetensors"))  # the last good checkpoint's adapter
    else:
        record = train_mod.train(cfg, log=lambda m: None)
        assert record["final"]["skipped_steps"] >= 1
        kept = mx.load(str(tmp_path / "adapters.safetensors"))
    assert all(bool(mx.isfinite(v).all()) for v in kept.values())


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    out = tmp_path / "run"
    proc = subprocess.Popen(gift(*args(base, instruct, task_data, out, 400)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-[0-9]*[0-9].safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command with --resume" in stderr and "Traceback" not in stderr
    assert stderr.count("interrupted") == 1, stderr  # said once, by the command line
    assert mx.load(str(out / "adapters.safetensors"))
