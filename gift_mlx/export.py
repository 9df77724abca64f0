"""What every output of `gift merge` and `gift export-adapter` shares: weights written from MLX, configs, the
tokenizer copy, the model card (README.md) and record (gift_export.json), the Hub upload.

One module per format uses them: export_hf.py (the instruct checkpoint, merged tensor by tensor), export_gguf.py
(llama.cpp), export_peft.py (PEFT adapters); merge.py writes MLX folders with `write_weights`. The folders
themselves are staged and checked by outputs.py; adapters are read by adapters.py.
"""

import datetime
import json
import shutil
from pathlib import Path

import mlx.core as mx

from . import __version__
from .adapters import WEIGHTS, read_run_record
from .data import file_sha256
from .errors import GiftError
from .families import family, supported
from .config import check_value
from .outputs import RECORD, atomic_write, check_finite, save_tensors, write_json, write_text

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


def check_hf(config, where):
    """An instruct folder written by MLX reaches transformers through mlx-lm's tensor names and layout, which are
    transformers' own only for the families whose registry row names an hf_class."""
    if not family(config.get("model_type")).hf_class:
        raise GiftError(
            f"--format hf: {where} was written by MLX, and for model_type '{config.get('model_type')}' mlx-lm's "
            f"tensors are not transformers' (MLX folders of {', '.join(supported('hf_class'))} only); merge into "
            "the model's own Hugging Face checkpoint (--instruct), or use --format mlx"
        )


def hf_config(config, dtype):
    """The instruct config for transformers: no MLX quantization keys, an architecture, the weights' dtype."""
    c = {k: v for k, v in config.items() if k not in QUANT_KEYS}
    c.setdefault("architectures", [family(c["model_type"]).hf_class])
    c["torch_dtype"] = c["dtype"] = dtype  # transformers 4 reads torch_dtype, 5 reads dtype
    return c


def copy_file(src, dst):
    """src's bytes to dst, atomically and in chunks; a failed read names src, a failed write dst (shutil's own
    copy names the source when the disk is full)."""
    try:
        source = open(src, "rb")
    except OSError as e:
        raise GiftError(f"{src}: cannot read ({e.strerror})") from None

    def copy(tmp):
        with open(tmp, "wb") as out:
            try:
                shutil.copyfileobj(source, out, 1 << 24)
            except OSError as e:  # without the source's name, so that the error names dst
                raise OSError(e.errno, e.strerror) from None

    with source:
        atomic_write(dst, copy)


def _inside(path, folder):
    """Whether `path` resolves inside `folder`, or inside the Hub cache folder of a downloaded snapshot
    (.../models--org--name/snapshots/<revision>/ links its files to ../../blobs/)."""
    folder = Path(folder).resolve()
    roots = [folder, folder.parent.parent] if folder.parent.name == "snapshots" else [folder]
    return any(Path(path).resolve().is_relative_to(root) for root in roots)


def copy_tokenizer(src, dst, config):
    """The instruct model's tokenizer files verbatim (chat template included) and a generation config.

    A file that links outside the instruct folder is refused: it is not the model's, and the merged folder
    (and an --upload-repo) would publish whatever it points at."""
    files = [f for pattern in TOKENIZER_FILES for f in sorted(Path(src).glob(pattern)) if f.is_file()]
    for f in files:
        if not _inside(f, src):
            raise GiftError(f"{f}: links outside the instruct folder (to {f.resolve()}); not copying it into the "
                            "merged model: copy the file into the folder if it is the model's")
    for f in files:
        copy_file(f, Path(dst) / f.name)
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
