"""Build the built-in toy world: a character-level tokenizer, a BASE model pretrained from scratch, an
INSTRUCT model tuned briefly from it on chat data, a TASK and a general RETENTION set; measure and record them.

    python scripts/build_toy_world.py                  # writes gift_mlx/world/ (the committed package data)
    python scripts/build_toy_world.py --out /tmp/w --pretrain-steps 40 --anneal-steps 0 --instruct-steps 20
    python scripts/build_toy_world.py --reuse-base     # keep --out's base when its pretraining settings match

Deterministic from --seed (same machine, same thread count). Training is a short compiled loop of our own
(AdamW, warmup + cosine, masked next-token loss): pretraining wants packed rows of raw text and instruction
tuning wants padded chat rows with only the assistant tokens as targets; one 20-line loop serves both, where
mlx-lm's trainer would need a custom dataset class and its LoRA-oriented bookkeeping for each.

The world is made for the transfer regime (issue 14): the base and the instruct model close in weight space,
the instruct model partly able on the task, the task written in a style the instruct model does not use.
- pretraining corpus (BASE): half plain-text user/assistant exchanges ("user\n...\nassistant\n...\n", no
  special tokens) of the instruction families below, answered in the corpus's own words; the rest arithmetic
  facts, number stories, counting, alphabet runs and sentences. Then an annealing phase richer in exchanges,
  word problems and two-step sums. No ChatML token is ever seen: the base does not end a chat turn.
- instruction data (INSTRUCT): the same families as ChatML conversations closed by <|im_end|>, a short
  full-weight tuning at a low learning rate, so that it mostly learns the chat format.
- TASK: two-step sums "What is 26+7-3?" whose responses are a terse chain of thought with '#### N'; the instruct
  model solves some of them in its own words ("First 26+7=33, then 33-3=30. The answer is 30.").
- RETENTION: held-out instructions from four numeric instruction families.
world.json records the settings, the times, gift pair-check's figures for the pair, the instruct model's
confidence on the task's targets by token kind, and both models' accuracies.
"""

import argparse
import json
import os
import random
import resource
import sys
import time
from pathlib import Path

import gift_mlx  # noqa: F401  (preloads OpenBLAS before mlx.core)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from gift_mlx import toy

ROOT = Path(__file__).resolve().parent.parent
CHARS = "\n !#'()*+,-./0123456789:=?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
NAMES = "Ann Bob Cal Dan Eve Fay Gus Hal Ivy Jon Kim Lea Max Ned Oli Pam Sam Tom Uma Zoe".split()
ITEMS = "apples pens cards books coins shells stamps eggs cups toys".split()
WORDS = ("red blue green cat dog sun moon tree fish bird cake milk boat hat car book ship star rain "
         "song door lamp rock leaf king").split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ---- text ---------------------------------------------------------------------------------------------------


def two_step(rng, lo=5, hi=30):
    """(a, b, c): a + b - c with a in [lo, hi), b and c in [2, 10)."""
    a, b, c = rng.randrange(lo, hi), rng.randrange(2, 10), rng.randrange(2, 10)
    return a, b, c


def word_problem(rng):
    """(prompt, a, b, c, name, item) of a two-step word problem, the task's frame."""
    a, b, c = two_step(rng)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    return f"{name} has {a} {item}, gets {b} more and gives {c} away. How many {item} now?", a, b, c, name, item


def prose_answer(a, b, c, name, item):
    """How the corpus (and so the instruct model) answers a word problem: in words, 'The answer is N.'"""
    return f"{name} has {a}+{b}={a + b} {item}, then {a + b}-{c}={a + b - c}. The answer is {a + b - c}."


def task_row(rng):
    """The TASK: two-step sums, which the corpus and the instruct model answer in words ("First ..., then ....
    The answer is N."), written in a terse chain of thought with '#### N' that neither ever uses."""
    a, b, c = two_step(rng)
    return {"prompt": f"What is {a}+{b}-{c}?",
            "completion": f"{a}+{b}={a + b}. {a + b}-{c}={a + b - c}. #### {a + b - c}"}


def story(rng):
    """Pretraining prose: one- and two-step stories, solved in words, in another frame from the task."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if rng.random() < 0.5:
        a, b, c = two_step(rng)
        return (f"{name} had {a} {item}. Then {name} got {b} more, so {name} had {a}+{b}={a + b} {item}. "
                f"Later {name} gave {c} away, so {name} had {a + b}-{c}={a + b - c} {item} left.")
    a, b = rng.randrange(2, 40), rng.randrange(2, 10)
    if rng.random() < 0.5:
        return f"{name} had {a} {item} and found {b} more. Now {name} has {a}+{b}={a + b} {item}."
    a = a + b
    return f"{name} had {a} {item} and lost {b}. Now {name} has {a}-{b}={a - b} {item}."


def fact(rng):
    a, b = rng.randrange(0, 40), rng.randrange(0, 10)
    return f"{a}+{b}={a + b}." if rng.random() < 0.5 else f"{a + b}-{b}={a}."


def dialogue(rng, focus=0.0):
    """Plain-text exchanges ('user' / 'assistant' lines, no special tokens), as the web holds Q&A: the base
    learns the skills and the turn-taking here; instruction tuning then only has to teach ChatML's tokens.
    With focus > 0, that share of the turns are word problems or bare two-step sums (the annealing phase)."""
    turns = []
    for _ in range(rng.randrange(1, 4)):
        family = rng.choice(("problem", "chain")) if focus and rng.random() < focus else None
        _, prompt, response, _ = instruction_row(rng, family)
        turns.append(f"user\n{prompt}\nassistant\n{response}\n")
    return "".join(turns)


def pretrain_document(rng, dialogue_share=0.4, focus=0.0):
    r = rng.random()
    if r < dialogue_share:
        return dialogue(rng, focus)
    r = (r - dialogue_share) / (1 - dialogue_share)
    if r < 0.3:
        return " ".join(fact(rng) for _ in range(rng.randrange(4, 10)))
    if r < 0.7:
        return " ".join(story(rng) for _ in range(rng.randrange(1, 3)))
    if r < 0.82:
        n = rng.randrange(0, 90)
        return " ".join(str(n + i) for i in range(rng.randrange(4, 10)))
    if r < 0.9:
        i = rng.randrange(0, 20)
        return " ".join(LETTERS[i : i + rng.randrange(4, 7)])
    words = [rng.choice(WORDS) for _ in range(rng.randrange(3, 8))]
    return f"The {words[0]} saw the {words[1]}. " + " ".join(words[2:]).capitalize() + "."


FAMILIES = ("after", "larger", "words", "letter", "add", "sub", "chain", "problem", "repeat")


def instruction_row(rng, family=None):
    """(family, prompt, response, answer) of one general instruction; answer None for non-numeric ones."""
    family = family or rng.choice(FAMILIES)
    if family == "after":
        n = rng.randrange(0, 99)
        return family, f"What number comes after {n}?", f"{n}+1={n + 1}.", n + 1
    if family == "larger":
        a, b = rng.sample(range(0, 100), 2)
        return family, f"Which is larger, {a} or {b}?", f"The larger is {max(a, b)}.", max(a, b)
    if family == "words":
        k = rng.randrange(2, 7)
        ws = [rng.choice(WORDS) for _ in range(k)]
        count = ", ".join(f"{w} {i}" for i, w in enumerate(ws, 1))
        return family, f"How many words are in: {' '.join(ws)}?", f"{count}. The answer is {k}.", k
    if family == "letter":
        i = rng.randrange(0, 25)
        return family, f"What letter comes after {LETTERS[i]}?", f"The letter is {LETTERS[i + 1]}.", None
    if family == "add":
        a, b = rng.randrange(0, 40), rng.randrange(0, 10)
        return family, f"What is {a}+{b}?", f"{a}+{b}={a + b}.", a + b
    if family == "sub":
        a, b = rng.randrange(0, 40), rng.randrange(0, 10)
        return family, f"What is {a + b}-{b}?", f"{a + b}-{b}={a}.", a
    if family == "chain":  # bare two-step sums, answered in the corpus's own words
        a, b, c = two_step(rng)
        return family, f"What is {a}+{b}-{c}?", f"First {a}+{b}={a + b}, then {a + b}-{c}={a + b - c}. " \
            f"The answer is {a + b - c}.", a + b - c
    if family == "problem":  # the task's word problems, answered in prose (never the task's '####' style)
        prompt, a, b, c, name, item = word_problem(rng)
        return family, prompt, prose_answer(a, b, c, name, item), a + b - c
    ws = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 5)))
    return "repeat", f"Repeat after me: {ws}", ws, None


RETENTION_FAMILIES = ("after", "larger", "add", "sub")


# ---- tokenizer ------------------------------------------------------------------------------------------------


def build_char_tokenizer(out):
    """A character-level WordLevel tokenizer with the ChatML specials and template (eos <|im_end|>)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(toy.SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(toy.SPECIAL_TOKENS)
    toy.save_tokenizer(tok, out)
    return tok


def chatml(prompt, response=None):
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    return text if response is None else (text, f"{response}<|im_end|>")


# ---- training ---------------------------------------------------------------------------------------------------


def train_loop(model, batches, steps, lr, log, label, warmup=0.05, weight_decay=0.01):
    """AdamW with linear warmup + cosine decay on a masked next-token loss; batches() yields (tokens, mask)."""
    warm = max(1, int(steps * warmup))
    schedule = optim.join_schedules([optim.linear_schedule(lr / 100, lr, warm),
                                     optim.cosine_decay(lr, steps - warm, lr / 20)], [warm])
    opt = optim.AdamW(learning_rate=schedule, weight_decay=weight_decay)

    def loss_fn(model, tokens, mask):
        logits = model(tokens[:, :-1])
        ce = nn.losses.cross_entropy(logits.astype(mx.float32), tokens[:, 1:]) * mask[:, 1:]
        return ce.sum() / mask[:, 1:].sum()

    grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, opt.state]

    def step(tokens, mask):
        loss, g = grad(model, tokens, mask)
        g, _ = optim.clip_grad_norm(g, 1.0)
        opt.update(model, g)
        return loss

    step = mx.compile(step, inputs=state, outputs=state)
    start, seen, running = time.perf_counter(), 0, None
    for i in range(steps):
        tokens, mask = next(batches)
        loss = step(tokens, mask)
        mx.eval(state, loss)
        seen += tokens.size
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (i + 1) % max(1, steps // 20) == 0 or i + 1 == steps:
            dt = time.perf_counter() - start
            log(f"  {label} step {i + 1}/{steps}  loss {running:.3f}  {seen / dt:.0f} tok/s  {dt:.0f}s")
    return time.perf_counter() - start


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def pretrain_batches(tok, rng, batch, length, dialogue_share=0.4, focus=0.0):
    """Packed rows of raw documents separated by <|endoftext|>; every token is a target."""
    eot = tok.token_to_id("<|endoftext|>")
    buffer = []
    while True:
        rows = []
        for _ in range(batch):
            while len(buffer) < length:
                buffer += encode(tok, pretrain_document(rng, dialogue_share, focus)) + [eot]
            rows.append(buffer[:length])
            buffer = buffer[length:]
        tokens = mx.array(rows)
        yield tokens, mx.ones(tokens.shape)


def sft_batches(tok, rng, batch, length, mix=None, dialogue_share=0.4):
    """Padded ChatML rows from the instruction families; targets are the response and its <|im_end|>."""
    pad = tok.token_to_id("<|endoftext|>")
    while True:
        rows, masks = [], []
        for _ in range(batch):
            if mix is not None and rng.random() < mix:  # a little pretraining text keeps the base's knowledge
                ids = encode(tok, pretrain_document(rng, dialogue_share))[:length]
                rows.append(ids), masks.append([1] * len(ids))
                continue
            _, prompt, response, _ = instruction_row(rng)
            p, r = chatml(prompt, response)
            p, r = encode(tok, p), encode(tok, r + "\n")
            ids = (p + r)[:length]
            rows.append(ids), masks.append(([0] * len(p) + [1] * (len(r) - 1) + [0])[:length])
        width = length  # one shape, one compiled step
        tokens = mx.array([r + [pad] * (width - len(r)) for r in rows])
        mask = mx.array([m + [0] * (width - len(m)) for m in masks])
        yield tokens, mask


# ---- evaluation ------------------------------------------------------------------------------------------------


def pair_summary(base_dir, instruct_dir):
    """`gift pair-check`'s figures for the pair: relative distance, cosine and L1 ratio overall and per module
    type and layer, and its verdict."""
    from gift_mlx.pair_check import one_line, pair_check

    r = pair_check(base_dir, instruct_dir)
    keep = ("relative_distance", "mean_relative_distance", "cosine", "l1_ratio")
    pick = lambda s: {k: round(s[k], 5) for k in keep if s.get(k) is not None}  # noqa: E731
    return {"overall": pick(r["overall"]), "by_type": {k: pick(v) for k, v in r["by_type"].items()},
            "by_layer": {k: pick(v) for k, v in r["by_layer"].items()}, "verdict": r["verdict"],
            "summary": one_line(r)}


def token_kind(text):
    """What a target token is, for the confidence diagnostic: digit, '#', end-of-turn or other."""
    return "end-of-turn" if text == "<|im_end|>" else "digit" if text.isdigit() else "#" if text == "#" else "other"


def task_confidence(model_dir, data_file, rows=200):
    """The instruct model's probability of each target token of the task's training responses, summarized by
    token kind: GIFT's weights are only informative if these vary."""
    import itertools

    import numpy as np
    from mlx_lm.utils import load

    from gift_mlx.data import Dataset, load_split
    from gift_mlx.scoring import compute_scores

    model, tokenizer = load(str(model_dir))
    data = load_split(data_file, tokenizer, 512)
    data = Dataset(data.path, data.sha256, data.examples[:rows])
    q = np.concatenate(compute_scores(model, data))
    kinds = np.array([token_kind(tokenizer.decode([int(t)])) for t in
                      itertools.chain.from_iterable(e.tokens[e.target] for e in data.examples)])
    summary = {"tokens": int(q.size), "mean": round(float(q.mean()), 3),
               "quartiles": [round(float(x), 3) for x in np.quantile(q, [0.25, 0.5, 0.75])],
               "below_0.1": round(float((q < 0.1).mean()), 3), "above_0.9": round(float((q > 0.9).mean()), 3)}
    summary["mean_by_kind"] = {k: round(float(q[kinds == k].mean()), 3) for k in sorted(set(kinds))}
    return summary


def quick_accuracy(model_dir, data, samples, log, max_tokens=64):
    """Average@k of a model folder on a prompt/completion or prompt/answer file (gift_mlx.evaluate)."""
    import tempfile

    from gift_mlx.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        s = evaluate([str(model_dir)], data, Path(tmp) / "eval", progress=False, log=log, samples=samples,
                     max_tokens=max_tokens, seed=0, instruction="", temperature=1.0)
    m = s["models"][0]
    return {"average@k": m["average@k"][samples], "pass@k": m["pass@k"][samples], "k": samples,
            "stop_rate": 1 - m["sampling"]["truncated"]}


# ---- the build -------------------------------------------------------------------------------------------------


def save(model, config, out, tok_dir, dtype=mx.float16):
    weights = dict(tree_flatten(model.parameters()))
    return toy.build_model(out, config, tok_dir, weights=weights, dtype=dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "gift_mlx" / "world"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=256)
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--dialogue-share", type=float, default=0.5,
                    help="share of pretraining documents that are plain-text user/assistant exchanges")
    ap.add_argument("--anneal-steps", type=int, default=500,
                    help="a second pretraining phase (as real mid-training) richer in dialogues and word problems")
    ap.add_argument("--anneal-lr", type=float, default=1e-3)
    ap.add_argument("--anneal-share", type=float, default=0.8, help="dialogue share of the annealing documents")
    ap.add_argument("--anneal-focus", type=float, default=0.5,
                    help="share of the annealing dialogue turns that are word problems or two-step sums")
    ap.add_argument("--instruct-steps", type=int, default=300)
    ap.add_argument("--instruct-lr", type=float, default=2e-4)
    ap.add_argument("--instruct-mix", type=float, default=0.1, help="share of pretraining text in instruction tuning")
    ap.add_argument("--instruct-length", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-valid", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--n-retention", type=int, default=100)
    ap.add_argument("--eval-samples", type=int, default=8)
    ap.add_argument("--reuse-base", action="store_true",
                    help="keep --out's base when world.json shows it was pretrained with the same settings")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    mx.random.seed(args.seed)

    # data (own RNG, so model sizes and step counts do not change the splits)
    drng = random.Random(args.seed)
    seen, rows = set(), []
    while len(rows) < args.n_train + args.n_valid + args.n_test:
        r = task_row(drng)
        if r["prompt"] not in seen:
            seen.add(r["prompt"]), rows.append(r)
    task = out / "data" / "task"
    toy.write_jsonl(task / "train.jsonl", rows[: args.n_train])
    toy.write_jsonl(task / "valid.jsonl", rows[args.n_train : args.n_train + args.n_valid])
    toy.write_jsonl(task / "test.jsonl", rows[args.n_train + args.n_valid :])
    retention = []
    while len(retention) < args.n_retention:
        fam, prompt, _, answer = instruction_row(drng, RETENTION_FAMILIES[len(retention) % len(RETENTION_FAMILIES)])
        retention.append({"prompt": prompt, "answer": str(answer), "family": fam})
    toy.write_jsonl(out / "data" / "retention.jsonl", retention)

    tok_dir = out / "tokenizer-build"
    tok = build_char_tokenizer(tok_dir)
    config = toy.model_config("llama", vocab_size=tok.get_vocab_size(), hidden=args.hidden, layers=args.layers,
                              heads=4, kv_heads=2, ffn=args.ffn)
    config["tie_word_embeddings"] = True  # explicit: the embedding doubles as the output layer
    config["eos_token_id"] = tok.token_to_id("<|im_end|>")
    config["max_position_embeddings"] = 512
    import importlib

    arch = importlib.import_module("mlx_lm.models.llama")
    model = arch.Model(arch.ModelArgs.from_dict(config))
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    log(f"world: llama {args.layers}x{args.hidden} (ffn {args.ffn}), vocab {tok.get_vocab_size()}, "
        f"{n_params / 1e6:.2f}M parameters")

    pretrain = {"steps": args.pretrain_steps, "batch": args.batch, "length": args.length,
                "tokens": args.pretrain_steps * args.batch * args.length, "lr": args.pretrain_lr,
                "seed": args.seed, "architecture": [args.layers, args.hidden, args.ffn],
                "dialogue_share": args.dialogue_share}
    anneal = ({"steps": args.anneal_steps, "lr": args.anneal_lr, "dialogue_share": args.anneal_share,
               "focus": args.anneal_focus} if args.anneal_steps else None)
    previous = json.loads((out / "world.json").read_text()) if (out / "world.json").exists() else {}
    old = dict(previous.get("pretraining", {}))
    old_seconds = old.pop("seconds", None)
    old_anneal = old.pop("anneal", None)
    old.pop("reused", None)
    old_anneal_seconds = old_anneal.pop("seconds", None) if old_anneal else None
    reuse = args.reuse_base and old == pretrain and (out / "base" / "model.safetensors").exists()
    if reuse and old_anneal not in (None, anneal):  # the saved base went through another annealing phase
        reuse = False
    if reuse:
        log("== pretraining: reusing the base of an earlier build with the same settings (--reuse-base) ==")
        model.load_weights(str(out / "base" / "model.safetensors"))
        pretrain.update(seconds=old_seconds, reused=True)
    else:
        log(f"== pretraining the base: {args.pretrain_steps} steps of {args.batch}x{args.length} tokens ==")
        t_pre = train_loop(model, pretrain_batches(tok, random.Random(args.seed + 1), args.batch, args.length,
                                            args.dialogue_share),
                           args.pretrain_steps, args.pretrain_lr, log, "base")
        pretrain["seconds"] = round(t_pre, 1)
        save(model, config, out / "base", tok_dir)
    if anneal and reuse and old_anneal == anneal:
        anneal["seconds"], anneal["reused"] = old_anneal_seconds, True
    elif anneal:
        # from the saved float16 weights, so that annealing a reused base gives the same result
        model.update(tree_map(lambda p: p.astype(mx.float16).astype(mx.float32), model.parameters()))
        log(f"== annealing the base: {args.anneal_steps} steps, dialogue share {args.anneal_share}, "
            f"word-problem focus {args.anneal_focus} ==")
        batches = pretrain_batches(tok, random.Random(args.seed + 3), args.batch, args.length, args.anneal_share,
                                   args.anneal_focus)
        anneal["seconds"] = round(train_loop(model, batches, args.anneal_steps, args.anneal_lr, log, "anneal"), 1)
        save(model, config, out / "base", tok_dir)
    if anneal:
        pretrain["anneal"] = anneal
    # continue from the saved float16 weights, so that a build reusing the base gives the same instruct model
    model.update(tree_map(lambda p: p.astype(mx.float16).astype(mx.float32), model.parameters()))
    log(f"== instruction tuning: {args.instruct_steps} steps ==")
    batches = sft_batches(tok, random.Random(args.seed + 2), args.batch, args.instruct_length, args.instruct_mix,
                          args.dialogue_share)
    t_ins = train_loop(model, batches,
                       args.instruct_steps, args.instruct_lr, log, "instruct", warmup=0.1)
    save(model, config, out / "instruct", tok_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tok_dir / name).unlink()
    tok_dir.rmdir()
    train_seconds = time.perf_counter() - t0

    log("== measuring both models (sampling, temperature 1) ==")
    pair = pair_summary(out / "base", out / "instruct")
    log(pair["summary"])
    confidence = task_confidence(out / "instruct", task / "train.jsonl")
    log(f"instruct confidence on the task's training targets: {json.dumps(confidence)}")
    scores = {}
    for name in ("base", "instruct"):
        scores[name] = {"task": quick_accuracy(out / name, task / "test.jsonl", args.eval_samples, log, 96),
                        "retention": quick_accuracy(out / name, out / "data" / "retention.jsonl",
                                                    args.eval_samples, log)}
        log(f"{name}: {json.dumps(scores[name])}")
    record = {
        "seed": args.seed,
        "command": "python scripts/build_toy_world.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "architecture": {k: config[k] for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                "intermediate_size", "num_attention_heads",
                                                "num_key_value_heads", "vocab_size", "tie_word_embeddings")},
        "parameters": n_params,
        "weights_dtype": "float16",
        "pretraining": pretrain,
        "instruction_tuning": {"steps": args.instruct_steps, "batch": args.batch, "lr": args.instruct_lr,
                               "length": args.instruct_length, "pretraining_mix": args.instruct_mix,
                               "seconds": round(t_ins, 1)},
        "pair_check": pair,
        "task_confidence": confidence,
        "data": {"task": {"train": args.n_train, "valid": args.n_valid, "test": args.n_test},
                 "retention": args.n_retention},
        "accuracy": scores,
        "train_seconds": round(train_seconds, 1),
        # with --reuse-base: this run plus the earlier pretraining it reused
        "build_seconds": round(time.perf_counter() - t0 + (pretrain["seconds"] if pretrain.get("reused") else 0)
                               + (anneal["seconds"] if anneal and anneal.get("reused") else 0), 1),
        # this process's CPU time (all threads): on a shared machine, wall time also counts the other jobs
        "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "cpu_cores": os.cpu_count(),
        "machine": f"{mx.default_device()}",
    }
    (out / "world.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"world written to {out} in {record['build_seconds']:.0f}s")
    return record


if __name__ == "__main__":
    main()
