"""Sampling metrics from per-sample correctness flags: Average, unbiased pass@k and exact maj@k.

Pure functions on lists (no model, no I/O): correct[i][j] says whether sample j of problem i is right,
keys[i][j] is its canonical answer (None when no answer was extracted), for the majority vote.

Every estimator uses all n samples of a problem, for every k: Average is the accuracy over all n samples (its
expectation does not depend on k, so Average@k is the same number for every k), pass@k and maj@k are the exact
means over all C(n, k) subsets of k samples. So pass@1 = maj@1 = Average@1 = Average@n, as the same float.
"""

import math
from collections import Counter

import numpy as np

from .errors import GiftError


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
    if k == 1:  # c/n itself, the same float as the accuracy over all n samples (1 - (n-c)/n may differ by an ulp)
        return c / n
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def average(correct):
    """Average@k for every k: the accuracy over all n samples of every problem (Average@16 for a 16-sample run)."""
    return float(np.mean([sum(c) / len(c) for c in correct]))


def _binomial_pmfs(n, p):
    """pmf(m, upto): P(X = x) for X ~ Binomial(m, p), x = 0 .. min(m, upto), m <= n, as float64 (terms below
    1e-308 are 0)."""
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])

    def pmf(m, upto):
        x = np.arange(min(m, upto) + 1)
        if p >= 1.0:
            return (x == m).astype(float)
        log_comb = log_factorial[m] - log_factorial[x] - log_factorial[m - x]
        return np.exp(log_comb + x * math.log(p) + (m - x) * math.log1p(-p))

    return pmf


def _product(polys, degree):
    """Coefficients 0 .. degree of the product of polynomials (coefficient arrays)."""
    out = np.ones(1)
    for poly in polys:
        out = np.convolve(out, poly)[: degree + 1]
    return out


def majority_of_subsets(flags, keys, k):
    """maj@k of one problem, exactly: the mean over all C(n, k) subsets of k samples of whether the subset's
    majority answer is right.

    Samples without an answer do not vote; a subset without any answer counts as wrong. A tie goes to the answer
    that comes first among all n samples (the samples are in random order, so this is a random tie-break, and
    at k = n it is the vote of all samples with ties to the answer seen first). An answer is as right as its
    samples (the share of them judged right, if the grader judged equal answers differently).

    Counting: answer j wins with v votes in the subsets that take v of its m_j samples, at most v - 1 of
    every answer before it, at most v of every answer after it, and the rest from the samples that cannot
    reach v (no answer, or an answer with fewer than v samples). The counts are products of binomial
    coefficients, summed as coefficients of a product of polynomials; each C(m, x) is scaled by
    p^x (1-p)^(m-x) with p = k/n (so they are binomial probabilities, and the sum is divided by the same
    scaling of C(n, k)) to stay within float64 for any n.
    """
    n = len(flags)
    if not 1 <= k <= n:
        raise GiftError(f"maj@k needs 1 <= k <= n (n={n}, k={k})")
    counts = Counter(key for key in keys if key is not None)  # insertion-ordered: first seen first
    right = {key: 0 for key in counts}
    for flag, key in zip(flags, keys):
        if key is not None:
            right[key] += bool(flag)
    if k == 1:  # each sample votes alone: the share of right samples, as the same float as Average and pass@1
        return sum(right.values()) / n
    order, pmf = list(counts), _binomial_pmfs(n, k / n)
    total = 0.0
    for v in range(1, min(k, max(counts.values(), default=0)) + 1):
        rest = k - v
        big = [key for key in order if counts[key] >= v]  # the answers that can reach v votes
        free = n - sum(counts[key] for key in big)  # no answer, or fewer than v samples: never more than v - 1
        before = [pmf(counts[key], v - 1) for key in big]  # an answer before the winner: < v votes
        after = [pmf(counts[key], v) for key in big]  # after it: <= v votes
        prefix = [pmf(free, rest)]
        for poly in before:
            prefix.append(_product([prefix[-1], poly], rest))
        suffix = [np.ones(1)]
        for poly in reversed(after):
            suffix.append(_product([suffix[-1], poly], rest))
        for j, key in enumerate(big):
            others = _product([prefix[j], suffix[len(big) - 1 - j]], rest)
            if len(others) > rest:
                total += pmf(counts[key], v)[v] * others[rest] * right[key] / counts[key]
    return float(total / pmf(n, k)[k])


def maj_at_k(correct, keys, k):
    """maj@k averaged over problems (majority_of_subsets)."""
    return float(np.mean([majority_of_subsets(c, key, k) for c, key in zip(correct, keys)]))


def sample_metrics(correct, keys):
    """{metric: {k: value}} for per-problem lists of correctness flags and canonical answers (n samples each)."""
    n = len(correct[0])
    ks = ks_for(n)
    accuracy = average(correct)
    return {
        "average@k": {k: accuracy for k in ks},
        "pass@k": {k: float(np.mean([pass_at_k(n, int(sum(c)), k) for c in correct])) for k in ks},
        "maj@k": {k: maj_at_k(correct, keys, k) for k in ks},
    }
