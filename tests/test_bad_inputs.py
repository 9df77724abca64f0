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
    # the instruct model with one tensor fewer, and with two token ids swapped
    w.missing_tensor = w.root / "missing-tensor"
    shutil.copytree(w.instruct, w.missing_tensor)
    tensors = dict(mx.load(str(w.missing_tensor / "model.safetensors")))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    mx.save_safetensors(str(w.missing_tensor / "model.safetensors"), tensors)
    (w.missing_tensor / "model.safetensors.index.json").unlink()
    w.other_tokens = w.root / "other-tokens"
    shutil.copytree(w.instruct, w.other_tokens)
    tok = json.loads((w.other_tokens / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (w.other_tokens / "tokenizer.json").write_text(json.dumps(tok))
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


def copy_of(folder, to, drop=None):
    shutil.copytree(folder, to)
    if drop:
        (to / drop).unlink()
    return to


def model_copy(w, t, edit, which="base"):
    """A copy of the base (or instruct) model with its config.json replaced by edit(config)."""
    folder = copy_of(getattr(w, which), t / f"{which}-copy")
    config = json.loads((folder / "config.json").read_text())
    write(folder / "config.json", json.dumps(edit(config)))
    return folder


def nan_weights(weights):
    """The adapter with a NaN in one tensor."""
    key = sorted(weights)[0]
    return {**weights, key: mx.full(weights[key].shape, float("nan"))}


def nested(depth):
    return '{"prompt": ' + "[" * depth + "]" * depth + ', "completion": "x"}'


def nonempty_folder(t):
    folder = t / "out"
    write(folder / "notes.txt", "mine\n")
    return folder


def params(**changes):
    """An adapter_config edit: lora_parameters with `changes`."""
    return lambda c: {**c, "lora_parameters": {**c["lora_parameters"], **changes}}


def leaves(edit, leaf="lora_a"):
    """An adapters.safetensors edit: edit(tensor) applied to every `leaf` tensor."""
    return lambda weights: {k: edit(v) if k.endswith(leaf) else v for k, v in weights.items()}


def with_file(folder, name, content):
    write(folder / name, content)
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
    ("train-tiny-lora-alpha", lambda w, t: train(w, t, "--lora-alpha", 1e-300), "lora_alpha: alpha / rank = 1e-300 / "),
    ("train-negative-learning-rate", lambda w, t: train(w, t, "--learning-rate", -1e-4),
     "learning_rate: must be positive, got -0.0001"),
    ("train-zero-epochs", lambda w, t: train(w, t, "--epochs", 0), "epochs: must be positive, got 0.0"),
    ("train-zero-floor", lambda w, t: train(w, t, "--floor", 0), "floor: must be positive, got 0.0"),
    ("train-dropout-one", lambda w, t: train(w, t, "--lora-dropout", 1), "lora_dropout: must be less than 1, got 1.0"),
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
    # ---- adapters: the one check merge and export share (adapters.read_adapter) ----
    ("merge-adapter-negative-scale", lambda w, t: merge(w, t, adapter=adapter_copy(w, t, config=params(scale=-2.0))),
     "field 'lora_parameters.scale' must be positive and at most 1000 (alpha / rank), got -2.0"),
    ("export-adapter-negative-scale", lambda w, t: export(w, t, adapter=adapter_copy(w, t, config=params(scale=-2.0))),
     "field 'lora_parameters.scale' must be positive and at most 1000 (alpha / rank), got -2.0"),
    ("export-adapter-huge-scale", lambda w, t: export(w, t, adapter=adapter_copy(w, t, config=params(scale=1e6))),
     "field 'lora_parameters.scale' must be positive and at most 1000 (alpha / rank), got 1000000.0"),
    ("export-adapter-dropout-a-string", lambda w, t: export(w, t, adapter=adapter_copy(w, t, config=params(dropout="0.05"))),
     "field 'lora_parameters.dropout' must be a number in [0, 1), got '0.05'"),
    ("merge-adapter-integer-tensors", lambda w, t: merge(w, t, adapter=adapter_copy(
        w, t, weights=leaves(lambda v: (v * 1000).astype(mx.int32)))),
     "lora_a holds int32 values; adapter tensors are floating point"),
    ("export-adapter-integer-tensors", lambda w, t: export(w, t, adapter=adapter_copy(
        w, t, weights=leaves(lambda v: (v * 1000).astype(mx.int32)))), "holds int32 values"),
    ("merge-adapter-rank-disagrees", lambda w, t: merge(w, t, adapter=adapter_copy(w, t, config=params(rank=8))),
     "are not (in, 8) and (8, out) matrices of rank 8"),
    ("export-adapter-mis-shaped", lambda w, t: export(w, t, adapter=adapter_copy(
        w, t, weights=leaves(lambda v: v.T, "lora_b"))), "are not (in, 4) and (4, out) matrices of rank 4"),
    ("export-adapter-3d-tensors-mis-shaped", lambda w, t: export(w, t, adapter=adapter_copy(
        w, t, weights=lambda ws: {k: v[None] for k, v in ws.items()})),
     "per-expert lora_a (1, 64, 4) and lora_b (1, 4, 32) do not have rank 4"),
    ("export-adapter-keys-disagree", lambda w, t: export(w, t, adapter=adapter_copy(
        w, t, config=params(keys=["self_attn.q_proj"]))), "lora_parameters.keys ['self_attn.q_proj'] does not list ["),
    ("merge-adapter-num-layers-disagrees", lambda w, t: merge(w, t, adapter=adapter_copy(
        w, t, config=lambda c: {**c, "num_layers": 1})), "num_layers is 1, but the adapter's tensors adapt 2 blocks (0 to 1)"),
    ("merge-adapter-blocks-not-the-last", lambda w, t: merge(w, t, adapter=adapter_copy(
        w, t, config=lambda c: {**c, "num_layers": 1},
        weights=lambda ws: {k: v for k, v in ws.items() if k.startswith("model.layers.0.")})),
     "num_layers is 1, so only blocks 1 to 1 of instruct"),
    ("merge-adapter-update-larger-than-the-model", lambda w, t: merge(w, t, adapter=adapter_copy(
        w, t, weights=leaves(lambda v: v + 1e4, "lora_b"))), "the update is"),
    ("merge-unfinished-run", lambda w, t: merge(w, t, adapter=with_file(
        adapter_copy(w, t), "gift_run.json", json.dumps({"final": None}))),
     "unfinished training run: gift_run.json records no final metrics (final: null); let it finish"),
    ("export-unfinished-run", lambda w, t: export(w, t, adapter=with_file(
        adapter_copy(w, t), "gift_run.json", json.dumps({"status": "interrupted", "final": None}))),
     "unfinished training run: gift_run.json says status 'interrupted'"),
    ("merge-interrupted-run-without-record", lambda w, t: merge(w, t, adapter=with_file(
        adapter_copy(w, t), "checkpoint-0000001.safetensors", b"")),
     "holds training checkpoints but no gift_run.json"),
    ("export-run-record-final-a-string", lambda w, t: export(w, t, adapter=with_file(
        adapter_copy(w, t), "gift_run.json", json.dumps({"final": "done"}))),
     "gift_run.json: field 'final' must be a JSON object, got str"),
    ("merge-run-record-data-a-list", lambda w, t: merge(w, t, adapter=with_file(
        adapter_copy(w, t), "gift_run.json", json.dumps({"final": {"loss": 1.0}, "data": [1]}))),
     "gift_run.json: field 'data' must be a JSON object, got list"),
    ("merge-instruct-rope-theta-a-string", lambda w, t: merge(
        w, t, instruct=model_copy(w, t, lambda c: {**c, "rope_theta": "10000"}, "instruct")),
     "config.json: field 'rope_theta' must be a finite number, got '10000'"),
    ("chat-model-rope-theta-a-string", lambda w, t: chat(
        w, t, model=model_copy(w, t, lambda c: {**c, "rope_theta": "10000"}, "instruct")),
     "config.json: field 'rope_theta' must be a finite number, got '10000'"),
    ("chat-model-quantization-a-string", lambda w, t: chat(
        w, t, model=model_copy(w, t, lambda c: {**c, "quantization": "4bit"}, "instruct")),
     "config.json: field 'quantization' must be an object, got '4bit'"),
    ("score-weights-header-length-2-63", lambda w, t: score(w, t, instruct=with_file(copy_of(
        w.instruct, t / "instruct-copy"), "model.safetensors", (2**63).to_bytes(8, "little") + b"{}")),
     "cannot load model: [load_safetensors] Invalid json header length"),
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
    ("eval-negative-samples", lambda w, t: evaluate(w, t, "--samples", -1), "--samples: must be at least 0, got -1"),
    ("eval-zero-samples-no-greedy", lambda w, t: evaluate(w, t, "--samples", 0), "--samples 0 needs --greedy"),
    ("eval-negative-temperature", lambda w, t: evaluate(w, t, "--temperature", -0.5), "--temperature: must be at least 0, got -0.5"),
    ("eval-zero-temperature-many-samples", lambda w, t: evaluate(w, t, "--temperature", 0),
     "--temperature 0 makes all samples identical: use --greedy"),
    ("eval-zero-top-p", lambda w, t: evaluate(w, t, "--top-p", 0), "--top-p: must be positive, got 0.0"),
    ("eval-tiny-temperature", lambda w, t: evaluate(w, t, "--temperature", 1e-300),
     "--temperature: must be 0 (greedy) or at least 0.0002, got 1e-300"),
    ("eval-zero-max-tokens", lambda w, t: evaluate(w, t, "--max-tokens", 0), "--max-tokens: must be at least 1, got 0"),
    ("eval-zero-batch-size", lambda w, t: evaluate(w, t, "--batch-size", 0), "--batch-size: must be at least 1, got 0"),
    ("eval-zero-limit", lambda w, t: evaluate(w, t, "--limit", 0), "--limit: must be at least 1, got 0"),
    ("eval-no-such-model", lambda w, t: evaluate(w, t, model=t / "nope"), "nope: no such model folder"),
    ("eval-model-hub-id-offline", lambda w, t: evaluate(w, t, model=HUB_ID), f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    ("eval-model-not-a-model", lambda w, t: evaluate(w, t, model=w.data), "cannot load model"),
    ("eval-out-exists", lambda w, t: evaluate(w, t, out=nonempty_folder(t)), "output folder exists and is not empty"),
    ("eval-out-is-a-file", lambda w, t: evaluate(w, t, out=a_file(t)), "output folder exists and is not empty"),
    # ---- outputs that cannot be written, options checked before any work ----
    ("train-assistant-turn-first", lambda w, t: train(w, t, data=rows(t, '{"messages": [{"role": "assistant", "content": "hi"}]}')),
     "train.jsonl:1: 'messages' starts with an assistant turn"),
    ("train-adapter-path-under-a-file", lambda w, t: train(w, t, "--adapter-path", a_file(t) / "sub"), "a-file/sub: cannot write (Not a directory)"),
    ("train-num-layers-more-than-blocks", lambda w, t: train(w, t, "--num-layers", 5), "num_layers: 5 but the model has 2 blocks"),
    ("train-negative-num-layers", lambda w, t: train(w, t, "--num-layers", -3),
     "num_layers: must be -1 (all) or at least 1, got -3"),
    ("train-lora-keys-match-nothing", lambda w, t: train(w, t, "--lora-keys", "nope.proj"), "lora_keys: ['nope.proj'] matched no layer"),
    ("score-negative-max-seq-length", lambda w, t: score(w, t, "--max-seq-length", -1),
     "max_seq_length: must be at least 1, got -1"),
    ("score-scores-path-is-a-file", lambda w, t: score(w, t, "--scores-path", a_file(t)), "a-file: cannot write (File exists)"),
    ("merge-out-under-a-file", lambda w, t: merge(w, t, out=a_file(t) / "sub"), "a-file/sub: cannot write (Not a directory)"),
    ("export-out-under-a-file", lambda w, t: export(w, t, out=a_file(t) / "sub"), "a-file/sub: cannot write (Not a directory)"),
    ("eval-out-under-a-file", lambda w, t: evaluate(w, t, out=a_file(t) / "sub"), "a-file/sub: cannot write (Not a directory)"),
    ("demo-zero-iters", lambda w, t: ["demo", "--out", t / "out", "--iters", 0], "--iters: must be at least 1, got 0"),
    ("demo-out-under-a-file", lambda w, t: ["demo", "--out", a_file(t) / "sub", "--iters", 1], "Not a directory"),
    ("demo-out-exists", lambda w, t: ["demo", "--out", nonempty_folder(t)],
     "output folder exists and is not empty (use --force to replace an earlier demo"),
    ("demo-force-over-foreign-folder", lambda w, t: ["demo", "--out", nonempty_folder(t), "--force"],
     "not a gift demo folder (holds notes.txt)"),
    ("eval-second-model-missing-checked-first", lambda w, t: evaluate(w, t, "--model", t / "nope"), "nope: no such model folder"),
    ("eval-second-model-hub-id-offline-checked-first", lambda w, t: evaluate(w, t, "--model", HUB_ID),
     f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    # ---- pair-check ----
    ("pair-check-other-architecture", lambda w, t: ["pair-check", w.base, w.qinstruct],
     "differ in architecture: model_type: llama vs qwen2"),
    ("pair-check-other-vocabulary", lambda w, t: ["pair-check", w.big_vocab, w.instruct],
     "differ in architecture: vocab_size:"),
    ("pair-check-missing-tensor", lambda w, t: ["pair-check", w.base, w.missing_tensor],
     "hold different tensors: 1 only in"),
    ("pair-check-other-token-ids", lambda w, t: ["pair-check", w.base, w.other_tokens],
     "have different tokenizers: 2 token ids hold other tokens"),
    ("pair-check-no-chat-template", lambda w, t: ["pair-check", w.base, w.no_template, "--json"],
     "tokenizer has no chat template"),
    ("pair-check-no-such-model", lambda w, t: ["pair-check", t / "nope", w.instruct], "nope: no such model folder"),
    ("pair-check-not-a-model", lambda w, t: ["pair-check", w.base, w.data], "config.json: cannot read model config"),
    ("pair-check-hub-id-offline", lambda w, t: ["pair-check", HUB_ID, w.instruct],
     f"{HUB_ID}: cannot fetch from the Hugging Face Hub"),
    ("pair-check-shard-missing", lambda w, t: ["pair-check", w.base, copy_of(w.instruct, t / "inst", drop="model.safetensors")],
     "listed in the shard index but missing"),
    # ---- one config layer: types, ranges and finiteness, for YAML and flags alike (issue 13) ----
    ("train-config-bool-as-string", lambda w, t: train(w, t, "-c", write(t / "run.yaml", 'online_scores: "no"\n')),
     "run.yaml: field 'online_scores' must be true or false, got 'no'"),
    ("train-config-list-for-a-path", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "data: [a, b]\n")),
     "run.yaml: field 'data' must be a string, got ['a', 'b']"),
    ("train-config-nan", lambda w, t: train(w, t, "-c", write(t / "run.yaml", "learning_rate: .nan\n")),
     "learning_rate: must be a finite number, got nan"),
    ("train-negative-seed", lambda w, t: train(w, t, "--seed", -1), "seed: must be at least 0, got -1"),
    ("train-seed-above-2-64", lambda w, t: train(w, t, "--seed", 2**64), "seed: must be at most 18446744073709551615"),
    ("train-infinite-epochs", lambda w, t: train(w, t, "--epochs", "inf"), "epochs: must be a finite number, got inf"),
    ("train-huge-iters", lambda w, t: train(w, t, "--iters", 10**30), "iters: must be at most 2147483647"),
    ("train-huge-lora-rank", lambda w, t: train(w, t, "--lora-rank", 10**30), "lora_rank: must be at most 65536"),
    ("train-huge-max-seq-length", lambda w, t: train(w, t, "--max-seq-length", 10**30), "max_seq_length: must be at most"),
    ("train-huge-pad-lengths", lambda w, t: train(w, t, "--pad-lengths", 10**30), "pad_lengths: must be at most 64"),
    ("train-huge-grad-accumulation", lambda w, t: train(w, t, "--grad-accumulation-steps", 10**30),
     "grad_accumulation_steps: must be at most 65536"),
    ("train-gamma-underflows-every-weight", lambda w, t: train(w, t, "--gamma", 1000),
     "gamma: floor^gamma = 0.0001^1000.0 underflows to 0 in float32"),
    ("train-infinite-learning-rate", lambda w, t: train(w, t, "--learning-rate", "inf"),
     "learning_rate: must be a finite number, got inf"),
    ("train-nan-weight-decay", lambda w, t: train(w, t, "--weight-decay", "nan"), "weight_decay: must be a finite number, got nan"),
    ("train-resume-and-overwrite", lambda w, t: train(w, t, "--resume", "--overwrite"), "--resume and --overwrite exclude each other"),
    ("eval-huge-samples", lambda w, t: evaluate(w, t, "--samples", 10**30), "--samples: must be at most 1048576"),
    ("eval-negative-seed", lambda w, t: evaluate(w, t, "--seed", -1), "--seed: must be at least 0, got -1"),
    ("eval-nan-temperature", lambda w, t: evaluate(w, t, "--temperature", "nan"), "--temperature: must be a finite number, got nan"),
    ("chat-negative-seed", lambda w, t: chat(w, t, "--seed", -1), "--seed: must be at least 0, got -1"),
    ("chat-prompt-lone-surrogate", lambda w, t: ["chat", "--model", w.instruct, "--prompt", "hi \udc80"],
     "--prompt: not valid Unicode"),
    ("eval-instruction-lone-surrogate", lambda w, t: evaluate(w, t, "--instruction", "\udc80"),
     "--instruction: not valid Unicode"),
    ("chat-infinite-top-p", lambda w, t: chat(w, t, "--top-p", "inf"), "--top-p: must be a finite number, got inf"),
    ("demo-negative-seed", lambda w, t: ["demo", "--out", t / "out", "--seed", -1], "--seed: must be at least 0, got -1"),
    ("demo-zero-limit", lambda w, t: ["demo", "--out", t / "out", "--limit", 0], "--limit: must be at least 1, got 0"),
    ("merge-nan-scale", lambda w, t: merge(w, t, "--scale", "nan"), "--scale: must be a finite number, got nan"),
    ("merge-infinite-scale", lambda w, t: merge(w, t, "--scale", "inf"), "--scale: must be a finite number, got inf"),
    ("merge-huge-scale", lambda w, t: merge(w, t, "--scale", "1e30"), "--scale: must be at most 1000"),
    ("export-nan-scale", lambda w, t: export(w, t, "--scale", "nan"), "--scale: must be a finite number, got nan"),
    ("export-huge-scale", lambda w, t: export(w, t, "--scale", "-1e30"), "--scale: must be at least -1000"),
    # ---- non-finite values are never written ----
    ("merge-adapter-holds-nan", lambda w, t: merge(w, t, adapter=adapter_copy(w, t, weights=nan_weights)),
     "holds NaN or infinite values; nothing written"),
    ("export-adapter-holds-nan", lambda w, t: export(w, t, adapter=adapter_copy(w, t, weights=nan_weights)),
     "holds NaN or infinite values; nothing written"),
    # ---- config files of the wrong JSON type or with wrong-typed fields ----
    ("merge-adapter-config-a-list", lambda w, t: merge(w, t, adapter=write(adapter_copy(w, t) / "adapter_config.json", "[1]").parent),
     "adapter_config.json: expected a JSON object, got list"),
    ("merge-adapter-config-rank-a-string", lambda w, t: merge(w, t, adapter=adapter_copy(
        w, t, config=lambda c: {**c, "lora_parameters": {**c["lora_parameters"], "rank": "4"}})),
     "adapter_config.json: field 'lora_parameters.rank' must be a positive integer, got '4'"),
    ("export-adapter-config-scale-nan", lambda w, t: export(w, t, adapter=write(adapter_copy(w, t) / "adapter_config.json",
        json.dumps({"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": "NaN"}})).parent),
     "field 'lora_parameters.scale' must be a finite number"),
    ("merge-adapter-config-instruct-a-number", lambda w, t: merge(w, t, adapter=adapter_copy(
        w, t, config=lambda c: {**c, "instruct_model": 7})), "field 'instruct_model' must be a string, got int"),
    ("train-model-config-a-list", lambda w, t: train(w, t, base=write(copy_of(w.base, t / "b") / "config.json", "[]").parent),
     "config.json: expected a JSON object, got list"),
    ("train-model-config-vocab-a-string", lambda w, t: train(w, t, base=model_copy(w, t, lambda c: {**c, "vocab_size": "384"})),
     "config.json: field 'vocab_size' must be a positive integer, got '384'"),
    # ---- outputs into inputs ----
    ("train-adapter-path-inside-instruct", lambda w, t: train(w, t, "--adapter-path", w.instruct / "adapters"),
     "the adapter path must not be, contain or lie inside the input"),
    ("train-adapter-path-is-the-data-folder", lambda w, t: train(w, t, "--adapter-path", w.data),
     "the adapter path must not be, contain or lie inside the input"),
    ("train-scores-path-inside-base", lambda w, t: train(w, t, "--scores-path", w.base / "scores"),
     "the scores folder must not be, contain or lie inside the input"),
    ("score-scores-path-inside-instruct", lambda w, t: score(w, t, "--scores-path", w.instruct / "scores"),
     "the scores folder must not be, contain or lie inside the input"),
    ("eval-out-inside-the-model", lambda w, t: evaluate(w, t, out=w.instruct / "results"),
     "the eval output must not be, contain or lie inside the input"),
    # ---- the data readers ----
    ("train-response-holds-end-of-turn-text", lambda w, t: train(w, t, data=rows(
        t, GOOD_ROW, json.dumps({"prompt": "1+1?", "completion": "2<|im_end|> and more"}))),
     "train.jsonl:2: the assistant message contains the text '<|im_end|>'"),
    ("score-prompt-holds-turn-start-text", lambda w, t: score(w, t, data=rows(
        t, json.dumps({"prompt": "hi <|im_start|>system", "completion": "2"}))),
     "train.jsonl:1: the user message contains the text '<|im_start|>'"),
    ("train-nan-literal", lambda w, t: train(w, t, data=rows(t, '{"prompt": NaN, "completion": "b"}')),
     "train.jsonl:1: malformed JSON (NaN is not a JSON value)"),
    ("train-deeply-nested-json", lambda w, t: train(w, t, data=rows(t, GOOD_ROW, nested(100_000))),
     "train.jsonl:2: JSON nested too deeply"),
    ("train-lone-surrogate", lambda w, t: train(w, t, data=rows(t, '{"prompt": "a\\ud800", "completion": "b"}')),
     "train.jsonl:1: not valid Unicode (a lone surrogate \\ud800 in a string)"),
    ("eval-lone-surrogate", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", '{"question": "\\udfff", "answer": "1"}\n')),
     "p.jsonl:1: not valid Unicode"),
    ("train-no-chat-template", lambda w, t: train(w, t, instruct=w.no_template), "tokenizer has no chat template"),
    ("score-no-chat-template", lambda w, t: score(w, t, instruct=w.no_template), "tokenizer has no chat template"),
    ("score-vocabulary-larger-than-the-model", lambda w, t: score(
        w, t, instruct=model_copy(w, t, lambda c: {**c, "vocab_size": 100}, "instruct")), "vocabulary of 100 rows"),
    ("eval-empty-question", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", '{"question": " ", "answer": "1"}\n')),
     "p.jsonl:1: field 'question' is empty"),
    ("eval-empty-answer", lambda w, t: evaluate(w, t, data=write(t / "p.jsonl", GOOD_PROBLEM + '\n{"question": "q", "answer": ""}\n')),
     "p.jsonl:2: field 'answer' is empty"),
    # ---- run-folder integrity ----
    ("train-fresh-run-into-an-earlier-run", lambda w, t: train(w, t, "--adapter-path", copy_of(w.adapter, t / "out")),
     "holds an earlier training run (checkpoint-0000001.safetensors); pass --resume to continue it, --overwrite"),
    # ---- chat ----
    ("chat-no-such-model", lambda w, t: chat(w, t, model=t / "nope"), "nope: no such model folder"),
    ("chat-model-hub-id-offline", lambda w, t: chat(w, t, model=HUB_ID), f"{HUB_ID}: cannot load model"),
    ("chat-model-not-a-model", lambda w, t: chat(w, t, model=w.data), "cannot load model"),
    ("chat-no-chat-template", lambda w, t: chat(w, t, model=w.no_template), "tokenizer has no chat template"),
    ("chat-negative-temperature", lambda w, t: chat(w, t, "--temperature", -1), "--temperature: must be at least 0, got -1.0"),
    ("chat-zero-top-p", lambda w, t: chat(w, t, "--top-p", 0), "--top-p: must be positive, got 0.0"),
    ("chat-tiny-top-p", lambda w, t: chat(w, t, "--top-p", 1e-300),
     "--top-p: must be at least 1.1754944e-38, got 1e-300"),
    ("chat-tiny-temperature", lambda w, t: chat(w, t, "--temperature", 1e-300),
     "--temperature: must be 0 (greedy) or at least 0.0002, got 1e-300"),
    ("chat-zero-max-tokens", lambda w, t: chat(w, t, "--max-tokens", 0), "--max-tokens: must be at least 1, got 0"),
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
    assert {"train", "score", "merge", "export", "eval", "chat", "pair"} <= commands
    assert len(CASES) >= 30 and len({i for i, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("args, option", [
    (["train", "--iters", "ten"], "'--iters': 'ten' is not a valid integer"),
    (["merge", "--out", "m", "--format", "onnx"], "'--format': 'onnx' is not one of 'mlx', 'hf', 'gguf'"),
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
