"""The report of scripts/bench_train.py: its measurements (results.json) as the markdown section of docs/benchmarks.md.

Reads only the `res` dict bench_train.py builds (runs, padding, machine, profile) and measures nothing. The
ratio targets (gift against mlx_lm.lora) are judged here, so what counts as "met" is read in one place.

    python scripts/bench_report.py WORK/results.json [--doc FILE]   # render a run's section again
"""

import os
import statistics
import sys
from pathlib import Path

BEGIN, END = "<!-- bench_train:begin -->", "<!-- bench_train:end -->"


def fmt(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def run_lines(res):
    """The command, machine and GPU lines both report kinds open with."""
    m = res["machine"]
    return [f"- Command: `{res['command']}`",
            f"- Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['memory_gib']:.0f} GiB, {m['os']}, device {m['device']}; "
            f"Python {m['python']}, mlx {m['mlx']}, mlx-lm {m['mlx_lm']}; gift-mlx at {m['commit']}",
            f"- GPU: {res['gpu']}"] + ([f"- mlx_lm.lora's OpenBLAS: {m['peer_blas_env']}"] if "peer_blas_env" in m else []) \
        + ([f"- gift's malloc: {m['gift_heap']}"] if "gift_heap" in m else [])


def report(res):
    p, runs, pad = res["profile"], res["runs"], res["padding"]
    L = []
    w = L.append
    w(f"## Training throughput against mlx_lm.lora ({res['mode']} run)")
    w("")
    w(f"- Date: {res['date']}; wall time of the whole benchmark {res['wall_s'] / 60:.1f} min")
    L += run_lines(res)
    w(f"- Load average (1 min) at start / end: {res['load'][0]:.2f} / {res['load'][1]:.2f} "
      "(the cores are shared; per-run load is in the table at the end)")
    w(f"- BLAS: gift's preload {res['blas']['gift'][1]} → {fmt(res['blas']['gift'][0], 1)} GFLOP/s (`gift doctor`, "
      f"1024² matmul); GIFT_BLAS=0 (the wheel's) → {fmt(res['blas']['wheel'][0], 1)} GFLOP/s. Inside the mlx_lm.lora "
      f"processes (512² matmul): with LD_PRELOAD={res['openblas']} {fmt(runs['peer-openblas']['blas_gflops'], 1)} GFLOP/s, "
      f"as installed {fmt(runs['peer-wheel']['blas_gflops'], 1)} GFLOP/s.")
    w(f"- Model: llama, hidden {p['hidden']}, {p['layers']} layers, {p['heads']} heads ({p['kv_heads']} KV), "
      f"FFN {p['ffn']}, vocabulary {res['vocab']}: {res['parameters'] / 1e6:.1f}M parameters (float32); "
      f"the instruct model is the same shape.")
    w(f"- Data: {p['n_train']} training rows of arithmetic chains ({p['terms'][0]}-{p['terms'][1]} terms), "
      f"{res['data']['min']}-{res['data']['max']} tokens (mean {res['data']['mean']:.0f}, "
      f"{res['data']['target_share'] * 100:.0f}% targets); max_seq_length {p['max_seq_length']}.")
    w(f"- Hyperparameters (both trainers): LoRA rank {p['rank']}, scale {p['alpha'] / p['rank']:g}, dropout 0.05, "
      f"every linear layer of all {p['layers']} blocks; batch {p['batch_size']}; AdamW lr 2e-4, weight decay 0, "
      f"10% warmup then cosine; seed 0. Steps: {p['iters']} with OpenBLAS, {p['wheel_iters']} with the wheel's BLAS "
      f"(over ten times slower per step). Warm-up left out of every figure: the first {res['warmup_steps']} steps "
      f"of a {p['iters']}-step run (compilation, allocator growth), step 1 of a {p['wheel_iters']}-step run. "
      "Validation (not timed): "
      "gift 1 batch at the end, mlx_lm.lora --val-batches 0.")
    w("")
    w("### Results")
    w("")
    w("| configuration | BLAS | runs × steps; counted (steady) | s/step | target tok/s | all tok/s | "
      "target tok/s, steady | s/step, steady | batch shapes | retrace s (est.) | step 1 (s) | MLX peak GB | max RSS GB |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    names = [n for n in ("peer-openblas", "peer-wheel", "gift-cached", "gift-online", "gift-wheel") if n in runs]
    blas_of = {"peer-openblas": "OpenBLAS (LD_PRELOAD)", "peer-wheel": "wheel (reference)",
               "gift-cached": "OpenBLAS (gift preload)", "gift-online": "OpenBLAS (gift preload)",
               "gift-wheel": "wheel (GIFT_BLAS=0)"}
    label = {"peer-openblas": "mlx_lm.lora", "peer-wheel": "mlx_lm.lora", "gift-cached": "gift train, cached scores",
             "gift-online": "gift train --online-scores", "gift-wheel": "gift train, cached scores"}
    for n in names:
        r = runs[n]
        wm, st = r["warm"] or {}, r["steady"] or {}
        dist = f", {r['disturbed']} disturbed left out" if r.get("disturbed") else ""
        w(f"| {label[n]} | {blas_of[n]} | {r['rounds']} × {len(r['_steps']) // r['rounds']}; {wm.get('steps', 0)} ({st.get('steps', 0)}{dist}) | {fmt(wm.get('s_per_step'), 2)} | "
          f"{fmt(wm.get('target_tokens_per_s'))} | {fmt(wm.get('tokens_per_s'))} | {fmt(st.get('target_tokens_per_s'))} | "
          f"{fmt(st.get('s_per_step'), 2)} | {r['shapes']} | {fmt(r.get('retrace_s'), 1)} | {fmt(r['first_step_s'], 1)} | {fmt(r['peak_memory_gb'], 3)} | "
          f"{fmt(r['maxrss_gb'], 3)} |")
    sc = runs["gift-score"]
    w(f"| gift score (train split) | OpenBLAS (gift preload) | – | – | {fmt(sc['target_tokens_per_s'])} | "
      f"{fmt(sc['tokens_per_s'])} | – | – | – | – | – | – | {fmt(sc['maxrss_gb'], 3)} |")
    w("")
    w("Columns: \"s/step\", \"target tok/s\" and \"all tok/s\" count every step after the warm-up (they include the retraces "
      "of the compiled step for batch shapes not seen before; \"retrace s\" estimates one retrace: a new shape's step "
      "time beyond its tokens at the steady rate); the \"steady\" columns count only steps whose batch "
      "shape was already compiled (the long-run rate), less any step that took over twice the run's median time per "
      "token (slowed by other work on the shared cores; counted as \"disturbed\"). Target tokens = response tokens + end-of-turn; all tokens = "
      "non-padding positions; both counted the same way for both trainers. "
      f"mlx_lm.lora's own tok/s (prompt-masked positions, its count) after the warm-up, first run: "
      f"{fmt(runs['peer-openblas']['own_tokens_per_s_warm'])} (OpenBLAS). "
      f"gift score: {sc['target_tokens']:,} target tokens in {sc['seconds']:.1f} s (its own log line; one uncompiled "
      "forward pass per length-sorted batch).")
    w("")
    w("### Ratios and targets")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")
    for t in res["targets"]:
        met = "–" if t["met"] is None else "yes" if t["met"] else "**no**"
        w(f"| {t['name']} | {t['text']} | {met} |")
    w("")
    w("### Padding (one epoch of this data, computed from the data)")
    w("")
    w("| batching | padded share of input positions | padded widths |")
    w("|---|---|---|")
    for k in ("mlx_lm.lora", "gift", "sorted, exact lengths", "gift score (scoring.score_batches)"):
        if k not in pad:
            continue
        widths = pad[k]["widths"]
        w(f"| {k} | {pad[k]['padded_share'] * 100:.1f}% | {', '.join(map(str, widths)) if widths else '–'} |")
    w("")
    w("mlx_lm.lora sorts by `len()` of the raw record (a dict of 2 keys for prompt/completion data), so its batches "
      "are consecutive rows of the file, shuffled, each padded to a multiple of 32 of its longest row. gift sorts "
      f"by token length within shuffled windows of 64 batches and pads to the 8 lengths data.fit_pad_lengths fits to the rows ({', '.join(map(str, pad['_pad_lengths']))}). "
      "\"sorted, exact lengths\": the same sorted batches padded to their longest row (no bucket set): the floor "
      "for batch-level padding. The last row is the scoring pass (forward only), widths shown as rows×length.")
    w("")
    runs_table(res, w)
    w("")
    checks = [f"mlx_lm.lora stdout tok/s lines match its callback: {runs['peer-openblas']['stdout_matches_callback']}",
              f"mlx_lm.lora's own token count = Σ(length − offset + 1): {runs['peer-openblas']['own_token_count_matches']}"]
    for n in names:
        if n.startswith("gift"):
            checks.append(f"{n}: replayed batches match every reported step: {runs[n]['replay_matches']}")
    w("Checks: " + "; ".join(checks) + ". `$WORK` is the benchmark's scratch folder.")
    return "\n".join(L) + "\n"


def runs_table(res, w):
    """Every subprocess of the benchmark: wall and CPU seconds, load average, command."""
    w("### Runs")
    w("")
    w("| run | wall s | CPU s | load before → after | command |")
    w("|---|---|---|---|---|")
    for r in res["processes"]:
        cmd = r["command"].replace(str(res["work"]), "$WORK").replace(sys.executable, "python")
        w(f"| {r['name']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['load_before']:.1f} → {r['load_after']:.1f} | `{cmd}` |")


def targets(runs, pad, warmup_steps):
    """The ratio targets, each with its measured value and whether it is met (warmup_steps(n): steps left out)."""
    def steady(n, key):
        r = runs.get(n)
        return ((r.get("steady") or r.get("warm") or {}).get(key)) if r else None

    def warm(n, key):
        r = runs.get(n)
        return (r.get("warm") or {}).get(key) if r else None

    out = []

    def add(name, value, ok, text):
        out.append({"name": name, "value": value, "met": bool(value is not None and ok(value)), "text": text})

    r1 = ratio(steady("gift-cached", "target_tokens_per_s"), steady("peer-openblas", "target_tokens_per_s"))
    r1w = ratio(warm("gift-cached", "target_tokens_per_s"), warm("peer-openblas", "target_tokens_per_s"))
    r1a = ratio(steady("gift-cached", "tokens_per_s"), steady("peer-openblas", "tokens_per_s"))
    add("gift cached ≥ 1.0× mlx_lm.lora tokens/s, same BLAS (OpenBLAS both)", r1, lambda v: v >= 1.0,
        f"{fmt(r1, 2)}× target tok/s steady ({fmt(r1a, 2)}× all tok/s; {fmt(r1w, 2)}× target tok/s incl. retraces)")
    if "gift-wheel" in runs:
        r = ratio(warm("gift-wheel", "target_tokens_per_s"), warm("peer-wheel", "target_tokens_per_s"))
        ra = ratio(warm("gift-wheel", "tokens_per_s"), warm("peer-wheel", "tokens_per_s"))
        add("gift cached ≥ 1.0× mlx_lm.lora tokens/s, same BLAS (wheel's reference BLAS both)", r, lambda v: v >= 1.0,
            f"{fmt(r, 2)}× target tok/s ({fmt(ra, 2)}× all tok/s), steps after step 1")
    r2 = ratio(steady("gift-cached", "target_tokens_per_s"), warm("peer-wheel", "target_tokens_per_s"))
    r2a = ratio(steady("gift-cached", "tokens_per_s"), warm("peer-wheel", "tokens_per_s"))
    add("out of the box on Linux CPU: gift cached ≥ 3× mlx_lm.lora as installed", r2, lambda v: v >= 3.0,
        f"{fmt(r2, 1)}× target tok/s ({fmt(r2a, 1)}× all tok/s)")
    # online vs cached: the same seed gives the same batches, so compare step times over the same steps
    ca = runs["gift-cached"]
    skip = warmup_steps(len(runs["gift-online"]["_steps"]))
    pairs = [(o["time"], c["time"]) for o, c in zip(runs["gift-online"]["_steps"][skip:], ca["_steps"][skip:])
             if not (o["new_shape"] or c["new_shape"] or o["disturbed"] or c["disturbed"])]
    r3 = ratio(sum(o for o, _ in pairs), sum(c for _, c in pairs)) if pairs else None
    r3w = ratio(warm("gift-online", "s_per_step"), warm("gift-cached", "s_per_step"))
    add("online scoring ≤ 1.4× the time of a cached-score step", r3, lambda v: v <= 1.4,
        f"{fmt(r3, 2)}× s/step over the {len(pairs)} steady steps of both runs (the same batches: same seed); "
        f"{fmt(r3w, 2)}× over all steps after the warm-up")
    sc = runs["gift-score"]
    r4 = ratio(sc["target_tokens_per_s"], steady("gift-cached", "target_tokens_per_s"))
    add("scoring pass ≥ 2.5× training tokens/s", r4, lambda v: v >= 2.5,
        f"{fmt(r4, 2)}× ({fmt(sc['target_tokens_per_s'])} vs {fmt(steady('gift-cached', 'target_tokens_per_s'))} target tok/s)")
    r5 = ratio(ca["peak_memory_gb"], runs["peer-openblas"]["peak_memory_gb"])
    r5r = ratio(ca["maxrss_gb"], runs["peer-openblas"]["maxrss_gb"])
    add("peak memory, cached scores ≤ 1.1× mlx_lm.lora", r5, lambda v: v <= 1.1,
        f"{fmt(r5, 2)}× MLX peak ({fmt(ca['peak_memory_gb'], 3)} vs {fmt(runs['peer-openblas']['peak_memory_gb'], 3)} GB); "
        f"max RSS {fmt(r5r, 2)}× ({fmt(ca['maxrss_gb'], 3)} vs {fmt(runs['peer-openblas']['maxrss_gb'], 3)} GB)")
    # Cross-check less sensitive to other processes on the cores: CPU seconds of the whole process (load,
    # compilation, every step, validation, save). Both trainers see every training row once in an epoch.
    cpu = {n: runs[n]["cpu_s"] for n in ("peer-openblas", "gift-cached", "gift-online") if n in runs}
    out.append({"name": "cross-check: CPU seconds per process (lower is faster)", "value": None, "met": None,
                "text": f"mlx_lm.lora {cpu['peer-openblas']:.0f} s, gift cached {cpu['gift-cached']:.0f} s "
                        f"({cpu['peer-openblas'] / cpu['gift-cached']:.2f}× less), gift online {cpu['gift-online']:.0f} s "
                        f"({cpu['gift-online'] / cpu['gift-cached']:.2f}× cached)"})
    rp = pad["gift"]["padded_share"], pad["mlx_lm.lora"]["padded_share"]
    add("less padding than mlx_lm.lora's batching", rp[0], lambda v: v < rp[1],
        f"{rp[0] * 100:.1f}% vs {rp[1] * 100:.1f}% padded positions")
    rs = runs["gift-cached"]["shapes"], runs["peer-openblas"]["shapes"]
    add("compiled step traced for only a few batch shapes", rs[0], lambda v: v <= 8,
        f"gift {rs[0]} shapes in {len(runs['gift-cached']['_steps'])} steps (mlx_lm.lora {rs[1]})")
    return out


def write_doc(path, section, key=None):
    """Replace the section between this report's markers (key: a --shape name has its own) or append it."""
    begin, end = (BEGIN, END) if key is None else (f"<!-- bench_train:{key}:begin -->", f"<!-- bench_train:{key}:end -->")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else "# Benchmarks\n\n"
    block = f"{begin}\n{section}{end}\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


# ----------------------------------------------------------------------------------------------------------
# --shape NAME: a published configuration, with model FLOP/s against the measured matmul rate.

SHAPE_LABELS = {
    "peer-f32": ("mlx_lm.lora", "float32", "OpenBLAS (LD_PRELOAD)"),
    "gift-f32": ("gift train, cached scores", "float32", "OpenBLAS (gift preload)"),
    "gift-online-f32": ("gift train --online-scores", "float32", "OpenBLAS (gift preload)"),
    "peer-q4": ("mlx_lm.lora (QLoRA)", "4-bit", "OpenBLAS (LD_PRELOAD)"),
    "gift-q4": ("gift train, cached scores", "4-bit", "OpenBLAS (gift preload)"),
    "peer-bf16": ("mlx_lm.lora as installed", "bfloat16", "wheel (reference)"),
    "gift-bf16": ("gift train as installed (scores itself first)", "bfloat16 → float32 (gift's cast)",
                  "OpenBLAS (gift preload)"),
}


def shape_efficiency(res):
    """Per run: model GFLOP/s over the counted steps and its fraction of the matmul rate (mean of the
    `gift doctor` rates measured before and after the runs), and the plan's estimates against the measured."""
    from gift_mlx import plan

    c, p = res["config"], res["profile"]
    rates = [r for r in (res["blas"]["before"][0], res["blas"]["after"][0]) if r]
    matmul = sum(rates) / len(rates) if rates else None
    from gift_mlx.blas import cores

    exps = res["blas"].get("exp_rate")
    if exps is None:  # runs before 2026-11-27 07:30 did not record it: this machine's rate, measured now
        from gift_mlx.doctor import exp_rate

        exps = res["blas"]["exp_rate_at_render"] = exp_rate()
    out = {"matmul_gflops": matmul, "exp_rate": exps}
    def flops(s, x, kind, every_head=False, rank=p["rank"]):
        """A step's model FLOPs; the LM head counted on its target tokens only (all that a loss on the targets
        needs), or on every position (every_head: what a trainer computing all the logits does)."""
        share = 1.0 if every_head else x["targets"] / x["tokens"]
        return x["tokens"] * plan.flops_per_token(s, x["shape"][1], rank if kind == "train" else 0, kind, head_share=share)

    def elements(s, x, kind, fast=False):  # gift_plan's element-wise count of a step (head on the targets)
        return x["tokens"] * plan.elementwise_per_token(s, x["shape"][1], kind, head_share=x["targets"] / x["tokens"],
                                                        fast=fast)

    for name, r in res["runs"].items():
        bits = 4 if name.endswith("q4") else 0
        s = plan.Shape.from_config(c, bits)
        if name.startswith("score"):
            x = {"tokens": r["tokens_per_s"] * r["seconds"], "targets": r["target_tokens"],
                 "shape": [None, res["data"]["mean"]]}
            f, f_all = flops(s, x, "forward"), flops(s, x, "forward", True)
            out[name] = {"gflops": f / r["seconds"] / 1e9, "gflops_every_head": f_all / r["seconds"] / 1e9,
                         "seconds": r["seconds"],
                         "plan_s": plan.seconds(f, elements(s, x, "forward"), matmul or 1, exps, cores())}
        elif name.startswith("decode"):  # each token attends to the prompt and half the completion on average
            context = r["prompt_tokens"] + r["max_tokens"] / 2
            out[name] = {"gflops": r["tokens"] * plan.flops_per_token(s, context, kind="decode") / r["seconds"] / 1e9}
        else:
            steps = r["_steps"]
            counted = steps if len(steps) == 1 else steps[res["warmup_steps"] if len(steps) == p["iters"] else 1:]
            f = sum(flops(s, x, "train") for x in counted)
            f_all = sum(flops(s, x, "train", True) for x in counted)
            if "online" in name:
                f += sum(flops(s, x, "forward") for x in counted)
                f_all += sum(flops(s, x, "forward", True) for x in counted)
            seconds = sum(x["time"] for x in counted)
            out[name] = {"gflops": f / seconds / 1e9, "gflops_every_head": f_all / seconds / 1e9,
                         "s_per_step": seconds / len(counted)}
            if name.startswith("gift"):
                s, cb = plan.as_computed(s, "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
                seq = max(x["shape"][1] for x in steps)
                share = sum(x["targets"] for x in steps) / sum(x["tokens"] for x in steps)
                fast = plan.uses_fastmath("cpu", cb)
                peak = plan.peak_bytes(s, p["batch_size"], seq, p["rank"], compute_bytes=cb,
                                       guide=s if "online" in name else None, target_share=share, fast=fast)
                el = sum(elements(s, x, "train", fast) + (elements(s, x, "forward") if "online" in name else 0)
                         for x in counted)
                est_s = plan.seconds(f, el, matmul or 1, exps) / len(counted)
                out[name].update(plan_peak_gb=peak / 1e9, plan_s_per_step=est_s)
        out[name]["efficiency_every_head"] = (out[name].get("gflops_every_head", out[name]["gflops"]) / matmul
                                              if matmul else None)
        out[name]["efficiency"] = out[name]["gflops"] / matmul if matmul else None
    return out


def pairs_table(pairs):
    """The alternating float32 pairs, each process whole, and their medians (the ratios below use the medians)."""
    med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None  # noqa: E731
    L = ["", "Alternating pairs (float32; odd pairs ran mlx_lm.lora first, even pairs gift first; the first gift run "
         "measures the pair check, the later ones read it from the cache):", "",
         "| pair | mlx_lm.lora wall s | gift wall s | whole-run ratio | s/step mlx_lm.lora | s/step gift | step ratio | "
         "max RSS GB mlx_lm.lora / gift | pair check in gift s |", "|---|---|---|---|---|---|---|---|---|"]
    for k, q in enumerate(pairs, 1):
        L.append(f"| {k} | {q['peer_wall_s']:.1f} | {q['gift_wall_s']:.1f} | {ratio(q['peer_wall_s'], q['gift_wall_s']):.2f}× | "
                 f"{fmt(q['peer_s_per_step'], 2)} | {fmt(q['gift_s_per_step'], 2)} | "
                 f"{fmt(ratio(q['peer_s_per_step'], q['gift_s_per_step']), 2)}× | {q['peer_maxrss_gb']:.2f} / "
                 f"{q['gift_maxrss_gb']:.2f} | {fmt(q['pair_check_s'], 1)} |")
    L.append(f"| median | {med([q['peer_wall_s'] for q in pairs]):.1f} | {med([q['gift_wall_s'] for q in pairs]):.1f} | "
             f"{med([ratio(q['peer_wall_s'], q['gift_wall_s']) for q in pairs]):.2f}× | "
             f"{fmt(med([q['peer_s_per_step'] for q in pairs]), 2)} | {fmt(med([q['gift_s_per_step'] for q in pairs]), 2)} | "
             f"{fmt(med([ratio(q['peer_s_per_step'], q['gift_s_per_step']) for q in pairs]), 2)}× | "
             f"{med([q['peer_maxrss_gb'] for q in pairs]):.2f} / {med([q['gift_maxrss_gb'] for q in pairs]):.2f} | – |")
    return L


def shape_report(res):
    c, p, runs = res["config"], res["profile"], res["runs"]
    eff = shape_efficiency(res)
    L = []
    w = L.append
    w(f"## At the {res['shape']} shape: gift against mlx_lm.lora, and against the machine's matmul rate")
    w("")
    w(f"- Date: {res['date']}; wall time {res['wall_s'] / 60:.1f} min (building the models: {res['build_s']:.0f} s)")
    L += run_lines(res)
    w(f"- Load average (1 min) at start / end: {res['load'][0]:.2f} / {res['load'][1]:.2f} (shared cores; per run below)")
    w(f"- Matmul rate (`gift doctor`, float32 1024², OpenBLAS) before / after the runs: "
      f"{fmt(res['blas']['before'][0], 1)} / {fmt(res['blas']['after'][0], 1)} GFLOP/s; efficiency below = model "
      f"FLOP/s ÷ their mean ({fmt(eff['matmul_gflops'], 1)} GFLOP/s)")
    w(f"- Model: {c['model_type']}, {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, FFN "
      f"{c['intermediate_size']}, {c['num_attention_heads']}/{c['num_key_value_heads']} heads, vocabulary "
      f"{c['vocab_size']}, tied embeddings {c['tie_word_embeddings']}, rope θ {c['rope_theta']:g}: "
      f"{res['parameters'] / 1e6:.0f}M parameters; random weights (toy.build_model), saved in float32, bfloat16 "
      f"and 4-bit (mlx_lm.utils.quantize_model, group 64, from the bfloat16 weights); the instruct model is another "
      f"random draw of the same shape.")
    w(f"- Data: {res['data']['rows']} training rows of arithmetic chains, mean {res['data']['mean']:.0f} tokens "
      f"(longest {res['data']['max']}), max_seq_length {p['max_seq_length']}; both trainers: LoRA rank {p['rank']}, "
      f"scale {p['alpha'] / p['rank']:g}, dropout 0.05 on every linear layer of every block, batch {p['batch_size']}, "
      f"AdamW lr 2e-4, seed 0. Steps: {p['iters']} (float32; the first {res['warmup_steps']} not counted), "
      f"{p['q4_iters']} (4-bit; step 1 not counted), {p['bf16_iters']} (bfloat16; step 1 counted when it is the only one).")
    w("- Model FLOPs per token (gift_mlx.plan.flops_per_token): every matmul of the forward (blocks, causal attention, "
      "LM head, LoRA), the backward through the activations and LoRA's weight gradients, on non-padding tokens, "
      "with the LM head counted on the target tokens only (all a loss or a score on the targets needs; gift computes "
      "no more where its logits are chunked, mlx_lm.lora computes the head at every position); online scoring adds "
      "the guide's forward; scoring is the forward only. The ratios below also give the share counting the head at "
      "every position.")
    w("")
    w("| configuration | weights | BLAS | steps counted | s/step | target tok/s | all tok/s | model GFLOP/s | "
      "% of matmul rate | MLX peak GB | max RSS GB | wall s |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (label, weights, blas) in SHAPE_LABELS.items():
        if name not in runs:
            continue
        r, e = runs[name], eff[name]
        wm = r["warm"] or {}
        w(f"| {label} | {weights} | {blas} | {wm.get('steps', 0)}{' (incl. step 1)' if wm.get('includes_step_1') else ''} | "
          f"{fmt(wm.get('s_per_step'), 2)} | {fmt(wm.get('target_tokens_per_s'), 1)} | {fmt(wm.get('tokens_per_s'), 1)} | "
          f"{fmt(e['gflops'], 1)} | {fmt(e['efficiency'] and 100 * e['efficiency'], 0)}% | {fmt(r['peak_memory_gb'], 2)} | "
          f"{fmt(r['maxrss_gb'], 2)} | {r['wall_s']:.0f} |")
    for name in ("score-f32", "score-q4"):
        if name in runs:
            r, e = runs[name], eff[name]
            w(f"| gift score (train split) | {'float32' if 'f32' in name else '4-bit'} | OpenBLAS (gift preload) | – | – | "
              f"{fmt(r['target_tokens_per_s'], 1)} | {fmt(r['tokens_per_s'], 1)} | {fmt(e['gflops'], 1)} | "
              f"{fmt(e['efficiency'] and 100 * e['efficiency'], 0)}% | – | {fmt(r['maxrss_gb'], 2)} | {r['wall_s']:.0f} |")
    if "decode-f32" in runs:
        r, e = runs["decode-f32"], eff["decode-f32"]
        w(f"| gift eval sampling ({r['samples']} samples × {r['max_tokens']} tokens decoding together) | float32 | "
          f"OpenBLAS (gift preload) | – | – | – | {r['tokens'] / r['seconds']:.1f} generated | {fmt(e['gflops'], 1)} | "
          f"{fmt(e['efficiency'] and 100 * e['efficiency'], 0)}% | – | {fmt(r['maxrss_gb'], 2)} | {r['wall_s']:.0f} |")
    if res["blas"].get("q4_gflops"):
        from gift_mlx import plan

        q4 = res["blas"]["q4_gflops"]
        q4 = q4 if isinstance(q4, dict) else {"float32": q4}  # runs before 2026-11-27 06:30 measured float32 only
        s4 = plan.Shape.from_config(c, 4)
        step = p["batch_size"] * res["data"]["mean"] * plan.flops_per_token(s4, res["data"]["mean"], p["rank"])
        rates = ", ".join(f"{v:.2f} GFLOP/s with {k} activations" for k, v in q4.items())
        slow = min(q4.values())
        w("")
        w(f"MLX's 4-bit matmul on this CPU (1024², group 64, measured in the same run): {rates}. gift computes a "
          f"4-bit model in float32 on a CPU when the copy fits (models.cpu_float32 dequantizes it with mlx-lm); a "
          f"QLoRA step that stays in 4-bit ({step / 1e9:,.0f} GFLOP here) would take about "
          f"{step / slow / 1e9:,.0f} s at {slow:.2f} GFLOP/s" + ("" if "peer-q4" in runs else
                                                             " (mlx_lm.lora on the 4-bit model not run: pass --peer-q4)") + ".")
    if len(res.get("pairs") or []) > 1:
        L += pairs_table(res["pairs"])
    w("")
    w("### Ratios and goals")
    w("")
    w("| comparison | measured | goal | met? |")
    w("|---|---|---|---|")

    def tok(n):
        return ((runs.get(n) or {}).get("warm") or {}).get("target_tokens_per_s")

    def row(text, value, goal, ok):
        met = "–" if value is None or ok is None else ("yes" if ok(value) else "**no**")
        w(f"| {text} | {value if isinstance(value, str) else fmt(value, 2)} | {goal} | {met} |")

    for g, peer, what in (("gift-f32", "peer-f32", "float32, OpenBLAS both"), ("gift-q4", "peer-q4", "4-bit, OpenBLAS both"),
                          ("gift-bf16", "peer-bf16", "bfloat16 checkpoint, each out of the box")):
        if g in runs and peer in runs:
            target = 1.3 if res["shape"] == "qwen2.5-0.5b" else 1.2  # issue 22's goals per shape
            goal = f"≥ {target}×" if g == "gift-f32" else "–"
            ok = (lambda v: v >= target) if g == "gift-f32" else None
            pairs = res.get("pairs") or [] if g == "gift-f32" else []
            of = f" (median of {len(pairs)} alternating pairs)" if len(pairs) > 1 else ""
            med = lambda f: statistics.median(f(q) for q in pairs)  # noqa: E731
            row(f"speed per step, {what}: gift ÷ mlx_lm.lora (target tok/s){of}",
                med(lambda q: ratio(q["peer_s_per_step"], q["gift_s_per_step"])) if of else ratio(tok(g), tok(peer)), goal, ok)
            row(f"whole run, {what}: mlx_lm.lora wall ÷ gift wall (start-up included; "
                f"{'gift scores first in the same run' if g == 'gift-bf16' else 'gift score run separately, not included'}){of}",
                med(lambda q: ratio(q["peer_wall_s"], q["gift_wall_s"])) if of else ratio(runs[peer]["wall_s"], runs[g]["wall_s"]),
                goal, ok)
            row(f"peak memory, {what}: gift ÷ mlx_lm.lora, MLX peak (max RSS: "
                f"{fmt(ratio(runs[g]['maxrss_gb'], runs[peer]['maxrss_gb']), 2)}×)",
                ratio(runs[g]["peak_memory_gb"], runs[peer]["peak_memory_gb"]), "≤ 1.0×" if g == "gift-f32" else "–",
                (lambda v: v <= 1.0) if g == "gift-f32" else None)
    if "gift-f32" in eff:
        row(f"training (gift, float32): model FLOP/s ÷ matmul rate (counting the LM head at every position: {fmt(eff['gift-f32']['efficiency_every_head'], 2)})", eff["gift-f32"]["efficiency"], "≥ 0.60", lambda v: v >= 0.6)
    if "score-f32" in eff:
        row(f"scoring pass (gift score, float32): model FLOP/s ÷ matmul rate (counting the LM head at every position: {fmt(eff['score-f32']['efficiency_every_head'], 2)})", eff["score-f32"]["efficiency"], "≥ 0.75",
            lambda v: v >= 0.75)
    if "gift-online-f32" in eff:
        row(f"online scoring (gift, float32): model FLOP/s ÷ matmul rate (counting the LM head at every position: {fmt(eff['gift-online-f32']['efficiency_every_head'], 2)})", eff["gift-online-f32"]["efficiency"], "–", None)
    if "decode-f32" in eff:
        row("eval decoding (float32): model FLOP/s ÷ matmul rate (batch-8 decoding reads every weight per token: "
            "memory-bound)", eff["decode-f32"]["efficiency"], "–", None)
    w("")
    plan = __import__('gift_mlx.plan').plan
    w("### `gift plan`'s estimates against these runs")
    w("")
    w("| run | estimated MLX peak GB | measured | error | estimated max RSS GB (`gift plan`) | measured | error | "
      "estimated s/step | measured | error |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("gift-f32", "gift-online-f32", "gift-q4", "gift-bf16"):
        if name in eff and "plan_peak_gb" in eff[name]:
            e, r = eff[name], runs[name]
            rss = e["plan_peak_gb"] + plan.OVERHEAD / 1e9
            pe, re_ = ratio(e["plan_peak_gb"], r["peak_memory_gb"]), ratio(rss, r["maxrss_gb"])
            te = ratio(e["plan_s_per_step"], e["s_per_step"])
            w(f"| {name} | {e['plan_peak_gb']:.2f} | {r['peak_memory_gb']:.2f} | {fmt(pe and 100 * (pe - 1), 0)}% | "
              f"{rss:.2f} | {r['maxrss_gb']:.2f} | {fmt(re_ and 100 * (re_ - 1), 0)}% | "
              f"{e['plan_s_per_step']:.1f} | {e['s_per_step']:.1f} | {fmt(te and 100 * (te - 1), 0)}% |")
    for name in ("score-f32", "score-q4"):
        if name in eff:
            e = eff[name]
            te = ratio(e["plan_s"], e["seconds"])
            w(f"| {name} (the whole scoring pass, s) | – | – | – | – | – | – | {e['plan_s']:.1f} | {e['seconds']:.1f} | "
              f"{fmt(te and 100 * (te - 1), 0)}% |")
    w("")
    exp_note = ("measured in the same run" if "exp_rate_at_render" not in res["blas"]
                else "measured on this machine when this section was rendered; the run did not record it")
    w(f"The plan's time (plan.seconds) is the model FLOPs at the measured matmul rate plus plan.elementwise_per_token's "
      f"values × plan.ELEMENT_COST ({plan.ELEMENT_COST}) at the exp rate ({eff['exp_rate'] / 1e6:,.0f} M/s on one "
      f"stream, {exp_note}), the scoring pass's element-wise work over one stream per core; its memory, "
      "plan.peak_bytes with the coefficients fitted on small models (plan.ACT).")
    w("")
    runs_table(res, w)
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="render a bench_train.py run's section again from its results.json")
    ap.add_argument("results")
    ap.add_argument("--doc", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"))
    a = ap.parse_args()
    res = json.loads(Path(a.results).read_text())
    if "shape" in res:
        write_doc(Path(a.doc), shape_report(res), key=res["shape"])
    else:
        write_doc(Path(a.doc), report(res))
    print(f"written: {a.doc}")
