"""Exports of every model family gift trains: `gift merge --format hf` and `gift export-adapter` give the logits of
the MLX merged model (float32, ≤ 1e-4), on tiny pairs saved by transformers (toy.build_hf_pair); for the mixtures of
experts, an adapter `gift train` put on the experts too goes to transformers and llama.cpp, and PEFT refuses it.

Every export and the MLX merge are made from the instruct folder as transformers saved it: gift loads it through
families.translate_config, so mlx-lm and transformers compute the same model.
"""

import importlib.util
import json
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from test_merge import make_adapter

from gift_mlx import export_hf, toy
from gift_mlx.adapters import Adapter, read_adapter
from gift_mlx.errors import GiftError
from gift_mlx.merge import merge

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

spec = importlib.util.spec_from_file_location("family_matrix",
                                              Path(__file__).parents[1] / "scripts" / "family_matrix.py")
matrix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(matrix)
columns = sys.modules["family_exports"]  # the export columns, imported by the matrix from its sibling file

DENSE = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2", "smollm3", "granite"]
MOE = ["qwen3_moe", "olmoe"]
# Qwen3.5 text-only (mlx-lm wraps it under language_model): three linear-attention layers and one full
OVERRIDES = {"qwen3_5_text": dict(num_hidden_layers=4, layer_types=["linear_attention"] * 3 + ["full_attention"],
                                  linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                                  linear_value_head_dim=16)}
ATTENTION = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]


def quiet(*_):
    pass


@pytest.fixture(scope="module", params=DENSE + MOE + list(OVERRIDES))
def family_case(request, tmp_path_factory):
    """(family, (base, instruct), adapter, MLX merged folder, work folder) for one family."""
    family = request.param
    root = tmp_path_factory.mktemp(family)
    pair = toy.build_hf_pair(root / "pair", family, **OVERRIDES.get(family, {}))
    keys = ATTENTION if family in MOE else None  # adapters on the experts: moe_trained below
    adapter = make_adapter(pair[0], root / "adapter", pair[1], keys=keys, seed=3)
    merged = merge(str(pair[1]), str(adapter), str(root / "merged"), log=quiet)
    return family, pair, adapter, merged, root


def test_hf_export_gives_the_mlx_merged_logits(family_case):
    family, pair, adapter, merged, work = family_case
    assert columns.hf_diff(family, pair, adapter, merged, work) <= 1e-4
    out = work / f"{family}-hf"
    instruct = pair[1]
    # the instruct checkpoint itself: same tensors (names, dtypes), same config; only adapted tensors differ
    assert json.loads((out / "config.json").read_text()) == json.loads((instruct / "config.json").read_text())
    got, orig = mx.load(str(out / "model.safetensors")), mx.load(str(instruct / "model.safetensors"))
    assert set(got) == set(orig) and all(got[k].dtype == orig[k].dtype for k in got)
    changed = {k for k in got if not mx.array_equal(got[k], orig[k]).item()}
    lora = mx.load(str(adapter / "adapters.safetensors"))
    paths = {k.removesuffix(".lora_a").removeprefix("language_model.") for k in lora if k.endswith(".lora_a")}
    assert changed == {f"{p}.weight" for p in paths}  # (mlx-lm wraps Qwen3.5 under language_model)


def test_hf_export_of_an_mlx_folder(family_case, tmp_path):
    """An instruct folder written by MLX (here the merged model itself) goes through mlx-lm's names, which are
    transformers' for the dense families; refused where mlx-lm re-stores tensors (MoE experts stacked, Qwen3.5's
    norms stored +1)."""
    family, pair, adapter, merged, _ = family_case
    if family in MOE + list(OVERRIDES):
        with pytest.raises(GiftError, match="was written by MLX"):
            merge(str(merged), str(adapter), str(tmp_path / "hf"), fmt="hf", dtype="float32", log=quiet)
        return
    out = merge(str(merged), str(adapter), str(tmp_path / "hf"), fmt="hf", dtype="float32", log=quiet)
    twice = merge(str(merged), str(adapter), str(tmp_path / "mlx"), log=quiet)
    assert columns._diff(columns.torch_logits(columns.hf_model(out)), columns.mlx_logits(twice)) <= 1e-4


def test_peft_export_gives_the_mlx_merged_logits(family_case):
    family, pair, adapter, merged, work = family_case
    assert columns.peft_diff(family, pair, adapter, merged, work) <= 1e-4


def test_hf_export_splits_stacked_experts(tmp_path):
    """An update of mlx-lm's stacked switch_mlp (experts, out, in) lands on the checkpoint's per-expert tensors."""
    shapes = {f"model.layers.0.mlp.experts.{e}.up_proj.weight": (6, 4) for e in range(3)}
    tensors = {k: mx.random.normal(s).astype(mx.bfloat16) for k, s in shapes.items()}
    tensors["model.norm.weight"] = mx.ones((4,))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), tensors, metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    checkpoint = export_hf.read_checkpoint(tmp_path)
    path = "model.layers.0.mlp.switch_mlp.up_proj"
    assert export_hf.tensor_names("qwen3_moe", path, checkpoint) == [
        (f"model.layers.0.mlp.experts.{e}.up_proj.weight", e) for e in range(3)]
    update = mx.random.normal((3, 6, 4))
    experts = Adapter(tmp_path, {}, "lora", 1.0, {path: {"lora_a": mx.zeros((3, 2, 4)), "lora_b": mx.zeros((3, 6, 2))}})
    targets = export_hf.plan(experts, {"model_type": "qwen3_moe"}, checkpoint, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    sizes = export_hf.write_checkpoint(out, tmp_path, checkpoint, targets, lambda p: update)
    got = mx.load(str(out / "model.safetensors"))
    for e in range(3):
        name = f"model.layers.0.mlp.experts.{e}.up_proj.weight"
        want = (tensors[name].astype(mx.float32) + update[e]).astype(mx.bfloat16)
        assert got[name].dtype == mx.bfloat16 and mx.array_equal(got[name], want).item()
    assert mx.array_equal(got["model.norm.weight"], tensors["model.norm.weight"]).item()
    assert np.isclose(sizes[f"{path}.weight"][0].item(), mx.square(update).sum().item(), rtol=1e-5)
    two = Adapter(tmp_path, {}, "lora", 1.0, {path: {"lora_a": mx.zeros((2, 2, 4)), "lora_b": mx.zeros((2, 6, 2))}})
    with pytest.raises(GiftError, match="adapter for 2 matrices vs 3 experts in the checkpoint"):
        export_hf.plan(two, {"model_type": "qwen3_moe"}, checkpoint, tmp_path)


def test_qwen3_5_names_map_to_the_checkpoint():
    """mlx-lm wraps Qwen3.5 under language_model; the checkpoint is model.language_model.* (or model.* text-only)."""
    path = "language_model.model.layers.0.self_attn.q_proj"
    vl = {"model.language_model.layers.0.self_attn.q_proj.weight": ("model.safetensors", (8, 8))}
    text = {"model.layers.0.self_attn.q_proj.weight": ("model.safetensors", (8, 8))}
    assert export_hf.tensor_names("qwen3_5", path, vl) == [("model.language_model.layers.0.self_attn.q_proj.weight",
                                                            None)]
    assert export_hf.tensor_names("qwen3_5", path, text) == [("model.layers.0.self_attn.q_proj.weight", None)]


def test_peft_export_refuses_expert_adapters(tmp_path):
    from gift_mlx.export_peft import module_paths

    layers = {"model.layers.0.mlp.switch_mlp.up_proj": {"lora_a": mx.zeros((4, 2)), "lora_b": mx.zeros((2, 6))}}
    adapter = Adapter(tmp_path, {}, "lora", 1.0, layers)
    with pytest.raises(GiftError, match="MoE experts.*gift merge --format hf"):
        module_paths(adapter, None)


def test_hf_export_refuses_an_adapter_the_checkpoint_does_not_fit(llama_pair, tmp_path):
    adapter = make_adapter(llama_pair[0], tmp_path / "adapter", llama_pair[1], num_layers=1)
    other = toy.build_hf_pair(tmp_path / "other", "qwen2", hidden_size=32, num_attention_heads=2, head_dim=16)[1]
    fit = r"does not fit the checkpoint of .*: model\.layers\.1\..*adapter \(64, 64\) vs"
    with pytest.raises(GiftError, match=fit):
        merge(str(other), str(adapter), str(tmp_path / "o"), fmt="hf", log=quiet)
    assert not (tmp_path / "o").exists()


def test_hf_export_refuses_a_quantized_checkpoint(family_case, tmp_path):
    family, pair, adapter, _, _ = family_case
    instruct = tmp_path / "fp8"
    instruct.mkdir()
    for f in pair[1].iterdir():
        (instruct / f.name).symlink_to(f)
    (instruct / "config.json").unlink()
    config = json.loads((pair[1] / "config.json").read_text())
    (instruct / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(GiftError, match=r"--format hf: the checkpoint of .*fp8 is quantized \(fp8\)"):
        merge(str(instruct), str(adapter), str(tmp_path / "o"), fmt="hf", log=quiet)


def test_hf_export_keeps_the_shards(tmp_path):
    """A sharded checkpoint: the same shards and index; shards without an adapted tensor copied byte for byte;
    --dtype casts every float tensor and rewrites the index's size and the config's dtype."""
    from transformers import AutoModelForCausalLM

    pair = toy.build_hf_pair(tmp_path / "pair", "qwen2")
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(pair[1])).save_pretrained(sharded, max_shard_size="60KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((pair[1] / f).read_bytes())
    adapter = make_adapter(pair[0], tmp_path / "adapter", sharded, keys=["self_attn.v_proj"], num_layers=1)
    merged = merge(str(sharded), str(adapter), str(tmp_path / "merged"), log=quiet)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 2

    out = merge(str(sharded), str(adapter), str(tmp_path / "hf"), fmt="hf", log=quiet)
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards
    index = export_hf.INDEX
    assert (out / index).read_bytes() == (sharded / index).read_bytes()
    weight_map = json.loads((sharded / index).read_text())["weight_map"]
    untouched = set(shards) - {weight_map["model.layers.1.self_attn.v_proj.weight"]}
    assert all((out / s).read_bytes() == (sharded / s).read_bytes() for s in untouched)
    assert columns._diff(columns.torch_logits(columns.hf_model(out)), columns.mlx_logits(merged)) <= 1e-4

    half = merge(str(sharded), str(adapter), str(tmp_path / "bf16"), fmt="hf", dtype="bfloat16", log=quiet)
    config, index_json = json.loads((half / "config.json").read_text()), json.loads((half / index).read_text())
    assert config["dtype"] == "bfloat16"
    tensors = {k: v for s in shards for k, v in mx.load(str(half / s)).items()}
    assert {v.dtype for v in tensors.values()} == {mx.bfloat16}
    assert index_json["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
    assert columns._diff(columns.torch_logits(columns.hf_model(half)), columns.mlx_logits(merged)) < 0.05



def test_hf_export_refuses_a_shard_index_leaving_the_folder(tmp_path):
    """An index naming a shard outside the instruct folder would merge another model's weights: refused."""
    base, instruct = toy.build_hf_pair(tmp_path / "pair", "qwen2")
    adapter = make_adapter(base, tmp_path / "adapter", instruct, keys=["self_attn.v_proj"], num_layers=1)
    names = list(mx.load(str(instruct / "model.safetensors")))
    (instruct / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (instruct / export_hf.INDEX).write_text(json.dumps(
        {"metadata": {}, "weight_map": dict.fromkeys(names, "../elsewhere.safetensors")}))
    with pytest.raises(GiftError, match=r"model.safetensors.index.json: '../elsewhere.safetensors' lies outside"):
        merge(str(instruct), str(adapter), str(tmp_path / "o"), fmt="hf", log=quiet)
    assert not (tmp_path / "o").exists()

# ---- mixtures of experts: an adapter `gift train` put on the experts (mlx-lm's stacked switch_mlp) ----

EXPERT_KEYS = {"mlp.switch_mlp.gate_proj", "mlp.switch_mlp.up_proj", "mlp.switch_mlp.down_proj"}


@pytest.fixture(scope="module", params=MOE)
def moe_trained(request, tmp_path_factory):
    """(family, pair, adapter, MLX merged folder, work folder): `gift train` 2 steps with mlx-lm's default keys,
    which on an MoE block include the experts' stacked projections, then the MLX merge (family_matrix.build)."""
    root = tmp_path_factory.mktemp(f"{request.param}-trained")
    data = toy.write_task_data(root / "data", n_train=8, n_valid=4, n_test=4)
    return (request.param, *matrix.build(request.param, root, data), root)


def test_moe_adapter_trains_the_experts(moe_trained):
    family, _, adapter, _, _ = moe_trained
    experts = toy.FAMILY_CONFIGS[family]["num_experts"]
    layers = read_adapter(adapter).layers
    stacked = {p.split(".", 3)[-1] for p, t in layers.items() if t["lora_a"].ndim == 3}
    assert stacked == EXPERT_KEYS
    for path, t in layers.items():
        if t["lora_a"].ndim == 3:  # one (r, in) / (out, r) pair per expert, each moved by the 2 steps
            assert t["lora_a"].shape[0] == t["lora_b"].shape[0] == experts
            assert all(mx.any(t["lora_b"][e] != 0).item() for e in range(experts)), path


def test_moe_hf_export_splits_the_expert_update(moe_trained):
    """--format hf writes each expert's W_e + scale·B_e A_e into the checkpoint's per-expert tensors (transformers
    5.25 saves Qwen3-MoE / OLMoE experts one tensor per expert) and transformers computes the MLX merge's logits."""
    family, pair, adapter, merged, work = moe_trained
    assert columns.hf_diff(family, pair, adapter, merged, work) <= matrix.TOLERANCE
    got = mx.load(str(work / f"{family}-hf" / "model.safetensors"))
    orig = mx.load(str(pair[1] / "model.safetensors"))
    changed = {k for k in got if not mx.array_equal(got[k], orig[k]).item()}
    experts = toy.FAMILY_CONFIGS[family]["num_experts"]
    want = set()
    for path in read_adapter(adapter).layers:
        module = path.replace(".switch_mlp.", ".experts.{}.")
        want |= {f"{module.format(e)}.weight" for e in range(experts)} if "{}" in module else {f"{path}.weight"}
    assert changed == want and set(got) == set(orig)


def test_moe_gguf_export_runs_the_expert_update_in_llama_cpp(moe_trained):
    pytest.importorskip("llama_cpp")
    family, pair, adapter, merged, work = moe_trained
    assert columns.gguf_diff(family, pair, adapter, merged, work) <= matrix.GGUF_TOLERANCE


def test_moe_peft_export_of_expert_adapters_is_refused(moe_trained, tmp_path):
    from click.testing import CliRunner

    from gift_mlx.cli import main

    _, pair, adapter, _, _ = moe_trained
    r = CliRunner().invoke(main, ["export-adapter", "--adapter-path", str(adapter), "--instruct", str(pair[1]),
                                  "--format", "peft", "--out", str(tmp_path / "peft")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "adapts the MoE experts" in r.output and "use `gift merge --format hf`" in r.output
    assert not (tmp_path / "peft").exists()
