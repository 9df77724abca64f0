"""Issue 13's cases that are not one-line refusals: run-folder integrity (lock, run identity, checkpoints
verified on read, metrics after resume), legal input that must work (U+2028, a 250-character output name,
invalid UTF-8 piped to chat), stale score files recomputed, Σw = 0, help text, Ctrl-C in the demo."""

import json
import os
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from gift_mlx import scoring
from gift_mlx import train as train_mod
from gift_mlx.cli import main
from gift_mlx.config import TrainConfig
from gift_mlx.data import read_jsonl
from gift_mlx.errors import GiftError

FAST = dict(lora_rank=4, lora_alpha=8, batch_size=4, steps_per_report=1, steps_per_eval=1000)


def quiet(m):
    pass


def config(llama_pair, data, out, **kw):
    base, instruct = llama_pair
    return TrainConfig(base=str(base), instruct=str(instruct), data=str(data), adapter_path=str(out), **{**FAST, **kw})


def train_steps(out):
    """The steps of the training rows of metrics.jsonl (validation rows carry their step too)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def run(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def one_error_line(result, text):
    err = result.stderr.strip()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and text in err, err


# ---- legal input that must work ----

def test_a_unicode_line_separator_inside_a_string_is_legal(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a\u2028b\u0085c", "completion": "d\u2029e"}, ensure_ascii=False) + "\n")
    [(n, record)] = read_jsonl(path)
    assert n == 1 and record["prompt"] == "a\u2028b\u0085c"


def test_a_250_character_output_name_works(tmp_path, llama_pair, task_data):
    out = tmp_path / "a"
    train_mod.train(config(llama_pair, task_data, out, iters=1), log=quiet)
    long = tmp_path / ("m" * 250)
    r = run("merge", "--adapter-path", out, "--out", long)
    assert r.exit_code == 0, r.output
    assert (long / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_invalid_utf8_piped_to_chat_is_replaced_not_fatal(llama_pair):
    r = CliRunner().invoke(main, ["chat", "--model", str(llama_pair[1]), "--max-tokens", "2"],
                           input=b"hi \xff\xfe there\n/quit\n")
    assert r.exit_code == 0, r.output


# ---- score files ----

@pytest.mark.parametrize("damage", ["nan", "no-values"])
def test_a_damaged_score_file_is_recomputed(tmp_path, llama_pair, task_data, damage):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    cfg = TrainConfig(instruct=str(llama_pair[1]), data=str(task_data), adapter_path=str(tmp_path))
    path = scoring.score(cfg, log=quiet)["train"]
    good = load_file(str(path))
    with safe_open(str(path), "numpy") as f:
        meta = f.metadata()
    bad = {"offsets": good["offsets"]}
    if damage == "nan":
        bad["values"] = np.full_like(good["values"], np.nan)
    save_file(bad, str(path), metadata=meta)
    logs = []
    scoring.score(cfg, log=logs.append)
    assert any("recomputing stale" in m and "train-instruct" in m for m in logs), logs
    np.testing.assert_array_equal(load_file(str(path))["values"], good["values"])


# ---- run-folder integrity ----

HOLD = """import sys, time
from gift_mlx.outputs import folder_lock
with folder_lock(sys.argv[1], "training run"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_a_locked_folder_gets_one_error_line_and_a_stale_lock_is_taken_over(
        tmp_path, llama_pair, task_data):
    out = tmp_path / "a"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        args = ["train", "--base", llama_pair[0], "--instruct", llama_pair[1], "--data", task_data,
                "--adapter-path", out, "--iters", 1, "--lora-rank", 4, "--lora-alpha", 8]
        one_error_line(run(*args), f"in use by another gift training run (process {other.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".gift.lock"]
    finally:
        other.kill()  # SIGKILL: its lock file stays, stale
        other.wait()
    assert (out / ".gift.lock").exists()
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert not (out / ".gift.lock").exists()


def test_a_symbolic_link_in_the_run_folder_is_never_written_through(tmp_path, llama_pair, task_data):
    data = shutil.copytree(task_data, tmp_path / "data")
    out = tmp_path / "a"
    train_mod.train(config(llama_pair, data, out, iters=2, save_every=1), log=quiet)
    original = (data / "train.jsonl").read_bytes()
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(data / "train.jsonl")
    with pytest.raises(GiftError, match="metrics.jsonl: is a symbolic link"):
        train_mod.train(config(llama_pair, data, out, iters=4, save_every=1, resume=True), log=quiet)
    assert (data / "train.jsonl").read_bytes() == original


def test_the_next_run_removes_a_killed_runs_temporary_checkpoint(tmp_path, llama_pair, task_data):
    out = tmp_path / "a"
    train_mod.train(config(llama_pair, task_data, out, iters=2, save_every=1), log=quiet)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = out / f".checkpoint-0000003.safetensors.tmp-{dead.pid}.safetensors"  # SIGKILL inside the write
    orphan.write_bytes(b"half a checkpoint")
    train_mod.train(config(llama_pair, task_data, out, iters=2, save_every=1, resume=True), log=quiet)
    assert not orphan.exists()


def test_resume_after_the_data_changed_is_refused(tmp_path, llama_pair, task_data):
    data = shutil.copytree(task_data, tmp_path / "data")
    out = tmp_path / "a"
    train_mod.train(config(llama_pair, data, out, iters=2, save_every=1), log=quiet)
    with open(data / "train.jsonl", "a") as f:
        f.write(json.dumps({"prompt": "What is 1+1?", "completion": "2. #### 2"}) + "\n")
    with pytest.raises(GiftError, match="written for other data"):
        train_mod.train(config(llama_pair, data, out, iters=2, resume=True, save_every=1), log=quiet)


def test_a_fresh_run_into_an_earlier_run_needs_overwrite_which_removes_its_checkpoints(tmp_path, llama_pair, task_data):
    out = tmp_path / "a"
    train_mod.train(config(llama_pair, task_data, out, iters=4, save_every=1, keep_checkpoints=10), log=quiet)
    with pytest.raises(GiftError, match="holds an earlier training run"):
        train_mod.train(config(llama_pair, task_data, out, iters=2, save_every=1), log=quiet)
    train_mod.train(config(llama_pair, task_data, out, iters=2, save_every=1, overwrite=True), log=quiet)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000001.safetensors",
                                                                 "checkpoint-0000002.safetensors"]
    assert train_steps(out) == [1, 2]


def test_resume_on_a_complete_run_leaves_it_as_it_is(tmp_path, llama_pair, task_data):
    out = tmp_path / "a"
    train_mod.train(config(llama_pair, task_data, out, iters=2), log=quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    logs = []
    record = train_mod.train(config(llama_pair, task_data, out, iters=2, resume=True), log=logs.append)
    assert any("already complete" in m for m in logs), logs
    assert record["final"]["step"] == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_truncated_last_checkpoint_falls_back_to_the_one_before_and_stays_exact(tmp_path, llama_pair, task_data):
    straight, out = tmp_path / "straight", tmp_path / "a"
    train_mod.train(config(llama_pair, task_data, straight, iters=4, save_every=1), log=quiet)
    train_mod.train(config(llama_pair, task_data, out, iters=4, save_every=1), log=quiet)
    last = out / "checkpoint-0000004.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (out / "checkpoint-0000003.safetensors").write_bytes(b"\x00" * 64)  # a corrupt one too
    logs = []
    train_mod.train(config(llama_pair, task_data, out, iters=4, save_every=1, resume=True), log=logs.append)
    assert sum("damaged checkpoint" in m for m in logs) == 2, logs
    assert "resume: from step 2" in logs
    a, b = mx.load(str(straight / "adapters.safetensors")), mx.load(str(out / "adapters.safetensors"))
    assert all(mx.array_equal(a[k], b[k]) for k in a)
    assert train_steps(out) == [1, 2, 3, 4]  # no step logged twice after the resume


def test_zero_total_weight_stops_with_a_clear_error(tmp_path, llama_pair, task_data, monkeypatch):
    monkeypatch.setattr(train_mod, "token_weights", lambda q, floor, gamma: np.zeros_like(q))
    with pytest.raises(GiftError, match=r"Σw = 0"):
        train_mod.train(config(llama_pair, task_data, tmp_path / "a", iters=2), log=quiet)
    assert not (tmp_path / "a" / "adapters.safetensors").exists()


# ---- the command line ----

def test_help_lists_only_the_options_a_command_uses_with_their_defaults():
    score = run("score", "-h")
    assert score.exit_code == 0 and "--instruct" in score.output
    assert "--lora-rank" not in score.output and "--learning-rate" not in score.output
    for command in ("train", "score", "merge", "export-adapter", "eval", "chat", "demo"):
        text = run(command, "--help").output
        options = text.split("Options:")[1].split("  -h, --help")[0]
        entries = [e for e in options.split("\n  -") if e.strip()]
        assert all("[default:" in e or "[required]" in e for e in entries), (command, entries)


def test_ctrl_c_in_the_demo_says_interrupted_once_and_no_resume(tmp_path, monkeypatch):
    from gift_mlx import demo

    def interrupted(cfg, log):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "train", interrupted)
    r = run("demo", "--out", tmp_path / "d", "--iters", 1)
    assert r.exit_code == 130
    assert r.stderr.count("interrupted") == 1 and "--resume" not in r.output, r.output


def test_two_concurrent_runs_on_one_folder_the_second_stops_with_one_line(tmp_path, llama_pair, task_data):
    import time

    out = tmp_path / "a"
    args = [sys.executable, "-m", "gift_mlx", "train", "--base", str(llama_pair[0]), "--instruct", str(llama_pair[1]),
            "--data", str(task_data), "--adapter-path", str(out), "--lora-rank", "4", "--lora-alpha", "8",
            "--batch-size", "4", "--save-every", "1000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(args + ["--iters", "100000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (out / ".gift.lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (out / ".gift.lock").exists(), "the first run never took the lock"
        second = subprocess.run(args + ["--iters", "1"], capture_output=True, text=True, env=env, timeout=120)
        err = second.stderr.strip()
        assert second.returncode == 2 and "Traceback" not in err, err
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and "in use by another gift training run" in err
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_two_evals_into_one_out_at_once_one_wins_and_the_other_says_so(tmp_path, llama_pair):
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"question": "What is 1+2?", "answer": "3"}) + "\n")
    args = [sys.executable, "-m", "gift_mlx", "eval", "--model", str(llama_pair[1]), "--data", str(problems),
            "--out", str(tmp_path / "out"), "--samples", "2", "--max-tokens", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2).strip()
    assert err.startswith("error: ") and ("in use by another gift run" in err or "already" in err
                                          or "not empty" in err), err
    assert (tmp_path / "out" / "summary.json").is_file()
