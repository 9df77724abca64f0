"""The mlx-lm adapter folder: adapter_config.json + adapters.safetensors (+ gift_run.json): read, check, write.

`gift train` writes it, `gift merge` and `gift export-adapter` read it. The format is mlx-lm's own, so
`mlx_lm.generate --adapter-path` and `mlx_lm.fuse` read gift's adapters too.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .data import file_sha256, reject_constant
from .errors import GiftError
from .outputs import LOCK, check_finite, save_tensors, write_json

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"
RUN_RECORD = "gift_run.json"  # written by `gift train` beside the adapter
LEAVES = ("lora_a", "lora_b", "m")
MAX_SCALE = 1000  # of lora_parameters.scale (alpha / rank; mlx-lm's default is 20)
LAYER_PATH = re.compile(r"(?P<stack>.*\blayers)\.(?P<index>\d+)\.(?P<suffix>.+)")  # a module of block N


@dataclass
class Adapter:
    path: Path
    config: dict
    kind: str  # lora | dora
    scale: float  # mlx-lm's LoRA scale (alpha / rank)
    layers: dict  # module path -> {"lora_a": (in, r), "lora_b": (r, out), "m": (out,) for DoRA}
    # (per-expert layers of a mixture of experts: "lora_a": (experts, r, in), "lora_b": (experts, out, r))


def read_adapter(path, allow_unfinished=False, log=print):
    """Read and check an mlx-lm adapter folder (adapter_config.json + adapters.safetensors): the one check
    `gift merge` and `gift export-adapter` share. An unfinished training run's adapter is refused unless
    `allow_unfinished` (then a warning is logged)."""
    folder = Path(path)
    cfg_file, weights_file = folder / CONFIG, folder / WEIGHTS
    if not (cfg_file.is_file() and weights_file.is_file()):
        raise GiftError(f"{folder}: not an adapter folder (needs {CONFIG} and {WEIGHTS})")
    try:
        config = json.loads(cfg_file.read_text(), parse_constant=reject_constant)
        weights = mx.load(str(weights_file))
    except (OSError, ValueError, RuntimeError, RecursionError, OverflowError) as e:
        raise GiftError(f"{folder}: cannot read adapter ({str(e).splitlines()[0]})")
    kind, rank, scale = _check_config(config, cfg_file)
    layers = {}
    for name, w in weights.items():
        module, _, leaf = name.rpartition(".")
        if leaf not in LEAVES:
            raise GiftError(f"{weights_file}: tensor {name} is not a LoRA/DoRA tensor")
        layers.setdefault(module, {})[leaf] = w
    _check_layers(layers, kind, rank, weights_file)
    _check_targets(layers, config, cfg_file)
    check_finite(weights, weights_file)
    check_finished(folder, allow_unfinished, log)
    return Adapter(folder, config, kind, scale, layers)


def _check_config(config, cfg_file):
    """(kind, rank, scale) of adapter_config.json, every field gift (and PEFT, for an export) reads checked for
    its type and range."""
    if not isinstance(config, dict):
        raise GiftError(f"{cfg_file}: expected a JSON object, got {type(config).__name__}")
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise GiftError(f"{cfg_file}: fine_tune_type '{kind}' cannot be merged (only lora and dora)")
    for key in ("base_model", "instruct_model", "model", "method"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise GiftError(f"{cfg_file}: field '{key}' must be a string, got {type(config[key]).__name__}")
    layers = config.get("num_layers")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers == 0 or layers < -1):
        raise GiftError(f"{cfg_file}: field 'num_layers' must be -1 (all blocks) or a positive integer, got {layers!r}")
    params = config.get("lora_parameters") or {}
    if not isinstance(params, dict):
        raise GiftError(f"{cfg_file}: field 'lora_parameters' must be an object, got {type(params).__name__}")
    if "rank" not in params or "scale" not in params:
        raise GiftError(f"{cfg_file}: lora_parameters needs 'rank' and 'scale'")
    rank, scale, dropout = params["rank"], params["scale"], params.get("dropout", 0.0)
    if not _is_number(rank, int) or rank < 1:
        raise GiftError(f"{cfg_file}: field 'lora_parameters.rank' must be a positive integer, got {rank!r}")
    if not _is_number(scale):
        raise GiftError(f"{cfg_file}: field 'lora_parameters.scale' must be a finite number, got {scale!r}")
    if not 0 < scale <= MAX_SCALE:  # mlx-lm adds scale·B·A: a negative one reverses the update, a huge one swamps W
        raise GiftError(f"{cfg_file}: field 'lora_parameters.scale' must be positive and at most {MAX_SCALE} "
                        f"(alpha / rank), got {scale!r}")
    if not _is_number(dropout) or not 0 <= dropout < 1:
        raise GiftError(f"{cfg_file}: field 'lora_parameters.dropout' must be a number in [0, 1), got {dropout!r}")
    keys = params.get("keys")
    if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
        raise GiftError(f"{cfg_file}: field 'lora_parameters.keys' must be a list of strings, got {keys!r}")
    return kind, rank, float(scale)


def _is_number(value, kind=(int, float)):
    return not isinstance(value, bool) and isinstance(value, kind) and math.isfinite(value)


def _check_layers(layers, kind, rank, weights_file):
    """Every adapted module holds float lora_a and lora_b (and DoRA's m) of the configured rank."""
    needed = {"lora_a", "lora_b"} | ({"m"} if kind == "dora" else set())
    if not layers:
        raise GiftError(f"{weights_file}: holds no adapter tensors")
    for module, t in layers.items():
        if set(t) != needed:
            raise GiftError(f"{weights_file}: {module} has {sorted(t)}, expected {sorted(needed)}")
        for leaf, w in t.items():
            if not mx.issubdtype(w.dtype, mx.floating):  # an integer update is no trained adapter
                raise GiftError(f"{weights_file}: {module}.{leaf} holds {str(w.dtype).split('.')[-1]} values; "
                                "adapter tensors are floating point")
        if t["lora_a"].ndim == 3:  # a mixture of experts' per-expert tensors
            _check_experts(module, t, kind, rank, weights_file)
        else:
            _check_linear(module, t, rank, weights_file)


def _check_linear(module, t, rank, weights_file):
    """A linear layer's update (mlx-lm's LoRALinear / DoRALinear): lora_a (in, r), lora_b (r, out), m (out,)."""
    a, b = t["lora_a"].shape, t["lora_b"].shape
    if len(a) != 2 or len(b) != 2 or a[1] != rank or b[0] != rank:
        raise GiftError(f"{weights_file}: {module}: lora_a {tuple(a)} and lora_b {tuple(b)} are not "
                        f"(in, {rank}) and ({rank}, out) matrices of rank {rank}")
    if "m" in t and tuple(t["m"].shape) != (b[1],):
        raise GiftError(f"{weights_file}: {module}: m {tuple(t['m'].shape)} is not one magnitude per output "
                        f"row ({b[1]},)")


def _check_targets(layers, config, cfg_file):
    """The tensors adapt what the config says (mlx-lm's load_adapters rebuilds exactly those layers): modules
    of the blocks (…layers.N.key), keys among lora_parameters.keys, in at most num_layers blocks."""
    found = {module: LAYER_PATH.fullmatch(module) for module in layers}
    outside = [module for module, m in found.items() if m is None]
    if outside:
        raise GiftError(f"{cfg_file}: the adapter holds {outside[0]}, which is not in a block (…layers.N.…); "
                        "mlx-lm adapts the blocks' layers only")
    keys = config["lora_parameters"].get("keys")
    unlisted = sorted({m["suffix"] for m in found.values()} - set(keys)) if keys is not None else []
    if unlisted:
        raise GiftError(f"{cfg_file}: lora_parameters.keys {keys} does not list {unlisted}, which the adapter's "
                        "tensors adapt")
    blocks = sorted({(m["stack"], int(m["index"])) for m in found.values()})
    n = config.get("num_layers")
    if n is not None and n > 0 and len(blocks) > n:
        raise GiftError(f"{cfg_file}: num_layers is {n}, but the adapter's tensors adapt {len(blocks)} blocks "
                        f"({blocks[0][1]} to {blocks[-1][1]})")


def check_blocks(adapter, model, label):
    """The adapted blocks are the model's last num_layers (mlx-lm adapts model.layers[-num_layers:])."""
    n = adapter.config.get("num_layers")
    depth = len(getattr(model, "layers", ()))
    if not n or n < 0 or not depth:
        return
    early = sorted({int(m["index"]) for m in map(LAYER_PATH.fullmatch, adapter.layers) if int(m["index"]) < depth - n})
    if early:
        raise GiftError(f"{adapter.path / CONFIG}: num_layers is {n}, so only blocks {depth - n} to {depth - 1} of "
                        f"{label} are adapted, but the adapter's tensors adapt block {early[0]}")


# ---- the run that wrote the adapter ----

def unfinished(folder):
    """Why the gift training run that writes `folder` has not finished, or None (finished, or an adapter
    that mlx_lm.lora or another tool wrote: no run record, no checkpoints)."""
    folder = Path(folder)
    lock = folder / LOCK
    if lock.exists():
        try:
            holder = " ".join(lock.read_text().split()[:2])
        except OSError:
            holder = "?"
        return f"a training run holds its lock ({LOCK}: process {holder}; alive, or killed before it finished)"
    status = run_status(folder)
    if status is None:
        if any(folder.glob("checkpoint-*.safetensors")):
            return f"it holds training checkpoints but no {RUN_RECORD}, which a run writes when it completes"
        return None
    if status == "damaged":
        return f"{WEIGHTS} is not the adapter the run wrote ({RUN_RECORD} says status 'damaged')"
    if status != "complete":
        return f"{RUN_RECORD} says status '{status}'"
    if not read_run_record(folder).get("final"):
        return f"{RUN_RECORD} records no final metrics (final: null)"
    return None


def check_finished(folder, allow=False, log=print):
    """Refuse the adapter of an unfinished run (its weights are an intermediate step's) unless `allow`."""
    reason = unfinished(folder)
    if reason and not allow:
        raise GiftError(f"{folder}: unfinished training run: {reason}; let it finish or continue it with "
                        "`gift train --resume`, or pass --allow-unfinished to use the adapter as it is")
    if reason:
        log(f"warning: {folder}: unfinished training run: {reason}; using the adapter as it is")


# Fields of gift_run.json that merge and export read, and the JSON types they must have.
RECORD_FIELDS = {"final": dict, "data": dict, "config": dict, "eval": (dict, list), "pair_check": dict,
                 "status": str, "base_model": str, "instruct_model": str, "method": str}


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
    """The run record `gift train` left beside the adapter ({} when there is none), its fields type-checked."""
    path = Path(adapter_path) / RUN_RECORD
    try:
        record = json.loads(path.read_text(), parse_constant=reject_constant) if path.is_file() else {}
    except (OSError, ValueError, RecursionError) as e:
        raise GiftError(f"{path}: cannot read run record ({e})")
    if not isinstance(record, dict):
        raise GiftError(f"{path}: expected a JSON object, got {type(record).__name__}")
    for key, kind in RECORD_FIELDS.items():
        if record.get(key) is not None and not isinstance(record[key], kind):
            raise GiftError(f"{path}: field '{key}' must be "
                            f"{'a JSON object' if kind is dict else 'a string' if kind is str else 'an object or list'}"
                            f", got {type(record[key]).__name__}")
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
