"""Run configuration: a plain dataclass, loadable from YAML, with command-line overrides on top."""

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .errors import GiftError

METHODS = ("gift", "shadow-ft", "direct", "gift-base")
NUMBER_TYPES = {int: int, float: float, Optional[int]: int}


@dataclass
class TrainConfig:
    # models and data
    base: Optional[str] = None  # Hub id or folder of the pretrained model the adapter is trained on
    instruct: Optional[str] = None  # Hub id or folder: chat template, confidences, merge target
    data: Optional[str] = None  # folder with train/valid(/test).jsonl, or one .jsonl file
    adapter_path: str = "adapters"
    method: str = "gift"  # gift | shadow-ft | direct | gift-base
    scores_path: Optional[str] = None  # folder of cached score files (default: <adapter_path>/scores)
    online_scores: bool = False  # compute confidences inside the step, instruct held in memory
    # weights w = max(q, floor)^gamma
    floor: float = 1e-4
    gamma: float = 1.0
    # LoRA (paper: rank 64, alpha 128, dropout 0.05, every linear projection of every block)
    fine_tune_type: str = "lora"  # lora | dora
    lora_rank: int = 64
    lora_alpha: float = 128.0
    lora_dropout: float = 0.05
    lora_keys: Optional[list] = None  # e.g. [self_attn.q_proj, mlp.down_proj]; None: every linear layer
    num_layers: int = -1  # last N blocks; -1: all
    # optimization (paper: lr 2e-4, 1 epoch, global batch 256, warmup ratio 0.1, cosine)
    iters: Optional[int] = None  # optimizer steps; None: derived from epochs
    epochs: float = 1.0
    batch_size: int = 4  # micro-batch rows
    grad_accumulation_steps: int = 1  # global batch = batch_size * grad_accumulation_steps
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_seq_length: int = 2048
    pad_lengths: int = 8  # batches are padded to one of at most this many lengths fitted to the data
    grad_checkpoint: bool = False
    seed: int = 0
    # bookkeeping
    steps_per_report: int = 10
    steps_per_eval: int = 50
    val_batches: int = 25  # -1: the whole validation set
    save_every: int = 100
    keep_checkpoints: int = 3  # full-state checkpoints (adapter + optimizer + RNG) kept for --resume
    resume: bool = False  # continue from the latest checkpoint in adapter_path
    skip_nonfinite: bool = False  # skip a step whose loss is NaN/Inf instead of stopping
    trust_remote_code: bool = False
    report_to: Optional[str] = None  # wandb and/or swanlab (comma-separated), through mlx-lm's callbacks
    project_name: Optional[str] = None  # the W&B / SwanLab project (default: gift-mlx)
    extra: dict = field(default_factory=dict)  # free-form notes copied into the run record

    def validate(self):
        """Every field, for training."""
        self.validate_options()
        if self.method not in METHODS:
            raise GiftError(f"method: '{self.method}' is not one of {', '.join(METHODS)}")
        if not self.data:
            raise GiftError("data: required (a folder with train.jsonl or a .jsonl file)")
        if not self.instruct:
            raise GiftError("instruct: required (its chat template formats the data for every method)")
        if self.method != "direct" and not self.base:
            raise GiftError(f"base: required for method '{self.method}'")
        return self

    def validate_options(self):
        """The numeric and choice fields (all that scoring needs besides the models and data)."""
        if self.fine_tune_type not in ("lora", "dora"):
            raise GiftError(f"fine_tune_type: '{self.fine_tune_type}' is not lora or dora")
        if self.num_layers == 0 or self.num_layers < -1:
            raise GiftError(f"num_layers: must be -1 (all) or at least 1, got {self.num_layers}")
        for name in ("batch_size", "grad_accumulation_steps", "lora_rank", "max_seq_length", "pad_lengths",
                     "steps_per_report", "steps_per_eval", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise GiftError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("learning_rate", "lora_alpha", "epochs", "gamma", "floor"):
            if not getattr(self, name) > 0:
                raise GiftError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.iters is not None and self.iters < 1:
            raise GiftError(f"iters: must be at least 1, got {self.iters}")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise GiftError("lora_dropout and warmup_ratio must lie in [0, 1)")
        for service in (self.report_to or "").split(","):
            service = service.strip().lower()
            if service and service not in ("wandb", "swanlab"):
                raise GiftError(f"report_to: '{service}' is not wandb or swanlab")
            if service and importlib.util.find_spec(service) is None:
                raise GiftError(f"report_to: {service} is not installed (pip install 'gift-mlx[{service}]')")
        return self

    @property
    def lora_scale(self):
        return self.lora_alpha / self.lora_rank


def load_config(path=None, overrides=None, cls=TrainConfig):
    """Defaults < YAML file < overrides (None values in overrides are ignored)."""
    values = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise GiftError(f"{path}: cannot read config ({str(e).splitlines()[0]})")
        if not isinstance(values, dict):
            raise GiftError(f"{path}: config must be a mapping of field: value")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise GiftError(f"{path or 'config'}: unknown field(s): {', '.join(unknown)}")
    config = cls(**values)
    for name, f in fields.items():  # YAML gives ints where floats are meant, and strings by mistake
        value, kind = getattr(config, name), NUMBER_TYPES.get(f.type)
        if kind is None or (value is None and f.type == Optional[int]):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise GiftError(f"{path or 'config'}: field '{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        setattr(config, name, kind(value))
    return config
