"""Training: a LoRA adapter on the BASE model, data in the INSTRUCT chat template, loss Σ w·ℓ / Σ w.

The whole step is `step()` inside `train()`: one compiled function that computes the weighted sums of a
micro-batch (and, with online scoring, the guide's confidences), accumulates gradients and sums over the
micro-batches of an optimizer step, and divides by the step's Σ w before the AdamW update.
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.nn.utils import average_gradients
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.tuner.utils import linear_to_lora_layers
from tqdm import tqdm

from . import __version__, adapters, blas
from .config import TrainConfig
from .data import batch_order, collate, fit_pad_lengths, load_data
from .errors import GiftError
from .models import check_compatible, cpu_float32, load_model, load_tokenizer, model_ref, read_config
from .objective import confidence, token_weights, weighted_sums
from .scoring import ensure_scores, load_guide


def add_lora(model, cfg):
    """Freeze the model and put LoRA (or DoRA) layers on it with mlx-lm; return adapter_config.json."""
    num_layers = len(model.layers) if cfg.num_layers < 0 else cfg.num_layers
    if num_layers > len(model.layers):
        raise GiftError(f"num_layers: {num_layers} but the model has {len(model.layers)} blocks")
    model.freeze()
    params = {"rank": cfg.lora_rank, "scale": cfg.lora_scale, "dropout": cfg.lora_dropout, "keys": cfg.lora_keys}
    try:
        linear_to_lora_layers(model, num_layers, params, use_dora=cfg.fine_tune_type == "dora")
    except ValueError as e:
        raise GiftError(f"lora_keys: {e}")
    # Record the adapted keys explicitly so merge and PEFT export need not guess mlx-lm's defaults.
    keys = sorted({k.rsplit(".", 1)[0][len(f"model.layers.{len(model.layers) - 1}."):]
                   for k, _ in tree_flatten(model.trainable_parameters())
                   if k.startswith(f"model.layers.{len(model.layers) - 1}.")})
    if not keys:
        raise GiftError(f"lora_keys: {cfg.lora_keys} matched no layer of the model")
    return {"fine_tune_type": cfg.fine_tune_type, "num_layers": num_layers,
            "lora_parameters": {**params, "keys": keys}}


def checkpoint_layers(model):
    """Gradient checkpointing for this model's blocks only (mlx-lm's version patches the class globally,
    which would also reach a guide model of the same architecture)."""
    classes = {}
    for layer in model.layers:
        base = type(layer)
        if base not in classes:
            def call(self, *args, _call=base.__call__, **kwargs):
                def inner(params, *args, **kwargs):
                    self.update(params)
                    return _call(self, *args, **kwargs)
                return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)
            classes[base] = type(base.__name__, (base,), {"__call__": call})
        layer.__class__ = classes[base]


def lr_schedule(cfg, steps):
    """Linear warmup for warmup_ratio of the steps, then cosine decay to zero (as the reference)."""
    warmup = int(round(cfg.warmup_ratio * steps))
    decay = optim.cosine_decay(cfg.learning_rate, max(steps - warmup, 1), 0.0)
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.learning_rate, warmup), decay], [warmup])


def guide_weights(guide, inputs, labels, w, floor, gamma):
    """Online scoring: the guide's confidence weights on the target positions (w > 0), zero elsewhere."""
    return mx.where(w > 0, token_weights(confidence(guide, inputs, labels), floor, gamma), 0.0)


def build_step(model, optimizer, guide=None, floor=1e-4, gamma=1.0, world=None, guide_stream=None):
    """The compiled training step and the state it updates.

    step(inputs, labels, w, acc_grad, acc_sums, update) adds a micro-batch's gradient of Σ w·ℓ and its sums
    [Σ w·ℓ, Σ w, Σ ℓ, n] to the accumulators; with update=True it applies AdamW to the accumulated gradient
    divided by the step's Σ w, so that L = Σ w·ℓ / Σ w over every target token of the optimizer step.
    Under mlx.launch the gradient and the sums are summed over all processes first: Σ w is global.
    The guide's forward (online scoring) may run on its own stream, in parallel with the training forward.
    """
    distributed = world is not None and world.size() > 1
    loss_and_grad = nn.value_and_grad(model, weighted_sums)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, labels, w, acc_grad, acc_sums, update):
        if guide is not None:
            with mx.stream(guide_stream or mx.default_stream(mx.default_device())):
                w = guide_weights(guide, inputs, labels, w, floor, gamma)
        (wl, (sw, l, n)), grad = loss_and_grad(model, inputs, labels, w)
        sums = mx.stack([wl, sw, l, n.astype(mx.float32)])
        if acc_grad is not None:
            grad, sums = tree_map(mx.add, grad, acc_grad), sums + acc_sums
        if update:
            norm = sums[1]
            if distributed:  # mean gradient / mean Σ w = global Σ gradient / global Σ w
                grad = average_gradients(grad, group=world)  # MLX packs small tensors into few all-reduces
                sums = mx.distributed.all_sum(sums, group=world)
                norm = sums[1] / world.size()
            optimizer.update(model, tree_map(lambda g: g / norm, grad))
            grad = None
        return grad, sums

    return step, state


def micro_batches(dataset, weights, batch_size, pad_lengths, pad_id, seed, start=0, rank=0, size=1):
    """Endless stream of collated micro-batches (numpy), epoch after epoch, skipping the first `start`;
    rows padded to one of `pad_lengths` (None: to the batch's longest row).

    Each epoch's order depends only on (seed, epoch), so a resumed run sees exactly the same stream, and
    under mlx.launch every process sees the same batches and takes its share of rows (rank::size).
    """
    lengths = [len(e.tokens) for e in dataset.examples]
    for epoch in itertools.count():
        for idx in batch_order(lengths, batch_size, np.random.default_rng([seed, epoch])):
            if start > 0:
                start -= 1
                continue
            idx = idx[rank::size]
            yield collate([dataset.examples[i] for i in idx], [weights[i] for i in idx], pad_lengths, pad_id)


def validation_loss(model, dataset, weights, cfg, pad_id, guide=None, world=None):
    """Weighted and plain loss over the first val_batches micro-batches of a fixed shuffle (not compiled:
    padded to each batch's longest row)."""
    model.eval()
    rank, size = (world.rank(), world.size()) if world is not None else (0, 1)
    batches = micro_batches(dataset, weights, cfg.batch_size, None, pad_id, seed=0, rank=rank, size=size)
    n_batches = len(dataset) // cfg.batch_size
    if cfg.val_batches > 0:
        n_batches = min(n_batches, cfg.val_batches)
    total = mx.zeros(4)
    for _ in range(n_batches):
        inputs, labels, w = map(mx.array, next(batches))
        if guide is not None:
            w = guide_weights(guide, inputs, labels, w, cfg.floor, cfg.gamma)
        wl, (sw, l, n) = weighted_sums(model, inputs, labels, w)
        total = total + mx.stack([wl, sw, l, n.astype(mx.float32)])
        mx.eval(total)
    model.train()
    if size > 1:
        total = mx.distributed.all_sum(total, group=world)
    wl, sw, l, n = total.tolist()
    return {"val_loss": wl / max(sw, 1e-12), "val_plain_loss": l / max(n, 1)}


# Settings a resumed run must share with the run that wrote the checkpoint.
RESUME_FIELDS = ("base", "instruct", "data", "method", "online_scores", "floor", "gamma", "fine_tune_type",
                 "lora_rank", "lora_alpha", "lora_dropout", "lora_keys", "num_layers", "iters", "epochs",
                 "batch_size", "grad_accumulation_steps", "learning_rate", "warmup_ratio", "weight_decay",
                 "max_seq_length", "seed")


def settings_hash(cfg):
    return hashlib.sha256(json.dumps([getattr(cfg, f) for f in RESUME_FIELDS]).encode()).hexdigest()[:16]


def dropout_seed(seed, rank):
    """The seed of a process's dropout stream: a function of (seed, rank) only, apart from the LoRA init's."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0])


def set_rng(key):
    """mx.random.state cannot be assigned to; seeding with the key's two words restores it exactly."""
    hi, lo = np.array(key).tolist()
    mx.random.seed((hi << 32) | lo)


def snapshot(model, optimizer):
    """References to the state after the last completed step (MLX arrays are immutable: no copy)."""
    return dict(tree_flatten(model.trainable_parameters())), tree_map(lambda x: x, optimizer.state), mx.random.state[0]


def restore(model, optimizer, snap):
    params, opt_state, rng = snap
    model.update(tree_unflatten(list(params.items())))
    optimizer.state.update(opt_state)  # in place: the compiled step holds this very dict
    set_rng(rng)


def save_checkpoint(out, step, model, optimizer, cfg, keep, world):
    """Adapter, optimizer state and every process's RNG key after a completed step, in one file written
    atomically by rank 0; the adapter alone goes to adapters.safetensors too. The last `keep` stay."""
    rngs = mx.random.state[0][None]
    if world.size() > 1:
        rngs = mx.distributed.all_gather(rngs, group=world)
        mx.eval(rngs)  # collectives are lazy: evaluate now, in the same order on every process
    if world.rank() != 0:
        return None
    tensors = {f"adapter.{k}": v for k, v in tree_flatten(model.trainable_parameters())}
    tensors.update({f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)})
    tensors["rng"] = rngs
    path = out / f"checkpoint-{step:07d}.safetensors"
    tmp = out / f".{path.stem}.tmp.safetensors"  # hidden: never mistaken for a checkpoint
    mx.save_safetensors(str(tmp), tensors, metadata={"step": str(step), "settings": settings_hash(cfg)})
    os.replace(tmp, path)
    adapters.write_weights(model, out)
    for old in sorted(out.glob("checkpoint-*.safetensors"))[:-keep]:
        old.unlink()
    return path


def read_checkpoint(out, cfg, processes):
    """(step, tensors) of the latest checkpoint in `out`, or (0, {})."""
    found = sorted(out.glob("checkpoint-[0-9]*[0-9].safetensors"))
    if not found:
        return 0, {}
    tensors, meta = mx.load(str(found[-1]), return_metadata=True)
    if meta.get("settings") != settings_hash(cfg):
        raise GiftError(f"{found[-1]}: written with other settings; resume with the same arguments "
                        f"({', '.join(RESUME_FIELDS)}) or use a new --adapter-path")
    if tensors["rng"].shape[0] != processes:
        raise GiftError(f"{found[-1]}: written by {tensors['rng'].shape[0]} processes; resume with as many")
    return int(meta["step"]), tensors


def load_checkpoint(out, model, optimizer, cfg, world):
    """Restore the latest checkpoint; return its step (0 when there is none). Rank 0 reads the file and
    the other processes take its state, so their disks need not hold the checkpoint."""
    rank, size = world.rank(), world.size()
    step, tensors = read_checkpoint(out, cfg, size) if rank == 0 else (0, {})
    if size > 1:
        share = lambda x: mx.distributed.all_sum(x if rank == 0 else mx.zeros_like(x), group=world)
        step = share(mx.array(step)).item()
        if step == 0:
            return 0
        optimizer.init(model.trainable_parameters())  # the same state tree on every process
        template = {f"adapter.{k}": v for k, v in tree_flatten(model.trainable_parameters())}
        template.update({f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)})
        template["rng"] = mx.zeros((size, 2), mx.uint32)
        tensors = {k: share(tensors.get(k, v).astype(v.dtype)) for k, v in template.items()}
        mx.eval(tensors)
    if step == 0:
        return 0
    part = lambda prefix: [(k[len(prefix):], v) for k, v in tensors.items() if k.startswith(prefix)]
    model.update(tree_unflatten(part("adapter.")))
    optimizer.state.update(tree_unflatten(part("optimizer.")))  # in place, as in restore()
    set_rng(tensors["rng"][rank])
    return step


def train(cfg: TrainConfig, log=print):
    """Score (if needed) and train; writes the adapter in mlx-lm's format; returns the run record.

    Under mlx.launch, every process takes its share of each micro-batch and rank 0 alone writes and logs.
    """
    cfg.validate()
    # Local models and data are recorded (adapter_config.json, gift_run.json) by absolute path; Hub ids stay ids.
    cfg = dataclasses.replace(cfg, base=model_ref(cfg.base), instruct=model_ref(cfg.instruct),
                              data=os.path.abspath(cfg.data),
                              scores_path=cfg.scores_path and os.path.abspath(cfg.scores_path))
    world = mx.distributed.init()
    rank, size = world.rank(), world.size()
    if rank:
        log = lambda message: None  # noqa: E731
    if cfg.batch_size % size:
        raise GiftError(f"batch_size: {cfg.batch_size} is not a multiple of the {size} processes")
    out = Path(cfg.adapter_path)
    tokenizer = load_tokenizer(cfg.instruct)
    if cfg.method != "direct":
        check_compatible(read_config(cfg.base), read_config(cfg.instruct), cfg.base, cfg.instruct)
    data = load_data(cfg.data, tokenizer, cfg.max_seq_length)
    for split, ds in data.items():
        log(f"data: {split}: {len(ds)} rows, {sum(e.num_targets for e in ds.examples)} target tokens"
            + (f", {ds.truncated} truncated to {cfg.max_seq_length}" if ds.truncated else "")
            + (f", {ds.dropped} dropped (no target left)" if ds.dropped else ""))
    train_set, val_set = data["train"], data.get("valid")
    global_batch = cfg.batch_size * cfg.grad_accumulation_steps
    if len(train_set) < cfg.batch_size:
        raise GiftError(f"batch_size: {cfg.batch_size} is more than the {len(train_set)} training rows")
    steps = cfg.iters or max(1, math.ceil(cfg.epochs * len(train_set) / global_batch))

    trained_id = cfg.instruct if cfg.method == "direct" else cfg.base
    guide_id, role = {"gift": (cfg.instruct, "instruct"), "gift-base": (cfg.base, "base")}.get(cfg.method, (None, None))
    weights = {s: [None] * len(ds) for s, ds in data.items()}  # None: uniform weight 1

    # Lazily loaded: the weights are read when training starts, after any scoring pass is done and gone,
    # while LoRA options are checked before anything is written.
    model, _, model_config = load_model(trained_id, lazy=True, trust_remote_code=cfg.trust_remote_code)
    cpu_float32(model, trained_id, log)
    vocab_rows = model_config.get("vocab_size")
    if vocab_rows and len(tokenizer) > vocab_rows:
        raise GiftError(f"{trained_id}: vocabulary of {vocab_rows} rows, but the instruct tokenizer has {len(tokenizer)} tokens")
    mx.random.seed(cfg.seed)  # the same LoRA initialisation in every process
    adapter_config = add_lora(model, cfg)

    out.mkdir(parents=True, exist_ok=True)
    if guide_id and not cfg.online_scores:
        scores = ensure_scores(data, cfg.scores_path or out / "scores", guide_id, role,
                               lambda: load_guide(guide_id, cfg.trust_remote_code, log), log)
        weights = {s: [token_weights(q, cfg.floor, cfg.gamma) for q in scores[s]] for s in data}

    guide = guide_stream = blas_threads = None
    if guide_id and cfg.online_scores:
        guide = load_guide(guide_id, cfg.trust_remote_code, log)
        guide.freeze()
        if mx.default_device() == mx.cpu:
            # MLX runs a CPU stream's element-wise ops on one thread: the guide's forward on a second stream
            # uses the other cores meanwhile, with BLAS threads shared between the two streams.
            guide_stream, blas_threads = mx.new_stream(mx.cpu), max(1, blas.cores() // 2)
    if cfg.grad_checkpoint:
        checkpoint_layers(model)
    # Building a model (scoring, a guide) draws from MLX's global generator; reseeding here makes the
    # dropout masks depend on (seed, rank) alone, so cached and freshly computed scores give one adapter.
    mx.random.seed(dropout_seed(cfg.seed, rank))
    optimizer = optim.AdamW(learning_rate=lr_schedule(cfg, steps), weight_decay=cfg.weight_decay)
    step, state = build_step(model, optimizer, guide, cfg.floor, cfg.gamma, world, guide_stream)

    start = load_checkpoint(out, model, optimizer, cfg, world) if cfg.resume else 0
    if cfg.resume:
        log(f"resume: from step {start}" if start else "resume: no checkpoint found, starting at step 0")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_lengths = fit_pad_lengths([len(e.tokens) - 1 for e in train_set.examples], cfg.max_seq_length, cfg.pad_lengths)
    log(f"batches: padded to {', '.join(map(str, pad_lengths))} tokens (one compiled shape each)")
    batches = micro_batches(train_set, weights["train"], cfg.batch_size, pad_lengths, pad_id, cfg.seed,
                            start=start * cfg.grad_accumulation_steps, rank=rank, size=size)
    if val_set is not None and len(val_set) < cfg.batch_size:
        log(f"validation: skipped ({len(val_set)} rows < batch_size {cfg.batch_size})")
        val_set = None
    if rank == 0:
        adapters.write_config(out, {**adapter_config, "model": trained_id, "base_model": cfg.base,
                                    "instruct_model": cfg.instruct, "method": cfg.method})
    metrics_file = open(out / "metrics.jsonl" if rank == 0 else os.devnull, "a" if start else "w")
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    log(f"train: {cfg.method} on {trained_id}, {steps} steps of {global_batch} rows, "
        f"{n_trainable / 1e6:.3f}M trainable parameters")
    final, skipped = {}, 0

    def emit(row):
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        final.update(row)

    model.train()
    window = {"sums": np.zeros(4), "tokens": 0, "time": 0.0}
    bar = tqdm(range(start + 1, steps + 1), desc="train", unit="step", initial=start, total=steps, disable=rank > 0)
    last_good, it = snapshot(model, optimizer), start + 1
    try:
        for it in bar:
            tic = time.perf_counter()
            acc_grad = acc_sums = None
            for k in range(cfg.grad_accumulation_steps):
                inputs, labels, w = next(batches)
                window["tokens"] += int((labels != pad_id).sum())
                acc_grad, acc_sums = step(mx.array(inputs), mx.array(labels), mx.array(w),
                                          acc_grad, acc_sums, k == cfg.grad_accumulation_steps - 1)
            with blas.threads(blas_threads):
                mx.eval(state, acc_sums)
            s = np.array(acc_sums)
            if not np.isfinite(s[0]) or not np.isfinite(s[2]):
                restore(model, optimizer, last_good)
                if not cfg.skip_nonfinite:
                    raise GiftError(f"step {it}: the loss is not finite; the last checkpoint is kept "
                                    "(lower the learning rate, or pass --skip-nonfinite to skip such batches)")
                skipped += 1
                bar.write(f"step {it}: non-finite loss, batch skipped ({skipped} so far)")
                continue
            last_good = snapshot(model, optimizer)
            window["sums"] += s
            window["time"] += time.perf_counter() - tic

            if it % cfg.steps_per_report == 0 or it == steps:
                wl, sw, l, n = window["sums"]
                if size > 1:
                    window["tokens"] = mx.distributed.all_sum(mx.array(window["tokens"]), group=world).item()
                row = {"step": it, "loss": wl / max(sw, 1e-12), "plain_loss": l / max(n, 1),
                       "learning_rate": optimizer.learning_rate.item(),
                       "target_tokens_per_sec": n / window["time"], "tokens_per_sec": window["tokens"] / window["time"],
                       "peak_memory_gb": mx.get_peak_memory() / 1e9, "skipped_steps": skipped}
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['learning_rate']:.1e}",
                                tok_s=f"{row['tokens_per_sec']:.0f}", mem=f"{row['peak_memory_gb']:.2f}GB")
                emit(row)
                window = {"sums": np.zeros(4), "tokens": 0, "time": 0.0}
            if val_set is not None and (it % cfg.steps_per_eval == 0 or it == steps):
                row = {"step": it, **validation_loss(model, val_set, weights["valid"], cfg, pad_id, guide, world)}
                emit(row)
                bar.write(f"step {it}: val_loss {row['val_loss']:.4f}, val_plain_loss {row['val_plain_loss']:.4f}")
            if it % cfg.save_every == 0 and it != steps:
                save_checkpoint(out, it, model, optimizer, cfg, cfg.keep_checkpoints, world)
    except KeyboardInterrupt:
        bar.close()
        restore(model, optimizer, last_good)  # the step in flight is dropped whole
        done = it - 1
        if done > start and size == 1:  # saving is collective: under mlx.launch the last checkpoint stands
            path = save_checkpoint(out, done, model, optimizer, cfg, cfg.keep_checkpoints, world)
            log(f"interrupted: saved {path}; run the same command with --resume to continue from step {done}")
        raise
    finally:
        bar.close()
        metrics_file.close()

    if start < steps:
        save_checkpoint(out, steps, model, optimizer, cfg, cfg.keep_checkpoints, world)
    record = {
        "gift_mlx": __version__, "mlx": mx.__version__, "method": cfg.method, "base_model": cfg.base,
        "instruct_model": cfg.instruct, "trained_model": trained_id,
        "data": {s: {"file": str(ds.path), "sha256": ds.sha256, "rows": len(ds), "truncated": ds.truncated}
                 for s, ds in data.items()},
        "config": dataclasses.asdict(cfg), "adapter_config": adapter_config, "final": final,
    }
    if rank == 0:
        adapters.write_run_record(out, record)
    log(f"adapter: {out / adapters.WEIGHTS}" + (f" (final loss {final['loss']:.4f})" if final else ""))
    return record
