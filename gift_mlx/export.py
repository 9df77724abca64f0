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
from .models import model_ref
from .outputs import RECORD, output_folder, write_json

QUANT_KEYS = ("quantization", "quantization_config")
DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
# Architectures whose mlx-lm tensor names are transformers' names (mlx-lm only drops rotary inv_freq and
# a tied lm_head, which transformers does not store either). llama and qwen2 are checked by the tests.
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "*.py",
)


# ---- weights, configs, tokenizer ----

def write_weights(folder, weights, fmt="mlx"):
    """Save `weights` (the dict is emptied) as safetensors shards plus an index.

    With lazily loaded inputs, tensors are computed one at a time (so the float32 temporaries of a merged
    layer exist for one layer only) and each shard is written and released before the next: the peak
    memory is about one shard, not the whole model.
    """
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    weights.clear()
    n = len(shards)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    index = {"metadata": {"total_size": 0}, "weight_map": {}}
    for i, name in enumerate(names):
        shard, shards[i] = shards[i], None
        for v in shard.values():
            mx.eval(v)
        mx.save_safetensors(str(Path(folder) / name), shard, metadata={"format": fmt})
        index["metadata"]["total_size"] += sum(v.nbytes for v in shard.values())
        index["weight_map"].update(dict.fromkeys(shard, name))
        del shard
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    write_json(Path(folder) / "model.safetensors.index.json", index)


def dtype_name(dtype):
    return next(name for name, d in DTYPES.items() if d == dtype)


def check_hf(config):
    if config.get("model_type") not in HF_ARCHITECTURES:
        raise GiftError(
            f"--format hf: model_type '{config.get('model_type')}' is not supported "
            f"(supported: {', '.join(HF_ARCHITECTURES)}); use --format mlx"
        )


def hf_config(config, dtype):
    """The instruct config for transformers: no MLX quantization keys, an architecture, the weights' dtype."""
    check_hf(config)
    c = {k: v for k, v in config.items() if k not in QUANT_KEYS}
    c.setdefault("architectures", [HF_ARCHITECTURES[c["model_type"]]])
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
              "dtype", "requantized", "data_sha256", "final_metrics", "eval")
    table = "\n".join(f"| {k} | `{json.dumps(record.get(k), default=str)}` |" for k in fields if k in record)
    card = CARD.format(instruct=record["instruct_model"], library=library, kind=record["fine_tune_type"],
                       name=name, what=what, usage=usage, table=table, record=RECORD)
    (Path(folder) / "README.md").write_text(card)
    write_json(Path(folder) / RECORD, record)


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
        mx.save_safetensors(str(tmp / "adapter_model.safetensors"), tensors, metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", peft_config(adapter, instruct, scale))
        record = build_record(adapter, "peft-adapter", "peft", instruct_model=instruct, merge_scale=scale)
        usage = (f"python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                 f"model = AutoModelForCausalLM.from_pretrained({instruct!r})\n"
                 f"model = PeftModel.from_pretrained(model, {str(out)!r}).merge_and_unload()\n")
        what = (f"A LoRA adapter in PEFT's layout, trained on `{record['base_model']}` with method "
                f"`{record['method']}` (GIFT transfer), to apply to the instruct model `{instruct}`.")
        write_card(tmp, Path(out).name, record, what, usage, "peft")
    return Path(out)
