"""`gift eval`: sample every problem n times per model, grade each sample, write the records and the summary.

Problems come from problems.py (published record shapes), the metrics (Average@n, pass@k, maj@k for
k = 1, 2, 4, ... n, each from all n samples) from metrics.py, answers are graded by grading.py and the scaling
plot drawn by plot.py. Prompts go through the model's chat template and are sampled with mlx-lm's
continuous-batching BatchGenerator; each problem's prompt is prefilled once and its KV cache shared by its n
samples, so the cost of the prompt is paid once, not n times. The sequences in flight are bounded by memory
(fit_batch), and a step with non-finite logits stops the run (models.FiniteSampler).
"""

import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import grading, plot
from .data import render
from .errors import GiftError
from .metrics import ks_for, sample_metrics
from .models import local_path
from .config import COUNT_MAX, SEED_RANGE, bounded, check_fields, check_sampling
from .outputs import LineWriter, check_not_inside, staged_folder, write_json, write_text
from .problems import prompt_messages, read_problems

SEQUENCES_SHARE = 0.25  # of the memory the weights leave: at most this much for the sequences in flight

@dataclass
class EvalSettings:
    samples: int = bounded(16, 0, 2**20)
    temperature: float = bounded(1.0, 0, 100)
    top_p: float = bounded(1.0, 0, 1, open_lo=True)
    max_tokens: int = bounded(512, 1, 2**24)
    instruction: Optional[str] = None  # None: the default for each problem's kind; "" for none
    greedy: bool = False
    seed: int = bounded(0, *SEED_RANGE)
    batch_size: int = bounded(64, 1, 2**16)
    limit: Optional[int] = bounded(None, 1, COUNT_MAX)

    def check(self):
        """One-line errors for option values that cannot give a meaningful run (config.check_fields: types,
        ranges, finiteness; then the rules between options)."""
        check_fields(self, flags=True)
        check_sampling(self.temperature, self.top_p)
        rules = [
            (self.samples > 0 or self.greedy, "--samples 0 needs --greedy (nothing would be evaluated)"),
            (self.temperature > 0 or self.samples <= 1, "--temperature 0 makes all samples identical: use --greedy"),
        ]
        for ok, message in rules:
            if not ok:
                raise GiftError(message)


def prompt_tokens(tokenizer, messages, where=""):
    """Token ids of the prompt through the chat template (plain text for a tokenizer that has none)."""
    if getattr(tokenizer, "has_chat_template", False):
        return render(tokenizer, messages, where, add_generation_prompt=True)
    return tokenizer.encode("\n\n".join(m["content"] for m in messages) + "\n")


# ---- batched generation -----------------------------------------------------------------------------------


def prefill(model, tokens, step=2048):
    """A KV cache holding `tokens`, computed once so that all samples of a problem can share it."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    for i in range(0, len(tokens), step):  # chunks bound the attention memory of long prompts
        model(mx.array(tokens[i : i + step])[None], cache=cache)
        mx.eval([c.state for c in cache])
    return cache


def memory_bytes():
    """The memory MLX may use on this machine: a GPU's recommended working set or size, else the RAM."""
    import mlx.core as mx

    info = mx.device_info()
    return (info.get("max_recommended_working_set_size") or info.get("memory_size")
            or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def sequence_bytes(model, tokens):
    """Bytes one decoding sequence of up to `tokens` tokens holds: its KV cache, allocated in steps of 256
    tokens, three times (the prefill batch, its merge into the decoding batch, a batch cache growing by
    copying: MLX's peak was 2.5 times the cache on the toy model, 256 to 4096 sequences), and four rows of
    logits (logits, log-probabilities, the sampler's scaled copy and its noise). Measured on a one-token
    forward pass, so any architecture's cache counts as it is."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array([[0]]), cache=cache)
    mx.eval(logits, [c.state for c in cache])
    step = sum(c.nbytes for c in cache)  # one 256-token allocation step (or a fixed-size state)
    return 3 * step * -(-tokens // 256) + 4 * logits.size * logits.itemsize


def fit_batch(model, name, prompts, settings, log, share=SEQUENCES_SHARE):
    """--batch-size, lowered so that the sequences in flight take at most `share` of the memory the weights
    leave (their KV caches and logits, sequence_bytes); with a log line when it is lowered."""
    from mlx.utils import tree_flatten

    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    per_sequence = sequence_bytes(model, max(map(len, prompts)) + settings.max_tokens)
    budget = share * max(memory_bytes() - weights, 0)
    fits = int(budget // per_sequence)
    if fits < 1:
        raise GiftError(f"{name}: one sequence of {max(map(len, prompts))} prompt + {settings.max_tokens} generated "
                        f"tokens needs {per_sequence / 1e9:.1f} GB of KV cache and logits, more than "
                        f"{budget / 1e9:.1f} GB (a quarter of the memory the weights leave): lower --max-tokens")
    if fits < settings.batch_size:
        log(f"{name}: --batch-size {settings.batch_size} lowered to {fits}: that many sequences in flight fill "
            f"{fits * per_sequence / 1e9:.1f} GB of KV cache and logits, a quarter of the memory the weights leave")
    return min(settings.batch_size, fits)


def generate_batched(model, tokenizer, prompts, n, sampler, max_tokens, batch_size, name="model"):
    """Yield (prompt index, sample index, generated token ids, finish reason) for n samples of every prompt.

    Up to batch_size sequences decode together in mlx-lm's BatchGenerator; a prompt joins when there is
    room, its prefix prefilled once and inserted n times with only the last token left to process. A step
    whose logits are not finite stops it with an error naming the model (models.FiniteSampler).
    """
    from mlx_lm.generate import BatchGenerator

    from .models import FiniteSampler

    sampler = FiniteSampler(sampler, name)
    gen = BatchGenerator(
        model, max_tokens=max_tokens, stop_tokens=[[t] for t in tokenizer.eos_token_ids], sampler=sampler,
        completion_batch_size=batch_size, prefill_batch_size=batch_size,
    )
    owner, tokens, pending, in_flight = {}, {}, iter(enumerate(prompts)), 0
    try:
        while True:
            while in_flight < batch_size and (item := next(pending, None)) is not None:
                i, p = item
                cache = prefill(model, p[:-1])  # BatchKVCache.merge copies it, so one cache serves all n
                uids = gen.insert([p[-1:]] * n, caches=[cache] * n, all_tokens=[list(p[:-1]) for _ in range(n)])
                owner.update({u: (i, j) for j, u in enumerate(uids)})
                in_flight += n
            if in_flight == 0:
                sampler.check(pending=0)
                return
            done = gen.next_generated()
            sampler.check()  # before any of these tokens is read
            for r in done:
                if r.finish_reason != "stop":  # the stop token itself is not part of the completion
                    tokens.setdefault(r.uid, []).append(r.token)
                if r.finish_reason is not None:
                    in_flight -= 1
                    yield (*owner.pop(r.uid), tokens.pop(r.uid, []), r.finish_reason)
    finally:
        gen.close()


# ---- one model --------------------------------------------------------------------------------------------


def display_names(models):
    """Short unique names for model paths or Hub ids: a folder's name, or the id itself."""
    names = []
    for m in models:
        p = Path(m)
        name = p.name if p.exists() else str(m)
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
    return names


def run_mode(model, tokenizer, problems, prompts, settings, mode, write, progress, label, batch_size):
    """Generate and grade one mode ('sample' or 'greedy'); write records; return per-problem flags, keys, stats."""
    from mlx_lm.sample_utils import make_sampler
    from tqdm import tqdm

    n = settings.samples if mode == "sample" else 1
    temperature = settings.temperature if mode == "sample" else 0.0
    sampler = make_sampler(temperature, settings.top_p)
    correct = [[False] * n for _ in problems]
    keys = [[None] * n for _ in problems]
    stats = {"generated_tokens": 0, "truncated": 0, "no_answer": 0, "grading_seconds": 0.0}
    start = time.perf_counter()
    with tqdm(total=len(problems) * n, desc=f"{label} {mode}", unit="seq", disable=not progress) as bar:
        for i, j, ids, finish in generate_batched(model, tokenizer, prompts, n, sampler, settings.max_tokens,
                                                  batch_size, label):
            text = tokenizer.decode(ids)
            graded = time.perf_counter()
            judged = grading.judge(text, problems[i].reference, problems[i].n_choices)
            stats["grading_seconds"] += time.perf_counter() - graded
            correct[i][j], keys[i][j] = judged.correct, judged.key
            stats["generated_tokens"] += len(ids)
            stats["truncated"] += finish == "length"
            stats["no_answer"] += judged.answer is None
            write({"problem": i, "line": problems[i].line, "mode": mode, "sample": j,
                   "reference": problems[i].reference, "answer": judged.answer, "correct": judged.correct,
                   "found": judged.found, "judge": judged.judge, "finish_reason": finish, "tokens": len(ids),
                   "completion": text})
            bar.update(1)
    stats["seconds"] = time.perf_counter() - start
    stats["tokens_per_second"] = stats["generated_tokens"] / max(stats["seconds"], 1e-9)
    stats.update(truncated=stats["truncated"] / (len(problems) * n), no_answer=stats["no_answer"] / (len(problems) * n))
    return correct, keys, stats


def evaluate_model(model_id, name, problems, settings, write, progress=True, log=print, trust_remote_code=False):
    """Load one model, run greedy and/or sampling over the problems, and return its summary entry."""
    import mlx.core as mx

    from .models import cpu_float32, load_model, wire_memory

    model, tokenizer, _ = load_model(model_id, trust_remote_code=trust_remote_code)
    cpu_float32(model, name, log)
    wire_memory()
    prompts = [prompt_tokens(tokenizer, prompt_messages(p, settings.instruction), p.where) for p in problems]
    batch_size = fit_batch(model, name, prompts, settings, log)
    entry = {"model": str(model_id), "name": name}

    def write_record(r):
        write({"model": name, **r})

    if settings.greedy:
        correct, _, entry["greedy"] = run_mode(model, tokenizer, problems, prompts, settings, "greedy",
                                               write_record, progress, name, batch_size)
        entry["greedy_accuracy"] = float(np.mean([c[0] for c in correct]))
        log(f"{name}: greedy accuracy {entry['greedy_accuracy']:.1%}")
    if settings.samples:
        mx.random.seed(settings.seed)  # every model sees the same sampling seed, and a rerun the same samples
        correct, keys, entry["sampling"] = run_mode(model, tokenizer, problems, prompts, settings, "sample",
                                                    write_record, progress, name, batch_size)
        entry.update(sample_metrics(correct, keys))
        n = settings.samples
        log(f"{name}: Average@{n} {entry['average@k'][n]:.1%}  pass@{n} {entry['pass@k'][n]:.1%}  "
            f"maj@{n} {entry['maj@k'][n]:.1%}  ({entry['sampling']['tokens_per_second']:.0f} tok/s)")
    for mode in ("greedy", "sampling"):
        if cut_off(entry, mode) > 0.5:
            log(f"warning: {name}: {cut_off(entry, mode):.0%} of the {mode} completions hit --max-tokens "
                f"{settings.max_tokens}; their answers may be cut off (raise --max-tokens)")
    del model
    mx.clear_cache()  # free this model's buffers before the next one loads
    return entry


# ---- outputs ----------------------------------------------------------------------------------------------


@contextmanager
def staged_output(out, overwrite=False, inputs=()):
    """Yield a hidden staging folder that replaces `out` only when the block completes (outputs.staged_folder).

    An interrupted or failed run removes its staging folder and leaves `out` as it was. An existing non-empty
    `out` is replaced only with overwrite=True and only when it holds a previous evaluation (summary.json).
    """
    out = Path(out)
    check_not_inside(out, inputs, "eval output")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite or not (out / "summary.json").is_file():
            raise GiftError(f"{out}: output folder exists and is not empty (use --overwrite to replace an earlier "
                            "evaluation, or choose another --out)")
    with staged_folder(out) as stage:
        yield stage


LEGEND = (
    "Every sampled row is estimated from all {n} samples of each problem. Average@{n}: the accuracy over all {n} "
    "samples (the paper's metric; its expectation is the same for every k, so it is one row). pass@k: the chance "
    "that at least one of k samples is right, by the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al. "
    "(2021) from c right samples, so pass@1 = Average@{n}. maj@k: the accuracy of the majority answer of k "
    "samples, the exact mean over all C(n, k) subsets of k samples (samples without an answer do not vote, a "
    "subset without any answer is wrong, a tie goes to the answer seen first among the {n} samples). "
    "All values in %."
)


def cut_off(entry, mode="sampling"):
    """The share of a model's completions that stopped at --max-tokens (0 when the mode did not run)."""
    return entry.get(mode, {}).get("truncated", 0.0)


def markdown_table(summary):
    """Metrics side by side, one column per model, in %, with what each metric is and a warning when most
    completions were cut off by --max-tokens."""
    models, settings = summary["models"], summary["settings"]
    rows = [("greedy accuracy", lambda m: m.get("greedy_accuracy"))] if settings["greedy"] else []
    if summary["ks"]:  # Average@k is one number for every k (metrics.average)
        n = settings["samples"]
        rows.append((f"Average@{n}", lambda m: m["average@k"][n]))
    for metric in ("pass@k", "maj@k"):
        rows += [(metric.replace("@k", f"@{k}"), lambda m, metric=metric, k=k: m[metric][k]) for k in summary["ks"]]
    if summary["ks"]:
        rows.append((f"cut off at --max-tokens {settings['max_tokens']}", cut_off))
    lines = [
        f"Evaluation of `{summary['data']}` ({summary['problems']} problems, {settings['samples']} samples, "
        f"temperature {settings['temperature']}, top-p {settings['top_p']}).",
        "",
        "| metric (%) | " + " | ".join(m["name"] for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    lines += [f"| {label} | " + " | ".join(f"{100 * get(m):.1f}" for m in models) + " |" for label, get in rows]
    if summary["ks"]:
        lines += ["", LEGEND.format(n=settings["samples"])]
    cut = [m["name"] for m in models if max(cut_off(m), cut_off(m, "greedy")) > 0.5]
    if cut:
        lines += ["", f"**Warning:** most completions of {', '.join(cut)} hit --max-tokens {settings['max_tokens']}: "
                  "their answers may be cut off; raise --max-tokens."]
    return "\n".join(lines) + "\n"


def write_summary(folder, summary):
    write_json(folder / "summary.json", summary)
    write_text(folder / "results.md", markdown_table(summary))
    if summary["ks"]:
        plot.scaling(folder / "scaling.png", summary)


# ---- the whole run ----------------------------------------------------------------------------------------


def evaluate(models, data, out, overwrite=False, progress=True, log=print, trust_remote_code=False, **options):
    """Evaluate each model in turn on `data`; write samples.jsonl, summary.json, results.md, scaling.png to `out`.

    options are EvalSettings fields (samples, temperature, top_p, max_tokens, instruction, greedy, seed,
    batch_size, limit). Returns the summary dict.
    """
    settings = EvalSettings(**options)
    settings.check()
    if not models:
        raise GiftError("give at least one --model")
    problems = read_problems(data, settings.limit)
    for model_id in models:  # a typo or an unreachable Hub id in the last model must not cost the first ones
        local_path(model_id)
    summary = {"data": str(data), "problems": len(problems), "settings": asdict(settings),
               "ks": ks_for(settings.samples), "models": []}
    with staged_output(out, overwrite, [*models, data]) as stage, LineWriter(stage / "samples.jsonl") as f:
        for model_id, name in zip(models, display_names(models)):
            entry = evaluate_model(model_id, name, problems, settings, f.write, progress, log, trust_remote_code)
            summary["models"].append(entry)
        f.close()
        write_summary(stage, summary)
    return summary
