"""`gift demo`: the whole method, end to end, on the built-in toy world (no download).

The world (gift_mlx/world/, built by scripts/build_toy_world.py) is a character-level base model pretrained
from scratch on arithmetic facts, number stories and plain-text user/assistant exchanges, its instruct model
(the base tuned briefly on ChatML chats: it follows them and ends its turn, and stays close to the base in
weight space), a TASK of two-step sums written in a terse chain of thought with '#### N' (the instruct model
solves some of them in its own words), and a RETENTION set of held-out general instructions.

With one budget and seed the demo trains `direct` (LoRA on the instruct model), `shadow-ft` and `gift`
(LoRA on the base model; uniform vs instruct-confidence token weights) and optionally `gift-base`, merges
every adapter into the instruct model, and evaluates the instruct model and every merged model by sampling:
Average@k, pass@k and maj@k on the task test set, Average@k on the retention set.
"""

import json
import os
import shutil
import time
from pathlib import Path

from .config import COUNT_MAX, SEED_RANGE, TrainConfig, check_value
from .errors import GiftError, Interrupted
from .evaluate import evaluate
from .merge import merge
from .outputs import LOCK, RECORD, folder_lock, new_folder, save_tensors, write_bytes, write_json, write_text
from .pair_check import one_line, pair_check
from .plot import methods as methods_plot
from .train import sigterm_as_interrupt, train

WORLD = Path(__file__).parent / "world"
METHODS = ("direct", "shadow-ft", "gift")
# The demo's training settings; configs/demo.yaml holds the same (a test keeps them equal). One epoch of the
# 1000 training rows at lr 1e-4, as a real recipe is (the paper: one epoch of 2,000 rows, ~8 steps at 2e-4), so
# that the updates stay well below the base -> instruct distance (the report prints both).
SETTINGS = dict(iters=32, batch_size=32, lora_rank=8, lora_alpha=16.0, learning_rate=1e-4, max_seq_length=256,
                seed=0)
MAX_TOKENS = dict(task=96, retention=64)  # answers are under 80 characters (one token each)
DEMO_RECORD = "gift_demo.json"  # every file a finished demo wrote (size, mtime): what --force may delete


def demo_files(out):
    """{relative path: [size, mtime_ns]} of every entry under `out` (links as themselves, never followed)."""
    files = {}
    for root, dirs, names in os.walk(out):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = Path(root) / name
            st = path.lstat()
            files[str(path.relative_to(out))] = [st.st_size, st.st_mtime_ns]
    files.pop(LOCK, None)
    files.pop(DEMO_RECORD, None)
    return files


def clear_output(out, force):
    """Refuse an existing non-empty --out unless force; with force, remove an earlier demo's output, and only
    if every file in it is one that demo wrote, unchanged (its gift_demo.json lists them)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not force:
        raise GiftError(f"{out}: output folder exists and is not empty (use --force to replace an earlier demo, "
                        "or choose another --out)")
    record = out / DEMO_RECORD
    try:
        written = json.loads(record.read_text())["files"] if out.is_dir() and not record.is_symlink() else None
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    if not isinstance(written, dict):
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
        raise GiftError(f"{out}: not a gift demo folder (holds {', '.join(held[:3])}) and has no readable "
                        f"{DEMO_RECORD}; --force replaces only an earlier demo's output")
    foreign = sorted(k for k, v in demo_files(out).items() if written.get(k) != v)
    if foreign:
        raise GiftError(f"{out}: not a gift demo folder: {foreign[0]} was not written by the demo, or changed "
                        "since; --force replaces only an earlier demo's own files (move the others away)")
    for entry in out.iterdir():
        if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def world_paths(world=None):
    """(base, instruct, task data folder, retention file) of a world folder (default: the built-in one)."""
    root = Path(world) if world else WORLD
    paths = root / "base", root / "instruct", root / "data" / "task", root / "data" / "retention.jsonl"
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise GiftError(f"{root}: not a toy world (missing {', '.join(missing)}); "
                        "build one with scripts/build_toy_world.py")
    return paths


def float32_copy(model_dir, out):
    """The model folder with float32 weights, so that the merged models (written in the instruct model's
    dtype) keep the adapters' updates in float32, as when the demo's recorded figures were made. Computing
    in float32 on a CPU alone would not need this: models.cpu_float32 does that at load time."""
    import mlx.core as mx

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():  # atomic writes: a full disk is one error line, never half a file
        if f.suffix == ".safetensors":
            weights = {k: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v
                       for k, v in mx.load(str(f)).items()}
            save_tensors(out / f.name, weights, metadata={"format": "mlx"})
        elif f.is_file():
            write_bytes(out / f.name, f.read_bytes())
    return out


def train_method(out, method, base, instruct, task, settings, name=None, log=print, **overrides):
    """Train one method's adapter into <out>/<name or method> with the demo's settings (plus overrides)."""
    iters = settings["iters"]
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task), method=method,
                      adapter_path=str(Path(out) / (name or method)), steps_per_eval=max(iters // 2, 1),
                      steps_per_report=max(iters // 5, 1), save_every=max(iters, 1), val_batches=-1, overwrite=True,
                      **{**settings, **overrides})
    try:
        return train(cfg, log=log)
    except KeyboardInterrupt:  # the demo has no --resume: its next run starts this method afresh
        raise Interrupted(f"while training {name or method}; run the demo again to start over") from None


def update_size(merged_dir):
    """The merged update's relative size ‖λ·ΔW‖_F / ‖W‖_F over the adapted matrices, as `gift merge` recorded it."""
    return json.loads((Path(merged_dir) / RECORD).read_text()).get("update_relative_size")


def _row(entry, k):
    return {"average": entry["average@k"][k], "pass": entry["pass@k"][k], "maj": entry["maj@k"][k],
            "truncated": entry["sampling"]["truncated"]}


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}"


METRIC_LEGEND = (
    "Average@{k}: the accuracy over the {k} samples drawn for each problem (the paper's metric); pass@{k}: the "
    "share of problems with at least one right answer among their {k} samples; maj@{k}: the "
    "accuracy of the majority answer of {k} samples. Values in %."
)


def report_markdown(summary):
    """report.md: the side-by-side table, what its columns mean, warnings, and links to every file behind it."""
    k, s, lines = summary["samples"], summary["settings"], []
    lines += [
        f"# gift demo — toy world, seed {summary['seed']}",
        "",
        f"{summary['task_problems']} task problems and {summary['retention_problems']} retention instructions, "
        f"{k} samples each at temperature 1.0; every adapter trained {s['iters']} steps "
        f"(batch {s['batch_size']}, LoRA rank {s['lora_rank']}, lr {s['learning_rate']}) and merged into the "
        "instruct model.",
        "",
    ]
    if summary.get("pair"):
        lines += [f"The {summary['pair']}. A transfer keeps the instruct model only if the task update is small "
                  "next to that distance: the last column is the update's ‖λ·ΔW‖_F / ‖W‖_F over the adapted "
                  "matrices.", ""]
    lines += [
        f"| model | task Average@{k} (%) | task pass@{k} (%) | task maj@{k} (%) | retention Average@{k} (%) "
        "| val loss, plain | val loss, weighted | update size |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in summary["models"]:
        losses = [f"{m[key]:.3f}" if m.get(key) is not None else "–" for key in ("val_plain_loss", "val_loss")]
        size = f"{m['update_size']:.4f}" if m.get("update_size") is not None else "–"
        lines.append(f"| {m['name']} | {_pct(m['task']['average'])} | {_pct(m['task']['pass'])} | "
                     f"{_pct(m['task']['maj'])} | {_pct(m['retention']['average'])} | {' | '.join(losses)} "
                     f"| {size} |")
    lines += [
        "",
        METRIC_LEGEND.format(k=k) + " Validation loss on the task's valid.jsonl after training: plain is the mean "
        "token loss Σℓ/n, weighted is the training objective Σw·ℓ/Σw (the same as plain for direct and shadow-ft, "
        "whose weights are uniform).",
    ]
    cut = [(part, m["name"], m[part]["truncated"]) for part in ("task", "retention") for m in summary["models"]
           if m[part].get("truncated", 0) > 0.5]
    if cut:
        limits = summary.get("max_tokens", MAX_TOKENS)
        lines += ["", "**Warning:** most completions hit the token limit, so their answers may be cut off: "
                  + ", ".join(f"{name} on {part} {_pct(f)}% (limit {limits[part]})" for part, name, f in cut) + "."]
    lines += ["", "Stage times (s): " + ", ".join(f"{st} {t:.0f}" for st, t in summary["seconds"].items()), "",
              "## Files", ""]
    for part in ("task", "retention"):
        lines.append(f"- {part} set: [results]({part}/results.md), [every sample]({part}/samples.jsonl), "
                     f"[summary]({part}/summary.json), [accuracy-vs-k plot]({part}/scaling.png)")
    lines += ["- task vs retention per method: [methods.png](methods.png)",
              "- this report's figures: [summary.json](summary.json); adapters, their training metrics and run "
              "records: `../<method>/`; merged models: `../merged/<method>/`", ""]
    lines += ["![task vs retention per method](methods.png)"]
    lines += [f"![{part}: accuracy vs k]({part}/scaling.png)" for part in ("task", "retention")] + [""]
    return "\n".join(lines)


def demo(out="runs/demo", iters=None, samples=4, seed=0, methods=METHODS, gift_base=False, world=None, limit=None,
         force=False, log=print):
    """Train, merge and evaluate each method on the toy world; write <out>/eval/report.md; return the summary."""
    iters = SETTINGS["iters"] if iters is None else iters
    check_value("--iters", iters, int, 1, COUNT_MAX)  # before any work is done
    check_value("--samples", samples, int, 1, 2**20)
    check_value("--seed", seed, int, *SEED_RANGE)
    check_value("--limit", limit, int, 1, COUNT_MAX, optional=True)
    methods = tuple(methods) + (("gift-base",) if gift_base and "gift-base" not in methods else ())
    base, instruct, task, retention = world_paths(world)
    out = Path(out)
    clear_output(out, force)
    # Locked for the run; a demo that fails or is interrupted (Ctrl-C, SIGTERM) removes what it wrote (it has
    # no --resume).
    with sigterm_as_interrupt(), new_folder(out, owned=True), folder_lock(out, "demo"):
        summary = run_demo(out, base, instruct, task, retention, iters, samples, seed, methods, limit, log)
        write_json(out / DEMO_RECORD, {"files": demo_files(out)})  # last: what a later --force may delete
    return summary


def run_demo(out, base, instruct, task, retention, iters, samples, seed, methods, limit, log):
    """The demo's stages, into an existing, locked --out."""
    settings = {**SETTINGS, "iters": iters, "seed": seed}
    world_dir = base.parent
    base, instruct = (float32_copy(m, out / "world" / m.name) for m in (base, instruct))
    seconds, start = {}, time.perf_counter()
    checked = pair_check(base, instruct, check_tokenizer=False)
    pair = one_line(checked)
    log(f"demo: toy world {world_dir} (float32 copies of its models in {base.parent})\n{pair}\n"
        f"demo: methods {', '.join(methods)}; {iters} steps each, seed {seed}")

    runs = {}
    for n, method in enumerate(methods, 1):
        log(f"\n== [{n}/{len(methods)}] train {method} ==")
        t = time.perf_counter()
        runs[method] = train_method(out, method, base, instruct, task, settings, log=log)
        seconds[f"train {method}"] = time.perf_counter() - t

    merged = [instruct]
    t = time.perf_counter()
    for method in methods:  # every adapter goes into the instruct model (direct's was trained on it)
        log(f"\n== merge {method} into the instruct model ==")
        merged.append(merge(str(instruct), str(out / method), str(out / "merged" / method), force=True, log=log))
    seconds["merge"] = time.perf_counter() - t

    evals = {}
    for name, data in (("task", task / "test.jsonl"), ("retention", retention)):
        log(f"\n== evaluate on the {name} set: {len(merged)} models, {samples} samples per problem ==")
        t = time.perf_counter()
        evals[name] = evaluate([str(m) for m in merged], data, out / "eval" / name, overwrite=True, log=log,
                               samples=samples, max_tokens=MAX_TOKENS[name], seed=seed, instruction="",
                               limit=limit)
        seconds[f"eval {name}"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start

    names = ["instruct", *methods]
    summary = {"world": str(world_dir), "seed": seed, "samples": samples, "settings": settings,
               "max_tokens": MAX_TOKENS, "pair": pair,
               "pair_distance": checked["overall"]["relative_distance"],
               "task_problems": evals["task"]["problems"], "retention_problems": evals["retention"]["problems"],
               "seconds": {k: round(v, 1) for k, v in seconds.items()}, "models": []}
    for i, name in enumerate(names):
        final = runs[name]["final"] if name in runs else {}
        summary["models"].append({"name": name, "task": _row(evals["task"]["models"][i], samples),
                                  "retention": _row(evals["retention"]["models"][i], samples),
                                  "val_loss": final.get("val_loss"), "val_plain_loss": final.get("val_plain_loss"),
                                  "update_size": update_size(merged[i]) if i else None})
    write_json(out / "eval" / "summary.json", summary)
    report = report_markdown(summary)
    write_text(out / "eval" / "report.md", report)
    methods_plot(out / "eval" / "methods.png", summary)
    log("\n" + report)
    log(f"report: {out / 'eval'} (report.md, summary.json, methods.png; task/ and retention/ with samples and "
        "scaling.png)")
    return summary
