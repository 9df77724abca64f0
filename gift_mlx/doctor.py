"""`gift doctor`: what this machine gives MLX (version, device, BLAS, matmul speed)."""

import platform
import time

import mlx.core as mx

from . import blas


def matmul_gflops(n=1024, seconds=1.0):
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        mx.eval(a @ b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - tic) / 1e9


def report():
    import mlx_lm

    if blas.loaded:
        blas_line = f"{blas.loaded} (preloaded by gift_mlx; GIFT_BLAS=0 turns this off)"
    elif platform.system() == "Linux" and mx.default_device() == mx.cpu:
        blas_line = ("the mlx-cpu wheel's reference BLAS (slow): install an optimized one, "
                     "e.g. `apt-get install libopenblas0-pthread`, or set GIFT_BLAS=/path/to/libopenblas.so")
    else:
        blas_line = "the platform's own (Accelerate / GPU)"
    return "\n".join([
        f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, python {platform.python_version()}",
        f"device: {mx.default_device()} ({platform.system()} {platform.machine()})",
        f"BLAS: {blas_line}",
        f"float32 matmul 1024x1024: {matmul_gflops():.1f} GFLOP/s",
    ])
