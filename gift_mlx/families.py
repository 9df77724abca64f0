"""The registry of model families: what each model_type needs to be loaded, trained, merged and exported.

Every family-specific fact lives here (and only here): the transformers class an HF export names, the llama.cpp
architecture a GGUF export names, and how a config written by transformers is translated into what mlx-lm reads.
Merge, export, pair-check and the tests read this table. A new family is a new row.

Why the translation: transformers >= 5 writes RoPE settings as `rope_parameters` (per layer type for Gemma 3) and
renames some fields (`num_local_experts`); mlx-lm's ModelArgs of most families still read `rope_theta` /
`rope_scaling` / `num_experts` and silently fall back to their defaults when those are missing, so the model
would load, but with another RoPE than the user's. `translate_config` fills the fields mlx-lm reads from the ones
transformers wrote; `check_rope` refuses a RoPE type the loaded mlx-lm model does not implement.
"""

import dataclasses
import math
import re
from dataclasses import dataclass

from .errors import GiftError

# (field transformers writes, field mlx-lm's ModelArgs reads): copied when ModelArgs has the second and the config
# lacks it. Family rows add their own.
RENAMES = (("num_local_experts", "num_experts"), ("n_positions", "n_ctx"))
# (rope_parameters key, ModelArgs field): where a flat rope_parameters' values go.
ROPE_FIELDS = (("rope_theta", "rope_theta"), ("rope_theta", "rotary_emb_base"),
               ("partial_rotary_factor", "partial_rotary_factor"), ("partial_rotary_factor", "rotary_pct"))
# A word in the name of the mlx-lm RoPE classes that implement a scaled rope_type (rope_utils.initialize_rope's,
# and families' own: DeepseekV2YarnRotaryEmbedding, hunyuan's DynamicNTKAlphaRoPE); "linear" is nn.RoPE's scale.
# Types not named here (mrope, axial, ...) are not checked.
ROPE_CLASSES = {"llama3": "Llama3", "yarn": "Yarn", "deepseek_yarn": "Yarn", "longrope": "SuScaled",
                "su": "SuScaled", "dynamic": "Dynamic", "proportional": "Proportional"}
SCALED = {*ROPE_CLASSES, "linear"}


@dataclass(frozen=True)
class Family:
    # transformers architecture of an MLX folder written by --format hf: set where mlx-lm's tensors are transformers'
    # (None: such a folder is refused; the family's own HF checkpoint goes through export_hf.py whatever this says)
    hf_class: str | None = None
    gguf_arch: str | None = None  # llama.cpp architecture (gguf.MODEL_ARCH member name) (None: not supported)
    renames: tuple = ()  # (transformers field, mlx-lm field) pairs beyond RENAMES
    # Per-layer-type rope_parameters: {layer type: (theta field, scaling field or None)} in mlx-lm's ModelArgs.
    rope_layers: dict | None = None
    mlx_type: str | None = None  # mlx-lm's model_type for a transformers type mlx-lm does not name
    # (mlx-lm field, layer type): transformers 5 writes a periodic layer pattern as the list layer_types;
    # mlx-lm reads its period, "layer i is of that type when (i + 1) % period == 0".
    layer_period: tuple | None = None


FAMILIES = {
    "llama": Family(hf_class="LlamaForCausalLM", gguf_arch="LLAMA"),
    "mistral": Family(hf_class="MistralForCausalLM", gguf_arch="LLAMA"),
    "qwen2": Family(hf_class="Qwen2ForCausalLM", gguf_arch="QWEN2"),
    "qwen3": Family(hf_class="Qwen3ForCausalLM", gguf_arch="QWEN3"),
    "gemma2": Family(hf_class="Gemma2ForCausalLM", gguf_arch="GEMMA2"),
    "gemma3_text": Family(hf_class="Gemma3ForCausalLM", gguf_arch="GEMMA3",
                          layer_period=("sliding_window_pattern", "full_attention"),
                          rope_layers={"full_attention": ("rope_theta", "rope_scaling"),
                                       "sliding_attention": ("rope_local_base_freq", None)}),
    "granite": Family(hf_class="GraniteForCausalLM", gguf_arch="GRANITE"),
    "olmo2": Family(hf_class="Olmo2ForCausalLM", gguf_arch="OLMO2"),
    "phi3": Family(hf_class="Phi3ForCausalLM", gguf_arch="PHI3"),
    "smollm3": Family(hf_class="SmolLM3ForCausalLM", gguf_arch="SMOLLM3"),
    "qwen3_moe": Family(gguf_arch="QWEN3MOE"),
    "olmoe": Family(gguf_arch="OLMOE"),
    # mlx-lm's qwen3_5 (a wrapper) reads a bare text config as its text_config
    "qwen3_5_text": Family(mlx_type="qwen3_5", layer_period=("full_attention_interval", "full_attention")),
    "mimo_v2_flash": Family(rope_layers={"full_attention": ("rope_theta", None),
                                         "sliding_attention": ("swa_rope_theta", None)}),
    "olmo3": Family(rope_layers={"full_attention": ("rope_theta", "rope_scaling"),
                                 "sliding_attention": ("rope_theta", None)}),
    "step3p5": Family(rope_layers={"full_attention": ("rope_theta", "rope_scaling")}),
    "lfm2": Family(renames=(("hidden_size", "block_dim"),)),  # transformers 5 drops block_dim (= hidden_size)
}


def family(model_type):
    """The registry's row for a model_type (an empty row for a type mlx-lm loads but the table does not name)."""
    return FAMILIES.get(model_type, Family())


def supported(what):
    """The model_types whose row has `what` (hf_class, gguf_arch)."""
    return [t for t, f in FAMILIES.items() if getattr(f, what)]


# ---- transformers config -> mlx-lm config ----

def _args_fields(config):
    """The field names of mlx-lm's ModelArgs for this config (None: a type mlx-lm does not know)."""
    from mlx_lm.utils import _get_classes

    try:
        return {f.name for f in dataclasses.fields(_get_classes(config)[1])}
    except Exception:  # unknown type or not a dataclass: mlx-lm's own load gives the error
        return None


def rope_type(params):
    return params.get("rope_type") or params.get("type") or "default"


def _scaling(params):
    """rope_parameters as mlx-lm's rope_scaling (which reads "type" or "rope_type"; phi3 reads "type" only)."""
    if rope_type(params) == "default":
        return None
    scaling = {**{k: v for k, v in params.items() if k != "rope_theta"}, "type": rope_type(params)}
    factor, attention = params.get("factor"), params.get("attention_factor")
    if (rope_type(params) == "yarn" and isinstance(attention, (int, float)) and isinstance(factor, (int, float))
            and factor > 1 and "mscale" not in params and "mscale_all_dim" not in params):
        # mlx-lm's YarnRoPE scales by 0.1·mscale·ln(factor) + 1 and does not read attention_factor (Olmo 3 sets it)
        scaling["mscale"] = (attention - 1) / (0.1 * math.log(factor))
    return scaling


def _set(out, notes, fields, config, key, value, source):
    if key in fields and value is not None and config.get(key) != value:
        out[key] = value
        notes.append(f"{source} -> {key}")


def _translate_layer_rope(config, fields, row, out, notes, where):
    """rope_parameters {layer type: {...}} into the per-layer-type fields the family's row names."""
    model_type, rope, thetas = config.get("model_type"), config["rope_parameters"], {}
    if not row.rope_layers:
        raise GiftError(f"{where}: field 'rope_parameters': per-layer-type RoPE ({', '.join(rope)}) is not read "
                        f"by mlx-lm's {model_type} model")
    for layer_type, params in rope.items():
        theta_field, scaling_field = row.rope_layers.get(layer_type, (None, None))
        name, theta = f"rope_parameters.{layer_type}", params.get("rope_theta")
        if theta_field is None or (scaling_field is None and rope_type(params) != "default"):
            raise GiftError(f"{where}: field '{name}.rope_type': '{rope_type(params)}' for {layer_type} layers "
                            f"is not implemented by mlx-lm's {model_type} model")
        if thetas.setdefault(theta_field, theta) != theta:
            raise GiftError(f"{where}: field '{name}.rope_theta': mlx-lm's {model_type} model has one "
                            f"{theta_field} for several layer types, here {thetas[theta_field]} and {theta}")
        _set(out, notes, fields, config, theta_field, theta, f"{name}.rope_theta")
        if scaling_field:
            _set(out, notes, fields, config, scaling_field, _scaling(params), name)


def _translate_rope(config, fields, row, out, notes, where):
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or not rope:
        return
    if "rope_parameters" in fields and not row.rope_layers:
        return  # this mlx-lm model reads rope_parameters itself
    if all(isinstance(v, dict) for v in rope.values()):  # per layer type (Gemma 3, Olmo 3)
        _translate_layer_rope(config, fields, row, out, notes, where)
        return
    for key, field in ROPE_FIELDS:
        _set(out, notes, fields, config, field, rope.get(key), f"rope_parameters.{key}")
    if rope_type(rope) in SCALED and "rope_scaling" not in fields:
        raise GiftError(f"{where}: field 'rope_parameters.rope_type': '{rope_type(rope)}' is not implemented "
                        f"by mlx-lm's {config.get('model_type')} model")
    _set(out, notes, fields, config, "rope_scaling", _scaling(rope), "rope_parameters")
    if "rope_scaling" in fields and "rope_scaling" not in config and "rope_scaling" not in out:
        out["rope_scaling"] = None  # some ModelArgs require the field transformers 5 no longer writes


def _period(layer_types, period_field, where):
    """The period of a layer_types list that mlx-lm's `field` can express, else one error."""
    field, kind = period_field
    period = layer_types.index(kind) + 1 if kind in layer_types else len(layer_types) + 1
    if any((t == kind) != ((i + 1) % period == 0) for i, t in enumerate(layer_types)):
        raise GiftError(f"{where}: field 'layer_types': mlx-lm's model reads only a period ({field}: every "
                        f"n-th layer {kind}); {layer_types} has none")
    return period


def translate_config(config, where="config.json", nested=False):
    """(fields to pass to mlx-lm's load as model_config=, notes "transformers field -> mlx-lm field").

    Only fields the model's mlx-lm ModelArgs reads and the config lacks (or holds under another value) are
    set; a wrapped config (text_config, as Gemma 3 / Mistral 3 write) is translated inside. A RoPE setting
    that mlx-lm's model cannot carry stops here with one error naming `where` and the field."""
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        return {}, []
    out, notes = {}, []
    text = config.get("text_config")
    if isinstance(text, dict) and isinstance(text.get("model_type"), str):
        inner, inner_notes = translate_config(text, where, nested=True)
        if inner:
            out["text_config"] = {**text, **inner}
            notes += [f"text_config.{n}" for n in inner_notes]
    row = family(config["model_type"])
    if row.mlx_type and not nested:
        out["model_type"] = row.mlx_type
        notes.append(f"model_type {config['model_type']} -> {row.mlx_type}")
    fields = _args_fields({**config, **out})
    if fields is None:
        return out, notes
    _translate_rope(config, fields, row, out, notes, where)
    if row.layer_period and row.layer_period[0] not in config and isinstance(config.get("layer_types"), list):
        out[row.layer_period[0]] = _period(config["layer_types"], row.layer_period, where)
        notes.append(f"layer_types -> {row.layer_period[0]}")
    for source, target in RENAMES + row.renames:
        if source in config and target not in config:
            _set(out, notes, fields, config, target, config[source], source)
    return out, notes


def rope_settings(config):
    """[(field name, rope dict)] of every RoPE setting in a config (top level, per layer type, text_config)."""
    found = []
    for prefix, cfg in (("", config), ("text_config.", config.get("text_config"))):
        if not isinstance(cfg, dict):
            continue
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling")
        name = prefix + ("rope_parameters" if cfg.get("rope_parameters") else "rope_scaling")
        if isinstance(rope, dict) and all(isinstance(v, dict) for v in rope.values()):
            used = cfg.get("layer_types")  # a layer type no layer has needs no RoPE of its own
            found += [(f"{name}.{k}", v) for k, v in rope.items() if not isinstance(used, list) or k in used]
        elif isinstance(rope, dict):
            found.append((name, rope))
    return found


def check_rope(model, config, where="config.json"):
    """Every scaled RoPE the config asks for must be built by the loaded mlx-lm model (it would otherwise
    run plain RoPE, and compute other logits than the user's model, without a word)."""
    import mlx.nn as nn

    modules = [m for _, m in model.named_modules()]
    classes = " ".join({type(m).__name__ for m in modules})
    scales = [m.scale for m in modules if isinstance(m, nn.RoPE)]
    for name, params in rope_settings(config):
        kind, factor = rope_type(params), params.get("factor")
        if kind == "linear":
            ok = isinstance(factor, (int, float)) and factor > 0 and any(math.isclose(s, 1 / factor) for s in scales)
        else:
            ok = kind not in ROPE_CLASSES or ROPE_CLASSES[kind] in classes
        if not ok:
            raise GiftError(f"{where}: field '{name}.rope_type': '{kind}' is not implemented by mlx-lm's "
                            f"{config.get('model_type')} model (it would run unscaled RoPE)")


# ---- NAME MAP: an mlx-lm module path -> the tensor names of the family's own Hugging Face checkpoint ----
# Most families keep transformers' names (`<module path>.weight`). Where mlx-lm renames, the rewrites below are
# tried in order, and the first name the checkpoint holds wins (so one family can be read from several layouts).

HF_RENAMES = {
    # Qwen3.5 is a vision-language checkpoint (model.language_model.*) or a text-only one (model.*); mlx-lm wraps
    # both under language_model.
    "qwen3_5": ((r"^language_model\.model\.", "model.language_model."), (r"^language_model\.", "")),
    "qwen3_5_moe": ((r"^language_model\.model\.", "model.language_model."), (r"^language_model\.", "")),
    "qwen3_5_text": ((r"^language_model\.", ""),),
}
# mlx-lm stacks an MoE layer's experts into one switch_mlp tensor (experts, out, in); HF checkpoints of the
# Qwen-MoE / OLMoE layout hold one tensor per expert.
SWITCH = re.compile(r"\.switch_mlp\.")
EXPERT = ".experts.{}."


def hf_names(model_type, path):
    """The candidate HF module paths of an mlx-lm module path, most likely first (identity first)."""
    names = [path]
    for pattern, replacement in HF_RENAMES.get(model_type, ()):
        renamed = re.sub(pattern, replacement, path)
        if renamed not in names:
            names.append(renamed)
    return names
