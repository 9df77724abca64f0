"""`gift pair-check`: its figures against an independent numpy computation over the full tensors, the Hub's
sharded layout, quantized models, the CLI (--json, exit 2), and its use by `gift train` and `gift merge`."""

import json
import math
import re
import shutil

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from gift_mlx.cli import main
from gift_mlx.errors import GiftError
from gift_mlx.pair_check import check_for_training, module_type, pair_check, summary_text


def numpy_weights(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: v.astype(np.float64) for k, v in load_file(str(f)).items()})
    return out


def independent(base, instruct):
    """Every figure from the full float64 tensors, with nothing shared with gift_mlx.pair_check."""
    a, b = numpy_weights(base), numpy_weights(instruct)
    per = {}
    for k in a:
        d = b[k] - a[k]
        per[k] = dict(rel=np.linalg.norm(d) / np.linalg.norm(a[k]),
                      cos=(a[k] * b[k]).sum() / (np.linalg.norm(a[k]) * np.linalg.norm(b[k])),
                      l1=np.abs(d).sum() / (np.abs(a[k]).sum() + np.abs(b[k]).sum()))
    mats = [k for k in a if a[k].ndim >= 2]
    overall = dict(
        rel=math.sqrt(sum(((b[k] - a[k]) ** 2).sum() for k in mats) / sum((a[k] ** 2).sum() for k in mats)),
        mean=np.mean([per[k]["rel"] for k in mats]),
        cos=sum((a[k] * b[k]).sum() for k in mats) / math.sqrt(sum((a[k] ** 2).sum() for k in mats)
                                                                * sum((b[k] ** 2).sum() for k in mats)),
        l1=sum(np.abs(b[k] - a[k]).sum() for k in mats) / sum(np.abs(a[k]).sum() + np.abs(b[k]).sum() for k in mats))
    q = [k for k in mats if k.endswith("self_attn.q_proj.weight")]
    q_rel = math.sqrt(sum(((b[k] - a[k]) ** 2).sum() for k in q) / sum((a[k] ** 2).sum() for k in q))
    layer1 = [k for k in mats if ".layers.1." in k]
    l1_rel = math.sqrt(sum(((b[k] - a[k]) ** 2).sum() for k in layer1) / sum((a[k] ** 2).sum() for k in layer1))
    return per, overall, q_rel, l1_rel


def check_against_numpy(result, base, instruct):
    per, overall, q_rel, l1_rel = independent(base, instruct)
    got = {t["name"]: t for t in result["per_tensor"]}
    assert set(got) == set(per)
    for k, p in per.items():
        assert got[k]["relative_distance"] == pytest.approx(p["rel"], rel=1e-5)
        assert got[k]["cosine"] == pytest.approx(p["cos"], rel=1e-6)
        assert got[k]["l1_ratio"] == pytest.approx(p["l1"], rel=1e-5)
    o = result["overall"]
    assert o["relative_distance"] == pytest.approx(overall["rel"], rel=1e-5)
    assert o["mean_relative_distance"] == pytest.approx(overall["mean"], rel=1e-5)
    assert o["cosine"] == pytest.approx(overall["cos"], rel=1e-6)
    assert o["l1_ratio"] == pytest.approx(overall["l1"], rel=1e-5)
    assert result["by_type"]["self_attn.q_proj"]["relative_distance"] == pytest.approx(q_rel, rel=1e-5)
    assert result["by_layer"]["1"]["relative_distance"] == pytest.approx(l1_rel, rel=1e-5)


def test_figures_match_numpy(llama_pair):
    base, instruct = llama_pair
    result = pair_check(base, instruct)
    check_against_numpy(result, base, instruct)
    assert result["tokenizer"]["vocabulary"] == "same" and result["tokenizer"]["base_chat_template"] == "same"
    # toy.build_pair perturbs every weight by 0.5 of its std: a far pair, by the reference figures
    assert 0.4 < result["overall"]["relative_distance"] < 0.6 and result["verdict"] == "far"
    assert result["matrices"] == sum(1 for t in result["per_tensor"] if len(t["shape"]) >= 2) == 16
    assert "verdict: far apart" in summary_text(result)


def test_identical_models_measure_zero(llama_pair):
    result = pair_check(llama_pair[0], llama_pair[0])
    assert result["overall"]["relative_distance"] == 0 and result["verdict"] == "identical"
    assert result["overall"]["cosine"] == pytest.approx(1.0, abs=1e-9)


def shard(src, dst, n=3):
    """A copy of a model folder in the Hub's layout: n shards plus model.safetensors.index.json."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = numpy_weights(src)
    names, weight_map = sorted(tensors), {}
    for i in range(n):
        part = names[i::n]
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k].astype(np.float32) for k in part}, str(dst / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_hub_layout_sharded_folders(llama_pair, tmp_path):
    base, instruct = shard(llama_pair[0], tmp_path / "base", 3), shard(llama_pair[1], tmp_path / "instruct", 2)
    result = pair_check(base, instruct)
    check_against_numpy(result, llama_pair[0], llama_pair[1])
    assert result["overall"] == pytest.approx(pair_check(*llama_pair)["overall"], rel=1e-12)  # summed in another order


def test_quantized_instruct_is_dequantized_per_tensor(llama_pair, tmp_path):
    from mlx_lm.convert import convert

    base, instruct = llama_pair
    convert(str(instruct), str(tmp_path / "q"), quantize=True, q_group_size=32, q_bits=8)
    result = pair_check(base, tmp_path / "q")
    assert result["quantized"] and "dequantized" in result["notes"][0]
    q = dict(mx.load(str(tmp_path / "q" / "model.safetensors")))
    a = numpy_weights(base)
    k = "model.layers.0.mlp.up_proj.weight"
    w = np.array(mx.dequantize(q[k], q[k[:-6] + "scales"], q[k[:-6] + "biases"], group_size=32, bits=8), np.float64)
    got = next(t for t in result["per_tensor"] if t["name"] == k)
    assert got["quantized"] == [False, True]
    assert got["relative_distance"] == pytest.approx(np.linalg.norm(w - a[k]) / np.linalg.norm(a[k]), rel=1e-5)
    # 8-bit rounding adds little to a distance of ~0.5
    assert result["overall"]["relative_distance"] == pytest.approx(pair_check(base, instruct)["overall"]["relative_distance"], rel=0.02)


def test_module_types():
    assert module_type("model.layers.3.self_attn.q_proj.weight") == (3, "self_attn.q_proj")
    assert module_type("model.layers.0.self_attn.q_proj.bias") == (0, "self_attn.q_proj.bias")
    assert module_type("model.embed_tokens.weight") == (None, "embed_tokens")
    assert module_type("lm_head.weight") == (None, "lm_head")


def test_cli_text_json_and_incompatible_pair(llama_pair, qwen2_pair):
    runner = CliRunner()
    text = runner.invoke(main, ["pair-check", *map(str, llama_pair)])
    assert text.exit_code == 0 and "per module type" in text.output and "verdict: far apart" in text.output
    out = runner.invoke(main, ["pair-check", *map(str, llama_pair), "--json"])
    assert out.exit_code == 0
    data = json.loads(out.output)
    assert data["verdict"] == "far" and data["overall"]["relative_distance"] > 0.1
    bad = runner.invoke(main, ["pair-check", str(llama_pair[0]), str(qwen2_pair[1])])
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("error: ") and "model_type: llama vs qwen2" in bad.stderr


def test_train_prints_the_pair_and_merge_the_update_size(llama_pair, task_data, tmp_path):
    """`gift train --method dft` end to end: the pair line and warning, the record; then `gift merge` prints
    ‖λ·scale·BA‖ / ‖W_instruct‖ (checked with numpy) next to the pair's distance."""
    base, instruct = llama_pair
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--base", str(base), "--instruct", str(instruct), "--data", str(task_data),
                             "--adapter-path", str(tmp_path / "a"), "--method", "dft", "--iters", "2",
                             "--lora-rank", "4", "--lora-alpha", "8", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    assert re.search(r"pair: base -> instruct relative distance 0\.\d+ over all matrices", r.output)
    assert "warning: base and instruct are far apart" in r.output
    record = json.loads((tmp_path / "a" / "gift_run.json").read_text())
    assert record["method"] == "dft" and record["trained_model"] == str(base) and record["pair_check"]["verdict"] == "far"
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["method"] == "dft"
    assert not (tmp_path / "a" / "scores").exists()  # dft needs no score files
    assert np.isfinite(record["final"]["loss"]) and record["final"]["loss"] != record["final"]["plain_loss"]

    m = runner.invoke(main, ["merge", "--adapter-path", str(tmp_path / "a"), "--out", str(tmp_path / "m"),
                             "--scale", "0.5"])
    assert m.exit_code == 0, m.output
    found = re.search(r"update: ‖λ·ΔW‖_F / ‖W_instruct‖_F = (\S+) over the (\d+) adapted matrices \(λ = 0.5\); "
                      r"base -> instruct distance over the same matrices (\S+) \(all matrices (\S+)\)", m.output)
    assert found, m.output
    ad, w = load_file(str(tmp_path / "a" / "adapters.safetensors")), numpy_weights(instruct)
    scale = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["lora_parameters"]["scale"]
    layers = {k[:-len(".lora_a")] for k in ad if k.endswith(".lora_a")}
    up = sum(np.sum((0.5 * scale * ad[p + ".lora_b"].T.astype(np.float64) @ ad[p + ".lora_a"].T) ** 2) for p in layers)
    ref = sum(np.sum(w[p + ".weight"] ** 2) for p in layers)
    assert int(found.group(2)) == len(layers)
    assert float(found.group(1)) == pytest.approx(math.sqrt(up / ref), abs=1e-4)
    assert float(found.group(4)) == pytest.approx(record["pair_check"]["overall"]["relative_distance"], abs=1e-4)


def copy_model(src, dst, change=None, dtype=None):
    """A copy of a model folder written by MLX (its headers leave the data unaligned), with tensors changed
    by change(name, array) and cast to dtype."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = dict(mx.load(str(src / "model.safetensors")))
    for k, v in tensors.items():
        v = change(k, v) if change else v
        tensors[k] = v.astype(dtype) if dtype is not None else v
    mx.save_safetensors(str(dst / "model.safetensors"), tensors)
    return dst


@pytest.mark.parametrize("preadv", [True, False], ids=["preadv", "pread"])
def test_bfloat16_and_float16_models_match_numpy(llama_pair, tmp_path, monkeypatch, preadv):
    """bfloat16 is read as its 16 bits shifted into float32: the figures are those of the cast values; the same
    with the os.pread fallback of a Python without os.preadv."""
    if not preadv:
        monkeypatch.delattr("os.preadv", raising=False)
    for dtype in (mx.bfloat16, mx.float16):
        name = str(dtype).split(".")[-1]
        base = copy_model(llama_pair[0], tmp_path / f"b{name}", dtype=dtype)
        inst = copy_model(llama_pair[1], tmp_path / f"i{name}", dtype=dtype)
        result = pair_check(base, inst, check_tokenizer=False)
        assert result["base"]["dtype"] == name
        # the reference: the same cast values, written as float32 and measured by numpy alone
        for src, dst in ((base, tmp_path / f"b{name}32"), (inst, tmp_path / f"i{name}32")):
            copy_model(src, dst, dtype=mx.float32)
        check_against_numpy(result, tmp_path / f"b{name}32", tmp_path / f"i{name}32")


@pytest.mark.parametrize("role", ["base", "instruct"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_tensor_is_named(llama_pair, tmp_path, role, bad):
    k = "model.layers.1.self_attn.v_proj.weight"
    broken = copy_model(llama_pair[role == "instruct"], tmp_path / "broken",
                        change=lambda n, v: v.at[3, 2].add(bad) if n == k else v)
    pair = (broken, llama_pair[1]) if role == "base" else (llama_pair[0], broken)
    with pytest.raises(GiftError, match=rf"^{role} {re.escape(str(broken))}: tensor {re.escape(k)} holds NaN or "
                                        "infinite values"):
        pair_check(*pair)
    r = CliRunner().invoke(main, ["pair-check", *map(str, pair), "--json"])
    assert r.exit_code == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and k in r.stderr
    with pytest.raises(GiftError, match=f"tensor {re.escape(k)} holds NaN"):  # gift train's check: the same
        check_for_training(*map(str, pair), log=lambda m: None)


def test_float32_overflow_is_summed_again_in_float64(llama_pair, tmp_path):
    """Finite values whose squares overflow float32 are not an error: that tensor is summed in float64."""
    k = "model.layers.0.mlp.up_proj.weight"
    big = lambda n, v: v * 1e30 if n == k else v  # noqa: E731
    base, inst = copy_model(llama_pair[0], tmp_path / "b", big), copy_model(llama_pair[1], tmp_path / "i", big)
    result = pair_check(base, inst, check_tokenizer=False)
    check_against_numpy(result, base, inst)
    json.loads(CliRunner().invoke(main, ["pair-check", str(base), str(inst), "--json"]).stdout)


@pytest.mark.parametrize("entry", ["../other/model.safetensors", "/abs", "linked/model.safetensors"])
def test_shard_index_cannot_leave_the_model_folder(llama_pair, tmp_path, entry):
    """An index naming a file outside the folder (.., absolute, through a symlinked folder) is an error
    naming the index and the entry, in pair-check, train and models.cached_path; never another model read."""
    from gift_mlx.models import cached_path

    other = tmp_path / "other"
    shutil.copytree(llama_pair[1], other)
    entry = str(other / "model.safetensors") if entry == "/abs" else entry
    empty = tmp_path / "model"  # a model folder with no weights of its own
    shutil.copytree(llama_pair[1], empty, ignore=shutil.ignore_patterns("*.safetensors*"))
    (empty / "linked").symlink_to(other)
    names = list(load_file(str(llama_pair[1] / "model.safetensors")))
    index = empty / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": dict.fromkeys(names, entry)}))
    expected = rf"^{re.escape(str(index))}: .*{re.escape(repr(entry))} lies outside the model folder"
    with pytest.raises(GiftError, match=expected):
        pair_check(llama_pair[0], empty)
    with pytest.raises(GiftError, match=expected):
        cached_path(str(empty))
    r = CliRunner().invoke(main, ["pair-check", str(llama_pair[0]), str(empty)])
    assert r.exit_code == 2 and "lies outside the model folder" in r.stderr and r.stderr.count("\n") == 1


def test_hub_cache_links_into_its_blobs_are_inside(llama_pair, tmp_path):
    """A Hugging Face cache snapshot holds links into the repo's blobs/ folder: those are the model's own."""
    repo = tmp_path / "models--org--m"
    snap = repo / "snapshots" / "abc"
    shutil.copytree(llama_pair[1], snap, ignore=shutil.ignore_patterns("*.safetensors*"))
    (repo / "blobs").mkdir()
    shutil.copy(llama_pair[1] / "model.safetensors", repo / "blobs" / "1234")
    (snap / "model.safetensors").symlink_to("../../blobs/1234")
    assert pair_check(llama_pair[0], snap)["overall"] == pytest.approx(pair_check(*llama_pair)["overall"])


def test_training_check_is_cached_by_the_files(llama_pair, tmp_path, monkeypatch):
    """gift train's pair line: measured once, then read from the cache until a model's files change."""
    monkeypatch.setenv("GIFT_CACHE_DIR", str(tmp_path / "cache"))
    base, inst = llama_pair[0], shard(llama_pair[1], tmp_path / "inst", 2)
    lines = []
    first = check_for_training(str(base), str(inst), log=lines.append)
    assert re.search(r"\[\d+\.\d s\]$", lines[0]) and len(list((tmp_path / "cache" / "pair-check").iterdir())) == 1
    again = check_for_training(str(base), str(inst), log=lines.append)
    assert lines[2].endswith("[cached]") and again == json.loads(json.dumps(first))
    shard_file = next(inst.glob("model-00001-*.safetensors"))
    t = load_file(str(shard_file))
    save_file({k: v * 2 for k, v in t.items()}, str(shard_file))  # the instruct model changed
    changed = check_for_training(str(base), str(inst), log=lines.append)
    assert not lines[4].endswith("[cached]") and changed["overall"] != first["overall"]


def test_a_file_cut_short_while_it_is_read_is_named(llama_pair, tmp_path):
    """The headers are checked against the file's size when opened; a file that shrinks afterwards (another
    process rewriting it) gives an error naming it, not a short array summed as if whole."""
    from gift_mlx.models import read_config
    from gift_mlx.pair_check import Weights, tensor_sums
    base = copy_model(llama_pair[0], tmp_path / "b")
    bw = Weights(base, read_config(base), "base b")
    iw = Weights(llama_pair[1], read_config(llama_pair[1]), "instruct i")
    name = max(bw.names, key=bw.order)  # the last tensor of the file
    with open(base / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    try:
        with pytest.raises(GiftError, match=rf"^{re.escape(str(base / 'model.safetensors'))}: cannot read weights "
                                            r"\(the file ended early"):
            tensor_sums(bw, iw, name)
    finally:
        bw.close(), iw.close()
