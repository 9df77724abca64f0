"""`gift export-adapter`: an mlx-lm LoRA adapter rewritten as a PEFT adapter for the instruct model.

PEFT stores A as (r, in) and B as (out, r), the transposes of mlx-lm's, under `base_model.model.<module>`, where
<module> is transformers' module path: mlx-lm's, renamed where families.py's NAME MAP says so (checked against
the instruct model's checkpoint when it is a local folder).
"""

from pathlib import Path

from .adapters import LAYER_PATH, read_adapter
from .errors import GiftError
from .export import build_record, check_scale, write_card
from .export_hf import read_checkpoint, tensor_names
from .families import SWITCH, hf_names
from .models import model_ref, read_config
from .outputs import output_folder, save_tensors, write_json


def peft_targets(paths):
    """target_modules (+ layers_to_transform) that select exactly the adapted modules in PEFT."""
    parts = [LAYER_PATH.fullmatch(p) for p in paths]
    if all(parts):
        layers = sorted({int(m["index"]) for m in parts})
        suffixes = sorted({m["suffix"] for m in parts})
        if len(layers) * len(suffixes) == len(paths):  # every suffix in every layer: PEFT's own idiom
            return suffixes, layers
    return sorted(paths), None  # irregular: full module names, matched exactly


def peft_config(adapter, instruct, scale, paths):
    targets, layers = peft_targets(list(paths.values()))
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


def module_paths(adapter, instruct):
    """{mlx-lm module path: transformers module path} of every adapted layer."""
    experts = [p for p in adapter.layers if SWITCH.search(p)]
    if experts:
        raise GiftError(f"{adapter.path}: adapts the MoE experts ({experts[0]}, ...): transformers holds an MoE "
                        "layer's experts as fused 3-D parameters (experts.gate_up_proj, experts.down_proj), which "
                        "PEFT's LoRA on modules does not reach and gift does not write for PEFT's "
                        "target_parameters; use `gift merge --format hf`, or train with "
                        "lora_keys that leave out mlp.switch_mlp.*")
    local = instruct is not None and Path(instruct).is_dir()
    model_type = read_config(instruct).get("model_type") if local else None
    checkpoint = read_checkpoint(instruct) if local else None
    paths = {}
    for path in adapter.layers:
        if checkpoint is not None:
            names = tensor_names(model_type, path, checkpoint)
            if not names:
                raise GiftError(f"{adapter.path}: no module {' or '.join(hf_names(model_type, path))} in the "
                                f"checkpoint of {instruct}")
            paths[path] = names[0][0].removesuffix(".weight")
        else:  # no HF checkpoint at hand (a Hub id, an MLX folder): the family's first renaming, unchecked
            paths[path] = (hf_names(model_type, path)[1:] or [path])[0]
    return paths


def export_peft(adapter_path, out, instruct=None, scale=1.0, force=False, allow_unfinished=False, log=print):
    """Rewrite an mlx-lm LoRA adapter as a PEFT adapter folder for the instruct model; return its path."""
    scale = check_scale(scale)
    adapter = read_adapter(adapter_path, allow_unfinished, log)
    if adapter.kind != "lora":
        raise GiftError(
            f"{adapter.path}: a DoRA adapter cannot be exported for PEFT: its update depends on the weights it "
            "was trained on, and PEFT would apply it to the instruct weights; use `gift merge --base` instead"
        )
    instruct = model_ref(instruct or adapter.config.get("instruct_model"))  # a local folder by absolute path
    paths = module_paths(adapter, instruct)
    tensors = {}
    for path, t in adapter.layers.items():
        tensors[f"base_model.model.{paths[path]}.lora_A.weight"] = t["lora_a"].T
        tensors[f"base_model.model.{paths[path]}.lora_B.weight"] = t["lora_b"].T
    with output_folder(out, [adapter.path], force) as tmp:
        save_tensors(tmp / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
        write_json(tmp / "adapter_config.json", peft_config(adapter, instruct, scale, paths))
        record = build_record(adapter, "peft-adapter", "peft", instruct_model=instruct, merge_scale=scale)
        usage = (f"python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                 f"model = AutoModelForCausalLM.from_pretrained({instruct!r})\n"
                 f"model = PeftModel.from_pretrained(model, {str(out)!r}).merge_and_unload()\n")
        what = (f"A LoRA adapter in PEFT's layout, trained on `{record['base_model']}` with method "
                f"`{record['method']}` (GIFT transfer), to apply to the instruct model `{instruct}`.")
        write_card(tmp, Path(out).name, record, what, usage, "peft")
    return Path(out)


