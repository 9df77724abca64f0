"""Benchmark: `gift train` (cached and online scores) and `gift score` side by side with `mlx_lm.lora`.

    python scripts/bench_train.py            # full run (~10-15 min on 2 CPU cores), rewrites docs/benchmarks.md
    python scripts/bench_train.py --quick    # smoke run (< 2 min), written to <out>/benchmarks.md only
    python scripts/bench_train.py --shape qwen2.5-0.5b --iters 6   # a published shape: float32, 4-bit, bf16

This file measures; scripts/bench_report.py turns the measurements into the markdown section.

Everything is built locally (no Hub): a llama-architecture base model and its "instruct" twin
(gift_mlx.toy.build_pair) and prompt/completion data of long arithmetic chains whose responses vary from a
few dozen to a few hundred tokens. Each configuration runs in its own subprocess, one after the other:

  peer-openblas   mlx_lm.lora with OpenBLAS preloaded (LD_PRELOAD): the same BLAS as gift
  peer-wheel      mlx_lm.lora as it installs (the mlx-cpu wheel's reference BLAS): "out of the box"
  gift-score      gift score (the instruct model's confidences, cached for gift-cached)
  gift-cached     gift train with the cached scores (gift preloads OpenBLAS itself)
  gift-online     gift train --online-scores (the instruct model scores inside the step)
  gift-wheel      (--gift-wheel) gift train, cached scores, GIFT_BLAS=0: gift on the wheel's BLAS

Same model, data, LoRA rank/scale/dropout on every linear layer of every block, batch size, learning rate and
schedule (AdamW, warmup then cosine), max_seq_length and seed; mlx_lm.lora gets --mask-prompt so both train
on completions only. mlx_lm.lora runs unmodified through its own `main()`; this script only observes it: it
passes a TrainingCallback (what --report-to would) and wraps iterate_batches to record each batch's shape,
row lengths and prompt offsets. Both trainers report every step; per-step seconds come from mlx_lm's
callback (iterations_per_second) and from gift's metrics.jsonl (tokens / tokens_per_sec, with each step's
tokens from a replay of gift's batch stream, checked against the reported target/all ratio of every step).

Tokens are counted the same way for both: "all" = non-padding input positions, "target" = response tokens
plus the end-of-turn token (mlx_lm's own tok/s counts prompt-masked positions including the template's
trailing newline and one padding position per row; it is shown for reference only). The first quarter of
every run's steps (at least step 1: compilation, allocator growth) is never counted; "steady" also leaves out
every step whose batch shape that process sees for the first time (a retrace of the compiled step) and any
step slowed over twice the median time per token by other work on the shared cores. --abba runs the
same-BLAS pair again in reverse order and pools both rounds. Peak memory: MLX's peak (mx.get_peak_memory) as
each trainer reports it, and the maximum resident set size of each subprocess (os.wait4), with its CPU
seconds as a cross-check that other processes on the cores disturb less than wall time (the full profile
is one epoch: both trainers see every training row once).
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bench_report import report, targets, write_doc  # scripts/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parent.parent
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

PROFILES = {
    # ~22M parameters (blocks 22.4M + embeddings), sequences of ~60-500 tokens.
    "full": {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 4, "ffn": 1376, "n_train": 96, "n_valid": 8,
             "terms": (4, 38), "max_seq_length": 512, "batch_size": 4, "iters": 24, "wheel_iters": 2, "rank": 16,
             "alpha": 32.0},
    "quick": {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 256, "n_train": 40, "n_valid": 8,
              "terms": (4, 16), "max_seq_length": 256, "batch_size": 4, "iters": 10, "wheel_iters": 3, "rank": 8,
              "alpha": 16.0},
}


# ----------------------------------------------------------------------------------------------------------
# The peer, run in its own process: `python bench_train.py _peer RECORD.json -- <mlx_lm.lora arguments>`.
# Imports nothing of gift_mlx (that would preload OpenBLAS); the BLAS is whatever the environment gives.


def blas_gflops(n=512, seconds=0.5):
    import mlx.core as mx

    a = mx.random.normal((n, n))
    mx.eval(a @ a)
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        mx.eval(a @ a)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - tic) / 1e9


def peer_main(record, args):
    import functools

    import mlx.core as mx
    import numpy as np
    from mlx_lm import lora
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.callbacks import TrainingCallback

    events = {"blas_gflops": blas_gflops(), "batches": [], "train": [], "val": []}
    original = trainer.iterate_batches

    def recording_iterate_batches(*a, **k):
        for batch, lengths in original(*a, **k):
            if k.get("loop"):  # the training stream (validation iterates without loop)
                lo = np.array(lengths)
                events["batches"].append({"shape": list(batch.shape), "offsets": lo[:, 0].tolist(),
                                          "lengths": lo[:, 1].tolist()})
            yield batch, lengths

    class Recorder(TrainingCallback):
        def on_train_loss_report(self, info):
            events["train"].append({k: float(v) for k, v in info.items()})

        def on_val_loss_report(self, info):
            events["val"].append({k: float(v) for k, v in info.items()})

    lora.get_reporting_callbacks = lambda *a, **k: Recorder()
    lora.train = functools.partial(trainer.train, iterate_batches=recording_iterate_batches)
    sys.argv = ["mlx_lm.lora", *args]
    try:
        lora.main()
    finally:
        events["exit_peak_memory_gb"] = mx.get_peak_memory() / 1e9
        Path(record).write_text(json.dumps(events))


# ----------------------------------------------------------------------------------------------------------
# Building the model pair and the data.


def chain_record(rng, terms):
    """A long arithmetic chain: 'What is a+b+...?' answered step by step."""
    xs = [rng.randrange(100) for _ in range(terms)]
    total, steps = xs[0], []
    for x in xs[1:]:
        steps.append(f"{total}+{x}={total + x}.")
        total += x
    return {"prompt": "What is " + "+".join(map(str, xs)) + "?",
            "completion": "Step by step: " + " ".join(steps) + f" #### {total}"}


def build(root, p):
    from gift_mlx import toy

    dims = {k: p[k] for k in ("hidden", "layers", "heads", "kv_heads", "ffn")}
    base, instruct = toy.build_pair(root / "models", "llama", seed=0, noise=0.5, **dims)
    rng = random.Random(0)
    rows = [chain_record(rng, rng.randint(*p["terms"])) for _ in range(p["n_train"] + p["n_valid"])]
    toy.write_jsonl(root / "data" / "train.jsonl", rows[: p["n_train"]])
    toy.write_jsonl(root / "data" / "valid.jsonl", rows[p["n_train"]:])
    return base, instruct, root / "data"


def count_parameters(model_dir):
    import numpy as np
    from safetensors import safe_open

    n = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "numpy") as fh:
            for k in fh.keys():  # noqa: SIM118  (a safe_open handle is not a mapping)
                n += int(np.prod(fh.get_slice(k).get_shape()))
    return n


# ----------------------------------------------------------------------------------------------------------
# What each trainer's batching does to this data (computed from the data, no training).


def gift_stream(data_dir, instruct, p, n_steps):
    """Gift's first n_steps micro-batches (same code path as gift train): tokens, targets, shape."""
    from gift_mlx.data import fit_pad_lengths, load_data
    from gift_mlx.models import load_tokenizer
    from gift_mlx.train import micro_batches

    tok = load_tokenizer(instruct)
    ds = load_data(data_dir, tok, p["max_seq_length"])["train"]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    pad_lengths = fit_pad_lengths([len(e.tokens) - 1 for e in ds.examples], p["max_seq_length"])
    stream = micro_batches(ds, [None] * len(ds), p["batch_size"], pad_lengths, pad_id, 0)
    steps = []
    for _ in range(n_steps):
        inputs, labels, w = next(stream)
        steps.append({"tokens": int((labels != pad_id).sum()), "targets": int((w > 0).sum()),
                      "shape": list(inputs.shape)})
    return ds, steps


def padding_shares(data_dir, instruct, p, gift_ds):
    """Padded share of the model's input positions over one epoch, for each trainer's batching."""
    import numpy as np
    from mlx_lm.tuner.datasets import CacheDataset, CompletionsDataset
    from mlx_lm.tuner.trainer import iterate_batches

    from gift_mlx.data import batch_order, collate, fit_pad_lengths
    from gift_mlx.models import load_tokenizer

    tok = load_tokenizer(instruct)
    rows = [json.loads(x) for x in (Path(data_dir) / "train.jsonl").read_text().splitlines()]
    peer_ds = CacheDataset(CompletionsDataset(rows, tok, "prompt", "completion", mask_prompt=True))
    bs, max_len = p["batch_size"], p["max_seq_length"]
    n_batches = len(rows) // bs

    real = total = 0
    shapes = set()
    for _, (batch, lengths) in zip(range(n_batches), iterate_batches(peer_ds, bs, max_len, loop=False)):
        lo = np.array(lengths)
        real += int((lo[:, 1] - 1).sum())
        total += batch.shape[0] * (batch.shape[1] - 1)
        shapes.add(batch.shape[1] - 1)
    out = {"mlx_lm.lora": {"padded_share": 1 - real / total, "widths": sorted(shapes)}}

    lengths = [len(e.tokens) for e in gift_ds.examples]
    pad_lengths = fit_pad_lengths([n - 1 for n in lengths], max_len)
    real = total = 0
    shapes = set()
    for idx in batch_order(lengths, bs, np.random.default_rng(0)):
        inputs, _, _ = collate([gift_ds.examples[i] for i in idx], [None] * len(idx), pad_lengths)
        real += int(sum(lengths[i] - 1 for i in idx))
        total += inputs.size
        shapes.add(inputs.shape[1])
    out["gift"] = {"padded_share": 1 - real / total, "widths": sorted(shapes)}

    try:  # the scoring pass's own batching (gift score, and gift train when it must score first)
        from gift_mlx.scoring import score_batches
    except ImportError:
        score_batches = None
    if score_batches is not None:
        real = total = 0
        shapes = set()
        for idx in score_batches(gift_ds):
            inputs, _, _ = collate([gift_ds.examples[i] for i in idx], [None] * len(idx))
            real += int(sum(lengths[i] - 1 for i in idx))
            total += inputs.size
            shapes.add(f"{inputs.shape[0]}×{inputs.shape[1]}")
        out["gift score (scoring.score_batches)"] = {"padded_share": 1 - real / total, "widths": sorted(shapes)}

    # Lower bounds: sorted batches padded to the longest row only (no bucket set); one row per batch.
    order = sorted(lengths)
    real = sum(n - 1 for n in order[: n_batches * bs])
    total = sum(bs * (max(order[i: i + bs]) - 1) for i in range(0, n_batches * bs, bs))
    out["sorted, exact lengths"] = {"padded_share": 1 - real / total, "widths": None}
    out["_pad_lengths"] = pad_lengths
    return out, peer_ds


# ----------------------------------------------------------------------------------------------------------
# Running one configuration.


# OPENBLAS_THREAD_TIMEOUT as the user started this script: importing gift_mlx here sets it (blas.py), and
# mlx_lm.lora must run as it would for that user unless --peer-blas-timeout gives it gift's setting.
USER_BLAS_TIMEOUT = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
PEER_ENV = {}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GIFT_BLAS", "OPENBLAS_THREAD_TIMEOUT")}
    if USER_BLAS_TIMEOUT is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = USER_BLAS_TIMEOUT
    env.update(extra)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


PROCESSES = []  # every subprocess run: name, wall seconds, load averages, command


def run(name, cmd, env, log_path):
    """Run cmd to completion; wall seconds, max RSS (GiB) of that one process, its output."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {shlex.join(map(str, cmd))}", flush=True)
    load_before = os.getloadavg()[0]
    tic = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - tic
    text = Path(log_path).read_text(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(text.splitlines()[-25:]))
    info = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_gb": usage.ru_maxrss * 1024 / 1e9,
            "load_before": load_before,
            "load_after": os.getloadavg()[0], "command": shlex.join(map(str, cmd))}
    PROCESSES.append({"name": name, **info})
    print(f"    {wall:.0f}s, max RSS {info['maxrss_gb']:.2f} GB, load {load_before:.1f} -> {info['load_after']:.1f}",
          flush=True)
    return info, text


def warmup_steps(n):
    """Steps left out at the start of every run: the first compilation and the allocator's warm-up
    (a quarter of the run, at least step 1)."""
    return max(1, n // 4)


def summarize(parts):
    """tokens/s (all, target) and s/step over the steps of one or more runs (each a fresh process) after their
    warm-up ('warm'), and over those whose batch shape that process had already compiled ('steady')."""
    out, warm, shapes = {}, [], 0
    for steps in parts:
        skip = warmup_steps(len(steps))
        seen = set()
        for s in steps:
            s["new_shape"] = tuple(s["shape"]) not in seen
            seen.add(tuple(s["shape"]))
        shapes = max(shapes, len(seen))
        warm += steps[skip:]
    steady = [s for s in warm if not s["new_shape"]]
    # A step that took over twice the median time per token was slowed by something else on the shared
    # cores (not by its shape, which is already compiled): counted in "warm", left out of "steady".
    per_token = sorted(s["time"] / s["tokens"] for s in steady)
    for steps in parts:
        for s in steps:
            s["disturbed"] = bool(per_token) and s["time"] / s["tokens"] > 2 * per_token[len(per_token) // 2]
    out["disturbed"] = sum(s["disturbed"] for s in steady)
    steady = [s for s in steady if not s["disturbed"]]
    for label, chosen in (("warm", warm), ("steady", steady)):
        t = sum(s["time"] for s in chosen)
        if not chosen or t <= 0:
            out[label] = None
            continue
        out[label] = {"steps": len(chosen), "seconds": t, "s_per_step": t / len(chosen),
                      "tokens_per_s": sum(s["tokens"] for s in chosen) / t,
                      "target_tokens_per_s": sum(s["targets"] for s in chosen) / t}
    # A retrace's cost: a new-shape step's time beyond what its tokens take at the steady rate.
    retraced = [s for s in warm if s["new_shape"]]
    if out.get("steady") and retraced:
        per = out["steady"]["seconds"] / sum(s["tokens"] for s in steady)
        out["retrace_s"] = sum(s["time"] - s["tokens"] * per for s in retraced) / len(retraced)
    out["shapes"] = shapes
    out["first_step_s"] = sum(steps[0]["time"] for steps in parts) / len(parts)
    out["rounds"] = len(parts)
    return out


def combine(first, second):
    """One configuration measured in two processes (rounds A..B then B..A): pooled steps."""
    out = {**first, **summarize([first["_steps"], second["_steps"]])}
    for k in ("peak_memory_gb", "maxrss_gb", "exit_peak_memory_gb"):
        if k in first:
            out[k] = max(first[k], second[k])
    for k in ("replay_matches", "stdout_matches_callback", "own_token_count_matches"):
        if k in first:
            out[k] = first[k] and second[k]
    out["wall_s"] = first["wall_s"] + second["wall_s"]
    out["cpu_s"] = (first["cpu_s"] + second["cpu_s"]) / 2  # per process
    out["_steps"] = first["_steps"] + second["_steps"]
    return out


def peer_config(work, p, iters):
    warmup = round(0.1 * iters)
    cfg = {
        "lora_parameters": {"rank": p["rank"], "scale": p["alpha"] / p["rank"], "dropout": 0.05},
        "optimizer_config": {"adamw": {"weight_decay": 0.0}},
        "lr_schedule": {"name": "cosine_decay", "warmup": warmup, "warmup_init": 0.0,
                        "arguments": [2e-4, max(iters - warmup, 1), 0.0]},
    }
    path = work / f"peer-{iters}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def run_peer(name, work, base, data, p, iters, openblas):
    out = work / name
    record = work / f"{name}.record.json"
    cmd = [sys.executable, Path(__file__).resolve(), "_peer", record, "--",
           "--model", base, "--train", "--data", data, "-c", peer_config(work, p, iters),
           "--fine-tune-type", "lora", "--optimizer", "adamw", "--mask-prompt", "--num-layers", "-1",
           "--batch-size", p["batch_size"], "--iters", iters, "--learning-rate", "2e-4",
           "--max-seq-length", p["max_seq_length"], "--steps-per-report", 1, "--steps-per-eval", 10**6,
           "--val-batches", 0, "--save-every", 10**6, "--seed", 0, "--adapter-path", out]
    env = clean_env(**({"LD_PRELOAD": openblas, **PEER_ENV} if openblas else {}))
    info, text = run(name, cmd, env, work / f"{name}.log")
    rec = json.loads(record.read_text())
    reports = rec["train"]
    if len(reports) != iters or len(rec["batches"]) < iters:
        sys.exit(f"{name}: expected {iters} per-step reports, got {len(reports)}")
    steps, own_counts = [], []
    for r, b in zip(reports, rec["batches"]):
        lengths = [min(n, p["max_seq_length"]) for n in b["lengths"]]
        seconds = 1.0 / r["iterations_per_second"]  # steps_per_report = 1
        steps.append({"time": seconds, "shape": [b["shape"][0], b["shape"][1] - 1],
                      "tokens": sum(n - 1 for n in lengths),
                      "targets": sum(n - o - 1 for n, o in zip(lengths, b["offsets"]))})
        own_counts.append(r["tokens_per_second"] * seconds)
    # Cross-check: mlx_lm's own count is (length - offset + 1) per row (see module docstring).
    expect = [sum(n - o + 1 for n, o in zip(b["lengths"], b["offsets"])) for b in rec["batches"][:iters]]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    printed = [float(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*\d+\s+[\d.]+\s+[▼▲]\s+([\d,]+)\s", plain, re.MULTILINE)]
    s, k = summarize([steps]), warmup_steps(iters)
    s.update(info, blas_gflops=rec["blas_gflops"], peak_memory_gb=max(r["peak_memory"] for r in reports),
             exit_peak_memory_gb=rec["exit_peak_memory_gb"],
             own_token_count_matches=all(abs(a - b) < 0.5 for a, b in zip(own_counts, expect)),
             own_tokens_per_s_warm=sum(own_counts[k:]) / sum(x["time"] for x in steps[k:]) if iters > 1 else None,
             stdout_tok_s_lines=len(printed), stdout_matches_callback=len(printed) == iters and all(
                 abs(a - r["tokens_per_second"]) <= 1 for a, r in zip(printed, reports)))
    return s, steps


def gift_cmd(*args):
    return [sys.executable, "-m", "gift_mlx", *args]


def gift_train_args(base, instruct, data, p, iters, adapter, scores):
    return ["train", "--base", base, "--instruct", instruct, "--data", data, "--adapter-path", adapter,
            "--scores-path", scores, "--method", "gift", "--fine-tune-type", "lora", "--lora-rank", p["rank"],
            "--lora-alpha", p["alpha"], "--lora-dropout", 0.05, "--num-layers", -1, "--batch-size", p["batch_size"],
            "--iters", iters, "--learning-rate", "2e-4", "--warmup-ratio", 0.1, "--weight-decay", 0.0,
            "--max-seq-length", p["max_seq_length"], "--seed", 0, "--steps-per-report", 1,
            "--steps-per-eval", 10**6, "--val-batches", 0, "--save-every", 10**6, "--overwrite"]


def run_gift_train(name, work, base, instruct, data, p, iters, replay, extra=(), env=None, scores="scores"):
    adapter = work / name
    cmd = gift_cmd(*gift_train_args(base, instruct, data, p, iters, adapter, work / scores), *extra)
    info, _ = run(name, cmd, env or clean_env(), work / f"{name}.log")
    rows = [json.loads(x) for x in (adapter / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_sec" in r]
    if len(rows) != iters:
        sys.exit(f"{name}: expected {iters} per-step metrics rows, got {len(rows)}")
    steps, replay_ok = [], True
    for r, b in zip(rows, replay):
        if "seconds" in r:
            seconds = r["seconds"]
        else:
            seconds = b["tokens"] / r["tokens_per_sec"]
        # the replayed batch must be the trained one: same target/all ratio as reported for this step
        replay_ok &= abs(r["target_tokens_per_sec"] / r["tokens_per_sec"] - b["targets"] / b["tokens"]) < 1e-6
        steps.append({**b, "time": seconds})
    s = summarize([steps])
    s.update(info, peak_memory_gb=max(r["peak_memory_gb"] for r in rows), replay_matches=replay_ok)
    return s, steps


def run_gift_score(name, work, instruct, data, p, train_ds, env=None, scores="scores"):
    shutil.rmtree(work / scores, ignore_errors=True)  # a rerun in the same folder must score, not reuse
    cmd = gift_cmd("score", "--instruct", instruct, "--data", data, "--scores-path", work / scores,
                   "--max-seq-length", p["max_seq_length"])
    info, text = run(name, cmd, env or clean_env(), work / f"{name}.log")
    m = re.search(r"scores: train: (\d+) target tokens in ([\d.]+)s", text)
    if not m:
        sys.exit(f"{name}: no 'scores: train: ...' line in its output")
    n, seconds = int(m.group(1)), float(m.group(2))
    tokens = sum(len(e.tokens) - 1 for e in train_ds.examples)
    return {**info, "target_tokens": n, "seconds": seconds, "target_tokens_per_s": n / seconds,
            "tokens_per_s": tokens / seconds}


def gift_doctor(env):
    out = subprocess.run(gift_cmd("doctor"), env=env, capture_output=True, text=True, cwd=REPO, check=False).stdout
    m = re.search(r"([\d.]+) GFLOP/s", out)
    blas = re.search(r"BLAS: (.*)", out)
    return float(m.group(1)) if m else None, blas.group(1) if blas else "?"


# ----------------------------------------------------------------------------------------------------------
# --shape NAME: a published configuration (random weights), float32 / bfloat16 / 4-bit, against mlx_lm.lora.

SHAPE_PROFILE = {"n_valid": 4, "terms": (24, 60), "max_seq_length": 256, "batch_size": 2, "iters": 6, "rank": 16,
                 "alpha": 32.0, "bf16_iters": 1, "q4_iters": 2}
# A smoke-test shape (seconds): the 152k-vocabulary code paths on a tiny model.
SMOKE_SHAPE = dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                   rope_theta=1000000.0, torch_dtype="bfloat16")


def on_cpu():
    import mlx.core as mx

    return mx.default_device() == mx.cpu


def work_folder(work, label):
    """The scratch folder (made), and the OpenBLAS library the same-BLAS comparison preloads into the peer."""
    work = Path(work or f"/tmp/bench_train-{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    openblas = next((c for c in OPENBLAS_CANDIDATES if os.path.exists(c)), None)
    if openblas is None and on_cpu():
        sys.exit("no OpenBLAS found (apt-get install libopenblas0-pthread): the same-BLAS comparison needs one")
    return work, openblas


def shape_config(name):
    from gift_mlx import plan, toy

    c = SMOKE_SHAPE if name == "smoke" else plan.SHAPES[name]
    config = toy.model_config(c["model_type"], vocab_size=c["vocab_size"], hidden=c["hidden_size"],
                              layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
                              kv_heads=c["num_key_value_heads"], ffn=c["intermediate_size"],
                              tied=c["tie_word_embeddings"])
    return {**config, "rope_theta": c["rope_theta"]}


def build_shape(root, name, p, variants):
    """base/instruct folders in float32, bfloat16 (as published) and 4-bit (mlx_lm's quantize_model of the
    bfloat16 weights, group 64), one random model per role; the data as for the default profile."""
    import mlx.core as mx
    from mlx_lm.utils import quantize_model

    from gift_mlx import toy

    config = shape_config(name)
    toy.build_tokenizer(root / "tokenizer")
    folders = {}
    for role, seed in (("base", 0), ("instruct", 1)):
        model = toy.build_model(root / f"{role}-float32", config, root / "tokenizer", seed=seed)
        folders[role, "float32"] = root / f"{role}-float32"
        if {"bf16", "q4"} & set(variants):
            model.set_dtype(mx.bfloat16)
            toy.save_folder(root / f"{role}-bfloat16", model, config, root / "tokenizer")
            folders[role, "bfloat16"] = root / f"{role}-bfloat16"
        if "q4" in variants:
            model, qconfig = quantize_model(model, dict(config), group_size=64, bits=4)
            toy.save_folder(root / f"{role}-4bit", model, qconfig, root / "tokenizer")
            folders[role, "4bit"] = root / f"{role}-4bit"
        del model
        mx.clear_cache()
    rng = random.Random(0)
    n_train = p["batch_size"] * p["iters"]
    rows = [chain_record(rng, rng.randint(*p["terms"])) for _ in range(n_train + p["n_valid"])]
    toy.write_jsonl(root / "data" / "train.jsonl", rows[:n_train])
    toy.write_jsonl(root / "data" / "valid.jsonl", rows[n_train:])
    return folders, root / "data", config


def q4_gflops(n=1024, seconds=1.0):
    """MLX's 4-bit matmul rate on this device (group 64), with float32 activations and with bfloat16 ones (what
    mlx_lm.lora's QLoRA step on a model quantized from bfloat16 weights runs at): {dtype: GFLOP/s}."""
    import mlx.core as mx

    out = {}
    for dtype in (mx.float32, mx.bfloat16):
        x, w = mx.ones((n, n), dtype), mx.random.normal((n, n)).astype(dtype)
        wq, scales, biases = mx.quantize(w, group_size=64, bits=4)
        mx.eval(x, wq, scales, biases, mx.quantized_matmul(x, wq, scales, biases, group_size=64, bits=4))
        count, tic = 0, time.perf_counter()
        while time.perf_counter() - tic < seconds:
            mx.eval(mx.quantized_matmul(x, wq, scales, biases, group_size=64, bits=4))
            count += 1
        out[str(dtype).split(".")[-1]] = 2 * n**3 * count / (time.perf_counter() - tic) / 1e9
    return out


def decode_main(record, model_path, n, max_tokens):
    """`bench_train.py _decode RECORD MODEL N MAX_TOKENS`: gift eval's sampling (evaluate.generate_batched: n
    samples of one prompt decoding together), timed after a short warm-up."""
    import gift_mlx  # noqa: F401
    from mlx_lm.sample_utils import make_sampler

    from gift_mlx.evaluate import generate_batched
    from gift_mlx.models import cpu_float32, load_model

    model, tok, _ = load_model(model_path)
    cpu_float32(model, model_path, log=lambda m: None)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12+30+7?"}], add_generation_prompt=True)
    sampler = make_sampler(1.0)
    list(generate_batched(model, tok, [prompt], n, sampler, 2, n))
    tic = time.perf_counter()
    out = list(generate_batched(model, tok, [prompt], n, sampler, max_tokens, n))
    seconds = time.perf_counter() - tic
    Path(record).write_text(json.dumps({"seconds": seconds, "tokens": sum(len(ids) for _, _, ids, _ in out),
                                        "prompt_tokens": len(prompt), "samples": n, "max_tokens": max_tokens}))


def run_decode(name, work, model, n=8, max_tokens=32):
    record = work / f"{name}.record.json"
    info, _ = run(name, [sys.executable, Path(__file__).resolve(), "_decode", record, model, n, max_tokens],
                  clean_env(), work / f"{name}.log")
    return {**info, **json.loads(record.read_text())}


def pair_record(peer, gift, gift_log):
    """One alternating pair of float32 runs: whole-process wall time, time per step, memory; and the pair
    check's cost inside that gift run (seconds, or 0.0 when it was read from the cache)."""
    m = re.search(r"^pair: .*\[(cached|[\d.]+ s)\]", Path(gift_log).read_text(errors="replace"), re.MULTILINE)
    check = None if m is None else 0.0 if m.group(1) == "cached" else float(m.group(1).split()[0])
    step = lambda r: (r["warm"] or {}).get("s_per_step")  # noqa: E731
    return {"peer_wall_s": peer["wall_s"], "gift_wall_s": gift["wall_s"], "peer_s_per_step": step(peer),
            "gift_s_per_step": step(gift), "peer_maxrss_gb": peer["maxrss_gb"], "gift_maxrss_gb": gift["maxrss_gb"],
            "peer_peak_gb": peer["peak_memory_gb"], "gift_peak_gb": gift["peak_memory_gb"], "pair_check_s": check}


def gpu_name():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        out = ""
    import mlx.core as mx

    return f"{mx.default_device()} ({out or 'GPU'})"


def one_step_summary(run, steps):
    """A run of a single step (bfloat16 on CPU: minutes per step): that step, compilation included."""
    if run.get("warm") is None and steps:
        t = sum(s["time"] for s in steps)
        run["warm"] = {"steps": len(steps), "seconds": t, "s_per_step": t / len(steps),
                       "tokens_per_s": sum(s["tokens"] for s in steps) / t,
                       "target_tokens_per_s": sum(s["targets"] for s in steps) / t, "includes_step_1": True}
    return run


def main_shape(args, shape):
    """Side by side at a published shape: float32 (same precision, OpenBLAS both), 4-bit (QLoRA, OpenBLAS
    both) and bfloat16 out of the box (mlx_lm.lora as installed vs gift); writes the shape's section."""
    import numpy as np

    import gift_mlx  # noqa: F401  (this process builds the models; it preloads OpenBLAS)
    from bench_report import shape_report, write_doc

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    p = dict(SHAPE_PROFILE)
    for k in ("iters", "bf16_iters", "q4_iters", "batch_size", "max_seq_length"):
        if getattr(args, k, None):
            p[k] = getattr(args, k)
    variants = args.variants.split(",")
    # several shapes in one invocation: one subfolder each under --work
    work, openblas = work_folder(Path(args.work) / shape if args.work and len(args.shape) > 1 else args.work, shape)
    print(f"benchmark (--shape {shape}) in {work}", flush=True)
    tic = time.perf_counter()
    built = work / "built.json"  # --build-only, then the runs: the models are reused when shape and steps match
    key = json.loads(json.dumps({"shape": shape, "variants": variants, "profile": p}))  # as stored
    if built.is_file() and json.loads(built.read_text())["key"] == key:
        record = json.loads(built.read_text())
        folders = {tuple(k.split("|")): Path(v) for k, v in record["folders"].items()}
        data, config, build_s = Path(record["data"]), record["config"], record["build_s"]
    else:
        folders, data, config = build_shape(work, shape, p, variants)
        build_s = time.perf_counter() - tic
        built.write_text(json.dumps({"key": key, "folders": {"|".join(k): str(v) for k, v in folders.items()},
                                     "data": str(data), "config": config, "build_s": build_s}))
    if args.build_only:
        print(f"built in {build_s:.0f} s: {', '.join(str(v) for v in folders.values())}")
        return
    train_ds, replay = gift_stream(data, folders["instruct", "float32"], p, p["iters"])
    blas = {"before": gift_doctor(clean_env())}
    runs, pairs = {}, []
    # gift's pair check runs as in a user's run, cached by the models' files: in a fresh cache here, so the
    # first gift run pays it and the later ones read the cache (each run's cost is parsed from its log)
    cache = work / "pair-cache"
    shutil.rmtree(cache, ignore_errors=True)

    def peer(name, base, iters, blas_path):
        r, steps = run_peer(name, work, base, data, p, iters, blas_path)
        runs[name] = one_step_summary(r, steps) if iters == 1 else r
        runs[name]["_steps"] = steps

    def gift(name, base, instruct, iters, scores, extra=()):
        r, steps = run_gift_train(name, work, base, instruct, data, p, iters, replay[:iters], extra=extra,
                                  scores=scores, env=clean_env(GIFT_CACHE_DIR=str(cache)))
        runs[name] = one_step_summary(r, steps) if iters == 1 else r
        runs[name]["_steps"] = steps

    if "f32" in variants:
        b, i = folders["base", "float32"], folders["instruct", "float32"]
        runs["score-f32"] = run_gift_score("score-f32", work, i, data, p, train_ds, scores="scores-f32")
        for k in range(args.pairs):  # alternating order: peer, gift / gift, peer / ...
            names = {"peer": "peer-f32" + (f"-{k + 1}" if k else ""), "gift": "gift-f32" + (f"-{k + 1}" if k else "")}
            for who in (("peer", "gift") if k % 2 == 0 else ("gift", "peer")):
                if who == "peer":
                    peer(names["peer"], b, p["iters"], openblas)
                else:
                    gift(names["gift"], b, i, p["iters"], "scores-f32")
            pairs.append(pair_record(runs[names["peer"]], runs[names["gift"]], work / f"{names['gift']}.log"))
        if not args.no_online:
            gift("gift-online-f32", b, i, p["iters"], "scores-f32", ["--online-scores"])
        runs["decode-f32"] = run_decode("decode-f32", work, i)
    if "q4" in variants:
        b, i = folders["base", "4bit"], folders["instruct", "4bit"]
        if args.peer_q4 is not None and (not args.peer_q4 or shape in args.peer_q4):
            # mlx_lm.lora keeps bfloat16 activations: MLX's CPU 4-bit matmul then runs ~0.35 GFLOP/s
            # (half an hour per step at 0.5B)
            peer("peer-q4", b, args.peer_q4_iters, openblas)
        runs["score-q4"] = run_gift_score("score-q4", work, i, data, p, train_ds, scores="scores-q4")
        gift("gift-q4", b, i, p["q4_iters"], "scores-q4")
    if "bf16" in variants:  # out of the box: the peer as installed (no OpenBLAS: bf16 matmuls do not use it anyway)
        b, i = folders["base", "bfloat16"], folders["instruct", "bfloat16"]
        gift("gift-bf16", b, i, p["bf16_iters"], "scores-bf16")  # scores computed inside: the whole pipeline
        peer("peer-bf16", b, p["bf16_iters"], None)
    blas["after"] = gift_doctor(clean_env())
    blas["q4_gflops"] = q4_gflops()
    from gift_mlx.doctor import exp_rate

    blas["exp_rate"] = exp_rate()
    res = {
        "shape": shape, "config": config, "profile": p, "variants": variants, "build_s": build_s,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": shlex.join(["python", "scripts/bench_train.py", *sys.argv[1:]]), "machine": machine(),
        "gpu": "CPU only" if on_cpu() else gpu_name(),
        "parameters": count_parameters(folders["base", "float32"]), "work": str(work), "openblas": openblas,
        "data": {"rows": len(train_ds), "mean": float(np.mean([len(e.tokens) for e in train_ds.examples])),
                 "max": int(max(len(e.tokens) for e in train_ds.examples))},
        "blas": blas, "runs": runs, "pairs": pairs, "processes": PROCESSES, "warmup_steps": warmup_steps(p["iters"]),
    }
    res["wall_s"] = time.perf_counter() - started
    res["load"] = (load_start, os.getloadavg()[0])
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    section = shape_report(res)
    doc = Path(args.doc) if args.doc else (work / "benchmarks.md" if shape == "smoke" else REPO / "docs" / "benchmarks.md")
    write_doc(doc, section, key=shape)
    print("\n" + section)
    print(f"written: {doc} and {work / 'results.json'}")


# ----------------------------------------------------------------------------------------------------------
# The machine it ran on (the report is written by scripts/bench_report.py).


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import mlx.core as mx
    import mlx_lm

    from gift_mlx import heap

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO, check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "gift_mlx")
    peer = PEER_ENV.get("OPENBLAS_THREAD_TIMEOUT", USER_BLAS_TIMEOUT)
    return {"cpu": cpu, "nproc": os.cpu_count(), "memory_gib": mem, "os": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__,
            "device": str(mx.default_device()), "commit": commit + (" (gift_mlx/ with uncommitted changes)" if dirty else ""),
            "peer_blas_env": f"OPENBLAS_THREAD_TIMEOUT={peer or 'unset (OpenBLAS default)'}; gift's: {USER_BLAS_TIMEOUT or 4}",
            "gift_heap": ("freed memory kept in the process while training and scoring (gift_mlx/heap.py)"
                          if heap.available() else "as the system's (gift_mlx/heap.py off: GIFT_KEEP_FREED=0 or not glibc)")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke run (< 2 min)")
    ap.add_argument("--work", help="scratch folder (default: a fresh one under /tmp)")
    ap.add_argument("--doc", help="markdown file to (re)write the results section of "
                                  "(default: docs/benchmarks.md for a full run; <work>/benchmarks.md for --quick)")
    ap.add_argument("--iters", type=int, help="steps per OpenBLAS training run")
    ap.add_argument("--wheel-iters", type=int, help="steps per run on the wheel's reference BLAS (slow)")
    ap.add_argument("--abba", action="store_true",
                    help="run gift-cached and peer-openblas a second time, in reverse order, and pool both rounds")
    ap.add_argument("--gift-wheel", action="store_true", help="also run gift on the wheel's BLAS (GIFT_BLAS=0)")
    ap.add_argument("--shape", nargs="+", choices=["qwen2.5-0.5b", "qwen2.5-1.5b", "smoke"],
                    help="one or more published configurations, run one after the other (random weights) instead "
                         "of the default profile; smoke: a tiny model with a 152k vocabulary (seconds)")
    ap.add_argument("--variants", default="f32,q4,bf16", help="with --shape: which of f32, q4, bf16 to run, in order")
    ap.add_argument("--bf16-iters", type=int, help="with --shape: steps of the bfloat16 out-of-the-box runs (minutes each)")
    ap.add_argument("--q4-iters", type=int, help="with --shape: steps of the 4-bit (QLoRA) runs")
    ap.add_argument("--batch-size", type=int, help="with --shape: micro-batch rows (default 2)")
    ap.add_argument("--max-seq-length", type=int, help="with --shape: rows cut to this many tokens (default 256)")
    ap.add_argument("--pairs", type=int, default=1,
                    help="with --shape: float32 runs of mlx_lm.lora and gift, this many alternating pairs (medians reported)")
    ap.add_argument("--build-only", action="store_true", help="with --shape: build the models and data, run nothing")
    ap.add_argument("--no-online", action="store_true", help="with --shape: skip the --online-scores run")
    ap.add_argument("--peer-blas-timeout", action="store_true",
                    help="give mlx_lm.lora's OpenBLAS gift's OPENBLAS_THREAD_TIMEOUT=4 (gift_mlx/blas.py) too")
    ap.add_argument("--peer-q4-iters", type=int, default=1, help="with --peer-q4: steps of mlx_lm.lora's QLoRA run")
    ap.add_argument("--peer-q4", nargs="*", metavar="SHAPE",
                    help="with --shape: also run mlx_lm.lora on the 4-bit model, at these shapes (none named: all); MLX's "
                         "CPU 4-bit matmul with bfloat16 activations is very slow")
    args = ap.parse_args()
    if args.peer_blas_timeout:
        PEER_ENV["OPENBLAS_THREAD_TIMEOUT"] = "4"
    if args.shape:
        for shape in dict.fromkeys(args.shape):  # each once
            main_shape(args, shape)
        return

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    mode = "quick" if args.quick else "full"
    p = dict(PROFILES[mode])
    p["iters"] = args.iters or p["iters"]
    p["wheel_iters"] = args.wheel_iters or p["wheel_iters"]
    work, openblas = work_folder(args.work, mode)

    import numpy as np

    import gift_mlx  # noqa: F401  (this process builds the models; it preloads OpenBLAS)

    print(f"benchmark ({mode}) in {work}", flush=True)
    base, instruct, data = build(work, p)
    train_ds, replay = gift_stream(data, instruct, p, p["iters"])
    pad, _ = padding_shares(data, instruct, p, train_ds)
    lengths = np.array([len(e.tokens) for e in train_ds.examples])
    targets_n = sum(e.num_targets for e in train_ds.examples)
    vocab = json.loads((Path(base) / "config.json").read_text())["vocab_size"]

    blas = {"gift": gift_doctor(clean_env()), "wheel": gift_doctor(clean_env(GIFT_BLAS="0"))}
    runs = {}
    runs["peer-openblas"], runs["peer-openblas"]["_steps"] = run_peer("peer-openblas", work, base, data, p, p["iters"], openblas)
    runs["gift-score"] = run_gift_score("gift-score", work, instruct, data, p, train_ds)
    runs["gift-cached"], runs["gift-cached"]["_steps"] = run_gift_train("gift-cached", work, base, instruct, data, p,
                                                                        p["iters"], replay)
    runs["gift-online"], runs["gift-online"]["_steps"] = run_gift_train("gift-online", work, base, instruct, data, p,
                                                                        p["iters"], replay, extra=["--online-scores"])
    runs["peer-wheel"], runs["peer-wheel"]["_steps"] = run_peer("peer-wheel", work, base, data, p, p["wheel_iters"], None)
    if args.abba:  # the same-BLAS pair again in reverse order: A B ... B A cancels a linear drift of the load
        second = run_gift_train("gift-cached-2", work, base, instruct, data, p, p["iters"], replay)
        runs["gift-cached"] = combine(runs["gift-cached"], {**second[0], "_steps": second[1]})
        second = run_peer("peer-openblas-2", work, base, data, p, p["iters"], openblas)
        runs["peer-openblas"] = combine(runs["peer-openblas"], {**second[0], "_steps": second[1]})
    if args.gift_wheel:
        runs["gift-wheel"], runs["gift-wheel"]["_steps"] = run_gift_train(
            "gift-wheel", work, base, instruct, data, p, p["wheel_iters"], replay[: p["wheel_iters"]],
            env=clean_env(GIFT_BLAS="0"))

    res = {
        "mode": mode, "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": shlex.join(["python", "scripts/bench_train.py", *sys.argv[1:]]), "machine": machine(),
        "gpu": "CPU only" if on_cpu() else gpu_name(),
        "profile": p, "parameters": count_parameters(base), "vocab": vocab, "work": str(work), "openblas": openblas,
        "data": {"min": int(lengths.min()), "max": int(lengths.max()), "mean": float(lengths.mean()),
                 "target_share": targets_n / int(lengths.sum())},
        "blas": blas, "padding": pad, "runs": runs, "processes": PROCESSES,
    }
    res["warmup_steps"] = warmup_steps(p["iters"])
    res["targets"] = targets(runs, pad, warmup_steps)
    res["wall_s"] = time.perf_counter() - started
    res["load"] = (load_start, os.getloadavg()[0])
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    section = report(res)
    doc = Path(args.doc) if args.doc else (work / "benchmarks.md" if args.quick else REPO / "docs" / "benchmarks.md")
    write_doc(doc, section)
    print("\n" + section)
    print(f"written: {doc} and {work / 'results.json'}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_decode":
        decode_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif len(sys.argv) > 2 and sys.argv[1] == "_peer":
        rest = sys.argv[3:]
        peer_main(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    else:
        main()
