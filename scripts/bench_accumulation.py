"""Peak memory of one optimizer step at 1, 8 and 32 gradient-accumulation steps (gift train's
train.optimizer_step), on a small local model pair and the toy arithmetic data.

    python scripts/bench_accumulation.py [--hidden 256] [--layers 4] [--batch-size 4] [--steps 1,8,32] [--lazy]

Prints MLX's peak memory (mx.get_peak_memory) during the step, above what was held before it (weights,
LoRA, optimizer state), and in total. --lazy also runs the step as before the fix (micro-batches evaluated
only after the last one), for comparison: its peak grows with the number of micro-batches.
"""

import argparse
import tempfile
from pathlib import Path

import gift_mlx  # noqa: F401  (BLAS preload)
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from gift_mlx import toy
from gift_mlx.config import TrainConfig
from gift_mlx.data import collate, load_split
from gift_mlx.models import load_model
from gift_mlx.train import add_lora, build_step, optimizer_step


def lazy_step(step, state, micro, n, threads=None):
    """The loop before the fix: the accumulated gradient stays a graph until the last micro-batch."""
    acc_grad = acc_sums = None
    for k, batch in zip(range(n), micro):
        acc_grad, acc_sums = step(*batch, acc_grad, acc_sums, k == n - 1)
    mx.eval(state, acc_sums)
    return acc_sums


def peak(run, step, state, batch, n):
    mx.eval(state)
    mx.clear_cache()
    mx.reset_peak_memory()
    held = mx.get_active_memory()
    run(step, state, (batch for _ in range(n)), n)
    return mx.get_peak_memory() - held, mx.get_peak_memory()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", default="1,8,32")
    ap.add_argument("--lazy", action="store_true", help="also run the step as before the fix")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = toy.build_pair(Path(tmp) / "pair", "qwen2", hidden=args.hidden, layers=args.layers,
                                 heads=4, kv_heads=2, ffn=4 * args.hidden)
        model, tok, _ = load_model(base)
        data = toy.write_task_data(Path(tmp) / "data")
        ds = load_split(data / "train.jsonl", tok, 2048)
    add_lora(model, TrainConfig(lora_rank=16, lora_alpha=32, lora_dropout=0.0))
    ex = ds.examples[:args.batch_size]
    batch = tuple(map(mx.array, collate(ex, [np.ones(e.num_targets, np.float32) for e in ex]))) + (None,)
    step, state = build_step(model, optim.AdamW(learning_rate=1e-5))
    runs = [("per micro-batch", optimizer_step)] + ([("lazy (before)", lazy_step)] if args.lazy else [])
    print(f"qwen2 hidden {args.hidden}, {args.layers} layers; micro-batch {tuple(batch[0].shape)}")
    for label, run in runs:
        peak(run, step, state, batch, 2)  # compile both traces
        for n in map(int, args.steps.split(",")):
            extra, total = peak(run, step, state, batch, n)
            print(f"{label:16} {n:3d} accumulation steps: peak {extra / 1e6:8.1f} MB above the held state "
                  f"({total / 1e6:.1f} MB in all)")


if __name__ == "__main__":
    main()
