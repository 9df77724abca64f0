"""The family matrix: for each model family, a tiny base/instruct pair written by transformers (toy.build_hf_pair),
trained 2 steps with `gift train` and merged with `gift merge`; one row per family, one column per check, each cell
the max |Δ| the check measured (or why the family fails, or gift's refusal). README.md's families section holds
its table.

A column is a function (family, pair, adapter, merged) -> float, or str for a refusal, in COLUMNS with the
tolerance its cell is marked against; the export columns (hf, peft, gguf) are scripts/family_exports.py's.
tests/test_families.py and tests/test_family_exports.py run the same functions and assert the same tolerances.

    python scripts/family_matrix.py [--families llama,qwen3_moe] [--out table.md]
"""

import argparse
import contextlib
import re
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling family_exports.py, also when a test loads us
from family_exports import gguf_diff, hf_diff, peft_diff  # noqa: E402

from gift_mlx import toy
from gift_mlx.config import TrainConfig
from gift_mlx.merge import merge
from gift_mlx.models import load_model
from gift_mlx.train import train

TOLERANCE = 1e-4
GGUF_TOLERANCE = 1e-2  # f16 weights in llama.cpp, which keeps its KV cache in f16 (tests/test_gguf.py's LOGIT_TOL)
TOKENS = [int(t) for t in np.random.default_rng(0).integers(3, 380, 64)]  # ids inside the toy vocabulary
FAMILIES = list(toy.FAMILY_CONFIGS)
MORE = list(toy.MORE_FAMILY_CONFIGS)
TRAIN = dict(iters=2, lora_rank=4, lora_alpha=8, lora_dropout=0.0, batch_size=4, steps_per_report=1,
             steps_per_eval=2, val_batches=1, pair_check=False, learning_rate=1e-2)


def build(family, root, data):
    """(pair, adapter, merged): the pair's folders, an adapter trained 2 steps on the base, the MLX merge."""
    root = Path(root)
    pair = toy.build_hf_pair(root, family)
    adapter, merged = root / "adapter", root / "merged"
    with contextlib.redirect_stdout(sys.stderr):  # the training's eval line: stdout is the table's
        train(TrainConfig(base=str(pair[0]), instruct=str(pair[1]), data=str(data), adapter_path=str(adapter),
                          **TRAIN), log=lambda m: None)
    merge(str(pair[1]), str(adapter), str(merged), log=lambda m: None)
    return pair, adapter, merged


def logits(model, tokens=TOKENS):
    return np.array(model(mx.array([tokens])).astype(mx.float32))


# ---- the columns ----

def logits_vs_transformers(family, pair, adapter, merged):
    """The instruct model as gift loads it (MLX, float32) against transformers' float32 forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(pair[1], dtype=torch.float32).eval()
    with torch.no_grad():
        reference = hf(torch.tensor([TOKENS])).logits.numpy()
    return float(np.abs(logits(load_model(pair[1])[0]) - reference).max())


def merged_weights(family, pair, adapter, merged):
    """Each merged matrix against mlx-lm's own fuse of the adapter's layer on the instruct weights
    (W + scale·B A; per expert for a mixture of experts: LoRASwitchLinear.fuse)."""
    model = load_model(pair[1], adapter_path=str(adapter))[0]
    written = {}
    for f in Path(merged).glob("model*.safetensors"):
        written.update(mx.load(str(f)))
    worst = 0.0
    for path, module in model.named_modules():
        if hasattr(module, "fuse"):
            expected = module.fuse().weight.astype(mx.float32)
            worst = max(worst, mx.abs(written[f"{path}.weight"].astype(mx.float32) - expected).max().item())
    return worst


def merged_logits(family, pair, adapter, merged):
    """The merged folder loaded by plain mlx_lm.load (no gift) against the instruct model with the adapter on it."""
    from mlx_lm.utils import load

    plain = load(str(merged))[0]
    return float(np.abs(logits(plain) - logits(load_model(pair[1], adapter_path=str(adapter))[0])).max())


COLUMNS = [
    ("MLX vs transformers logits", logits_vs_transformers, TOLERANCE),
    ("merged W vs W + scale·BA", merged_weights, TOLERANCE),
    ("mlx_lm.load(merged) vs adapter logits", merged_logits, TOLERANCE),
    ("--format hf (transformers) vs merged logits", hf_diff, TOLERANCE),
    ("PEFT merge_and_unload vs merged logits", peft_diff, TOLERANCE),
    ("--format gguf f16 (llama.cpp) vs merged logits", gguf_diff, GGUF_TOLERANCE),
]


# ---- the table ----

def cell(value, tolerance, root):
    """A float as 1.2e-07 (✗ above the tolerance), a refusal in its first words, None (not run) as n/a."""
    if isinstance(value, float):
        return f"{value:.1e}" + ("" if value <= tolerance else " ✗")
    if value is None:
        return "n/a (no llama-cpp-python)"
    return "refused: " + _short(value, root)


def _short(text, root, width=110):
    """The first words of a message: paths relative to the family's folder, module paths by their last two
    names, no parentheses, no --format prefix, up to the first ';', at most `width` characters (cut at a word)."""
    text = re.sub(r"\b(?:\w+\.){2,}(\w+\.\w+)\b", r"…\1", str(text).splitlines()[0].replace(f"{root}/", ""))
    text = re.sub(r"--format \w+: ", "", re.sub(r" ?\([^()]*\)", "", text)).split(";")[0].strip()
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " …"


def row(family, root, data, columns=COLUMNS):
    """The cells of one family's row (a failure to build, train or merge is said once, in the first cell)."""
    try:
        built = build(family, root, data)
    except Exception as e:  # reported in the table, not raised: the matrix shows every family
        return ["fails: " + _short(e, root)] + ["-"] * (len(columns) - 1)
    cells = []
    for _, column, tolerance in columns:
        try:
            cells.append(cell(column(family, *built), tolerance, root))
        except Exception as e:
            cells.append("fails: " + _short(e, root))
    return cells


def markdown(rows, columns=COLUMNS):
    lines = ["| family | " + " | ".join(name for name, *_ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    return "\n".join(lines + [f"| {family} | " + " | ".join(cells) + " |" for family, cells in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES + MORE))
    parser.add_argument("--out", help="write the markdown table here (default: print it)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = toy.write_task_data(Path(tmp) / "data", n_train=8, n_valid=4, n_test=4)
        for family in args.families.split(","):
            tic = time.perf_counter()
            rows.append((family, row(family, Path(tmp) / family, data)))
            print(f"{family}: {' | '.join(rows[-1][1])} [{time.perf_counter() - tic:.0f} s]", file=sys.stderr)
    table = markdown(rows)
    if args.out:
        Path(args.out).write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
