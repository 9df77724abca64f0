"""Measure the grader on public answer formats: the old hand-written grader (main before issue 15) vs Math-Verify.

Cases are generated here (no data is downloaded), seeded, in the formats the public sets use:
GSM8K gold solutions (calculator annotations, '#### N', thousands commas) and their rewrites as models state them
("The answer is N.", "The answer is a*b = N.", a closing sentence, '$N'); MATH-style answers (fractions, roots,
intervals, tuples, text, plain numbers) boxed and unboxed, with equal forms written differently; and wrong answers
that share a number with the reference. Every case knows its right verdict; the table counts the verdicts each
grader gets right, and the speed of each (completions graded per second, cold caches).

    python scripts/grading_table.py [--old-ref main] [--seed 0] [--out docs/grading.md]
"""

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina", "Ken", "Alexis"]
ITEMS = ["clips", "apples", "pages", "marbles", "stickers", "cookies", "books", "eggs"]


def gsm8k_solution(rng):
    """A GSM8K-style gold solution: steps with <<calculator>> annotations, then '#### N'; returns (body, answer)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 12), rng.randint(1, 40)
    big = rng.random() < 0.25
    if big:
        a *= 97
    ab = a * b
    n = ab + c
    body = (f"{name} has {a} {item} per box and buys {b} boxes, so {a}*{b} = <<{a}*{b}={ab}>>{ab} {item}.\n"
            f"Then {name} gets {c} more, so {ab}+{c} = <<{ab}+{c}={n}>>{n} {item}.")
    return body, n, item


def fmt(n, commas):
    return f"{n:,}" if commas else str(n)


def gsm8k_cases(rng, count):
    cases = []
    for _ in range(count):
        body, n, item = gsm8k_solution(rng)
        ref = fmt(n, n >= 1000 and rng.random() < 0.5)  # GSM8K writes some large answers with commas
        a_b = body.split(", so ")[1].split(" = ")[0]
        cases += [
            ("GSM8K gold solution (#### N)", f"{body}\n#### {ref}", ref, True),
            ("GSM8K rewrite: The answer is N.", f"{body}\nThe answer is {fmt(n, rng.random() < 0.5)}.", ref, True),
            ("GSM8K rewrite: The answer is <expr> = N.", f"{body.split(chr(10))[0]}\nThe answer is {a_b} + "
             f"{body.split('gets ')[1].split(' ')[0]} = {n}.", ref, True),
            ("GSM8K rewrite: closing sentence (unboxed)", f"{body}\nSo in total there are {fmt(n, n >= 1000)} {item}.",
             ref, True),
            ("GSM8K rewrite: The answer is $N.", f"{body}\nThe answer is ${n}.", ref, True),
            ("GSM8K wrong: off by one", f"{body}\nThe answer is {n + rng.choice([-1, 1])}.", ref, False),
            ("GSM8K rewrite: **Answer:** N", f"{body}\n\n**Answer:** {n}", ref, True),
            ("GSM8K rewrite: money, The answer is $N.50", f"{body}\nThe answer is ${n}.50.", f"{n}.5", True),
        ]
        unit = rng.choice(["m", "h", "g", "s"])
        x, y = rng.randint(1, 6), rng.randint(1, 6)
        word = "two three four five six seven eight nine ten eleven twelve".split()[x + y - 2]
        cases += [
            ("GSM8K rewrite: one-letter unit (The answer is N m.)", f"{body}\nThe answer is {n} {unit}.", ref, True),
            # a known limit of both graders: a number written as a word is not a number
            ("limit: number word (the answer is seven.)", f"She has {x} + {y} = {x + y} apples, so the answer is "
             f"{word}.", str(x + y), True),
        ]
        m = rng.choice([2, 3, 5, 7])
        wrong = rng.choice([f"{n}\\sqrt{{{m}}}", f"{n}x + {m}", f"{n} or {n + 1}", f"y = {n}x", f"{n}R",
                            f"{n}^{m}", f"{n}/{m}"])
        cases.append(("wrong: more than the reference's number", f"{body}\nThe answer is {wrong}.", ref, False))
    return cases


def math_answers(rng):
    """(category, gold as MATH writes it, an equal answer written another way, a wrong answer sharing a number)."""
    p, q = rng.randint(1, 9), rng.randint(2, 13)
    while p % q == 0 or q % p == 0:
        p, q = rng.randint(1, 9), rng.randint(2, 13)
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7, 10, 11, 13])
    lo, hi = rng.randint(-9, 0), rng.randint(1, 9)
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    while x == y:
        y = rng.randint(-9, 9)
    word = rng.choice(["\\text{Evelyn}", "\\text{(C)}", "\\text{odd}", "\\text{Tuesday}"])
    n = rng.randint(10, 999)
    from fractions import Fraction

    f = Fraction(p, q)
    return [
        ("fraction", f"\\frac{{{f.numerator}}}{{{f.denominator}}}",
         rng.choice([f"\\dfrac{{{f.numerator * 2}}}{{{f.denominator * 2}}}", f"{f.numerator}/{f.denominator}"]),
         f"\\frac{{{f.denominator}}}{{{f.numerator}}}" if f.numerator != 1 else f"{f.denominator}"),
        ("root", f"{k}\\sqrt{{{m}}}", rng.choice([f"\\sqrt{{{k * k * m}}}", f"{k} \\sqrt{{{m}}}"]), f"{k}"),
        ("root fraction", f"\\frac{{\\sqrt{{{m}}}}}{{{k}}}", f"\\sqrt{{{m}}}/{k}", f"\\frac{{{m}}}{{{k}}}"),
        ("interval", f"[{lo}, {hi})", f"[{lo},{hi})", f"({lo}, {hi})"),
        ("interval to infinity", f"(-\\infty, {hi}]", f"\\left(-\\infty, {hi}\\right]", f"(-\\infty, {hi})"),
        ("tuple", f"({x}, {y})", f"\\left( {x}, {y} \\right)", f"({y}, {x})"),
        ("text", word, word.replace("\\text{", "\\textbf{"), "\\text{Monday}"),
        ("integer", f"{n}", f"{n}.0", f"{n + 1}"),
        ("expression", f"{k}x + {m}", f"{m} + {k}x", f"{k}x - {m}"),
    ]


def math_cases(rng, count):
    cases = []
    for _ in range(count):
        for cat, gold, alt, wrong in math_answers(rng):
            lead = "We simplify and check each case, which gives"
            cases += [
                (f"MATH {cat}: boxed gold", f"{lead} $\\boxed{{{gold}}}$.", gold, True),
                (f"MATH {cat}: boxed, equal form", f"{lead} $\\boxed{{{alt}}}$.", gold, True),
                (f"MATH {cat}: unboxed, The answer is", f"{lead} this.\nThe answer is ${alt}$.", gold, True),
                (f"MATH {cat}: unboxed, bare LaTeX", f"{lead} this. The answer is {alt}.", gold, True),
                (f"MATH {cat}: wrong answer", f"{lead} this. The answer is ${wrong}$.", gold, False),
            ]
    return cases


ISSUE = [  # the cases named in issue 15
    ("issue 15 cases", "The answer is 9*2 = 18.", "18", True),
    ("issue 15 cases", "The answer is 2x + 3.", "2", False),
    ("issue 15 cases", "The answer is 3 or 4.", "3", False),
    ("issue 15 cases", "The answer is 5\\sqrt{2}.", "5", False),
    ("issue 15 cases", "The answer is y = -3x.", "-3", False),
    ("issue 15 cases", "The answer is 3R.", "3", False),
]


def load_old(ref):
    """The grader as it was at git ref `ref` (gift_mlx/grading.py), imported as a standalone module."""
    source = subprocess.run(["git", "show", f"{ref}:gift_mlx/grading.py"], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "old_grading.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_grading", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(grader, cases):
    verdicts, start = [], time.perf_counter()
    for _, text, ref, _ in cases:
        verdicts.append(bool(grader.grade(text, ref)[1]))
    return verdicts, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-ref", default="main", help="git ref holding the old gift_mlx/grading.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=40, help="generated problems per family")
    ap.add_argument("--out", type=Path, help="write the markdown table here (else print it)")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    cases = ISSUE + gsm8k_cases(rng, args.count) + math_cases(rng, args.count)
    from gift_mlx import grading as new

    old = load_old(args.old_ref)
    old_v, old_s = run(old, cases)
    new_v, new_s = run(new, cases)
    rows = defaultdict(lambda: [0, 0, 0])
    for (cat, _, _, expected), o, n in zip(cases, old_v, new_v):
        rows[cat][0] += 1
        rows[cat][1] += o == expected
        rows[cat][2] += n == expected
    total = [len(cases), sum(r[1] for r in rows.values()), sum(r[2] for r in rows.values())]
    lines = ["| case family | cases | old grader right | Math-Verify grader right |", "|---|---:|---:|---:|"]
    for cat, (n, o, m) in rows.items():
        lines.append(f"| {cat} | {n} | {o} ({100 * o / n:.1f}%) | {m} ({100 * m / n:.1f}%) |")
    lines.append(f"| **all** | {total[0]} | {total[1]} ({100 * total[1] / total[0]:.1f}%) | "
                 f"{total[2]} ({100 * total[2] / total[0]:.1f}%) |")
    speed = (f"Speed, {len(cases)} completions graded once each (cold caches, one process): old "
             f"{len(cases) / old_s:,.0f} completions/s, Math-Verify {len(cases) / new_s:,.0f} completions/s "
             f"({1000 * new_s / len(cases):.1f} ms each).")
    wrong, shown = [], defaultdict(int)
    for (cat, text, ref, exp), n in zip(cases, new_v):
        shown[cat] += n != exp
        if n != exp and shown[cat] <= 3:  # three examples per family are enough to see why
            wrong.append((cat, text, ref, exp))
    text = "\n".join(lines) + "\n\n" + speed + "\n"
    if wrong:
        text += "\nCases the Math-Verify grader gets wrong:\n\n" + "\n".join(
            f"- {cat}: `{t!r}` vs `{r}` (should be {'right' if e else 'wrong'})" for cat, t, r, e in wrong) + "\n"
    if args.out:
        args.out.write_text(args.out.read_text().split("<!-- table -->")[0] + "<!-- table -->\n\n" + text
                            if args.out.exists() and "<!-- table -->" in args.out.read_text() else text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
