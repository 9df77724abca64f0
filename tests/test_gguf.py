"""`gift merge --format gguf`: one GGUF file that llama.cpp reads as the merged MLX model.

Always: the file read back with the `gguf` package's own reader has llama.cpp's metadata, the tokenizer
(GPT-2 style BPE vocab + merges, special tokens, chat template) and every tensor equal to the merged MLX
weights within the precision of its type. Where llama-cpp-python is installed (it builds llama.cpp from source,
~13 min on 2 cores, too long for CI): llama.cpp itself gives the MLX model's next-token logits.
"""

import re
import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten
from test_merge import make_adapter

from gift_mlx import export_gguf, toy
from gift_mlx.cli import main
from gift_mlx.families import family
from gift_mlx.merge import merge
from gift_mlx.models import load_model

gguf = pytest.importorskip("gguf")
TEXT = "What is 3+4? The answer is 7."
# max |logit difference| allowed per type (logits here are O(1); llama.cpp keeps its KV cache in f16)
LOGIT_TOL = {"f32": 5e-3, "f16": 1e-2, "bf16": 6e-2, "q8_0": 1.5e-1}
WEIGHT_TOL = {"f32": 1e-6, "f16": 2e-3, "bf16": 1.6e-2, "q8_0": 1.6e-2}  # relative to the tensor's max |value|


HF_FAMILIES = ["llama", "mistral", "qwen3", "gemma2", "gemma3_text", "granite", "olmo2", "smollm3", "qwen3_moe",
               "olmoe"]
# Llama 3.x RoPE that the test's few tokens feel: θ = 100 and scaling from 32 positions on, with weights large
# enough for sharp attention (measured: the MLX logits with and without the scaling differ by 0.9, vs 1e-2 allowed).
# SmolLM3 with a layer without RoPE. (toy.FAMILY_CONFIGS give Gemma and the MoE families the settings that
# llama.cpp's graphs hard-code.)
OVERRIDES = {
    "llama": {"rope_parameters": {**toy.FAMILY_CONFIGS["llama"]["rope_parameters"], "rope_theta": 100.0,
                                  "original_max_position_embeddings": 32}, "initializer_range": 0.08},
    "smollm3": {"num_hidden_layers": 4},
}


def quiet(*_):
    pass


@pytest.fixture(scope="module", params=["llama", "qwen2"] + [f"hf-{f}" for f in HF_FAMILIES])
def pair_and_lora(request, tmp_path_factory):
    """(family, instruct, adapter, MLX merged folder). hf-*: a pair saved by transformers 5 (its config read by
    mlx-lm through families.translate_config); the adapter on every linear layer (the MoE experts too)."""
    family = request.param.removeprefix("hf-")
    if request.param.startswith("hf-"):
        base, instruct = toy.build_hf_pair(tmp_path_factory.mktemp(request.param) / "pair", family,
                                           **OVERRIDES.get(family, {}))
    else:
        base, instruct = request.getfixturevalue(f"{family}_pair")
    lora = make_adapter(base, tmp_path_factory.mktemp("lora") / "a", instruct)
    merged = merge(str(instruct), str(lora), str(tmp_path_factory.mktemp("m") / "mlx"), log=quiet)
    return family, instruct, lora, merged


def field(reader, key):
    f = reader.fields[key]
    if len(f.types) == 1 and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode()
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [bytes(f.parts[i]).decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[i][0]
                for i in f.data]
    return f.parts[-1][0]


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0", "bf16"])
def test_gguf_tensors_and_metadata_match_the_merged_model(pair_and_lora, gguf_type, tmp_path):
    _, instruct, lora, merged = pair_and_lora
    out = merge(str(instruct), str(lora), str(tmp_path / "g"), fmt="gguf", gguf_type=gguf_type, log=quiet)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "gift_export.json", "model.gguf"]
    assert "llama-cli -m" in (out / "README.md").read_text()
    reader = gguf.GGUFReader(out / "model.gguf")
    config = json.loads((instruct / "config.json").read_text())
    model_arch = getattr(gguf.MODEL_ARCH, family(config["model_type"]).gguf_arch)
    arch = gguf.MODEL_ARCH_NAMES[model_arch]
    assert field(reader, "general.architecture") == arch
    assert field(reader, f"{arch}.block_count") == config["num_hidden_layers"]
    assert field(reader, f"{arch}.attention.head_count_kv") == config["num_key_value_heads"]
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == ("qwen2" if config["model_type"] == "qwen2" else "gpt-2")
    tokenizer = json.loads((instruct / "tokenizer.json").read_text())
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"]
    assert all(tokens[i] == t for t, i in tokenizer["model"]["vocab"].items())
    assert len(field(reader, "tokenizer.ggml.merges")) == len(tokenizer["model"]["merges"])
    assert field(reader, "tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert "<|im_start|>" in field(reader, "tokenizer.chat_template")

    weights = dict(tree_flatten(load_model(str(merged))[0].parameters()))
    names = gguf.get_tensor_name_map(model_arch, config["num_hidden_layers"])
    tensors = {t.name: t for t in reader.tensors}
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type") == "llama3":  # llama.cpp's divisors of each frequency, as mlx-lm's Llama3RoPE scales it
        from mlx_lm.models.rope_utils import Llama3RoPE

        dim, theta = config["head_dim"], rope["rope_theta"]
        want = np.array(Llama3RoPE(dim, base=theta, scaling_config=rope)._freqs) / theta ** (np.arange(0, dim, 2) / dim)
        assert not np.allclose(want, 1) and np.allclose(tensors.pop("rope_freqs.weight").data, want, rtol=1e-5)
        assert field(reader, "llama.rope.freq_base") == theta
    assert len(tensors) == len(weights)
    for key, w in weights.items():
        w = np.array(w.astype(mx.float32))
        if family(config["model_type"]).gguf_arch in export_gguf.ROPE_INTERLEAVED and key.endswith(
                ("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in key else config["num_key_value_heads"]
            w = export_gguf._rope_permute(w, heads)
        if family(config["model_type"]).gguf_arch in export_gguf.NORM_PLUS_ONE and key.endswith("norm.weight"):
            w = w + 1
        t = tensors[names.get_name(key.replace(".switch_mlp.", ".experts."), try_suffixes=(".weight", ".bias"))]
        expected_type = "F32" if w.ndim == 1 else gguf_type.upper()
        assert t.tensor_type.name == expected_type, key
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        assert np.abs(got - w).max() <= WEIGHT_TOL[gguf_type] * np.abs(w).max(), key


def test_llama_cpp_gives_the_mlx_logits(pair_and_lora, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")  # built from source; see the module docstring
    _, instruct, lora, merged = pair_and_lora
    model, tokenizer, _ = load_model(str(merged))
    ids = tokenizer.encode(TEXT)
    reference = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    for gguf_type in ("f32", "f16", "bf16", "q8_0"):
        out = merge(str(instruct), str(lora), str(tmp_path / gguf_type), fmt="gguf", gguf_type=gguf_type, log=quiet)
        llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), logits_all=True, n_ctx=64, verbose=False)
        assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids  # llama.cpp splits text as MLX does
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
        assert np.abs(got - reference).max() < LOGIT_TOL[gguf_type], gguf_type
        top2 = np.sort(reference, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * LOGIT_TOL[gguf_type]  # random toy weights: some near-ties
        assert (got.argmax(-1) == reference.argmax(-1))[clear].all()


def test_gguf_refusals(llama_pair, tmp_path):
    from gift_mlx.demo import WORLD

    base, instruct = llama_pair
    lora = make_adapter(base, tmp_path / "a", instruct)
    run = CliRunner().invoke
    r = run(main, ["merge", "--adapter-path", str(lora), "--out", str(tmp_path / "o"), "--gguf-type", "q8_0"])
    assert r.exit_code == 2 and "--gguf-type applies to --format gguf only" in r.output
    r = run(main, ["merge", "--adapter-path", str(lora), "--out", str(tmp_path / "o"), "--format", "gguf",
                   "--requantize"])
    assert r.exit_code == 2 and "--requantize" in r.output
    # the toy world's character-level tokenizer is not a byte-level BPE: refused before any work
    world_lora = make_adapter(WORLD / "base", tmp_path / "w", WORLD / "instruct")
    r = run(main, ["merge", "--adapter-path", str(world_lora), "--out", str(tmp_path / "o"), "--format", "gguf"])
    assert r.exit_code == 2 and "byte-level BPE" in r.output and "WordLevel" in r.output
    assert not (tmp_path / "o").exists()


def test_gguf_refuses_a_weight_that_overflows_f16(llama_pair, tmp_path):
    """Finite in float32, infinite once written as f16: refused after the conversion, nothing written."""
    base, instruct = llama_pair
    lora = make_adapter(base, tmp_path / "a", instruct, num_layers=1, keys=["self_attn.v_proj"])
    weights = mx.load(str(lora / "adapters.safetensors"))
    mx.save_safetensors(str(lora / "adapters.safetensors"),
                        {k: v * 1e7 if k.endswith("lora_b") else v for k, v in weights.items()})
    r = CliRunner().invoke(main, ["merge", "--adapter-path", str(lora), "--out", str(tmp_path / "o"), "--format",
                                  "gguf"])
    assert r.exit_code == 2 and "v_proj.weight overflows F16" in r.output and "nothing written" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()
    r = CliRunner().invoke(main, ["merge", "--adapter-path", str(lora), "--out", str(tmp_path / "o"), "--format",
                                  "gguf", "--gguf-type", "bf16"])
    assert r.exit_code == 0, r.output


BASE_CONFIG = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama", "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
     "RoPE type 'yarn'"),
    ({"model_type": "mistral", "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "RoPE type 'dynamic'"),
    ({"model_type": "qwen2", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3 RoPE scaling"),
    ({"model_type": "qwen3_moe", "norm_topk_prob": False}, "norm_topk_prob false: llama.cpp's qwen3moe graph"),
    ({"model_type": "qwen3_moe", "norm_topk_prob": True, "mlp_only_layers": [0]}, "dense layers"),
    ({"model_type": "olmoe"}, "num_key_value_heads 2 < num_attention_heads"),
    ({"model_type": "smollm3", "no_rope_layers": [1, 0, 1, 1]}, "no_rope_layers [1, 0, 1, 1]"),
    ({"model_type": "starcoder2"}, "model_type 'starcoder2' is not supported"),
    ({"model_type": "gemma2", "head_dim": 16, "query_pre_attn_scalar": 256}, "query_pre_attn_scalar 256 (head_dim 16)"),
    ({"model_type": "gemma3_text", "rope_parameters": {"full_attention": {"rope_theta": 1e6},
                                                       "sliding_attention": {"rope_theta": 5e4}}},
     "sliding-window layers' RoPE"),
], ids=lambda v: v["model_type"] if isinstance(v, dict) else "")
def test_gguf_refuses_what_llama_cpp_would_run_differently(config, message, tmp_path):
    with pytest.raises(export_gguf.GiftError, match=re.escape(message)):
        export_gguf.check_gguf({**BASE_CONFIG, **config}, tmp_path, "f16")


def test_gemma3_rope_is_the_global_layers():
    """transformers 5 writes one RoPE per attention kind; llama.cpp reads the global layers' (the local ones' is
    10⁴)."""
    config = {"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    theta, kind, scaling = export_gguf.rope_settings(config)
    assert (theta, kind, scaling["factor"]) == (1e6, "linear", 8.0)
    assert export_gguf.rope_settings({"model_type": "gemma3_text", "rope_theta": 1e6})[:2] == (1e6, "default")


def sentencepiece_tokenizer(space_prefix):
    """A SentencePiece-style BPE (byte fallback, ▁ for spaces, BOS added) as tokenizer.json, as Mistral v0.3
    (▁ put before the text) and Gemma (not) ship theirs."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    prefix = [normalizers.Prepend("▁")] if space_prefix else []
    tok.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(toy.corpus(), trainers.BpeTrainer(
        vocab_size=380, special_tokens=specials + [f"<0x{i:02X}>" for i in range(256)], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


@pytest.mark.parametrize("family_name, space_prefix", [("mistral", True), ("gemma2", False), ("phi3", True)])
def test_sentencepiece_tokenizer(family_name, space_prefix, tmp_path):
    pair = toy.build_hf_pair(tmp_path / "pair", family_name, **OVERRIDES.get(family_name, {}))
    tok = sentencepiece_tokenizer(space_prefix)
    for folder in pair:
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": toy.CHATML, "bos_token": "<s>",
            "eos_token": "<|im_end|>", "unk_token": "<unk>"}))
    base, instruct = pair
    lora = make_adapter(base, tmp_path / "a", instruct)
    merged = merge(str(instruct), str(lora), str(tmp_path / "m"), log=quiet)
    out = merge(str(instruct), str(lora), str(tmp_path / "g"), fmt="gguf", log=quiet)
    reader = gguf.GGUFReader(out / "model.gguf")
    assert field(reader, "tokenizer.ggml.model") == "llama" and field(reader, "tokenizer.ggml.pre") == "default"
    assert bool(field(reader, "tokenizer.ggml.add_space_prefix")) == space_prefix
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert all(tokens[i] == t for t, i in tok.get_vocab().items()) and "tokenizer.ggml.scores" in reader.fields
    llama_cpp = pytest.importorskip("llama_cpp")
    model, tokenizer, _ = load_model(str(merged))
    ids = tokenizer.encode(TEXT)
    assert ids[0] == 1  # BOS
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), logits_all=True, n_ctx=64, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=True, special=True) == ids
    llm.eval(ids)
    reference = np.array(model(mx.array([ids]))[0].astype(mx.float32))
    assert np.abs(np.array(llm.scores[: len(ids)]) - reference).max() < LOGIT_TOL["f16"]


def test_phi3_with_a_gpt2_style_vocabulary_is_refused(tmp_path):
    base, instruct = toy.build_hf_pair(tmp_path / "pair", "phi3")
    lora = make_adapter(base, tmp_path / "a", instruct)
    r = CliRunner().invoke(main, ["merge", "--instruct", str(instruct), "--adapter-path", str(lora), "--out",
                                  str(tmp_path / "o"), "--format", "gguf"])
    assert r.exit_code == 2 and "phi3 with a byte-level BPE tokenizer (Phi-4) is not supported" in r.output
    assert not (tmp_path / "o").exists()
