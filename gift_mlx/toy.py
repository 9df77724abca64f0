"""Tiny, locally built model pairs: the test bed and the built-in default.

Everything here is made on this machine (no Hub): a byte-level BPE tokenizer trained with `tokenizers`
and given a ChatML chat template, and small decoders of real mlx-lm architectures (llama, qwen2) saved as
ordinary model folders that `mlx_lm.utils.load` reads. The "instruct" model of a pair is its base with
every weight perturbed, so the two share architecture and shapes but disagree on token probabilities.
"""

import importlib
import json
import random
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.utils import save_config, save_model

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

ARCHS = {
    "llama": dict(model_type="llama", rope_theta=10000.0),
    "qwen2": dict(model_type="qwen2", rope_theta=1000000.0),
}


def arithmetic_records(n, seed=0, hi=20):
    """Short word-free arithmetic problems with a one-line chain of thought."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b, c = rng.randrange(hi), rng.randrange(hi), rng.randrange(10)
        rows.append({
            "prompt": f"What is {a}+{b}+{c}?",
            "completion": f"{a}+{b}={a + b}. {a + b}+{c}={a + b + c}. #### {a + b + c}",
        })
    return rows


def corpus(n=400, seed=0):
    """Text to train the tokenizer on: the arithmetic task plus some plain words."""
    words = "the answer is what how many add sum total please reason step by step and put your final".split()
    rng = random.Random(seed)
    text = [r["prompt"] + " " + r["completion"] for r in arithmetic_records(n, seed)]
    text += [" ".join(rng.choice(words) for _ in range(12)) for _ in range(n // 4)]
    return text


def build_tokenizer(out_dir, vocab_size=384, seed=0):
    """Train a byte-level BPE tokenizer and write it with a ChatML template (tokenizer.json + config)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed=seed), trainer)
    save_tokenizer(tok, out_dir)
    return tok.get_vocab_size()


def save_tokenizer(tok, out_dir):
    """tokenizer.json plus a tokenizer_config.json with the ChatML template, as transformers reads them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHATML,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def model_config(arch="llama", vocab_size=384, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, tied=False):
    return {
        **ARCHS[arch],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": ffn,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": tied,  # mlx-lm defaults to tied; say it explicitly
        "eos_token_id": 2,
    }


def build_model(out_dir, config, tokenizer_dir, seed=0, weights=None, dtype=mx.float32):
    """Write a model folder: config.json, safetensors weights and the tokenizer files."""
    arch = importlib.import_module(f"mlx_lm.models.{config['model_type']}")
    mx.random.seed(seed)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    if weights is not None:
        model.update(tree_unflatten(list(weights.items())))
    model.update(tree_map(lambda p: p.astype(dtype), model.parameters()))
    mx.eval(model.parameters())
    save_folder(out_dir, model, config, tokenizer_dir)
    return model


def save_folder(out_dir, model, config, tokenizer_dir):
    """A model folder as mlx-lm writes one (weights, config.json) with the tokenizer files beside them."""
    out = Path(out_dir)
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())


def build_pair(root, arch="llama", seed=0, noise=0.5, **dims):
    """Build base/ and instruct/ folders under root; return their paths."""
    root = Path(root)
    vocab = build_tokenizer(root / "tokenizer", seed=seed)
    config = model_config(arch, vocab_size=vocab, **dims)
    base = build_model(root / "base", config, root / "tokenizer", seed=seed)
    mx.random.seed(seed + 1)
    perturbed = {
        k: v + noise * v.std() * mx.random.normal(v.shape) for k, v in tree_flatten(base.parameters())
    }
    build_model(root / "instruct", config, root / "tokenizer", weights=perturbed)
    return root / "base", root / "instruct"


def write_jsonl(path, rows):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_task_data(folder, n_train=64, n_valid=16, n_test=16, seed=0):
    """train/valid/test.jsonl of the arithmetic task in the prompt/completion shape."""
    rows = arithmetic_records(n_train + n_valid + n_test, seed=seed)
    folder = Path(folder)
    write_jsonl(folder / "train.jsonl", rows[:n_train])
    write_jsonl(folder / "valid.jsonl", rows[n_train : n_train + n_valid])
    write_jsonl(folder / "test.jsonl", rows[n_train + n_valid :])
    return folder


# ---- tiny pairs of real Hugging Face families, saved by transformers (its config layout) ----

FAMILY_DIMS = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, max_position_embeddings=4096)
# Per family: what the tiny model needs beyond FAMILY_DIMS, and the RoPE theta the real family uses, so that a
# model loaded with a wrong (default) theta computes visibly different logits.
FAMILY_CONFIGS = {
    "llama": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192}, max_position_embeddings=131072),
    "mistral": dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen2": dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3": dict(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "gemma2": dict(query_pre_attn_scalar=16),  # = head_dim, as in Gemma 2 2B/9B and Gemma 3
    # one full sliding-window pattern (5 local + 1 global); linear scaling on the global layers as Gemma 3 4B+
    "gemma3_text": dict(num_hidden_layers=6, query_pre_attn_scalar=16, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "phi3": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "olmo2": dict(rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "smollm3": dict(rope_parameters={"rope_type": "default", "rope_theta": 2000000.0}),
    "granite": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000000.0}),
    # the two MoE families with the settings of the released models (Qwen3-30B-A3B: norm_topk_prob; OLMoE-1B-7B:
    # as many key/value heads as query heads), which llama.cpp's graphs hard-code
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2, num_key_value_heads=4,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
}
# More families for scripts/family_matrix.py (lfm2, qwen3_5_text, gemma3 and olmo3 are in tests/test_families.py
# too; README's families section says which fail and why).
MORE_FAMILY_CONFIGS = {
    "lfm2": dict(layer_types=["conv", "full_attention"],  # hybrid: a short-convolution block and an attention one
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3_5_text": dict(layer_types=["linear_attention", "full_attention"], linear_num_value_heads=4,
                         linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16),
    "gemma3": dict(  # Gemma 3 4B+: the text model inside a multimodal wrapper (mlx-lm: language_model.model.layers)
        text_config={**FAMILY_DIMS, "num_hidden_layers": 6, "vocab_size": 384,
                     "rope_parameters": FAMILY_CONFIGS["gemma3_text"]["rope_parameters"]},
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4, boi_token_index=3, eoi_token_index=4, image_token_index=5),
    "olmo3": dict(num_hidden_layers=4, max_position_embeddings=65536, rope_parameters={  # 3 sliding + 1 full
        "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 500000.0, "attention_factor": 1.2,
                           "original_max_position_embeddings": 8192, "beta_fast": 32, "beta_slow": 1},
        "sliding_attention": {"rope_type": "default", "rope_theta": 500000.0}}),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000000.0}),
    "gemma4_text": dict(vocab_size_per_layer_input=384, hidden_size_per_layer_input=16),
    "llama4_text": dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128,
                        rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}


def build_hf_pair(root, model_type, seed=0, noise=0.05, **overrides):
    """base/ and instruct/ folders of a tiny `model_type` model written by transformers' save_pretrained (so the
    config is in the layout the installed transformers writes, e.g. transformers 5's rope_parameters), with the toy
    ChatML tokenizer; instruct = base + noise·std per tensor. Needs torch + transformers (the test extra)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = Path(root)
    vocab = build_tokenizer(root / "tokenizer", seed=seed)
    ids = dict(bos_token_id=0, eos_token_id=2, pad_token_id=0)
    family = {**FAMILY_CONFIGS, **MORE_FAMILY_CONFIGS}.get(model_type, {})
    fields = {**FAMILY_DIMS, **ids, **family, **overrides, "vocab_size": vocab}
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    folders = []
    for name, scale in (("base", 0.0), ("instruct", noise)):
        if scale:
            gen = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(scale * p.std() * torch.randn(p.shape, generator=gen) if p.numel() > 1 else 0)
        model.save_pretrained(root / name)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (root / name / f).write_bytes((root / "tokenizer" / f).read_bytes())
        folders.append(root / name)
    return tuple(folders)
