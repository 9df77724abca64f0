"""Sampling-based evaluation with test-time scaling: Average@k, unbiased pass@k and maj@k for k = 1, 2, 4, ... n.

Problems are read as they are published (GSM8K, MATH, generic, multiple choice, chat), prompted through the
model's chat template, and sampled with mlx-lm's continuous-batching BatchGenerator. Each problem's prompt is
prefilled once and its KV cache shared by its n samples, so the cost of the prompt is paid once, not n times.
"""

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import grading, plot
from .errors import GiftError
from .export import staged_folder
from .models import local_path

DEFAULT_INSTRUCTIONS = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "choice": "Answer with the letter of the correct choice, and put it within \\boxed{}.",
}
SHAPES = "GSM8K question+answer, MATH problem+solution, prompt/question+answer, question+choices+answer, " \
         "or messages with a reference"


@dataclass
class Problem:
    line: int
    messages: list  # the conversation up to the answer, without the instruction
    reference: str  # a math answer, or a choice letter when n_choices is set
    n_choices: int = 0

    @property
    def kind(self):
        return "choice" if self.n_choices else "math"


@dataclass
class EvalSettings:
    samples: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    instruction: str = None  # None: the default for each problem's kind; "" for none
    greedy: bool = False
    seed: int = 0
    batch_size: int = 64
    limit: int = None

    def check(self):
        """One-line errors for option values that cannot give a meaningful run."""
        rules = [
            (self.samples >= 0, "--samples must be >= 0"),
            (self.samples > 0 or self.greedy, "--samples 0 needs --greedy (nothing would be evaluated)"),
            (self.temperature >= 0, "--temperature must be >= 0"),
            (self.temperature > 0 or self.samples <= 1, "--temperature 0 makes all samples identical: use --greedy"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.max_tokens >= 1, "--max-tokens must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.limit is None or self.limit >= 1, "--limit must be >= 1"),
        ]
        for ok, message in rules:
            if not ok:
                raise GiftError(message)


# ---- reading problems -------------------------------------------------------------------------------------


def _string(record, key, where):
    if not isinstance(record[key], str):
        raise GiftError(f"{where}: field '{key}' must be a string, got {type(record[key]).__name__}")
    return record[key]


def _reference(record, where):
    """The reference answer of a non-choice record: GSM8K '#### N', a plain answer, a boxed solution, a completion."""
    if "answer" in record:
        answer = record["answer"]
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise GiftError(f"{where}: field 'answer' must be a string or number, got {type(answer).__name__}")
        answer = str(answer)
        return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()
    for key, extract in (("solution", grading.last_boxed), ("completion", grading.extract_answer)):
        if key in record:
            found = extract(_string(record, key, where))
            if found is None:
                raise GiftError(f"{where}: field '{key}' states no final answer (no \\boxed{{}} or '#### N')")
            return found
    return None


def _choice_problem(record, where, line):
    choices, labels = record["choices"], None
    if isinstance(choices, dict) and {"text", "label"} <= set(choices):  # ARC: {"text": [...], "label": [...]}
        choices, labels = choices["text"], [str(x) for x in choices["label"]]
    if not isinstance(choices, list) or not 2 <= len(choices) <= 26 or not all(isinstance(c, str) for c in choices):
        raise GiftError(f"{where}: field 'choices' must be a list of 2 to 26 strings")
    key = "answer" if "answer" in record else "answerKey"
    answer = record.get(key)
    if labels and str(answer) in labels:
        answer = labels.index(str(answer))
    letter = grading.choice_letter(answer, len(choices))
    if letter is None:
        raise GiftError(f"{where}: field '{key}' must be a choice index or letter among {len(choices)} choices")
    options = "\n".join(f"{grading.LETTERS[i]}. {c}" for i, c in enumerate(choices))
    question = _string(record, "question", where)
    return Problem(line, [{"role": "user", "content": f"{question}\n\n{options}"}], letter, len(choices))


def _chat_problem(record, where, line):
    messages = record["messages"]
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise GiftError(f"{where}: 'messages' must be a non-empty list of {{role, content}} string objects")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    reference = _reference({k: v for k, v in record.items() if k in ("answer", "solution")}, where)
    if messages[-1]["role"] == "assistant":  # the final assistant turn is the reference unless one is given
        last = messages.pop()["content"]
        reference = reference if reference is not None else (grading.extract_answer(last) or last.strip())
    if reference is None or not messages or messages[-1]["role"] != "user":
        raise GiftError(f"{where}: 'messages' must end with a user turn (plus an assistant reference or an 'answer')")
    return Problem(line, messages, reference)


def to_problem(record, where, line=0):
    """A Problem from one record in any supported published shape."""
    if "messages" in record:
        return _chat_problem(record, where, line)
    if "choices" in record and "question" in record and ({"answer", "answerKey"} & set(record)):
        return _choice_problem(record, where, line)
    question = next((k for k in ("problem", "question", "prompt") if k in record), None)
    reference = _reference(record, where) if question else None
    if reference is None:
        raise GiftError(f"{where}: unknown eval record shape (fields: {', '.join(sorted(record)) or 'none'}); "
                        f"expected {SHAPES}")
    return Problem(line, [{"role": "user", "content": _string(record, question, where)}], reference)


def read_problems(data, limit=None):
    """Problems from a JSONL file (or a data folder's test.jsonl), the first `limit` of them."""
    from .data import read_jsonl

    path = Path(data)
    path = path / "test.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise GiftError(f"{data}: no such eval file (or folder with test.jsonl)")
    rows = read_jsonl(path)[:limit]
    return [to_problem(record, f"{path}:{n}", n) for n, record in rows]


def prompt_messages(problem, instruction=None):
    """The problem's conversation with the instruction appended to its last user turn."""
    instruction = DEFAULT_INSTRUCTIONS[problem.kind] if instruction is None else instruction
    messages = [dict(m) for m in problem.messages]
    if instruction:
        messages[-1]["content"] += "\n" + instruction
    return messages


def prompt_tokens(tokenizer, messages):
    """Token ids of the prompt through the chat template (plain text for a tokenizer that has none)."""
    if getattr(tokenizer, "has_chat_template", False):
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return tokenizer.encode("\n\n".join(m["content"] for m in messages) + "\n")


# ---- metrics ----------------------------------------------------------------------------------------------


def ks_for(n):
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n] if n >= 1 else []
    return ks + [n] if ks and ks[-1] != n else ks


def pass_at_k(n, c, k):
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise GiftError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def average_at_k(correct, k):
    """Average@k: mean accuracy over the first k samples of every problem (Average@16 for a 16-sample run)."""
    return float(np.mean([np.mean(c[:k]) for c in correct]))


def maj_at_k(correct, keys, k):
    """maj@k: accuracy of the majority answer among k samples, averaged over the n // k disjoint groups of k.

    Averaging over groups uses all n samples (less variance than only the first k); a group without any
    extracted answer counts as wrong.
    """
    scores = []
    for c, key in zip(correct, keys):
        for g in range(0, len(c) - k + 1, k):
            i = grading.majority_index(key[g : g + k])
            scores.append(i is not None and bool(c[g + i]))
    return float(np.mean(scores))


def sample_metrics(correct, keys):
    """{metric: {k: value}} for per-problem lists of correctness flags and canonical answers (n samples each)."""
    n = len(correct[0])
    ks = ks_for(n)
    return {
        "average@k": {k: average_at_k(correct, k) for k in ks},
        "pass@k": {k: float(np.mean([pass_at_k(n, int(sum(c)), k) for c in correct])) for k in ks},
        "maj@k": {k: maj_at_k(correct, keys, k) for k in ks},
    }


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


def generate_batched(model, tokenizer, prompts, n, sampler, max_tokens, batch_size, on_finish=None):
    """Yield (prompt index, sample index, generated token ids, finish reason) for n samples of every prompt.

    Up to batch_size sequences decode together in mlx-lm's BatchGenerator; a prompt joins when there is
    room, its prefix prefilled once and inserted n times with only the last token left to process.
    """
    from mlx_lm.generate import BatchGenerator

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
                return
            for r in gen.next_generated():
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


def run_mode(model, tokenizer, problems, prompts, settings, mode, write, progress, label):
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
                                                  settings.batch_size):
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

    from .models import cpu_float32, load_model

    model, tokenizer, _ = load_model(model_id, trust_remote_code=trust_remote_code)
    cpu_float32(model, name, log)
    prompts = [prompt_tokens(tokenizer, prompt_messages(p, settings.instruction)) for p in problems]
    entry = {"model": str(model_id), "name": name}

    def write_record(r):
        write({"model": name, **r})

    if settings.greedy:
        correct, _, entry["greedy"] = run_mode(model, tokenizer, problems, prompts, settings, "greedy",
                                               write_record, progress, name)
        entry["greedy_accuracy"] = float(np.mean([c[0] for c in correct]))
        log(f"{name}: greedy accuracy {entry['greedy_accuracy']:.3f}")
    if settings.samples:
        mx.random.seed(settings.seed)  # every model sees the same sampling seed, and a rerun the same samples
        correct, keys, entry["sampling"] = run_mode(model, tokenizer, problems, prompts, settings, "sample",
                                                    write_record, progress, name)
        entry.update(sample_metrics(correct, keys))
        n = settings.samples
        log(f"{name}: Average@{n} {entry['average@k'][n]:.3f}  pass@{n} {entry['pass@k'][n]:.3f}  "
            f"maj@{n} {entry['maj@k'][n]:.3f}  ({entry['sampling']['tokens_per_second']:.0f} tok/s)")
    del model
    mx.clear_cache()  # free this model's buffers before the next one loads
    return entry


# ---- outputs ----------------------------------------------------------------------------------------------


@contextmanager
def staged_output(out, overwrite=False):
    """Yield a hidden staging folder that replaces `out` only when the block completes (export.staged_folder).

    An interrupted or failed run removes its staging folder and leaves `out` as it was. An existing non-empty
    `out` is replaced only with overwrite=True and only when it holds a previous evaluation (summary.json).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite or not (out / "summary.json").is_file():
            raise GiftError(f"{out}: output folder exists and is not empty (use --overwrite to replace an earlier "
                            "evaluation, or choose another --out)")
    with staged_folder(out) as stage:
        yield stage


def markdown_table(summary):
    """Metrics side by side, one column per model."""
    models = summary["models"]
    rows = [("greedy accuracy", lambda m: m.get("greedy_accuracy"))] if summary["settings"]["greedy"] else []
    for metric in ("average@k", "pass@k", "maj@k"):
        rows += [(metric.replace("@k", f"@{k}"), lambda m, metric=metric, k=k: m[metric][k]) for k in summary["ks"]]
    lines = [
        f"Evaluation of `{summary['data']}` ({summary['problems']} problems, {summary['settings']['samples']} samples, "
        f"temperature {summary['settings']['temperature']}, top-p {summary['settings']['top_p']}).",
        "",
        "| metric | " + " | ".join(m["name"] for m in models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    lines += [f"| {label} | " + " | ".join(f"{get(m):.3f}" for m in models) + " |" for label, get in rows]
    return "\n".join(lines) + "\n"


def write_summary(folder, summary):
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "results.md").write_text(markdown_table(summary))
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
    with staged_output(out, overwrite) as stage, open(stage / "samples.jsonl", "w") as f:
        def write(record):
            f.write(json.dumps(record) + "\n")

        for model_id, name in zip(models, display_names(models)):
            entry = evaluate_model(model_id, name, problems, settings, write, progress, log, trust_remote_code)
            summary["models"].append(entry)
        f.close()
        write_summary(stage, summary)
    return summary
