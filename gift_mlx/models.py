"""Loading models and tokenizers (Hub ids or local folders) through mlx-lm, with one-line errors, also for an
exception raised later in their code (crash_line)."""

import json
import math
import os
import sys
import traceback
import weakref
from pathlib import Path

from .errors import GiftError
from .families import check_rope, translate_config

# Config keys that must agree for an adapter trained on one model to fit another.
SHAPE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size",
)


def _first_line(e):
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def check_model_arg(path_or_id):
    """A local-looking path that does not exist is an error here, not sent to the Hub as a repo id."""
    p = Path(path_or_id)
    if not p.exists() and (p.is_absolute() or path_or_id.startswith(".") or path_or_id.count("/") != 1):
        raise GiftError(f"{path_or_id}: no such model folder (and not a Hugging Face id 'org/name')")


def model_ref(path_or_id):
    """How records name a model: a local folder by its absolute path, so that a record read from another
    folder (merge, export, resume, a PEFT config) still finds it; a Hub id as it is."""
    if path_or_id is None or not Path(path_or_id).exists():
        return path_or_id
    return os.path.abspath(path_or_id)


def load_model(path_or_id, adapter_path=None, lazy=False, trust_remote_code=False):
    """mlx_lm.utils.load with clear errors and the config as transformers wrote it translated for mlx-lm
    (families.translate_config); returns (model, tokenizer, config)."""
    from mlx_lm.utils import load

    check_model_arg(str(path_or_id))
    where, translated = mlx_config_fields(path_or_id)
    try:
        model, tokenizer, config = load(
            str(path_or_id), model_config=translated, adapter_path=adapter_path, lazy=lazy, return_config=True,
            trust_remote_code=trust_remote_code,
        )
    except GiftError:
        raise
    except Exception as e:  # mlx-lm raises many types; turn them into one line naming the model
        raise GiftError(f"{path_or_id}: cannot load model: {_first_line(e)}")
    check_rope(model, config, where)
    return remember((model, tokenizer, config), path_or_id)


def mlx_config_fields(path_or_id):
    """(config.json path, the fields mlx-lm must be given beyond it to build the user's model). The config is
    read and its fields type-checked here (read_config: one line naming a bad field, before mlx-lm's code trips
    over it); a model that cannot be fetched, or has no config.json, gets no fields: mlx-lm's load says why."""
    try:
        folder = local_path(path_or_id)
    except GiftError:
        return path_or_id, {}
    where = folder / "config.json"
    if not where.is_file():
        return where, {}
    return where, translate_config(read_config(folder), where)[0]


def load_tokenizer(path_or_id, chat=False):
    """The tokenizer alone, without loading weights; chat=True: it must have a chat template."""
    from mlx_lm.utils import load_tokenizer as _load_tokenizer

    check_model_arg(str(path_or_id))
    try:
        tokenizer = _load_tokenizer(str(path_or_id))
        _note([tokenizer], path_or_id)
    except Exception as e:
        raise GiftError(f"{path_or_id}: cannot load tokenizer: {_first_line(e)}")
    if chat:
        check_chat_template(tokenizer, path_or_id, "the data is formatted in the instruct model's chat template")
    return tokenizer


def check_chat_template(tokenizer, name, why):
    if not getattr(tokenizer, "has_chat_template", False):
        raise GiftError(f"{name}: tokenizer has no chat template ({why})")


def check_vocab(tokenizer, config, name):
    """Every token id the tokenizer can produce must have a row in the model's embedding."""
    rows = config.get("vocab_size")
    if rows and len(tokenizer) > rows:
        raise GiftError(f"{name}: vocabulary of {rows} rows, but the instruct tokenizer has {len(tokenizer)} tokens")


def local_path(path_or_id):
    """A local folder for a Hub id (downloaded on first use) or the folder itself."""
    p = Path(path_or_id)
    if p.exists():
        return p
    from huggingface_hub import snapshot_download
    from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

    check_model_arg(str(path_or_id))
    try:  # the same files mlx_lm.utils.load fetches, so this is a cache hit after a load
        return Path(snapshot_download(str(path_or_id), allow_patterns=DEFAULT_ALLOW_PATTERNS))
    except Exception as e:
        raise GiftError(f"{path_or_id}: cannot fetch from the Hugging Face Hub ({type(e).__name__})")


def cached_path(path_or_id):
    """The local folder of a model whose weights are all on this machine (a folder, or complete in the
    Hugging Face cache), else None; never downloads."""
    p = Path(path_or_id)
    if not p.exists():
        try:
            from huggingface_hub import snapshot_download
            from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

            p = Path(snapshot_download(str(path_or_id), allow_patterns=DEFAULT_ALLOW_PATTERNS, local_files_only=True))
        except Exception:  # not cached, or not a valid repo id
            return None
    index = p / "model.safetensors.index.json"
    try:
        files = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else ()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    complete = all(inside_model(p, f, index).is_file() for f in files) and any(p.glob("*.safetensors"))
    return p if complete and (p / "config.json").is_file() else None


def inside_model(folder, entry, where):
    """folder / entry, a file a model folder names (a shard index entry, a weight file); it must stay inside
    the folder once symlinks are resolved, else another model's weights would be read. A Hugging Face cache
    snapshot's files link into the repo's own blobs/ folder: that folder counts as inside."""
    if not isinstance(entry, str) or not entry:
        raise GiftError(f"{where}: {entry!r} is not a file name")
    folder = Path(folder)
    root = folder.resolve()
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        root = root.parent.parent
    path = folder / entry
    if Path(entry).is_absolute() or ".." in Path(entry).parts or not path.resolve().is_relative_to(root):
        raise GiftError(f"{where}: {entry!r} lies outside the model folder {folder}")
    return path


def read_config(path_or_id):
    """config.json of a model, with the fields gift and mlx-lm's models read checked for their types."""
    path = local_path(path_or_id) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise GiftError(f"{path}: cannot read model config ({e})")
    if not isinstance(config, dict):
        raise GiftError(f"{path}: expected a JSON object, got {type(config).__name__}")
    check_config_fields(config, path)
    return config


# Fields that mlx-lm's ModelArgs (models/*.py) take as they are: a string rope_theta reaches the model code and
# fails there (a traceback in the first forward), so each is checked here and named in one line.
POSITIVE_INTS = SHAPE_KEYS[1:] + ("max_position_embeddings", "num_experts", "num_local_experts",
                                  "num_experts_per_tok", "moe_intermediate_size", "sliding_window_pattern")
NUMBERS = ("rope_theta", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps", "partial_rotary_factor",
           "rope_local_base_freq", "query_pre_attn_scalar", "final_logit_softcapping", "attn_logit_softcapping")
BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "rope_traditional", "use_sliding_window")
OBJECTS = ("rope_scaling", "rope_parameters", "quantization", "quantization_config", "text_config")


def check_config_fields(config, path, prefix=""):
    """Type-check the fields of POSITIVE_INTS, NUMBERS, BOOLS and OBJECTS (null allowed) and the
    quantization parameters; a wrapped model's text_config likewise."""
    def bad(key, what):
        raise GiftError(f"{path}: field '{prefix}{key}' must be {what}, got {config[key]!r}"[:300])

    if config.get("model_type") is not None and not isinstance(config["model_type"], str):
        bad("model_type", "a string")
    for key in POSITIVE_INTS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            bad(key, "a positive integer")
    for key in NUMBERS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            bad(key, "a finite number")
    for key in BOOLS:
        if config.get(key) is not None and not isinstance(config[key], bool):
            bad(key, "true or false")
    for key in OBJECTS:
        if config.get(key) is not None and not isinstance(config[key], dict):
            bad(key, "an object")
    quant = config.get("quantization")
    if quant:  # mlx-lm reads group_size and bits (and per-layer entries) from it to build the quantized layers
        for key in ("group_size", "bits"):
            value = quant.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GiftError(f"{path}: field '{prefix}quantization.{key}' must be a positive integer, got {value!r}")
    if isinstance(config.get("text_config"), dict):
        check_config_fields(config["text_config"], path, prefix + "text_config.")


def check_compatible(base_config, instruct_config, base_name="base", instruct_name="instruct"):
    """Base and instruct must share architecture and tensor shapes for the transfer to mean anything."""
    diffs = [
        f"{k}: {base_config.get(k)} vs {instruct_config.get(k)}"
        for k in SHAPE_KEYS
        if base_config.get(k) != instruct_config.get(k)
    ]
    if diffs:
        raise GiftError(f"{base_name} and {instruct_name} differ in architecture: " + "; ".join(diffs))


def nonfinite_weight(model):
    """The name of the model's first float parameter holding NaN or infinity, else None (reads every weight)."""
    from mlx.utils import tree_flatten

    from .outputs import nonfinite

    return next(nonfinite(dict(tree_flatten(model.parameters()))), None)


def wire_memory():
    """On Apple silicon (Metal), raise the wired-memory limit to the device's recommended working set, so a
    large model's weights stay resident instead of being paged, as mlx-lm's trainer (mlx_lm/tuner/trainer.py,
    train()) and generator (mlx_lm/generate.py: wired_limit(), BatchGenerator.__init__) do, through the same
    mlx_lm.utils.maybe_set_recommended_wired_limit (mx.set_wired_limit(mx.device_info()
    ["max_recommended_working_set_size"])). Nothing on CPU; returns the previous limit or None."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return None
    from mlx_lm.utils import maybe_set_recommended_wired_limit

    return maybe_set_recommended_wired_limit()


def cpu_float32(model, name, log=print, share=0.4):
    """On a CPU, compute in float32: cast a float16/bfloat16 model, and dequantize a quantized one (mlx-lm's
    dequantize_model), if the float32 copy takes at most `share` of the memory.

    MLX's CPU backend multiplies half-precision matrices without BLAS: a forward pass of the benchmark
    model took 10.3 s in bfloat16 and 0.77 s in float32; its 4-bit matmul ran at ~0.35 GFLOP/s with bfloat16
    activations (3 with float32 ones) against ~240 for float32 with OpenBLAS (docs/benchmarks.md). Dequantized
    weights hold exactly the quantized values, so the model computes the same function and an adapter trained
    on it fits the quantized model. GPUs, a copy too large for memory, and GIFT_CPU_FLOAT32=0 keep the weights
    as they are. For computing only: merge never calls this.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    params = [v for _, v in tree_flatten(model.parameters())]
    half = [v for v in params if v.dtype in (mx.float16, mx.bfloat16)]
    quantized = [m for _, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    if mx.default_device() != mx.cpu or os.environ.get("GIFT_CPU_FLOAT32") == "0" or not (half or quantized):
        return model
    packed = {id(a) for m in quantized for a in (m.weight, m.scales, m.get("biases")) if a is not None}
    floats = sum(v.size for v in params if id(v) not in packed)
    floats += sum(m.weight.shape[0] * m.weight.shape[1] * 32 // m.bits for m in quantized)
    need = 4 * floats + sum(v.nbytes for v in params)  # the float32 copy beside the weights as they are
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    what = f"{quantized[0].bits}-bit" if quantized else str(half[0].dtype)
    if need > share * memory:
        log(f"{name}: kept in {what} on CPU (float32 would take {need / 1e9:.1f} of {memory / 1e9:.0f} GB; "
            f"{what} matmuls are 10-500x slower on CPU)")
        return model
    if quantized:
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)
    model.set_dtype(mx.float32)
    log(f"{name}: float32 on CPU{' (dequantized)' if quantized else ''} ({need / 1e9:.1f} GB; "
        f"{what} matmuls are 10-500x slower there)")
    return model


class NonFiniteLogits(GiftError):
    """A model's logits are not finite: nothing it generates can be used (a chat cannot go on either)."""


class FiniteSampler:
    """An mlx-lm sampler that notes whether any step's log-probabilities hold a NaN: a NaN or +Inf logit, from
    non-finite weights or an overflow. The flag is computed with the sampled tokens (mx.depends), so reading it
    after the tokens costs neither a pass over the weights nor an extra wait; `check` raises one error line."""

    def __init__(self, sampler, name):
        self.sampler, self.name, self.flags = sampler, name, []

    def __call__(self, logprobs):
        import mlx.core as mx

        bad = mx.isnan(logprobs).any()
        self.flags.append(bad)
        return mx.depends(self.sampler(logprobs), bad)

    def check(self, pending=1):
        """Raise if a finished step had non-finite logits; the last `pending` steps may still be computing."""
        done = self.flags[: max(len(self.flags) - pending, 0)]
        if any(flag.item() for flag in done):
            raise NonFiniteLogits(f"{self.name}: the model's logits are not finite (NaN/Inf): its weights hold NaN/Inf "
                            "values or its activations overflow; nothing it generated is used")
        del self.flags[: len(done)]


# ---- exceptions raised inside model code ----
# A crash in mlx-lm's model code (or a model's own code) is no user mistake gift could name, but the user must
# learn which model and command it came from: cli.py reports every unforeseen exception through crash_line.

_LOADED = {}  # id(module) -> (weak reference, name): which loaded model a module that crashed belongs to
_FOLDERS = set()  # the loaded local model folders: a module there (trust_remote_code) is model code too


def remember(loaded, name):
    """Note the model (and the folder) every module and the tokenizer of a loaded (model, tokenizer, config)
    belong to."""
    _note([m for _, m in loaded[0].named_modules()], name)
    _note([loaded[1]], name)
    return loaded


def _note(objects, name):
    for obj in objects + [getattr(obj, "_tokenizer", None) for obj in objects]:  # mlx-lm's wrapper and HF's
        if obj is not None:
            _LOADED[id(obj)] = (weakref.ref(obj), str(name))
    if Path(str(name)).is_dir():
        _FOLDERS.add(os.path.realpath(name))


def _model_code(filename):
    """Whether a source file is model code: mlx-lm's, transformers' (tokenizers, chat templates), or a module
    shipped in a loaded model's folder."""
    path = os.path.realpath(filename)
    packages = [sys.modules[name].__file__ for name in ("mlx_lm", "transformers") if name in sys.modules]
    roots = [os.path.dirname(os.path.realpath(f)) for f in packages] + list(_FOLDERS)
    return any(path.startswith(root + os.sep) for root in roots)


def _where(frame, line):
    """file:line in function, the file shortened to its package path (mlx_lm/models/llama.py)."""
    parts = Path(frame.f_code.co_filename).parts
    for anchor in ("site-packages", "gift_mlx"):
        parts = parts[parts.index(anchor) + (anchor != "gift_mlx"):] if anchor in parts else parts
    short = "/".join(parts[-3:])
    return f"{short}:{line} in {frame.f_code.co_name}"


def _owner(frames):
    """The name of the loaded model whose module runs in one of `frames` (outermost first), else None."""
    for frame, _ in frames:
        entry = _LOADED.get(id(frame.f_locals.get("self")))
        if entry and entry[0]() is frame.f_locals.get("self"):
            return entry[1]
    return None


def crash_line(e, command):
    """One line for an exception gift did not foresee: the model, command and exception when it was raised
    in model code (a model gift loaded ran into it), else an internal error with the place it was raised."""
    frames = list(traceback.walk_tb(e.__traceback__))
    inside = [(f, n) for f, n in frames if _model_code(f.f_code.co_filename)]
    what, command = f"{type(e).__name__}: {_first_line(e)}", " ".join(filter(None, ("gift", command)))
    if inside:
        owner = _owner(inside)
        return (f"{owner + ': ' if owner else ''}{command}: the model code raised {what} "
                f"({_where(*inside[-1])})")
    return f"{command}: internal error: {what}" + (f" ({_where(*frames[-1])})" if frames else "")
