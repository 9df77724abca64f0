"""Eval records in their published shapes -> problems, references and prompts; bad records named by line."""

import pytest

from gift_mlx import problems
from gift_mlx.errors import GiftError

SHAPES = [
    ({"question": "Natalia sold 48 clips...", "answer": "She sold 48+24 = <<48+24=72>>72.\n#### 72"}, "72", 0),
    ({"problem": "Compute $1/2+1/4$.", "solution": "We get $\\boxed{\\frac{3}{4}}$."}, "\\frac{3}{4}", 0),
    ({"problem": "p", "solution": "long \\boxed{5}", "answer": "5", "level": "Level 1"}, "5", 0),  # MATH-500
    ({"prompt": "What is 6*7?", "answer": 42}, "42", 0),
    ({"question": "What is 6*7?", "answer": "42"}, "42", 0),
    ({"prompt": "What is 1+2?", "completion": "1+2=3. #### 3"}, "3", 0),  # this project's training shapes
    ({"instruction": "What is 1+2?", "response": "1+2=3. So \\boxed{3}."}, "3", 0),
    ({"instruction": "Add.", "input": "1 and 2", "output": "1+2=3.\n#### 3", "system": "s"}, "3", 0),  # Alpaca
    ({"prompt": "What is 1+2?", "completion": "It is three, 3.", "answer": "3"}, "3", 0),
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
    p = problems.to_problem(record, "f.jsonl:1")
    assert (p.reference, p.n_choices) == (reference, n_choices)
    assert p.messages[-1]["role"] == "user"
    assert all(m["role"] != "assistant" for m in p.messages)  # the reference never leaks into the prompt


def test_choice_prompt_and_instructions():
    p = problems.to_problem({"question": "Pick", "choices": ["red", "blue"], "answer": 0}, "f:1")
    assert p.messages[0]["content"] == "Pick\n\nA. red\nB. blue"
    assert problems.prompt_messages(p)[-1]["content"].endswith(problems.DEFAULT_INSTRUCTIONS["choice"])
    q = problems.to_problem({"question": "1+1?", "answer": "2"}, "f:1")
    assert problems.prompt_messages(q)[-1]["content"] == "1+1?\n" + problems.DEFAULT_INSTRUCTIONS["math"]
    assert problems.prompt_messages(q, "")[-1]["content"] == "1+1?"
    assert q.messages[0]["content"] == "1+1?"  # the problem itself is not modified


@pytest.mark.parametrize("record,message", [
    ({"text": "hi", "label": 1}, "fields: label, text"),
    ({"problem": "p", "solution": "no box here"}, "no \\boxed{}"),
    ({"question": "q", "choices": ["a", "b"], "answer": 5}, "choice index or letter"),
    ({"messages": [{"role": "user", "content": "x"}]}, "must end with a user turn"),
    ({"question": ["not", "text"], "answer": "1"}, "must be a string"),
    ({"instruction": "q", "response": "no number here"}, "field 'response' states no final answer"),
])
def test_bad_records_name_the_problem(record, message):
    with pytest.raises(GiftError, match=r"f\.jsonl:3") as e:
        problems.to_problem(record, "f.jsonl:3")
    assert message in str(e.value)


TRAINING_SHAPES = {
    "instruction-response": {"instruction": "Ann has 3 apples and buys 4. How many?", "response": "3+4=7.\n#### 7"},
    "alpaca": {"instruction": "Answer the question.", "input": "Ann has 3 apples and buys 4. How many?",
               "output": "3+4=7. The answer is 7."},
    "prompt-completion": {"prompt": "Ann has 3 apples and buys 4. How many?", "completion": "3+4=7, so \\boxed{7}"},
    "messages": {"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Ann has 3 apples and buys 4. How many?"},
                              {"role": "assistant", "content": "3+4=7.\n#### 7"}]},
}


@pytest.mark.parametrize("shape", TRAINING_SHAPES)
def test_a_valid_jsonl_in_each_training_shape_evaluates(tmp_path, shape):
    import json

    path = tmp_path / "valid.jsonl"
    path.write_text(json.dumps(TRAINING_SHAPES[shape]) + "\n" + json.dumps(TRAINING_SHAPES[shape]) + "\n")
    found = problems.read_problems(path)
    assert [(p.line, p.reference) for p in found] == [(1, "7"), (2, "7")]
    assert found[0].messages[-1]["role"] == "user" and "Ann has 3 apples" in found[0].messages[-1]["content"]
    assert all(m["role"] != "assistant" for m in found[0].messages)


def test_the_list_of_accepted_shapes_is_complete():
    with pytest.raises(GiftError) as e:
        problems.to_problem({"text": "hi"}, "f.jsonl:1")
    for shape in ("question+answer", "problem+solution", "prompt/question+answer", "choices", "messages",
                  "prompt+completion", "instruction+response", "instruction+output"):
        assert shape in str(e.value)
