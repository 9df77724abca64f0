"""Speed and peak memory of `gift pair-check` on two synthetic bfloat16 models written to a temporary folder.

    python scripts/bench_pair_check.py [--layers 4] [--hidden 4096]

Each layer holds one (2·hidden, hidden) and one (hidden, 2·hidden) matrix and a norm vector; the models are
written in two shards each. Prints GB of weights read per second and the peak MLX memory next to the
largest tensor, to check that the memory stays about one tensor of each model, not one model.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import gift_mlx  # noqa: F401  (BLAS preload)
import mlx.core as mx

from gift_mlx.pair_check import pair_check


def write_model(folder, layers, hidden, seed):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden,
                                                    "num_hidden_layers": layers, "vocab_size": 32000}))
    mx.random.seed(seed)
    for s, part in enumerate((range(0, layers // 2), range(layers // 2, layers))):
        w = {}
        for i in part:
            w[f"model.layers.{i}.mlp.up_proj.weight"] = mx.random.normal((2 * hidden, hidden)).astype(mx.bfloat16)
            w[f"model.layers.{i}.mlp.down_proj.weight"] = mx.random.normal((hidden, 2 * hidden)).astype(mx.bfloat16)
            w[f"model.layers.{i}.input_layernorm.weight"] = mx.ones((hidden,), mx.bfloat16)
        mx.eval(w)
        mx.save_safetensors(str(folder / f"model-{s}.safetensors"), w)
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=4096)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        size = sum(write_model(Path(tmp) / r, args.layers, args.hidden, seed) for r, seed in (("b", 0), ("i", 1)))
        mx.clear_cache()
        mx.reset_peak_memory()
        tic = time.perf_counter()
        pair_check(Path(tmp) / "b", Path(tmp) / "i", check_tokenizer=False)
        seconds = time.perf_counter() - tic
    largest = 2 * args.hidden * args.hidden * 2 / 1e9
    print(f"{size / 1e9:.2f} GB of weights (two models) in {seconds:.2f} s: {size / 1e9 / seconds:.2f} GB/s on "
          f"{mx.default_device()}; peak MLX memory {mx.get_peak_memory() / 1e9:.3f} GB (largest tensor "
          f"{largest:.3f} GB, one model {size / 2e9:.2f} GB)")


if __name__ == "__main__":
    main()
