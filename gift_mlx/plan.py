"""`gift plan`: a training run's peak memory and time per epoch on this machine, estimated before training from
the model's shapes (config.json), the data's token counts and the settings; and which settings fit.

Model FLOPs per token (`flops_per_token`): every matmul of the forward (blocks, causal attention, LM head, LoRA),
the backward through the activations (the same again, attention twice) and LoRA's weight gradients; frozen
weights get no gradient. Memory (`peak_bytes`): weights + LoRA state + what autodiff keeps for the backward +
the LM head's logits, with per-element coefficients fitted to MLX's measured peak (mx.get_peak_memory) of
training steps on small qwen2 models (ACT); time (`seconds`): the FLOPs at the matmul rate measured now, plus
the element-wise values that cost about an exp each (`elementwise_per_token`: SiLU, attention softmax, dropout
masks, the vocabulary softmax) at the exp rate measured now, × ELEMENT_COST; where gift_mlx.fastmath applies
(a CPU, float32) its SiLU and masks cost less and keep less (FAST_COST, FAST_SAVED). Both are checked against
the benchmark's measured runs in docs/benchmarks.md.
"""

import dataclasses
import os

from .errors import GiftError

# Published configurations (config.json of the Hub models), for benchmarks and what-if plans.
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, intermediate_size=4864,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0, torch_dtype="bfloat16"),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0, torch_dtype="bfloat16"),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, num_hidden_layers=28, intermediate_size=18944,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                       rope_theta=1000000.0, torch_dtype="bfloat16"),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=500000.0, torch_dtype="bfloat16"),
}

# Bytes kept per token for the backward (float32 activations), fitted to MLX's peak on 13 small qwen2
# training steps (LoRA on every linear layer, dropout 0.05; fit error -10%..+13%): per layer, per unit of
# hidden size, FFN size and heads × sequence length; per element of positions × vocabulary (logits, in
# full below the chunking budget, in chunks above it); per layer and hidden unit with gradient checkpointing.
ACT = {"hidden": 87.8, "ffn": 31.3, "attention": 4.7, "logits": 16.1, "logits_chunked": 7.8, "checkpoint": 19.0}
# Cost of one element-wise value counted by elementwise_per_token, in exps on one stream: 1.44 fitted to the
# 0.5B-shape float32 training run of docs/benchmarks.md (2026-11-27, the matmuls taken at the measured rate);
# the 1.5B shape and the other runs of the same command are the check.
ELEMENT_COST = 1.4
# With gift_mlx.fastmath (CPU training in float32): the cost of a SiLU value and of a dropout-mask value relative
# to the above (fitted to the 0.5B-shape runs of docs/benchmarks.md, 2026-12-07), and the bytes per token
# autodiff no longer keeps: SiLU's sigmoid (4 per FFN unit) and float32 dropout masks that became booleans
# (3 per LoRA input: 6 of hidden size and one of FFN size per layer; measured 0.24 + 0.37 GB at 0.5B).
FAST_COST = {"silu": 0.3, "mask": 0.8}
FAST_SAVED = {"hidden": 18.0, "ffn": 7.0}
# The process beyond MLX's buffers (Python, MLX, tokenizer, compiled kernels): max RSS − MLX peak measured
# -0.05..+0.11 GB (scripts/bench_plan.py, 2026-12-04; the 0.5B runs of docs/benchmarks.md): gift plan's
# figure is the max RSS it expects.
OVERHEAD = 0.1e9


@dataclasses.dataclass
class Shape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    bits: int = 0  # 0: not quantized
    group_size: int = 64
    dtype_bytes: int = 2

    @classmethod
    def from_config(cls, c, bits=None):
        q = c.get("quantization") or {}
        heads = c["num_attention_heads"]
        dtype = str(c.get("torch_dtype") or c.get("dtype") or "bfloat16")
        return cls(layers=c["num_hidden_layers"], hidden=c["hidden_size"], ffn=c["intermediate_size"], heads=heads,
                   kv_heads=c.get("num_key_value_heads") or heads, head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   vocab=c["vocab_size"], tied=c.get("tie_word_embeddings", True),  # mlx-lm's default: tied
                   bits=q.get("bits", 0) if bits is None else bits, group_size=q.get("group_size", 64),
                   dtype_bytes=4 if "32" in dtype else 2)

    def linears(self):
        """(in, out) of each linear layer of a block: q, k, v, o, gate, up, down."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, f = self.hidden, self.ffn
        return [(h, q), (h, kv), (h, kv), (q, h), (h, f), (h, f), (f, h)]

    def params(self):
        block = sum(i * o for i, o in self.linears()) + 2 * self.hidden
        return self.layers * block + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


def flops_per_token(s, seq, rank=0, kind="train", grad_checkpoint=False, head_share=1.0):
    """Model FLOPs per token; seq: the padded sequence length (causal attention: seq / 2 keys on average).

    kind: "forward" (scoring, validation), "train" (forward + backward through activations + LoRA gradients),
    "decode" (one generated token attending to `seq` cached positions). head_share: the share of positions
    whose logits are needed (a loss or a score on the target tokens needs the LM head there only).
    """
    keys = seq if kind == "decode" else seq / 2
    linear = 2 * s.layers * sum(i * o for i, o in s.linears())
    attention = 4 * s.layers * keys * s.heads * s.head_dim  # QKᵀ and PV
    head = 2 * s.hidden * s.vocab * head_share
    lora = 2 * s.layers * rank * sum(i + o for i, o in s.linears()) if kind != "forward" else 0
    forward = linear + attention + head + lora
    if kind in ("forward", "decode"):
        return forward
    backward = linear + 2 * attention + head + lora + lora  # through activations; LoRA weight gradients
    return forward + backward + ((linear + attention + lora) if grad_checkpoint else 0)


def elementwise_per_token(s, seq, kind="train", grad_checkpoint=False, head_share=1.0, fast=False):
    """Element-wise values per token that cost about an exp each: SiLU, the attention softmax over `seq` keys
    (MLX's CPU attention forms all seq × seq scores), forward and backward when training, the LoRA inputs'
    dropout masks (training), and the softmax over the vocabulary where logits are needed (head_share).
    fast: inside `gift train` on a CPU in float32, with gift_mlx.fastmath's SiLU and dropout (FAST_COST)."""
    passes = (3 if grad_checkpoint else 2) if kind == "train" else 1
    silu, softmax = passes * s.ffn, passes * s.heads * seq
    masks = 6 * s.hidden + s.ffn if kind == "train" else 0
    if fast:
        silu, masks = FAST_COST["silu"] * silu, FAST_COST["mask"] * masks
    return s.layers * (silu + softmax + masks) + s.vocab * head_share


def seconds(flops, elements, gflops, exp_rate, streams=1):
    """Matmul FLOPs at the measured rate plus element-wise values at the measured exp rate, the element-wise
    work split over `streams` (the scoring pass: one CPU stream per core)."""
    return flops / (gflops * 1e9) + ELEMENT_COST * elements / (exp_rate * streams)


def weight_bytes(s, compute_bytes):
    """Bytes of the weights as they are computed with: packed 4/8-bit plus a scale and bias per group, or
    every weight in compute_bytes."""
    n = s.params()
    if not s.bits:
        return n * compute_bytes
    quantized = s.layers * sum(i * o for i, o in s.linears()) + s.vocab * s.hidden * (1 if s.tied else 2)
    return quantized * (s.bits / 8 + 2 * s.dtype_bytes / s.group_size) + (n - quantized) * s.dtype_bytes


def lora_params(s, rank, layers=None):
    return (layers or s.layers) * rank * sum(i + o for i, o in s.linears())


def peak_bytes(s, batch, seq, rank, grad_checkpoint=False, compute_bytes=4, guide=None, logits_budget=2**24,
               target_share=1.0, fast=False):
    """MLX's estimated peak during training: weights, LoRA (parameter, gradient, accumulated gradient, AdamW's
    two moments: 5 × float32), activations kept for the backward, logits (chunked: of the target positions
    only); the guide's weights with online scoring. fast: with gift_mlx.fastmath (FAST_SAVED)."""
    n = batch * seq
    scale = compute_bytes / 4  # ACT was fitted in float32
    saved = FAST_SAVED if fast else {"hidden": 0, "ffn": 0}
    layer = ((ACT["hidden"] - saved["hidden"]) * s.hidden + (ACT["ffn"] - saved["ffn"]) * s.ffn
             + ACT["attention"] * s.heads * seq)
    if grad_checkpoint:  # only the blocks' inputs stay; one block's activations are rebuilt at a time
        act = n * (s.layers * ACT["checkpoint"] * s.hidden + layer)
    else:
        act = n * s.layers * layer
    logits = n * s.vocab * (ACT["logits_chunked"] * target_share if n * s.vocab > logits_budget else ACT["logits"])
    total = weight_bytes(s, compute_bytes) + 20 * lora_params(s, rank) + scale * act + logits
    if guide is not None:
        total += weight_bytes(guide, compute_bytes)
    return total


def uses_fastmath(device, compute_bytes):
    """Whether `gift train` computes with gift_mlx.fastmath here: on a CPU, in float32."""
    return device == "cpu" and compute_bytes == 4


def as_computed(s, device, memory):
    """(shape, bytes per value) as gift computes: on a CPU a half-precision or quantized model becomes float32
    when the copy fits in 0.4 of the memory (models.cpu_float32); otherwise the weights stay as they are."""
    if device == "gpu":
        return s, s.dtype_bytes
    f32 = s.params() * 4
    if f32 + weight_bytes(s, s.dtype_bytes) <= 0.4 * memory:
        return dataclasses.replace(s, bits=0), 4
    return s, s.dtype_bytes


def machine():
    """(device, usable memory in bytes, measured float32 matmul GFLOP/s, measured exp values/s) of this machine."""
    import mlx.core as mx

    from .doctor import exp_rate, matmul_gflops

    if mx.metal.is_available():
        device, memory = "gpu", mx.device_info()["max_recommended_working_set_size"]
    else:
        device, memory = "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return device, memory, matmul_gflops(1024, 0.5), exp_rate()


@dataclasses.dataclass
class Estimate:
    peak_gb: float
    fits: bool
    epoch_s: float
    score_s: float
    train_flops_per_token: float
    tokens_per_epoch: int
    compute_bytes: int
    bits: int


def estimate(s, batch, seq, rank, tokens_per_epoch, device, memory, gflops, exp_rate, grad_checkpoint=False,
             online=False, score=True, target_share=1.0):
    """Peak memory and seconds per epoch (training; scoring pass separately) of one configuration.
    target_share: the share of tokens that are targets; where the logits are chunked (objective.chunked) gift
    runs the LM head on those only, and the scoring pass always does."""
    from .blas import cores
    from .objective import LOGITS_BUDGET

    s, cb = as_computed(s, device, memory)
    fast = uses_fastmath(device, cb)
    peak = peak_bytes(s, batch, seq, rank, grad_checkpoint, cb, guide=s if online else None,
                      target_share=target_share, fast=fast) + OVERHEAD
    share = target_share if batch * seq * s.vocab > LOGITS_BUDGET else 1.0
    flops = flops_per_token(s, seq, rank, "train", grad_checkpoint, share)
    elements = elementwise_per_token(s, seq, "train", grad_checkpoint, share, fast)
    if online:  # the guide's forward; its head on the targets too
        flops += flops_per_token(s, seq, kind="forward", head_share=share)
        elements += elementwise_per_token(s, seq, "forward", head_share=share)  # on its own stream, as fitted
    epoch = tokens_per_epoch * seconds(flops, elements, gflops, exp_rate)
    scoring = tokens_per_epoch * seconds(flops_per_token(s, seq, kind="forward", head_share=target_share),
                                         elementwise_per_token(s, seq, "forward", head_share=target_share),
                                         gflops, exp_rate, cores() if device == "cpu" else 1)
    return Estimate(peak / 1e9, peak <= memory * 0.9, epoch, scoring if score and not online else 0.0, flops,
                    tokens_per_epoch, cb, s.bits)


def data_tokens(cfg, batch, seq):
    """(padded tokens of one epoch, longest padded batch length, target tokens ÷ padded tokens) of cfg.data as
    gift train batches it."""
    import numpy as np

    from .data import batch_order, fit_pad_lengths, load_data
    from .models import load_tokenizer

    tokenizer = load_tokenizer(cfg.instruct or cfg.base, chat=True)
    ds = load_data(cfg.data, tokenizer, seq, splits=("train",))["train"]
    lengths = [len(e.tokens) - 1 for e in ds.examples]
    pads = fit_pad_lengths(lengths, seq, cfg.pad_lengths)
    total = longest = 0
    for idx in batch_order([n + 1 for n in lengths], batch, np.random.default_rng(cfg.seed)):
        width = min(p for p in pads if p >= max(lengths[i] for i in idx))
        total += len(idx) * width
        longest = max(longest, width)
    return total, longest, sum(e.num_targets for e in ds.examples) / max(total, 1)


def model_config(name, download=False):
    """config.json of a local folder or a model in the Hugging Face cache (fetched from the Hub only when
    download=True), or a named shape from SHAPES."""
    import json

    from .models import cached_path, read_config

    if name in SHAPES:
        return dict(SHAPES[name])
    path = cached_path(name)
    if path is not None:
        return read_config(path)
    if not download:
        raise GiftError(f"{name}: no config.json on this machine (a folder, or a model in the Hugging Face cache); "
                        f"pass --download to fetch it, or --shape one of {', '.join(SHAPES)}")
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(open(hf_hub_download(name, "config.json")).read())
    except Exception as e:
        raise GiftError(f"{name}: cannot fetch config.json from the Hugging Face Hub ({type(e).__name__})")


def options_table(s, rank, device, memory, gflops, exp_rate, batches=(1, 2, 4), seqs=(512, 1024, 2048), tokens=None):
    """Rows of (bits, grad_checkpoint, batch, seq, Estimate) over the usual settings."""
    rows = []
    for bits in (0, 4):
        shape = dataclasses.replace(s, bits=bits or 0)
        for ckpt in (False, True):
            for b in batches:
                for t in seqs:
                    e = estimate(shape, b, t, rank, tokens or b * t, device, memory, gflops, exp_rate, ckpt)
                    rows.append((bits, ckpt, b, t, e))
    return rows


def fmt_time(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def plan(cfg, shape=None, bits=None, memory_gb=None, device=None, table=False, download=False, log=print):
    """`gift plan`: print the estimate for cfg (and the options table); return the Estimate."""
    name = shape or cfg.base or cfg.instruct
    if not name:
        raise GiftError("plan needs --base (a model folder or a cached Hub id) or --shape")
    s = Shape.from_config(model_config(name, download), bits)
    here_device, here_memory, gflops, exps = machine()
    device = device or here_device
    memory = memory_gb * 1e9 * (2 / 3 if device == "gpu" else 1) if memory_gb else here_memory
    seq, batch, rank = cfg.max_seq_length, cfg.batch_size, cfg.lora_rank
    share = 1.0
    if cfg.data:
        tokens, seq, share = data_tokens(cfg, batch, seq)
    else:
        tokens = None
    online = cfg.online_scores and cfg.method in ("gift", "gift-base")
    e = estimate(s, batch, seq, rank, tokens or batch * seq, device, memory, gflops, exps, cfg.grad_checkpoint, online,
                 score=cfg.method in ("gift", "gift-base"), target_share=share)
    where = f"{memory / 1e9:.1f} GB usable" + (" (2/3 of a Mac's memory: its recommended working set)"
                                                if memory_gb and device == "gpu" else "")
    log(f"model: {name}: {s.layers} layers, hidden {s.hidden}, FFN {s.ffn}, {s.heads}/{s.kv_heads} heads, "
        f"vocabulary {s.vocab}, "
        + (f"{s.params() / 1e9:.2f}B" if s.params() >= 1e9 else f"{s.params() / 1e6:.1f}M") + " parameters"
        + (f", {s.bits}-bit" if s.bits else "") + "; computed in "
        + (f"{e.bits}-bit" if e.bits else "float32" if e.compute_bytes == 4 else "16-bit")
        + (" (dequantized: CPU 4-bit matmuls are ~500x slower)" if s.bits and not e.bits else ""))
    log(f"machine: {device}, {where}, float32 matmul {gflops:.0f} GFLOP/s, exp {exps / 1e6:,.0f} M values/s on one "
        "stream (measured now, on this machine)")
    log(f"settings: batch {batch} × {seq} tokens, LoRA rank {rank}, grad checkpoint {'on' if cfg.grad_checkpoint else 'off'}"
        + (", online scores" if online else ""))
    log(f"estimated peak memory: {e.peak_gb:.1f} GB (MLX's peak + {OVERHEAD / 1e9:.1f} GB for the process): "
        f"{'fits' if e.fits else 'does NOT fit'} in {where}")
    if tokens:
        log(f"estimated time per epoch ({tokens:,} padded tokens): training {fmt_time(e.epoch_s)}"
            + (f", scoring pass {fmt_time(e.score_s)}" if e.score_s else "")
            + f" ({e.train_flops_per_token / 1e9:.2f} GFLOP per token, plus the element-wise work)")
    else:
        log(f"estimated time per step: {fmt_time(e.epoch_s)} (pass --data for the time per epoch)")
    if table:  # seconds per step only for this machine (its measured matmul rate)
        here = device == here_device and not memory_gb
        log("\n| base | grad checkpoint | batch | max length | peak GB | fits |" + (" s/step |" if here else ""))
        log("|---|---|---|---|---|---|" + ("---|" if here else ""))
        for b_bits, ckpt, b, t, r in options_table(s, rank, device, memory, gflops, exps):
            kind = "float32" if r.compute_bytes == 4 else "bf16"
            log(f"| {(f'{b_bits}-bit' + ('' if r.bits else f' ({kind} on CPU)')) if b_bits else kind} | "
                f"{'on' if ckpt else 'off'} | {b} | {t} | {r.peak_gb:.1f} | {'yes' if r.fits else 'no'} |"
                + (f" {r.epoch_s:.0f} |" if here else ""))
    return e
