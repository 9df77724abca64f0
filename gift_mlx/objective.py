"""The GIFT objective: per-token weights from a frozen model's confidence, and the weighted loss.

L = Σ w·ℓ / Σ w over the target tokens of a whole optimizer step, w = max(q, floor)^γ, ℓ = −log p(y_t);
q is a frozen guide's confidence (gift, gift-base) or, for dft, the trained model's own stop-gradient p(y_t).
The step function differentiates the *sums* Σ w·ℓ of each micro-batch and divides the accumulated gradient
by the step's Σ w, so accumulating micro-batches gives exactly the gradient of one large batch.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np


def token_weights(q, floor=1e-4, gamma=1.0):
    """w = max(q, floor)^γ; works on numpy and MLX arrays."""
    if isinstance(q, mx.array):
        return mx.power(mx.maximum(q, floor), gamma)
    return np.power(np.maximum(q, floor), gamma, dtype=np.float32)


def token_nll(model, inputs, labels):
    """ℓ = −log p(label) at every position, in float32."""
    logits = model(inputs).astype(mx.float32)
    return nn.losses.cross_entropy(logits, labels, reduction="none")


def confidence(model, inputs, labels):
    """q = p(label) at every position, with no gradient: the model is a frozen guide."""
    return mx.stop_gradient(mx.exp(-token_nll(model, inputs, labels)))


def weighted_sums(model, inputs, labels, w, own=None):
    """(Σ w·ℓ, (Σ w, Σ ℓ, n)) over the positions with w > 0: the differentiated value comes first.

    own=(floor, gamma): DFT-style weights from the trained model itself, w = max(stopgrad(p), floor)^γ on
    the target positions (w > 0 marks them), taken from the same logits as ℓ: no second forward pass.
    """
    nll = token_nll(model, inputs, labels)
    if own is not None:
        w = mx.where(w > 0, token_weights(mx.stop_gradient(mx.exp(-nll)), *own), 0.0)
    mask = w > 0
    return (w * nll).sum(), (w.sum(), mx.where(mask, nll, 0).sum(), mask.sum())
