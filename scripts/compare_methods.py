"""Run `gift demo` over several seeds and write mean ± standard deviation per method to docs/results.md.

    python scripts/compare_methods.py --seeds 0 1 2 --samples 8          # what docs/results.md shows

Each seed changes LoRA initialisation, data order, dropout and the sampling seed; the world (the committed
gift_mlx/world/) is the same for all. The table goes between the markers in docs/results.md (the rest of
that file is left as it is); every seed's full report stays under --out.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import gift_mlx  # noqa: F401  (preloads OpenBLAS)
from gift_mlx.demo import METHODS, demo

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- compare_methods:start -->", "<!-- compare_methods:end -->"


def mean_sd(values):
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results, k, command, seconds):
    names = [m["name"] for m in results[0]["models"]]
    cols = [("task", "average", f"task Average@{k}"), ("task", "pass", f"task pass@{k}"),
            ("task", "maj", f"task maj@{k}"), ("retention", "average", f"retention Average@{k}")]
    lines = [f"Command: `{command}` ({len(results)} seeds, {seconds / 60:.0f} min on this machine). "
             "Mean ± standard deviation over seeds; each seed evaluates "
             f"{results[0]['task_problems']} task problems and {results[0]['retention_problems']} retention "
             f"instructions with {k} samples at temperature 1.0.", "",
             "| model | " + " | ".join(c[2] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for i, name in enumerate(names):
        cells = []
        for part, metric, _ in cols:
            m, sd = mean_sd([r["models"][i][part][metric] for r in results])
            cells.append(f"{100 * m:.1f} ± {100 * sd:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Per seed, task Average@{k} (%):", "",
              "| model | " + " | ".join(f"seed {r['seed']}" for r in results) + " |",
              "|---|" + "---:|" * len(results)]
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(f"{100 * r['models'][i]['task']['average']:.1f}"
                                                 for r in results) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--iters", type=int, default=None, help="optimizer steps per method (default: the demo's)")
    ap.add_argument("--gift-base", action="store_true")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results.md"))
    args = ap.parse_args(argv)
    command = "python scripts/compare_methods.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start, results = time.perf_counter(), []
    for seed in args.seeds:
        print(f"\n######## seed {seed} ########", flush=True)
        results.append(demo(Path(args.out) / f"seed-{seed}", iters=args.iters, samples=args.samples, seed=seed,
                            methods=METHODS, gift_base=args.gift_base, log=lambda m: print(m, flush=True)))
    seconds = time.perf_counter() - start
    (Path(args.out) / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results, args.samples, command.strip(), seconds)
    print("\n" + text)
    path = Path(args.results)
    doc = path.read_text() if path.exists() else f"# Results\n\n{START}\n{END}\n"
    if START not in doc:
        doc += f"\n{START}\n{END}\n"
    head, rest = doc.split(START, 1)
    path.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
    print(f"written: {path}")


if __name__ == "__main__":
    main()
