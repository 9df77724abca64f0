from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from gift_mlx.objective import confidence, token_weights, weighted_sums


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def fixed_logits(logits):
    return lambda inputs: mx.array(logits)


def test_weights_floor_and_gamma():
    q = np.array([0.0, 1e-6, 0.25, 1.0], np.float32)
    np.testing.assert_allclose(token_weights(q), [1e-4, 1e-4, 0.25, 1.0], rtol=1e-6)
    np.testing.assert_allclose(token_weights(q, floor=0.01, gamma=2.0), [1e-4, 1e-4, 0.0625, 1.0], rtol=1e-5)
    np.testing.assert_allclose(np.array(token_weights(mx.array(q), 0.01, 2.0)), [1e-4, 1e-4, 0.0625, 1.0], rtol=1e-5)


def test_weighted_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
    w = np.array([[0, 0, 0.5, 0.2, 1.0], [0, 0.9, 0.1, 0, 0]], np.float32)  # zeros: prompt and padding
    wl, (sw, l, n) = weighted_sums(fixed_logits(logits), mx.zeros((2, 5), mx.int32), mx.array(labels), mx.array(w))
    nll = -np.take_along_axis(log_softmax(logits.astype(np.float64)), labels[..., None], -1)[..., 0]
    assert np.isclose(wl.item(), (w * nll).sum(), rtol=1e-5)
    assert np.isclose(sw.item(), w.sum(), rtol=1e-6)
    assert np.isclose(wl.item() / sw.item(), (w * nll).sum() / w.sum(), rtol=1e-5)
    assert np.isclose(l.item(), nll[w > 0].sum(), rtol=1e-5) and n.item() == 5


def test_uniform_weights_give_token_mean_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 6, 11)).astype(np.float32)
    labels = rng.integers(0, 11, size=(3, 6)).astype(np.int32)
    mask = rng.random((3, 6)) < 0.6
    wl, (sw, _, _) = weighted_sums(fixed_logits(logits), mx.zeros((3, 6), mx.int32), mx.array(labels),
                                   mx.array(mask.astype(np.float32)))
    nll = -np.take_along_axis(log_softmax(logits.astype(np.float64)), labels[..., None], -1)[..., 0]
    assert np.isclose(wl.item() / sw.item(), nll[mask].mean(), rtol=1e-5)


def test_confidence_is_softmax_probability():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 4, 9)).astype(np.float32)
    labels = rng.integers(0, 9, size=(1, 4)).astype(np.int32)
    q = np.array(confidence(fixed_logits(logits), None, mx.array(labels)))
    p = np.exp(log_softmax(logits.astype(np.float64)))
    np.testing.assert_allclose(q, np.take_along_axis(p, labels[..., None], -1)[..., 0], rtol=1e-5)


class TinyLM(nn.Module):
    """logits = embed(inputs) @ Wᵀ: small enough to differentiate by hand."""

    def __init__(self, vocab, dim):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def __call__(self, inputs):
        return self.out(self.embed(inputs))


def test_dft_gradient_matches_hand_computation():
    """dft: w = max(stopgrad(p), floor)^γ from the same logits; d(Σ w·ℓ)/dW with w held fixed, by hand."""
    mx.random.seed(0)
    model = TinyLM(9, 5)
    model.embed.freeze()
    rng = np.random.default_rng(3)
    inputs = rng.integers(0, 9, size=(2, 6)).astype(np.int32)
    labels = rng.integers(0, 9, size=(2, 6)).astype(np.int32)
    mask = np.array([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], np.float32)  # prompt and padding: 0
    gamma, floor = 2.0, 1e-4
    loss_and_grad = nn.value_and_grad(model, partial(weighted_sums, own=(floor, gamma)))
    (wl, (sw, l, n)), grad = loss_and_grad(model, mx.array(inputs), mx.array(labels), mx.array(mask))

    h = np.array(model.embed.weight, np.float64)[inputs]  # (B, T, D)
    logits = h @ np.array(model.out.weight, np.float64).T
    p = np.exp(log_softmax(logits))
    onehot = np.eye(9)[labels]
    q = (p * onehot).sum(-1)
    w = mask * np.maximum(q, floor) ** gamma
    nll = -np.log(q)
    dlogits = w[..., None] * (p - onehot)  # the weight is a constant: no term from differentiating w
    expected = np.einsum("btv,btd->vd", dlogits, h)
    assert np.isclose(wl.item(), (w * nll).sum(), rtol=1e-5) and np.isclose(sw.item(), w.sum(), rtol=1e-5)
    assert np.isclose(l.item(), nll[mask > 0].sum(), rtol=1e-5) and n.item() == mask.sum()
    np.testing.assert_allclose(np.array(grad["out"]["weight"]), expected, rtol=1e-4, atol=1e-6)
    # and the same as gift's weighted loss with those weights given from outside
    (_, _), fixed = nn.value_and_grad(model, weighted_sums)(model, mx.array(inputs), mx.array(labels),
                                                            mx.array(w.astype(np.float32)))
    np.testing.assert_allclose(np.array(grad["out"]["weight"]), np.array(fixed["out"]["weight"]), rtol=1e-4, atol=1e-7)
