"""The committed toy world (gift_mlx/world/): it loads as ordinary model folders, its data is gradable, the
instruct model really is an instruction-tuned version of the base, close to it in weight space, and the world
has the properties GIFT needs (issue 14): an instruct model partly able on the task, whose confidence varies
over the task's targets because the task is written in a style the instruct model does not use."""

import importlib.util

import json
import re
from pathlib import Path

import pytest

from gift_mlx import grading
from gift_mlx.demo import WORLD

WORLD_JSON = json.loads((WORLD / "world.json").read_text())
ROOT = Path(__file__).parent.parent


def build_script():
    spec = importlib.util.spec_from_file_location("build_toy_world", ROOT / "scripts" / "build_toy_world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.parametrize("name", ["base", "instruct"])
def test_models_load_with_mlx_lm_and_share_a_chatml_tokenizer(name):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    model, tokenizer = load(str(WORLD / name))
    config = json.loads((WORLD / name / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    params = dict(tree_flatten(model.parameters()))
    assert all(v.dtype == mx.float16 for v in params.values())
    assert sum(v.size for v in params.values()) == WORLD_JSON["parameters"]
    assert tokenizer.eos_token == "<|im_end|>"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3+4?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text and len(ids) == len("user\nWhat is 3+4?\n") + 3 + len("assistant\n")


def test_world_is_small_and_described():
    size = sum(p.stat().st_size for p in WORLD.rglob("*") if p.is_file())
    assert size < 10e6
    # the build time is recorded (and reported in docs/results.md), not asserted: speed targets live in scripts/
    for key in ("seed", "command", "parameters", "pretraining", "instruction_tuning", "accuracy", "build_seconds",
                "pair_check", "task_confidence"):
        assert key in WORLD_JSON


def test_task_splits_are_gradable_and_disjoint():
    splits = {s: rows(WORLD / "data" / "task" / f"{s}.jsonl") for s in ("train", "valid", "test")}
    assert {s: len(r) for s, r in splits.items()} == WORLD_JSON["data"]["task"]
    for r in splits["test"]:
        a, b, c = map(int, re.findall(r"\d+", r["prompt"]))
        assert r["completion"] == f"{a}+{b}={a + b}. {a + b}-{c}={a + b - c}. #### {a + b - c}"
        assert r["completion"].endswith(f"#### {a + b - c}")
        assert grading.grade(r["completion"], str(a + b - c))[1]
    prompts = [{r["prompt"] for r in split} for split in splits.values()]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    retention = rows(WORLD / "data" / "retention.jsonl")
    assert len(retention) == WORLD_JSON["data"]["retention"]
    assert all(grading.parse_answer(r["answer"]) for r in retention)


def test_instruct_follows_instructions_and_ends_its_turn_where_the_base_does_not(tmp_path):
    """Greedy answers to 20 retention instructions: the instruct model stops and is right far more often."""
    from gift_mlx.evaluate import evaluate

    summary = evaluate([str(WORLD / "base"), str(WORLD / "instruct")], WORLD / "data" / "retention.jsonl",
                       tmp_path / "eval", progress=False, log=lambda m: None, samples=0, greedy=True,
                       max_tokens=64, instruction="", limit=20)
    base, instruct = summary["models"]
    assert instruct["greedy"]["truncated"] < 0.2 < 0.8 < base["greedy"]["truncated"]
    assert instruct["greedy_accuracy"] >= 0.4 and instruct["greedy_accuracy"] > base["greedy_accuracy"] + 0.3


def test_recorded_accuracies_leave_room_for_transfer():
    """Issue 14's targets, as recorded at build time: the instruct model follows the retention instructions and
    ends its turn, the base does not end its turns, and the instruct model is partly able on the task."""
    acc = WORLD_JSON["accuracy"]
    assert acc["instruct"]["retention"]["average@k"] >= 0.5 and acc["instruct"]["retention"]["stop_rate"] >= 0.95
    assert acc["base"]["retention"]["stop_rate"] < 0.2 and acc["base"]["task"]["stop_rate"] < 0.2
    assert 0.1 <= acc["instruct"]["task"]["average@k"] <= 0.6


def test_pair_is_close_in_weight_space():
    """The recorded base -> instruct distance is the committed weights' (recomputed here with numpy) and is in the
    range of real transfer pairs (Qwen2.5-0.5B: 0.07), not of the 0.32 of the first world."""
    import numpy as np
    from safetensors.numpy import load_file

    base, inst = (load_file(str(WORLD / m / "model.safetensors")) for m in ("base", "instruct"))
    mats = [k for k in base if base[k].ndim == 2]
    num = sum(float(np.sum((inst[k].astype(np.float64) - base[k].astype(np.float64)) ** 2)) for k in mats)
    den = sum(float(np.sum(base[k].astype(np.float64) ** 2)) for k in mats)
    recorded = WORLD_JSON["pair_check"]["overall"]["relative_distance"]  # gift pair-check's figure
    assert recorded == pytest.approx((num / den) ** 0.5, abs=1e-4)
    assert recorded <= 0.08 and WORLD_JSON["pair_check"]["verdict"] == "close"


def test_task_style_is_foreign_to_the_instruct_model():
    """No pretraining document or instruction answer uses the task's '####' style, and the instruct model's
    recorded confidence on the task's targets is spread out (low on '####', higher on digits)."""
    import random

    world = build_script()
    rng = random.Random(0)
    assert not any("####" in world.pretrain_document(rng) for _ in range(2000))
    assert not any("####" in world.instruction_row(rng)[2] for _ in range(2000))
    conf = WORLD_JSON["task_confidence"]
    assert conf["mean_by_kind"]["#"] < 0.5 * conf["mean_by_kind"]["digit"]
    assert conf["below_0.1"] > 0.05 and conf["above_0.9"] > 0.05


def test_package_data_ships_the_world():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "world/**/*" in pyproject["tool"]["setuptools"]["package-data"]["gift_mlx"]
