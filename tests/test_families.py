"""Real model families end to end: tiny pairs written by transformers (its config layout), loaded, trained and merged.

The matrix (one pair per family, built once per module): the instruct model gift loads computes transformers'
logits; `gift train` (2 steps) and the MLX merge give W + scale·B A (per expert for mixtures of experts); plain
mlx_lm.load of the merged folder computes the adapter-applied model's logits. scripts/family_matrix.py makes the
same checks into README's table.
"""

import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from gift_mlx import toy
from gift_mlx.adapters import read_adapter
from gift_mlx.config import TrainConfig
from gift_mlx.errors import GiftError
from gift_mlx.families import translate_config
from gift_mlx.models import load_model
from gift_mlx.train import add_lora

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("family_matrix", ROOT / "scripts" / "family_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)

# lfm2: a hybrid (convolution and attention blocks); qwen3_5_text: loaded as mlx-lm's wrapped qwen3_5
# (blocks under language_model.model.layers), a hybrid of linear and full attention; olmo3: yarn with an
# attention_factor on the full-attention layers only; gemma3: Gemma 3 4B+'s multimodal wrapper (text_config)
MATRIX = matrix.FAMILIES + ["lfm2", "qwen3_5_text", "gemma3", "olmo3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return toy.write_task_data(tmp_path_factory.mktemp("data"), n_train=8, n_valid=4, n_test=4)


@pytest.fixture(scope="module", params=MATRIX)
def built(request, tmp_path_factory, data):
    family = request.param
    return (family, *matrix.build(family, tmp_path_factory.mktemp(family), data))


def test_instruct_logits_equal_transformers(built):
    assert matrix.logits_vs_transformers(*built) <= matrix.TOLERANCE


def test_merged_weights_are_instruct_plus_scale_ba(built):
    family, pair, adapter, merged = built
    assert matrix.merged_weights(*built) <= matrix.TOLERANCE
    # and the update is there: every adapted matrix of the merge differs from the instruct's
    instruct = dict(tree_flatten(load_model(pair[1])[0].parameters()))
    written = {}
    for f in Path(merged).glob("model*.safetensors"):
        written.update(mx.load(str(f)))
    layers = read_adapter(adapter).layers
    for path in layers:
        assert not mx.array_equal(written[f"{path}.weight"], instruct[f"{path}.weight"]), path
    if family in ("qwen3_moe", "olmoe"):  # LoRA on the experts too: one per expert, (experts, r, in)
        assert any(t["lora_a"].ndim == 3 and t["lora_a"].shape[0] == 4 for t in layers.values())


def test_merged_folder_loads_in_mlx_lm_with_the_adapted_logits(built):
    assert matrix.merged_logits(*built) <= matrix.TOLERANCE


# ---- the translation ----

def hf_config(model_type, **fields):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**toy.FAMILY_DIMS, "vocab_size": 384, **fields}).to_dict()


def test_translation_reads_transformers_5_fields():
    llama, notes = translate_config(hf_config("llama", **toy.FAMILY_CONFIGS["llama"]))
    assert llama["rope_theta"] == 500000.0 and llama["rope_scaling"]["type"] == "llama3"
    assert llama["rope_scaling"]["factor"] == 8.0 and "rope_parameters -> rope_scaling" in notes
    moe, _ = translate_config(hf_config("qwen3_moe", **toy.FAMILY_CONFIGS["qwen3_moe"]))
    assert moe["num_experts"] == 4
    gemma, _ = translate_config(hf_config("gemma3_text", **toy.FAMILY_CONFIGS["gemma3_text"]))
    assert gemma["rope_theta"] == 1e6 and gemma["rope_local_base_freq"] == 1e4
    assert gemma["rope_scaling"]["type"] == "linear" and gemma["sliding_window_pattern"] == 6
    wrapped, notes = translate_config({"model_type": "gemma3", "text_config": hf_config(
        "gemma3_text", **toy.FAMILY_CONFIGS["gemma3_text"])})
    assert wrapped["text_config"]["rope_local_base_freq"] == 1e4 and notes[0].startswith("text_config.")
    # mlx-lm's qwen3 reads rope_parameters itself: nothing to add
    assert translate_config({"model_type": "qwen3", "rope_parameters": {"rope_theta": 5.0}}) == ({}, [])


def test_rope_mlx_lm_cannot_build_is_one_error(tmp_path):
    with pytest.raises(GiftError, match=r"config.json: field 'rope_parameters.rope_type': 'yarn' is not implemented"):
        translate_config(hf_config("gemma2", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}))
    with pytest.raises(GiftError, match=r"field 'layer_types': .* has none"):
        translate_config(hf_config("gemma3_text", num_hidden_layers=3,
                                   layer_types=["full_attention", "sliding_attention", "full_attention"]))
    # qwen3_moe's ModelArgs has rope_scaling, but its attention builds plain nn.RoPE: refused at load
    base, instruct = toy.build_hf_pair(tmp_path, "qwen3_moe", rope_parameters={
        "rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 1024})
    with pytest.raises(GiftError, match=r"instruct/config.json: field 'rope_parameters.rope_type': 'llama3' is not "
                                        r"implemented by mlx-lm's qwen3_moe model"):
        load_model(instruct)



def test_rope_of_a_layer_type_no_layer_has_is_not_checked():
    """Gemma 3 with fewer layers than its pattern has only sliding layers: the full-attention RoPE (linear,
    factor 8) is used by no layer, so it is no reason to refuse the model."""
    from gift_mlx.families import rope_settings

    config = hf_config("gemma3_text", num_hidden_layers=2, layer_types=["sliding_attention"] * 2,
                       rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    assert [name for name, _ in rope_settings(config)] == ["rope_parameters.sliding_attention"]

# ---- wrapped and hybrid models ----

def test_add_lora_on_a_wrapped_hybrid_model_loads_in_mlx_lm(tmp_path):
    """Qwen3.5 (transformers' qwen3_5_text) loads as mlx-lm's qwen3_5, whose blocks sit under
    language_model.model.layers and alternate linear and full attention: the adapter names both kinds."""
    from mlx_lm.tuner.utils import load_adapters

    from gift_mlx.adapters import write_config, write_weights

    _, instruct = toy.build_hf_pair(tmp_path, "qwen3_5_text")
    model = load_model(instruct)[0]
    assert model.layers[0] is model.language_model.model.layers[0]
    config = add_lora(model, TrainConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0))
    keys = config["lora_parameters"]["keys"]
    assert "self_attn.q_proj" in keys and "linear_attn.in_proj_qkv" in keys and "mlp.down_proj" in keys
    model.update(_randomized(model.trainable_parameters()))  # lora_b starts at 0: give the adapter an effect
    (tmp_path / "a").mkdir()
    write_config(tmp_path / "a", config)
    write_weights(model, tmp_path / "a")
    plain = load_model(instruct)[0]
    tokens = mx.array([matrix.TOKENS])
    assert not mx.allclose(plain(tokens), model(tokens), atol=1e-3)
    reloaded = load_adapters(plain, str(tmp_path / "a"))
    assert mx.allclose(reloaded(tokens), model(tokens), atol=1e-5)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["num_layers"] == 2


def _randomized(params):
    from mlx.utils import tree_map

    return tree_map(lambda v: mx.random.normal(v.shape) * 0.1, params)


def test_per_expert_adapter_tensors_must_agree(tmp_path):
    """mlx-lm's LoRASwitchLinear tensors (experts, r, in) / (experts, out, r) are read; disagreeing ones refused."""
    from gift_mlx.adapters import write_config

    path = "model.layers.0.mlp.switch_mlp.up_proj"
    write_config(tmp_path, {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": {"rank": 4, "scale": 2.0}})
    mx.save_safetensors(str(tmp_path / "adapters.safetensors"),
                        {f"{path}.lora_a": mx.zeros((4, 4, 64)), f"{path}.lora_b": mx.zeros((4, 32, 4))})
    assert read_adapter(tmp_path).layers[path]["lora_b"].shape == (4, 32, 4)
    mx.save_safetensors(str(tmp_path / "adapters.safetensors"),
                        {f"{path}.lora_a": mx.zeros((4, 4, 64)), f"{path}.lora_b": mx.zeros((3, 32, 4))})
    with pytest.raises(GiftError, match=r"adapters.safetensors: model.layers.0.mlp.switch_mlp.up_proj: per-expert "
                                        r"lora_a \(4, 4, 64\) and lora_b \(3, 32, 4\) do not have rank 4"):
        read_adapter(tmp_path)


def test_moe_merge_into_a_quantized_instruct(tmp_path, data):
    """Per-expert layers quantized (QuantizedSwitchLinear): dequantized, merged, written as float (the adapted
    model's logits) or re-quantized (still a QuantizedSwitchLinear, loadable)."""
    import shutil

    import mlx.nn as nn
    from mlx_lm.utils import save_config, save_model

    from gift_mlx.merge import merge

    pair, adapter, _ = matrix.build("qwen3_moe", tmp_path / "moe", data)
    model, _, config = load_model(pair[1])
    nn.quantize(model, group_size=32, bits=4, class_predicate=lambda p, m: "switch_mlp." in p and hasattr(m, "to_quantized"))
    quantized = tmp_path / "instruct-q4"
    save_model(quantized, model)
    save_config({**config, "quantization": {"group_size": 32, "bits": 4, "mode": "affine"}}, quantized / "config.json")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(pair[1] / f, quantized / f)
    reference = load_model(quantized, adapter_path=str(adapter))[0]
    tokens = mx.array([matrix.TOKENS])
    for requantize in (False, True):
        out = tmp_path / f"merged-{requantize}"
        merge(str(quantized), str(adapter), str(out), requantize=requantize, log=lambda m: None)
        merged = load_model(out)[0]
        layer = type(merged.model.layers[0].mlp.switch_mlp.up_proj).__name__
        assert layer == ("QuantizedSwitchLinear" if requantize else "SwitchLinear")
        if not requantize:
            assert mx.abs(merged(tokens) - reference(tokens)).max().item() <= matrix.TOLERANCE


def test_pair_check_names_the_translated_fields(tmp_path):
    from gift_mlx.pair_check import pair_check, summary_text

    base, instruct = toy.build_hf_pair(tmp_path, "llama")
    text = summary_text(pair_check(base, instruct))
    assert ("note: config fields translated for mlx-lm: rope_parameters.rope_theta -> rope_theta, "
            "rope_parameters -> rope_scaling") in text
