"""Speed and memory of `gift pair-check` on two synthetic models written to a temporary folder, in float32
and in bfloat16.

    python scripts/bench_pair_check.py [--layers 4] [--hidden 2048] [--dtypes float32,bfloat16]

Each layer holds one (2·hidden, hidden) and one (hidden, 2·hidden) matrix and a norm vector; each model is
written in two shards. The files were just written, so they are in the page cache: the figure is the
reading and reducing speed, not the disk's. Prints GB of weights (both models) read per second, and the
growth of the process's resident memory next to the largest tensor, to check that the memory stays about a
chunk, not a tensor or a model.
"""

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import gift_mlx  # noqa: F401  (BLAS preload)
import mlx.core as mx

from gift_mlx.pair_check import pair_check


def write_model(folder, layers, hidden, seed, dtype):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden,
                                                    "num_hidden_layers": layers, "vocab_size": 32000}))
    mx.random.seed(seed)
    for s, part in enumerate((range(0, layers // 2), range(layers // 2, layers))):
        w = {}
        for i in part:
            w[f"model.layers.{i}.mlp.up_proj.weight"] = mx.random.normal((2 * hidden, hidden)).astype(dtype)
            w[f"model.layers.{i}.mlp.down_proj.weight"] = mx.random.normal((hidden, 2 * hidden)).astype(dtype)
            w[f"model.layers.{i}.input_layernorm.weight"] = mx.ones((hidden,), dtype)
        mx.eval(w)
        mx.save_safetensors(str(folder / f"model-{s}.safetensors"), w)
        del w
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def rss_gb():
    """Resident memory now (Linux /proc), in GB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def sampled_peak(stop, out):
    """The largest resident memory seen every 5 ms until stop is set (max RSS would count the writing too)."""
    while not stop.is_set():
        out[0] = max(out[0], rss_gb())
        time.sleep(0.005)


def bench(dtype, layers, hidden, repeat, workers):
    with tempfile.TemporaryDirectory() as tmp:
        size = sum(write_model(Path(tmp) / r, layers, hidden, seed, dtype) for r, seed in (("b", 0), ("i", 1)))
        mx.clear_cache()
        before, seconds, peak, stop = rss_gb(), [], [0.0], threading.Event()
        sampler = threading.Thread(target=sampled_peak, args=(stop, peak))
        sampler.start()
        for _ in range(repeat):
            tic = time.perf_counter()
            pair_check(Path(tmp) / "b", Path(tmp) / "i", check_tokenizer=False, workers=workers)
            seconds.append(time.perf_counter() - tic)
        stop.set()
        sampler.join()
        peak = peak[0]
    largest = 2 * hidden * hidden * dtype.size / 1e9
    best = min(seconds)
    print(f"{str(dtype).replace('mlx.core.', ''):9} {workers} thread(s): {size / 1e9:.2f} GB of weights (two models) in {best:.2f} s "
          f"(best of {repeat}; all: {', '.join(f'{s:.2f}' for s in seconds)}): {size / 1e9 / best:.2f} GB/s; "
          f"resident memory {before:.2f} GB before, at most {peak:.2f} GB during (largest tensor {largest:.3f} GB, one "
          f"model {size / 2e9:.2f} GB); load average {os.getloadavg()[0]:.1f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="1,2", help="summing threads to compare (pair_check's default: the cores)")
    args = ap.parse_args()
    for name in args.dtypes.split(","):
        for workers in map(int, args.workers.split(",")):
            bench(getattr(mx, name), args.layers, args.hidden, args.repeat, workers)


if __name__ == "__main__":
    main()
