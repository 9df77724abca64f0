"""Data-parallel training and scoring with mx.distributed: two processes on loopback (ring backend)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
from safetensors import safe_open

LAUNCH = str(Path(sys.executable).parent / "mlx.launch") if (Path(sys.executable).parent / "mlx.launch").exists() \
    else shutil.which("mlx.launch")


def run(*args, processes=1):
    prefix = [LAUNCH, "-n", str(processes), "--backend", "ring", "--"] if processes > 1 else []
    # A session of its own, so that a hung run's ranks can all be killed rather than left spinning.
    proc = subprocess.Popen(prefix + [sys.executable, "-m", "gift_mlx", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stdout + stderr
    return stdout


def read(path):
    with safe_open(str(path), "numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_two_processes_score_and_train_like_one(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    common = ["--base", base, "--instruct", instruct, "--data", task_data, "--lora-rank", 4, "--lora-alpha", 8,
              "--lora-dropout", 0, "--batch-size", 4, "--grad-accumulation-steps", 2, "--iters", 4,
              "--steps-per-report", 1, "--steps-per-eval", 2, "--save-every", 2]
    one = run("train", *common, "--adapter-path", tmp_path / "one")
    two = run("train", *common, "--adapter-path", tmp_path / "two", processes=2)

    # one score file, identical to the single-process one, written once
    for split in ("train", "valid"):
        (a, meta_a), (b, meta_b) = (read(tmp_path / d / "scores" / f"{split}-instruct.safetensors") for d in ("one", "two"))
        assert meta_a == meta_b
        assert all(np.array_equal(a[k], b[k]) for k in a)

    # the same global batches give the same adapter
    a = mx.load(str(tmp_path / "one" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "two" / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-4, atol=1e-6)

    # a single writer: the log and the metrics once, the losses equal
    assert two.count("train: gift on") == 1 and one.count("train: gift on") == 1
    rows = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")]
    assert len(rows[0]) == len(rows[1])
    for ra, rb in zip(*rows):
        ra, rb = json.loads(ra), json.loads(rb)
        for key in ("loss", "plain_loss", "val_loss", "val_plain_loss"):
            if key in ra:
                assert np.isclose(ra[key], rb[key], rtol=1e-4), (key, ra, rb)

    # resume under two processes continues from rank 0's checkpoint to the same adapter
    run("train", *common, "--iters", 6, "--adapter-path", tmp_path / "more", processes=2)
    full = mx.load(str(tmp_path / "more" / "adapters.safetensors"))
    (tmp_path / "more" / "checkpoint-0000006.safetensors").unlink()  # as if stopped after step 4
    more = run("train", *common, "--iters", 6, "--adapter-path", tmp_path / "more", "--resume", processes=2)
    assert "resume: from step 4" in more
    resumed = mx.load(str(tmp_path / "more" / "adapters.safetensors"))
    for k in full:
        np.testing.assert_allclose(np.array(full[k]), np.array(resumed[k]), rtol=1e-5, atol=1e-7)
