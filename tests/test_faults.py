"""Fault injection: a write fails (ENOSPC, as on a full disk) at a random point of train, score, merge,
export-adapter and eval; the command must stop with one `error: PATH: ...` line (exit 2), leave nothing half-written, and a
rerun without the fault must succeed.

The write primitives are replaced in-process: Python's open() for writing (a failure at the open or at any
write() call on the file) and MLX's save_safetensors (which writes half the file, then fails as MLX does).
A first, fault-free run counts the write points; then a few of them, drawn with a fixed seed, fail.
"""

import builtins
import errno
import io
import json
import os
import random
from pathlib import Path

import mlx.core as mx
import pytest
from click.testing import CliRunner

from gift_mlx.cli import main

POINTS_PER_COMMAND = int(os.environ.get("GIFT_FAULT_POINTS", 6))  # more: GIFT_FAULT_POINTS=1000 tries every point


class Faults:
    """Counts write points; raises ENOSPC at the `fail_at`-th one (1-based; 0: never)."""

    def __init__(self, monkeypatch):
        self.count, self.fail_at = 0, 0
        real_open, real_save = builtins.open, mx.save_safetensors

        def point(path):
            self.count += 1
            if self.count == self.fail_at:
                args = (errno.ENOSPC, os.strerror(errno.ENOSPC)) + ((str(path),) if path is not None else ())
                raise OSError(*args)

        class File:  # a file opened for writing whose write() may fail
            def __init__(self, f, path):
                self._f, self._path = f, path

            def write(self, data):
                point(None)  # as a real write(): the OS error carries no file name
                return self._f.write(data)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self._f.__exit__(*exc)

            def __iter__(self):
                return iter(self._f)

        def fake_open(file, mode="r", *args, **kwargs):
            if isinstance(file, int) or not any(c in mode for c in "wax+"):
                return real_open(file, mode, *args, **kwargs)
            point(file)
            return File(real_open(file, mode, *args, **kwargs), file)

        def fake_save(path, tensors, metadata=None):
            self.count += 1
            if self.count == self.fail_at:
                real_save(path, tensors, metadata=metadata or {})
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])  # half a file on disk, as a full disk leaves it
                raise RuntimeError("[write] Unable to write 8 bytes to file.")
            return real_save(path, tensors, metadata=metadata or {})

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(mx, "save_safetensors", fake_save)

    def run(self, args, fail_at=0):
        self.count, self.fail_at = 0, fail_at
        result = CliRunner().invoke(main, [str(a) for a in args])
        self.fail_at = 0
        return result


def leftovers(*folders):
    """Hidden or temporary files and folders (staging, .tmp) under the folders."""
    return [p for f in folders if Path(f).exists() for p in Path(f).rglob("*")
            if p.name.startswith(".") or ".tmp" in p.name]


def check_complete(*folders):
    """Every JSON and safetensors file under the folders is whole."""
    for f in folders:
        for p in Path(f).rglob("*"):
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".jsonl":
                for line in p.read_text().splitlines():
                    json.loads(line)
            elif p.suffix == ".safetensors":
                mx.load(str(p))


def check_failure(result, root):
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if "error" in line]  # not tqdm's bars
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    err = lines[0]
    assert f"error: {root}" in err and "cannot write (" in err, err  # names a path under the run
    assert "/." not in err, err  # the output's own name, not its hidden stand-in


@pytest.fixture
def faults(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return Faults(monkeypatch)


def points(total, seed):
    return sorted(random.Random(seed).sample(range(1, total + 1), min(POINTS_PER_COMMAND, total)))


def test_train_fails_cleanly_at_any_write_and_resumes(faults, tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    args = lambda out: ["train", "--base", base, "--instruct", instruct, "--data", task_data, "--adapter-path", out,
                        "--iters", 3, "--save-every", 1, "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 4,
                        "--steps-per-report", 1]
    clean = faults.run(args(tmp_path / "count"))
    assert clean.exit_code == 0, clean.output
    total = faults.count
    assert total >= 10
    for k in points(total, seed=1):
        out = tmp_path / f"run{k}"
        check_failure(faults.run(args(out), fail_at=k), tmp_path)
        assert not leftovers(out), (k, leftovers(out))
        check_complete(out)
        rerun = faults.run(args(out) + ["--resume"])
        assert rerun.exit_code == 0, (k, rerun.output)
        assert json.loads((out / "gift_run.json").read_text())["final"]["step"] == 3
        check_complete(out)
        # (Bit-exact resume is checked in test_resume.py and test_reliability.py; here a fault before the first
        # checkpoint restarts at step 0, where the result still depends on whether the scores were cached.)


def test_score_fails_cleanly_at_any_write(faults, tmp_path, llama_pair, task_data):
    args = lambda out: ["score", "--instruct", llama_pair[1], "--data", task_data, "--adapter-path", out]
    assert faults.run(args(tmp_path / "count")).exit_code == 0
    for k in points(faults.count, seed=2):
        out = tmp_path / f"run{k}"
        check_failure(faults.run(args(out), fail_at=k), tmp_path)
        assert not leftovers(out)
        check_complete(out)
        assert faults.run(args(out)).exit_code == 0


@pytest.mark.parametrize("command", ["merge-mlx", "merge-hf", "export-adapter"])
def test_merge_and_export_fail_cleanly_at_any_write(faults, tmp_path, llama_pair, task_data, command):
    adapter = tmp_path / "adapter"
    trained = faults.run(["train", "--base", llama_pair[0], "--instruct", llama_pair[1], "--data", task_data,
                          "--adapter-path", adapter, "--iters", 1, "--lora-rank", 4, "--lora-alpha", 8])
    assert trained.exit_code == 0, trained.output
    name, _, fmt = command.partition("-")
    args = lambda out: [command if name != "merge" else "merge", "--adapter-path", adapter, "--out", out,
                        *(["--format", fmt] if name == "merge" else [])]
    assert faults.run(args(tmp_path / "count")).exit_code == 0
    for k in points(faults.count, seed=3):
        out = tmp_path / f"merged{k}"
        check_failure(faults.run(args(out), fail_at=k), tmp_path)
        assert not out.exists() and not leftovers(tmp_path), leftovers(tmp_path)
        assert faults.run(args(out)).exit_code == 0


def test_eval_fails_cleanly_at_any_write(faults, tmp_path, llama_pair):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"question": "What is 1+2?", "answer": "3"}) + "\n")
    args = lambda out: ["eval", "--model", llama_pair[1], "--data", problems, "--out", out, "--samples", 2,
                        "--max-tokens", 2]
    assert faults.run(args(tmp_path / "count")).exit_code == 0
    for k in points(faults.count, seed=4):
        out = tmp_path / f"eval{k}"
        check_failure(faults.run(args(out), fail_at=k), tmp_path)
        assert not out.exists() and not leftovers(tmp_path), leftovers(tmp_path)
        assert faults.run(args(out)).exit_code == 0
