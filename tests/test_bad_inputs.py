"""Bad inputs to every command: one line naming the problem, exit code 2, no traceback, nothing written.

Each case builds what it needs under its own tmp_path, runs the CLI in-process (click's CliRunner) and checks:
- the exit code is 2 and no exception other than that exit escaped;
- stderr is exactly one line, `error: ...`, holding the expected text (which names the file:line, field
  or option at fault);
- no file appeared, vanished or changed (size, mtime) under tmp_path, the shared models, the data or the trained
  adapters (no half-written output, no output inside an input).

docs/errors.md lists the same cases with the message a user sees.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import pytest
from click.testing import CliRunner

from gift_mlx import toy
from gift_mlx.cli import main

GOOD_ROW = json.dumps({"prompt": "What is 1+2?", "completion": "1+2=3. #### 3"})
GOOD_PROBLEM = json.dumps({"question": "What is 1+2?", "answer": "#### 3"})
HUB_ID = "gift-mlx-tests/no-such-model"  # a well-formed Hugging Face id that exists nowhere


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class World:
    """Models, data and trained adapters shared by the cases (built once per module)."""


@pytest.fixture(scope="module")
def world(llama_pair, qwen2_pair, task_data, tmp_path_factory):
    w = World()
    w.root = tmp_path_factory.mktemp("bad_inputs")
    w.base, w.instruct = llama_pair
    w.qbase, w.qinstruct = qwen2_pair
    w.data = task_data
    small = ["--iters", 1, "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 4]
    w.adapter, w.qadapter = w.root / "adapter", w.root / "qwen2-adapter"
    for (base, instruct), out in ((llama_pair, w.adapter), (qwen2_pair, w.qadapter)):
        r = run("train", "--base", base, "--instruct", instruct, "--data", task_data, "--adapter-path", out, *small)
        assert r.exit_code == 0, r.output
    # the llama pair's architecture with a larger vocabulary (same tokenizer)
    vocab = json.loads((w.base / "config.json").read_text())["vocab_size"]
    w.big_vocab = w.root / "big-vocab"
    toy.build_model(w.big_vocab, toy.model_config("llama", vocab + 16), w.base.parent / "tokenizer")
    # the instruct model without a chat template
    w.no_template = w.root / "no-template"
    shutil.copytree(w.instruct, w.no_template)
    tok_config = json.loads((w.no_template / "tokenizer_config.json").read_text())
    del tok_config["chat_template"]
    (w.no_template / "tokenizer_config.json").write_text(json.dumps(tok_config))
    return w


# ---- helpers that build a case's inputs under t (its tmp_path) ----


def write(path, content):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def rows(t, *lines, name="train.jsonl"):
    """A data folder whose `name` holds these lines (train.jsonl gets a good one when `name` is another split)."""
    folder = t / "data"
    if name != "train.jsonl":
        write(folder / "train.jsonl", GOOD_ROW + "\n")
    write(folder / name, "".join(line + "\n" for line in lines))
    return folder


def a_file(t):
    """A regular file: a path under it can never be created (works as root, unlike chmod)."""
    return write(t / "a-file", "not a folder\n")


def train(w, t, *extra, data=None, base=None, instruct=None):
    return ["train", "--base", base or w.base, "--instruct", instruct or w.instruct, "--data", data or w.data,
            "--adapter-path", t / "out", "--iters", 1, "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 1,
            *extra]


def score(w, t, *extra, data=None, instruct=None):
    return ["score", "--instruct", instruct or w.instruct, "--data", data or w.data, "--adapter-path", t / "out",
            *extra]


def adapter_copy(w, t, config=None, weights=None):
    """A copy of the trained llama adapter with its config edited (config(dict) -> dict) or weights replaced."""
    folder = t / "adapter"
    folder.mkdir()
    cfg = json.loads((w.adapter / "adapter_config.json").read_text())
    write(folder / "adapter_config.json", json.dumps(config(cfg) if config else cfg))
    if weights is None:
        shutil.copy(w.adapter / "adapters.safetensors", folder)
    elif isinstance(weights, bytes):
        write(folder / "adapters.safetensors", weights)
    else:
        tensors = dict(mx.load(str(w.adapter / "adapters.safetensors")))
        mx.save_safetensors(str(folder / "adapters.safetensors"), weights(tensors))
    return folder


def narrower(weights):
    """The adapter of a model with hidden size 32: lora_a of every layer cut to 32 input rows."""
    return {k: v[:32] if k.endswith("lora_a") else v for k, v in weights.items()}


def merge(w, t, *extra, adapter=None, instruct=None, out=None):
    return ["merge", "--instruct", instruct or w.instruct, "--adapter-path", adapter or w.adapter,
            "--out", out or t / "out", *extra]


def export(w, t, *extra, adapter=None, out=None):
    return ["export-adapter", "--adapter-path", adapter or w.adapter, "--out", out or t / "out", *extra]


def evaluate(w, t, *extra, data=None, model=None, out=None):
    data = data or write(t / "problems.jsonl", GOOD_PROBLEM + "\n")
    return ["eval", "--model", model or w.instruct, "--data", data, "--out", out or t / "out", "--samples", 2,
            "--max-tokens", 4, *extra]


def chat(w, t, *extra, model=None):
    return ["chat", "--model", model or w.instruct, "--prompt", "hi", "--max-tokens", 4, *extra]


def copy_of(folder, to):
    shutil.copytree(folder, to)
    return to


def nonempty_folder(t):
    folder = t / "out"
    write(folder / "notes.txt", "mine\n")
    return folder


# (id, argv builder (world, tmp_path) -> argv, text the one-line error must contain)
CASES = [
    # ---- train: data files ----
    ("train-malformed-json", lambda w, t: train(w, t, data=rows(t, GOOD_ROW, "{not json")),
     "train.jsonl:2: malformed JSON"),
    ("train-line-not-an-object", lambda w, t: train(w, t, data=rows(t, "[1, 2]")),
     "train.jsonl:1: expected a JSON object, got list"),
    ("train-field-wrong-type", lambda w, t: train(w, t, data=rows(t, GOOD_ROW, '{"prompt": "1+1?", "completion": 2}')),
     "train.jsonl:2: field 'completion' must be a string, got int"),
    ("train-messages-wrong-type", lambda w, t: train(w, t, data=rows(t, '{"messages": "hello"}')),
     "train.jsonl:1: 'messages' must be a list of {role, content} string objects"),
    ("train-no-assistant-turn", lambda w, t: train(w, t, data=rows(t, '{"messages": [{"role": "user", "content": "hi"}]}')),
     "train.jsonl:1: 'messages' has no assistant turn, so no target tokens"),
    ("train-unknown-record-shape", lambda w, t: train(w, t, data=rows(t, '{"text": "hi", "label": 1}')),
     "train.jsonl:1: unknown record shape (fields: label, text)"),
    ("train-empty-file", lambda w, t: train(w, t, data=rows(t)), "train.jsonl: no records"),
    ("train-blank-lines-only", lambda w, t: train(w, t, data=rows(t, "", "   ")), "train.jsonl: no records"),
    ("train-not-utf8", lambda w, t: train(w, t, data=write(t / "rows.jsonl", b'{"prompt": "\xff\xfe"}\n')),
     "rows.jsonl: cannot read"),
    ("train-bad-valid-split", lambda w, t: train(w, t, data=rows(t, "{oops", name="valid.jsonl")),
     "valid.jsonl:1: malformed JSON"),
    ("train-all-rows-too-long", lambda w, t: train(w, t, "--max-seq-length", 8),
     "no usable rows (all 64 prompts are longer than max_seq_length=8)"),
    ("train-folder-without-train-jsonl", lambda w, t: train(w, t, data=write(t / "data" / "valid.jsonl", GOOD_ROW).parent),
     "data folder has no train.jsonl"),
    ("train-no-such-data", lambda w, t: train(w, t, data=t / "missing"), "missing: no such data file or folder"),
    ("train-more-rows-per-batch-than-rows", lambda w, t: train(w, t, "--batch-size", 100),
     "batch_size: 100 is more than the 64 training rows"),
    # ---- train: models ----
    ("train-base-other-architecture", lambda w, t: train(w, t, base=w.qbase),
     "differ in architecture: model_type: qwen2 vs llama"),
    ("train-base-other-vocabulary", lambda w, t: train(w, t, base=w.big_vocab), "differ in architecture: vocab_size:"),
    ("train-base-hub-id-offline", lambda w, t: train(w, t, base=HUB_ID),
     f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    ("train-instruct-hub-id-offline", lambda w, t: train(w, t, instruct=HUB_ID), f"{HUB_ID}: cannot load tokenizer"),
    ("train-base-no-such-folder", lambda w, t: train(w, t, base=t / "nope"), "nope: no such model folder"),
    ("train-base-not-a-model", lambda w, t: train(w, t, base=w.data), "config.json: cannot read model config"),
    # ---- train: options and config file ----
    ("train-zero-batch-size", lambda w, t: train(w, t, "--batch-size", 0), "batch_size: must be at least 1, got 0"),
    ("train-zero-lora-rank", lambda w, t: train(w, t, "--lora-rank", 0), "lora_rank: must be at least 1, got 0"),
    ("train-zero-iters", lambda w, t: train(w, t, "--iters", 0), "iters: must be at least 1, got 0"),
    ("train-negative-max-seq-length", lambda w, t: train(w, t, "--max-seq-length", -5),
     "max_seq_length: must be at least 1, got -5"),
    ("train-zero-grad-accumulation", lambda w, t: train(w, t, "--grad-accumulation-steps", 0),
     "grad_accumulation_steps: must be at least 1, got 0"),
    ("train-zero-lora-alpha", lambda w, t: train(w, t, "--lora-alpha", 0), "lora_alpha: must be positive, got 0.0"),
    ("train-negative-learning-rate", lambda w, t: train(w, t, "--learning-rate", -1e-4),
     "learning_rate: must be positive, got -0.0001"),
    ("train-zero-epochs", lambda w, t: train(w, t, "--epochs", 0), "epochs: must be positive, got 0.0"),
    ("train-zero-floor", lambda w, t: train(w, t, "--floor", 0), "floor: must be positive, got 0.0"),
    ("train-dropout-one", lambda w, t: train(w, t, "--lora-dropout", 1), "lora_dropout and warmup_ratio must lie in [0, 1)"),
    ("train-config-wrong-type", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "gamma: high\n")),
     "run.yaml: field 'gamma' must be a number, got 'high'"),
    ("train-config-float-for-integer", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "save_every: 2.5\n")),
     "run.yaml: field 'save_every' must be an integer, got 2.5"),
    ("train-config-unknown-field", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "lora_rnk: 8\n")),
     "run.yaml: unknown field(s): lora_rnk"),
    ("train-config-not-a-mapping", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "- 1\n- 2\n")),
     "run.yaml: config must be a mapping of field: value"),
    ("train-config-malformed-yaml", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "iters: [1,\n")),
     "run.yaml: cannot read config"),
    ("train-resume-other-settings", lambda w, t: train(w, t, "--resume", "--adapter-path", copy_of(w.adapter, t / "out")),
     "checkpoint-0000001.safetensors: written with other settings"),
    ("train-config-missing", lambda w, t: train(w, t, "-c", t / "none.yaml"), "none.yaml: cannot read config"),
    # ---- score ----
    ("score-no-data", lambda w, t: ["score", "--instruct", w.instruct, "--adapter-path", t / "out"],
     "score needs --instruct (or --base with --method gift-base) and --data"),
    ("score-malformed-json", lambda w, t: score(w, t, data=rows(t, GOOD_ROW, GOOD_ROW, "{")),
     "train.jsonl:3: malformed JSON"),
    ("score-instruct-hub-id-offline", lambda w, t: score(w, t, instruct=HUB_ID), f"{HUB_ID}: cannot load tokenizer"),
    ("score-unreadable-score-file", lambda w, t: score(
        w, t, "--scores-path", write(t / "scores" / "train-instruct.safetensors", b"\x00garbage").parent),
     "train-instruct.safetensors: unreadable score file"),
    # ---- merge ----
    ("merge-adapter-for-another-model", lambda w, t: merge(w, t, adapter=w.qadapter),
     "differ in architecture: model_type: qwen2 vs llama"),
    ("merge-adapter-base-other-vocabulary", lambda w, t: merge(
        w, t, adapter=adapter_copy(w, t, config=lambda c: {**c, "base_model": str(w.big_vocab)})),
     "differ in architecture: vocab_size:"),
    ("merge-into-other-architecture", lambda w, t: merge(w, t, instruct=w.qinstruct),
     "differ in architecture: model_type: llama vs qwen2"),
    ("merge-adapter-shapes-do-not-fit", lambda w, t: merge(
        w, t, adapter=adapter_copy(w, t, config=lambda c: {**c, "base_model": HUB_ID}, weights=narrower)),
     "does not fit instruct"),
    ("merge-not-an-adapter-folder", lambda w, t: merge(w, t, adapter=w.base),
     "not an adapter folder (needs adapter_config.json and adapters.safetensors)"),
    ("merge-no-such-adapter", lambda w, t: merge(w, t, adapter=t / "nothing"), "nothing: not an adapter folder"),
    ("merge-adapter-config-malformed", lambda w, t: merge(
        w, t, adapter=write(adapter_copy(w, t) / "adapter_config.json", "{").parent), "cannot read adapter"),
    ("merge-adapter-weights-corrupt", lambda w, t: merge(w, t, adapter=adapter_copy(w, t, weights=b"\x00" * 64)),
     "cannot read adapter"),
    ("merge-adapter-full-fine-tune", lambda w, t: merge(
        w, t, adapter=adapter_copy(w, t, config=lambda c: {**c, "fine_tune_type": "full"})),
     "fine_tune_type 'full' cannot be merged (only lora and dora)"),
    ("merge-adapter-config-no-rank", lambda w, t: merge(
        w, t, adapter=adapter_copy(w, t, config=lambda c: {**c, "lora_parameters": {}})),
     "lora_parameters needs 'rank' and 'scale'"),
    ("merge-no-instruct-named", lambda w, t: ["merge", "--adapter-path", adapter_copy(
        w, t, config=lambda c: {k: v for k, v in c.items() if k != "instruct_model"}), "--out", t / "out"],
     "names no instruct_model; pass --instruct"),
    ("merge-recorded-instruct-moved", lambda w, t: ["merge", "--adapter-path", adapter_copy(
        w, t, config=lambda c: {**c, "instruct_model": str(t / "moved-instruct")}), "--out", t / "out"],
     "adapter_config.json: field instruct_model: "),
    ("merge-instruct-hub-id-offline", lambda w, t: merge(w, t, instruct=HUB_ID),
     f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    ("merge-out-inside-instruct", lambda w, t: merge(w, t, out=w.instruct / "merged"),
     "the output must not be, contain or lie inside the input"),
    ("merge-out-is-the-adapter", lambda w, t: merge(w, t, out=w.adapter),
     "the output must not be, contain or lie inside the input"),
    ("merge-out-exists", lambda w, t: merge(w, t, out=nonempty_folder(t)), "already exists (pass --force to replace it)"),
    ("merge-force-over-foreign-folder", lambda w, t: merge(w, t, "--force", out=nonempty_folder(t)),
     "exists and was not written by gift (no gift_export.json); not replacing it"),
    # ---- export-adapter ----
    ("export-not-an-adapter-folder", lambda w, t: export(w, t, adapter=w.instruct), "not an adapter folder"),
    ("export-adapter-weights-corrupt", lambda w, t: export(w, t, adapter=adapter_copy(w, t, weights=b"\x00" * 64)),
     "cannot read adapter"),
    ("export-out-inside-adapter", lambda w, t: export(w, t, out=w.adapter / "peft"),
     "the output must not be, contain or lie inside the input"),
    ("export-out-exists", lambda w, t: export(w, t, out=nonempty_folder(t)), "already exists (pass --force to replace it)"),
    ("export-force-over-foreign-folder", lambda w, t: export(w, t, "--force", out=nonempty_folder(t)),
     "exists and was not written by gift"),
    # ---- eval ----
    ("eval-malformed-json", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", GOOD_PROBLEM + "\n{\n")),
     "p.jsonl:2: malformed JSON"),
    ("eval-empty-file", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", "")), "p.jsonl: no records"),
    ("eval-field-wrong-type", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", '{"question": ["a"], "answer": "1"}\n')),
     "p.jsonl:1: field 'question' must be a string, got list"),
    ("eval-answer-not-a-choice", lambda w, t: evaluate(w, t, data=write(
        t / "p.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 5}\n')),
     "p.jsonl:1: field 'answer' must be a choice index or letter among 2 choices"),
    ("eval-solution-without-answer", lambda w, t: evaluate(w, t, data=write(
        t / "p.jsonl", '{"problem": "p", "solution": "no box"}\n')), "p.jsonl:1: field 'solution' states no final answer"),
    ("eval-unknown-record-shape", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", '{"text": "x"}\n')),
     "p.jsonl:1: unknown eval record shape (fields: text)"),
    ("eval-no-such-file", lambda w, t: evaluate(w, t, data=t / "missing.jsonl"), "no such eval file"),
    ("eval-folder-without-test-jsonl", lambda w, t: evaluate(w, t, data=rows(t, GOOD_ROW)),
     "no such eval file (or folder with test.jsonl)"),
    ("eval-negative-samples", lambda w, t: evaluate(w, t, "--samples", -1), "--samples must be >= 0"),
    ("eval-zero-samples-no-greedy", lambda w, t: evaluate(w, t, "--samples", 0), "--samples 0 needs --greedy"),
    ("eval-negative-temperature", lambda w, t: evaluate(w, t, "--temperature", -0.5), "--temperature must be >= 0"),
    ("eval-zero-temperature-many-samples", lambda w, t: evaluate(w, t, "--temperature", 0),
     "--temperature 0 makes all samples identical: use --greedy"),
    ("eval-zero-top-p", lambda w, t: evaluate(w, t, "--top-p", 0), "--top-p must be in (0, 1]"),
    ("eval-zero-max-tokens", lambda w, t: evaluate(w, t, "--max-tokens", 0), "--max-tokens must be >= 1"),
    ("eval-zero-batch-size", lambda w, t: evaluate(w, t, "--batch-size", 0), "--batch-size must be >= 1"),
    ("eval-zero-limit", lambda w, t: evaluate(w, t, "--limit", 0), "--limit must be >= 1"),
    ("eval-no-such-model", lambda w, t: evaluate(w, t, model=t / "nope"), "nope: no such model folder"),
    ("eval-model-hub-id-offline", lambda w, t: evaluate(w, t, model=HUB_ID), f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    ("eval-model-not-a-model", lambda w, t: evaluate(w, t, model=w.data), "cannot load model"),
    ("eval-out-exists", lambda w, t: evaluate(w, t, out=nonempty_folder(t)), "output folder exists and is not empty"),
    ("eval-out-is-a-file", lambda w, t: evaluate(w, t, out=a_file(t)), "output folder exists and is not empty"),
    # ---- outputs that cannot be written, options checked before any work ----
    ("train-assistant-turn-first", lambda w, t: train(w, t, data=rows(t, '{"messages": [{"role": "assistant", "content": "hi"}]}')),
     "train.jsonl:1: 'messages' starts with an assistant turn"),
    ("train-adapter-path-under-a-file", lambda w, t: train(w, t, "--adapter-path", a_file(t) / "sub"), "Not a directory"),
    ("train-num-layers-more-than-blocks", lambda w, t: train(w, t, "--num-layers", 5), "num_layers: 5 but the model has 2 blocks"),
    ("train-negative-num-layers", lambda w, t: train(w, t, "--num-layers", -3),
     "num_layers: must be -1 (all) or at least 1, got -3"),
    ("train-lora-keys-match-nothing", lambda w, t: train(w, t, "--lora-keys", "nope.proj"), "lora_keys: ['nope.proj'] matched no layer"),
    ("score-negative-max-seq-length", lambda w, t: score(w, t, "--max-seq-length", -1),
     "max_seq_length: must be at least 1, got -1"),
    ("score-scores-path-is-a-file", lambda w, t: score(w, t, "--scores-path", a_file(t)), "a-file: File exists"),
    ("merge-out-under-a-file", lambda w, t: merge(w, t, out=a_file(t) / "sub"), "Not a directory"),
    ("export-out-under-a-file", lambda w, t: export(w, t, out=a_file(t) / "sub"), "Not a directory"),
    ("eval-out-under-a-file", lambda w, t: evaluate(w, t, out=a_file(t) / "sub"), "Not a directory"),
    ("demo-zero-iters", lambda w, t: ["demo", "--out", t / "out", "--iters", 0], "--iters and --samples must be at least 1"),
    ("demo-out-under-a-file", lambda w, t: ["demo", "--out", a_file(t) / "sub", "--iters", 1], "Not a directory"),
    ("demo-out-exists", lambda w, t: ["demo", "--out", nonempty_folder(t)],
     "output folder exists and is not empty (use --force to replace an earlier demo"),
    ("demo-force-over-foreign-folder", lambda w, t: ["demo", "--out", nonempty_folder(t), "--force"],
     "not a gift demo folder (holds notes.txt)"),
    ("eval-second-model-missing-checked-first", lambda w, t: evaluate(w, t, "--model", t / "nope"), "nope: no such model folder"),
    ("eval-second-model-hub-id-offline-checked-first", lambda w, t: evaluate(w, t, "--model", HUB_ID),
     f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    # ---- chat ----
    ("chat-no-such-model", lambda w, t: chat(w, t, model=t / "nope"), "nope: no such model folder"),
    ("chat-model-hub-id-offline", lambda w, t: chat(w, t, model=HUB_ID), f"{HUB_ID}: cannot load model"),
    ("chat-model-not-a-model", lambda w, t: chat(w, t, model=w.data), "cannot load model"),
    ("chat-no-chat-template", lambda w, t: chat(w, t, model=w.no_template), "tokenizer has no chat template"),
    ("chat-negative-temperature", lambda w, t: chat(w, t, "--temperature", -1), "chat needs --temperature >= 0"),
    ("chat-zero-top-p", lambda w, t: chat(w, t, "--top-p", 0), "--top-p in (0, 1]"),
    ("chat-zero-max-tokens", lambda w, t: chat(w, t, "--max-tokens", 0), "--max-tokens >= 1"),
]


def tree(*folders):
    """{path: (size, mtime)} of every file under the folders."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make_args, message", [pytest.param(m, e, id=i) for i, m, e in CASES])
def test_bad_input(make_args, message, world, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import otherwise
    monkeypatch.chdir(tmp_path)  # a default output path would land here, and be seen
    args = make_args(world, tmp_path)
    watched = (tmp_path, world.root, world.base.parent, world.qbase.parent, world.data)
    before = tree(*watched)

    result = run(*args)

    err = result.stderr.strip()
    print(err)  # the message users see (docs/errors.md)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # nothing escaped as a traceback
    assert "Traceback" not in result.output
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert message in err, err
    assert tree(*watched) == before, "files were written, removed or changed"
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*")), "a hidden staging folder was left"


def test_cases_cover_every_command():
    commands = {i.split("-")[0] for i, _, _ in CASES}
    assert {"train", "score", "merge", "export", "eval", "chat"} <= commands
    assert len(CASES) >= 30 and len({i for i, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("args, option", [
    (["train", "--iters", "ten"], "'--iters': 'ten' is not a valid integer"),
    (["merge", "--out", "m", "--format", "gguf"], "'--format': 'gguf' is not one of 'mlx', 'hf'"),
    (["eval", "--model", "m", "--data", "d", "--samples", "1.5"], "'--samples': '1.5' is not a valid integer"),
    (["chat", "--model", "m", "--temperature", "hot"], "'--temperature': 'hot' is not a valid float"),
])
def test_option_of_the_wrong_type_is_a_usage_error(args, option, tmp_path, monkeypatch):
    """Types and choices are checked by click before any command runs: exit 2, its usage line and one
    `Error: Invalid value for ...` line, no traceback, nothing written."""
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1] == f"Error: Invalid value for {option}."
    assert list(tmp_path.iterdir()) == []
