import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import activations, llama

from gift_mlx import fastmath
from gift_mlx.config import TrainConfig
from gift_mlx.models import load_model
from gift_mlx.train import add_lora


def test_exp_is_within_float32_rounding_of_the_true_exp():
    x = np.linspace(-87.0, 88.0, 400_001, dtype=np.float32)
    true = np.exp(x.astype(np.float64))
    ours, mlx = np.array(fastmath.exp(mx.array(x))), np.array(mx.exp(mx.array(x)))
    # relative to the float32 input, e^x's error is |x|·2^-24 at best: ours matches MLX's own error
    assert np.max(np.abs(ours - true) / true) <= 1.01 * np.max(np.abs(mlx - true) / true)
    small = np.abs(x) < 1
    assert np.max(np.abs(ours[small] - true[small]) / true[small]) < 2.5e-7


def test_exp_saturates_instead_of_overflowing_and_passes_nan():
    out = np.array(fastmath.exp(mx.array([-1e4, -100.0, 0.0, 100.0, 1e4, np.nan], mx.float32)))
    assert out[0] == out[1] == np.float32(2.0 ** -126) and out[2] == 1.0
    assert np.isfinite(out[3]) and out[3] == out[4] and np.isnan(out[5])


def test_swiglu_and_its_gradient_match_mlx_lm():
    rng = np.random.default_rng(0)
    gate, x, cot = (mx.array(rng.normal(scale=s, size=(3, 7, 64)).astype(np.float32)) for s in (6, 1, 1))
    theirs = mx.vjp(activations.swiglu, [gate, x], [cot])
    ours = mx.vjp(fastmath.swiglu, [gate, x], [cot])
    for a, b in zip(theirs[0] + theirs[1], ours[0] + ours[1]):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=2e-6, atol=2e-6)
    half = [v.astype(mx.bfloat16) for v in (gate, x)]  # not float32: mlx-lm's own function, bit for bit
    assert mx.array_equal(fastmath.swiglu(*half), activations.swiglu(*half)).item()


def test_cpu_activations_swaps_mlx_lm_swiglu_for_the_run_and_restores_it(llama_pair):
    model = load_model(llama_pair[0])[0]
    add_lora(model, TrainConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0))
    inputs = mx.array(np.arange(24, dtype=np.int32).reshape(2, 12) % 50)

    def loss(model):
        return nn.losses.cross_entropy(model(inputs), inputs).mean()

    value, grads = nn.value_and_grad(model, loss)(model)
    with fastmath.cpu_activations(model, None):
        assert llama.swiglu is fastmath.swiglu
        fast_value, fast_grads = nn.value_and_grad(model, loss)(model)
    assert llama.swiglu is activations.swiglu
    assert abs(fast_value.item() - value.item()) < 1e-5
    for (name, g), (_, f) in zip(tree_flatten(grads), tree_flatten(fast_grads)):
        np.testing.assert_allclose(np.array(f), np.array(g), rtol=1e-3, atol=1e-6, err_msg=name)
    with pytest.raises(RuntimeError), fastmath.cpu_activations(model):
        raise RuntimeError
    assert llama.swiglu is activations.swiglu
    holder = nn.Module()  # a model holding a class of mlx-lm's activations module patches that module too
    holder.act = activations.SwigluOAI()
    original = activations.swiglu
    with fastmath.cpu_activations(holder):
        assert activations.swiglu is fastmath.swiglu
        half = mx.ones((2, 3), mx.bfloat16)
        assert fastmath.swiglu(half, half).dtype == mx.bfloat16  # falls back to mlx-lm's own, not to itself
    assert activations.swiglu is original


def test_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it():
    drop = fastmath.Dropout(0.25)
    x = mx.ones((500, 800))
    mx.random.seed(3)
    first = np.array(drop(x))
    assert set(np.unique(first)) == {0.0, np.float32(1 / 0.75)}
    dropped = first == 0
    n = dropped.size
    assert abs(dropped.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / n)  # within 4 standard errors
    rows, cols = dropped.mean(1), dropped.mean(0)  # no structure along either axis
    assert rows.std() < 1.3 * np.sqrt(0.25 * 0.75 / 800) and cols.std() < 1.3 * np.sqrt(0.25 * 0.75 / 500)
    assert abs(np.corrcoef(dropped[:, :-1].ravel(), dropped[:, 1:].ravel())[0, 1]) < 0.01
    second = np.array(drop(x))  # a new key per call: independent masks
    assert abs((second != first).mean() - 2 * 0.25 * 0.75) < 0.01
    mx.random.seed(3)  # the key comes from MLX's generator: the seed fixes the masks
    assert np.array_equal(np.array(drop(x)), first)
    drop.eval()
    assert drop(x) is x
    assert fastmath.Dropout(0.0)(x) is x


def test_cpu_dropout_replaces_the_lora_layers_dropout_of_the_same_p(llama_pair):
    model = load_model(llama_pair[0])[0]
    add_lora(model, TrainConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.1))
    fastmath.cpu_dropout(model)
    drops = [m.dropout for _, m in model.named_modules() if hasattr(m, "lora_a")]
    assert drops and all(type(d) is fastmath.Dropout and abs(d._p_1 - 0.9) < 1e-12 for d in drops)
