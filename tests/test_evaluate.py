"""Evaluation: metric estimators against hand-computed cases, published data shapes, batched sampling that
matches sequential decoding, and `gift eval` end to end on a tiny model."""

import json
import os
import subprocess
import sys
from collections import defaultdict
from math import comb

import pytest

from gift_mlx import evaluate as ev
from gift_mlx import plot
from test_plot import read_rgb, rgb
from gift_mlx.errors import GiftError


def gift(*args):
    return subprocess.run([sys.executable, "-m", "gift_mlx", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


# ---- metrics ----


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 1 / 4),
    (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
    (4, 2, 2, 1 - 1 / 6),
    (5, 0, 3, 0.0),
    (3, 2, 2, 1.0),  # fewer wrong samples than k: every k-subset holds a right one
    (16, 16, 16, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert ev.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_binomial_formula():
    for n in (1, 7, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert ev.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    with pytest.raises(GiftError):
        ev.pass_at_k(4, 1, 5)


def test_ks_average_and_majority():
    assert ev.ks_for(16) == [1, 2, 4, 8, 16]
    assert ev.ks_for(6) == [1, 2, 4, 6]
    assert ev.ks_for(1) == [1]
    correct = [[True, False, True, True], [False, False, False, True]]
    keys = [["7", "3", "7", "7"], ["1", "2", "2", "9"]]
    assert ev.average_at_k(correct, 1) == 0.5
    assert ev.average_at_k(correct, 2) == 0.25  # (1/2 + 0) / 2
    assert ev.average_at_k(correct, 4) == 0.5
    # groups of 2: [7,3] tie -> 7 right; [7,7] right; [1,2] tie -> 1 wrong; [2,9] tie -> 2 wrong
    assert ev.maj_at_k(correct, keys, 2) == 0.5
    assert ev.maj_at_k(correct, keys, 4) == 0.5  # 7 wins (right); 2 wins (wrong)
    assert ev.maj_at_k(correct, keys, 1) == 4 / 8  # one sample: its own answer, right in 4 of 8
    assert ev.maj_at_k([[False] * 2], [[None, None]], 2) == 0.0  # no answer at all counts as wrong
    m = ev.sample_metrics(correct, keys)
    assert m["pass@k"][4] == 1.0 and m["pass@k"][1] == pytest.approx(4 / 8)


# ---- published data shapes ----

SHAPES = [
    ({"question": "Natalia sold 48 clips...", "answer": "She sold 48+24 = <<48+24=72>>72.\n#### 72"}, "72", 0),
    ({"problem": "Compute $1/2+1/4$.", "solution": "We get $\\boxed{\\frac{3}{4}}$."}, "\\frac{3}{4}", 0),
    ({"problem": "p", "solution": "long \\boxed{5}", "answer": "5", "level": "Level 1"}, "5", 0),  # MATH-500
    ({"prompt": "What is 6*7?", "answer": 42}, "42", 0),
    ({"question": "What is 6*7?", "answer": "42"}, "42", 0),
    ({"prompt": "What is 1+2?", "completion": "1+2=3. #### 3"}, "3", 0),  # this project's training shape
    ({"question": "Pick", "choices": ["a", "b", "c", "d"], "answer": 2}, "C", 4),  # MMLU
    ({"question": "Pick", "choices": ["a", "b", "c"], "answer": "b"}, "B", 3),
    ({"question": "Pick", "choices": {"text": ["a", "b"], "label": ["1", "2"]}, "answerKey": "2"}, "B", 2),  # ARC
    ({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "So \\boxed{4}."}]}, "4", 0),
    ({"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]},
     "Paris", 0),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "2+3?"}], "answer": "5"}, "5", 0),
]


@pytest.mark.parametrize("record,reference,n_choices", SHAPES)
def test_published_shapes(record, reference, n_choices):
    p = ev.to_problem(record, "f.jsonl:1")
    assert (p.reference, p.n_choices) == (reference, n_choices)
    assert p.messages[-1]["role"] == "user"
    assert all(m["role"] != "assistant" for m in p.messages)  # the reference never leaks into the prompt


def test_choice_prompt_and_instructions():
    p = ev.to_problem({"question": "Pick", "choices": ["red", "blue"], "answer": 0}, "f:1")
    assert p.messages[0]["content"] == "Pick\n\nA. red\nB. blue"
    assert ev.prompt_messages(p)[-1]["content"].endswith(ev.DEFAULT_INSTRUCTIONS["choice"])
    q = ev.to_problem({"question": "1+1?", "answer": "2"}, "f:1")
    assert ev.prompt_messages(q)[-1]["content"] == "1+1?\n" + ev.DEFAULT_INSTRUCTIONS["math"]
    assert ev.prompt_messages(q, "")[-1]["content"] == "1+1?"
    assert q.messages[0]["content"] == "1+1?"  # the problem itself is not modified


@pytest.mark.parametrize("record,message", [
    ({"text": "hi", "label": 1}, "fields: label, text"),
    ({"problem": "p", "solution": "no box here"}, "no \\boxed{}"),
    ({"question": "q", "choices": ["a", "b"], "answer": 5}, "choice index or letter"),
    ({"messages": [{"role": "user", "content": "x"}]}, "must end with a user turn"),
    ({"question": ["not", "text"], "answer": "1"}, "must be a string"),
])
def test_bad_records_name_the_problem(record, message):
    with pytest.raises(GiftError, match=r"f\.jsonl:3") as e:
        ev.to_problem(record, "f.jsonl:3")
    assert message in str(e.value)


def test_option_checks():
    for bad in (dict(samples=-1), dict(samples=0), dict(temperature=0.0, samples=4), dict(top_p=0.0),
                dict(max_tokens=0), dict(batch_size=0), dict(limit=0)):
        with pytest.raises(GiftError):
            ev.EvalSettings(**bad).check()
    ev.EvalSettings(samples=0, greedy=True).check()
    ev.EvalSettings(temperature=0.0, samples=1).check()


# ---- generation ----


def test_batched_greedy_matches_sequential_decoding(llama_pair, task_data):
    """Shared prefill + continuous batching must not change what the model generates."""
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from gift_mlx.models import load_model

    model, tokenizer, _ = load_model(llama_pair[1])
    problems = ev.read_problems(task_data, limit=5)
    prompts = [ev.prompt_tokens(tokenizer, ev.prompt_messages(p, "the answer is" * i)) for i, p in enumerate(problems)]
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
        keys = [[ev.grading.canonical(s["answer"]) for s in problem] for problem in samples]
        expected = ev.sample_metrics(flags, keys)
        for metric in ("pass@k", "average@k", "maj@k"):
            assert m[metric] == {str(k): pytest.approx(v) for k, v in expected[metric].items()}
        greedy = [by[m["name"], "greedy", i][0]["correct"] for i in range(3)]
        assert m["greedy_accuracy"] == pytest.approx(sum(greedy) / 3)
        assert m["sampling"]["generated_tokens"] == sum(s["tokens"] for s in records
                                                        if s["model"] == m["name"] and s["mode"] == "sample")

    table = (out / "results.md").read_text()
    assert "| metric | base | instruct |" in table and "| pass@4 |" in table and "| greedy accuracy |" in table
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
