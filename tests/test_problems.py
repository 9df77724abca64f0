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
])
def test_bad_records_name_the_problem(record, message):
    with pytest.raises(GiftError, match=r"f\.jsonl:3") as e:
        problems.to_problem(record, "f.jsonl:3")
    assert message in str(e.value)
