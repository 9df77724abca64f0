"""Where a training step's time goes at a model's shape: the blocks' forward, one block's forward by op
(matmuls, SiLU, attention softmax, RoPE, norms, LoRA dropout masks), the LM head + cross-entropy (whole logits
or in chunks), the compiled step with and without chunking, the optimizer; against the matmul rate measured in
the same process.

    python scripts/profile_step.py --model FOLDER [--batch 2 --seq 256 --rank 16]

FOLDER: a model folder (e.g. the float32 base that `bench_train.py --shape` builds under its --work folder).
"""

import argparse
import json
import statistics
import time

import gift_mlx  # noqa: F401  (preloads OpenBLAS)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from gift_mlx import fastmath, objective, plan
from gift_mlx.config import TrainConfig
from gift_mlx.doctor import matmul_gflops
from gift_mlx.models import cpu_float32, load_model
from gift_mlx.train import add_lora, build_step


def timed(f, reps=3):
    mx.eval(f())  # warm-up (and compilation)
    out = []
    for _ in range(reps):
        tic = time.perf_counter()
        mx.eval(f())
        out.append(time.perf_counter() - tic)
    return statistics.median(out)


def by_op(model, s, B, T, add):
    """One block's forward split into its ops (mlx-lm's own modules), each timed alone and × the block count."""
    layer, L, n = model.layers[0], s.layers, B * T
    attn, mlp = layer.self_attn, layer.mlp
    q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
    xb = mx.random.normal((B, T, s.hidden))
    g = mx.random.normal((B, T, s.ffn))
    q = mx.random.normal((B, s.heads, T, s.head_dim))
    kv = mx.random.normal((B, s.kv_heads, T, s.head_dim))
    xo = mx.random.normal((B, T, q_out))
    mx.eval(xb, g, q, kv, xo)
    drop = nn.Dropout(0.05)
    model.eval()  # the LoRA layers without their dropout: the masks are timed on their own below
    ops = [
        ("q, k, v, o projections (LoRA)", lambda: [attn.q_proj(xb), attn.k_proj(xb), attn.v_proj(xb), attn.o_proj(xo)],
         2 * n * s.hidden * (2 * q_out + 2 * kv_out)),
        ("gate, up, down projections (LoRA)", lambda: [mlp.gate_proj(xb), mlp.up_proj(xb), mlp.down_proj(g)],
         2 * n * 3 * s.hidden * s.ffn),
        ("SiLU(gate) × up", lambda: nn.silu(g) * g, None),
        ("attention: scores, causal softmax, values (sdpa)", lambda: mx.fast.scaled_dot_product_attention(
            q, kv, kv, scale=s.head_dim ** -0.5, mask="causal"), 4 * n * T * q_out),
        ("RoPE on q and k", lambda: [attn.rope(q), attn.rope(kv)], None),
        ("RMSNorm × 2", lambda: [layer.input_layernorm(xb), layer.post_attention_layernorm(xb)], None),
        ("residual adds × 2", lambda: [xb + xb, xb - xb], None),
        ("dropout masks of the 7 LoRA inputs (training)", lambda: [drop(xb) for _ in range(5)] + [drop(xo), drop(g)],
         None),
    ]
    total = 0.0
    for name, f, flops in ops:
        seconds = L * timed(f)
        total += seconds
        add(f"  × {L} blocks: {name}", seconds, flops and L * flops)
    add("  sum of the ops above (dropout included)", total)
    model.train()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (after one warm-up) of each step")
    args = ap.parse_args()

    rate = matmul_gflops(1024, 1.0)
    model, _, config = load_model(args.model)
    cpu_float32(model, args.model, log=lambda m: None)
    mx.random.seed(0)
    add_lora(model, TrainConfig(lora_rank=args.rank, lora_dropout=0.05))
    model.train()
    s = plan.Shape.from_config(config)
    B, T = args.batch, args.seq
    rng = np.random.default_rng(0)
    x = mx.array(rng.integers(0, s.vocab, (B, T)).astype(np.int32))
    w = mx.ones((B, T))
    body, head = objective.split_head(model)
    h = body(x)
    mx.eval(h)
    n = B * T
    rows = {}

    def add(name, seconds, flops=None, peak=None):
        rows[name] = {"s": seconds, "gflops": flops and flops / seconds / 1e9,
                      "of_matmul": flops and flops / seconds / 1e9 / rate, "peak_gb": peak}
        print(f"{name:55s} {seconds * 1e3:9.1f} ms" + (f"  {flops / seconds / 1e9:7.1f} GFLOP/s "
              f"({flops / seconds / 1e9 / rate:4.0%} of matmul)" if flops else "")
              + (f"  peak {peak:.2f} GB" if peak else ""), flush=True)

    fwd_blocks = n * (plan.flops_per_token(s, T, kind="forward") - 2 * s.hidden * s.vocab)
    head_f = n * 2 * s.hidden * s.vocab
    add("blocks forward (no grad)", timed(lambda: body(x)), fwd_blocks)
    by_op(model, s, B, T, add)
    add("LM head matmul alone", timed(lambda: head(h)), head_f)
    add("head + cross-entropy, whole logits", timed(lambda: nn.losses.cross_entropy(head(h).astype(mx.float32), x)), head_f)
    chunk = objective.chunk_positions(s.vocab)
    add(f"head + cross-entropy, chunks of {chunk} positions", timed(lambda: objective.chunked_nll(head, h, x, chunk)), head_f)
    g_full = mx.grad(lambda hh: nn.losses.cross_entropy(head(hh).astype(mx.float32), x).sum())
    g_fused = mx.grad(lambda hh: objective.fused_nll(head, hh, x, chunk).sum())
    add("head + CE forward and dL/dh, autodiff on whole logits", timed(lambda: g_full(h)), 2 * head_f)
    add("head + CE forward and dL/dh, fused chunks", timed(lambda: g_fused(h)), 2 * head_f)
    train_flops = n * plan.flops_per_token(s, T, args.rank)
    fastmath.cpu_dropout(model)  # the compiled steps as `gift train` runs them (on a CPU: with fastmath)
    with fastmath.cpu_activations(model):
        for label, budget in (("chunked head (gift's default above 2^24 logits)", 2**24), ("whole logits", 2**62)):
            objective.LOGITS_BUDGET = budget
            step, state = build_step(model, optim.AdamW(learning_rate=1e-5))
            mx.reset_peak_memory()
            seconds = timed(lambda: (state, step(x, x, w, None, None, None, True)[1]), args.reps)
            add(f"compiled step: {label}", seconds, train_flops, mx.get_peak_memory() / 1e9)
    objective.LOGITS_BUDGET = 2**24
    opt = optim.AdamW(learning_rate=1e-5)
    grads = model.trainable_parameters()
    opt.init(grads)
    add("AdamW update of the LoRA parameters", timed(lambda: (opt.apply_gradients(grads, model.trainable_parameters()),
                                                             opt.state)))
    print(json.dumps({"matmul_gflops": rate, "batch": B, "seq": T, "rows": rows}))


if __name__ == "__main__":
    main()
