"""Write the example data in examples/math/: grade-school word problems with a short chain of thought.

    python scripts/make_examples.py [--seed 0] [--out examples/math]

train.jsonl and valid.jsonl use the reference implementation's training shape ({"instruction", "response"},
the response ending in '#### N'); test.jsonl uses GSM8K's published shape ({"question", "answer"}, the
answer ending in '#### N'), which `gift eval` reads as it is. Every problem is generated here from templates
(nothing is copied from a dataset), and every answer is computed, so the files are small, correct and
reproducible: the same seed writes the same bytes.
"""

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jack", "Kemi", "Liam",
         "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["stickers", "marbles", "apples", "pencils", "shells", "cards", "stamps", "books"]
FOODS = ["muffins", "cookies", "rolls", "cupcakes"]


def buy_and_give(r):
    name, friend, item = *r.sample(NAMES, 2), r.choice(ITEMS)
    a, b = r.randint(5, 60), r.randint(2, 40)
    c = r.randint(1, a + b - 1)
    q = (f"{name} has {a} {item}. {name} buys {b} more {item} and then gives {c} {item} to {friend}. "
         f"How many {item} does {name} have now?")
    steps = [f"{name} starts with {a} {item} and buys {b} more, so {name} has {a} + {b} = {a + b} {item}.",
             f"After giving {c} to {friend}, {name} has {a + b} - {c} = {a + b - c} {item}."]
    return q, steps, a + b - c


def change(r):
    name, thing = r.choice(NAMES), r.choice(["notebook", "sandwich", "ticket", "toy car", "plant"])
    price, n = r.randint(2, 15), r.randint(2, 6)
    bill = next(b for b in (20, 50, 100) if b > price * n)
    q = (f"A {thing} costs ${price}. {name} buys {n} of them and pays with a ${bill} bill. "
         f"How many dollars of change does {name} get?")
    steps = [f"{n} at ${price} each cost {n} * {price} = ${price * n}.",
             f"The change is {bill} - {price * n} = ${bill - price * n}."]
    return q, steps, bill - price * n


def pages_left(r):
    name, per_day, days = r.choice(NAMES), r.randint(5, 30), r.randint(2, 9)
    total = per_day * days + r.randint(10, 200)
    q = (f"{name}'s book has {total} pages. {name} reads {per_day} pages every day for {days} days. "
         f"How many pages are left to read?")
    steps = [f"In {days} days {name} reads {per_day} * {days} = {per_day * days} pages.",
             f"That leaves {total} - {per_day * days} = {total - per_day * days} pages."]
    return q, steps, total - per_day * days


def bake_and_sell(r):
    name, food = r.choice(NAMES), r.choice(FOODS)
    trays, per_tray = r.randint(2, 8), r.randint(6, 12)
    sold = r.randint(1, trays * per_tray - 1)
    q = (f"{name} bakes {trays} trays of {food} with {per_tray} {food} on each tray and sells {sold} of them. "
         f"How many {food} are left?")
    steps = [f"{name} bakes {trays} * {per_tray} = {trays * per_tray} {food}.",
             f"After selling {sold}, {trays * per_tray} - {sold} = {trays * per_tray - sold} are left."]
    return q, steps, trays * per_tray - sold


def groups(r):
    size, n_groups, extra = r.randint(3, 8), r.randint(3, 12), r.randint(1, 4)
    students = size * n_groups
    q = (f"A class of {students} students is split into groups of {size}. Each group needs {extra} "
         f"{'marker' if extra == 1 else 'markers'}. How many markers does the class need?")
    steps = [f"There are {students} / {size} = {n_groups} groups.",
             f"They need {n_groups} * {extra} = {n_groups * extra} markers."]
    return q, steps, n_groups * extra


def half_then_spend(r):
    name = r.choice(NAMES)
    money = 2 * r.randint(10, 60)
    spent = r.randint(1, money // 2 - 1)
    q = (f"{name} has ${money}. {name} puts half of it in a savings jar and spends ${spent} of the rest "
         f"on lunch. How many dollars does {name} have left to spend?")
    steps = [f"Half of ${money} is {money} / 2 = ${money // 2}.",
             f"After lunch, {money // 2} - {spent} = ${money // 2 - spent} is left."]
    return q, steps, money // 2 - spent


TEMPLATES = (buy_and_give, change, pages_left, bake_and_sell, groups, half_then_spend)


def problems(rng, n):
    """n distinct problems, the templates in turn: (question, chain-of-thought steps, answer)."""
    seen, out = set(), []
    while len(out) < n:
        q, steps, answer = TEMPLATES[len(out) % len(TEMPLATES)](rng)
        if q not in seen:
            seen.add(q)
            out.append((q, steps, answer))
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "examples" / "math"))
    parser.add_argument("--train", type=int, default=150)
    parser.add_argument("--valid", type=int, default=24)
    parser.add_argument("--test", type=int, default=60)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = problems(random.Random(args.seed), args.train + args.valid + args.test)
    train, valid, test = (rows[: args.train], rows[args.train : args.train + args.valid],
                          rows[args.train + args.valid :])
    for name, part in (("train", train), ("valid", valid)):
        write_jsonl(out / f"{name}.jsonl", [{"instruction": q, "response": "\n".join(s) + f"\n#### {a}"}
                                            for q, s, a in part])
    write_jsonl(out / "test.jsonl", [{"question": q, "answer": "\n".join(s) + f"\n#### {a}"} for q, s, a in test])
    print(f"wrote {out}: train.jsonl {len(train)}, valid.jsonl {len(valid)}, test.jsonl {len(test)} rows")


if __name__ == "__main__":
    main()
