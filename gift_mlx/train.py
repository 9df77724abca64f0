"""Training: a LoRA adapter on the BASE model, data in the INSTRUCT chat template, loss Σ w·ℓ / Σ w.

The whole step is `step()` inside `train()`: one compiled function that computes the weighted sums of a
micro-batch (and, with online scoring, the guide's confidences), accumulates gradients and sums over the
micro-batches of an optimizer step, and divides by the step's Σ w before the AdamW update.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import signal
import threading
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

from . import __version__, adapters, blas, fastmath, heap, plot
from .config import TrainConfig
from .data import batch_order, collate, file_sha256, fit_pad_lengths, load_data
from .errors import GiftError, Interrupted
from .models import (check_compatible, check_vocab, cpu_float32, load_model, load_tokenizer, model_ref, nonfinite_weight,
                     read_config, wire_memory)
from .outputs import (LineWriter, check_finite, check_not_inside, folder_lock, new_folder, no_link,
                      remove_orphans, save_tensors, write_json, write_text, writing)
from .objective import chunked, confidence, target_positions, token_weights, weighted_sums
from .pair_check import RESULT_FILE as PAIR_FILE, check_for_training
from .scoring import ensure_scores, load_guide, weights_fingerprint


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
    # Record the adapted keys explicitly so merge and PEFT export need not guess mlx-lm's defaults: relative to
    # a block, as mlx-lm reads them, wherever model.layers puts the blocks (wrapped models: language_model.model),
    # and over every adapted block (a hybrid model's attention and convolution blocks hold different layers).
    keys = sorted({k.rsplit(".", 1)[0] for block in model.layers[len(model.layers) - num_layers:]
                   for k, _ in tree_flatten(block.trainable_parameters())})
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


def guide_weights(guide, inputs, labels, w, floor, gamma, positions=None):
    """Online scoring: the guide's confidence weights on the target positions (w > 0), zero elsewhere; with
    `positions` (flat, every w > 0 among them) the guide's LM head runs there only."""
    if positions is None:
        return mx.where(w > 0, token_weights(confidence(guide, inputs, labels), floor, gamma), 0.0)
    q = confidence(guide, inputs, labels, positions)
    picked = mx.where(w.reshape(-1)[positions] > 0, token_weights(q, floor, gamma), 0.0)
    return mx.zeros(w.size).at[positions].add(picked).reshape(w.shape)  # padding positions add 0


def build_step(model, optimizer, guide=None, floor=1e-4, gamma=1.0, world=None, guide_stream=None, own=False):
    """The compiled training step and the state it updates.

    step(inputs, labels, w, positions, acc_grad, acc_sums, update) adds a micro-batch's gradient of Σ w·ℓ and its
    sums [Σ w·ℓ, Σ w, Σ ℓ, n] to the accumulators (positions: head_positions, or None); with update=True it applies AdamW to the accumulated gradient
    divided by the step's Σ w, so that L = Σ w·ℓ / Σ w over every target token of the optimizer step.
    Under mlx.launch the gradient and the sums are summed over all processes first: Σ w is global.
    The guide's forward (online scoring) may run on its own stream, in parallel with the training forward.
    own=True (dft): the weights are the trained model's own stop-gradient confidences, from the same logits.
    """
    distributed = world is not None and world.size() > 1
    loss_and_grad = nn.value_and_grad(model, partial(weighted_sums, own=(floor, gamma) if own else None))
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs, labels, w, positions, acc_grad, acc_sums, update):
        if guide is not None:
            with mx.stream(guide_stream or mx.default_stream(mx.default_device())):
                w = guide_weights(guide, inputs, labels, w, floor, gamma, positions)
        (wl, (sw, l, n)), grad = loss_and_grad(model, inputs, labels, w, positions=positions)
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


def optimizer_step(step, state, micro, n, threads=None):
    """One optimizer step of the compiled `step` over n micro-batches (an iterator of (inputs, labels, w,
    positions)); returns the step's sums [Σ w·ℓ, Σ w, Σ ℓ, n].

    The accumulated gradient is evaluated after each micro-batch: otherwise the n micro-batches' graphs
    (activations included) would all be held until the last one, and the peak memory would grow with n.
    The loss stays Σ w·ℓ / Σ w over the whole step: the division happens in the last call.
    """
    acc_grad = acc_sums = None
    for k, batch in zip(range(n), micro):
        last = k == n - 1
        acc_grad, acc_sums = step(*batch, acc_grad, acc_sums, last)
        with blas.threads(threads):
            mx.eval(state if last else acc_grad, acc_sums)
    return acc_sums


def head_positions(model, w, bound=None):
    """The flat target positions of a micro-batch (numpy w) when its logits are chunked, else None. bound:
    per padded length, the most targets one row can hold, which fixes the padded count (one compiled shape)."""
    if not chunked(model, w.size):
        return None
    return mx.array(target_positions(w, None if bound is None else len(w) * bound[w.shape[1]]))


def target_bound(dataset, pad_lengths):
    """{padded length L: the most target tokens of any row that fits in L} (a row goes to the smallest L ≥ its
    length)."""
    rows = [(len(e.tokens) - 1, e.num_targets) for e in dataset.examples]
    return {L: max([t for n, t in rows if n <= L], default=0) for L in pad_lengths}


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
        batch = next(batches)
        positions = head_positions(model, batch[2])
        inputs, labels, w = map(mx.array, batch)
        if guide is not None:
            w = guide_weights(guide, inputs, labels, w, cfg.floor, cfg.gamma, positions)
        wl, (sw, l, n) = weighted_sums(model, inputs, labels, w, own=(cfg.floor, cfg.gamma) if cfg.method == "dft" else None,
                                       grad=False, positions=positions)
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


def data_hash(data):
    """The content of every split (a resumed run must see the same rows, not just the same path)."""
    return hashlib.sha256(json.dumps({s: ds.sha256 for s, ds in sorted(data.items())}).encode()).hexdigest()[:16]


def models_hash(cfg):
    """A cheap fingerprint of the weights of the models the run reads (scoring.weights_fingerprint: sizes,
    headers and samples, not a full read): a resumed run must train on the same base and instruct."""
    ids = [cfg.instruct] if cfg.method == "direct" else [cfg.base, cfg.instruct]
    return hashlib.sha256(json.dumps([weights_fingerprint(m) for m in ids]).encode()).hexdigest()[:16]


def tensors_hash(tensors):
    """Checksum of a checkpoint's tensors, stored in its metadata and verified when it is read."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(np.asarray(tensors[k].reshape(-1).view(mx.uint8)).tobytes())
    return h.hexdigest()[:16]


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


def save_checkpoint(out, step, model, optimizer, identity, keep, world):
    """Adapter, optimizer state and every process's RNG key after a completed step, in one file written
    atomically by rank 0 with the run's identity and a checksum; the adapter alone goes to
    adapters.safetensors too. Nothing non-finite is written. The last `keep` stay."""
    rngs = mx.random.state[0][None]
    if world.size() > 1:
        rngs = mx.distributed.all_gather(rngs, group=world)
        mx.eval(rngs)  # collectives are lazy: evaluate now, in the same order on every process
    if world.rank() != 0:
        return None
    tensors = {f"adapter.{k}": v for k, v in tree_flatten(model.trainable_parameters())}
    tensors.update({f"optimizer.{k}": v for k, v in tree_flatten(optimizer.state)})
    tensors["rng"] = rngs
    mx.eval(tensors)
    path = out / f"checkpoint-{step:07d}.safetensors"
    check_finite(tensors, f"step {step}: checkpoint {path}")
    save_tensors(path, tensors, metadata={"step": str(step), **identity, "sha256": tensors_hash(tensors)},
                 check=False)
    adapters.write_weights(model, out)
    for old in checkpoints(out)[:-keep]:
        old.unlink()
    return path


def nonfinite_cause(model, trained_id, guide, guide_id, inputs, w):
    """Where a step's non-finite loss comes from, checked in this order (the model restored to the last good
    step): the models' own weights, the batch's token weights, the trained model's logits; else the update."""
    for m, name in ((model, trained_id), (guide, guide_id)):
        tensor = nonfinite_weight(m) if m is not None else None
        if tensor:
            return f"{name} holds NaN or infinite values in {tensor}: its weights, not the training, are broken"
    if not np.isfinite(np.asarray(w, dtype=np.float64)).all():
        return "the batch's token weights are not finite: the guide's confidences"
    if not mx.isfinite(model(mx.array(inputs))).all().item():
        return f"{trained_id}'s logits on the batch are not finite before this step's update: an overflow in its dtype?"
    return "the update diverged: lower the learning rate or --gamma"


def checkpoints(out):
    return sorted(Path(out).glob("checkpoint-[0-9]*[0-9].safetensors"))


def verified(path, expected_keys):
    """(step, tensors, metadata) of an intact checkpoint; raises ValueError for a damaged one."""
    try:
        tensors, meta = mx.load(str(path), return_metadata=True)
    except (RuntimeError, OSError, ValueError) as e:
        raise ValueError(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if not str(meta.get("step", "")).isdigit() or "rng" not in tensors:
        raise ValueError("no step or RNG state")
    if "sha256" in meta and meta["sha256"] != tensors_hash(tensors):
        raise ValueError("checksum mismatch")
    if {k for k in tensors if k.startswith("adapter.")} != expected_keys:
        raise ValueError("its adapter tensors are not this model's")
    return int(meta["step"]), tensors, meta


def read_checkpoint(out, identity, processes, expected_keys, log=print):
    """(step, tensors) of the latest intact checkpoint in `out`, or (0, {}). A damaged one (truncated by a
    crash, corrupted on disk) is skipped with a warning for the one before it."""
    for path in reversed(checkpoints(out)):
        try:
            step, tensors, meta = verified(path, expected_keys)
        except ValueError as e:
            log(f"warning: {path}: damaged checkpoint ({e}); trying the one before it")
            continue
        if meta.get("settings") != identity["settings"]:
            raise GiftError(f"{path}: written with other settings; resume with the same arguments "
                            f"({', '.join(RESUME_FIELDS)}) or use a new --adapter-path")
        if meta.get("data", identity["data"]) != identity["data"]:
            raise GiftError(f"{path}: written for other data (the data files' content changed since); "
                            "resume with the data it was trained on, or start afresh with --overwrite")
        if meta.get("models", identity["models"]) != identity["models"]:
            raise GiftError(f"{path}: written for other model weights (the base or instruct model changed since); "
                            "resume with the models it was trained on, or start afresh with --overwrite")
        if tensors["rng"].shape[0] != processes:
            raise GiftError(f"{path}: written by {tensors['rng'].shape[0]} processes; resume with as many")
        return step, tensors
    return 0, {}


def load_checkpoint(out, model, optimizer, identity, world, log=print):
    """Restore the latest intact checkpoint; return its step (0 when there is none). Rank 0 reads the file
    and the other processes take its state, so their disks need not hold the checkpoint."""
    rank, size = world.rank(), world.size()
    keys = {f"adapter.{k}" for k, _ in tree_flatten(model.trainable_parameters())}
    step, tensors = read_checkpoint(out, identity, size, keys, log) if rank == 0 else (0, {})
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


RUN_FILES = (adapters.CONFIG, adapters.WEIGHTS, adapters.RUN_RECORD, "metrics.jsonl")


def claim_folder(out, cfg):
    """A fresh run refuses a folder that holds an earlier run (its checkpoints would mix with this run's and
    a later --resume would continue the wrong one) unless told to --overwrite it: then the earlier run's
    files go (cached scores stay: they are checked against their data and model when reused)."""
    if cfg.resume:
        return
    found = checkpoints(out) + [out / f for f in RUN_FILES if (out / f).exists()]
    if found and not cfg.overwrite:
        raise GiftError(f"{out}: holds an earlier training run ({found[0].name}); pass --resume to continue it, "
                        "--overwrite to start afresh (its checkpoints are removed), or use another --adapter-path")
    for f in found:
        with writing(f):
            f.unlink()


def truncate_metrics(path, step):
    """Keep the metrics rows up to `step` (a resumed run logs the later steps again); return their last values."""
    final, kept = {}, []
    if path.is_file():
        for line in path.read_text().split("\n"):
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line)
                final.update(row)
        write_text(path, "".join(line + "\n" for line in kept))
    return final


def mark(out, record, status, rank):
    """Best effort: the run record says how the run stopped (an error is already on its way to the user)."""
    if rank == 0 and (out / adapters.RUN_RECORD).is_file():
        try:
            adapters.write_run_record(out, {**record, "status": status})
        except (GiftError, OSError):
            pass


def verify_adapter(out, model):
    """Read adapters.safetensors back and compare it with the trained parameters; return its sha256."""
    path = out / adapters.WEIGHTS
    try:
        written = mx.load(str(path))
    except (RuntimeError, OSError, ValueError) as e:
        raise GiftError(f"{path}: the adapter just written cannot be read back ({str(e).splitlines()[0]})")
    params = dict(tree_flatten(model.trainable_parameters()))
    if written.keys() != params.keys() or not all(mx.array_equal(written[k], params[k]).item() for k in params):
        raise GiftError(f"{path}: the adapter just written differs from the trained one (a disk fault?); "
                        "run the same command with --resume to write it again")
    return file_sha256(path)


def reporting(cfg, out):
    """mlx-lm's Weights & Biases / SwanLab callback for --report-to (the run is named after the adapter folder)."""
    if not cfg.report_to:
        return None
    from mlx_lm.tuner.callbacks import get_reporting_callbacks

    return get_reporting_callbacks(cfg.report_to, project_name=cfg.project_name or "gift-mlx", log_dir=str(out),
                                   config=dataclasses.asdict(cfg))


def train(cfg: TrainConfig, log=print):
    """Score (if needed) and train; writes the adapter in mlx-lm's format; returns the run record.

    Under mlx.launch, every process takes its share of each micro-batch and rank 0 alone writes and logs.
    The adapter folder is locked for the run (outputs.folder_lock).
    """
    with contextlib.ExitStack() as stack, sigterm_as_interrupt(), heap.kept():
        return _train(cfg, log, stack)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a `kill`, a scheduler's stop) handled as Ctrl-C is: the completed steps are saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(cfg, log, stack):
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
    inputs = [cfg.base, cfg.instruct, cfg.data]
    check_not_inside(out, inputs, "adapter path")
    check_not_inside(cfg.scores_path or out / "scores", inputs, "scores folder")
    tokenizer = load_tokenizer(cfg.instruct, chat=True)
    if cfg.method != "direct":
        check_compatible(read_config(cfg.base), read_config(cfg.instruct), cfg.base, cfg.instruct)
    data = load_data(cfg.data, tokenizer, cfg.max_seq_length, log=log)
    for split, ds in data.items():
        log(f"data: {split}: {len(ds)} rows, {sum(e.num_targets for e in ds.examples)} target tokens"
            + (f", {ds.truncated} truncated to {cfg.max_seq_length}" if ds.truncated else "")
            + (f", {ds.dropped} dropped (no target left)" if ds.dropped else ""))
    train_set, val_set = data["train"], data.get("valid")
    if val_set is not None and cfg.val_batches == 0:
        log("validation: off (--val-batches 0)")
        val_set = None
    if val_set is not None and len(val_set) < cfg.batch_size:
        log(f"validation: skipped ({len(val_set)} rows < batch_size {cfg.batch_size})")
        val_set = None
    global_batch = cfg.batch_size * cfg.grad_accumulation_steps
    if len(train_set) < cfg.batch_size:
        raise GiftError(f"batch_size: {cfg.batch_size} is more than the {len(train_set)} training rows")
    steps = cfg.iters or max(1, math.ceil(cfg.epochs * len(train_set) / global_batch))
    pair = None  # after the cheap checks: it reads both models once (released before training loads one)
    if cfg.method != "direct" and rank == 0:
        pair = check_for_training(cfg.base, cfg.instruct, cfg.pair_check, log)

    trained_id = cfg.instruct if cfg.method == "direct" else cfg.base
    guide_id, role = {"gift": (cfg.instruct, "instruct"), "gift-base": (cfg.base, "base")}.get(cfg.method, (None, None))
    weights = {s: [None] * len(ds) for s, ds in data.items()}  # None: uniform weight 1

    # Lazily loaded: the weights are read when training starts, after any scoring pass is done and gone,
    # while LoRA options are checked before anything is written.
    model, _, model_config = load_model(trained_id, lazy=True, trust_remote_code=cfg.trust_remote_code)
    cpu_float32(model, trained_id, log)
    wire_memory()
    check_vocab(tokenizer, model_config, trained_id)
    mx.random.seed(cfg.seed)  # the same LoRA initialisation in every process
    adapter_config = add_lora(model, cfg)

    if rank == 0:
        # A run that fails leaves nothing it created, unless it saved a checkpoint to --resume from.
        stack.enter_context(new_folder(out, owned=True, keep=lambda: bool(checkpoints(out))))
        stack.enter_context(folder_lock(out, "training run"))
        remove_orphans(out)  # temporaries of a killed run
        for name in (*RUN_FILES, PAIR_FILE, "loss.png"):  # a planted link would have the run write elsewhere
            no_link(out / name)
        claim_folder(out, cfg)
    else:
        with writing(out):
            out.mkdir(parents=True, exist_ok=True)
    identity = {"settings": settings_hash(cfg), "data": data_hash(data), "models": models_hash(cfg)}
    if guide_id and not cfg.online_scores:
        used = {"train": train_set, **({"valid": val_set} if val_set is not None else {})}  # no unused split scored
        scores = ensure_scores(used, cfg.scores_path or out / "scores", guide_id, role,
                               lambda: load_guide(guide_id, cfg.trust_remote_code, log), log)
        weights = {s: [token_weights(q, cfg.floor, cfg.gamma) for q in scores[s]] for s in used}

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
    fastmath.cpu_dropout(model)
    stack.enter_context(fastmath.cpu_activations(model, guide))
    # Building a model (scoring, a guide) draws from MLX's global generator; reseeding here makes the
    # dropout masks depend on (seed, rank) alone, so cached and freshly computed scores give one adapter.
    mx.random.seed(dropout_seed(cfg.seed, rank))
    optimizer = optim.AdamW(learning_rate=lr_schedule(cfg, steps), weight_decay=cfg.weight_decay)
    step, state = build_step(model, optimizer, guide, cfg.floor, cfg.gamma, world, guide_stream, cfg.method == "dft")

    start = load_checkpoint(out, model, optimizer, identity, world, log) if cfg.resume else 0
    if cfg.resume and start >= steps and adapters.run_status(out) == "complete":
        log(f"resume: the run in {out} is already complete (step {start} of {steps}); nothing to do")
        return adapters.read_run_record(out)
    if cfg.resume:
        log(f"resume: from step {start}" if start else "resume: no checkpoint found, starting at step 0")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_lengths = fit_pad_lengths([len(e.tokens) - 1 for e in train_set.examples], cfg.max_seq_length, cfg.pad_lengths)
    log(f"batches: padded to {', '.join(map(str, pad_lengths))} tokens (one compiled shape each)")
    bound = target_bound(train_set, pad_lengths)
    batches = micro_batches(train_set, weights["train"], cfg.batch_size, pad_lengths, pad_id, cfg.seed,
                            start=start * cfg.grad_accumulation_steps, rank=rank, size=size)
    final = truncate_metrics(out / "metrics.jsonl", start) if rank == 0 and start else {}
    record = {
        "gift_mlx": __version__, "mlx": mx.__version__, "status": "running", "method": cfg.method,
        "base_model": cfg.base, "instruct_model": cfg.instruct, "trained_model": trained_id,
        "data": {s: {"file": str(ds.path), "sha256": ds.sha256, "rows": len(ds), "truncated": ds.truncated}
                 for s, ds in data.items()},
        "config": dataclasses.asdict(cfg), "adapter_config": adapter_config, "identity": identity, "final": final,
        "pair_check": pair and {"overall": pair["overall"], "verdict": pair["verdict"], "file": PAIR_FILE},
    }
    if rank == 0:
        if pair is not None:
            write_json(out / PAIR_FILE, pair)
        adapters.write_config(out, {**adapter_config, "model": trained_id, "base_model": cfg.base,
                                    "instruct_model": cfg.instruct, "method": cfg.method})
        adapters.write_run_record(out, record)  # "running" until the final adapter is written and verified
    metrics_file = LineWriter(out / "metrics.jsonl" if rank == 0 else os.devnull, "a" if start else "w")
    reporter = reporting(cfg, out) if rank == 0 else None
    n_trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    log(f"train: {cfg.method} on {trained_id}, {steps} steps of {global_batch} rows, "
        f"{n_trainable / 1e6:.3f}M trainable parameters")
    skipped = 0

    def emit(row):
        metrics_file.write(row)
        final.update(row)
        if reporter:  # mlx-lm's callbacks take the step as "iteration"
            report = reporter.on_train_loss_report if "loss" in row else reporter.on_val_loss_report
            report({**row, "iteration": row["step"]})

    last = {}  # the latest micro-batch (inputs, w): where a non-finite loss is looked for

    def step_inputs():  # the micro-batches as the step takes them, counting the tokens read
        for inputs, labels, w in batches:
            window["tokens"] += int((labels != pad_id).sum())
            last["batch"] = inputs, w
            yield mx.array(inputs), mx.array(labels), mx.array(w), head_positions(model, w, bound)

    model.train()
    window = {"sums": np.zeros(4), "tokens": 0, "time": 0.0}
    stream = step_inputs()
    bar = tqdm(range(start + 1, steps + 1), desc="train", unit="step", initial=start, total=steps, disable=rank > 0)
    last_good, done = snapshot(model, optimizer), start  # done: the last step whose state is last_good
    try:
        for it in bar:
            tic = time.perf_counter()
            s = np.array(optimizer_step(step, state, stream, cfg.grad_accumulation_steps, blas_threads))
            if not (np.isfinite(s[0]) and np.isfinite(s[2]) and s[1] > 0):
                restore(model, optimizer, last_good)  # the update divided by a NaN or zero Σw: dropped
                what = "the loss is not finite" if s[1] > 0 or not np.isfinite(s[1]) else \
                    "every token weight is 0 (Σw = 0), so the loss Σw·ℓ/Σw is undefined"
                if not cfg.skip_nonfinite:
                    cause = nonfinite_cause(model, trained_id, guide, guide_id, *last["batch"]) if s[1] > 0 or \
                        not np.isfinite(s[1]) else "lower the learning rate or --gamma"
                    raise GiftError(f"step {it}: {what}: {cause}; the last checkpoint is kept "
                                    "(pass --skip-nonfinite to skip such batches)")
                skipped += 1
                bar.write(f"step {it}: {what}: batch skipped ({skipped} so far)")
                done = it
                continue
            last_good, done = snapshot(model, optimizer), it
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
                save_checkpoint(out, it, model, optimizer, identity, cfg.keep_checkpoints, world)
    except KeyboardInterrupt:
        bar.close()
        # The state after step `done` (validation or a checkpoint of step `done` may have been in flight):
        # the step in flight, if any, is dropped whole.
        restore(model, optimizer, last_good)
        mark(out, record, "interrupted", rank)
        if done > start and size == 1:  # saving is collective: under mlx.launch the last checkpoint stands
            path = save_checkpoint(out, done, model, optimizer, identity, cfg.keep_checkpoints, world)
            raise Interrupted(f"saved {path}; run the same command with --resume to continue from step {done}") from None
        raise
    except BaseException:
        mark(out, record, "interrupted", rank)
        raise
    finally:
        bar.close()
        metrics_file.close()
        if reporter and "wandb" in cfg.report_to:
            import wandb

            wandb.finish()

    try:
        if start < steps:
            save_checkpoint(out, steps, model, optimizer, identity, cfg.keep_checkpoints, world)
        elif rank == 0:  # resumed at the last step: a kill may have come between its checkpoint and the adapter's copy
            adapters.write_weights(model, out)
        if rank == 0:
            plot.training(out / "loss.png", plot.read_metrics(out / "metrics.jsonl"))
            record["adapter_sha256"] = verify_adapter(out, model)
            # last: "complete" only once the adapter is written and verified
            adapters.write_run_record(out, {**record, "status": "complete"})
    except BaseException:
        mark(out, record, "interrupted", rank)
        raise
    record["status"] = "complete"
    log(f"adapter: {out / adapters.WEIGHTS}" + (f" (final loss {final['loss']:.4f})" if final else ""))
    return record
