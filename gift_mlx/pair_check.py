"""`gift pair-check`: how far apart a BASE and an INSTRUCT model are, and whether they form a transfer pair.

The transfer (gift-method.md, step 4) adds an update learned on the base to the instruct model; that only
means something when the two share architecture, tensor shapes and token ids, and are close in weight space.
For every tensor present in both models, with ΔW = W_instruct − W_base:

    relative distance  ‖ΔW‖_F / ‖W_base‖_F
    cosine             ⟨W_base, W_instruct⟩ / (‖W_base‖_F ‖W_instruct‖_F)
    L1 ratio σ         Σ|ΔW| / (Σ|W_instruct| + Σ|W_base|)      (Shadow-FT's measure)

summed per module type, per layer and over all matrices (tensors of two or more dimensions: every linear
layer and the embeddings). "Overall" is sqrt(Σ ΔW²) / sqrt(Σ W_base²) over all matrices, dominated by the
largest ones; "mean per matrix" averages each matrix's relative distance, as the published figures do.

The weights are read tensor by tensor, in chunks of CHUNK elements, each with one positioned read of the
safetensors file into a reused buffer (bfloat16 as its 16 bits shifted into float32), and each chunk is reduced
by BLAS dot products while it is in cache, so the resident memory stays about a few chunks.
Summing is memory-bound: scripts/bench_pair_check.py measures GB/s. Quantized (mlx-community) tensors are
dequantized per block of rows with mx.dequantize; their rounding error then counts as distance, which the
report says. Sums are float32 within a chunk and float64 across chunks; a tensor holding a NaN or an
infinity is an error naming it.
"""

import hashlib
import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np

from . import __version__
from .blas import cores
from .errors import GiftError
from .families import translate_config
from .models import (SHAPE_KEYS, cached_path, check_compatible, inside_model, load_tokenizer, local_path,
                     read_config)
from .outputs import write_json

CHUNK = 1 << 16  # elements per chunk: it stays in cache through the seven reductions (measured fastest)
SUMS = ("base_sq", "inst_sq", "diff_sq", "dot", "diff_abs", "base_abs", "inst_abs")

# Published relative distances (mean per module) of real base/instruct pairs, and one non-pair.
REFERENCE = {"Qwen2.5-0.5B": 0.0715, "Qwen2.5-1.5B": 0.0087, "Qwen2.5-3B": 0.0086, "Qwen2.5-7B": 0.0120,
             "Qwen2.5-32B": 0.0072, "Llama-3.1-8B": 0.035}
NOT_A_PAIR = ("Qwen2.5-7B vs Qwen2.5-Math-7B", 0.95)
CLOSE, FAR, UNRELATED = 0.07, 0.1, 0.5  # verdict bands on the relative distance
KINDS = ("identical", "close", "far", "unrelated")  # the verdicts


# ---- reading ----

def weight_files(folder):
    """{tensor name: file} from model.safetensors.index.json, else every *.safetensors of the folder; every
    file must lie inside the folder (models.inside_model)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            items = list(weight_map.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise GiftError(f"{index}: cannot read the shard index ({e})")
        files = {name: inside_model(folder, f, f"{index}: weight_map[{name!r}]") for name, f in items}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise GiftError(f"{f}: listed in the shard index but missing")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise GiftError(f"{folder}: no *.safetensors weight files")
    out = {}
    for f in files:
        out.update(dict.fromkeys(read_header(inside_model(folder, f.name, folder))[1], f))
    return out


NUMPY = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}  # bfloat16: its bits
DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def read_header(path):
    """(offset of the data, {name: header entry}) of a safetensors file, its offsets checked against its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError("not a safetensors file")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, t in header.items():
            begin, stop = t["data_offsets"]
            width = np.dtype(NUMPY[t["dtype"]]).itemsize if t["dtype"] in NUMPY else None
            if not 0 <= begin <= stop <= size - 8 - n or (width and stop - begin != width * math.prod(t["shape"])):
                raise ValueError(f"tensor {name}: data offsets {begin}-{stop} do not fit the file")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise GiftError(f"{path}: cannot read weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    return 8 + n, header


def read_into(fd, buf, offset):
    """Bytes read from fd at offset into buf: os.preadv (Linux, macOS 11+), else os.pread and a copy."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    data = os.pread(fd, len(buf), offset)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


class Reader:
    """f(i, j): elements i:j of one float tensor as a flat array of `dtype`, read from the file.

    Each chunk is read with one positioned read (os.preadv) into a buffer this reader reuses: a copy out of the
    page cache, with no page-table work (a memory map faulted its pages in one by one, at about a quarter of
    the summing speed), and the resident memory stays a chunk. The array returned is valid until the next call.
    bfloat16 becomes float32 by shifting its 16 bits into the high half.
    """

    def __init__(self, fd, path, offset, entry, dtype):
        self.fd, self.path, self.dtype = fd, path, dtype
        self.raw_dtype, self.bf16 = np.dtype(NUMPY[entry["dtype"]]), entry["dtype"] == "BF16"
        self.start = offset + entry["data_offsets"][0]
        self.buffers = {}

    def __call__(self, i, j):
        x = self._buffer("raw", j - i, self.raw_dtype)
        try:
            got = read_into(self.fd, x.view(np.uint8), self.start + i * x.itemsize)
        except OSError as e:
            raise GiftError(f"{self.path}: cannot read weights ({e.strerror or e})")
        if got != x.nbytes:
            raise GiftError(f"{self.path}: cannot read weights (the file ended early: was it changed while read?)")
        if x.dtype == self.dtype:
            return x
        if self.bf16:
            out = np.left_shift(x, 16, out=self._buffer("wide", j - i, np.uint32), dtype=np.uint32).view(np.float32)
            return out if self.dtype == np.float32 else out.astype(self.dtype)
        out = self._buffer("wide", j - i, self.dtype)
        np.copyto(out, x)
        return out

    def _buffer(self, key, n, dtype):
        """A reused buffer of n elements (a chunk stays in the cache between calls)."""
        buf = self.buffers.get(key)
        if buf is None or len(buf) < n:
            buf = self.buffers[key] = np.empty(n, dtype)
        return buf[:n]


class Weights:
    """A model's tensors from their safetensors headers: float tensors read chunk by chunk (Reader), quantized
    (packed) ones loaded lazily by MLX and dequantized per block of rows."""

    def __init__(self, folder, config, label):
        self.folder, self.label = Path(folder), label  # label: "base MODEL", named by errors
        self.files = weight_files(folder)
        self.headers = {f: read_header(f) for f in sorted(set(self.files.values()))}
        for name, f in self.files.items():
            if name not in self.headers[f][1]:
                raise GiftError(f"{f}: has no tensor {name} (the shard index names it)")
        self.quant = config.get("quantization") or config.get("quantization_config")
        self._shards, self._fds = {}, {}
        names = set(self.files)
        # packed quantized weights come with .scales (and .biases): one logical tensor each
        self.quantized = {n for n in names if n.endswith(".weight") and n[:-len("weight")] + "scales" in names}
        companions = {n[:-len("weight")] + s for n in self.quantized for s in ("scales", "biases")}
        self.names = sorted(names - companions)

    def entry(self, name):
        return self.headers[self.files[name]][1][name]

    def _qparams(self, name):
        module = name[:-len(".weight")]
        q = self.quant if isinstance(self.quant, dict) else {}
        q = q.get(module, q) if isinstance(q.get(module), dict) else q
        return q.get("group_size", 64), q.get("bits", 4), q.get("mode", "affine")

    def shape(self, name):
        shape = tuple(self.entry(name)["shape"])
        if name in self.quantized:
            return shape[:-1] + (self.entry(name[:-len("weight")] + "scales")["shape"][-1] * self._qparams(name)[0],)
        return shape

    def dtype(self, name):
        t = self.entry(name[:-len("weight")] + "scales" if name in self.quantized else name)["dtype"]
        return DTYPE_NAMES.get(t, t.lower())

    def is_float(self, name):
        return name in self.quantized or self.entry(name)["dtype"] in NUMPY

    def order(self, name):
        """Where the tensor lies (file, offset): reading in this order reads each file front to back."""
        return str(self.files[name]), self.entry(name)["data_offsets"][0]

    def reader(self, name, dtype=np.float32):
        """A function (i, j) -> elements i:j of the tensor, flat, as `dtype` (row-aligned i, j if quantized)."""
        if name in self.quantized:
            return self._dequantizer(name, dtype)
        f = self.files[name]
        if f not in self._fds:
            try:
                self._fds[f] = os.open(f, os.O_RDONLY)
            except OSError as e:
                raise GiftError(f"{f}: cannot read weights ({e.strerror or e})")
        return Reader(self._fds[f], f, self.headers[f][0], self.entry(name), dtype)

    def _mx(self, name):
        f = self.files[name]
        if f not in self._shards:
            try:
                self._shards[f] = mx.load(str(f))  # lazy: a tensor is read when it is evaluated
            except (OSError, RuntimeError, ValueError) as e:
                raise GiftError(f"{f}: cannot read weights ({str(e).splitlines()[0]})")
        t = self._shards[f][name]
        return t.reshape(-1, t.shape[-1])

    def _dequantizer(self, name, dtype):
        prefix, cols = name[:-len("weight")], self.shape(name)[-1]
        t, s = self._mx(name), self._mx(prefix + "scales")
        b = self._mx(prefix + "biases") if prefix + "biases" in self.files else None
        group, bits, mode = self._qparams(name)

        def read(i, j):
            r, q = i // cols, j // cols
            w = mx.dequantize(t[r:q], s[r:q], b[r:q] if b is not None else None, group_size=group, bits=bits,
                              mode=mode)
            return np.array(w.astype(mx.float32), dtype=dtype).reshape(-1)
        return read

    def close(self):
        self._shards.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def tensor_sums(base, inst, name, dtype=np.float32):
    """The SUMS of one tensor pair: dot products (BLAS) within chunks of CHUNK elements, float64 across them.

    Reading is memory-bound: each chunk is read once and reduced while it is in cache. A non-finite sum
    means a NaN or infinity in a tensor (an error naming it) or a float32 overflow (summed again in float64).
    """
    shape = base.shape(name)
    size = math.prod(shape)
    unit = shape[-1] if (name in base.quantized or name in inst.quantized) and shape else 1  # whole rows
    step = max(1, CHUNK // unit) * unit
    read_a, read_b = base.reader(name, dtype), inst.reader(name, dtype)
    d, t, ones = np.empty(min(step, size), dtype), np.empty(min(step, size), dtype), np.ones(min(step, size), dtype)
    total = np.zeros(len(SUMS))
    with np.errstate(over="ignore", invalid="ignore"):  # checked below
        for i in range(0, size, step):
            a, b = read_a(i, min(i + step, size)), read_b(i, min(i + step, size))
            k = a.size
            diff = np.subtract(b, a, out=d[:k])
            total += (np.dot(a, a), np.dot(b, b), np.dot(diff, diff), np.dot(a, b),
                      np.dot(np.abs(diff, out=diff), ones[:k]),  # Σ|x| as a dot: faster than abs().sum()
                      np.dot(np.abs(a, out=t[:k]), ones[:k]), np.dot(np.abs(b, out=t[:k]), ones[:k]))
    if np.isfinite(total).all():
        return dict(zip(SUMS, total.tolist()))
    for w in (base, inst):
        check_finite_tensor(w, name, step)
    if dtype == np.float32:
        return tensor_sums(base, inst, name, np.float64)
    raise GiftError(f"{base.label} / {inst.label}: tensor {name}: values too large to measure (their squares "
                    "overflow float64)")


def check_finite_tensor(weights, name, step):
    """GiftError naming the model, tensor and file if the tensor holds a NaN or an infinity."""
    read, size = weights.reader(name, np.float64), math.prod(weights.shape(name))
    for i in range(0, size, step):
        if not np.isfinite(read(i, min(i + step, size))).all():
            raise GiftError(f"{weights.label}: tensor {name} holds NaN or infinite values ({weights.files[name]}); "
                            "these weights are broken: nothing to compare or train on")


def measures(s):
    """Relative distance, cosine and L1 ratio from (summed) SUMS; None where undefined (zero tensors)."""
    rel = math.sqrt(s["diff_sq"] / s["base_sq"]) if s["base_sq"] > 0 else (0.0 if s["diff_sq"] == 0 else None)
    norm = math.sqrt(s["base_sq"] * s["inst_sq"])
    cos = s["dot"] / norm if norm > 0 else None
    l1 = s["base_abs"] + s["inst_abs"]
    return {"relative_distance": rel, "cosine": cos, "l1_ratio": s["diff_abs"] / l1 if l1 > 0 else 0.0}


# ---- naming ----

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


def module_type(name):
    """(layer index or None, type): 'model.layers.3.self_attn.q_proj.weight' -> (3, 'self_attn.q_proj')."""
    m = LAYER.search(name)
    layer, rest = (int(m.group(1)), m.group(2)) if m else (None, re.sub(r"^(model|transformer)\.", "", name))
    return layer, rest[:-len(".weight")] if rest.endswith(".weight") else rest


def summarize(group):
    """Measures of a group of tensor records: over their summed SUMS, plus the mean and range per tensor."""
    total = {k: sum(t[k] for t in group) for k in SUMS}
    rels = [t["relative_distance"] for t in group if t["relative_distance"] is not None]
    return {**measures(total), "tensors": len(group), "parameters": sum(t["parameters"] for t in group),
            "mean_relative_distance": sum(rels) / len(rels) if rels else None,
            "min_relative_distance": min(rels) if rels else None, "max_relative_distance": max(rels) if rels else None}


# ---- checks ----

def _model_info(name, folder, config, weights):
    names = [n for n in weights.names if weights.is_float(n)]
    dtypes = {}
    for n in names:
        dtypes[weights.dtype(n)] = dtypes.get(weights.dtype(n), 0) + 1
    return {"model": str(name), "folder": str(folder), "model_type": config.get("model_type"),
            **{k: config.get(k) for k in SHAPE_KEYS if k != "model_type"},
            "tie_word_embeddings": config.get("tie_word_embeddings"),
            "dtype": max(dtypes, key=dtypes.get) if dtypes else None,
            "quantized": sorted({f"{b}-bit" for b in [weights._qparams(n)[1] for n in weights.quantized]}) or None,
            "parameters": sum(math.prod(weights.shape(n)) for n in names)}


def _examples(items, n=3):
    items = sorted(items)
    return ", ".join(items[:n]) + (f", and {len(items) - n} more" if len(items) > n else "")


def check_tensors(base, inst, base_name, inst_name):
    """Both models hold the same float tensors with the same (dequantized) shapes; else GiftError."""
    b_names = {n for n in base.names if base.is_float(n)}
    i_names = {n for n in inst.names if inst.is_float(n)}
    only_b, only_i = b_names - i_names, i_names - b_names
    if only_b or only_i:
        parts = [f"{len(only_b)} only in {base_name} ({_examples(only_b)})" if only_b else "",
                 f"{len(only_i)} only in {inst_name} ({_examples(only_i)})" if only_i else ""]
        raise GiftError(f"{base_name} and {inst_name} hold different tensors: " + "; ".join(p for p in parts if p))
    wrong = [f"{n} {base.shape(n)} vs {inst.shape(n)}" for n in sorted(b_names) if base.shape(n) != inst.shape(n)]
    if wrong:
        raise GiftError(f"{base_name} and {inst_name} differ in tensor shapes: {_examples(wrong)}")
    return sorted(b_names)


def check_tokenizers(base_folder, inst_folder, base_name, inst_name):
    """Same token ids (or the base's vocabulary a prefix of the instruct's), and an instruct chat template."""
    bt, it = load_tokenizer(str(base_folder)), load_tokenizer(str(inst_folder))
    template = getattr(it, "chat_template", None)
    if not template:
        raise GiftError(f"{inst_name}: tokenizer has no chat template (the training data is formatted with it)")
    bv, iv = bt.get_vocab(), it.get_vocab()
    b_ids, i_ids = {i: t for t, i in bv.items()}, {i: t for t, i in iv.items()}
    special = set(bt.get_added_vocab()) | set(it.get_added_vocab())
    renamed = sorted(i for i in set(b_ids) & set(i_ids) if b_ids[i] != i_ids[i])
    regular = [i for i in renamed if b_ids[i] not in special or i_ids[i] not in special]
    if regular:
        shown = [f"id {i}: {b_ids[i]!r} vs {i_ids[i]!r}" for i in regular[:3]]
        raise GiftError(f"{base_name} and {inst_name} have different tokenizers: {len(regular)} token ids hold "
                        f"other tokens ({'; '.join(shown)})")
    added = len(set(i_ids) - set(b_ids))
    if not renamed and not (set(b_ids) - set(i_ids)):
        vocab = "same" if not added else "prefix"
    else:
        vocab = "compatible"
    base_template = getattr(bt, "chat_template", None)
    return {"vocabulary": vocab, "base_tokens": len(bv), "instruct_tokens": len(iv), "instruct_adds": added,
            "renamed_special_tokens": [[b_ids[i], i_ids[i]] for i in renamed],
            "instruct_chat_template": True,
            "base_chat_template": "same" if base_template == template else ("other" if base_template else "none")}


def verdict(overall, mean):
    """(kind, text) from the relative distances; the larger of overall and mean per matrix decides."""
    d = max(x for x in (overall, mean) if x is not None)
    refs = f"real transfer pairs measure 0.007-0.07, Llama-3.1-8B {REFERENCE['Llama-3.1-8B']}"
    if d == 0:
        return "identical", "identical weights: the instruct model is the base (nothing to transfer between them)"
    if d <= CLOSE:
        return "close", f"a transfer pair: {d:.3g} is in the range of real pairs ({refs})"
    if d <= FAR:
        return "close", f"a transfer pair, at the far end: {d:.3g} ({refs}, Qwen2.5-0.5B {REFERENCE['Qwen2.5-0.5B']})"
    if d < UNRELATED:
        return "far", (f"far apart: {d:.3g} > {FAR}, farther than published transfer pairs ({refs}); an update "
                       "learned on the base may not carry over to the instruct model")
    return "unrelated", (f"not a transfer pair: {d:.3g}, like separately trained models ({NOT_A_PAIR[0]} measure "
                         f"{NOT_A_PAIR[1]}; {refs})")


# ---- the check ----

def all_sums(bw, iw, order, workers):
    """{name: SUMS} of every tensor: float tensors on `workers` threads (numpy and BLAS release the GIL),
    quantized ones (MLX) on this thread; an error is the first tensor's in `order`."""
    plain = [n for n in order if n not in bw.quantized and n not in iw.quantized]
    for n in plain:  # open the files before the threads share them
        bw.reader(n), iw.reader(n)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        sums = dict(zip(plain, pool.map(lambda n: tensor_sums(bw, iw, n), plain)))
    return {n: sums[n] if n in sums else tensor_sums(bw, iw, n) for n in order}


def pair_check(base, instruct, check_tokenizer=True, log=None, workers=None):
    """Compare two models (Hub ids or folders); return a plain dict (see summary_text for its reading).

    Raises GiftError for a pair that cannot be a transfer pair: another architecture, other tensors or shapes,
    other token ids, or an instruct model without a chat template. workers: threads summing (default: the cores).
    """
    workers = workers or cores()
    tic = time.perf_counter()
    base_folder, inst_folder = local_path(base), local_path(instruct)
    base_config, inst_config = read_config(base_folder), read_config(inst_folder)
    check_compatible(base_config, inst_config, str(base), str(instruct))
    bw, iw = Weights(base_folder, base_config, f"base {base}"), Weights(inst_folder, inst_config, f"instruct {instruct}")
    names = check_tensors(bw, iw, str(base), str(instruct))
    tokenizer = check_tokenizers(base_folder, inst_folder, str(base), str(instruct)) if check_tokenizer else None
    info = {"base": _model_info(base, base_folder, base_config, bw),
            "instruct": _model_info(instruct, inst_folder, inst_config, iw)}

    order = sorted(names, key=bw.order)  # each base file front to back
    try:
        sums = all_sums(bw, iw, order, workers)
    finally:
        bw.close(), iw.close()
    records = []
    for name in order:
        shape, (layer, kind) = bw.shape(name), module_type(name)
        records.append({"name": name, "layer": layer, "type": kind, "shape": list(shape),
                        "parameters": math.prod(shape), "matrix": len(shape) >= 2,
                        "quantized": [name in bw.quantized, name in iw.quantized], **sums[name],
                        **measures(sums[name])})
    matrices = [r for r in records if r["matrix"]]
    if not matrices:
        raise GiftError(f"{base}: holds no weight matrices to compare")
    overall = summarize(matrices)
    by_type, by_layer = {}, {}
    for r in records:
        by_type.setdefault(r["type"], []).append(r)
        if r["matrix"]:
            by_layer.setdefault("other" if r["layer"] is None else r["layer"], []).append(r)
    mx.clear_cache()  # hand the buffers back before a caller loads a model
    kind, text = verdict(overall["relative_distance"], overall["mean_relative_distance"])
    quantized = any(any(r["quantized"]) for r in records)
    notes = []
    if quantized:
        notes.append("quantized tensors were dequantized: their rounding error counts as distance (4-bit "
                     "rounding alone is of the order of 0.1 relative), so these figures overstate it; compare "
                     "the float models for a verdict")
    if translated := translate_config(inst_config, inst_folder / "config.json")[1]:
        notes.append(f"config fields translated for mlx-lm: {', '.join(translated)}")
    if tokenizer and tokenizer["vocabulary"] == "prefix":
        notes.append(f"the instruct tokenizer adds {tokenizer['instruct_adds']} tokens after the base's vocabulary")
    if tokenizer and tokenizer["renamed_special_tokens"]:
        notes.append(f"{len(tokenizer['renamed_special_tokens'])} special token ids have other names in the "
                     "instruct tokenizer (reserved tokens given a role)")
    return {
        "base": info["base"], "instruct": info["instruct"], "architecture": "same", "tokenizer": tokenizer,
        "tensors": len(records), "matrices": len(matrices), "quantized": quantized,
        "overall": overall,
        "by_type": {k: summarize(v) for k, v in sorted(by_type.items())},
        "by_layer": {str(k): summarize(v) for k, v in sorted(by_layer.items(), key=lambda kv: (
            isinstance(kv[0], str), kv[0] if isinstance(kv[0], int) else 0))},
        "per_tensor": [{k: v for k, v in r.items() if k not in SUMS} | {"sums": {k: r[k] for k in SUMS}}
                       for r in records],
        "verdict": kind, "verdict_text": text, "notes": notes,
        "seconds": round(time.perf_counter() - tic, 3),
    }


# ---- reading the result ----

def _f(x, fmt=".4f"):
    return "-" if x is None else format(x, fmt)


def one_line(result):
    """'pair: relative distance 0.012 overall (mean per matrix 0.011, cosine 0.9999, σ 0.006): a transfer pair'"""
    o = result["overall"]
    return (f"pair: base -> instruct relative distance {_f(o['relative_distance'])} over all matrices (mean per "
            f"matrix {_f(o['mean_relative_distance'])}, cosine {_f(o['cosine'])}, L1 ratio σ {_f(o['l1_ratio'])}): "
            f"{result['verdict_text']}")


def summary_text(result):
    """The human-readable report of pair_check()'s dict."""
    lines = []
    for role in ("base", "instruct"):
        m = result[role]
        lines.append(f"{role:9} {m['model']}: {m['model_type']}, {m['num_hidden_layers']} layers, hidden "
                     f"{m['hidden_size']}, vocab {m['vocab_size']}, {m['parameters'] / 1e6:.2f}M parameters, "
                     f"{m['dtype']}" + (f", quantized {'/'.join(m['quantized'])}" if m["quantized"] else ""))
    sizes = ", ".join(f"{k} {result['base'][k]}" for k in SHAPE_KEYS if result["base"][k] is not None)
    lines.append(f"architecture: same ({sizes})")
    lines.append(f"tensors: {result['tensors']} in both, same shapes ({result['matrices']} matrices)")
    t = result["tokenizer"]
    if t:
        vocab = {"same": f"same vocabulary ({t['base_tokens']} tokens)",
                 "prefix": f"base's {t['base_tokens']} tokens are a prefix of the instruct's {t['instruct_tokens']}",
                 "compatible": f"compatible vocabularies ({t['base_tokens']} / {t['instruct_tokens']} tokens)"}[t["vocabulary"]]
        lines.append(f"tokenizer: {vocab}; instruct chat template: yes (base: {t['base_chat_template']})")
    o = result["overall"]
    lines += ["", f"overall (all {o['tensors']} matrices): relative distance {_f(o['relative_distance'])} "
                  f"(sqrt ΣΔW² / sqrt ΣW_base²), mean per matrix {_f(o['mean_relative_distance'])} "
                  f"(range {_f(o['min_relative_distance'])}-{_f(o['max_relative_distance'])}), "
                  f"cosine {_f(o['cosine'], '.5f')}, L1 ratio σ {_f(o['l1_ratio'])}", ""]
    header = f"{'':24} {'rel.dist':>9} {'mean':>8} {'range':>15} {'cosine':>9} {'σ':>7} {'tensors':>7}"

    def row(label, s):
        span = f"{_f(s['min_relative_distance'])}-{_f(s['max_relative_distance'])}"
        return (f"{label[:24]:24} {_f(s['relative_distance']):>9} {_f(s['mean_relative_distance']):>8} {span:>15} "
                f"{_f(s['cosine'], '.5f'):>9} {_f(s['l1_ratio']):>7} {s['tensors']:>7}")

    lines += ["per module type", header] + [row(k, s) for k, s in result["by_type"].items()]
    lines += ["", "per layer (matrices)", header] + [row(("layer " + k) if k != "other" else "outside the layers", s)
                                                       for k, s in result["by_layer"].items()]
    lines += ["", f"verdict: {result['verdict_text']}"] + [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


# ---- for gift train and gift merge ----

RESULT_FILE = "pair_check.json"  # written beside an adapter by gift train, reused by gift merge


def fingerprints(base, instruct):
    from .scoring import weights_fingerprint

    return {"base": weights_fingerprint(base), "instruct": weights_fingerprint(instruct)}


def cache_folder():
    """Where gift train keeps measured pairs: $GIFT_CACHE_DIR, else the user cache dir's gift-mlx/pair-check."""
    if os.environ.get("GIFT_CACHE_DIR"):
        return Path(os.environ["GIFT_CACHE_DIR"]) / "pair-check"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gift-mlx" / "pair-check"


def files_identity(*folders):
    """A key for the files of model folders: each file's path, size and mtime, and each safetensors header
    (a rewritten model changes one of them), for this version of the measures. Reads only the headers."""
    h = hashlib.sha256(f"{__version__}:{SUMS}:{CHUNK}".encode())
    for folder in folders:
        folder = Path(folder).resolve()
        for f in sorted(folder.iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
                if f.suffix == ".safetensors":
                    with open(f, "rb") as fh:
                        h.update(fh.read(min(int.from_bytes(fh.read(8), "little"), 1 << 27)))
    return h.hexdigest()[:24]


def cached_check(base, instruct, log):
    """pair_check() of the two models, reused from the cache while their files are unchanged."""
    path = cache_folder() / f"{files_identity(local_path(base), local_path(instruct))}.json"
    try:
        result = json.loads(path.read_text())
        line = f"{one_line(result)} [cached]" if result["verdict"] in KINDS else None
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: measured again
        line = None
    if line:
        log(line)
        return result
    result = pair_check(base, instruct)
    result["fingerprints"] = fingerprints(base, instruct)
    log(f"{one_line(result)} [{result['seconds']:.1f} s]")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    except (OSError, GiftError):
        pass  # a read-only cache costs the next run the measurement, nothing else
    return result


def check_for_training(base, instruct, when=None, log=print):
    """gift train's check: the one-line summary, and a warning for a far pair. when=None measures only when
    both models are already on this machine (it reads every weight once: 2 GB/s of model bytes wanted, see
    scripts/bench_pair_check.py); True forces it (downloading what is missing); False skips it. The result is
    cached (cache_folder) by the models' files: a second run with the same models pays a few file headers.
    Returns the result or None."""
    if when is False:
        return None
    if when is None and not (cached_path(base) and cached_path(instruct)):
        log("pair: not measured (a model is not on this machine yet); `gift pair-check BASE INSTRUCT` measures it")
        return None
    result = cached_check(base, instruct, log)
    if result["verdict"] in ("far", "unrelated"):
        log(f"warning: base and instruct are {'far apart' if result['verdict'] == 'far' else 'not a transfer pair'}: "
            "an update learned on the base is added to a model it was not measured on; see `gift pair-check`")
    return result


def known_result(adapter_folder, base, instruct, log=print):
    """The pair's result for gift merge: the one gift train saved beside the adapter if both models'
    fingerprints still match, else measured now when the base is on this machine (never downloaded), else None."""
    saved = Path(adapter_folder) / RESULT_FILE
    if not base or cached_path(base) is None or cached_path(instruct) is None:
        return None
    if saved.is_file():
        try:
            result = json.loads(saved.read_text())
            if isinstance(result, dict) and result.get("fingerprints") == fingerprints(base, instruct):
                return result
        except (OSError, ValueError):
            pass
    log(f"pair: measuring {base} -> {instruct} (gift pair-check)")
    return pair_check(base, instruct, check_tokenizer=False)


def distance_over(result, names):
    """Relative distance base -> instruct over the named tensors only (e.g. the adapted matrices)."""
    group = [t | t["sums"] for t in result["per_tensor"] if t["name"] in names]
    return summarize(group)["relative_distance"] if group else None
