"""Output formats of `gift merge` and `gift export-adapter`: model weights, configs and cards, PEFT adapters.

Weights are written in MLX or Hugging Face (transformers) layout; an adapter can be rewritten in PEFT's
layout. Each output carries a model card (README.md) and a machine-readable record (gift_export.json) of
where it came from. The folders themselves are staged and checked by outputs.py; adapters are read by
adapters.py.
"""

import datetime
import json
import re
import shutil
from pathlib import Path

import mlx.core as mx

from . import __version__
from .adapters import WEIGHTS, read_adapter, read_run_record
from .data import file_sha256
from .errors import GiftError
from .families import family, supported
from .config import check_value
from .outputs import RECORD, check_finite, output_folder, save_tensors, write_json, write_text
from .models import model_ref

QUANT_KEYS = ("quantization", "quantization_config")
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "*.py",
)


# ---- weights, configs, tokenizer ----

def write_weights(folder, weights, fmt="mlx", label=None, extras=None):
    """Save `weights` (the dict is emptied) as safetensors shards plus an index.

    With lazily loaded inputs, tensors are computed one at a time (so the float32 temporaries of a merged
    layer exist for one layer only) and each shard is written and released before the next: the peak
    memory is about one shard, not the whole model. `extras` maps a tensor name to arrays computed with it
    (a merged layer's measures), so that they share its computation.
    """
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    weights.clear()
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    index = {"metadata": {"total_size": 0}, "weight_map": {}}
    for i, name in enumerate(names):
        shard, shards[i] = shards[i], None
        for k, v in shard.items():
            mx.eval(v, *(extras or {}).get(k, ()))
        check_finite(shard, label or folder)  # a NaN or overflowed weight is never written
        save_tensors(Path(folder) / name, shard, metadata={"format": fmt}, check=False)
        index["metadata"]["total_size"] += sum(v.nbytes for v in shard.values())
        index["weight_map"].update(dict.fromkeys(shard, name))
        del shard
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    write_json(Path(folder) / "model.safetensors.index.json", index)


def check_scale(scale):
    """λ: finite and within ±1000 (a larger factor swamps the instruct weights: surely a typo)."""
    return check_value("--scale", scale, float, -1000, 1000)


def dtype_name(dtype):
    return next(name for name, d in DTYPES.items() if d == dtype)


def check_hf(config):
    if not family(config.get("model_type")).hf_class:
        raise GiftError(
            f"--format hf: model_type '{config.get('model_type')}' is not supported "
            f"(supported: {', '.join(supported('hf_class'))}); use --format mlx"
        )


def hf_config(config, dtype):
    """The instruct config for transformers: no MLX quantization keys, an architecture, the weights' dtype."""
    check_hf(config)
    c = {k: v for k, v in config.items() if k not in QUANT_KEYS}
    c.setdefault("architectures", [family(c["model_type"]).hf_class])
    c["torch_dtype"] = c["dtype"] = dtype  # transformers 4 reads torch_dtype, 5 reads dtype
    return c


def copy_tokenizer(src, dst, config):
    """The instruct model's tokenizer files verbatim (chat template included) and a generation config."""
    for pattern in TOKENIZER_FILES:
        for f in Path(src).glob(pattern):
            shutil.copy(f, dst)
    if not (Path(dst) / "generation_config.json").exists():
        keys = ("bos_token_id", "eos_token_id", "pad_token_id")
        write_json(Path(dst) / "generation_config.json", {k: config[k] for k in keys if config.get(k) is not None})


# ---- model card and record ----

def build_record(adapter, kind, fmt, **extra):
    """Provenance of an output: models, method, data hash, hyperparameters, eval results when known.

    Training facts come from the run record `gift train` leaves beside the adapter (gift_run.json).
    """
    run = read_run_record(adapter.path)
    cfg = adapter.config
    data = run.get("data") or {}
    adapter_file = adapter.path / WEIGHTS
    return {
        "gift_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kind": kind,
        "format": fmt,
        "base_model": cfg.get("base_model") or run.get("base_model"),
        "instruct_model": cfg.get("instruct_model") or run.get("instruct_model"),
        "method": cfg.get("method") or run.get("method"),
        "fine_tune_type": adapter.kind,
        "num_layers": cfg.get("num_layers"),
        "lora_parameters": cfg.get("lora_parameters"),
        **extra,
        "adapter": {"path": str(adapter.path.resolve()), "sha256": file_sha256(adapter_file)},
        "data_sha256": {split: d.get("sha256") for split, d in data.items() if isinstance(d, dict)} or None,
        "hyperparameters": run.get("config"),
        "final_metrics": run.get("final"),
        "eval": run.get("eval"),
    }


CARD = """---
base_model: {instruct}
library_name: {library}
pipeline_tag: text-generation
tags: [gift, {kind}, {library}]
---
# {name}

{what}

## Use

```{usage}```

## Provenance

| field | value |
|---|---|
{table}

The full machine-readable record is `{record}`.
"""


def write_card(folder, name, record, what, usage, library):
    fields = ("base_model", "instruct_model", "method", "fine_tune_type", "lora_parameters", "merge_scale",
              "update_relative_size", "dtype", "requantized", "data_sha256", "final_metrics", "eval")
    table = "\n".join(f"| {k} | `{json.dumps(record.get(k), default=str)}` |" for k in fields if k in record)
    card = CARD.format(instruct=record["instruct_model"], library=library, kind=record["fine_tune_type"],
                       name=name, what=what, usage=usage, table=table, record=RECORD)
    write_text(Path(folder) / "README.md", card)
    write_json(Path(folder) / RECORD, record)


# ---- Hugging Face Hub ----

def upload(folder, repo_id, log=print):
    """Upload a written output folder (model card included) to the Hub model repo `repo_id`, creating it if needed;
    return the repo's URL. The folder stays on disk whatever happens."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message=f"Upload {Path(folder).name} (gift-mlx {__version__})")
    except Exception as e:  # network, authentication, a bad name: the Hub's own message, on one line
        message = " ".join(str(e).split()) or type(e).__name__
        raise GiftError(f"--upload-repo {repo_id}: upload failed ({message}); the output is kept in {folder}")
    log(f"uploaded {folder} to {url}")
    return str(url)


# ---- PEFT ----

LAYER_PATH = re.compile(r"(?P<stack>.*\blayers)\.(?P<index>\d+)\.(?P<suffix>.+)")


def peft_targets(paths):
    """target_modules (+ layers_to_transform) that select exactly the adapted modules in PEFT."""
    parts = [LAYER_PATH.fullmatch(p) for p in paths]
    if all(parts):
        layers = sorted({int(m["index"]) for m in parts})
        suffixes = sorted({m["suffix"] for m in parts})
        if len(layers) * len(suffixes) == len(paths):  # every suffix in every layer: PEFT's own idiom
            return suffixes, layers
    return sorted(paths), None  # irregular: full module names, matched exactly


def peft_config(adapter, instruct, scale):
    targets, layers = peft_targets(adapter.layers)
    params = adapter.config["lora_parameters"]
    rank = int(params["rank"])
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": instruct,
        "r": rank,
        "lora_alpha": scale * adapter.scale * rank,  # PEFT scales B·A by lora_alpha / r
        "lora_dropout": params.get("dropout", 0.0),
        "target_modules": targets,
        "layers_to_transform": layers,
        "layers_pattern": "layers" if layers else None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def export_peft(adapter_path, out, instruct=None, scale=1.0, force=False):
    """Rewrite an mlx-lm LoRA adapter as a PEFT adapter folder for the instruct model; return its path.

    PEFT stores A as (r, in) and B as (out, r), the transposes of mlx-lm's, under `base_model.model.<module>`.
    """
    scale = check_scale(scale)
    adapter = read_adapter(adapter_path)
    if adapter.kind != "lora":
        raise GiftError(
            f"{adapter.path}: a DoRA adapter cannot be exported for PEFT: its update depends on the weights it "
            "was trained on, and PEFT would apply it to the instruct weights; use `gift merge --base` instead"
        )
    instruct = model_ref(instruct or adapter.config.get("instruct_model"))  # a local folder by absolute path
    tensors = {}
    for path, t in adapter.layers.items():
        tensors[f"base_model.model.{path}.lora_A.weight"] = t["lora_a"].T
        tensors[f"base_model.model.{path}.lora_B.weight"] = t["lora_b"].T
    with output_folder(out, [adapter.path], force) as tmp:
        save_tensors(tmp / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", peft_config(adapter, instruct, scale))
        record = build_record(adapter, "peft-adapter", "peft", instruct_model=instruct, merge_scale=scale)
        usage = (f"python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                 f"model = AutoModelForCausalLM.from_pretrained({instruct!r})\n"
                 f"model = PeftModel.from_pretrained(model, {str(out)!r}).merge_and_unload()\n")
        what = (f"A LoRA adapter in PEFT's layout, trained on `{record['base_model']}` with method "
                f"`{record['method']}` (GIFT transfer), to apply to the instruct model `{instruct}`.")
        write_card(tmp, Path(out).name, record, what, usage, "peft")
    return Path(out)


# ---- GGUF (llama.cpp, Ollama, LM Studio) ----
# Written with the `gguf` package, llama.cpp's own writer: its tensor-name map, vocab readers and quantizers.

GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
# llama.cpp names the pre-tokenizer (how text is split before BPE) by the regex the HF tokenizer splits with.
GGUF_PRE_TOKENIZERS = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+": "qwen2",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
    "|\\s+(?!\\S)|\\s+": "llama-bpe",
}


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


def check_gguf(config, tokenizer_dir, gguf_type):
    """Refuse, before any work, what cannot be written as GGUF; return the tokenizer's pre-tokenizer name."""
    if gguf_type not in GGUF_TYPES:
        raise GiftError(f"--gguf-type: '{gguf_type}' is not one of {', '.join(GGUF_TYPES)}")
    arch = config.get("model_type")
    if not family(arch).gguf_arch:
        raise GiftError(f"--format gguf: model_type '{arch}' is not supported (supported: "
                        f"{', '.join(supported('gguf_arch'))}); use --format hf and llama.cpp's convert_hf_to_gguf.py")
    if config.get("rope_scaling"):
        raise GiftError(f"--format gguf: rope_scaling {config['rope_scaling']} is not supported; use --format hf "
                        "and llama.cpp's convert_hf_to_gguf.py")
    # The tokenizer as transformers builds it (for some model types it replaces tokenizer.json's pre-tokenizer,
    # e.g. Qwen2's digit-by-digit split), so that llama.cpp splits text as the MLX model was given it.
    from .models import load_tokenizer

    path = Path(tokenizer_dir) / "tokenizer.json"
    backend = getattr(getattr(load_tokenizer(tokenizer_dir), "_tokenizer", None), "backend_tokenizer", None)
    if backend is None or not path.is_file():
        raise GiftError(f"{tokenizer_dir}: --format gguf needs a fast tokenizer with a tokenizer.json")
    tok = json.loads(backend.to_str())
    model, decoder = tok.get("model", {}), tok.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise GiftError(f"{path}: --format gguf supports byte-level BPE tokenizers (GPT-2 style vocab + merges); "
                        f"this one is a {model.get('type')} model with a {decoder.get('type')} decoder")
    return _gguf_pre_tokenizer(tok, path)


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


def _rope_permute(w, heads):
    """llama.cpp's LLAMA graph rotates interleaved pairs of q/k features, HF llama rotates the two halves of each
    head: reorder each head's rows from (half, pair) to (pair, half) order."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, weights, config, tokenizer_dir, gguf_type, pre_tokenizer, name):
    """Write a merged model (mlx-lm/HF tensor names, float arrays; the dict is emptied) as one GGUF file."""
    import gguf
    import numpy as np

    arch = getattr(gguf.MODEL_ARCH, family(config["model_type"]).gguf_arch)
    layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    w.add_context_length(config.get("max_position_embeddings", 4096))
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(config.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(config["vocab_size"])
    file_type = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}[gguf_type]
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))

    vocab = gguf.vocab.BpeVocab(Path(tokenizer_dir))
    tokens, _, types = zip(*vocab.all_tokens())
    if len(tokens) > config["vocab_size"]:
        raise GiftError(f"{tokenizer_dir}: the tokenizer has {len(tokens)} tokens, more than the model's "
                        f"vocab_size {config['vocab_size']}")
    pad = config["vocab_size"] - len(tokens)  # embedding rows beyond the tokenizer: unused tokens, as converters do
    w.add_tokenizer_model(vocab.tokenizer_model)
    w.add_tokenizer_pre(pre_tokenizer)
    w.add_token_list(list(tokens) + [f"[PAD{i}]".encode() for i in range(pad)])
    w.add_token_types(list(types) + [gguf.TokenType.UNUSED] * pad)
    special = gguf.SpecialVocab(Path(tokenizer_dir), load_merges=True, n_vocab=config["vocab_size"])
    if config.get("eos_token_id") is not None and "eos" not in special.special_token_ids:
        special.special_token_ids["eos"] = config["eos_token_id"]
    special.add_to_gguf(w, quiet=True)

    names = gguf.get_tensor_name_map(arch, layers)
    for key in list(weights):
        array = np.array(weights.pop(key).astype(mx.float32))
        if not np.isfinite(array).all():  # as write_weights: a NaN or overflowed weight is never written
            raise GiftError(f"{path.parent}: tensor {key} holds NaN or infinite values; nothing written")
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GiftError(f"--format gguf: no GGUF name for tensor {key}")
        if arch == gguf.MODEL_ARCH.LLAMA and key.endswith(("q_proj.weight", "k_proj.weight")):
            array = _rope_permute(array, heads if "q_proj" in key else kv_heads)
        qtype = _gguf_qtype(key, array, gguf_type)
        w.add_tensor(gguf_name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
