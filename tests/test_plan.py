"""gift plan: FLOP counts from the shapes, and the peak-memory estimate against a real tiny training run."""

import json

import mlx.core as mx
import pytest
from click.testing import CliRunner

from gift_mlx import plan, toy
from gift_mlx.cli import main
from gift_mlx.config import TrainConfig
from gift_mlx.train import train


def test_flops_count_every_matmul():
    s = plan.Shape.from_config(toy.model_config("llama", vocab_size=100, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128))
    linear = 2 * 2 * (64 * 64 + 64 * 32 * 2 + 64 * 64 + 3 * 64 * 128)
    attention, head = 4 * 2 * 8 * 4 * 16, 2 * 64 * 100  # 16 positions: 8 keys on average (causal)
    assert plan.flops_per_token(s, 16, kind="forward") == linear + attention + head
    lora = 2 * 2 * 8 * sum(i + o for i, o in s.linears())
    assert plan.flops_per_token(s, 16, 8) == 2 * (linear + head) + 3 * attention + 3 * lora
    assert s.params() == 2 * (linear // 4 + 128) + 2 * 100 * 64 + 64  # untied: embedding and head
    qwen = plan.Shape.from_config(plan.SHAPES["qwen2.5-0.5b"])
    assert abs(qwen.params() - 494e6) < 2e6  # Qwen2.5-0.5B: 0.49B parameters (the q/k/v biases aside)


def test_estimate_matches_a_tiny_training_run(tmp_path, qwen2_pair, task_data):
    base, instruct = qwen2_pair
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path / "a"),
                      method="shadow-ft", iters=3, batch_size=4, lora_rank=8, max_seq_length=64, val_batches=0,
                      steps_per_report=1, pair_check=False)
    mx.reset_peak_memory()  # the peak is the process's: count from what earlier tests left in memory
    before = mx.get_active_memory()
    train(cfg, log=lambda m: None)
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    measured = max(r["peak_memory_gb"] for r in rows if "peak_memory_gb" in r) * 1e9 - before
    s = plan.Shape.from_config(json.loads((base / "config.json").read_text()))
    tokens, seq, share = plan.data_tokens(cfg, cfg.batch_size, cfg.max_seq_length)
    estimated = plan.peak_bytes(s, cfg.batch_size, seq, cfg.lora_rank)
    # the coefficients were fitted on larger models (hidden 128-512)
    print(f"tiny run: estimated {estimated / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB")
    assert 0.8 < estimated / measured < 1.2, (estimated, measured)  # -2% when written


def test_plan_command_tells_what_fits_a_16gb_mac():
    result = CliRunner().invoke(main, ["plan", "--shape", "qwen2.5-7b", "--memory-gb", "16", "--device", "gpu",
                                       "--table", "--batch-size", "1", "--max-seq-length", "1024", "--lora-rank", "16"])
    assert result.exit_code == 0, result.output
    assert "does NOT fit in 10.7 GB" in result.output  # bf16 7B: 15 GB of weights alone
    rows = [line for line in result.output.splitlines() if line.startswith("| 4-bit | on | 1 | 512 |")]
    assert rows and rows[0].endswith("| yes |")


def test_plan_refuses_a_model_not_on_this_machine(tmp_path):
    result = CliRunner().invoke(main, ["plan", "--base", "someone/not-cached-model"])
    assert result.exit_code == 2 and "error: someone/not-cached-model: no config.json on this machine" in result.output


def test_time_is_the_matmuls_at_their_rate_plus_the_elementwise_work_at_the_exp_rate():
    s = plan.Shape.from_config(plan.SHAPES["qwen2.5-0.5b"])
    f, e = plan.flops_per_token(s, 256, 16, head_share=0.5), plan.elementwise_per_token(s, 256, head_share=0.5)
    assert f == plan.flops_per_token(s, 256, 16) - 0.5 * 2 * 2 * s.hidden * s.vocab  # the head: forward + backward
    assert e == plan.elementwise_per_token(s, 256) - 0.5 * s.vocab
    assert plan.elementwise_per_token(s, 256, "forward") < e  # no backward, no dropout masks
    assert plan.seconds(f, e, 200, 1e8) == pytest.approx(f / 200e9 + plan.ELEMENT_COST * e / 1e8)
    assert plan.seconds(0, e, 200, 1e8, streams=2) == pytest.approx(plan.ELEMENT_COST * e / 2e8)


def test_fastmath_training_counts_its_cheaper_silu_and_masks_and_the_arrays_it_does_not_keep():
    s = plan.Shape.from_config(plan.SHAPES["qwen2.5-0.5b"])
    slow, fast = plan.elementwise_per_token(s, 256), plan.elementwise_per_token(s, 256, fast=True)
    cut = s.layers * ((1 - plan.FAST_COST["silu"]) * 2 * s.ffn + (1 - plan.FAST_COST["mask"]) * (6 * s.hidden + s.ffn))
    assert slow - fast == pytest.approx(cut)
    saved = plan.peak_bytes(s, 2, 256, 16) - plan.peak_bytes(s, 2, 256, 16, fast=True)
    assert saved == pytest.approx(512 * s.layers * (plan.FAST_SAVED["hidden"] * s.hidden + plan.FAST_SAVED["ffn"] * s.ffn))
    on_cpu = plan.estimate(s, 2, 256, 16, 512, "cpu", 64e9, 200, 1e8)
    on_gpu = plan.estimate(s, 2, 256, 16, 512, "gpu", 64e9, 200, 1e8)  # bfloat16 there: mlx-lm's own functions
    assert on_cpu.compute_bytes == 4 and on_gpu.compute_bytes == 2
    assert on_cpu.peak_gb * 1e9 == pytest.approx(plan.peak_bytes(s, 2, 256, 16, fast=True) + plan.OVERHEAD)
