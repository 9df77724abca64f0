"""The mlx-lm adapter folder: adapter_config.json + adapters.safetensors (+ gift_run.json): read, check, write.

`gift train` writes it, `gift merge` and `gift export-adapter` read it. The format is mlx-lm's own, so
`mlx_lm.generate --adapter-path` and `mlx_lm.fuse` read gift's adapters too.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .errors import GiftError
from .outputs import write_json

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"
RUN_RECORD = "gift_run.json"  # written by `gift train` beside the adapter
LEAVES = ("lora_a", "lora_b", "m")


@dataclass
class Adapter:
    path: Path
    config: dict
    kind: str  # lora | dora
    scale: float  # mlx-lm's LoRA scale (alpha / rank)
    layers: dict  # module path -> {"lora_a": (in, r), "lora_b": (r, out), "m": (out,) for DoRA}


def read_adapter(path):
    """Read and check an mlx-lm adapter folder (adapter_config.json + adapters.safetensors)."""
    folder = Path(path)
    cfg_file, weights_file = folder / CONFIG, folder / WEIGHTS
    if not (cfg_file.is_file() and weights_file.is_file()):
        raise GiftError(f"{folder}: not an adapter folder (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads(cfg_file.read_text())
        weights = mx.load(str(weights_file))
    except (OSError, ValueError, RuntimeError) as e:
        raise GiftError(f"{folder}: cannot read adapter ({str(e).splitlines()[0]})")
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise GiftError(f"{cfg_file}: fine_tune_type '{kind}' cannot be merged (only lora and dora)")
    params = config.get("lora_parameters") or {}
    if "rank" not in params or "scale" not in params:
        raise GiftError(f"{cfg_file}: lora_parameters needs 'rank' and 'scale'")
    layers = {}
    for name, w in weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in LEAVES:
            raise GiftError(f"{weights_file}: tensor {name} is not a LoRA/DoRA tensor")
        layers.setdefault(module, {})[leaf] = w
    _check_layers(layers, kind, int(params["rank"]), weights_file)
    return Adapter(folder, config, kind, float(params["scale"]), layers)


def _check_layers(layers, kind, rank, weights_file):
    needed = {"lora_a", "lora_b"} | ({"m"} if kind == "dora" else set())
    if not layers:
        raise GiftError(f"{weights_file}: holds no adapter tensors")
    for module, t in layers.items():
        if set(t) != needed:
            raise GiftError(f"{weights_file}: {module} has {sorted(t)}, expected {sorted(needed)}")
        if t["lora_a"].ndim != 2 or t["lora_a"].shape[1] != rank or t["lora_b"].shape[0] != rank:
            raise GiftError(f"{weights_file}: {module}: lora_a {tuple(t['lora_a'].shape)} and lora_b "
                            f"{tuple(t['lora_b'].shape)} do not have rank {rank}")


def read_run_record(adapter_path):
    """The run record `gift train` left beside the adapter ({} when there is none)."""
    path = Path(adapter_path) / RUN_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise GiftError(f"{path}: cannot read run record ({e})")


def write_config(folder, config):
    """adapter_config.json, atomically."""
    write_json(Path(folder) / CONFIG, config)


def write_weights(model, folder):
    """adapters.safetensors: the model's trainable (adapter) parameters, atomically."""
    path = Path(folder) / WEIGHTS
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())))
    os.replace(tmp, path)


def write_run_record(folder, record):
    """gift_run.json, atomically."""
    write_json(Path(folder) / RUN_RECORD, record)
