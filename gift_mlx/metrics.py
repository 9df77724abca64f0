"""Sampling metrics from per-sample correctness flags: Average@k, unbiased pass@k and maj@k.

Pure functions on lists (no model, no I/O): correct[i][j] says whether sample j of problem i is right,
keys[i][j] is its canonical answer (None when no answer was extracted), for the majority vote.
"""

import numpy as np

from .errors import GiftError
from .grading import majority_index


def ks_for(n):
    """k = 1, 2, 4, ... up to n, and n itself."""
    ks = [2**i for i in range(n.bit_length()) if 2**i <= n] if n >= 1 else []
    return ks + [n] if ks and ks[-1] != n else ks


def pass_at_k(n, c, k):
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), as a stable product."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise GiftError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def average_at_k(correct, k):
    """Average@k: mean accuracy over the first k samples of every problem (Average@16 for a 16-sample run)."""
    return float(np.mean([np.mean(c[:k]) for c in correct]))


def maj_at_k(correct, keys, k):
    """maj@k: accuracy of the majority answer among k samples, averaged over the n // k disjoint groups of k.

    Averaging over groups uses all n samples (less variance than only the first k); a group without any
    extracted answer counts as wrong.
    """
    scores = []
    for c, key in zip(correct, keys):
        for g in range(0, len(c) - k + 1, k):
            i = majority_index(key[g : g + k])
            scores.append(i is not None and bool(c[g + i]))
    return float(np.mean(scores))


def sample_metrics(correct, keys):
    """{metric: {k: value}} for per-problem lists of correctness flags and canonical answers (n samples each)."""
    n = len(correct[0])
    ks = ks_for(n)
    return {
        "average@k": {k: average_at_k(correct, k) for k in ks},
        "pass@k": {k: float(np.mean([pass_at_k(n, int(sum(c)), k) for c in correct])) for k in ks},
        "maj@k": {k: maj_at_k(correct, keys, k) for k in ks},
    }
