"""Hugging Face and PEFT outputs, checked with transformers and peft on torch (CPU).

- `gift merge --format hf` loads in transformers with no missing or unexpected keys and gives MLX's logits;
- `gift export-adapter --format peft` applied by PEFT to the instruct model, then merge_and_unload, gives
  `gift merge`'s model.
"""

import json
import shutil

import mlx.core as mx
import pytest
from test_merge import TOKENS, logits, make_adapter, max_diff, quantized_pair, qwen_lora, run_cli  # noqa: F401

from gift_mlx import export, export_peft, outputs
from gift_mlx.merge import merge
from gift_mlx.models import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def quiet(*_):
    pass


def hf_model(folder, **kwargs):
    """A transformers model in float32 that loaded every tensor of `folder` and nothing else."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def hf_logits(model):
    with torch.no_grad():
        return model(torch.tensor([TOKENS])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def tied_pair(qwen2_pair, tmp_path_factory):
    """The qwen2 pair with tied embeddings (as Qwen2.5-0.5B): mlx-lm and transformers store no lm_head."""
    root = tmp_path_factory.mktemp("tied")
    for src in qwen2_pair:
        shutil.copytree(src, root / src.name)
        config = json.loads((root / src.name / "config.json").read_text())
        (root / src.name / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    return root / "base", root / "instruct"


def test_hf_export_matches_mlx(tied_pair, tmp_path):
    base, instruct = tied_pair
    adapter = make_adapter(base, tmp_path / "adapter", instruct, seed=2)
    out = merge(instruct, adapter, tmp_path / "hf", fmt="hf", dtype="float32", log=quiet)
    got = hf_logits(hf_model(out))
    on_the_fly = logits(load_model(instruct, adapter_path=str(adapter))[0])
    assert max_diff(got, on_the_fly) < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["dtype"] == "float32"
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata()["format"] == "pt" and "lm_head.weight" not in f.keys()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
    assert json.loads((out / outputs.RECORD).read_text())["format"] == "hf"


def test_hf_export_of_quantized_instruct_in_bfloat16(quantized_pair, qwen_lora, tmp_path):
    _, instruct = quantized_pair
    out = merge(instruct, qwen_lora, tmp_path / "hf", fmt="hf", dtype="bfloat16", log=quiet)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and not set(config) & set(export.QUANT_KEYS)
    assert {v.dtype for v in mx.load(str(out / "model.safetensors")).values()} == {mx.bfloat16}
    reference = logits(load_model(merge(instruct, qwen_lora, tmp_path / "mlx", log=quiet))[0])
    assert max_diff(hf_logits(hf_model(out)), reference) < 0.05  # bfloat16 rounding of the weights


@pytest.mark.parametrize("partial", [False, True], ids=["all-layers", "last-layer-some-keys"])
def test_peft_adapter_matches_gift_merge(partial, llama_pair, tmp_path):
    base, instruct = llama_pair
    keys = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"] if partial else None
    adapter = make_adapter(base, tmp_path / "adapter", instruct, keys=keys, num_layers=1 if partial else -1, seed=3)
    scale = 0.5 if partial else 1.0
    code, _, err = run_cli("export-adapter", "--adapter-path", adapter, "--out", tmp_path / "peft", "--scale", scale)
    assert code == 0, err
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == scale * 2.0 * 4 and config["r"] == 4
    assert config["layers_to_transform"] == ([1] if partial else [0, 1])
    model = peft.PeftModel.from_pretrained(hf_model(instruct), str(tmp_path / "peft"))
    merged = merge(instruct, adapter, tmp_path / "merged", scale=scale, log=quiet)
    reference = logits(load_model(merged)[0])
    assert max_diff(hf_logits(model), reference) < 1e-4  # adapter applied on the fly by PEFT
    assert max_diff(hf_logits(model.merge_and_unload()), reference) < 1e-4


def test_peft_targets_select_exactly_the_adapted_modules():
    regular = [f"model.layers.{i}.{k}" for i in (2, 3) for k in ("self_attn.q_proj", "mlp.up_proj")]
    assert export_peft.peft_targets(regular) == (["mlp.up_proj", "self_attn.q_proj"], [2, 3])
    irregular = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj", "lm_head"]
    assert export_peft.peft_targets(irregular) == (sorted(irregular), None)


def test_peft_export_refuses_dora_and_non_adapters(llama_pair, tmp_path):
    base, instruct = llama_pair
    dora = make_adapter(base, tmp_path / "dora", instruct, kind="dora", num_layers=1, keys=["self_attn.v_proj"])
    code, _, err = run_cli("export-adapter", "--adapter-path", dora, "--out", tmp_path / "peft")
    assert code == 2 and "DoRA" in err and "gift merge --base" in err
    code, _, err = run_cli("export-adapter", "--adapter-path", instruct, "--out", tmp_path / "peft")
    assert code == 2 and "not an adapter folder" in err
    assert not (tmp_path / "peft").exists()


def test_hf_format_refusals(llama_pair, tmp_path):
    base, instruct = llama_pair
    adapter = make_adapter(base, tmp_path / "adapter", instruct, num_layers=1)
    code, _, err = run_cli("merge", "--adapter-path", adapter, "--out", tmp_path / "m", "--format", "hf",
                           "--requantize")
    assert code == 2 and "always float" in err
    other = tmp_path / "other"  # an architecture whose MLX tensors are not transformers' (experts stacked)
    shutil.copytree(instruct, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_moe"}))
    code, _, err = run_cli("merge", "--instruct", other, "--adapter-path", adapter, "--out", tmp_path / "m",
                           "--format", "hf")
    assert code == 2 and "model_type 'qwen3_moe'" in err and "own Hugging Face checkpoint" in err
    assert not (tmp_path / "m").exists()


def test_tokenizer_files_linking_outside_the_instruct_folder_are_refused(llama_pair, tmp_path):
    base, instruct = llama_pair
    adapter = make_adapter(base, tmp_path / "adapter", instruct, num_layers=1)
    model = tmp_path / "instruct"
    shutil.copytree(instruct, model)
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    (model / "vocab.json").symlink_to(secret)
    code, _, err = run_cli("merge", "--instruct", model, "--adapter-path", adapter, "--out", tmp_path / "m",
                           "--format", "hf")
    assert code == 2 and f"{model / 'vocab.json'}: links outside the instruct folder (to {secret})" in err
    assert not (tmp_path / "m").exists()
    # a Hub snapshot links its files to the repo's blobs: those are the model's
    snapshot = tmp_path / "models--org--name" / "snapshots" / "abc"
    (snapshot.parent.parent / "blobs").mkdir(parents=True)
    (snapshot.parent.parent / "blobs" / "123").write_text("{}")
    snapshot.mkdir(parents=True)
    (snapshot / "tokenizer.json").symlink_to("../../blobs/123")
    assert export._inside(snapshot / "tokenizer.json", snapshot) and not export._inside(model / "vocab.json", model)


def test_full_disk_during_the_tokenizer_copy_names_the_output(llama_pair, tmp_path, monkeypatch):
    import errno
    import os

    base, instruct = llama_pair
    adapter = make_adapter(base, tmp_path / "adapter", instruct, num_layers=1)

    def full(src, dst, *args):  # as shutil's sendfile copy reports it: the error carries the source's name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src.name)

    monkeypatch.setattr(export.shutil, "copyfileobj", full)
    code, _, err = run_cli("merge", "--adapter-path", adapter, "--out", tmp_path / "m", "--format", "hf")
    assert code == 2 and f"error: {tmp_path / 'm'}/tokenizer" in err and "No space left" in err, err
    assert str(instruct) not in err and not (tmp_path / "m").exists()
