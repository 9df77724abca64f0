"""`gift doctor`: what this machine gives MLX (version, device, BLAS, matmul speed); and its quick form,
`blas_warnings`, which the heavy commands run first so that a slow BLAS is found before a slow run."""

import os
import platform
import time

import mlx.core as mx

from . import blas

INSTALL_HINT = ("install an optimized one, e.g. `apt-get install libopenblas0-pthread` (Debian/Ubuntu), "
                "or set GIFT_BLAS=/path/to/libopenblas.so.0")
SLOW_GFLOPS = 15.0  # reference BLAS: ~4 GFLOP/s on a 2-core x86-64; OpenBLAS: ~50+ even at n=256


def matmul_gflops(n=1024, seconds=1.0):
    """float32 n x n matmul rate, measured for about `seconds` (without drawing from the global RNG)."""
    a, b = mx.ones((n, n)), mx.full((n, n), 0.5)
    mx.eval(a @ b)
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        mx.eval(a @ b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - tic) / 1e9


def exp_rate(n=2**22, seconds=0.2):
    """exp values per second on one MLX stream: the speed of the element-wise work beside the matmuls (softmax,
    SiLU, cross-entropy), which MLX's CPU backend runs on one thread per stream."""
    x = mx.full((n,), 0.5)
    mx.eval(mx.exp(x))
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:  # the fastest call: a busy process (page faults) reads low
        tic = time.perf_counter()
        mx.eval(mx.exp(x))
        best = min(best, time.perf_counter() - tic)
    return n / best


def linux_cpu():
    return platform.system() == "Linux" and mx.default_device() == mx.cpu


def blas_warnings(rate=None):
    """Warnings about this process's BLAS on Linux CPU: an unusable GIFT_BLAS, and a low matmul rate.

    The rate is measured (a 256x256 matmul for ~0.05 s) only when no optimized BLAS was preloaded;
    `rate` (GFLOP/s) stands in for the measurement in tests. GIFT_BLAS_WARN=0 silences both.
    """
    if not linux_cpu() or os.environ.get("GIFT_BLAS_WARN") == "0":
        return []
    found = []
    if blas.problem:
        found.append(f"{blas.problem}; using " + (blas.loaded or "the mlx-cpu wheel's reference BLAS") + " instead")
    if rate is None and not blas.loaded:
        rate = matmul_gflops(256, 0.05)
    if rate is not None and rate < SLOW_GFLOPS:
        found.append(f"matmuls run at {rate:.1f} GFLOP/s here (the mlx-cpu wheel's reference BLAS): training is "
                     f"about 5-20x slower than it could be; {INSTALL_HINT} (`gift doctor` checks)")
    return found


def report():
    import mlx_lm

    if blas.loaded:
        blas_line = f"{blas.loaded} (preloaded by gift_mlx; GIFT_BLAS=0 turns this off)"
    elif linux_cpu():
        blas_line = f"the mlx-cpu wheel's reference BLAS (slow): {INSTALL_HINT}"
    else:
        blas_line = "the platform's own (Accelerate / GPU)"
    if blas.problem:
        blas_line += f"; note: {blas.problem}"
    return "\n".join([
        f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, python {platform.python_version()}",
        f"device: {mx.default_device()} ({platform.system()} {platform.machine()})",
        f"BLAS: {blas_line}",
        f"float32 matmul 1024x1024: {matmul_gflops():.1f} GFLOP/s",
        f"exp on one stream: {exp_rate() / 1e6:,.0f} M values/s",
    ])
