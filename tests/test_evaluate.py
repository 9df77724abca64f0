"""Evaluation: option checks, batched sampling that matches sequential decoding, and `gift eval` end to end on a
tiny model (the metrics are tested in test_metrics.py, the record shapes in test_problems.py)."""

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from gift_mlx import evaluate as ev
from gift_mlx import grading, metrics, plot, problems
from test_plot import read_rgb, rgb
from gift_mlx.errors import GiftError


def gift(*args):
    return subprocess.run([sys.executable, "-m", "gift_mlx", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_option_checks():
    for bad in (dict(samples=-1), dict(samples=0), dict(temperature=0.0, samples=4), dict(top_p=0.0),
                dict(max_tokens=0), dict(batch_size=0), dict(limit=0), dict(temperature=1e-300),
                dict(temperature=1.9e-4), dict(top_p=1e-300), dict(top_p=1e-39)):
        with pytest.raises(GiftError):
            ev.EvalSettings(**bad).check()
    ev.EvalSettings(samples=0, greedy=True).check()
    ev.EvalSettings(temperature=0.0, samples=1).check()
    ev.EvalSettings(temperature=2e-4, top_p=1.2e-38).check()


def test_smallest_temperature_and_top_p_still_sample_the_top_token():
    """At the bounds, float16 log-probabilities of a flat 262k vocabulary stay finite after / temperature, and
    top-p keeps the top token (below them mlx-lm draws any token)."""
    import mlx.core as mx
    from mlx_lm.sample_utils import make_sampler

    from gift_mlx.config import FLOAT32_TINY, TEMPERATURE_MIN

    logprobs = mx.full((1, 2**18), -12.47, dtype=mx.float16)
    logprobs[0, 7] = -12.4
    assert {make_sampler(TEMPERATURE_MIN)(logprobs).item() for _ in range(5)} == {7}
    probs = mx.log(mx.softmax(mx.array([[1.0, 3.0, 2.0, 0.5]]), axis=-1))
    assert {make_sampler(1.0, FLOAT32_TINY)(probs).item() for _ in range(5)} == {1}


# ---- generation ----


def test_batched_greedy_matches_sequential_decoding(llama_pair, task_data):
    """Shared prefill + continuous batching must not change what the model generates."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from gift_mlx.models import load_model

    model, tokenizer, _ = load_model(llama_pair[1])
    tasks = problems.read_problems(task_data, limit=5)
    prompts = [ev.prompt_tokens(tokenizer, problems.prompt_messages(p, "the answer is" * i)) for i, p in enumerate(tasks)]
    assert len({len(p) for p in prompts}) == 5  # prompts of different lengths share the batch
    batched = {(i, j): ids for i, j, ids, _ in ev.generate_batched(model, tokenizer, prompts, 2, make_sampler(0.0),
                                                                    16, batch_size=4)}
    assert len(batched) == 10
    for i, p in enumerate(prompts):
        sequential = [r.token for r in stream_generate(model, tokenizer, p, max_tokens=16)]
        sequential = [t for t in sequential if t not in tokenizer.eos_token_ids]
        assert batched[(i, 0)] == batched[(i, 1)] == sequential


def _records(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_gift_eval_end_to_end(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    out = tmp_path / "results"
    args = ["eval", "--model", base, "--model", instruct, "--data", task_data / "test.jsonl", "--samples", 4,
            "--greedy", "--max-tokens", 12, "--limit", 3, "--batch-size", 6, "--out", out]
    r = gift(*args)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.md", "samples.jsonl", "scaling.png", "summary.json"]
    assert not list(tmp_path.glob(".results.*"))  # no staging folder left behind

    records, summary = _records(out), json.loads((out / "summary.json").read_text())
    assert len(records) == 2 * 3 * (4 + 1)  # models x problems x (samples + greedy)
    assert summary["ks"] == [1, 2, 4] and [m["name"] for m in summary["models"]] == ["base", "instruct"]
    by = defaultdict(list)
    for rec in records:
        assert 0 < rec["tokens"] <= 12 and rec["finish_reason"] in ("stop", "length")
        by[rec["model"], rec["mode"], rec["problem"]].append(rec)
    for m in summary["models"]:  # the summary is what the per-sample records say
        samples = [sorted(by[m["name"], "sample", i], key=lambda s: s["sample"]) for i in range(3)]
        assert all([s["sample"] for s in problem] == [0, 1, 2, 3] for problem in samples)
        flags = [[s["correct"] for s in problem] for problem in samples]
        keys = [[grading.canonical(s["answer"]) for s in problem] for problem in samples]
        expected = metrics.sample_metrics(flags, keys)
        for metric in ("pass@k", "average@k", "maj@k"):
            assert m[metric] == {str(k): pytest.approx(v) for k, v in expected[metric].items()}
        greedy = [by[m["name"], "greedy", i][0]["correct"] for i in range(3)]
        assert m["greedy_accuracy"] == pytest.approx(sum(greedy) / 3)
        assert m["sampling"]["generated_tokens"] == sum(s["tokens"] for s in records
                                                        if s["model"] == m["name"] and s["mode"] == "sample")

    table = (out / "results.md").read_text()
    assert "| metric (%) | base | instruct |" in table and "| pass@4 |" in table and "| greedy accuracy |" in table
    assert "| Average@4 |" in table and "| Average@1 |" not in table and "| maj@2 |" in table
    assert "Every sampled row is estimated from all 4 samples" in table and "exact mean over all C(n, k)" in table
    for m in summary["models"]:  # one estimator family: at k = 1 they all are the accuracy over all samples
        assert m["pass@k"]["1"] == m["average@k"]["4"] == m["average@k"]["1"]
        assert m["maj@k"]["1"] == m["average@k"]["4"]
    assert "| pass@4 | " + " | ".join(f"{100 * m['pass@k']['4']:.1f}" for m in summary["models"]) + " |" in table
    cut = [m["name"] for m in summary["models"] if max(m["sampling"]["truncated"], m["greedy"]["truncated"]) > 0.5]
    assert ("hit --max-tokens 12" in table) == bool(cut) and all(n in table.split("**Warning:**")[-1] for n in cut)
    assert ("hit --max-tokens" in r.stdout) == bool(cut)
    image = read_rgb(out / "scaling.png")
    assert image.shape[1] > 700
    for color in plot.COLORS[:2]:  # one curve color per model
        assert (image == rgb(color)).all(axis=-1).sum() > 50

    # --seed makes a run repeatable; an existing output needs --overwrite
    r = gift(*args)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    first = [rec["completion"] for rec in records]
    assert gift(*args, "--overwrite").returncode == 0
    assert [rec["completion"] for rec in _records(out)] == first


def test_generation_batch_is_bounded_by_memory(llama_pair, task_data, monkeypatch):
    """sequence_bytes bounds what decoding takes (MLX's peak), and fit_batch lowers --batch-size to the budget."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.sample_utils import make_sampler

    from gift_mlx.models import load_model

    model, tokenizer, _ = load_model(llama_pair[1])
    prompts = [ev.prompt_tokens(tokenizer, problems.prompt_messages(p, None))
               for p in problems.read_problems(task_data, limit=2)]
    per_sequence = ev.sequence_bytes(model, max(map(len, prompts)) + 4)
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    mx.reset_peak_memory()
    list(ev.generate_batched(model, tokenizer, prompts, 128, make_sampler(1.0), 4, 256))
    assert mx.get_peak_memory() < weights + 256 * per_sequence

    logs, settings = [], ev.EvalSettings(batch_size=65536, max_tokens=4)
    monkeypatch.setattr(ev, "memory_bytes", lambda: weights + 4 * 10 * per_sequence + 1)
    assert ev.fit_batch(model, "instruct", prompts, settings, logs.append) == 10
    assert logs == [f"instruct: --batch-size 65536 lowered to 10: that many sequences in flight fill "
                    f"{10 * per_sequence / 1e9:.1f} GB of KV cache and logits, a quarter of the memory the weights "
                    "leave"]
    settings.batch_size = 6
    assert ev.fit_batch(model, "instruct", prompts, settings, logs.append) == 6 and len(logs) == 1
    monkeypatch.setattr(ev, "memory_bytes", lambda: weights)
    with pytest.raises(GiftError, match="^instruct: one sequence of .* lower --max-tokens$"):
        ev.fit_batch(model, "instruct", prompts, settings, logs.append)


@pytest.fixture(scope="module")
def nan_instruct(llama_pair, tmp_path_factory):
    """The instruct model of the toy pair with one weight set to NaN."""
    import shutil

    import mlx.core as mx

    folder = tmp_path_factory.mktemp("nan") / "nan_instruct"
    shutil.copytree(llama_pair[1], folder)
    path = next(folder.glob("*.safetensors"))
    weights = mx.load(str(path))
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    mx.save_safetensors(str(path), weights)
    return folder


def test_a_model_with_a_nan_weight_stops_eval_with_one_error(nan_instruct, llama_pair, task_data, tmp_path):
    """No accuracy is reported for a model whose logits are not finite, and nothing is written."""
    for greedy, samples in ((False, 2), (True, 0)):
        with pytest.raises(GiftError, match="^nan_instruct: the model's logits are not finite"):
            ev.evaluate([llama_pair[1], nan_instruct], task_data, tmp_path / "out", samples=samples, greedy=greedy,
                        limit=2, max_tokens=4, progress=False, log=lambda s: None)
        assert list(tmp_path.iterdir()) == []


def test_malformed_eval_file_exits_2(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"question": "What is 1+1?", "answer": "#### 2"}) + "\n"
                    + json.dumps({"text": "hello", "label": 3}) + "\n")
    r = gift("eval", "--model", tmp_path / "nomodel", "--data", data, "--out", tmp_path / "out")
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {data}:2: unknown eval record shape (fields: label, text)")
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch, task_data):
    def interrupted(*args, **kwargs):
        args[4]({"partial": True})  # a record was written, then the user pressed Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate([str(task_data)], task_data, tmp_path / "out", samples=2, progress=False, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []
