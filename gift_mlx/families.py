"""The registry of model families: what each model_type needs to be loaded, trained, merged and exported.

Every family-specific fact lives here (and only here): the transformers class an HF export names, the llama.cpp
architecture a GGUF export names, and how a config written by transformers is translated into what mlx-lm reads.
Merge, export, pair-check and the tests read this table. A new family is a new row.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    hf_class: str | None = None  # transformers architecture written by --format hf (None: not supported)
    gguf_arch: str | None = None  # llama.cpp architecture (gguf.MODEL_ARCH member name) (None: not supported)


FAMILIES = {
    "llama": Family(hf_class="LlamaForCausalLM", gguf_arch="LLAMA"),
    "mistral": Family(hf_class="MistralForCausalLM"),
    "qwen2": Family(hf_class="Qwen2ForCausalLM", gguf_arch="QWEN2"),
    "qwen3": Family(hf_class="Qwen3ForCausalLM"),
}


def family(model_type):
    """The registry's row for a model_type (an empty row for a type mlx-lm loads but the table does not name)."""
    return FAMILIES.get(model_type, Family())


def supported(what):
    """The model_types whose row has `what` (hf_class, gguf_arch)."""
    return [t for t, f in FAMILIES.items() if getattr(f, what)]
