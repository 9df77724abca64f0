"""Exact resume after a real SIGKILL, Ctrl-C-free; non-finite losses stop or skip cleanly."""

import json
import shutil
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from gift_mlx import adapters
from gift_mlx import train as train_mod
from gift_mlx.config import TrainConfig
from gift_mlx.errors import GiftError


def args(base, instruct, data, out, iters):
    return ["--base", base, "--instruct", instruct, "--data", data, "--adapter-path", out, "--iters", iters,
            "--save-every", 2, "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 2,
            "--grad-accumulation-steps", 2, "--steps-per-eval", 1000]


def default_signal(sig):
    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})


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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, llama_pair, task_data, sig):
    base, instruct = llama_pair
    out = tmp_path / "run"
    # The child starts as from a terminal: the signal neither ignored nor blocked. A disposition this process
    # inherited or a test before set (SIG_IGN, as a shell gives its background jobs) would pass on through exec,
    # and Python keeps an ignored SIGINT ignored.
    proc = subprocess.Popen(gift(*args(base, instruct, task_data, out, 400)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: default_signal(sig))
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-[0-9]*[0-9].safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # some steps past the checkpoint, which the signal must not lose
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "run the same command with --resume" in stderr and "Traceback" not in stderr
    assert stderr.count("interrupted") == 1, stderr  # said once, by the command line
    assert mx.load(str(out / "adapters.safetensors"))
    saved = int(stderr.split("continue from step ")[1].split()[0])
    assert saved >= 2 and out.joinpath(f"checkpoint-{saved:07d}.safetensors").exists()
    assert adapters.run_status(out) == "interrupted"


# ---- exact resume after an interrupt anywhere, a failed final write, a kill before the final adapter ----

QUIET = lambda m: None  # noqa: E731


def small(llama_pair, data, out, **kw):
    base, instruct = llama_pair
    settings = dict(lora_rank=4, lora_alpha=8, batch_size=4, iters=6, steps_per_eval=2, steps_per_report=1,
                    save_every=2)
    return TrainConfig(base=str(base), instruct=str(instruct), data=str(data), adapter_path=str(out),
                       **{**settings, **kw})


def same_adapter(a, b):
    a, b = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    return a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


def fail_on_call(monkeypatch, owner, name, n, error=KeyboardInterrupt):
    """owner.name raises `error` on its n-th call (only)."""
    real, calls = getattr(owner, name), {"n": 0}

    def wrapped(*a, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise error("injected") if error is not KeyboardInterrupt else error()
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, wrapped)


def compiled_step_interrupted(n):
    real = train_mod.build_step

    def build(*a, **kw):
        step, state = real(*a, **kw)
        calls = {"n": 0}

        def interrupted(*sa):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return step(*sa)
        return interrupted, state
    return build


@pytest.mark.parametrize("where", ["validation", "step", "metrics row", "checkpoint"])
def test_an_interrupt_anywhere_then_resume_gives_the_straight_adapter(tmp_path, llama_pair, task_data, monkeypatch,
                                                                      where):
    straight = tmp_path / "straight"
    train_mod.train(small(llama_pair, task_data, straight), log=QUIET)
    out = tmp_path / "a"
    with monkeypatch.context() as m:
        if where == "validation":  # after step 2, while validating it
            fail_on_call(m, train_mod, "validation_loss", 1)
        elif where == "step":  # inside step 4
            m.setattr(train_mod, "build_step", compiled_step_interrupted(4))
        elif where == "metrics row":  # writing step 3's row
            fail_on_call(m, train_mod.LineWriter, "write", 4)
        else:  # writing the checkpoint of step 4
            fail_on_call(m, train_mod, "save_checkpoint", 2)
        with pytest.raises(KeyboardInterrupt):
            train_mod.train(small(llama_pair, task_data, out), log=QUIET)
    assert adapters.run_status(out) == "interrupted"
    train_mod.train(small(llama_pair, task_data, out, resume=True), log=QUIET)
    assert adapters.run_status(out) == "complete"
    assert same_adapter(straight, out), where


def test_a_failed_final_adapter_write_is_redone_by_resume(tmp_path, llama_pair, task_data, monkeypatch):
    straight, out = tmp_path / "straight", tmp_path / "a"
    train_mod.train(small(llama_pair, task_data, straight), log=QUIET)
    with monkeypatch.context() as m:  # the disk fills while the final adapters.safetensors is written
        fail_on_call(m, train_mod.adapters, "write_weights", 3,
                     lambda msg: GiftError(f"{out}/adapters.safetensors: cannot write (No space left on device)"))
        with pytest.raises(GiftError, match="No space left"):
            train_mod.train(small(llama_pair, task_data, out), log=QUIET)
    assert adapters.run_status(out) == "interrupted"
    (out / "adapters.safetensors").unlink()  # as if no earlier copy existed
    logs = []
    train_mod.train(small(llama_pair, task_data, out, resume=True), log=logs.append)
    assert not any("already complete" in m for m in logs)
    assert adapters.run_status(out) == "complete" and same_adapter(straight, out)


def test_a_kill_between_the_last_checkpoint_and_the_final_adapter_is_not_complete(tmp_path, llama_pair, task_data):
    straight, out = tmp_path / "straight", tmp_path / "a"
    train_mod.train(small(llama_pair, task_data, straight, save_every=2, keep_checkpoints=5), log=QUIET)
    shutil.copytree(straight, out)
    # What a SIGKILL after checkpoint 6 but before its adapter copy and the record leaves: step 4's adapter.
    step4 = mx.load(str(out / "checkpoint-0000004.safetensors"))
    mx.save_safetensors(str(out / "adapters.safetensors"),
                        {k[len("adapter."):]: v for k, v in step4.items() if k.startswith("adapter.")})
    record = json.loads((out / "gift_run.json").read_text())
    (out / "gift_run.json").write_text(json.dumps({**record, "status": "running"}))
    assert adapters.run_status(out) == "running"
    assert adapters.run_status(tmp_path) is None  # no run record: not an adapter gift trained
    train_mod.train(small(llama_pair, task_data, out, save_every=2, keep_checkpoints=5, resume=True), log=QUIET)
    assert adapters.run_status(out) == "complete" and same_adapter(straight, out)
    # A changed adapter file is no longer the verified one.
    (out / "adapters.safetensors").write_bytes(b"")
    assert adapters.run_status(out) == "damaged"


def test_resume_after_the_model_weights_changed_is_refused(tmp_path, llama_pair, task_data):
    base = shutil.copytree(llama_pair[0], tmp_path / "base")
    pair = (base, llama_pair[1])
    out = tmp_path / "a"
    train_mod.train(small(pair, task_data, out, iters=2, save_every=1), log=QUIET)
    (weights,) = base.glob("*.safetensors")
    tensors = mx.load(str(weights))
    name = sorted(tensors)[0]
    mx.save_safetensors(str(weights), {**tensors, name: tensors[name] + 1}, metadata={"format": "mlx"})
    with pytest.raises(GiftError, match="other model weights"):
        train_mod.train(small(pair, task_data, out, iters=2, save_every=1, resume=True), log=QUIET)
