"""After a clean error, no command leaves a folder it created: score and train with a guide whose confidences
are NaN, merge / export-adapter / eval into a nested new --out that fails, demo on a failing world."""

import json
import shutil

import mlx.core as mx
import pytest
from click.testing import CliRunner

from gift_mlx.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def failed(result, text):
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert text in result.stderr, result.stderr


@pytest.fixture(scope="module")
def nan_instruct(llama_pair, tmp_path_factory):
    """The instruct model with NaN in its final norm: every confidence is NaN."""
    out = shutil.copytree(llama_pair[1], tmp_path_factory.mktemp("nan") / "instruct")
    (weights,) = out.glob("*.safetensors")
    tensors = mx.load(str(weights))
    key = next(k for k in tensors if k.endswith("model.norm.weight"))
    mx.save_safetensors(str(weights), {**tensors, key: mx.full(tensors[key].shape, float("nan"))},
                        metadata={"format": "mlx"})
    return out


def test_score_and_train_leave_no_folder_after_non_finite_confidences(tmp_path, llama_pair, task_data, nan_instruct):
    failed(run("score", "--instruct", nan_instruct, "--data", task_data, "--scores-path", tmp_path / "o3" / "s"),
           "not finite")
    assert not (tmp_path / "o3").exists()
    train = lambda out: run("train", "--base", llama_pair[0], "--instruct", nan_instruct, "--data", task_data,  # noqa: E731
                            "--adapter-path", out, "--iters", 1, "--lora-rank", 4, "--lora-alpha", 8, "--no-pair-check")
    failed(train(tmp_path / "adapter"), "not finite")
    assert not (tmp_path / "adapter").exists()
    mine = tmp_path / "existing"  # a folder the user made: kept, with only what the run added removed
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    failed(train(mine), "not finite")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_merge_export_and_eval_into_a_nested_new_out_leave_nothing_on_failure(tmp_path, llama_pair, task_data):
    adapter = tmp_path / "adapter"
    assert run("train", "--base", llama_pair[0], "--instruct", llama_pair[1], "--data", task_data, "--adapter-path",
               adapter, "--iters", 1, "--lora-rank", 4, "--lora-alpha", 8).exit_code == 0
    broken = shutil.copytree(llama_pair[1], tmp_path / "broken")
    (next(broken.glob("*.safetensors"))).write_bytes(b"\x00" * 16)  # unreadable weights: fails inside the stage
    failed(run("merge", "--adapter-path", adapter, "--instruct", broken, "--out", tmp_path / "m" / "n" / "merged"),
           "error: ")
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"question": "What is 1+2?", "answer": "3"}) + "\n")
    failed(run("eval", "--model", broken, "--data", problems, "--out", tmp_path / "e" / "f", "--samples", 1,
               "--max-tokens", 2), "error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "broken", "p.jsonl"]
