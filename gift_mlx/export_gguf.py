"""`gift merge --format gguf`: a merged model as one GGUF file for llama.cpp (Ollama, LM Studio).

Written with the `gguf` package, llama.cpp's own writer: its tensor-name map, vocab readers and quantizers.
What the file cannot say (an unknown RoPE scaling, a tokenizer llama.cpp has no name for) is refused before any
work, in one line.
"""

import json
import math
from pathlib import Path

import mlx.core as mx

from .errors import GiftError
from .families import family, supported

GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
# llama.cpp names the pre-tokenizer (how text is split before BPE) by the regex the HF tokenizer splits with.
GGUF_PRE_TOKENIZERS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+": "qwen2",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+": "llama-bpe",
}


SENTENCEPIECE = "default"  # llama.cpp's pre-tokenizer name for SentencePiece vocabularies (no split before BPE)


def _adds_space_prefix(path):
    """Whether a SentencePiece tokenizer.json puts ▁ before the text (Llama 2, Mistral) or not (Gemma): llama.cpp
    assumes it does unless told."""
    tok = json.loads(Path(path).read_text())
    steps = [tok.get("normalizer") or {}, tok.get("pre_tokenizer") or {}]
    steps += [s for step in list(steps) for s in step.get("normalizers", []) + step.get("pretokenizers", [])]
    return any((s.get("type") == "Prepend" and s.get("prepend") == "▁")
               or (s.get("type") == "Metaspace" and s.get("prepend_scheme", "always") != "never") for s in steps)


def _gguf_pre_tokenizer(tokenizer_json, where):
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer; GiftError for one it has no name for."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"  # GPT-2's own split
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    splits = [p for p in parts if p.get("type") == "Split"]
    if len(splits) == 1 and [p["type"] for p in parts] == ["Split", "ByteLevel"]:
        name = GGUF_PRE_TOKENIZERS.get(splits[0].get("pattern", {}).get("Regex"))
        if name:
            return name
    raise GiftError(f"{where}: --format gguf: this byte-level BPE tokenizer's pre-tokenizer is not one gift can name "
                    f"for llama.cpp (known: GPT-2, Qwen2, Llama 3); convert the merged --format hf model with "
                    "llama.cpp's convert_hf_to_gguf.py instead")


ROPE_TYPES = ("default", "linear", "llama3")  # what write_gguf says to llama.cpp; any other RoPE is refused


def rope_settings(config):
    """(θ, RoPE type, scaling fields) of a config in transformers 4 (rope_theta, rope_scaling) or 5
    (rope_parameters) layout; GiftError for a RoPE the GGUF file could not carry, which llama.cpp would silently
    run without."""
    params = config.get("rope_parameters")
    if family(config.get("model_type")).gguf_arch == "GEMMA3":  # the global layers' RoPE; the local ones' is fixed
        local = (params or {}).get("sliding_attention") or {"rope_theta": config.get("rope_local_base_freq", 1e4)}
        if local.get("rope_type", "default") != "default" or local.get("rope_theta") != 10000.0:
            raise GiftError(f"--format gguf: sliding-window layers' RoPE {local}: llama.cpp's gemma3 graph runs "
                            "them at θ = 10000 unscaled; use --format hf")
        params = (params or {}).get("full_attention", params)
    if params is not None and not (isinstance(params, dict) and "rope_theta" in params):
        raise GiftError(f"--format gguf: rope_parameters {params} (one RoPE per attention kind) is not supported; "
                        "use --format hf and llama.cpp's convert_hf_to_gguf.py")
    theta = params["rope_theta"] if params else config.get("rope_theta", 10000.0)
    scaling = params if params else config.get("rope_scaling")
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind not in ROPE_TYPES:
        raise GiftError(f"--format gguf: RoPE type '{kind}' ({scaling}) is not supported (supported: "
                        f"{', '.join(ROPE_TYPES)}); use --format hf and llama.cpp's convert_hf_to_gguf.py")
    if kind == "llama3" and family(config.get("model_type")).gguf_arch != "LLAMA":
        raise GiftError(f"--format gguf: llama3 RoPE scaling on model_type '{config.get('model_type')}' is not "
                        "supported (llama.cpp reads its factors for the llama architecture)")
    return float(theta), kind, scaling


def llama3_rope_factors(scaling, theta, head_dim):
    """Llama 3.x RoPE as llama.cpp's rope_freqs tensor: per frequency, the divisor of its angle. Long wavelengths
    are stretched by `factor`, short ones kept, the band between blended (as mlx-lm's Llama3RoPE)."""
    import numpy as np

    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * np.pi * theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = (old / wavelen - low) / (high - low)
    blend = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelen > old / low, factor, np.where(wavelen > old / high, blend, 1.0)).astype(np.float32)


def check_gguf(config, tokenizer_dir, gguf_type):
    """Refuse, before any work, what cannot be written as GGUF; return the tokenizer's pre-tokenizer name."""
    if gguf_type not in GGUF_TYPES:
        raise GiftError(f"--gguf-type: '{gguf_type}' is not one of {', '.join(GGUF_TYPES)}")
    arch = config.get("model_type")
    if not family(arch).gguf_arch:
        raise GiftError(f"--format gguf: model_type '{arch}' is not supported (supported: "
                        f"{', '.join(supported('gguf_arch'))}); use --format hf and llama.cpp's convert_hf_to_gguf.py")
    rope_settings(config)
    fixed = _hard_coded(family(arch).gguf_arch, config)
    if fixed:
        raise GiftError(f"--format gguf: {fixed}: llama.cpp's {family(arch).gguf_arch.lower()} graph assumes "
                        "otherwise; use --format hf")
    # The tokenizer as transformers builds it (for some model types it replaces tokenizer.json's pre-tokenizer,
    # e.g. Qwen2's digit-by-digit split), so that llama.cpp splits text as the MLX model was given it.
    from .models import load_tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    backend = getattr(getattr(load_tokenizer(tokenizer_dir), "_tokenizer", None), "backend_tokenizer", None)
    if backend is None or not path.is_file():
        raise GiftError(f"{tokenizer_dir}: --format gguf needs a fast tokenizer with a tokenizer.json")
    tok = json.loads(backend.to_str())
    model, decoder = tok.get("model", {}), tok.get("decoder") or {}
    if model.get("type") == "BPE" and model.get("byte_fallback") and decoder.get("type") == "Sequence":
        return SENTENCEPIECE  # SentencePiece BPE with byte fallback (Llama 2, Mistral v0.3, Gemma) as tokenizer.json
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise GiftError(f"{path}: --format gguf supports byte-level BPE tokenizers (GPT-2 style vocab + merges) "
                        f"and SentencePiece BPE with byte fallback; this one is a {model.get('type')} model with a "
                        f"{decoder.get('type')} decoder")
    pre = _gguf_pre_tokenizer(tok, path)
    if family(arch).gguf_arch == "PHI3":  # llama.cpp did not load a phi3 file with a GPT-2 style vocabulary
        raise GiftError(f"{path}: --format gguf: phi3 with a byte-level BPE tokenizer (Phi-4) is not supported "
                        "(only SentencePiece, as Phi-3); use --format hf and llama.cpp's convert_hf_to_gguf.py")
    return pre


def _gguf_qtype(name, array, gguf_type):
    """The GGML type of one tensor: 1-D tensors (norms, biases) stay float32, as llama.cpp's converter keeps them;
    q8_0 needs rows that are a multiple of its 32-value block (others fall back to f16)."""
    import gguf

    T = gguf.GGMLQuantizationType
    if array.ndim < 2 or gguf_type == "f32":
        return T.F32
    if gguf_type == "q8_0":
        return T.Q8_0 if array.shape[-1] % gguf.GGML_QUANT_SIZES[T.Q8_0][0] == 0 else T.F16
    return {"f16": T.F16, "bf16": T.BF16}[gguf_type]


def _finite(data, qtype):
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F16:
        return np.isfinite(data).all()
    return np.isfinite(gguf.quants.dequantize(data, qtype)).all()


def _rope_permute(w, heads):
    """llama.cpp's LLAMA graph rotates interleaved pairs of q/k features, HF llama rotates the two halves of each
    head: reorder each head's rows from (half, pair) to (pair, half) order."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# llama.cpp rotates interleaved pairs of q/k features for these architectures, HF the two halves of each head
ROPE_INTERLEAVED = {"LLAMA", "GRANITE", "SMOLLM3"}
NORM_PLUS_ONE = {"GEMMA2", "GEMMA3"}
# llama.cpp's Gemma graphs: one global layer in every 2 (Gemma 2) or 6 (Gemma 3), and the layer count of the 27B
# model, which scales scores by 1/√(hidden / heads) instead
GEMMA_LAYOUT = {"GEMMA2": (2, 46), "GEMMA3": (6, 62)}


def _hard_coded(arch, config):
    """The first setting that llama.cpp's graph for `arch` hard-codes otherwise (None when all agree): a GGUF
    file has no key for it, so llama.cpp would run a different model."""
    layers = config["num_hidden_layers"]
    if arch == "SMOLLM3":  # RoPE skipped in every 4th layer
        every_4th = [int((i + 1) % 4 != 0) for i in range(layers)]
        if config.get("no_rope_layers", every_4th) != every_4th:
            return f"no_rope_layers {config['no_rope_layers']}"
    if arch == "QWEN3MOE":  # top-k routing weights renormalized, every layer MoE
        if not config.get("norm_topk_prob", False):
            return "norm_topk_prob false"
        if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
            return f"dense layers (mlp_only_layers {config.get('mlp_only_layers')}, decoder_sparse_step " \
                   f"{config.get('decoder_sparse_step')})"
    if arch == "OLMOE":  # routing weights not renormalized; q/k norms over all heads (no grouped-query attention)
        if config.get("norm_topk_prob"):
            return "norm_topk_prob true"
        if config.get("num_key_value_heads", config["num_attention_heads"]) != config["num_attention_heads"]:
            return f"num_key_value_heads {config['num_key_value_heads']} < num_attention_heads"
    if arch in GEMMA_LAYOUT:  # local (sliding) layers then a global one, repeating; scores scaled by 1/√head_dim
        every, big = GEMMA_LAYOUT[arch]
        pattern = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(layers)]
        if config.get("layer_types", pattern) != pattern:
            return f"layer_types {config['layer_types']}"
        per_head = config["hidden_size"] // config["num_attention_heads"]
        head_dim = config.get("head_dim") or per_head
        scalar = config.get("query_pre_attn_scalar", head_dim)
        if scalar != head_dim and not (layers == big and scalar == per_head):
            return f"query_pre_attn_scalar {scalar} (head_dim {head_dim})"
    return None


def _arch_metadata(w, arch, config):
    """What llama.cpp reads beyond the common keys for some architectures."""
    if arch == "GRANITE":  # μP multipliers; llama.cpp divides the logits by its logit scale, as transformers does
        w.add_embedding_scale(config["embedding_multiplier"])
        w.add_residual_scale(config["residual_multiplier"])
        w.add_attention_scale(config["attention_multiplier"])
        w.add_logit_scale(config["logits_scaling"])
    if arch in GEMMA_LAYOUT:
        w.add_sliding_window(config["sliding_window"])
        for key, add in (("attn_logit_softcapping", w.add_attn_logit_softcapping),
                         ("final_logit_softcapping", w.add_final_logit_softcapping)):
            if config.get(key) is not None:
                add(config[key])
    experts = config.get("num_experts") or config.get("num_local_experts")
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(config["num_experts_per_tok"])
        if config.get("moe_intermediate_size"):
            w.add_expert_feed_forward_length(config["moe_intermediate_size"])


def write_gguf(path, weights, config, tokenizer_dir, gguf_type, pre_tokenizer, name):
    """Write a merged model (mlx-lm/HF tensor names, float arrays; the dict is emptied) as one GGUF file."""
    import gguf
    import numpy as np

    gguf_arch = family(config["model_type"]).gguf_arch
    arch = getattr(gguf.MODEL_ARCH, gguf_arch)
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    # Attention within a sliding window (Mistral v0.1) is full attention up to the window's length: llama.cpp's
    # llama graph has no window, so the file claims no longer a context than the window.
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    w.add_context_length(min(config.get("max_position_embeddings", 4096), window or math.inf))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    theta, rope_type, scaling = rope_settings(config)
    # Partial rotary (Phi-4-mini, StableLM): only the first dimensions of each head are rotated
    partial = (scaling or {}).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    w.add_rope_dimension_count(int(head_dim * partial))
    w.add_rope_freq_base(theta)
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(config["vocab_size"])
    _arch_metadata(w, family(config["model_type"]).gguf_arch, config)
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}[gguf_type]
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))

    spm = pre_tokenizer == SENTENCEPIECE
    vocab = (gguf.vocab.LlamaHfVocab if spm else gguf.vocab.BpeVocab)(Path(tokenizer_dir))
    tokens, scores, types = zip(*vocab.all_tokens())
    if len(tokens) > config["vocab_size"]:
        raise GiftError(f"{tokenizer_dir}: the tokenizer has {len(tokens)} tokens, more than the model's "
                        f"vocab_size {config['vocab_size']}")
    pad = config["vocab_size"] - len(tokens)  # embedding rows beyond the tokenizer: unused tokens, as converters do
    w.add_tokenizer_model(vocab.tokenizer_model)
    w.add_tokenizer_pre(pre_tokenizer)
    w.add_token_list(list(tokens) + [f"[PAD{i}]".encode() for i in range(pad)])
    w.add_token_types(list(types) + [gguf.TokenType.UNUSED] * pad)
    if spm:  # SentencePiece picks merges by score; BPE by its merges list
        w.add_token_scores(list(scores) + [-1000.0] * pad)
        w.add_add_space_prefix(_adds_space_prefix(Path(tokenizer_dir) / "tokenizer.json"))
    special = gguf.SpecialVocab(Path(tokenizer_dir), load_merges=not spm, n_vocab=config["vocab_size"])
    if config.get("eos_token_id") is not None and "eos" not in special.special_token_ids:
        special.special_token_ids["eos"] = config["eos_token_id"]
    special.add_to_gguf(w, quiet=True)

    names = gguf.get_tensor_name_map(arch, layers)
    if rope_type == "llama3":
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                     llama3_rope_factors(scaling, theta, head_dim))
    for key in list(weights):
        array = np.array(weights.pop(key).astype(mx.float32))
        if not np.isfinite(array).all():  # as write_weights: a NaN or overflowed weight is never written
            raise GiftError(f"{path.parent}: tensor {key} holds NaN or infinite values; nothing written")
        # mlx-lm's stacked experts (switch_mlp) are llama.cpp's stacked experts (HF name: experts.<proj>)
        gguf_name = names.get_name(key.replace(".switch_mlp.", ".experts."), try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GiftError(f"--format gguf: no GGUF name for tensor {key}")
        if gguf_arch in ROPE_INTERLEAVED and key.endswith(("q_proj.weight", "k_proj.weight")):
            array = _rope_permute(array, heads if "q_proj" in key else kv_heads)
        if gguf_arch in NORM_PLUS_ONE and key.endswith("norm.weight"):
            array = array + 1  # Gemma scales by (1 + w); llama.cpp's graph by w
        qtype = _gguf_qtype(key, array, gguf_type)
        with np.errstate(over="ignore"):  # an overflow is reported below, in one line
            data = gguf.quants.quantize(array, qtype)
        if qtype != gguf.GGMLQuantizationType.F32 and not _finite(data, qtype):  # f16 overflows past 65504
            raise GiftError(f"{path.parent}: tensor {key} overflows {qtype.name} (|value| up to "
                            f"{np.abs(array).max():.4g}); nothing written: use --gguf-type f32 or bf16")
        w.add_tensor(gguf_name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
