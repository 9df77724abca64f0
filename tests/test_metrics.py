"""Sampling metrics (Average, unbiased pass@k, exact maj@k) against hand-computed cases and brute force over
every subset of k samples."""

import itertools
import random
from math import comb

import pytest

from gift_mlx import metrics
from gift_mlx.errors import GiftError


@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 1 / 4),
    (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
    (4, 2, 2, 1 - 1 / 6),
    (5, 0, 3, 0.0),
    (3, 2, 2, 1.0),  # fewer wrong samples than k: every k-subset holds a right one
    (16, 16, 16, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_the_binomial_formula():
    for n in (1, 7, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert metrics.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    with pytest.raises(GiftError):
        metrics.pass_at_k(4, 1, 5)


def brute_force(flags, keys, k):
    """(pass@k, maj@k) of one problem as the mean over every k-subset of its samples, the tie rule spelled out."""
    first = {}
    for i, key in enumerate(keys):
        if key is not None:
            first.setdefault(key, i)
    passes = majority = 0
    for subset in itertools.combinations(range(len(flags)), k):
        passes += any(flags[i] for i in subset)
        votes = {}
        for i in subset:
            if keys[i] is not None:
                votes[keys[i]] = votes.get(keys[i], 0) + 1
        if votes:  # most votes; among tied answers the one seen first among all n samples
            winner = min(votes, key=lambda key: (-votes[key], first[key]))
            majority += flags[keys.index(winner)]
    return passes / comb(len(flags), k), majority / comb(len(flags), k)


def random_problem(rng, n):
    """n samples whose answers are drawn from a few, 'a' the right one, some without an answer."""
    keys = [rng.choice([None, "a", "b", "c", "d"][: rng.randint(1, 5)]) for _ in range(n)]
    return [key == "a" for key in keys], keys


def test_every_estimator_matches_brute_force_over_all_subsets():
    rng = random.Random(0)
    for n in range(1, 10):
        for _ in range(12):
            flags, keys = random_problem(rng, n)
            for k in range(1, n + 1):
                expected_pass, expected_maj = brute_force(flags, keys, k)
                assert metrics.pass_at_k(n, sum(flags), k) == pytest.approx(expected_pass, abs=1e-12)
                assert metrics.majority_of_subsets(flags, keys, k) == pytest.approx(expected_maj, abs=1e-12)


def test_at_one_every_estimator_is_the_accuracy_over_all_samples():
    rng = random.Random(1)
    problems = [random_problem(rng, n) for n in (3, 7, 7, 16, 16)]
    for n in (3, 7, 16):
        flags, keys = zip(*[p for p in problems if len(p[0]) == n])
        m = metrics.sample_metrics(list(flags), list(keys))
        accuracy = metrics.average(list(flags))
        assert m["pass@k"][1] == accuracy  # exactly, not only approximately
        assert set(m["average@k"].values()) == {accuracy} and list(m["average@k"]) == metrics.ks_for(n)
        assert m["maj@k"][1] == accuracy  # one sample: its own answer


def test_ks_and_hand_computed_majorities():
    assert metrics.ks_for(16) == [1, 2, 4, 8, 16]
    assert metrics.ks_for(6) == [1, 2, 4, 6]
    assert metrics.ks_for(1) == [1]
    correct = [[True, False, True, True], [False, False, False, True]]
    keys = [["7", "3", "7", "7"], ["1", "2", "2", "9"]]
    assert metrics.average(correct) == 0.5  # (3/4 + 1/4) / 2
    # pairs of problem 1 (7 seen first): {7,3} tie -> 7 (3 pairs), {7,7} (3 pairs): 6/6 right;
    # problem 2: the right answer 9 has one sample and is seen last, so it loses every pair: 0
    assert metrics.maj_at_k(correct, keys, 2) == pytest.approx((1 + 0) / 2)
    assert metrics.maj_at_k(correct, keys, 4) == 0.5  # 7 wins (right); 2 wins (wrong)
    assert metrics.maj_at_k([[False] * 2], [[None, None]], 2) == 0.0  # no answer at all counts as wrong
    # of the 4 subsets of 3 samples, 2 hold the right answer twice; of the 6 pairs, 4 are ties the right
    # answer wins by being seen first, 1 holds it twice
    flags, keys = [True, False, True, False], ["r", "w", "r", "w"]
    assert metrics.majority_of_subsets(flags, keys, 3) == pytest.approx(2 / 4)
    assert metrics.majority_of_subsets(flags, keys, 2) == pytest.approx(5 / 6)
    m = metrics.sample_metrics(correct, keys)
    assert m["pass@k"][4] == 1.0 and m["pass@k"][1] == 4 / 8


def test_majority_of_many_samples_stays_finite_and_exact_at_k_equal_n():
    """The binomial scaling keeps C(1024, 512) (about 1e306) out of float64's way; at k = n it is the plain vote."""
    rng = random.Random(2)
    keys = [str(rng.randint(0, 30)) if rng.random() < 0.9 else None for _ in range(1024)]
    flags = [key == "0" for key in keys]
    values = [metrics.majority_of_subsets(flags, keys, k) for k in (1, 512, 1024)]
    assert values[0] == sum(flags) / 1024
    assert all(0.0 <= v <= 1.0 for v in values)
    winner = max(set(keys) - {None}, key=lambda key: (keys.count(key), -keys.index(key)))
    assert values[2] == (winner == "0")
