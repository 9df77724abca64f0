"""Confidence scores: one batched, gradient-free pass of a frozen model over the training data, recording
q_t = p(y_t | x, y_<t) for every target token, stored per split as safetensors (flat values + offsets)
with the identity of the model, tokenizer output and data they belong to."""

import contextlib
import functools
import hashlib
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save
from tqdm import tqdm

from . import __version__, blas, heap
from .data import collate
from .errors import GiftError
from .models import check_vocab, cpu_float32, load_model, local_path, read_config, wire_memory
from .outputs import check_not_inside, new_folder, write_bytes
from .objective import confidence, target_positions


def weights_fingerprint(path_or_id):
    """A cheap fingerprint of a model's weight files: names, sizes, headers and three 64 KiB samples each.

    Hashing whole files would take minutes for a 7B model; any retraining or requantization changes
    the sampled bytes or headers.
    """
    h = hashlib.sha256()
    files = sorted(local_path(path_or_id).glob("*.safetensors"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            header = min(int.from_bytes(fh.read(8), "little"), size)  # a damaged length must not seek past 2^63
            h.update(fh.read(min(header, 1 << 24)))
            for pos in (8 + header, max(8 + header, size // 2), max(8 + header, size - 65536)):
                fh.seek(pos)
                h.update(fh.read(65536))
    return h.hexdigest()[:16]


def tokens_fingerprint(dataset):
    """Hash of every example's tokens and target mask: covers tokenizer, chat template and max length."""
    h = hashlib.sha256()
    for e in dataset.examples:
        h.update(e.tokens.tobytes())
        h.update(np.packbits(e.target).tobytes())
    return h.hexdigest()[:16]


def identity(model_id, fingerprint, dataset):
    """What a score file must match to be reused."""
    return {
        "model": str(model_id),
        "model_fingerprint": fingerprint,
        "data_file": str(dataset.path),
        "data_sha256": dataset.sha256,
        "tokens_sha256": tokens_fingerprint(dataset),
        "num_examples": str(len(dataset)),
    }


def score_batches(dataset, batch_tokens=8192):
    """Example indices in batches of similar length holding at most batch_tokens padded positions."""
    examples = dataset.examples
    batches = []
    for i in sorted(range(len(examples)), key=lambda i: len(examples[i].tokens)):
        # Sorted by length, so row i is the longest yet: the batch would be (rows + 1) x len(i).
        if batches and (len(batches[-1]) + 1) * len(examples[i].tokens) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def cpu_streams():
    """One MLX stream per core on CPU, else the default stream.

    MLX's CPU backend runs element-wise ops (the softmax and SiLU exps that dominate a forward pass there) on
    one thread per stream, so a batch split over one stream per core uses every core; BLAS then gets one
    thread per stream (blas.threads) instead of competing threads.
    """
    if mx.default_device() != mx.cpu:
        return [mx.default_stream(mx.default_device())]
    return _new_cpu_streams(blas.cores())


@functools.cache
def _new_cpu_streams(n):  # made once per process: every MLX stream keeps a thread
    return [mx.new_stream(mx.cpu) for _ in range(n)]


def batch_tokens_for(model, logits_budget=2**28):
    """Padded positions per scoring batch: up to 8192, fewer for large vocabularies so that a batch's
    float32 logits stay within ~1 GiB (a 152k vocabulary at 8192 positions peaked at 11.7 GB; 1,766 positions)."""
    vocab = getattr(getattr(model, "args", None), "vocab_size", None) or 32_000
    return int(np.clip(logits_budget // vocab, 256, 8192))


def compute_scores(model, dataset, batch_tokens=None, desc="scoring", world=None):
    """[q per target token] for every example, batched by length, no gradient.

    Under mlx.launch each process scores every size-th batch of the single-process plan, so every value
    is computed exactly as one process would, and the processes sum their shares of one flat vector.
    """
    rank, size = (world.rank(), world.size()) if world is not None else (0, 1)
    examples = dataset.examples
    offsets = np.cumsum([0] + [e.num_targets for e in examples])
    flat = np.zeros(offsets[-1], np.float32)
    batches = score_batches(dataset, batch_tokens or batch_tokens_for(model))[rank::size]
    streams = cpu_streams()
    bar = tqdm(total=len(batches), desc=desc, unit="batch", leave=False, disable=rank > 0)
    with bar, blas.threads(1 if len(streams) > 1 else None):
        for batch in batches:
            # Rows split over the streams, each part padded to its own longest row (not compiled: no retrace).
            parts = [p for p in np.array_split(batch, len(streams)) if len(p)]
            qs = []
            for stream, part in zip(streams, parts):
                inputs, labels, w = collate([examples[j] for j in part], [None] * len(part))
                with mx.stream(stream):  # the targets' confidences only, row after row
                    qs.append(confidence(model, mx.array(inputs), mx.array(labels), mx.array(target_positions(w))))
            mx.eval(qs)
            for part, q in zip(parts, qs):
                flat[np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in part])] = np.array(q)
            bar.update()
    if size > 1:
        flat = np.array(mx.distributed.all_sum(mx.array(flat), group=world))
    return [flat[offsets[j] : offsets[j + 1]] for j in range(len(examples))]


def save_scores(path, scores, meta):
    """Write atomically (outputs.write_bytes): a kill or a full disk never leaves a truncated file."""
    path = Path(path)
    offsets = np.cumsum([0] + [len(s) for s in scores]).astype(np.int64)
    values = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
    if not np.isfinite(values).all():
        raise GiftError(f"{path}: the model's confidences are not finite (NaN/Inf); nothing written")
    write_bytes(path, save({"values": values, "offsets": offsets}, metadata={**meta, "gift_mlx": __version__}))


def load_scores(path, meta):
    """Per-example score arrays if `path` exists and matches `meta`; else None (missing or stale: a file
    from other data or another model, or one whose tensors are missing, inconsistent or not finite)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "numpy") as f:
            stored = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise GiftError(f"{path}: unreadable score file ({e}); delete it to recompute")
    if any(stored.get(k) != v for k, v in meta.items() if k not in ("model", "data_file")):
        return None
    values, offsets = tensors.get("values"), tensors.get("offsets")
    if values is None or offsets is None or values.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
        return None
    if offsets[0] != 0 or offsets[-1] != len(values) or (np.diff(offsets) < 0).any():
        return None
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():  # q is a probability
        return None
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def scores_file(scores_dir, split, role):
    return Path(scores_dir) / f"{split}-{role}.safetensors"


def ensure_scores(datasets, scores_dir, model_id, role, load_model_fn, log=print):
    """{split: per-example scores}, reusing matching files and recomputing stale or missing ones.

    The scoring model is loaded (once) only if something must be computed, and released afterwards.
    Under mlx.launch the processes agree on what to compute (a split is recomputed when any process lacks
    it), share the work, and rank 0 alone writes the files.
    """
    world = mx.distributed.init()
    out, todo = {}, {}
    fingerprint = weights_fingerprint(model_id)  # reads the weight files: once, not once per split
    for split, ds in datasets.items():
        meta = identity(model_id, fingerprint, ds)
        path = scores_file(scores_dir, split, role)
        cached = load_scores(path, meta)
        fresh = cached is not None and all(len(c) == e.num_targets for c, e in zip(cached, ds.examples))
        if world.size() > 1:
            fresh = mx.distributed.all_sum(mx.array(int(not fresh)), group=world).item() == 0
        if fresh:
            log(f"scores: reusing {path}")
            out[split] = cached
        else:
            log(f"scores: {'recomputing stale' if path.exists() else 'computing'} {path}")
            todo[split] = meta
    if todo:
        # Made before the work (an unusable path fails at once), and removed again if the work fails.
        with new_folder(scores_dir) if world.rank() == 0 else contextlib.nullcontext(), heap.kept():
            model = load_model_fn()
            wire_memory()
            for split, meta in todo.items():
                tic = time.perf_counter()
                out[split] = compute_scores(model, datasets[split], desc=f"scoring {split}", world=world)
                n = sum(len(s) for s in out[split])
                log(f"scores: {split}: {n} target tokens in {time.perf_counter() - tic:.1f}s, "
                    f"mean q = {np.concatenate(out[split]).mean():.4f}")
                if world.rank() == 0:
                    save_scores(scores_file(scores_dir, split, role), out[split], meta)
            del model
        mx.clear_cache()
    return out


def load_guide(guide_id, trust_remote_code=False, log=print):
    """The frozen model whose confidences weight the tokens, ready to compute (float32 on a CPU).

    Converted now, not inside the first batch's time. (The model `gift train` trains stays lazy: its weights
    are read after the scoring pass is gone.)"""
    model = cpu_float32(load_model(guide_id, trust_remote_code=trust_remote_code)[0], guide_id, log)
    mx.eval(model.parameters())
    return model


def score(cfg, log=print):
    """`gift score`: compute (or confirm) the guide's confidences for every split of cfg.data."""
    from .data import load_data
    from .models import load_tokenizer

    if mx.distributed.init().rank():
        log = lambda message: None  # noqa: E731  (rank 0 speaks for all processes)
    cfg.validate_options()
    guide_id, role = (cfg.base, "base") if cfg.method == "gift-base" else (cfg.instruct, "instruct")
    if not guide_id or not cfg.data:
        raise GiftError("score needs --instruct (or --base with --method gift-base) and --data")
    tokenizer = load_tokenizer(cfg.instruct or cfg.base, chat=True)
    scores_dir = Path(cfg.scores_path or Path(cfg.adapter_path) / "scores")
    check_not_inside(scores_dir, [cfg.base, cfg.instruct, cfg.data], "scores folder")
    check_vocab(tokenizer, read_config(guide_id), guide_id)  # as train does: every token id must have a row
    data = load_data(cfg.data, tokenizer, cfg.max_seq_length, splits=("train", "valid"), log=log)
    ensure_scores(data, scores_dir, guide_id, role, lambda: load_guide(guide_id, cfg.trust_remote_code, log), log)
    return {split: scores_file(scores_dir, split, role) for split in data}
