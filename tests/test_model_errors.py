"""Exceptions gift did not foresee: one line naming the model, the command and the exception, exit 1;
`gift --debug` (or GIFT_DEBUG=1) prints the traceback too (docs/errors.md, "Crashes")."""

import shutil

import mlx.core as mx
import pytest
from click.testing import CliRunner

from gift_mlx.cli import main


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def gemma(llama_pair, tmp_path_factory):
    """A gemma3_text model with 2 layers and the default sliding-window pattern (6): mlx-lm's model code
    indexes its cache list at pattern - 1 and fails with IndexError in the first forward."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gemma3_text", vocab_size=384, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    folder = tmp_path_factory.mktemp("gemma") / "gemma-2-layers"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    for f in (llama_pair[0].parent / "tokenizer").iterdir():
        shutil.copy(f, folder)
    return folder


def chat(model):
    return ["chat", "--model", model, "--prompt", "hi", "--max-tokens", 2]


def test_a_crash_in_model_code_is_one_line_naming_model_and_command(gemma):
    result = run(*chat(gemma))
    err = result.stderr.strip()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert len(err.splitlines()) == 1 and "Traceback" not in result.output, err
    assert err.startswith(f"error: {gemma}: gift chat: the model code raised IndexError: list index out of range ")
    assert "(mlx_lm/models/gemma3_text.py:" in err and err.endswith("; run with --debug for the traceback")


def test_score_reports_the_guide_that_crashed(gemma, task_data, tmp_path):
    result = run("score", "--instruct", gemma, "--data", task_data, "--scores-path", tmp_path / "s")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {gemma}: gift score: the model code raised IndexError")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(gemma, how):
    args, env = (["--debug", *chat(gemma)], None) if how == "flag" else (chat(gemma), {"GIFT_DEBUG": "1"})
    result = run(*args, env=env)
    err = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and "Traceback (most recent call last):" in err
    assert any("gemma3_text.py" in line for line in err)
    assert err[-1].startswith(f"error: {gemma}: gift chat: the model code raised IndexError") and "--debug" not in err[-1]


def test_an_unforeseen_exception_in_gift_is_an_internal_error(monkeypatch):
    def broken():
        return 1 / 0

    monkeypatch.setattr("gift_mlx.doctor.report", broken)
    result = run("doctor")
    err = result.stderr.strip()
    assert result.exit_code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("error: gift doctor: internal error: ZeroDivisionError: division by zero (")
    assert "test_model_errors.py" in err and err.endswith("run with --debug for the traceback")


def test_user_errors_keep_exit_2_and_show_a_traceback_only_with_debug(tmp_path):
    plain = run("chat", "--model", tmp_path / "nope", "--prompt", "hi")
    debug = run("--debug", "chat", "--model", tmp_path / "nope", "--prompt", "hi")
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.output and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()


def test_a_nan_in_the_base_is_named_not_blamed_on_the_learning_rate(llama_pair, task_data, tmp_path):
    base = tmp_path / "nan-base"
    shutil.copytree(llama_pair[0], base)
    weights = dict(mx.load(str(base / "model.safetensors")))
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name] = mx.where(mx.arange(weights[name].size).reshape(weights[name].shape) == 5, float("nan"), weights[name])
    mx.save_safetensors(str(base / "model.safetensors"), weights)
    result = run("train", "--base", base, "--instruct", llama_pair[1], "--data", task_data, "--method", "shadow-ft",
                 "--no-pair-check", "--adapter-path", tmp_path / "out", "--iters", 1, "--batch-size", 2)
    err = result.stderr.strip().splitlines()[-1]
    assert result.exit_code == 2, result.output
    assert err.startswith(f"error: step 1: the loss is not finite: {base} holds NaN or infinite values in "
                          "model.layers.1.mlp.up_proj."), err
    assert "learning rate" not in err
