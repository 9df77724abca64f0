"""`gift merge --format hf`: the instruct model's own Hugging Face checkpoint with each adapted tensor replaced.

W' = W + λ·ΔW tensor by tensor (ΔW in float32, cast back to W's dtype); every other tensor, the shards, the
index, config.json and the tokenizer files stay the instruct model's. The one family fact needed is where
mlx-lm's module paths differ from the checkpoint's tensor names (families.py's NAME MAP). Shards that hold no
adapted tensor are copied byte for byte; the others are read one at a time, so the peak memory is one shard.
"""

import json
from pathlib import Path

import mlx.core as mx

from .errors import GiftError
from .export import DTYPES, copy_file
from .families import EXPERT, SWITCH, hf_names
from .models import inside_model
from .outputs import save_tensors, write_json

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_checkpoint(folder):
    """{tensor name: (shard file name, shape)} of a Hugging Face checkpoint folder; None for a folder that is
    not one (no model.safetensors / index, or shards written by MLX, which may hold tensors as mlx-lm
    re-stores them)."""
    from safetensors import safe_open

    folder = Path(folder)
    try:
        if (folder / INDEX).is_file():
            names = set(json.loads((folder / INDEX).read_text())["weight_map"].values())
            shards = sorted(str(inside_model(folder, n, folder / INDEX).relative_to(folder)) for n in names)
        elif (folder / SINGLE).is_file():
            shards = [SINGLE]
        else:
            return None
        tensors = {}
        for shard in shards:
            with safe_open(str(folder / shard), "numpy") as f:
                if (f.metadata() or {}).get("format") == "mlx":
                    return None
                tensors.update({k: (shard, tuple(f.get_slice(k).get_shape())) for k in f.keys()})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GiftError(f"{folder}: cannot read the checkpoint's safetensors ({str(e).splitlines()[0]})")
    return tensors


def _expert_names(module, checkpoint):
    """module.experts.0.x.weight, module.experts.1.x.weight, ... as far as the checkpoint has them."""
    names = []
    while f"{SWITCH.sub(EXPERT.format(len(names)), module)}.weight" in checkpoint:
        names.append(f"{SWITCH.sub(EXPERT.format(len(names)), module)}.weight")
    return names


def tensor_names(model_type, path, checkpoint):
    """[(HF tensor name, expert index or None)] that the adapted mlx-lm module `path` updates; [] if none fits."""
    for module in hf_names(model_type, path):
        if f"{module}.weight" in checkpoint:
            return [(f"{module}.weight", None)]
        if SWITCH.search(module):
            experts = _expert_names(module, checkpoint)
            if experts:
                return [(name, i) for i, name in enumerate(experts)]
    return []


def adapted_shape(t):
    """(out, in) of each matrix a LoRA/DoRA layer updates, and how many (mlx-lm's LoRA on stacked experts holds
    A as (experts, r, in) and B as (experts, out, r)); None for another layout (checked when ΔW is computed)."""
    a, b = t["lora_a"], t["lora_b"]
    if a.ndim == 2 and b.ndim == 2:
        return (b.shape[1], a.shape[0]), 1
    if a.ndim == 3 and b.ndim == 3:
        return (b.shape[1], a.shape[2]), a.shape[0]
    return None, None


def plan(adapter, config, checkpoint, where):
    """{HF tensor name: (adapted module path, expert index or None)}; GiftError for a quantized checkpoint, or
    naming the modules the checkpoint has no tensor for, or whose tensor's shape is not the adapter's."""
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        raise GiftError(f"--format hf: the checkpoint of {where} is quantized ({method}); gift adds the update to "
                        "float weights: merge into the float model, or use --format mlx")
    model_type = config.get("model_type")
    targets, errors = {}, []
    for path, t in adapter.layers.items():
        names = tensor_names(model_type, path, checkpoint)
        shape, count = adapted_shape(t)
        if not names:
            errors.append(f"{path}: no tensor {' or '.join(n + '.weight' for n in hf_names(model_type, path))}")
        elif count is not None and count != len(names):
            errors.append(f"{path}: adapter for {count} matrices vs {len(names)} experts in the checkpoint")
        for name, expert in names:
            if shape is not None and checkpoint[name][1] != shape:
                errors.append(f"{path}: adapter {shape} vs {name} {checkpoint[name][1]}")
            targets[name] = (path, expert)
    if errors:
        more = f"; and {len(errors) - 6} more" if len(errors) > 6 else ""
        raise GiftError(f"--format hf: adapter {adapter.path} does not fit the checkpoint of {where}: "
                        + "; ".join(errors[:6]) + more)
    return targets


def _merged(w, update, name):
    """W + λ·ΔW in float32, cast back to W's dtype."""
    if tuple(update.shape) != tuple(w.shape):
        raise GiftError(f"--format hf: the update of {name} has shape {tuple(update.shape)}, the tensor "
                        f"{tuple(w.shape)}")
    return (w.astype(mx.float32) + update).astype(w.dtype)


def _read_shard(path):
    try:
        return mx.load(str(path), return_metadata=True)
    except (OSError, RuntimeError, ValueError) as e:
        raise GiftError(f"{path}: cannot read ({str(e).splitlines()[0]})")


def write_checkpoint(folder, src, checkpoint, targets, update, dtype=None):
    """Write the merged checkpoint into `folder`; `update(path)` is λ·ΔW in float32 ((experts, out, in) for a
    stacked MoE layer). Return {module path.weight: [‖λΔW‖², ‖W‖²]} for the update's relative size."""
    src, folder = Path(src), Path(folder)
    shards = sorted({shard for shard, _ in checkpoint.values()})
    pending = {}  # module path -> how many of its tensors are still to write (an MoE layer spans experts)
    for path, _ in targets.values():
        pending[path] = pending.get(path, 0) + 1
    sizes, updates, total = {}, {}, 0
    for shard in shards:
        names = [n for n in targets if checkpoint[n][0] == shard]
        if not names and dtype is None:
            copy_file(src / shard, folder / shard)
            continue
        tensors, metadata = _read_shard(src / shard)
        for name in names:
            path, expert = targets[name]
            if path not in updates:
                updates[path] = update(path)
            u = updates[path] if expert is None else updates[path][expert]
            w = tensors[name]
            tensors[name] = _merged(w, u, name)
            size = sizes.setdefault(f"{path}.weight", [mx.array(0.0), mx.array(0.0)])
            size[0] = size[0] + mx.square(u).sum()
            size[1] = size[1] + mx.square(w.astype(mx.float32)).sum()
            mx.eval(tensors[name], size)
            pending[path] -= 1
            if not pending[path]:
                del updates[path]
        if dtype is not None:
            tensors = {k: v.astype(DTYPES[dtype]) if mx.issubdtype(v.dtype, mx.floating) else v
                       for k, v in tensors.items()}
        total += sum(v.nbytes for v in tensors.values())
        save_tensors(folder / shard, tensors, metadata=metadata)  # checked finite after the cast
        del tensors
    _write_index_and_config(folder, src, dtype, total)
    return sizes


def _write_index_and_config(folder, src, dtype, total):
    """The instruct model's index and config.json, as they are, or with the new dtype and size after --dtype."""
    if dtype is None:
        for name in (INDEX, "config.json"):
            if (src / name).is_file():
                copy_file(src / name, folder / name)
        return
    if (src / INDEX).is_file():
        index = json.loads((src / INDEX).read_text())
        write_json(folder / INDEX, {**index, "metadata": {**index.get("metadata", {}), "total_size": total}})
    config = json.loads((src / "config.json").read_text())
    write_json(folder / "config.json", {**config, "dtype": dtype, **({"torch_dtype": dtype} if "torch_dtype" in
                                                                      config else {})})
