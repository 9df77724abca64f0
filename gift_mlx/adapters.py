"""The mlx-lm adapter folder: adapter_config.json + adapters.safetensors (+ gift_run.json): read, check, write.

`gift train` writes it, `gift merge` and `gift export-adapter` read it. The format is mlx-lm's own, so
`mlx_lm.generate --adapter-path` and `mlx_lm.fuse` read gift's adapters too.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .data import file_sha256
from .errors import GiftError
from .outputs import check_finite, save_tensors, write_json

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
    # (per-expert layers of a mixture of experts: "lora_a": (experts, r, in), "lora_b": (experts, out, r))


def read_adapter(path):
    """Read and check an mlx-lm adapter folder (adapter_config.json + adapters.safetensors)."""
    folder = Path(path)
    cfg_file, weights_file = folder / CONFIG, folder / WEIGHTS
    if not (cfg_file.is_file() and weights_file.is_file()):
        raise GiftError(f"{folder}: not an adapter folder (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads(cfg_file.read_text())
        weights = mx.load(str(weights_file))
    except (OSError, ValueError, RuntimeError, RecursionError) as e:
        raise GiftError(f"{folder}: cannot read adapter ({str(e).splitlines()[0]})")
    kind, rank, scale = _check_config(config, cfg_file)
    layers = {}
    for name, w in weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in LEAVES:
            raise GiftError(f"{weights_file}: tensor {name} is not a LoRA/DoRA tensor")
        layers.setdefault(module, {})[leaf] = w
    _check_layers(layers, kind, rank, weights_file)
    check_finite(weights, weights_file)
    return Adapter(folder, config, kind, scale, layers)


def _check_config(config, cfg_file):
    """(kind, rank, scale) of adapter_config.json, every field gift reads checked for its type."""
    if not isinstance(config, dict):
        raise GiftError(f"{cfg_file}: expected a JSON object, got {type(config).__name__}")
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise GiftError(f"{cfg_file}: fine_tune_type '{kind}' cannot be merged (only lora and dora)")
    for key in ("base_model", "instruct_model", "model", "method"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise GiftError(f"{cfg_file}: field '{key}' must be a string, got {type(config[key]).__name__}")
    if config.get("num_layers") is not None and (isinstance(config["num_layers"], bool)
                                                 or not isinstance(config["num_layers"], int)):
        raise GiftError(f"{cfg_file}: field 'num_layers' must be an integer, got {config['num_layers']!r}")
    params = config.get("lora_parameters") or {}
    if not isinstance(params, dict):
        raise GiftError(f"{cfg_file}: field 'lora_parameters' must be an object, got {type(params).__name__}")
    if "rank" not in params or "scale" not in params:
        raise GiftError(f"{cfg_file}: lora_parameters needs 'rank' and 'scale'")
    rank, scale = params["rank"], params["scale"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise GiftError(f"{cfg_file}: field 'lora_parameters.rank' must be a positive integer, got {rank!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise GiftError(f"{cfg_file}: field 'lora_parameters.scale' must be a finite number, got {scale!r}")
    keys = params.get("keys")
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        raise GiftError(f"{cfg_file}: field 'lora_parameters.keys' must be a list of strings, got {keys!r}")
    return kind, rank, float(scale)


def _check_layers(layers, kind, rank, weights_file):
    needed = {"lora_a", "lora_b"} | ({"m"} if kind == "dora" else set())
    if not layers:
        raise GiftError(f"{weights_file}: holds no adapter tensors")
    for module, t in layers.items():
        if set(t) != needed:
            raise GiftError(f"{weights_file}: {module} has {sorted(t)}, expected {sorted(needed)}")
        if t["lora_a"].ndim == 3:
            _check_experts(module, t, kind, rank, weights_file)
            continue
        if t["lora_a"].ndim != 2 or t["lora_a"].shape[1] != rank or t["lora_b"].shape[0] != rank:
            raise GiftError(f"{weights_file}: {module}: lora_a {tuple(t['lora_a'].shape)} and lora_b "
                            f"{tuple(t['lora_b'].shape)} do not have rank {rank}")


def _check_experts(module, t, kind, rank, weights_file):
    """A mixture-of-experts layer (mlx-lm's LoRASwitchLinear): one LoRA per expert, lora_a (experts, r, in)
    and lora_b (experts, out, r); mlx-lm has no DoRA for these layers."""
    a, b = t["lora_a"].shape, t["lora_b"].shape
    if kind != "lora":
        raise GiftError(f"{weights_file}: {module}: per-expert tensors in a {kind} adapter (only LoRA has them)")
    if len(b) != 3 or a[0] != b[0] or a[1] != rank or b[2] != rank:
        raise GiftError(f"{weights_file}: {module}: per-expert lora_a {tuple(a)} and lora_b {tuple(b)} do not "
                        f"have rank {rank} for the same number of experts")


def read_run_record(adapter_path):
    """The run record `gift train` left beside the adapter ({} when there is none)."""
    path = Path(adapter_path) / RUN_RECORD
    try:
        record = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError, RecursionError) as e:
        raise GiftError(f"{path}: cannot read run record ({e})")
    if not isinstance(record, dict):
        raise GiftError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def run_status(adapter_path):
    """Whether `gift train` finished the adapter in `adapter_path`: "complete" (the final adapter was written
    and verified, and adapters.safetensors is still that file), "running" (a run in progress, or one killed),
    "interrupted" (stopped by Ctrl-C, SIGTERM or an error; --resume continues it), "damaged" (the record says
    complete but the adapter file is missing or not the one written), or None when there is no run record
    (an adapter gift did not train). A record from before statuses existed was written only on completion."""
    record = read_run_record(adapter_path)
    if not record:
        return None
    status = record.get("status", "complete")
    if status == "complete" and record.get("adapter_sha256"):
        weights = Path(adapter_path) / WEIGHTS
        try:
            same = file_sha256(weights) == record["adapter_sha256"]
        except OSError:
            same = False
        return "complete" if same else "damaged"
    return status if isinstance(status, str) else "damaged"


def write_config(folder, config):
    """adapter_config.json, atomically."""
    write_json(Path(folder) / CONFIG, config)


def write_weights(model, folder):
    """adapters.safetensors: the model's trainable (adapter) parameters, atomically."""
    save_tensors(Path(folder) / WEIGHTS, dict(tree_flatten(model.trainable_parameters())))


def write_run_record(folder, record):
    """gift_run.json, atomically."""
    write_json(Path(folder) / RUN_RECORD, record)
