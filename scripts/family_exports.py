"""The export columns of the family matrix: how far each export of a merged model is from the MLX merged model.

    python scripts/family_exports.py FAMILY BASE INSTRUCT ADAPTER MERGED [--work DIR]

Each column is a function (family, pair, adapter, merged) -> max |Δlogit| over a fixed token sequence, float32
(GGUF: f16 in llama.cpp), against the MLX merged folder `merged` loaded by mlx-lm; pair = (base, instruct)
folders. scripts/family_matrix.py imports them:
- `hf_diff`: `gift merge --format hf` loaded by transformers;
- `peft_diff`: `gift export-adapter` applied by PEFT to the instruct model, then merge_and_unload;
- `gguf_diff`: `gift merge --format gguf` (f16) run by llama.cpp (llama-cpp-python); None where it is missing.
A column that gift refuses returns the refusal (a GiftError's line) instead of a number.
"""

import argparse
import sys
from pathlib import Path

import gift_mlx  # noqa: F401  (BLAS preload)
import mlx.core as mx
import numpy as np

from gift_mlx.errors import GiftError
from gift_mlx.merge import merge
from gift_mlx.models import load_model

TOKENS = [1, 40, 41, 42, 7, 8, 9, 100, 200, 2]  # within the toy tokenizer's vocabulary


def quiet(*_):
    pass


def mlx_logits(merged, tokens=TOKENS):
    return np.array(load_model(str(merged))[0](mx.array([tokens]))[0].astype(mx.float32))


def torch_logits(model, tokens=TOKENS):
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def hf_model(folder):
    """transformers' float32 model of `folder`; AssertionError if a tensor is missing, unexpected or mis-shaped."""
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def _diff(a, b):
    return float(np.abs(a - b).max())


def _out(work, merged, name):
    """Where an export is written: `work`, or beside the MLX merged folder."""
    return str(Path(work or Path(merged).parent) / name)


def hf_diff(family, pair, adapter, merged, work=None):
    """`gift merge --format hf` (float32) in transformers vs the MLX merged model."""
    try:
        out = merge(str(pair[1]), str(adapter), _out(work, merged, f"{family}-hf"), fmt="hf", dtype="float32",
                    force=True, log=quiet)
    except GiftError as e:
        return str(e)
    return _diff(torch_logits(hf_model(out)), mlx_logits(merged))


def peft_diff(family, pair, adapter, merged, work=None):
    """`gift export-adapter` applied by PEFT to the instruct model (merge_and_unload) vs the MLX merged model."""
    from peft import PeftModel

    from gift_mlx.export_peft import export_peft

    try:
        out = export_peft(str(adapter), _out(work, merged, f"{family}-peft"), instruct=str(pair[1]), force=True)
    except GiftError as e:
        return str(e)
    model = PeftModel.from_pretrained(hf_model(pair[1]), str(out)).merge_and_unload()
    return _diff(torch_logits(model), mlx_logits(merged))


def gguf_diff(family, pair, adapter, merged, work=None, gguf_type="f16"):
    """`gift merge --format gguf` run by llama.cpp vs the MLX merged model; None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    try:
        out = merge(str(pair[1]), str(adapter), _out(work, merged, f"{family}-gguf"), fmt="gguf",
                    gguf_type=gguf_type, force=True, log=quiet)
    except GiftError as e:
        return str(e)
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), logits_all=True, n_ctx=64, verbose=False)
    try:
        llm.eval(TOKENS)
        return _diff(np.array(llm.scores[: len(TOKENS)]), mlx_logits(merged))
    finally:
        llm.close()


COLUMNS = {"hf": hf_diff, "peft": peft_diff, "gguf": gguf_diff}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("family")
    p.add_argument("base")
    p.add_argument("instruct")
    p.add_argument("adapter")
    p.add_argument("merged")
    p.add_argument("--work", help="where the exports are written (default: beside MERGED)")
    args = p.parse_args(argv)
    for name, column in COLUMNS.items():
        got = column(args.family, (args.base, args.instruct), args.adapter, args.merged, args.work)
        print(f"{args.family}\t{name}\t{got if isinstance(got, str) or got is None else f'{got:.2e}'}")


if __name__ == "__main__":
    sys.exit(main())
