"""Use an optimized BLAS with the Linux mlx-cpu wheel.

The mlx-cpu wheel links netlib's reference BLAS (a few GFLOP/s). Loading an optimized BLAS with
RTLD_GLOBAL *before* `mlx.core` is imported makes MLX's sgemm calls resolve to it (~20-30x faster
matmuls on x86-64). macOS uses Accelerate/Metal and is left alone.

Set GIFT_BLAS=/path/to/libopenblas.so to choose the library, GIFT_BLAS=0 to turn this off. A GIFT_BLAS
that does not exist or does not load is noted in `problem` (the commands warn) and the usual places are tried.

OpenBLAS's worker threads spin (sched_yield) for about 2^28 cycles after each call before they sleep. A training
step alternates matmuls with element-wise work that MLX runs on one thread, and the spinning workers take the
cores from it. OPENBLAS_THREAD_TIMEOUT=4 (the shortest spin; the user's own value is kept) cut the system time
of a 6-step run at the 0.5B shape from 36-41 s to 14-16 s (docs/benchmarks.md has the wall times).
"""

import contextlib
import ctypes
import os
import sys

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

loaded = None  # path of the library that was preloaded, if any
problem = None  # why the GIFT_BLAS library was not used, if it was not
_lib = None


def preload():
    """Preload an optimized BLAS once; return its path or None."""
    global loaded, problem, _lib
    choice = os.environ.get("GIFT_BLAS", "")
    if loaded or choice == "0" or not sys.platform.startswith("linux"):
        return loaded
    if "mlx.core" in sys.modules:  # too late: MLX already bound its BLAS symbols
        return None
    if choice and not os.path.exists(choice):
        problem = f"GIFT_BLAS={choice}: no such file"
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # read when the library loads (see above)
    for path in ((choice,) if choice and not problem else ()) + CANDIDATES:
        if os.path.exists(path):
            try:
                _lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                if path == choice:
                    problem = f"GIFT_BLAS={choice}: cannot load ({str(e).splitlines()[0]})"
                continue
            loaded = path
            break
    return loaded


def cores():
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def threads(n):
    """Run the block with the preloaded OpenBLAS on n threads (None: unchanged), e.g. one per MLX stream
    when several CPU streams run matmuls at once, instead of more threads than cores."""
    get, put = (getattr(_lib, f"openblas_{k}_num_threads", None) for k in ("get", "set"))
    if n is None or get is None or put is None:
        yield
        return
    before = get()
    put(n)
    try:
        yield
    finally:
        put(before)
