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


# The chunked LM head + cross-entropy (large vocabularies) against the full logits, on tiny mlx-lm models.

import importlib

import pytest
from mlx.utils import tree_flatten

from gift_mlx import objective, toy
from gift_mlx.config import TrainConfig
from gift_mlx.models import wire_memory
from gift_mlx.objective import split_head, token_nll
from gift_mlx.train import add_lora


def tiny_lm(arch, tied, quantized=False, seed=0):
    config = toy.model_config(arch, vocab_size=96, tied=tied)
    module = importlib.import_module(f"mlx_lm.models.{arch}")
    mx.random.seed(seed)
    model = module.Model(module.ModelArgs.from_dict(config))
    if quantized:  # QLoRA: 4-bit base (the head too), LoRA layers on top
        nn.quantize(model, group_size=32, bits=4)
    add_lora(model, TrainConfig(lora_rank=4, lora_dropout=0.0))
    # LoRA's B starts at zero: give it values so that the LoRA gradient path is exercised
    model.update(tree_map_lora(model))
    return model


def tree_map_lora(model):
    from mlx.utils import tree_unflatten

    rng = np.random.default_rng(1)
    return tree_unflatten([(k, mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32)))
                           for k, v in tree_flatten(model.trainable_parameters()) if k.endswith("lora_b")])


def loss_grad_conf(model, inputs, labels, w, own, compiled, positions=None):
    f = nn.value_and_grad(model, partial(weighted_sums, own=own))

    def step(inputs, labels, w, positions):
        return f(model, inputs, labels, w, positions=positions)
    if compiled:  # as train.build_step: the model's state is an input of the compiled function
        step = partial(mx.compile, inputs=model.state, outputs=model.state)(step)
    (wl, (sw, l, n)), grad = step(inputs, labels, w, positions)
    q = confidence(model, inputs, labels, positions)
    val = weighted_sums(model, inputs, labels, w, own=own, grad=False, positions=positions)[0]
    return wl.item(), l.item(), dict(tree_flatten(grad)), np.array(q), val.item()


@pytest.mark.parametrize("arch,tied,quantized", [("llama", False, False), ("llama", False, True), ("qwen2", True, False),
                                                 ("qwen2", True, True)])
def test_chunked_head_gives_the_same_loss_gradient_and_confidences(monkeypatch, arch, tied, quantized):
    model = tiny_lm(arch, tied, quantized)
    body, head = split_head(model)
    rng = np.random.default_rng(0)
    inputs = mx.array(rng.integers(0, 96, (2, 11)).astype(np.int32))
    labels = mx.array(rng.integers(0, 96, (2, 11)).astype(np.int32))
    w = mx.array(np.where(rng.random((2, 11)) < 0.7, rng.random((2, 11)), 0).astype(np.float32))
    np.testing.assert_array_equal(np.array(head(body(inputs))), np.array(model(inputs)))  # the split is exact
    for own in (None, (1e-4, 1.0)):  # gift's given weights, dft's own weights
        for compiled in (False, True):
            full = loss_grad_conf(model, inputs, labels, w, own, compiled)
            # 22 positions × 96 rows > 5 × 96: four chunks of 5 positions and one of 2
            monkeypatch.setattr(objective, "LOGITS_BUDGET", 5 * 96)
            chunked = loss_grad_conf(model, inputs, labels, w, own, compiled)
            monkeypatch.undo()
            assert np.isclose(chunked[0], full[0], rtol=1e-5) and np.isclose(chunked[1], full[1], rtol=1e-5)
            assert np.isclose(chunked[4], full[0], rtol=1e-5)  # validation's loss (no gradient)
            assert full[2].keys() == chunked[2].keys() and len(full[2]) > 0
            for k, g in full[2].items():
                g = np.array(g)
                np.testing.assert_allclose(np.array(chunked[2][k]), g, rtol=1e-5, atol=1e-5 * np.abs(g).max())
            np.testing.assert_allclose(chunked[3], full[3], rtol=1e-5, atol=1e-7)
            # the head on the targets only (train.py's chunked steps), padded with 3 positions of weight 0
            idx = objective.target_positions(np.array(w), int((np.array(w) > 0).sum()) + 3)
            assert np.array(w).reshape(-1)[idx[-3:]].tolist() == [0, 0, 0]
            monkeypatch.setattr(objective, "LOGITS_BUDGET", 5 * 96)
            targets = loss_grad_conf(model, inputs, labels, w, own, compiled, mx.array(idx))
            monkeypatch.undo()
            assert np.isclose(targets[0], full[0], rtol=1e-5) and np.isclose(targets[1], full[1], rtol=1e-5)
            assert np.isclose(targets[4], full[0], rtol=1e-5)
            for k, g in full[2].items():
                g = np.array(g)
                np.testing.assert_allclose(np.array(targets[2][k]), g, rtol=1e-5, atol=1e-5 * np.abs(g).max())
            np.testing.assert_allclose(targets[3], full[3].reshape(-1)[idx], rtol=1e-5, atol=1e-7)


def test_small_logits_and_unknown_models_keep_the_full_computation(monkeypatch):
    model = tiny_lm("llama", False)
    calls = []
    monkeypatch.setattr(objective, "chunked_nll", lambda *a: calls.append(a))
    inputs = mx.zeros((1, 4), mx.int32)
    token_nll(model, inputs, inputs)  # 4 × 96 logits: under the budget
    assert calls == [] and split_head(TinyLM(9, 5)) is None
    token_nll(model, inputs, inputs, budget=96)
    assert len(calls) == 1 and calls[0][3] == 1  # one position per chunk


def test_wired_limit_raised_on_metal_only(monkeypatch):
    calls = []
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: calls.append(n) or 0)
    monkeypatch.setattr(mx, "device_info", lambda: {"max_recommended_working_set_size": 12345})
    monkeypatch.setattr(mx.metal, "is_available", lambda: False)
    assert wire_memory() is None and calls == []  # CPU: nothing
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    wire_memory()
    assert calls == [12345]
