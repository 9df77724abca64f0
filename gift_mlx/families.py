"""The registry of model families: what each model_type needs to be loaded, trained, merged and exported.

Every family-specific fact lives here (and only here): the transformers class an HF export names, the llama.cpp
architecture a GGUF export names, and how a config written by transformers is translated into what mlx-lm reads.
Merge, export, pair-check and the tests read this table. A new family is a new row.
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    # transformers architecture of an MLX folder written by --format hf: set where mlx-lm's tensors are transformers'
    # (None: such a folder is refused; the family's own HF checkpoint goes through export_hf.py whatever this says)
    hf_class: str | None = None
    gguf_arch: str | None = None  # llama.cpp architecture (gguf.MODEL_ARCH member name) (None: not supported)


FAMILIES = {
    "llama": Family(hf_class="LlamaForCausalLM", gguf_arch="LLAMA"),
    "mistral": Family(hf_class="MistralForCausalLM", gguf_arch="LLAMA"),
    "qwen2": Family(hf_class="Qwen2ForCausalLM", gguf_arch="QWEN2"),
    "qwen3": Family(hf_class="Qwen3ForCausalLM", gguf_arch="QWEN3"),
    "gemma2": Family(hf_class="Gemma2ForCausalLM", gguf_arch="GEMMA2"),
    "gemma3_text": Family(hf_class="Gemma3ForCausalLM", gguf_arch="GEMMA3"),
    "granite": Family(hf_class="GraniteForCausalLM", gguf_arch="GRANITE"),
    "olmo2": Family(hf_class="Olmo2ForCausalLM", gguf_arch="OLMO2"),
    "phi3": Family(hf_class="Phi3ForCausalLM", gguf_arch="PHI3"),
    "smollm3": Family(hf_class="SmolLM3ForCausalLM", gguf_arch="SMOLLM3"),
    "qwen3_moe": Family(gguf_arch="QWEN3MOE"),
    "olmoe": Family(gguf_arch="OLMOE"),
}


def family(model_type):
    """The registry's row for a model_type (an empty row for a type mlx-lm loads but the table does not name)."""
    return FAMILIES.get(model_type, Family())


def supported(what):
    """The model_types whose row has `what` (hf_class, gguf_arch)."""
    return [t for t, f in FAMILIES.items() if getattr(f, what)]


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
