"""Merge an adapter trained on the base model into the instruct model (gift-method.md, step 4).

W' = W_instruct + λ·ΔW for every adapted linear layer, added in float32.
- LoRA: ΔW = scale · (B A) comes from the adapter alone; for a mixture of experts' per-expert layers (mlx-lm's
  SwitchLinear, weights (experts, out, in)) one B A per expert, as mlx-lm's LoRASwitchLinear.fuse forms it.
- DoRA: its update rescales the rows of (W_base + scale·B A) to the learned magnitudes m, so it is not a
  low-rank delta and means something only against the weights it was trained on. It is transferred as the
  dense task vector ΔW = fused(W_base) − W_base, which needs the base model (`--base`); without it the merge
  stops with a message instead of guessing.
Quantized instruct layers are dequantized, merged and written as float (default) or re-quantized on request,
with the re-quantization error printed (rounding can swallow a small update: mlx-lm issue #1172).
The instruct model is loaded lazily and written shard by shard, so a merge needs about one model's memory.
"""

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

from . import export, export_gguf, export_hf
from .adapters import CONFIG, check_blocks, read_adapter
from .errors import GiftError
from .families import translate_config
from .models import check_compatible, check_model_arg, load_model, local_path, model_ref, read_config
from .outputs import output_folder, write_json
from .pair_check import distance_over, known_result

FORMATS = ("mlx", "hf", "gguf")
GGUF_FILE = "model.gguf"
GGUF_OF_DTYPE = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}
# Linear layers, and the per-expert layers of a mixture of experts (weights (experts, out, in)).
LINEARS = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)
QUANTIZED_LINEARS = (nn.QuantizedLinear, QuantizedSwitchLinear)
QUANTIZED = (*QUANTIZED_LINEARS, nn.QuantizedEmbedding)
MAX_UPDATE = 10.0  # ‖λ·ΔW‖ / ‖W_instruct‖: a trained adapter's is ~0.001-0.05 (1.3 for a toy model at lr 0.05)


# ---- the arithmetic ----

def dims(module):
    """(out, in) of a linear layer, (experts, out, in) of a per-expert one, quantized or not."""
    if isinstance(module, QUANTIZED_LINEARS):
        return (*module.weight.shape[:-1], module.scales.shape[-1] * module.group_size)
    return tuple(module.weight.shape)


def float_weight(module):
    """The weight in float32, dequantized when the layer is quantized."""
    if isinstance(module, QUANTIZED_LINEARS):
        w = mx.dequantize(module.weight, module.scales, getattr(module, "biases", None),
                          group_size=module.group_size, bits=module.bits, mode=module.mode,
                          global_scale=getattr(module, "global_scale", None))
        return w.astype(mx.float32)
    return module.weight.astype(mx.float32)


def float_dtype(module):
    """The float dtype a layer computes in (its scales' dtype when quantized)."""
    return module.scales.dtype if isinstance(module, QUANTIZED_LINEARS) else module.weight.dtype


def lowrank(adapter, path):
    """scale·B A: (out, in) from lora_a (in, r), lora_b (r, out); per expert (experts, out, in) from
    lora_a (experts, r, in), lora_b (experts, out, r), as mlx-lm's LoRASwitchLinear.fuse forms it."""
    a, b = (adapter.layers[path][k].astype(mx.float32) for k in ("lora_a", "lora_b"))
    return adapter.scale * (b @ a if a.ndim == 3 else b.T @ a.T)


def delta(adapter, path, base_module=None):
    """ΔW (out, in) in float32: scale·B A for LoRA, fused(W_base) − W_base for DoRA."""
    if adapter.kind == "lora":
        return lowrank(adapter, path)
    w0 = float_weight(base_module)
    v = w0 + lowrank(adapter, path)
    m = adapter.layers[path]["m"].astype(mx.float32)
    return (m / mx.linalg.norm(v, axis=1))[:, None] * v - w0


def fit_errors(modules, adapter, label):
    """One line per adapted layer that is missing from, or does not fit, a model's layers."""
    errors = []
    for path, t in adapter.layers.items():
        module = modules.get(path)
        if module is None:
            errors.append(f"{path}: no such layer in {label}")
            continue
        if not isinstance(module, LINEARS):
            errors.append(f"{path}: {type(module).__name__} layers cannot be merged (only linear layers)")
            continue
        *experts, out_dims, in_dims = dims(module)
        if experts:  # one LoRA per expert
            rank = t["lora_a"].shape[-2]
            wanted = {"lora_a": (*experts, rank, in_dims), "lora_b": (*experts, out_dims, rank)}
        else:
            wanted = {"lora_a": (in_dims, t["lora_a"].shape[-1]), "lora_b": (t["lora_b"].shape[0], out_dims),
                      "m": (out_dims,)}
        errors += [f"{path}.{leaf}: adapter {tuple(w.shape)} vs {label} {wanted[leaf]}"
                   for leaf, w in t.items() if tuple(w.shape) != wanted[leaf]]
    return errors


def fuse_layer(module, w, dtype=None, requantize=False):
    """A layer like `module` (linear or per-expert) holding the merged float32 weight w, in `dtype` or
    re-quantized."""
    out_dtype = dtype or float_dtype(module)
    has_bias = "bias" in module
    if w.ndim == 3:
        layer = SwitchLinear(w.shape[2], w.shape[1], w.shape[0], bias=has_bias)
    else:
        layer = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
    layer.weight = w.astype(out_dtype)
    if has_bias:
        layer.bias = module.bias.astype(out_dtype)
    if requantize and isinstance(module, QUANTIZED_LINEARS):
        layer = layer.to_quantized(group_size=module.group_size, bits=module.bits, mode=module.mode)
    return layer


def requantization_error(layer, merged, update):
    """‖Q(W') − W'‖ / ‖λΔW‖: near or above 1 means rounding has swallowed the update."""
    return (mx.linalg.norm(float_weight(layer) - merged) / mx.linalg.norm(update)).item()


# ---- checks ----

DORA_NEEDS_BASE = (
    "{path}: DoRA adapter: its update rescales the base weights' rows, so it cannot be added to another "
    "model as a low-rank delta; pass --base {base} (the model it was trained on) to transfer "
    "ΔW = fused(base) − base"
)


def _known_config(name):
    """The config of a model if it is on this machine (a folder or the Hub cache); never downloads."""
    if not name:
        return None
    if Path(name).is_dir():
        return read_config(name) if (Path(name) / "config.json").is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name), "config.json")
    except Exception:  # not a valid repo id: nothing to compare against
        return None
    return read_config(Path(cached).parent) if isinstance(cached, str) else None  # a local folder: no download


def _check_architecture(adapter, instruct, instruct_config, base):
    """The adapter's base and the instruct model must share architecture (checked when its config is at hand)."""
    name = base or adapter.config.get("base_model")
    base_config = _known_config(name)
    if base_config:
        check_compatible(base_config, instruct_config, f"adapter's base {name}", f"instruct {instruct}")


def _fit(model, adapter, label):
    errors = fit_errors(dict(model.named_modules()), adapter, label)
    if errors:
        more = f"; and {len(errors) - 8} more" if len(errors) > 8 else ""
        raise GiftError(f"adapter {adapter.path} does not fit {label}: " + "; ".join(errors[:8]) + more)


# ---- the merge ----

def fuse_model(model, adapter, scale=1.0, base_model=None, dtype=None, requantize=False, log=print):
    """Replace every adapted layer of `model` by its merged layer (lazily); return the merged paths."""
    modules = dict(model.named_modules())
    base_modules = dict(base_model.named_modules()) if base_model is not None else {}
    fused, errors, sizes = [], [], {}
    for path in adapter.layers:
        update = scale * delta(adapter, path, base_modules.get(path))
        weight = float_weight(modules[path])
        merged = weight + update
        # ‖λΔW‖² and ‖W_instruct‖², evaluated with the merged weight when it is written (no second read)
        sizes[f"{path}.weight"] = [mx.square(update).sum(), mx.square(weight).sum()]
        layer = fuse_layer(modules[path], merged, dtype, requantize)
        if isinstance(layer, QUANTIZED_LINEARS):  # measured now, so the warning can give numbers
            mx.eval(layer.parameters(), sizes[f"{path}.weight"])
            errors.append(requantization_error(layer, merged, update))
            q = layer
        fused.append((path, layer))
    model.update_modules(tree_unflatten(fused))
    if errors:
        log(f"warning: re-quantized {len(errors)} merged layers ({q.bits}-bit, group {q.group_size}, {q.mode}): "
            f"the rounding error is {sum(errors) / len(errors):.2f}x the adapter's update on average "
            f"(max {max(errors):.2f}x), so part of the update is lost; merge without --requantize to keep it")
    return [p for p, _ in fused], (sum(errors) / len(errors) if errors else None), sizes


def _cast(model, dtype):
    """Cast float parameters to dtype, leaving quantized layers (packed weights, scales) as they are."""
    def keep(m, k, v):
        return nn.Module.valid_parameter_filter(m, k, v) and not isinstance(v, QUANTIZED)

    model.apply(lambda x: x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) else x, keep)


def _has_quantized(model):
    return any(isinstance(m, QUANTIZED) for _, m in model.named_modules())


def _mlx_config(raw, loaded, model, fused, requantized):
    """The instruct config with the fields gift translated for mlx-lm (families.translate_config), so that a
    plain mlx_lm.load builds the same model; quantization kept for the layers still quantized (mlx-lm reads
    both keys)."""
    config = {k: v for k, v in {**raw, **translate_config(raw)[0]}.items() if k not in export.QUANT_KEYS}
    quant = loaded.get("quantization")
    if quant and _has_quantized(model):
        if not requantized:  # merged layers are float now: drop any per-layer entry that says otherwise
            quant = {k: v for k, v in quant.items() if k not in fused}
        config["quantization"] = config["quantization_config"] = quant
    return config


def _take_weights(model):
    """All parameters, with the model emptied so the writer holds the only references (shards get freed)."""
    weights = dict(tree_flatten(model.parameters()))
    model.update(tree_map(lambda _: mx.array([]), model.parameters()))
    return weights


def _dominant_float(model):
    counts = {}
    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            counts[v.dtype] = counts.get(v.dtype, 0) + v.size
    return max(counts, key=counts.get)


def _check_options(adapter, instruct, fmt, dtype, base, requantize):
    """Cheap checks before anything is loaded; return the instruct model to merge into."""
    if not instruct:
        instruct = adapter.config.get("instruct_model")
        if not instruct:
            raise GiftError(f"{adapter.path / CONFIG}: names no instruct_model; pass --instruct")
        try:
            check_model_arg(instruct)
        except GiftError as e:
            raise GiftError(f"{adapter.path / CONFIG}: field instruct_model: {e}; pass --instruct") from None
    if fmt not in FORMATS:
        raise GiftError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in export.DTYPES:
        raise GiftError(f"--dtype: '{dtype}' is not one of {', '.join(export.DTYPES)}")
    if requantize and fmt == "hf":
        raise GiftError("--requantize: Hugging Face output is always float (transformers cannot read MLX quantization)")
    if requantize and fmt == "gguf":
        raise GiftError("--requantize: GGUF output is quantized by llama.cpp's own types (--gguf-type q8_0)")
    if adapter.kind == "dora" and not base:
        raise GiftError(DORA_NEEDS_BASE.format(path=adapter.path, base=adapter.config.get("base_model") or "<model>"))
    return model_ref(instruct)


def _check_dora_base(adapter, base, log):
    """A DoRA update is defined against the weights it was trained on: --base must be the recorded base_model
    (when that one is on this machine to compare; else a note says which is assumed)."""
    trained_on = adapter.config.get("base_model")
    if adapter.kind != "dora" or not trained_on or model_ref(base) == model_ref(trained_on):
        return
    if Path(trained_on).exists() or not Path(base).exists():
        raise GiftError(f"--base {base}: the DoRA adapter was trained on {trained_on} ({adapter.path / CONFIG}), "
                        f"and its update is defined against those weights only; pass --base {trained_on}")
    log(f"note: --base {base} stands in for {trained_on}, the base the DoRA adapter records (not on this "
        "machine): the merge is right only if it holds the same weights")


def _load_checked(adapter, instruct, raw, base, requantize):
    """The instruct model (and for DoRA the base), lazily loaded, after checking the adapter fits them."""
    _check_architecture(adapter, instruct, raw, base)
    model, _, loaded = load_model(instruct, lazy=True)
    _fit(model, adapter, f"instruct {instruct}")
    check_blocks(adapter, model, f"instruct {instruct}")
    if requantize and not _has_quantized(model):
        raise GiftError(f"--requantize: instruct {instruct} is not quantized")
    base_model = load_model(base, lazy=True)[0] if adapter.kind == "dora" else None
    if base_model is not None:
        _fit(base_model, adapter, f"base {base}")
    return model, loaded, base_model


def _output_config(model, raw, loaded, fused, fmt, dtype, requantize):
    """(dtype to cast to or None, config to write) for the merged model in `fmt`."""
    if fmt == "mlx":
        return dtype, _mlx_config(raw, loaded, model, fused, requantize)
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)  # transformers reads float weights only
    dtype = dtype or _dominant_float(model)  # and one dtype for the whole model
    return dtype, export.hf_config(raw, export.dtype_name(dtype))


def merge(instruct=None, adapter_path="adapters", out="merged", *, fmt="mlx", dtype=None, scale=1.0, base=None,
          requantize=False, gguf_type=None, force=False, allow_unfinished=False, log=print):
    """Merge the adapter into the instruct model and write it to `out` in `fmt` (mlx | hf | gguf); return out."""
    scale = export.check_scale(scale)
    adapter = read_adapter(adapter_path, allow_unfinished, log)
    instruct = _check_options(adapter, instruct, fmt, dtype, base, requantize)
    _check_dora_base(adapter, base, log)
    raw = read_config(instruct)
    checkpoint = export_hf.read_checkpoint(local_path(instruct)) if fmt == "hf" else None
    if fmt == "hf" and checkpoint is None:
        export.check_hf(raw, instruct)
    if checkpoint is not None:
        targets = export_hf.plan(adapter, raw, checkpoint, instruct)
    if fmt == "gguf":
        gguf_type = gguf_type or GGUF_OF_DTYPE.get(dtype, "f16")
        pre_tokenizer = export_gguf.check_gguf(raw, local_path(instruct), gguf_type)
    with output_folder(out, [instruct, adapter.path, base], force) as tmp:
        if checkpoint is not None:
            sizes = _merge_checkpoint(tmp, adapter, instruct, raw, base, checkpoint, targets, scale, dtype)
            rq_error, out_dtype = None, dtype or "as instruct"
        else:
            model, loaded, base_model = _load_checked(adapter, instruct, raw, base, requantize)
            mx_dtype = export.DTYPES[dtype] if dtype else None
            fused, rq_error, sizes = fuse_model(model, adapter, scale, base_model, mx_dtype, requantize, log)
            if fmt == "gguf":
                _write_gguf(tmp, model, raw, instruct, gguf_type, pre_tokenizer, out)
                _write_card(tmp, adapter, instruct, fmt, out, merge_scale=scale, dtype=gguf_type)
                log(f"merged {len(fused)} layers of {adapter.path} into {instruct} -> {out}/{GGUF_FILE} ({gguf_type})")
                return Path(out)
            mx_dtype, config = _output_config(model, raw, loaded, fused, fmt, mx_dtype, requantize)
            if mx_dtype is not None:
                _cast(model, mx_dtype)
            export.write_weights(tmp, _take_weights(model), "pt" if fmt == "hf" else "mlx",
                                 label=f"{out}: merged weights", extras=sizes)
            write_json(tmp / "config.json", config)
            out_dtype = export.dtype_name(mx_dtype) if mx_dtype is not None else "as instruct"
        update_size = math.sqrt(sum(u.item() for u, _ in sizes.values()) / sum(w.item() for _, w in sizes.values()))
        check_update_size(update_size, adapter, scale)
        line = update_line(update_size, scale, sizes, adapter, instruct, log)  # before the output is in place
        export.copy_tokenizer(local_path(instruct), tmp, raw)
        _write_card(tmp, adapter, instruct, fmt, out, merge_scale=scale, dtype=out_dtype,
                    requantized={"mean_error_over_update": rq_error} if requantize else None,
                    update_relative_size=round(update_size, 6))
    log(f"merged {len(adapter.layers)} layers of {adapter.path} into {instruct} -> {out} ({fmt})")
    log(line)
    return Path(out)


def check_update_size(update_size, adapter, scale):
    """‖λ·ΔW‖ / ‖W_instruct‖ above MAX_UPDATE replaces the instruct weights rather than tuning them: integer or
    mis-scaled tensors, not a trained adapter."""
    if not update_size <= MAX_UPDATE:
        raise GiftError(f"{adapter.path}: the update is {update_size:.3g}x the size of the instruct weights it "
                        f"would be added to (‖λ·ΔW‖_F / ‖W_instruct‖_F, λ = {scale:g}), more than {MAX_UPDATE:g}x: "
                        "it would replace the model, not tune it; check the adapter's tensors and lora_parameters.scale, and --scale")


def _merge_checkpoint(folder, adapter, instruct, raw, base, checkpoint, targets, scale, dtype):
    """--format hf from the instruct model's own HF checkpoint: W + λ·ΔW tensor by tensor (export_hf.py)."""
    _check_architecture(adapter, instruct, raw, base)
    base_modules = {}
    if adapter.kind == "dora":  # ΔW = fused(W_base) − W_base needs the base weights
        base_model = load_model(base, lazy=True)[0]
        _fit(base_model, adapter, f"base {base}")
        base_modules = dict(base_model.named_modules())
    return export_hf.write_checkpoint(folder, local_path(instruct), checkpoint, targets,
                                      lambda path: scale * delta(adapter, path, base_modules.get(path)), dtype)


def update_line(update_size, scale, sizes, adapter, instruct, log=print):
    """The update's relative size, next to the base -> instruct distance when the base is on this machine."""
    line = (f"update: ‖λ·ΔW‖_F / ‖W_instruct‖_F = {update_size:.4f} over the {len(sizes)} adapted matrices "
            f"(λ = {scale:g})")
    try:
        pair = known_result(adapter.path, adapter.config.get("base_model"), instruct, log)
    except (GiftError, ValueError) as e:  # a measure beside the merge (e.g. a base in transformers' layout, an
        # MoE instruct in mlx-lm's, a quantization config its tensors contradict): say why it is missing
        return line + f"; base -> instruct distance: not measured ({str(e).splitlines()[0]})"
    if pair is None:
        return line + "; base -> instruct distance: not measured (the base model is not on this machine)"
    same = distance_over(pair, set(sizes))
    overall = pair["overall"]["relative_distance"]
    if same is None:  # the files name the tensors otherwise than mlx-lm's modules (a wrapped model's sanitize)
        return line + f"; base -> instruct distance over all matrices {overall:.4f}"
    line += f"; base -> instruct distance over the same matrices {same:.4f} (all matrices {overall:.4f})"
    return line + (f": the update is {update_size / same:.2f}x the pair's distance" if same else "")


def _write_gguf(folder, model, raw, instruct, gguf_type, pre_tokenizer, out):
    """The merged model as one GGUF file (float weights; the file's type decides f16/bf16/q8_0)."""
    from mlx_lm.utils import dequantize_model

    dequantize_model(model)
    config = {k: v for k, v in raw.items() if k not in export.QUANT_KEYS}
    export_gguf.write_gguf(folder / GGUF_FILE, _take_weights(model), config, local_path(instruct), gguf_type,
                      pre_tokenizer, Path(out).name)


def _write_card(folder, adapter, instruct, fmt, out, **extra):
    record = export.build_record(adapter, "merged-model", fmt, instruct_model=instruct, **extra)
    if fmt == "gguf":
        usage = (f"bash\nllama-cli -m {out}/{GGUF_FILE} -cnv\n"
                 f"# Ollama: a Modelfile with the line FROM {out}/{GGUF_FILE}, then: ollama create NAME -f Modelfile\n")
    elif fmt == "hf":
        usage = (f"python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                 f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
                 f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})\n")
    else:
        usage = f"bash\nmlx_lm.generate --model {out} --prompt \"...\"\nmlx_lm.server --model {out}\n"
    what = (f"`{instruct}` with the update of a {adapter.kind.upper()} adapter trained on "
            f"`{record['base_model']}` (method `{record['method']}`, GIFT transfer) added to it: "
            f"W' = W_instruct + {extra['merge_scale']}·ΔW.")
    library = {"hf": "transformers", "gguf": "gguf"}.get(fmt, "mlx")
    export.write_card(folder, Path(out).name, record, what, usage, library)
