"""Answer extraction and grading for math and multiple-choice evaluation.

Where the answer is stated is found here: the last \\boxed{}, a GSM8K '#### N' line, a 'the answer is ...' sentence,
else the last expression (found by Math-Verify). What the answer *is* and whether it equals the reference is
HF's Math-Verify: both sides are parsed from LaTeX or plain text to sympy and compared (numbers, fractions, roots,
sets, intervals, tuples, equations), so "2x + 3" is not 2 and "\\frac{1}{2}" is 0.5. Multiple-choice answers
are letters. Every judgement says where the answer was found and why it was judged so.
"""

import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# "the answer is X", "final answer: X"; the last such phrase wins, X runs to the end of its sentence or line.
ANSWER_IS = re.compile(r"(?:(?:final answer|the answer)\s*(?:is|:|=)|\banswer\s*:)\s*:?\s*(.+)", re.IGNORECASE)
HASHES = re.compile(r"####\s*(.+)")
# A choice letter standing alone: "(B)", "B.", "B)", "B:" or a line that is only "B".
CHOICE = re.compile(r"(?:^|[\s(\[*])([A-Z])(?:[).:\]*]|$)", re.MULTILINE)
SENTENCE_END = re.compile(r"\.(?:\s|$)|\s+\((?=[A-Za-z]{2,}\b)")  # "18. Next ..." or "42 (since ...)"
TRAILING_WORDS = re.compile(r"^(.*?[\d}])\s+((?:[A-Za-z]{2,}[.,]?\s*)+)$")  # "18 dollars per day": units
WORDS = re.compile(r"[A-Za-z]{2,}(?:[\s'-][A-Za-z]+)*")  # "Evelyn", "north west": a text answer
TIMEOUT_S = 5  # Math-Verify's per-parse and per-comparison limit (signal-based: main thread only)


@dataclass(frozen=True)
class Judgement:
    answer: str | None  # the answer as the completion states it
    correct: bool
    found: str  # where the answer was found: boxed, ####, answer phrase, last expression, choice, none
    judge: str  # why it was judged so: "math-verify: equal", "math-verify: not equal", "no answer", ...
    key: str | None  # majority-vote key: equal answers share it


def last_boxed(text):
    """Content of the last complete \\boxed{...} (or \\fbox{...}), nested braces allowed; None if there is none."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):  # a truncated last box falls back to an earlier complete one
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _timeout():
    # Math-Verify's timeouts use signal.alarm, which only the main thread may set; elsewhere run without one.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _mv():
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings off the main thread
    return math_verify


def locate_answer(text):
    """(answer span as written, where it was found): boxed, '#### N', 'the answer is ...', else the last expression."""
    if not text:
        return None, "none"
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    for pattern, where in ((HASHES, "####"), (ANSWER_IS, "answer phrase")):
        found = pattern.findall(text)
        if found:
            phrase = found[-1]
            while where == "answer phrase" and ANSWER_IS.search(phrase):  # "Final Answer: The final answer is 5"
                phrase = ANSWER_IS.search(phrase).group(1)
            phrase = _unwrap_math(SENTENCE_END.split(phrase.strip())[0])
            if phrase:
                return phrase, where
    mv = _mv()
    parsed = mv.parse(text, [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()], parsing_timeout=_timeout())
    return (str(parsed[-1]), "last expression") if parsed else (None, "none")


def extract_answer(text):
    """The answer a completion states (see locate_answer); None if it states none."""
    return locate_answer(text)[0]


def _unwrap_math(s):
    """'$5$.' -> '5': no markdown bold, trailing period, no $...$, \\(...\\) or \\[...\\] around the whole answer."""
    s = str(s).strip().strip("*").strip().rstrip(".").strip()  # "**Answer:** 42": markdown bold around it
    m = re.fullmatch(r"\$+([^$]+?)\$+|\\\((.+)\\\)|\\\[(.+)\\\]", s)
    return next(g for g in m.groups() if g).strip().rstrip(".").strip() if m else s


def _as_latex(answer):
    """An answer span made ready for Math-Verify's LaTeX parser: no math delimiters, units and words as \\text{}."""
    s = _unwrap_math(answer)
    s = re.sub(r"^\\?\$(?=\s*\d)", "", s)  # "$18" is currency, not math mode
    if WORDS.fullmatch(s):
        return rf"\text{{{s}}}"  # "Evelyn": a name, not E*v*e*l*y*n
    m = TRAILING_WORDS.match(s)
    return rf"{m.group(1)} \text{{ {m.group(2).strip()}}}" if m else s  # Math-Verify drops \text units


@lru_cache(maxsize=4096)
def parse_answer(answer):
    """Math-Verify's parse of one answer (a list: sympy value(s), then the string); [] if nothing parses."""
    if answer is None or not str(answer).strip():
        return []
    mv = _mv()
    latex = _as_latex(answer)
    parsed = mv.parse(f"${latex}$", [mv.LatexExtractionConfig(boxed_match_priority=0)], parsing_timeout=_timeout())
    return parsed or mv.parse(str(answer), [mv.ExprExtractionConfig()], parsing_timeout=_timeout())


def _text(answer):
    return re.sub(r"\s+|\\text\{|\}|\{|\$", "", str(answer)).rstrip(".").lower()


def canonical(answer):
    """A key under which equal answers coincide (for majority voting); None for no answer."""
    if answer is None or not str(answer).strip():
        return None
    parsed = parse_answer(answer)
    if not parsed or isinstance(parsed[0], str):
        return _text(answer)
    import sympy

    value = parsed[0]
    try:  # 0.5 and 1/2, 1000.0 and 1000 vote together
        value = value.xreplace({f: sympy.nsimplify(f) for f in value.atoms(sympy.Float)})
    except (AttributeError, TypeError, ValueError):
        pass
    return str(value)


def equivalent(answer, reference):
    """Whether an extracted answer equals the reference, by Math-Verify (reference as gold: verify is asymmetric)."""
    return _judge_math(answer, reference)[0]


def _judge_math(answer, reference):
    if answer is None or not str(answer).strip():
        return False, "no answer"
    gold, pred = parse_answer(reference), parse_answer(answer)
    if not gold or not pred:
        same = _text(answer) == _text(reference)
        return same, f"unparsed {'reference' if not gold else 'answer'}: text {'equal' if same else 'differs'}"
    same = _mv().verify(gold, pred, timeout_seconds=_timeout())
    return same, f"math-verify: {'equal' if same else 'not equal'} ({pred[0]} vs {gold[0]})"


def choice_letter(value, n_choices):
    """A multiple-choice reference as a letter: an index (0-based) or a letter in any case."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        i = int(value)
        return LETTERS[i] if 0 <= i < n_choices else None
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS[:n_choices]:
        return value.strip().upper()
    return None


def locate_choice(text, n_choices):
    """(choice letter a completion picks, where): boxed, then 'the answer is', then the last standalone letter."""
    if not text:
        return None, "none"
    valid = LETTERS[:n_choices]
    boxed = last_boxed(text)
    candidates = [(re.sub(r"\\text\{([^{}]*)\}", r"\1", boxed), "boxed")] if boxed is not None else []
    candidates += [(m.strip(), "answer phrase") for m in reversed(ANSWER_IS.findall(text))]
    for c, where in candidates:
        m = re.match(r"^[(\[]?([A-Za-z])(?:[).:\]]|\s|$)", c)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper(), where
    letters = [x for x in CHOICE.findall(text) if x in valid]
    return (letters[-1], "last letter") if letters else (None, "none")


def extract_choice(text, n_choices):
    """The choice letter a completion picks (see locate_choice); None if it picks none."""
    return locate_choice(text, n_choices)[0]


def judge(text, reference, n_choices=None):
    """The Judgement of one completion: a choice letter when n_choices is given, else a math answer."""
    if n_choices:
        letter, where = locate_choice(text, n_choices)
        correct = letter is not None and letter == reference
        why = "no answer" if letter is None else f"letter {'equal' if correct else 'differs'}"
        return Judgement(letter, correct, where, why, letter)
    answer, where = locate_answer(text)
    correct, why = _judge_math(answer, reference)
    return Judgement(answer, bool(correct), where, why, canonical(answer))


def grade(text, reference, n_choices=None):
    """(extracted answer, correct) for a completion (see judge)."""
    j = judge(text, reference, n_choices)
    return j.answer, j.correct


def majority_index(keys):
    """Index of the first sample carrying the most common non-None key (ties: the earliest-seen key); None if none."""
    counts = Counter(k for k in keys if k is not None)  # insertion-ordered, and most_common sorts stably
    return keys.index(counts.most_common(1)[0][0]) if counts else None
