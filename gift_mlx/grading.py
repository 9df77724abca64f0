"""Answer extraction and grading for math and multiple-choice evaluation.

Pure functions on strings (no mlx, no I/O), so every published answer style can be unit-tested in isolation.
Numbers compare as exact fractions, so "1,000", "$1000.00", "1000" and "\\frac{2000}{2}" are the same answer.
"""

import re
from collections import Counter
from fractions import Fraction

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# A number as people write it: thousands commas, decimals, a sign; an optional "/d" makes it a fraction.
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"
NUMBER = re.compile(rf"(?:{_NUM})(?:\s*/\s*\d+)?")
# "the answer is X", "final answer: X"; the last such phrase wins, X runs to the end of its line.
ANSWER_IS = re.compile(r"(?:(?:final answer|the answer)\s*(?:is|:|=)|\banswer\s*:)\s*:?\s*(.+)", re.IGNORECASE)
HASHES = re.compile(r"####\s*(.+)")
# A choice letter standing alone: "(B)", "B.", "B)", "B:" or a line that is only "B".
CHOICE = re.compile(r"(?:^|[\s(\[*])([A-Z])(?:[).:\]*]|$)", re.MULTILINE)


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


def extract_answer(text):
    """The answer a completion states: last \\boxed{}, else '#### N', else 'the answer is ...', else the last number."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in (HASHES, ANSWER_IS):
        found = pattern.findall(text)
        if found:
            phrase = found[-1].strip().rstrip(".").strip()
            # "The answer is 18 dollars per day." -> 18; a phrase without a number ("(C)", "x^2") stays as it is
            if to_number(phrase) is None and NUMBER.search(phrase):
                return NUMBER.search(phrase).group(0)
            return phrase
    numbers = NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _unwrap_latex(s):
    """Drop the LaTeX that does not change a value: text wrappers, sizing, spacing, degrees, dollar signs."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|quad)", "", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%").replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    return s.strip()


def to_number(answer):
    """The exact value of an answer that is a plain number, fraction or percentage; None otherwise."""
    if answer is None:
        return None
    s = _unwrap_latex(str(answer))
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 5"
    s = re.sub(r"\\frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\frac\s*(\d)(\d)", r"\1/\2", s)  # \frac12
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators only, so "1,2" stays a pair
    s = re.sub(r"\s*[a-zA-Z][a-zA-Z .]*$", "", s) if re.match(r"^[-+(\d.]", s) else s  # trailing units
    s = s.rstrip(".%").replace(" ", "")
    m = re.fullmatch(r"([-+]?)\(?([-+]?[\d.]+)\)?(?:/\(?([-+]?[\d.]+)\)?)?", s)  # sign may sit outside \frac
    if not m or not re.search(r"\d", s):
        return None
    try:
        value = Fraction(m.group(2)) * (-1 if m.group(1) == "-" else 1)
        return value / Fraction(m.group(3)) if m.group(3) else value
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer):
    """A comparable form of a non-numeric answer: no spaces, LaTeX sizing or trailing period; \\sqrt2 -> \\sqrt{2}."""
    s = _unwrap_latex(str(answer)).rstrip(".").replace(" ", "")
    s = re.sub(r"\\(sqrt|frac)(\d)", r"\\\1{\2}", s)
    s = re.sub(r"\\frac\{(\w+)\}(\d)", r"\\frac{\1}{\2}", s)
    return s.lower()


def canonical(answer):
    """A key under which equivalent answers coincide (for majority voting); None for no answer."""
    if answer is None or str(answer).strip() == "":
        return None
    value = to_number(answer)
    return str(value) if value is not None else normalize(answer)


def equivalent(answer, reference):
    """Whether an extracted answer matches the reference: exact numeric value, else normalized text."""
    return canonical(answer) is not None and canonical(answer) == canonical(reference)


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


def extract_choice(text, n_choices):
    """The choice letter a completion picks: boxed, then 'the answer is', then the last standalone letter."""
    if not text:
        return None
    valid = LETTERS[:n_choices]
    boxed = last_boxed(text)
    candidates = [_unwrap_latex(boxed)] if boxed is not None else []
    candidates += [m.strip() for m in reversed(ANSWER_IS.findall(text))]
    for c in candidates:
        m = re.match(r"^[(\[]?([A-Za-z])(?:[).:\]]|\s|$)", c)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    letters = [x for x in CHOICE.findall(text) if x in valid]
    return letters[-1] if letters else None


def grade(text, reference, n_choices=None):
    """(extracted answer, correct) for a completion: a choice letter when n_choices is given, else a math answer."""
    if n_choices:
        answer = extract_choice(text, n_choices)
        return answer, answer is not None and answer == reference
    answer = extract_answer(text)
    return answer, equivalent(answer, reference)


def majority_index(keys):
    """Index of the first sample carrying the most common non-None key (ties: the earliest-seen key); None if none."""
    counts = Counter(k for k in keys if k is not None)  # insertion-ordered, and most_common sorts stably
    return keys.index(counts.most_common(1)[0][0]) if counts else None
