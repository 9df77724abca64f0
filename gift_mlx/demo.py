"""`gift demo`: the whole pipeline on a built-in default that needs no download.

It builds a tiny local base/instruct pair (gift_mlx.toy) and an arithmetic task, trains every method with
the same budget and seed, merges each adapter into the instruct model and evaluates all of them by
sampling. The pair is randomly initialised, so the numbers check the pipeline, not the method: they say
nothing about GIFT versus Shadow-FT on real models.
"""

from pathlib import Path

from . import toy
from .config import TrainConfig
from .errors import GiftError
from .evaluate import evaluate
from .merge import merge
from .train import train

METHODS = ("shadow-ft", "gift", "direct")
# The demo's training settings; configs/demo.yaml holds the same (a test keeps them equal).
SETTINGS = dict(batch_size=8, lora_rank=8, lora_alpha=16.0, learning_rate=2e-3, seed=0)


def build_world(root, seed=0):
    """Tiny pair + task data under root (reused when already there)."""
    root = Path(root)
    if not (root / "instruct" / "config.json").exists():
        toy.build_pair(root, "llama", seed=seed)
        toy.write_task_data(root / "data", n_train=128, n_valid=32, n_test=32, seed=seed)
    return root / "base", root / "instruct", root / "data"


def demo(out="runs/demo", iters=60, samples=4, seed=0, methods=METHODS, log=print):
    """Train, merge and evaluate each method on the tiny pair; return the evaluation summary."""
    if iters < 1 or samples < 1:  # before any work is done
        raise GiftError(f"--iters and --samples must be at least 1, got {iters} and {samples}")
    out = Path(out)
    base, instruct, data = build_world(out / "world", seed)
    log(f"demo: tiny llama pair and arithmetic task in {out / 'world'} (random weights: a pipeline check)")
    runs = {}
    for method in methods:
        log(f"\n== {method} ==")
        cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(data), method=method,
                          adapter_path=str(out / method), iters=iters, steps_per_eval=max(iters // 3, 1),
                          **{**SETTINGS, "seed": seed})
        runs[method] = train(cfg, log=log)
    log("\nmethod      weighted val loss   plain val loss")
    for method, record in runs.items():
        final = record["final"]
        log(f"{method:<11} {final['val_loss']:>17.4f}   {final['val_plain_loss']:>14.4f}")

    merged = [instruct]
    for method in methods:  # every adapter goes into the instruct model (direct's was trained on it)
        log(f"\n== merge {method} ==")
        merged.append(merge(str(instruct), str(out / method), str(out / "merged" / method), force=True, log=log))
    log(f"\n== evaluate: {len(merged)} models, {samples} samples per problem ==")
    summary = evaluate([str(m) for m in merged], data / "test.jsonl", out / "eval", overwrite=True, log=log,
                       samples=samples, max_tokens=32, seed=seed, instruction="")
    log((out / "eval" / "results.md").read_text())
    log(f"report: {out / 'eval'} (results.md, summary.json, samples.jsonl, scaling.png)")
    return summary
