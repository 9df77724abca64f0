"""`gift plan` against measured runs: estimated and measured max RSS, MLX peak and seconds per step side by
side, for gift (scoring pass included, in the same process), shadow-ft and gift --online-scores.

    python scripts/bench_plan.py [--hidden 448] [--layers 12] [--ffn 2432] [--iters 4] [--work DIR]

A reduced qwen2 shape (Qwen2.5-0.5B's vocabulary and heads' width, fewer and narrower blocks; random float32
weights) and long arithmetic chains, so that a run takes well under a minute on 2 shared CPU cores. Each run is
its own process: its max RSS comes from os.wait4, its MLX peak and per-step times from metrics.jsonl (the
batches replayed as bench_train.py does). The plan's rates (matmul GFLOP/s, exps/s) are measured here, now,
under the same load as the runs; the load average is printed with every run.
"""

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from bench_train import chain_record, gift_stream, run_gift_train, summarize  # scripts/ is on sys.path

RANK, ALPHA = 16, 32.0


def build(root, args):
    from gift_mlx import toy

    config = {**toy.model_config("qwen2", vocab_size=151936, hidden=args.hidden, layers=args.layers, heads=args.heads,
                                 kv_heads=args.kv_heads, ffn=args.ffn, tied=True), "rope_theta": 1000000.0}
    toy.build_tokenizer(root / "tokenizer")
    folders = [toy.build_model(root / role, config, root / "tokenizer", seed=seed) and root / role
               for role, seed in (("base", 0), ("instruct", 1))]
    rng = random.Random(0)
    rows = [chain_record(rng, rng.randint(30, 40)) for _ in range(args.batch_size * args.iters + 2)]
    toy.write_jsonl(root / "data" / "train.jsonl", rows[:-2])
    toy.write_jsonl(root / "data" / "valid.jsonl", rows[-2:])
    return (*folders, root / "data")


def estimate(base, instruct, data, args, method, online, rates):
    """The plan's Estimate for this run, and its seconds per step."""
    from gift_mlx import plan
    from gift_mlx.config import TrainConfig

    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(data), method=method, online_scores=online,
                      batch_size=args.batch_size, max_seq_length=args.max_seq_length, lora_rank=RANK)
    tokens, seq, share = plan.data_tokens(cfg, cfg.batch_size, cfg.max_seq_length)
    s = plan.Shape.from_config(json.loads((Path(base) / "config.json").read_text()))
    device, memory, gflops, exps = rates
    e = plan.estimate(s, cfg.batch_size, seq, RANK, tokens, device, memory, gflops, exps, online=online,
                      score=method == "gift", target_share=share)
    return e, e.epoch_s / args.iters  # the data is one epoch of `iters` steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=448)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=2432)
    ap.add_argument("--heads", type=int, default=7)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--runs", default="gift,shadow-ft,online", help="which runs, in order")
    ap.add_argument("--work", help="scratch folder (default: a fresh one under /tmp)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-plan-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from gift_mlx import plan

    base, instruct, data = build(work, args)
    p = {"rank": RANK, "alpha": ALPHA, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length}
    _, replay = gift_stream(data, instruct, p, args.iters)
    rates = plan.machine()
    print(f"plan rates measured now: float32 matmul {rates[2]:.0f} GFLOP/s, exp {rates[3] / 1e6:.0f} M/s; "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    kinds = {"gift": ("gift", False), "shadow-ft": ("shadow-ft", False), "online": ("gift", True)}
    for name in args.runs.split(","):
        method, online = kinds[name]
        extra = ["--method", method, "--no-pair-check"] + (["--online-scores"] if online else [])
        s, steps = run_gift_train(name, work, base, instruct, data, p, args.iters, replay, extra,
                                  scores=f"scores-{name}")
        e, step_s = estimate(base, instruct, data, args, method, online, rates)
        measured = (s["steady"] or s["warm"] or {"s_per_step": float("nan")})["s_per_step"]
        rows.append((name, e.peak_gb, s["maxrss_gb"], s["peak_memory_gb"], step_s, measured, s["load_before"]))
    print("\n| run | estimated peak GB | max RSS GB | error | MLX peak GB | estimated s/step | measured | error | "
          "load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, est, rss, mlx, est_s, s, load in rows:
        print(f"| {name} | {est:.2f} | {rss:.2f} | {100 * (est / rss - 1):+.0f}% | {mlx:.2f} | {est_s:.2f} | "
              f"{s:.2f} | {100 * (est_s / s - 1):+.0f}% | {load:.1f} |")


if __name__ == "__main__":
    main()
