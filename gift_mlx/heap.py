"""Keep the memory a computation frees inside the process while it runs (Linux, glibc).

MLX's CPU allocator is plain malloc, with no buffer cache (the Metal and CUDA allocators have one). glibc gives
large blocks back to the kernel when they are freed (munmap, heap trimming), so each training step gets its
activations and gradients as fresh pages, and the kernel zeroes every page on first touch: at the
Qwen2.5-1.5B shape 0.17-0.26 M page faults and 1.3-2.3 s of system time per 21 s step. Inside `kept()`, malloc
serves every block from its heaps (M_MMAP_MAX 0) and never trims them (M_TRIM_THRESHOLD ~2^64), so a
step reuses the memory of the step before. On the way out the static defaults come back and malloc_trim
returns the free memory to the kernel.

glibc only: elsewhere (macOS, musl) `kept()` does nothing. GIFT_KEEP_FREED=0 turns it off.
"""

import contextlib
import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}  # glibc's values (static from here on)
# mallopt takes an int and glibc reads the threshold as a size_t: -2^31 is 2^64 - 2^31, never reached, and far
# enough from 2^64 that glibc adding a page or two to it cannot wrap around.
_KEEP = {_M_TRIM_THRESHOLD: -2**31, _M_MMAP_MAX: 0}
_depth = 0  # kept() nests: only the outermost sets and restores


def _libc():
    if os.environ.get("GIFT_KEEP_FREED") == "0" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def available():
    """Whether `kept()` changes anything in this process (glibc, and not GIFT_KEEP_FREED=0)."""
    return _libc() is not None


def _set(libc, options):
    for option, value in options.items():
        libc.mallopt(ctypes.c_int(option), ctypes.c_int(value))


@contextlib.contextmanager
def kept():
    """While inside, memory freed by this process stays in malloc's heaps for the next allocation."""
    global _depth
    libc = None if _depth else _libc()
    if libc:
        _set(libc, _KEEP)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if libc:
            _set(libc, _DEFAULTS)
            libc.malloc_trim(ctypes.c_size_t(0))
