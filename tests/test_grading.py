"""Grading on a table of published answer styles (GSM8K, MATH, free text, multiple choice)."""

import threading

import pytest

from gift_mlx import grading

# (completion, what extract_answer must find)
EXTRACTION = [
    # GSM8K reference solutions end in "#### N"
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72.\n#### 72", "72"),
    ("She earns 0.2 x 50 = $10.\n#### 10", "10"),
    ("#### 1,000", "1,000"),
    # MATH solutions box the answer; braces nest
    ("So the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("We get $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("First $\\boxed{3}$, then finally $\\boxed{5}$.", "5"),  # the last box wins
    ("\\fbox{12}", "12"),
    ("so $\\boxed{7}$ and then \\boxed{8", "7"),  # a truncated last box falls back to the complete one
    # "the answer is" phrasing
    ("Adding up, the answer is 18.", "18"),
    ("The answer is $18 per day.", "$18 per day"),  # a phrase that is a number with units stays whole
    ("Final answer: -3.5", "-3.5"),
    ("the answer is (B)", "(B)"),
    ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),  # Minerva few-shot style
    ("The answer is: 42 (since 6 x 7 = 42)", "42"),
    ("The answer is 9*2 = 18. Next question.", "9*2 = 18"),  # the whole statement, not the first number
    ("The answer is 2x + 3.", "2x + 3"),
    ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    # last-expression fallback (Math-Verify's, which writes what it parsed)
    ("I think it is 3 apples, no wait, 4 apples", "4"),
    ("total = 1,234,567 people", "1234567"),
    ("nothing numeric here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", EXTRACTION)
def test_extract_answer(text, expected):
    assert grading.extract_answer(text) == expected


# (answer, reference, equivalent?)
EQUIVALENCE = [
    ("72", "72", True),
    ("1,000", "1000", True),
    ("$1,000.00", "1000", True),
    ("\\$18", "18", True),
    ("50%", "50", True),
    ("50\\%", "50", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{3}{4}", "3/4", True),
    ("\\frac12", "0.5", True),
    ("-\\frac{2}{4}", "-0.5", True),
    ("-3", "-3.0", True),
    ("+3", "3", True),
    ("-3", "3", False),
    ("x = 5", "5", True),
    ("5 dollars", "5", True),
    ("18 \\text{ cm}", "18", True),
    ("90^\\circ", "90", True),
    ("0.33", "1/3", False),
    ("1,2", "12", False),  # a pair, not a thousands separator
    ("\\sqrt2", "\\sqrt{2}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("\\text{Evelyn}", "Evelyn", True),
    ("Evelyn", "evelyn", True),
    (None, "5", False),
    ("", "", False),
    # Math-Verify: values, not strings
    ("9*2 = 18", "18", True),
    ("2x + 3", "2", False),
    ("3 or 4", "3", False),
    ("5\\sqrt{2}", "5", False),
    ("y = -3x", "-3", False),
    ("3R", "3", False),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2", True),
    ("\\frac{6}{8}", "3/4", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("(1, 2)", "(1,2)", True),
    ("(2, 1)", "(1,2)", False),
    ("[2, 5)", "[2,5)", True),
    ("(2, 5)", "[2,5)", False),
    ("1+x^2", "x^2+1", True),
]


@pytest.mark.parametrize("answer,reference,expected", EQUIVALENCE)
def test_equivalent(answer, reference, expected):
    assert grading.equivalent(answer, reference) is expected


# The cases of issue 15: whole completions, graded end to end
ISSUE_CASES = [
    ("The answer is 9*2 = 18.", "18", True),
    ("The answer is 2x + 3.", "2", False),
    ("The answer is 3 or 4.", "3", False),
    ("The answer is 5\\sqrt{2}.", "5", False),
    ("The answer is y = -3x.", "-3", False),
    ("The answer is 3R.", "3", False),
    ("So the answer is \\frac{7}{12}.", "\\frac{7}{12}", True),
    ("The answer is \\sqrt{13}.", "\\sqrt{13}", True),
    ("The answer is (3, -1).", "(3,-1)", True),
    ("Thus $x = \\dfrac{5}{2}$.", "\\frac{5}{2}", True),
    ("He pays 3 * 4 = 12 dollars.\n#### 12", "12", True),
    ("The answer is 18 dollars.", "18", True),
]


@pytest.mark.parametrize("text,reference,expected", ISSUE_CASES)
def test_issue_cases(text, reference, expected):
    assert grading.grade(text, reference)[1] is expected


def test_judgement_says_where_and_why():
    j = grading.judge("The answer is 2x + 3.", "2")
    assert (j.answer, j.correct, j.found) == ("2x + 3", False, "answer phrase")
    assert j.judge.startswith("math-verify: not equal")
    j = grading.judge("\\boxed{\\frac{1}{2}}", "0.5")
    assert (j.found, j.correct, j.key) == ("boxed", True, grading.canonical("0.5"))
    assert grading.judge("no idea", "3").judge == "no answer"
    assert grading.judge("The answer is (B).", "B", n_choices=4).judge == "letter equal"


def test_grading_off_the_main_thread():
    """Math-Verify's timeouts use signals; a worker thread must grade without them, not raise."""
    result = []
    thread = threading.Thread(target=lambda: result.append(grading.grade("The answer is \\frac{2}{4}.", "0.5")))
    thread.start()
    thread.join()
    assert result == [("\\frac{2}{4}", True)]


CHOICES = [
    ("The answer is (C).", 4, "C"),
    ("Comparing the options, $\\boxed{B}$", 4, "B"),
    ("\\boxed{\\text{D}}", 4, "D"),
    ("A is wrong because... B) looks right.\nB", 4, "B"),
    ("Answer: a", 4, "A"),
    ("The answer is (E).", 4, None),  # out of range for four choices
    ("A car drives 3 miles.", 4, None),  # the article "A" is not a choice
    ("", 4, None),
]


@pytest.mark.parametrize("text,n,expected", CHOICES)
def test_extract_choice(text, n, expected):
    assert grading.extract_choice(text, n) == expected


def test_choice_letter_from_index_or_letter():
    assert grading.choice_letter(2, 4) == "C"
    assert grading.choice_letter("1", 4) == "B"
    assert grading.choice_letter("d", 4) == "D"
    assert grading.choice_letter(4, 4) is None
    assert grading.choice_letter("E", 4) is None
    assert grading.choice_letter(True, 4) is None


def test_grade_math_and_choice():
    assert grading.grade("so 3+4 = 7.\n#### 7", "7") == ("7", True)
    assert grading.grade("\\boxed{8}", "7") == ("8", False)
    assert grading.grade("The answer is (B)", "B", n_choices=4) == ("B", True)
    assert grading.grade("no idea", "B", n_choices=4) == (None, False)


def test_majority_index():
    keys = [grading.canonical(a) for a in ["5", "1,000", None, "1000.0", "5"]]
    assert grading.canonical("0.5") == grading.canonical("\\frac{1}{2}")
    # "1,000" and "1000.0" are one answer; it ties with "5" (2 votes each) and "5" was seen first
    assert grading.majority_index(keys) == 0
    assert grading.majority_index([None, "3", "4", "4"]) == 2
    assert grading.majority_index([None, None]) is None
