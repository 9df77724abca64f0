"""Eval records as they are published -> Problems: the conversation to prompt with and the reference answer.

Shapes: GSM8K (question + answer '#### N'), MATH (problem + boxed solution), generic prompt/question +
answer, multiple choice (question + choices + answer index/letter, ARC's labelled choices), chat
(messages, with the final assistant turn or an 'answer' as the reference) and gift's training shapes
(prompt/completion, instruction/response or output, Alpaca's input), so a valid.jsonl can be evaluated.
A new shape is one more `_x_problem` function and a branch in `to_problem`.
"""

from dataclasses import dataclass, replace
from pathlib import Path

from . import grading
from .data import TRAINING_PAIRS, read_jsonl, to_messages
from .errors import GiftError

DEFAULT_INSTRUCTIONS = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "choice": "Answer with the letter of the correct choice, and put it within \\boxed{}.",
}
SHAPES = ("GSM8K question+answer, MATH problem+solution, prompt/question+answer, question+choices+answer, "
          "messages ending in a user turn plus answer or in an assistant turn, or training data "
          "(prompt+completion, instruction+response or instruction+output, optional input and system)")


@dataclass
class Problem:
    line: int
    messages: list  # the conversation up to the answer, without the instruction
    reference: str  # a math answer, or a choice letter when n_choices is set
    n_choices: int = 0
    where: str = ""  # FILE:LINE, named when the chat template refuses the problem

    @property
    def kind(self):
        return "choice" if self.n_choices else "math"


def _string(record, key, where):
    if not isinstance(record[key], str):
        raise GiftError(f"{where}: field '{key}' must be a string, got {type(record[key]).__name__}")
    if not record[key].strip():  # an empty question or reference cannot be asked or graded
        raise GiftError(f"{where}: field '{key}' is empty")
    return record[key]


def _reference(record, where):
    """The reference answer of a non-choice record: GSM8K '#### N', a plain answer, a boxed solution."""
    if "answer" in record:
        answer = record["answer"]
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise GiftError(f"{where}: field 'answer' must be a string or number, got {type(answer).__name__}")
        answer = str(answer)
        answer = answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()
        if not answer:
            raise GiftError(f"{where}: field 'answer' is empty")
        return answer
    if "solution" in record:
        found = grading.last_boxed(_string(record, "solution", where))
        if found is None:
            raise GiftError(f"{where}: field 'solution' states no final answer (no \\boxed{{}})")
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
    if reference is not None and not reference.strip():
        raise GiftError(f"{where}: the reference answer (the final assistant turn) is empty")
    if reference is None or not messages or messages[-1]["role"] != "user":
        raise GiftError(f"{where}: 'messages' must end with a user turn (plus an assistant reference or an 'answer')")
    return Problem(line, messages, reference)


def _training_problem(record, where, line, response_key):
    """A training record (prompt/completion, instruction/response|output): the final answer of the response."""
    messages = to_messages(record, where)
    if "answer" in record:
        return _chat_problem({"messages": messages[:-1], "answer": record["answer"]}, where, line)
    reference = grading.extract_answer(messages[-1]["content"])
    if reference is None:
        raise GiftError(f"{where}: field '{response_key}' states no final answer (no \\boxed{{}}, '#### N' or number)")
    return Problem(line, messages[:-1], reference)


def to_problem(record, where, line=0):
    """A Problem from one record in any supported published or training shape."""
    return replace(_problem(record, where, line), where=where)


def _problem(record, where, line):
    if "messages" in record:
        return _chat_problem(record, where, line)
    pair = next(((p, r) for p, r in TRAINING_PAIRS if p in record and r in record), None)
    if pair:
        return _training_problem(record, where, line, pair[1])
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
