import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from gift_mlx.config import TrainConfig
from gift_mlx.data import collate, load_split
from gift_mlx.models import load_model
from gift_mlx.train import add_lora, build_step, optimizer_step, train

FAST = dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=4, steps_per_report=1, steps_per_eval=5)


def lora_model(path, seed=0):
    model, tok, _ = load_model(path)
    mx.random.seed(seed)
    add_lora(model, TrainConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0))
    return model, tok


def batch_rows(tok, task_data, n):
    ds = load_split(task_data / "train.jsonl", tok, 2048)
    ex = ds.examples[:n]
    scores = [np.random.default_rng(i).uniform(0.05, 1, e.num_targets).astype(np.float32) for i, e in enumerate(ex)]
    return ex, scores


def run_steps(model, micro):
    """One optimizer step (SGD, so the update is proportional to the gradient) over the micro-batches, as
    gift train runs it (train.optimizer_step)."""
    opt = optim.SGD(learning_rate=1.0)
    step, state = build_step(model, opt)
    batches = (tuple(map(mx.array, collate(ex, sc))) + (None,) for ex, sc in micro)
    sums = optimizer_step(step, state, batches, len(micro))
    return dict(tree_flatten(model.trainable_parameters())), np.array(sums)


def test_accumulating_4x1_equals_one_batch_of_4(llama_pair, task_data):
    base, _ = llama_pair
    m1, tok = lora_model(base)
    m4, _ = lora_model(base)
    ex, sc = batch_rows(tok, task_data, 4)
    before = {k: np.array(v) for k, v in tree_flatten(m1.trainable_parameters())}
    p1, s1 = run_steps(m1, [([e], [s]) for e, s in zip(ex, sc)])
    p4, s4 = run_steps(m4, [(ex, sc)])
    np.testing.assert_allclose(s1, s4, rtol=1e-5)
    moved = 0
    for k in p1:
        np.testing.assert_allclose(np.array(p1[k]), np.array(p4[k]), rtol=1e-4, atol=1e-6)
        moved += not np.allclose(np.array(p1[k]), before[k])
    assert moved > 0


def test_accumulating_4x2_gives_the_adapter_of_one_batch_of_8(llama_pair, task_data):
    """Σ w·ℓ / Σ w over the whole step: four micro-batches of 2 rows update the adapter as one batch of the
    same 8 rows does (to float32 rounding), though each micro-batch is evaluated on its own."""
    base, _ = llama_pair
    m2, tok = lora_model(base)
    m8, _ = lora_model(base)
    ex, sc = batch_rows(tok, task_data, 8)
    p2, s2 = run_steps(m2, [(ex[i:i + 2], sc[i:i + 2]) for i in range(0, 8, 2)])
    p8, s8 = run_steps(m8, [(ex, sc)])
    np.testing.assert_allclose(s2, s8, rtol=1e-6)
    for k in p2:
        np.testing.assert_allclose(np.array(p2[k]), np.array(p8[k]), rtol=0, atol=1e-6)


def step_peak_memory(model, tok, task_data, n):
    """MLX's peak memory above what is held before, during one optimizer step of n micro-batches of 8 rows."""
    ex, sc = batch_rows(tok, task_data, 8)
    step, state = build_step(model, optim.SGD(learning_rate=0.0))
    batches = (tuple(map(mx.array, collate(ex, sc))) + (None,) for _ in range(n))
    mx.eval(state)
    mx.clear_cache()
    mx.reset_peak_memory()
    held = mx.get_active_memory()
    optimizer_step(step, state, batches, n)
    return mx.get_peak_memory() - held


def test_peak_memory_does_not_grow_with_accumulation(llama_pair, task_data):
    """Evaluated per micro-batch, 8 micro-batches peak as 2 do (at the toy size, 2 add the accumulated LoRA
    gradient to 1: 5.9 -> 6.6 MB); evaluated only at the end, they peaked at 8.9, 30.5, 113 MB for 2, 8, 32."""
    base, _ = llama_pair
    model, tok = lora_model(base)
    step_peak_memory(model, tok, task_data, 2)  # compiles both traces first
    two, eight = step_peak_memory(model, tok, task_data, 2), step_peak_memory(model, tok, task_data, 8)
    assert eight <= 1.1 * two, (two, eight)


@pytest.mark.parametrize("pair", ["llama_pair", "qwen2_pair"])
def test_gift_training_lowers_loss_changes_only_lora_and_loads_in_mlx_lm(tmp_path, request, pair, task_data):
    base, instruct = request.getfixturevalue(pair)
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path / "a"),
                      iters=30, learning_rate=3e-3, **FAST)
    record = train(cfg, log=lambda m: None)
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert val[-1] < val[0] - 0.2, val
    assert record["final"]["loss"] < rows[0]["loss"]

    from mlx_lm.utils import load

    adapted, _ = load(str(base), adapter_path=str(tmp_path / "a"))
    plain, _ = load(str(base))
    weights = dict(tree_flatten(adapted.parameters()))
    stored = mx.load(str(tmp_path / "a" / "adapters.safetensors"))
    assert stored and all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b") for k in stored)
    for k, v in tree_flatten(plain.parameters()):  # frozen weights are the base's, unchanged
        key = k if k in weights else "{}.linear.{}".format(*k.rsplit(".", 1))
        assert mx.array_equal(weights[key], v), k
    assert any(float(mx.abs(stored[k]).max()) > 0 for k in stored if k.endswith("lora_b"))
    x = mx.array([[1, 5, 9, 13]])
    assert not mx.allclose(adapted(x), plain(x))


def test_online_scores_give_the_cached_result(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    common = dict(base=str(base), instruct=str(instruct), data=str(task_data), iters=4, learning_rate=1e-3, **FAST)
    cached = train(TrainConfig(adapter_path=str(tmp_path / "c"), **common), log=lambda m: None)
    online = train(TrainConfig(adapter_path=str(tmp_path / "o"), online_scores=True, **common), log=lambda m: None)
    assert not (tmp_path / "o" / "scores").exists()
    assert np.isclose(online["final"]["val_loss"], cached["final"]["val_loss"], rtol=1e-4)
    a, b = mx.load(str(tmp_path / "c" / "adapters.safetensors")), mx.load(str(tmp_path / "o" / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method, trained, scores", [
    ("shadow-ft", "base", None), ("direct", "instruct", None), ("gift-base", "base", "train-base"),
])
def test_methods(tmp_path, llama_pair, task_data, method, trained, scores):
    base, instruct = llama_pair
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path),
                      method=method, iters=2, **FAST)
    record = train(cfg, log=lambda m: None)
    conf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert conf["method"] == method and conf["model"] == str({"base": base, "instruct": instruct}[trained])
    found = sorted(p.stem for p in (tmp_path / "scores").glob("*.safetensors")) if scores else []
    assert (found[0] if found else None) == scores
    if scores is None:  # uniform weights: the weighted loss is the plain token mean
        assert np.isclose(record["final"]["loss"], record["final"]["plain_loss"], rtol=1e-6)


def test_qlora_on_a_quantized_base(tmp_path, llama_pair, task_data):
    from mlx_lm.utils import quantize_model, save_config, save_model

    base, instruct = llama_pair
    model, _, config = load_model(base)
    model, config = quantize_model(model, config, group_size=32, bits=4)
    save_model(tmp_path / "q", model)
    save_config(config, tmp_path / "q" / "config.json")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "q" / f).write_bytes((base / f).read_bytes())
    cfg = TrainConfig(base=str(tmp_path / "q"), instruct=str(instruct), data=str(task_data),
                      adapter_path=str(tmp_path / "a"), iters=3, **FAST)
    record = train(cfg, log=lambda m: None)
    assert np.isfinite(record["final"]["loss"])
    assert mx.load(str(tmp_path / "a" / "adapters.safetensors"))


def test_grad_checkpoint_gives_the_same_adapter_and_patches_only_this_model(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    common = dict(base=str(base), instruct=str(instruct), data=str(task_data), iters=3, method="shadow-ft", **FAST)
    train(TrainConfig(adapter_path=str(tmp_path / "p"), **common), log=lambda m: None)
    train(TrainConfig(adapter_path=str(tmp_path / "c"), grad_checkpoint=True, **common), log=lambda m: None)
    a, b = mx.load(str(tmp_path / "p" / "adapters.safetensors")), mx.load(str(tmp_path / "c" / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-4, atol=1e-6)
    fresh, _, _ = load_model(base)
    assert type(fresh.layers[0]).__call__.__qualname__.startswith("TransformerBlock")


def test_dora_adapter_trains_and_is_recorded(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path),
                      fine_tune_type="dora", iters=2, **FAST)
    train(cfg, log=lambda m: None)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fine_tune_type"] == "dora"
    assert any(k.endswith(".m") for k in mx.load(str(tmp_path / "adapters.safetensors")))


def test_half_precision_models_compute_in_float32_on_cpu(monkeypatch):
    """bfloat16 weights become float32 on a CPU (MLX has no fast half-precision matmul there), quantized ones
    are dequantized to float32 (the same function); a copy too large for memory and GIFT_CPU_FLOAT32=0 keep
    their weights."""
    from mlx_lm.models import llama

    from gift_mlx.models import cpu_float32

    def model(quantized=False):
        m = llama.Model(llama.ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=1, intermediate_size=128,
                                        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                        vocab_size=64, tie_word_embeddings=False))
        if quantized:
            nn.quantize(m, group_size=32, bits=4)
        m.set_dtype(mx.bfloat16)
        return m

    def dtypes(m):
        return {v.dtype for _, v in tree_flatten(m.parameters())}

    logs = []
    assert dtypes(cpu_float32(model(), "m", logs.append)) == {mx.float32} and "float32 on CPU" in logs[-1]
    q = model(quantized=True)
    x = mx.array([[1, 5, 9, 3]])
    q.set_dtype(mx.float32)  # scales in float32: the same quantized function, computed without bfloat16 rounding
    before = q(x)
    assert dtypes(cpu_float32(q, "q", logs.append)) == {mx.float32} and "(dequantized)" in logs[-1]
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in q.named_modules())
    np.testing.assert_allclose(np.array(q(x)), np.array(before), rtol=1e-4, atol=1e-5)
    assert mx.uint32 in dtypes(cpu_float32(model(quantized=True), "q", logs.append, share=1e-9))
    assert dtypes(cpu_float32(model(), "m", logs.append, share=1e-9)) == {mx.bfloat16} and "kept in" in logs[-1]
    monkeypatch.setenv("GIFT_CPU_FLOAT32", "0")
    assert dtypes(cpu_float32(model(), "m", logs.append)) == {mx.bfloat16}


def test_cached_and_computed_scores_give_the_same_adapter_with_dropout(tmp_path, llama_pair, task_data):
    """The dropout stream depends only on the seed: loading the guide to score must not shift it."""
    base, instruct = llama_pair
    common = dict(base=str(base), instruct=str(instruct), data=str(task_data), lora_rank=4, lora_alpha=8,
                  lora_dropout=0.3, batch_size=4, iters=3, steps_per_report=1, steps_per_eval=3)
    train(TrainConfig(adapter_path=str(tmp_path / "computed"), **common), log=lambda m: None)
    logs = []
    train(TrainConfig(adapter_path=str(tmp_path / "cached"), scores_path=str(tmp_path / "computed" / "scores"),
                      **common), log=logs.append)
    assert any(m.startswith("scores: reusing") for m in logs) and not any("computing" in m for m in logs), logs
    a = mx.load(str(tmp_path / "computed" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "cached" / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k


def test_val_batches_zero_turns_validation_off(tmp_path, llama_pair, task_data):
    """--val-batches 0 means no validation, as in mlx_lm.lora (it was the whole validation set, like -1)."""
    base, instruct = llama_pair
    lines = []
    record = train(TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path / "a"),
                               iters=2, val_batches=0, **FAST), log=lines.append)
    rows = [json.loads(l) for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert "validation: off (--val-batches 0)" in lines
    assert not [r for r in rows if "val_loss" in r] and [r for r in rows if "loss" in r]
    assert "val_loss" not in record["final"]
    scores = tmp_path / "a" / "scores"  # the instruct model scores only the split the run uses
    assert (scores / "train-instruct.safetensors").is_file() and not (scores / "valid-instruct.safetensors").exists()
