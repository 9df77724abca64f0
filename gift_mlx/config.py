"""Run configuration: plain dataclasses, loadable from YAML, with command-line overrides on top, and the one
validation layer every command's options go through (types, ranges, finiteness).

A field's bounds live in its metadata (`bounded(...)`); `check_fields` checks every field of a dataclass
against its annotation and bounds, so a YAML value and a command-line flag are held to the same rules, and
`check_value` does the same for a single option of a command without a config class (merge's --scale).
"""

import dataclasses
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .errors import GiftError
from .outputs import nonfinite_at

METHODS = ("gift", "shadow-ft", "direct", "gift-base", "dft")
COUNT_MAX = 2**31 - 1  # steps, rows, tokens, samples: beyond this a value is a typo, not a plan
SEED_RANGE = (0, 2**64 - 1)  # what mx.random.seed and numpy's generators accept
FLOAT32_TINY = 1.1754944e-38  # the smallest normal float32
EXTRA_DEPTH, EXTRA_ITEMS = 32, 10_000  # `extra` is notes for the run record, not a data store
# Sampling divides log-probabilities by the temperature; the top token's is at least -log(vocabulary), about -12.5
# for 262k tokens, and divided by the temperature it must stay finite in float16 (at most 65504), the narrowest
# type logits come in: 12.5 / 65504 = 1.9e-4. Below, every scaled logit is -inf and mlx-lm samples a random
# token (in float32 from 3.7e-38 down). 0 is greedy decoding.
TEMPERATURE_MIN = 2e-4
# alpha / rank (mlx-lm's scale): the update scale·BA shrinks with it, since Adam's steps on B do not grow to
# make up for it (toy pair, 8 steps: scale 2 gave ‖ΔW‖/‖W‖ = 0.078, scale 1e-3 gave 4e-5); below, it changes
# nothing.
LORA_SCALE_MIN = 1e-3


def bounded(default, lo=None, hi=None, *, open_lo=False, open_hi=False, default_factory=None):
    """A dataclass field with bounds [lo, hi] (open_lo / open_hi: the bound itself is excluded)."""
    meta = {"lo": lo, "hi": hi, "open_lo": open_lo, "open_hi": open_hi}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _kind(annotation):
    """(python type, optional) for the annotations the config classes use."""
    optional = getattr(annotation, "__origin__", None) is not None and type(None) in getattr(annotation, "__args__", ())
    if optional:
        annotation = next(a for a in annotation.__args__ if a is not type(None))
    return annotation, optional


def _type_name(kind):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list of strings", dict: "a mapping"}[kind]


def check_value(name, value, kind, lo=None, hi=None, open_lo=False, open_hi=False, optional=False, where=None):
    """`value` converted to `kind` (int, float, bool, str, list, dict) after checking type, finiteness and
    range; a GiftError naming `name` (and `where`, the config file) otherwise."""
    if value is None and optional:
        return None
    prefix = f"{where}: field '{name}'" if where else f"{name}:"
    bad_type = GiftError(f"{prefix} must be {_type_name(kind)}, got {value!r}"[:300])
    if kind is bool:
        if not isinstance(value, bool):  # YAML "no" is a string, not False: refuse it rather than guess
            raise bad_type
        return value
    if kind in (str, list):
        if not (isinstance(value, str) if kind is str else
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad_type
        try:  # a lone surrogate (YAML "\ud800", a shell's broken bytes) is no text a path or tokenizer takes
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise GiftError(f"{prefix} {'is ' if where else ''}not valid Unicode ({e.reason})")
        return value
    if kind is dict:
        if not isinstance(value, dict):
            raise bad_type
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_type
    if isinstance(value, float) and not math.isfinite(value):
        raise GiftError(f"{name}: must be a finite number, got {value}")
    if kind is int:
        if value != int(value):
            raise bad_type
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):  # an integer too large for a float
            raise GiftError(f"{name}: must be a finite number, got {value}")
    if lo is not None and (value < lo or (open_lo and value == lo)):
        if open_lo and lo == 0:
            raise GiftError(f"{name}: must be positive, got {value}")
        raise GiftError(f"{name}: must be at least {lo}, got {value}" if not open_lo else
                        f"{name}: must be more than {lo}, got {value}")
    if hi is not None and (value > hi or (open_hi and value == hi)):
        raise GiftError(f"{name}: must be at most {hi}, got {value}" if not open_hi else
                        f"{name}: must be less than {hi}, got {value}")
    return value


def check_sampling(temperature, top_p):
    """(temperature, top_p) of a sampling command: temperature 0 (greedy) or from TEMPERATURE_MIN to 100, top_p
    in (0, 1] and not so small that top_p times the probability mass is 0 in float32 (no token would be kept)."""
    temperature = check_value("--temperature", temperature, float, 0, 100)
    top_p = check_value("--top-p", top_p, float, 0, 1, open_lo=True)
    if 0 < temperature < TEMPERATURE_MIN:
        raise GiftError(f"--temperature: must be 0 (greedy) or at least {TEMPERATURE_MIN}, got {temperature} "
                        "(below, logits / temperature overflow and every token is drawn at random)")
    if top_p < FLOAT32_TINY:
        raise GiftError(f"--top-p: must be at least {FLOAT32_TINY}, got {top_p} (below, top-p times the "
                        "probability mass is 0 in float32 and no token is kept)")
    return temperature, top_p


def check_fields(obj, where=None, flags=False):
    """Check (and convert: YAML gives ints where floats are meant) every field of a config dataclass;
    errors name the field, or with flags=True the command-line option (--top-p)."""
    for f in dataclasses.fields(obj):
        kind, optional = _kind(f.type)
        meta = {k: f.metadata.get(k) for k in ("lo", "hi")}
        meta.update(open_lo=bool(f.metadata.get("open_lo")), open_hi=bool(f.metadata.get("open_hi")))
        name = "--" + f.name.replace("_", "-") if flags else f.name
        value = check_value(name, getattr(obj, f.name), kind, optional=optional, where=where, **meta)
        setattr(obj, f.name, value)
    return obj


@dataclass
class TrainConfig:
    # models and data
    base: Optional[str] = None  # Hub id or folder of the pretrained model the adapter is trained on
    instruct: Optional[str] = None  # Hub id or folder: chat template, confidences, merge target
    data: Optional[str] = None  # folder with train/valid(/test).jsonl, or one .jsonl file
    adapter_path: str = "adapters"
    method: str = "gift"  # gift | shadow-ft | direct | gift-base | dft
    scores_path: Optional[str] = None  # folder of cached score files (default: <adapter_path>/scores)
    online_scores: bool = False  # compute confidences inside the step, instruct held in memory
    pair_check: Optional[bool] = None  # measure base vs instruct first; None: when both are on this machine
    # weights w = max(q, floor)^gamma
    floor: float = bounded(1e-4, 0, 1, open_lo=True)
    gamma: float = bounded(1.0, 0, 1e6, open_lo=True)
    # LoRA (paper: rank 64, alpha 128, dropout 0.05, every linear projection of every block)
    fine_tune_type: str = "lora"  # lora | dora
    lora_rank: int = bounded(64, 1, 2**16)
    lora_alpha: float = bounded(128.0, 0, 1e6, open_lo=True)
    lora_dropout: float = bounded(0.05, 0, 1, open_hi=True)
    lora_keys: Optional[list] = None  # e.g. [self_attn.q_proj, mlp.down_proj]; None: every linear layer
    num_layers: int = bounded(-1, None, 2**16)  # last N blocks; -1: all
    # optimization (paper: lr 2e-4, 1 epoch, global batch 256, warmup ratio 0.1, cosine)
    iters: Optional[int] = bounded(None, 1, COUNT_MAX)  # optimizer steps; None: derived from epochs
    epochs: float = bounded(1.0, 0, 1e6, open_lo=True)
    batch_size: int = bounded(4, 1, 2**20)  # micro-batch rows
    grad_accumulation_steps: int = bounded(1, 1, 2**16)  # global batch = batch_size * grad_accumulation_steps
    learning_rate: float = bounded(2e-4, 0, 1e3, open_lo=True)
    warmup_ratio: float = bounded(0.1, 0, 1, open_hi=True)
    weight_decay: float = bounded(0.0, 0, 1e3)
    max_seq_length: int = bounded(2048, 1, 2**24)
    pad_lengths: int = bounded(8, 1, 64)  # batches are padded to one of at most this many lengths fitted to the data
    grad_checkpoint: bool = False
    seed: int = bounded(0, *SEED_RANGE)
    # bookkeeping
    steps_per_report: int = bounded(10, 1, COUNT_MAX)
    steps_per_eval: int = bounded(50, 1, COUNT_MAX)
    val_batches: int = bounded(25, -1, COUNT_MAX)  # -1: the whole validation set; 0: no validation (as mlx_lm.lora)
    save_every: int = bounded(100, 1, COUNT_MAX)
    keep_checkpoints: int = bounded(3, 1, 10_000)  # full-state checkpoints (adapter + optimizer + RNG) kept for --resume
    resume: bool = False  # continue from the latest checkpoint in adapter_path
    overwrite: bool = False  # start afresh in an adapter_path that holds another run (its checkpoints are removed)
    skip_nonfinite: bool = False  # skip a step whose loss is NaN/Inf instead of stopping
    trust_remote_code: bool = False
    report_to: Optional[str] = None  # wandb and/or swanlab (comma-separated), through mlx-lm's callbacks
    project_name: Optional[str] = None  # the W&B / SwanLab project (default: gift-mlx)
    extra: dict = field(default_factory=dict)  # free-form notes copied into the run record

    def validate(self):
        """Every field, for training."""
        self.validate_options()
        if not self.data:
            raise GiftError("data: required (a folder with train.jsonl or a .jsonl file)")
        if not self.instruct:
            raise GiftError("instruct: required (its chat template formats the data for every method)")
        if self.method != "direct" and not self.base:
            raise GiftError(f"base: required for method '{self.method}'")
        return self

    def validate_options(self, where=None):
        """Types, ranges and finiteness of every field, and the rules between fields."""
        check_fields(self, where)
        if self.method not in METHODS:
            raise GiftError(f"method: '{self.method}' is not one of {', '.join(METHODS)}")
        if self.fine_tune_type not in ("lora", "dora"):
            raise GiftError(f"fine_tune_type: '{self.fine_tune_type}' is not lora or dora")
        if self.lora_scale < LORA_SCALE_MIN:
            raise GiftError(f"lora_alpha: alpha / rank = {self.lora_alpha} / {self.lora_rank} = {self.lora_scale:.3g} "
                            f"is below {LORA_SCALE_MIN}: the adapter's update scale·BA would not change the model "
                            "(the paper: alpha 128 at rank 64)")
        if self.num_layers == 0 or self.num_layers < -1:
            raise GiftError(f"num_layers: must be -1 (all) or at least 1, got {self.num_layers}")
        for name in ("base", "instruct", "data", "adapter_path", "scores_path"):
            if getattr(self, name) == "":
                raise GiftError(f"{name}: must not be empty")
        if self.resume and self.overwrite:
            raise GiftError("--resume and --overwrite exclude each other (continue a run, or start it afresh)")
        # Every weight is at least floor^gamma; if that is 0 in float32, a batch of confident-free tokens
        # has Σw = 0 and the loss Σw·ℓ/Σw is undefined.
        if self.gamma * math.log10(self.floor) < math.log10(FLOAT32_TINY):
            raise GiftError(f"gamma: floor^gamma = {self.floor}^{self.gamma} underflows to 0 in float32, so "
                            "weights of unconfident tokens vanish and a step's Σw can be 0; lower --gamma "
                            "or raise --floor")
        check_extra(self.extra, where)
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


def check_extra(extra, where=None):
    """`extra` goes into the run record (JSON) at the end of a run: refuse now what JSON cannot hold (NaN,
    infinity) and what would take long to write (deep nesting, very many items)."""
    name = lambda at: f"{where}: field '{at}'" if where else f"{at}:"  # noqa: E731
    count, stack = 0, [(extra, 0)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > EXTRA_DEPTH or count > EXTRA_ITEMS:
            raise GiftError(f"{name('extra')} nested deeper than {EXTRA_DEPTH} levels or holds more than "
                            f"{EXTRA_ITEMS} items; keep it to short notes")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((v, depth + 1) for v in children)
    bad = nonfinite_at(extra)
    if bad:
        raise GiftError(f"{name('extra.' + bad)} must be a finite number (the run record is JSON)")


class _NoAliasLoader(yaml.SafeLoader):
    """A config has no use for YAML anchors and aliases, and nested aliases expand exponentially (a
    'billion laughs' file would hang the run when its record is written)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: aliases (*name) are not supported in a config")
        return super().compose_node(parent, index)


def load_config(path=None, overrides=None, cls=TrainConfig):
    """Defaults < YAML file < overrides (None values in overrides are ignored), then checked."""
    values = {}
    if path:
        try:
            values = yaml.load(Path(path).read_text(), Loader=_NoAliasLoader) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise GiftError(f"{path}: cannot read config ({str(e).splitlines()[0]})")
        except RecursionError:
            raise GiftError(f"{path}: cannot read config (nested too deeply)") from None
        if not isinstance(values, dict):
            raise GiftError(f"{path}: config must be a mapping of field: value")
        if not all(isinstance(k, str) for k in values):
            raise GiftError(f"{path}: field names must be strings, got {[k for k in values if not isinstance(k, str)][0]!r}")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise GiftError(f"{path or 'config'}: unknown field(s): {', '.join(unknown)}")
    check_fields(cls(**values), where=path or "config")  # the file's own values, named as its fields
    if "extra" in values:
        check_extra(values["extra"], path or "config")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = cls(**values)
    check_fields(config)
    return config
