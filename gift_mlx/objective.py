"""The GIFT objective: per-token weights from a frozen model's confidence, and the weighted loss.

L = Σ w·ℓ / Σ w over the target tokens of a whole optimizer step, w = max(q, floor)^γ, ℓ = −log p(y_t);
q is a frozen guide's confidence (gift, gift-base) or, for dft, the trained model's own stop-gradient p(y_t).
The step function differentiates the *sums* Σ w·ℓ of each micro-batch and divides the accumulated gradient
by the step's Σ w, so accumulating micro-batches gives exactly the gradient of one large batch.

At large vocabularies (Qwen2.5: 151,936 rows) the [positions × vocabulary] float32 logits dominate memory:
there ℓ is computed through the LM head in chunks of positions (`chunked_nll`), and for training the head's
gradient is formed chunk by chunk in the same pass (`fused_nll`), so no array spans all the logits and autodiff
keeps none of them. There the head also runs on the target positions only (`positions`, from
`target_positions`): a prompt or padding position has w = 0, so its logits change neither the loss nor the
gradient, and at 152k vocabularies the head and its softmax are a large share of the step. MLX allocates ahead
of execution, so below its memory limit several chunks may be live at once (measured: ~2 float32 values per
logit at the peak instead of ~4); at the limit it waits, and one chunk's logits are freed before the next
chunk's are made.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

# float32 logits elements held at once (64 MiB): above it the LM head runs in chunks of positions.
LOGITS_BUDGET = 2**24
# mlx-lm architectures whose Model.__call__ is exactly head(self.model(x)) (read in their source).
SPLIT_ARCHS = frozenset({"mlx_lm.models.llama", "mlx_lm.models.qwen2", "mlx_lm.models.qwen3"})


def token_weights(q, floor=1e-4, gamma=1.0):
    """w = max(q, floor)^γ; works on numpy and MLX arrays."""
    if isinstance(q, mx.array):
        return mx.power(mx.maximum(q, floor), gamma)
    return np.power(np.maximum(q, floor), gamma, dtype=np.float32)


def split_head(model):
    """(body, head) with model(x) == head(body(x)) for the architectures in SPLIT_ARCHS, else None."""
    if type(model).__module__ not in SPLIT_ARCHS:
        return None
    head = model.model.embed_tokens.as_linear if model.args.tie_word_embeddings else model.lm_head
    return model.model, head


def _nll(logits, labels):
    """ℓ = logsumexp − logit of the label, in float32 (what nn.losses.cross_entropy computes)."""
    logits = logits.astype(mx.float32)
    return mx.logsumexp(logits, -1) - mx.take_along_axis(logits, labels[..., None], -1)[..., 0]


def chunk_positions(vocab, budget=None):
    return max(1, (budget or LOGITS_BUDGET) // vocab)


def _chunks(flat, chunk, parts):
    """flat's chunks in order, each made to wait for the previous chunk's result (parts[-1]), so that the
    chunks run one after the other rather than side by side (each side-by-side chunk holds its logits)."""
    for i in range(0, flat.shape[0], chunk):
        x = flat[i : i + chunk]
        yield i, (mx.depends(x, parts[-1]) if parts else x)


def chunked_nll(head, h, labels, chunk):
    """ℓ for every position of h [B, T, D], through the head `chunk` positions at a time (no gradient kept)."""
    flat, lab = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    parts = []
    for i, x in _chunks(flat, chunk, parts):
        parts.append(_nll(head(x), lab[i : i + chunk]))
    return mx.concatenate(parts).reshape(labels.shape)


def label_rows(head, y):
    """W[y]: the head's weight rows of the labels (dequantized), i.e. d logit_y / dh."""
    module = getattr(head, "__self__", head)  # embed_tokens.as_linear is a bound method
    if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
        return module(y)
    if isinstance(module, nn.QuantizedLinear):  # the rows as QuantizedEmbedding.__call__ dequantizes them
        biases = module.get("biases")
        return mx.dequantize(module["weight"][y], scales=module["scales"][y],
                             biases=biases[y] if biases is not None else None,
                             group_size=module.group_size, bits=module.bits, mode=module.mode)
    return module.weight[y]


def fused_nll(head, h, labels, chunk):
    """ℓ as chunked_nll, differentiable in h: each chunk's dℓ/dh = (softmax − onehot)·W is formed in the same
    pass (the forward already holds the chunk's logits), so the backward needs neither the logits nor a second
    head matmul. The head must be frozen (its own gradient is not formed)."""
    flat, lab = mx.stop_gradient(h.reshape(-1, h.shape[-1])), labels.reshape(-1)
    parts = []
    for i, x in _chunks(flat, chunk, parts):
        y = lab[i : i + chunk, None]
        logits = head(x)
        z = logits.astype(mx.float32)
        m = z.max(-1, keepdims=True)
        e = mx.exp(z - m)  # one exp per logit for both ℓ and softmax (MLX's CPU exp is single-threaded and slow)
        total = e.sum(-1, keepdims=True)
        lse = m + mx.log(total)
        p = e / total  # dℓ/dlogits = softmax − onehot(y), so dℓ/dh = softmax·W − W[y]
        dh = mx.vjp(head, [x], [p.astype(logits.dtype)])[1][0] - label_rows(head, y[:, 0])
        # one array per chunk, [dℓ/dh | ℓ], for the next chunk to wait on
        parts.append(mx.concatenate([dh.astype(mx.float32), lse - mx.take_along_axis(z, y, -1)], -1))
    packed = mx.stop_gradient(mx.concatenate(parts))
    nll, dh = packed[:, -1].reshape(labels.shape), packed[:, :-1].astype(h.dtype).reshape(h.shape)
    # value ℓ (t − t is exactly 0), gradient dℓ/dh: d(Σ g·ℓ)/dh = g·dh at every position
    t = (h * dh).sum(-1)
    return nll + (t - mx.stop_gradient(t))


def token_nll(model, inputs, labels, grad=False, budget=None, positions=None):
    """ℓ = −log p(label) at every position, in float32. grad=True: it will be differentiated.
    positions (flat indices into [B, T]): ℓ at those positions only, as a vector.

    Small logits (positions × vocabulary ≤ budget) go through model(inputs) and cross-entropy as they are;
    larger ones through the LM head in chunks (chunked_nll, or fused_nll for a gradient), on `positions` only.
    """
    split = split_head(model)
    if split is not None:
        body, head = split
        vocab = model.args.vocab_size
        if chunked(model, labels.size, budget) and (not grad or not _trainable(head)):
            h = body(inputs)
            if positions is not None:
                h, labels = h.reshape(-1, h.shape[-1])[positions], labels.reshape(-1)[positions]
            return (fused_nll if grad else chunked_nll)(head, h, labels, chunk_positions(vocab, budget))
    nll = nn.losses.cross_entropy(model(inputs).astype(mx.float32), labels, reduction="none")
    return nll if positions is None else nll.reshape(-1)[positions]


def chunked(model, n_positions, budget=None):
    """Whether token_nll computes this many positions' logits in chunks (then `positions` saves head work)."""
    return split_head(model) is not None and n_positions * model.args.vocab_size > (budget or LOGITS_BUDGET)


def target_positions(w, size=None):
    """Flat indices of the positions with w > 0 (numpy), padded to `size` with a position of weight 0, so that
    a compiled step sees one shape per `size` (the padding adds 0·ℓ to every sum)."""
    flat = w.reshape(-1) > 0
    idx = np.flatnonzero(flat)
    if size is not None and len(idx) < size:
        idx = np.concatenate([idx, np.full(size - len(idx), np.argmin(flat))])  # argmin: a w = 0 position
    return idx.astype(np.int32)


def _trainable(head):
    module = getattr(head, "__self__", head)  # embed_tokens.as_linear is a bound method
    return bool(tree_flatten(module.trainable_parameters()))


def confidence(model, inputs, labels, positions=None):
    """q = p(label) at every position (or at `positions`, flat), with no gradient: the model is a frozen guide."""
    return mx.stop_gradient(mx.exp(-token_nll(model, inputs, labels, positions=positions)))


def weighted_sums(model, inputs, labels, w, own=None, grad=True, positions=None):
    """(Σ w·ℓ, (Σ w, Σ ℓ, n)) over the positions with w > 0: the differentiated value comes first.
    positions: flat indices holding every w > 0 position (target_positions); the head runs there only.

    own=(floor, gamma): DFT-style weights from the trained model itself, w = max(stopgrad(p), floor)^γ on
    the target positions (w > 0 marks them), taken from the same logits as ℓ: no second forward pass.
    grad=False (validation): ℓ is not differentiated, so no head gradient is formed.
    """
    nll = token_nll(model, inputs, labels, grad=grad, positions=positions)
    if positions is not None:
        w = w.reshape(-1)[positions]
    if own is not None:
        w = mx.where(w > 0, token_weights(mx.stop_gradient(mx.exp(-nll)), *own), 0.0)
    mask = w > 0
    return (w * nll).sum(), (w.sum(), mx.where(mask, nll, 0).sum(), mask.sum())
