"""heap.kept(): inside it, memory MLX frees is reused by the next allocation instead of coming back from the
kernel as fresh pages; outside it (and after it) glibc's defaults hold."""

import platform
import resource

import mlx.core as mx
import pytest

from gift_mlx import heap

def thp_always():
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


# Counted in 4 KB pages: with transparent huge pages always on, fresh memory faults once per 2 MB.
pytestmark = [pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"),
              pytest.mark.skipif(thp_always(), reason="transparent huge pages always on: too few faults to count")]


def faults_of_churn(rounds=6, n=1 << 24):
    """Page faults taken while computing and freeing a 64 MB array `rounds` times, as a training step does."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(rounds):
        a = mx.arange(n, dtype=mx.float32) * (i + 1)
        mx.eval(a)
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_memory_is_reused_inside_and_returned_after():
    outside = faults_of_churn()
    with heap.kept():
        faults_of_churn(rounds=1)  # the heap grows once
        inside = faults_of_churn()
    after = faults_of_churn()
    pages = 6 * (1 << 24) * 4 // 4096  # every round's array as fresh 4 KB pages
    assert outside > pages / 4, outside
    assert inside < outside / 10, (inside, outside)
    assert after > outside / 2, (after, outside)  # the defaults are back: freed blocks go to the kernel again


def test_nested_and_switched_off(monkeypatch):
    with heap.kept():
        with heap.kept():
            pass
        faults_of_churn(rounds=1)
        assert faults_of_churn() < 1000  # leaving the inner one kept the outer one's settings
    assert heap.available()
    monkeypatch.setenv("GIFT_KEEP_FREED", "0")
    assert not heap.available()
    with heap.kept():
        assert faults_of_churn() > 1000
