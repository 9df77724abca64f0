import itertools
import json

import numpy as np
import pytest

from gift_mlx import data, toy
from gift_mlx.errors import GiftError
from gift_mlx.models import load_tokenizer


@pytest.fixture(scope="module")
def tok(llama_pair):
    return load_tokenizer(llama_pair[1])


def targets_text(tok, tokens, target):
    return tok.decode([int(t) for t in tokens[target]])


def test_prompt_completion_targets_are_exactly_response_and_end_of_turn(tok):
    msgs = data.to_messages({"prompt": "What is 3+4?", "completion": "3+4=7. #### 7"}, "x")
    tokens, target, _ = data.tokenize(msgs, tok)
    assert targets_text(tok, tokens, target) == "3+4=7. #### 7<|im_end|>"
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True)
    assert list(tokens[: len(prompt)]) == prompt and not target[: len(prompt)].any()
    assert target[len(prompt):].all()  # contiguous up to the end of turn, nothing after it kept


def test_multi_turn_targets_every_assistant_turn_and_no_user_turn(tok):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    tokens, target, _ = data.tokenize(data.to_messages({"messages": msgs}, "x"), tok)
    assert targets_text(tok, tokens, target) == "2<|im_end|>4<|im_end|>"
    text = tok.decode([int(t) for t in tokens])
    assert text.endswith("4<|im_end|>") and "Be brief." in text


@pytest.mark.parametrize("record, user, system", [
    ({"instruction": "Add 2 and 2", "response": "4"}, "Add 2 and 2", None),
    ({"instruction": "Add", "input": "2 and 2", "output": "4"}, "Add\n\n2 and 2", None),
    ({"prompt": "Add 2 and 2", "completion": "4", "system": "You add."}, "Add 2 and 2", "You add."),
])
def test_record_shapes(record, user, system):
    msgs = data.to_messages(record, "f:1")
    assert msgs[-1] == {"role": "assistant", "content": "4"}
    assert msgs[-2] == {"role": "user", "content": user}
    assert (msgs[0]["content"] if msgs[0]["role"] == "system" else None) == system


def test_collate_pads_with_zero_weight_and_shifts_labels(tok):
    rows = [data.tokenize(data.to_messages(r, "x"), tok)[:2] for r in toy.arithmetic_records(3)]
    ex = [data.Example(t, m) for t, m in rows]
    scores = [np.linspace(0.1, 0.9, e.num_targets).astype(np.float32) for e in ex]
    longest = max(len(e.tokens) for e in ex) - 1
    inputs, labels, w = data.collate(ex, scores, [8, longest + 5, longest + 9, 4096])
    assert inputs.shape[1] == longest + 5  # the smallest padded length that fits
    assert data.collate(ex, scores)[0].shape[1] == longest  # no lengths given: the longest row
    for b, e in enumerate(ex):
        n = len(e.tokens) - 1
        assert (inputs[b, :n] == e.tokens[:-1]).all() and (labels[b, :n] == e.tokens[1:]).all()
        assert (w[b, n:] == 0).all()  # no padding position is a target
        np.testing.assert_array_equal(w[b, :n][e.target[1:]], scores[b])
        assert (w[b, :n][~e.target[1:]] == 0).all()


def test_truncation_is_counted_and_rows_without_targets_dropped(tmp_path, tok):
    path = toy.write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "short", "completion": "x" * 200},
        {"prompt": "y" * 300, "completion": "z"},
        {"prompt": "ok", "completion": "fine"},
    ])
    ds = data.load_split(path, tok, max_seq_length=40)
    assert (len(ds), ds.truncated, ds.dropped) == (2, 2, 1)
    assert all(len(e.tokens) <= 40 for e in ds.examples)


def test_fit_pad_lengths_is_the_least_padding_choice():
    rng = np.random.default_rng(1)
    lengths = np.concatenate([rng.integers(20, 60, 30), rng.integers(150, 170, 20), rng.integers(300, 700, 25)])
    lengths = np.minimum(lengths, 511)  # inputs are at most max_seq_length - 1 tokens
    cand = sorted({-(-n // 8) * 8 for n in lengths})

    def padding(pads):
        return sum(next(p for p in pads if p >= n) - n for n in lengths)

    for k in (1, 2, 4):
        pads = data.fit_pad_lengths(lengths, 512, k)
        assert len(pads) <= k and pads == sorted(pads) and pads[-1] == cand[-1]  # the longest row fits
        assert all(p % 8 == 0 for p in pads)
        brute = min(padding(list(c) + cand[-1:]) for c in itertools.combinations(cand[:-1], k - 1))
        assert padding(pads) == brute


def test_batch_order_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=400)
    batches = data.batch_order(lengths, 8, rng, window=10)
    assert sorted(i for b in batches for i in b) == list(range(400))
    padded = sum(8 * max(lengths[b]) for b in batches)
    naive = sum(8 * max(lengths[i : i + 8]) for i in range(0, 400, 8))
    assert padded < 0.8 * naive


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n', "train.jsonl:2: malformed JSON"),
    ('{"prompt": "a", "completion": 3}\n', "train.jsonl:1: field 'completion' must be a string"),
    ('{"question": "a"}\n', "train.jsonl:1: unknown record shape (fields: question)"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "train.jsonl:1: 'messages' has no assistant turn"),
    ('[1, 2]\n', "train.jsonl:1: expected a JSON object"),
    ("\n\n", "train.jsonl: no records"),
])
def test_bad_records_name_file_and_line(tmp_path, tok, content, message):
    (tmp_path / "train.jsonl").write_text(content)
    with pytest.raises(GiftError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.load_data(tmp_path, tok, 2048)


def test_data_folder_without_train(tmp_path):
    (tmp_path / "valid.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    with pytest.raises(GiftError, match="no train.jsonl"):
        data.data_files(tmp_path)
    with pytest.raises(GiftError, match="no such data file"):
        data.data_files(tmp_path / "missing")
