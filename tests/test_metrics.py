"""Sampling metrics (Average@k, unbiased pass@k, maj@k) against hand-computed cases and the binomial formula."""

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


def test_ks_average_and_majority():
    assert metrics.ks_for(16) == [1, 2, 4, 8, 16]
    assert metrics.ks_for(6) == [1, 2, 4, 6]
    assert metrics.ks_for(1) == [1]
    correct = [[True, False, True, True], [False, False, False, True]]
    keys = [["7", "3", "7", "7"], ["1", "2", "2", "9"]]
    assert metrics.average_at_k(correct, 1) == 0.5
    assert metrics.average_at_k(correct, 2) == 0.25  # (1/2 + 0) / 2
    assert metrics.average_at_k(correct, 4) == 0.5
    # groups of 2: [7,3] tie -> 7 right; [7,7] right; [1,2] tie -> 1 wrong; [2,9] tie -> 2 wrong
    assert metrics.maj_at_k(correct, keys, 2) == 0.5
    assert metrics.maj_at_k(correct, keys, 4) == 0.5  # 7 wins (right); 2 wins (wrong)
    assert metrics.maj_at_k(correct, keys, 1) == 4 / 8  # one sample: its own answer, right in 4 of 8
    assert metrics.maj_at_k([[False] * 2], [[None, None]], 2) == 0.0  # no answer at all counts as wrong
    m = metrics.sample_metrics(correct, keys)
    assert m["pass@k"][4] == 1.0 and m["pass@k"][1] == pytest.approx(4 / 8)
