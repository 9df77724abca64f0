"""A faster SwiGLU and LoRA dropout for training on a CPU.

MLX's CPU backend computes sigmoid one value at a time: ~60 M values/s on the 2-core benchmark machine, against
~2,800 M/s for a multiply, and draws dropout masks with threefry at ~190 M/s. A training step at the
Qwen2.5-0.5B shape holds ~60 M sigmoids (SiLU of every block's MLP gate) and ~125 M dropout draws (the inputs
of the LoRA layers), a fifth of the step.

SwiGLU equals mlx-lm's to float32 rounding. Its sigmoid(x) = 1 / (1 + e^-x), with e^x = 2^n · 2^f: n = round(x·log2 e)
written straight into the float's exponent bits and 2^f (|f| ≤ ½) by its degree-7 Taylor polynomial
(truncation error < 1e-8), one compiled kernel of multiplies and adds. The gradient is written out and
recomputes the sigmoid instead of keeping it: one activation-sized array less per block.

`cpu_activations(*models)` puts `swiglu` in place of mlx-lm's in the modules of the models' architectures for
the duration of a training run, on the CPU only (a GPU's exp is vectorized already).

`Dropout` is nn.Dropout with the keep mask from SplitMix64, a counter-based generator: a 64-bit key per call
from MLX's generator (so the seed, checkpoints and resume govern it as before), added to the element index × an
odd constant, then mixed; one compiled kernel of integer multiplies and shifts. Each
element is kept with probability 1 − p as before; the masks differ from MLX's for the same seed.
`cpu_dropout(model)` puts it in every LoRA layer's place of nn.Dropout (on the CPU only).
"""

import contextlib
import math
import sys

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import activations

_MLX_LM_SWIGLU = activations.swiglu  # kept: the module itself is patched when a model holds its SwiGLU class
_LOG2E = 1 / math.log(2)
_TAYLOR = [math.log(2) ** k / math.factorial(k) for k in range(8)]  # 2^f = Σ (f ln 2)^k / k!


@mx.compile  # not shapeless: the bit view needs its shape (one kernel per shape, built once)
def exp(x):
    """e^x for float32 x; below e^-87.3 (2^-126, the smallest normal float) it gives 2^-126."""
    y = mx.clip(x * _LOG2E, -126.0, 127.0)
    n = mx.round(y)
    f = y - n
    p = _TAYLOR[-1]
    for c in reversed(_TAYLOR[:-1]):
        p = p * f + c
    return p * mx.left_shift(n.astype(mx.int32) + 127, 23).view(mx.float32)


def sigmoid(x):
    return 1 / (1 + exp(-x))


@mx.custom_function
def _swiglu32(gate, x):
    return gate * sigmoid(gate) * x


@_swiglu32.vjp
def _swiglu32_vjp(primals, cotangent, output):
    gate, x = primals
    s = sigmoid(gate)
    silu = gate * s
    return cotangent * x * (s + silu * (1 - s)), cotangent * silu  # d silu/d gate = s + silu·(1 − s)


def swiglu(gate, x):
    """SiLU(gate) · x, as mlx_lm.models.activations.swiglu; float32 goes through the polynomial exp."""
    if gate.dtype == x.dtype == mx.float32:
        return _swiglu32(gate, x)
    return _MLX_LM_SWIGLU(gate, x)


@contextlib.contextmanager
def cpu_activations(*models):
    """While inside, the models' mlx-lm architectures call `swiglu` instead of mlx-lm's (on the CPU only).

    mlx-lm's blocks call the `swiglu` their module imported, so the name is swapped in those modules and put
    back on the way out, error or not."""
    cpu = mx.default_device() == mx.cpu
    modules = {sys.modules[type(m).__module__] for model in models if model is not None and cpu
               for _, m in model.named_modules()}
    patched = [mod for mod in modules if getattr(mod, "swiglu", None) is _MLX_LM_SWIGLU]
    for mod in patched:
        mod.swiglu = swiglu
    try:
        yield
    finally:
        for mod in patched:
            mod.swiglu = _MLX_LM_SWIGLU


_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64's constants


def _u64(v):
    """A uint64 scalar (MLX takes Python ints below 2^63 only: larger ones go through int64's bits)."""
    return mx.array(v - 2**64 if v >= 2**63 else v, mx.int64).view(mx.uint64)


@mx.compile
def _dropout(x, key, threshold, scale):
    """x where SplitMix64(key + i·golden) ≥ threshold (probability 1 − p), scaled by 1 / (1 − p); else 0."""
    h = mx.arange(x.size, dtype=mx.uint64).reshape(x.shape) * _u64(_GOLDEN) + key
    h = (h ^ (h >> 30)) * _u64(_MIX1)
    h = (h ^ (h >> 27)) * _u64(_MIX2)
    h = h ^ (h >> 31)
    return mx.where(h >= threshold, x * scale, 0).astype(x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout (zero each element with probability p, scale the rest by 1 / (1 − p)), masks by SplitMix64."""

    def __call__(self, x):
        if self._p_1 == 1 or not self.training:
            return x
        words = mx.random.randint(0, 2**31, (2,)).astype(mx.uint64)  # one draw from MLX's generator per call
        key = (words[0] << _u64(31)) | words[1]  # 62 random bits
        threshold = _u64(min(int((1 - self._p_1) * 2.0**64), 2**64 - 1))
        return _dropout(x, key, threshold, mx.array(1 / self._p_1, mx.float32))


def cpu_dropout(model):
    """Every nn.Dropout of the model (mlx-lm's LoRA layers hold one each) replaced by `Dropout` of the same p,
    on the CPU only."""
    if mx.default_device() != mx.cpu:
        return
    for _, module in model.named_modules():
        if type(getattr(module, "dropout", None)) is nn.Dropout:
            module.dropout = Dropout(1 - module.dropout._p_1)
