"""The `gift` command as a user runs it: real subprocesses, exit codes, files on disk."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from gift_mlx import toy


def gift(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gift_mlx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_score_then_train_from_yaml_with_overrides_then_mlx_lm_generate(tmp_path, llama_pair, task_data):
    base, instruct = llama_pair
    r = gift("score", "--instruct", instruct, "--data", task_data, "--adapter-path", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a" / "scores" / "train-instruct.safetensors").exists()
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "base": str(base), "instruct": str(instruct), "data": str(task_data), "adapter_path": str(tmp_path / "a"),
        "lora_rank": 4, "lora_alpha": 8, "iters": 50, "batch_size": 2, "steps_per_report": 1,
    }))
    r = gift("train", "-c", config, "--iters", 3, "--lora-keys", "self_attn.q_proj,self_attn.v_proj")
    assert r.returncode == 0, r.stderr
    assert "scores: reusing" in r.stdout
    conf = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert conf["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert conf["lora_parameters"]["rank"] == 4 and conf["lora_parameters"]["scale"] == 2.0
    run = json.loads((tmp_path / "a" / "gift_run.json").read_text())
    assert run["config"]["iters"] == 3 and run["method"] == "gift"
    assert len([l for l in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]) == 3
    assert (tmp_path / "a" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    g = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(instruct), "--adapter-path",
                        str(tmp_path / "a"), "--prompt", "What is 1+2?", "--max-tokens", "4"],
                       capture_output=True, text=True, timeout=120)
    assert g.returncode == 0, g.stderr
    assert "Generation:" in g.stdout + g.stderr


@pytest.mark.parametrize("make_args, message", [
    (lambda b, i, d, t: ["--instruct", i, "--data", d], "base: required for method 'gift'"),
    (lambda b, i, d, t: ["--base", b, "--instruct", i, "--data", t / "nope"], "no such data file or folder"),
    (lambda b, i, d, t: ["--base", t / "missing", "--instruct", i, "--data", d], "no such model folder"),
    (lambda b, i, d, t: ["--base", b, "--instruct", i, "--data", d, "--batch-size", 0], "batch_size: must be at least 1"),
    (lambda b, i, d, t: ["--base", b, "--instruct", i, "--data", d, "--learning-rate", -1], "learning_rate: must be positive"),
    (lambda b, i, d, t: ["--base", b, "--instruct", i, "--data", d, "--batch-size", 100], "more than the 64 training rows"),
    (lambda b, i, d, t: ["-c", t / "bad.yaml"], "unknown field(s): lora_rnk"),
    (lambda b, i, d, t: ["--base", t / "other", "--instruct", i, "--data", d], "differ in architecture: hidden_size"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, llama_pair, task_data, make_args, message):
    base, instruct = llama_pair
    (tmp_path / "bad.yaml").write_text("lora_rnk: 8\n")
    if "other" in str(make_args(base, instruct, task_data, tmp_path)):
        vocab = toy.build_tokenizer(tmp_path / "tok")
        toy.build_model(tmp_path / "other", toy.model_config("llama", vocab, hidden=32), tmp_path / "tok")
    r = gift("train", *make_args(base, instruct, task_data, tmp_path), "--adapter-path", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error: ") and message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_doctor_reports_backend_and_blas():
    r = gift("doctor")
    assert r.returncode == 0, r.stderr
    assert "mlx" in r.stdout and "GFLOP/s" in r.stdout and "BLAS" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload and its warnings are Linux's")
def test_a_missing_gift_blas_warns_once_per_command(llama_pair):
    env = {**os.environ, "GIFT_BLAS": "/nonexistent/libopenblas.so.0", "GIFT_BLAS_WARN": "1"}
    r = subprocess.run([sys.executable, "-m", "gift_mlx", "chat", "--model", str(llama_pair[1]), "--prompt", "hi",
                        "--max-tokens", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("warning: ")]
    assert lines[0].startswith("warning: GIFT_BLAS=/nonexistent/libopenblas.so.0: no such file; using ")
    assert sum("GIFT_BLAS=" in l for l in lines) == 1
    r = subprocess.run([sys.executable, "-m", "gift_mlx", "doctor"], capture_output=True, text=True, env=env)
    assert "GIFT_BLAS=/nonexistent/libopenblas.so.0: no such file" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS preload is Linux's")
def test_the_preloaded_openblas_gets_a_short_spin_unless_the_user_set_one():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it loads, so the preload sets it first (blas.py); a value the
    user gave is kept, and GIFT_BLAS=0 (no preload) leaves the environment alone."""
    def timeout_seen(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "GIFT_BLAS")}
        code = "import os, gift_mlx; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env})
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()
    assert timeout_seen() == "4"
    assert timeout_seen(OPENBLAS_THREAD_TIMEOUT="10") == "10"
    assert timeout_seen(GIFT_BLAS="0") == "None"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the slow-BLAS warning is for Linux CPU")
def test_slow_matmuls_warn_with_the_install_hint(monkeypatch):
    from gift_mlx import blas, doctor

    monkeypatch.setenv("GIFT_BLAS_WARN", "1")
    monkeypatch.setattr(blas, "problem", None)
    [warning] = doctor.blas_warnings(rate=3.0)
    assert "3.0 GFLOP/s" in warning and "apt-get install libopenblas0-pthread" in warning
    assert doctor.blas_warnings(rate=100.0) == []
    monkeypatch.setattr(blas, "loaded", None)  # no optimized BLAS: the rate is measured, in a fraction of a second
    monkeypatch.setattr(doctor, "matmul_gflops", lambda n, seconds: 2.0 if (n, seconds) == (256, 0.05) else 0)
    assert "2.0 GFLOP/s" in doctor.blas_warnings()[0]
    monkeypatch.setenv("GIFT_BLAS_WARN", "0")
    assert doctor.blas_warnings(rate=3.0) == []


def test_relative_paths_are_recorded_absolute_and_merge_names_the_config(tmp_path, llama_pair, task_data):
    import shutil

    project = tmp_path / "project"
    for name, src in (("base", llama_pair[0]), ("instruct", llama_pair[1]), ("data", task_data)):
        shutil.copytree(src, project / name)
    r = gift("train", "--base", "base", "--instruct", "./instruct", "--data", "data", "--adapter-path", "a",
             "--lora-rank", 4, "--lora-alpha", 8, "--batch-size", 4, "--iters", 1, cwd=project)
    assert r.returncode == 0, r.stderr
    conf = json.loads((project / "a" / "adapter_config.json").read_text())
    run = json.loads((project / "a" / "gift_run.json").read_text())
    assert conf["base_model"] == run["config"]["base"] == str(project / "base")
    assert conf["instruct_model"] == run["instruct_model"] == str(project / "instruct")
    assert run["config"]["data"] == str(project / "data")
    assert run["data"]["train"]["file"] == str(project / "data" / "train.jsonl")
    r = gift("export-adapter", "--adapter-path", project / "a", "--out", "peft", cwd=tmp_path)  # another folder
    assert r.returncode == 0, r.stderr
    peft = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert peft["base_model_name_or_path"] == str(project / "instruct")

    (project / "instruct").rename(project / "moved")
    r = gift("merge", "--adapter-path", project / "a", "--out", "m", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {project / 'a' / 'adapter_config.json'}: field instruct_model: "
                               f"{project / 'instruct'}: no such model folder"), r.stderr
    assert "--instruct" in r.stderr and not (tmp_path / "m").exists()
