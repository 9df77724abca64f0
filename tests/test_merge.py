"""gift merge: the merged model equals the instruct model with the adapter applied on the fly.

Adapters are made here in our trainer's format (mlx-lm LoRA/DoRA layers with a nonzero B, since a fresh
LoRA adds nothing). Also: quantized instruct models, DoRA, memory, mlx_lm.server, and the refusals.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from gift_mlx import export, outputs, toy
from gift_mlx.cli import main
from gift_mlx.merge import merge
from gift_mlx.models import load_model

TOKENS = [1, 40, 41, 42, 7, 8, 9, 100, 200, 2]


def make_adapter(base_dir, out, instruct_dir=None, kind="lora", keys=None, num_layers=-1, rank=4, scale=2.0, seed=0):
    """Write adapters.safetensors + adapter_config.json as `gift train` does, with random nonzero updates."""
    model, _, _ = load_model(base_dir)
    model.freeze()
    params = {"rank": rank, "scale": scale, "dropout": 0.0, "keys": keys}
    linear_to_lora_layers(model, num_layers, params, use_dora=kind == "dora")
    mx.random.seed(seed)
    weights = {}
    for name, v in tree_flatten(model.trainable_parameters()):
        if name.endswith("lora_b"):
            v = 0.1 * mx.random.normal(v.shape)
        elif name.endswith(".m"):  # DoRA magnitudes: move them off the base norms too
            v = v * (1 + 0.2 * mx.random.normal(v.shape))
        weights[name] = v
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": kind, "num_layers": num_layers, "lora_parameters": params,
              "base_model": str(base_dir), "instruct_model": str(instruct_dir), "method": "gift"}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def logits(model):
    return np.array(model(mx.array([TOKENS]))[0].astype(mx.float32))


def max_diff(a, b):
    return float(np.abs(a - b).max())


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def weight(folder, name):
    return mx.load(str(Path(folder) / "model.safetensors"))[name].astype(mx.float32)


@pytest.fixture(scope="module")
def lora(llama_pair, tmp_path_factory):
    base, instruct = llama_pair
    return make_adapter(base, tmp_path_factory.mktemp("lora") / "adapters", instruct)


@pytest.fixture(scope="module")
def merged(llama_pair, lora, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "merged"
    mx.synchronize()
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    merge(llama_pair[1], lora, out, log=lambda *_: None)
    return out, mx.get_peak_memory() - before


@pytest.fixture(scope="module")
def quantized_pair(qwen2_pair, tmp_path_factory):
    """qwen2 base (float) and its instruct quantized by mlx-lm to 4 bits, group 32 (as mlx-community does)."""
    from mlx_lm.convert import convert

    out = tmp_path_factory.mktemp("quant") / "instruct-4bit"
    convert(str(qwen2_pair[1]), str(out), quantize=True, q_group_size=32, q_bits=4)
    return qwen2_pair[0], out


@pytest.fixture(scope="module")
def qwen_lora(quantized_pair, tmp_path_factory):
    base, instruct = quantized_pair
    return make_adapter(base, tmp_path_factory.mktemp("qlora") / "adapters", instruct, num_layers=1,
                        keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"], seed=1)


def test_merged_logits_equal_adapter_on_the_fly(llama_pair, lora, merged):
    out, _ = merged
    on_the_fly = logits(load_model(llama_pair[1], adapter_path=str(lora))[0])
    got = logits(load_model(out)[0])
    assert max_diff(got, on_the_fly) < 1e-4
    assert max_diff(got, logits(load_model(llama_pair[1])[0])) > 0.1  # the update is really there


def test_merged_folder_is_a_served_model(llama_pair, merged):
    out, _ = merged
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "README.md", outputs.RECORD} <= names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == toy.CHATML
    record = json.loads((out / outputs.RECORD).read_text())
    assert record["instruct_model"] == str(llama_pair[1]) and record["base_model"] == str(llama_pair[0])
    assert record["method"] == "gift" and record["merge_scale"] == 1.0 and len(record["adapter"]["sha256"]) == 64
    assert "mlx_lm.generate" in (out / "README.md").read_text()


def test_merge_streams_the_weights(merged):
    out, peak = merged
    size = (out / "model.safetensors").stat().st_size
    assert peak < 1.5 * size  # loading the instruct model and building the merged one would be 2x


def test_merge_of_an_adapter_from_gift_train(llama_pair, task_data, tmp_path):
    from gift_mlx.config import TrainConfig
    from gift_mlx.train import train

    base, instruct = llama_pair
    cfg = TrainConfig(base=str(base), instruct=str(instruct), data=str(task_data), adapter_path=str(tmp_path / "a"),
                      iters=2, learning_rate=0.05, warmup_ratio=0.0, lora_rank=4, lora_alpha=8, batch_size=2,
                      num_layers=1, max_seq_length=128, val_batches=1)
    train(cfg.validate(), log=lambda *_: None)
    out = merge(None, tmp_path / "a", tmp_path / "m", log=lambda *_: None)  # instruct: from adapter_config
    got = logits(load_model(out)[0])
    assert max_diff(got, logits(load_model(instruct, adapter_path=str(tmp_path / "a"))[0])) < 1e-4
    assert max_diff(got, logits(load_model(instruct)[0])) > 1e-3
    record = json.loads((out / outputs.RECORD).read_text())
    assert len(record["data_sha256"]["train"]) == 64 and record["hyperparameters"]["learning_rate"] == 0.05
    assert "data_sha256" in (out / "README.md").read_text()


def test_scale_multiplies_the_update(llama_pair, lora, merged, tmp_path):
    half = merge(llama_pair[1], lora, tmp_path / "half", scale=0.5, log=lambda *_: None)
    name = "model.layers.1.mlp.down_proj.weight"
    w0 = weight(llama_pair[1], name)
    assert mx.allclose(weight(half, name) - w0, 0.5 * (weight(merged[0], name) - w0), atol=1e-6)


def test_merge_records_the_update_relative_size(llama_pair, merged):
    """||ΔW||_F / ||W||_F over the adapted layers, recomputed here from the written and original weights."""
    out = merged[0]
    before, after = (mx.load(str(Path(f) / "model.safetensors")) for f in (llama_pair[1], out))
    adapted = [k for k in before if k.endswith(".weight") and not mx.array_equal(before[k], after[k])]
    num = sum(float(np.sum((np.array(after[k], np.float64) - np.array(before[k], np.float64)) ** 2)) for k in adapted)
    den = sum(float(np.sum(np.array(before[k], np.float64) ** 2)) for k in adapted)
    recorded = json.loads((out / outputs.RECORD).read_text())["update_relative_size"]
    assert len(adapted) > 0 and recorded == pytest.approx((num / den) ** 0.5, rel=1e-3)


def test_quantized_instruct_float_merge(quantized_pair, qwen_lora, tmp_path):
    base, instruct = quantized_pair
    out = merge(instruct, qwen_lora, tmp_path / "m", log=lambda *_: None)
    model = load_model(out)[0]
    on_the_fly = logits(load_model(instruct, adapter_path=str(qwen_lora))[0])
    assert max_diff(logits(model), on_the_fly) < 1e-4
    assert max_diff(logits(model), logits(load_model(instruct)[0])) > 0.05  # the delta arrived
    layer = model.model.layers[1]
    assert type(layer.self_attn.q_proj).__name__ == "Linear"  # merged layers are float
    assert type(layer.self_attn.k_proj).__name__ == "QuantizedLinear"  # untouched ones stay quantized
    assert "quantization" in json.loads((out / "config.json").read_text())


def test_quantized_instruct_requantize_warns(quantized_pair, qwen_lora, tmp_path):
    base, instruct = quantized_pair
    lines = []
    out = merge(instruct, qwen_lora, tmp_path / "q", requantize=True, log=lines.append)
    assert any(line.startswith("warning: re-quantized 3 merged layers (4-bit, group 32") for line in lines)
    model = load_model(out)[0]
    assert type(model.model.layers[1].self_attn.q_proj).__name__ == "QuantizedLinear"
    on_the_fly = logits(load_model(instruct, adapter_path=str(qwen_lora))[0])
    # rounding blurs the update but it must not vanish (mlx-lm issue #1172)
    assert max_diff(logits(model), on_the_fly) < 0.5 * max_diff(logits(load_model(instruct)[0]), on_the_fly)
    assert json.loads((out / outputs.RECORD).read_text())["requantized"]["mean_error_over_update"] > 0


def test_dtype_casts_float_layers_only(quantized_pair, qwen_lora, tmp_path):
    out = merge(quantized_pair[1], qwen_lora, tmp_path / "m", dtype="bfloat16", log=lambda *_: None)
    weights = mx.load(str(out / "model.safetensors"))
    assert weights["model.layers.1.self_attn.q_proj.weight"].dtype == mx.bfloat16  # merged
    assert weights["model.norm.weight"].dtype == mx.bfloat16
    assert weights["model.layers.1.self_attn.k_proj.scales"].dtype == mx.float32  # still quantized as it was
    assert weights["model.layers.1.self_attn.k_proj.weight"].dtype == mx.uint32


def test_dora_needs_base_then_transfers_the_dense_delta(llama_pair, tmp_path):
    from mlx_lm.tuner.dora import DoRALinear

    base, instruct = llama_pair
    dora = make_adapter(base, tmp_path / "dora", instruct, kind="dora", num_layers=1, keys=["self_attn.v_proj"])
    code, _, err = run_cli("merge", "--adapter-path", dora, "--out", tmp_path / "m")
    assert code == 2 and "DoRA" in err and "--base" in err and not (tmp_path / "m").exists()
    out = merge(instruct, dora, tmp_path / "m", base=base, log=lambda *_: None)
    # reference: mlx-lm's own DoRA fuse on the base model it was trained on
    fused = load_model(base, adapter_path=str(dora))[0].model.layers[1].self_attn.v_proj
    assert isinstance(fused, DoRALinear)
    name = "model.layers.1.self_attn.v_proj.weight"
    expected = weight(instruct, name) + fused.fuse().weight - weight(base, name)
    assert mx.allclose(weight(out, name), expected, atol=1e-5)


def test_dora_refuses_another_base_than_the_recorded_one(llama_pair, qwen2_pair, tmp_path):
    base, instruct = llama_pair
    dora = make_adapter(base, tmp_path / "dora", instruct, kind="dora", num_layers=1, keys=["self_attn.v_proj"])
    code, _, err = run_cli("merge", "--adapter-path", dora, "--base", instruct, "--out", tmp_path / "m")
    assert code == 2 and err.startswith(f"error: --base {instruct}: the DoRA adapter was trained on {base}")
    assert err.strip().endswith(f"pass --base {base}") and not (tmp_path / "m").exists()
    config = json.loads((dora / "adapter_config.json").read_text())  # the recorded base has moved: a note
    (dora / "adapter_config.json").write_text(json.dumps({**config, "base_model": str(tmp_path / "moved")}))
    lines = []
    merge(instruct, dora, tmp_path / "m", base=base, log=lines.append)
    assert lines[0].startswith(f"note: --base {base} stands in for {tmp_path / 'moved'}")


def copy_adapter(lora, to, files):
    """The adapter's two files, plus `files` ({name: text})."""
    to.mkdir()
    for f in ("adapter_config.json", "adapters.safetensors"):
        (to / f).write_bytes((lora / f).read_bytes())
    for name, text in files.items():
        (to / name).write_text(text)
    return to


def test_unfinished_run_is_refused_unless_allowed(llama_pair, lora, tmp_path):
    """A run still holding its lock (or killed holding it) left an intermediate step's adapter."""
    running = copy_adapter(lora, tmp_path / "a", {".gift.lock": f"{os.getpid()} {socket.gethostname()}"})
    code, _, err = run_cli("merge", "--adapter-path", running, "--out", tmp_path / "m")
    assert code == 2 and "unfinished training run: a training run holds its lock (.gift.lock: process" in err
    assert "--allow-unfinished" in err and not (tmp_path / "m").exists()
    code, stdout, err = run_cli("export-adapter", "--adapter-path", running, "--out", tmp_path / "p",
                                "--allow-unfinished")
    assert code == 0 and f"warning: {running}: unfinished training run" in stdout
    assert json.loads((tmp_path / "p" / outputs.RECORD).read_text())["final_metrics"] is None


def test_a_forged_pair_result_is_measured_afresh(llama_pair, lora, tmp_path):
    """pair_check.json beside the adapter that is not a result is stale, not a crash after the output."""
    forged = copy_adapter(lora, tmp_path / "a", {"pair_check.json": "[1]"})
    code, stdout, err = run_cli("merge", "--adapter-path", forged, "--instruct", llama_pair[1], "--out", tmp_path / "m")
    assert code == 0, err
    assert "base -> instruct distance over the same matrices" in stdout


def test_cli_merge_and_force(llama_pair, lora, tmp_path):
    out = tmp_path / "m"
    code, stdout, _ = run_cli("merge", "--instruct", llama_pair[1], "--adapter-path", lora, "--out", out)
    assert code == 0 and "merged 14 layers" in stdout
    code, _, err = run_cli("merge", "--adapter-path", lora, "--out", out)
    assert code == 2 and err.startswith("error: ") and "already exists" in err and "--force" in err
    assert run_cli("merge", "--adapter-path", lora, "--out", out, "--force")[0] == 0


@pytest.mark.parametrize("case", ["not-adapter", "out-is-input", "out-inside-adapter", "foreign-folder",
                                  "wrong-shape", "wrong-architecture", "missing-layer"])
def test_cli_refusals(case, llama_pair, qwen2_pair, lora, tmp_path):
    base, instruct = llama_pair
    args = {"--instruct": instruct, "--adapter-path": lora, "--out": tmp_path / "out"}
    flags = []
    expect = {"not-adapter": "not an adapter folder", "out-is-input": "must not be",
              "out-inside-adapter": "must not be", "foreign-folder": "not written by gift",
              "wrong-shape": "model.layers.0.self_attn.q_proj.lora_a: adapter (32, 4) vs instruct",
              "wrong-architecture": "differ in architecture: model_type: qwen2 vs llama",
              "missing-layer": "model.layers.7.mlp.up_proj: no such layer in instruct"}[case]
    if case == "not-adapter":
        args["--adapter-path"] = instruct
    elif case == "out-is-input":
        args["--out"] = instruct
    elif case == "out-inside-adapter":
        args["--out"] = lora / "merged"
    elif case == "foreign-folder":  # even --force must not delete a folder gift did not write
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "notes.txt").write_text("mine")
        flags = ["--force"]
    elif case == "wrong-architecture":
        args["--adapter-path"] = make_adapter(qwen2_pair[0], tmp_path / "qa", instruct, num_layers=1)
    else:
        args["--adapter-path"] = broken_adapter(lora, tmp_path / "bad", case)
    code, _, err = run_cli("merge", *[x for kv in args.items() for x in kv], *flags)
    assert code == 2, err
    assert err.startswith("error: ") and expect in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "out").exists() == (case == "foreign-folder")
    assert sorted(p.name for p in lora.iterdir()) == ["adapter_config.json", "adapters.safetensors"]


def broken_adapter(lora, out, case):
    out.mkdir()
    weights = dict(mx.load(str(lora / "adapters.safetensors")))
    if case == "wrong-shape":
        name = "model.layers.0.self_attn.q_proj.lora_a"
        weights[name] = weights[name][:32]
    else:
        weights["model.layers.7.mlp.up_proj.lora_a"] = weights["model.layers.0.mlp.up_proj.lora_a"]
        weights["model.layers.7.mlp.up_proj.lora_b"] = weights["model.layers.0.mlp.up_proj.lora_b"]
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    (out / "adapter_config.json").write_text((lora / "adapter_config.json").read_text())
    return out


def test_interrupted_merge_leaves_nothing(llama_pair, lora, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "copy_tokenizer", crash)  # after the weights are written
    with pytest.raises(KeyboardInterrupt):
        merge(llama_pair[1], lora, tmp_path / "m", log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []


def test_killed_merge_leftovers_are_removed_by_the_next_run(llama_pair, lora, tmp_path):
    """SIGKILL skips clean-up; the next run writing the same output removes its dead predecessor's folder."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".m.tmp-{dead.pid}"
    live = tmp_path / f".m.tmp-{os.getppid()}"  # a running process (pytest's parent): left alone
    for folder in (orphan, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    merge(llama_pair[1], lora, tmp_path / "m", log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", live.name])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlx_lm_server_answers_chat(merged):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", str(merged[0]), "--host", "127.0.0.1",
           "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": "What is 1+2?"}], "max_tokens": 4,
                           "temperature": 0.0}).encode()
        reply = post_when_up(f"http://127.0.0.1:{port}/v1/chat/completions", body, server)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] >= 1


def post_when_up(url, body, server, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as r:
                return json.loads(r.read())
        except (ConnectionError, urllib.error.URLError):
            if server.poll() is not None:
                raise AssertionError(f"mlx_lm.server exited: {server.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                raise
            time.sleep(0.5)
