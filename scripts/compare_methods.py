"""Compare the methods on the built-in toy world over several seeds and write the answer to docs/results.md.

    python scripts/compare_methods.py --seeds 0 1 2 3 4 --samples 4        # what docs/results.md shows

Per seed: `gift demo` with every method (instruct, direct, shadow-ft, gift, gift-base and dft where this
version has it), then the same shadow-ft and gift adapters merged again at λ = 0.25 and 0.5, and gift trained
again at γ = 0.5 and 2; every model is sampled on the task test set and the retention set. Each seed changes
LoRA initialisation, data order, dropout and the sampling seed; the world is the same for all.

Written between the markers in docs/results.md (the rest of the file is left as it is): mean and 95%
t-interval over seeds of every metric, every seed's value, the paired difference GIFT − Shadow-FT per seed,
the λ and γ sweeps, the mean GIFT weight by kind of target token, and two figures under docs/figures/
(retention against task over λ; weight by token kind). Every seed's full report stays under --out.
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gift_mlx  # noqa: F401  (preloads OpenBLAS)
from gift_mlx.config import METHODS as ALL_METHODS
from gift_mlx.demo import SETTINGS, _row, demo, train_method, update_size, world_paths
from gift_mlx.evaluate import evaluate
from gift_mlx.merge import merge

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- compare_methods:start -->", "<!-- compare_methods:end -->"
METHODS = tuple(m for m in ("direct", "shadow-ft", "gift", "gift-base", "dft") if m in ALL_METHODS)
SCALES, GAMMAS = (0.25, 0.5), (0.5, 2.0)  # besides λ = 1 and γ = 1, which the demo's runs are
# A second, larger budget (3 epochs at 3x the learning rate): updates as large as the pair's distance, outside
# the regime of a real recipe, to show what happens there.
LARGE = dict(iters=96, learning_rate=3e-4)
LARGE_TAG = "(large)"
# Two-sided 95% Student t quantiles t_{0.975, df} (a statistics table; df > 10 uses 2.2 as an upper bound).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def interval(values):
    """(mean, half-width of the 95% t-interval over seeds)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, T975.get(len(values) - 1, 2.2) * statistics.stdev(values) / len(values) ** 0.5


def pct(values):
    m, h = interval(values)
    return f"{100 * m:.1f} ± {100 * h:.1f}"


# ---- one seed -----------------------------------------------------------------------------------------------


def sweep(out, seed, samples, limit, settings, log):
    """γ and λ variants of one seed's demo run: train gift at other γ, merge again at other λ, evaluate."""
    _, _, task, retention = world_paths()
    base, instruct = out / "world" / "base", out / "world" / "instruct"  # the demo's float32 copies
    models, losses = {}, {}
    for gamma in GAMMAS:
        name = f"gift γ={gamma:g}"
        adapter = f"gift-gamma{gamma:g}"
        losses[name] = train_method(out, "gift", base, instruct, task, settings, name=adapter, log=log, gamma=gamma,
                                    scores_path=str(out / "gift" / "scores"))["final"]
        models[name] = merge(str(instruct), str(out / adapter), str(out / "merged" / adapter), force=True, log=log)
    for method in ("shadow-ft", "gift"):
        for scale in SCALES:
            name = f"{method} λ={scale:g}"
            models[name] = merge(str(instruct), str(out / method), str(out / "merged" / f"{method}-scale{scale:g}"),
                                 scale=scale, force=True, log=log)
    for method in ("shadow-ft", "gift"):
        adapter = f"{method}-large"
        run = train_method(out, method, base, instruct, task, settings, name=adapter, log=log, **LARGE,
                           **({"scores_path": str(out / "gift" / "scores")} if method == "gift" else {}))
        losses[f"{method} {LARGE_TAG}"] = run["final"]
        for scale in (*SCALES, 1.0):
            name = f"{method} {LARGE_TAG}" + (f" λ={scale:g}" if scale != 1 else "")
            models[name] = merge(str(instruct), str(out / adapter), str(out / "merged" / f"{adapter}-{scale:g}"),
                                 scale=scale, force=True, log=log)
    rows = {n: {"name": n, "update_size": update_size(m), "val_loss": losses.get(n, {}).get("val_loss"),
                "val_plain_loss": losses.get(n, {}).get("val_plain_loss")} for n, m in models.items()}
    for part, data in (("task", task / "test.jsonl"), ("retention", retention)):
        s = evaluate([str(m) for m in models.values()], data, out / "eval-sweep" / part, overwrite=True, log=log,
                     samples=samples, max_tokens=96 if part == "task" else 64, seed=seed, instruction="",
                     limit=limit, progress=False)
        for n, entry in zip(models, s["models"]):
            rows[n][part] = _row(entry, samples)
    return list(rows.values())


def run_seed(seed, args, log):
    out = Path(args.out) / f"seed-{seed}"
    if out.exists():  # this script's own earlier output
        shutil.rmtree(out)
    summary = demo(out, iters=args.iters, samples=args.samples, seed=seed, methods=args.methods, limit=args.limit,
                   log=log)
    summary["models"] += sweep(out, seed, args.samples, args.limit, summary["settings"], log)
    return summary


# ---- the diagnostic: GIFT's weights by kind of target token ----------------------------------------------


def token_kind(text):
    if text == "<|im_end|>":
        return "end-of-turn"
    if text.isdigit():
        return "digit"
    if text == "#":
        return "####"
    return "word" if text.isalpha() else "symbol (+ - = . space)"


def weights_by_kind(out):
    """Mean weight w = max(q, 1e-4)^γ by target-token kind, from the confidences seed 0's gift and gift-base
    runs stored (the instruct's and the base's; both are the same for every seed)."""
    from mlx_lm.utils import load
    from safetensors.numpy import load_file

    from gift_mlx.data import load_split

    _, instruct, task, _ = world_paths()
    _, tokenizer = load(str(instruct))
    data = load_split(task / "train.jsonl", tokenizer, SETTINGS["max_seq_length"])
    kinds = np.array([token_kind(tokenizer.decode([int(t)])) for e in data.examples for t in e.tokens[e.target]])
    result = {"count": {k: int((kinds == k).sum()) for k in sorted(set(kinds))}}
    for method, role in (("gift", "instruct"), ("gift-base", "base")):
        f = out / method / "scores" / f"train-{role}.safetensors"
        if not f.exists():
            continue
        q = load_file(str(f))["values"]
        assert q.size == kinds.size, (f, q.size, kinds.size)
        result[role] = {}
        for gamma in (0.5, 1.0, 2.0):
            w = np.maximum(q, 1e-4) ** gamma
            result[role][gamma] = {k: float(w[kinds == k].mean()) for k in result["count"]}
    return result


# ---- figures and the markdown ---------------------------------------------------------------------------


def figures(results, weights, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    names = [m["name"] for m in results[0]["models"]]
    col = {n: i for i, n in enumerate(names)}

    def point(name):
        t = [r["models"][col[name]]["task"]["average"] for r in results]
        ret = [r["models"][col[name]]["retention"]["average"] for r in results]
        return interval(t), interval(ret)

    budgets = (("", "-", "demo budget"), (f" {LARGE_TAG}", "--", "large budget"))
    for (method, color), (tag, style, label) in ((m, b) for m in (("shadow-ft", "tab:orange"), ("gift", "tab:blue"))
                                                 for b in budgets):
        pts = [point(f"{method}{tag} λ={s:g}") for s in SCALES] + [point(method + tag)]
        xs, ys = [100 * p[0][0] for p in pts], [100 * p[1][0] for p in pts]
        ax.errorbar(xs, ys, xerr=[100 * p[0][1] for p in pts], yerr=[100 * p[1][1] for p in pts], color=color,
                    ls=style, marker="o", capsize=3, label=f"{method}, {label}, λ = 0.25 → 1")
        for x, y, s in zip(xs, ys, [*SCALES, 1]):
            ax.annotate(f"λ={s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
    for name, marker, color in (("instruct", "*", "black"), ("direct", "s", "tab:red"),
                                ("gift-base", "^", "tab:green"), ("dft", "D", "tab:purple")):
        if name in col:
            (tx, th), (rx, rh) = point(name)
            ax.errorbar([100 * tx], [100 * rx], xerr=[100 * th], yerr=[100 * rh], marker=marker, ls="none",
                        capsize=3, label=name, color=color)
    k = results[0]["samples"]
    ax.set_xlabel(f"task Average@{k} (%)")
    ax.set_ylabel(f"retention Average@{k} (%)")
    ax.set_title(f"Retention vs task over the merge scale λ\n({len(results)} seeds, mean ± 95% CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "tradeoff.png", dpi=120)
    plt.close(fig)

    # the same points against the update's size: are two methods apart, or only their updates' norms?
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    families = (("gift-base", "tab:green"), ("shadow-ft", "tab:orange"), ("direct", "tab:red"), ("dft", "tab:purple"),
                ("gift", "tab:blue"))
    for ax, part in zip(axes, ("task", "retention")):
        for family, color in families:
            rows = [n for n in names if n.split(" ")[0] == family and results[0]["models"][col[n]].get("update_size")]
            if not rows:
                continue
            xs = [statistics.fmean(r["models"][col[n]]["update_size"] for r in results) for n in rows]
            pts = [interval([r["models"][col[n]][part]["average"] for r in results]) for n in rows]
            ax.errorbar(xs, [100 * m for m, _ in pts], yerr=[100 * h for _, h in pts], ls="none", marker="o",
                        capsize=3, color=color, label=family)
        m, h = interval([r["models"][col["instruct"]][part]["average"] for r in results])
        ax.axhspan(100 * (m - h), 100 * (m + h), color="black", alpha=0.12, label="instruct (95% CI)")
        ax.axvline(results[0]["pair_distance"], color="gray", ls=":", label="pair distance (all matrices)")
        ax.set_xscale("log")
        ax.set_xlabel("update size ‖λ·ΔW‖_F / ‖W‖_F")
        ax.set_ylabel(f"{part} Average@{results[0]['samples']} (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Every merged model against its update's size ({len(results)} seeds, mean ± 95% CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "update_size.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    kinds = list(weights["count"])
    bars = [(role, g) for role in ("instruct", "base") if role in weights for g in (1.0,)]
    width = 0.8 / max(len(bars), 1)
    for i, (role, g) in enumerate(bars):
        ax.bar(np.arange(len(kinds)) + i * width, [weights[role][g][k] for k in kinds], width,
               label=f"{role} confidence (gift{'' if role == 'instruct' else '-base'}, γ = 1)")
    ax.set_xticks(np.arange(len(kinds)) + width * (len(bars) - 1) / 2,
                  [f"{k}\n({weights['count'][k]} tokens)" for k in kinds], fontsize=8)
    ax.set_ylabel("mean weight w = max(q, 1e-4)")
    ax.set_title("Token weights on the task's training targets, by kind")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "weights_by_kind.png", dpi=120)
    plt.close(fig)


def markdown(results, weights, command, seconds, figure_dir):
    k, n = results[0]["samples"], len(results)
    names = [m["name"] for m in results[0]["models"]]
    col = {name: i for i, name in enumerate(names)}

    def values(name, part, metric="average"):
        return [r["models"][col[name]][part][metric] for r in results]

    s0 = results[0]
    lines = [
        f"Command: `{command}` ({n} seeds, {seconds / 60:.0f} min on this machine). World: "
        f"`{Path(s0['world']).relative_to(ROOT) if Path(s0['world']).is_relative_to(ROOT) else s0['world']}`; "
        f"{s0['pair']}. "
        f"Each seed trains every adapter {s0['settings']['iters']} steps (batch {s0['settings']['batch_size']}, "
        f"LoRA rank {s0['settings']['lora_rank']}, alpha {s0['settings']['lora_alpha']:g}, "
        f"lr {s0['settings']['learning_rate']:g}), merges it into the instruct model and samples "
        f"{s0['task_problems']} task problems and {s0['retention_problems']} retention instructions {k} times "
        f"at temperature 1.0. Rows marked {LARGE_TAG} use a larger budget ({LARGE['iters']} steps at lr "
        f"{LARGE['learning_rate']:g}, the rest alike); λ: the merge scale (1 unless given); γ: GIFT's weight "
        f"exponent (1 unless given). Cells: mean ± half-width of the 95% t-interval over the {n} seeds, in %; "
        "update size: ‖λ·ΔW‖_F / ‖W‖_F over the adapted matrices (mean over seeds); val loss: the plain token loss "
        "Σℓ/n of the trained model (base + adapter, or instruct + adapter for direct) on the task's valid.jsonl.",
        "",
        f"| model | task Average@{k} | task pass@{k} | task maj@{k} | retention Average@{k} | update size "
        "| val loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def mean_of(name, key, fmt):
        v = [r["models"][col[name]].get(key) for r in results]
        return format(statistics.fmean(v), fmt) if None not in v else "–"

    for name in names:
        lines.append(f"| {name} | {pct(values(name, 'task'))} | {pct(values(name, 'task', 'pass'))} | "
                     f"{pct(values(name, 'task', 'maj'))} | {pct(values(name, 'retention'))} | "
                     f"{mean_of(name, 'update_size', '.4f')} | {mean_of(name, 'val_plain_loss', '.3f')} |")

    lines += ["", "**Paired difference GIFT − Shadow-FT** (same seed: same world, data order and sampling seed), "
              "percentage points:", "",
              "| metric | " + " | ".join(f"seed {r['seed']}" for r in results) + " | mean ± 95% CI |",
              "|---|" + "---:|" * (n + 1)]
    for label, part, metric in ((f"task Average@{k}", "task", "average"), (f"task pass@{k}", "task", "pass"),
                                (f"task maj@{k}", "task", "maj"), (f"retention Average@{k}", "retention", "average")):
        for lam in ("", *[f" λ={s:g}" for s in SCALES], f" {LARGE_TAG}", *[f" {LARGE_TAG} λ={s:g}" for s in SCALES]):
            d = [a - b for a, b in zip(values("gift" + lam, part, metric), values("shadow-ft" + lam, part, metric))]
            lines.append(f"| {label}{' at' + lam if lam else ''} | " + " | ".join(f"{100 * x:+.1f}" for x in d)
                         + f" | {pct(d)} |")

    lines += ["", f"**Every seed** (task Average@{k} / retention Average@{k}, %):", "",
              "| model | " + " | ".join(f"seed {r['seed']}" for r in results) + " |", "|---|" + "---:|" * n]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * t:.1f} / {100 * ret:.1f}" for t, ret in zip(values(name, "task"), values(name, "retention")))
            + " |")

    kinds = list(weights["count"])
    lines += ["", "**GIFT's weights by kind of target token** (task training set, "
              f"{sum(weights['count'].values())} target tokens; w = max(q, 1e-4)^γ, q the confidence of the "
              "instruct model (gift) or of the base (gift-base); the same for every seed):", "",
              "| weights | " + " | ".join(f"{kd} ({weights['count'][kd]})" for kd in kinds) + " |",
              "|---|" + "---:|" * len(kinds)]
    for role in ("instruct", "base"):
        for g in (0.5, 1.0, 2.0):
            if role in weights:
                lines.append(f"| {role}, γ = {g:g} | " + " | ".join(f"{weights[role][g][kd]:.3f}" for kd in kinds)
                             + " |")
    rel = Path(figure_dir).relative_to(ROOT / "docs") if Path(figure_dir).is_relative_to(ROOT / "docs") else figure_dir
    lines += ["", f"![retention vs task over λ]({rel}/tradeoff.png)", "",
              f"![task and retention against the update's size]({rel}/update_size.png)", "",
              f"![weights by token kind]({rel}/weights_by_kind.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N problems of each set")
    ap.add_argument("--iters", type=int, default=None, help="optimizer steps per adapter (default: the demo's)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--figures", default=str(ROOT / "docs" / "figures"))
    args = ap.parse_args(argv)
    command = "python scripts/compare_methods.py " + " ".join(argv if argv is not None else sys.argv[1:])
    log = lambda m: print(m, flush=True)  # noqa: E731
    start, results = time.perf_counter(), []
    for seed in args.seeds:
        log(f"\n######## seed {seed} ########")
        results.append(run_seed(seed, args, log))
        (Path(args.out) / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    seconds = time.perf_counter() - start
    weights = weights_by_kind(Path(args.out) / f"seed-{args.seeds[0]}")
    (Path(args.out) / "weights_by_kind.json").write_text(json.dumps(weights, indent=2) + "\n")
    figures(results, weights, Path(args.figures))
    text = markdown(results, weights, command.strip(), seconds, Path(args.figures))
    log("\n" + text)
    path = Path(args.results)
    doc = path.read_text() if path.exists() else f"# Results\n\n{START}\n{END}\n"
    if START not in doc:
        doc += f"\n{START}\n{END}\n"
    head, rest = doc.split(START, 1)
    path.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
    log(f"written: {path} and {args.figures}/")


if __name__ == "__main__":
    main()
