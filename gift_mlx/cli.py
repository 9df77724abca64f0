"""The `gift` command line: a thin click layer over functions importable from gift_mlx."""

import sys

import click

from .errors import GiftError


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GiftError as e:  # a user mistake: one line, exit 2, no traceback
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # unwritable output, a file where a folder should be, a full disk...
            click.echo(f"error: {e.filename or ''}: {e.strerror or e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def check_blas():
    """On Linux CPU, warn before the work starts when the BLAS is slow or GIFT_BLAS unusable (doctor.py)."""
    from .doctor import blas_warnings

    for warning in blas_warnings():
        click.echo(f"warning: {warning}", err=True)


@click.group(cls=Group)
@click.version_option(package_name="gift-mlx")
def main():
    """GIFT: instruct-guided LoRA fine-tuning on a base model, transferred to its instruct model."""


# ---- score / train (core) ----

# Flags keep mlx-lm's names (--iters, --batch-size, --adapter-path, --save-every, ...) where it has them.
# Every flag defaults to None so that it overrides a YAML config only when given.
TRAIN_OPTIONS = [
    click.option("-c", "--config", type=click.Path(), help="YAML file of TrainConfig fields; flags override it."),
    click.option("--base", help="Base (pretrained) model: Hub id or folder."),
    click.option("--instruct", help="Instruct model: Hub id or folder (chat template, confidences)."),
    click.option("--data", help="Folder with train/valid.jsonl, or one .jsonl file."),
    click.option("--adapter-path", help="Output folder for the adapter (default: adapters)."),
    click.option("--method", type=click.Choice(["gift", "shadow-ft", "direct", "gift-base"]), help="Default: gift."),
    click.option("--scores-path", help="Folder of cached score files (default: <adapter-path>/scores)."),
    click.option("--online-scores", is_flag=True, default=None, help="Score inside the training step."),
    click.option("--floor", type=float, help="Weight floor: w = max(q, floor)^gamma (default 1e-4)."),
    click.option("--gamma", type=float, help="Weight exponent (default 1)."),
    click.option("--fine-tune-type", type=click.Choice(["lora", "dora"])),
    click.option("--lora-rank", type=int, help="Default 64."),
    click.option("--lora-alpha", type=float, help="Default 128 (scale = alpha / rank)."),
    click.option("--lora-dropout", type=float, help="Default 0.05."),
    click.option("--lora-keys", help="Comma-separated module keys, e.g. self_attn.q_proj,mlp.down_proj."),
    click.option("--num-layers", type=int, help="Adapt the last N blocks (-1: all)."),
    click.option("--iters", type=int, help="Optimizer steps (default: one epoch)."),
    click.option("--epochs", type=float),
    click.option("--batch-size", type=int, help="Micro-batch rows (default 4)."),
    click.option("--grad-accumulation-steps", type=int, help="Micro-batches per optimizer step."),
    click.option("--learning-rate", type=float, help="Default 2e-4."),
    click.option("--warmup-ratio", type=float, help="Default 0.1."),
    click.option("--weight-decay", type=float),
    click.option("--max-seq-length", type=int, help="Default 2048."),
    click.option("--pad-lengths", type=int, help="Batch lengths (compiled shapes), fitted to the data (default 8)."),
    click.option("--grad-checkpoint", is_flag=True, default=None),
    click.option("--seed", type=int),
    click.option("--steps-per-report", type=int),
    click.option("--steps-per-eval", type=int),
    click.option("--val-batches", type=int),
    click.option("--save-every", type=int, help="Steps between checkpoints (default 100)."),
    click.option("--keep-checkpoints", type=int, help="Checkpoints kept for --resume (default 3)."),
    click.option("--resume", is_flag=True, default=None, help="Continue from the latest checkpoint."),
    click.option("--skip-nonfinite", is_flag=True, default=None, help="Skip steps with a NaN/Inf loss."),
    click.option("--trust-remote-code", is_flag=True, default=None, help="Allow model code from the Hub."),
]


def train_options(f):
    for option in reversed(TRAIN_OPTIONS):
        f = option(f)
    return f


def make_config(config, lora_keys=None, **overrides):
    from .config import load_config

    if lora_keys:
        overrides["lora_keys"] = [k.strip() for k in lora_keys.split(",") if k.strip()]
    return load_config(config, overrides)


@main.command()
@train_options
def score(**options):
    """Precompute the instruct model's confidence in every target token (cached for `gift train`)."""
    from .scoring import score as run

    check_blas()
    for split, path in run(make_config(**options), log=click.echo).items():
        click.echo(f"{split}: {path}")


@main.command()
@train_options
def train(**options):
    """Train a LoRA adapter on the base model with confidence-weighted loss."""
    from .train import train as run

    check_blas()
    run(make_config(**options), log=click.echo)


@main.command()
@click.option("--out", default="runs/demo", show_default=True, help="Folder for the adapters, merged models and report.")
@click.option("--iters", type=int, default=None, help="Optimizer steps per method (default: configs/demo.yaml's, 100).")
@click.option("--samples", default=4, show_default=True, help="Samples per problem (Average@k, pass@k, maj@k).")
@click.option("--seed", default=0, show_default=True, help="Seed of LoRA init, data order and sampling.")
@click.option("--gift-base", is_flag=True, help="Also run the paper's ablation (base model's own confidences).")
@click.option("--world", type=click.Path(), help="A toy world folder (default: the built-in one).")
@click.option("--limit", type=int, help="Evaluate only the first N problems of each set (a quick check).")
@click.option("--force", is_flag=True, help="Replace an earlier demo in --out.")
def demo(out, iters, samples, seed, gift_base, world, limit, force):
    """Train, merge and evaluate every method on the built-in toy world (no download, minutes on a CPU)."""
    from .demo import demo as run

    check_blas()
    run(out, iters=iters, samples=samples, seed=seed, gift_base=gift_base, world=world, limit=limit, force=force,
        log=click.echo)


@main.command()
def doctor():
    """Print the MLX version, device, BLAS in use and a one-second matmul speed."""
    from .doctor import report

    click.echo(report())


# ---- merge / export (merge.py, export.py) ----

DTYPE_CHOICE = click.Choice(["bfloat16", "float16", "float32"])


@main.command()
@click.option("--instruct", help="Instruct model (Hub id or folder); default: the adapter's instruct_model.")
@click.option("--adapter-path", default="adapters", show_default=True, help="Adapter trained on the base model.")
@click.option("--out", required=True, help="Output folder (written whole at the end, never half).")
@click.option("--format", "fmt", type=click.Choice(["mlx", "hf"]), default="mlx", show_default=True,
              help="mlx: for mlx_lm.load/server; hf: for transformers.")
@click.option("--dtype", type=DTYPE_CHOICE, help="Float dtype of the output (default: the instruct's).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="λ in W' = W_instruct + λ·ΔW.")
@click.option("--base", help="The base model the adapter was trained on (required for DoRA adapters).")
@click.option("--requantize", is_flag=True, help="Re-quantize merged layers of a quantized instruct (lossy).")
@click.option("--force", is_flag=True, help="Replace an existing output folder written by gift.")
def merge(instruct, adapter_path, out, fmt, dtype, scale, base, requantize, force):
    """Add the adapter's update to the instruct model and save the merged model."""
    from .merge import merge as run

    run(instruct, adapter_path, out, fmt=fmt, dtype=dtype, scale=scale, base=base, requantize=requantize,
        force=force, log=click.echo)


@main.command("export-adapter")
@click.option("--adapter-path", default="adapters", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["peft"]), default="peft", show_default=True)
@click.option("--out", required=True, help="Output folder.")
@click.option("--instruct", help="base_model_name_or_path for PEFT; default: the adapter's instruct_model.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="λ, folded into lora_alpha.")
@click.option("--force", is_flag=True, help="Replace an existing output folder written by gift.")
def export_adapter(adapter_path, fmt, out, instruct, scale, force):
    """Write the adapter in PEFT's layout, to apply to the instruct model with transformers."""
    from .export import export_peft

    click.echo(f"wrote {export_peft(adapter_path, out, instruct=instruct, scale=scale, force=force)} ({fmt})")

# ---- eval / chat (evaluate.py, chat.py) ----


@main.command("eval")
@click.option("--model", "models", multiple=True, required=True, help="Model folder or Hub id; repeat to compare.")
@click.option("--data", required=True, type=click.Path(), help="JSONL of problems (GSM8K, MATH, choices, chat...).")
@click.option("--out", default="results", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--samples", default=16, show_default=True, help="Samples per problem (n); 0 with --greedy: greedy only.")
@click.option("--temperature", default=1.0, show_default=True)
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--max-tokens", default=512, show_default=True, help="Tokens per completion.")
@click.option("--instruction", default=None, help="Appended to each question (default: reason, answer in \\boxed{}).")
@click.option("--greedy", is_flag=True, help="Also measure greedy (temperature 0) accuracy.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed: a rerun gives the same samples.")
@click.option("--batch-size", default=64, show_default=True, help="Sequences decoded together.")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N problems.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier evaluation in --out.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the Hub.")
def eval_command(models, data, out, **options):
    """Sample each model on a test set: Average@k, pass@k, maj@k (k = 1, 2, 4, ... samples) and a scaling plot."""
    from .evaluate import evaluate

    from pathlib import Path

    check_blas()
    evaluate(list(models), data, out, log=click.echo, **options)
    click.echo(f"wrote {out}: " + ", ".join(sorted(p.name for p in Path(out).iterdir())))


@main.command("chat")
@click.option("--model", required=True, help="Model folder or Hub id (with a chat template).")
@click.option("--prompt", default=None, help="Answer this one message and exit.")
@click.option("--system", default=None, help="System prompt.")
@click.option("--temperature", default=0.7, show_default=True)
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--max-tokens", default=512, show_default=True, help="Tokens per reply.")
@click.option("--seed", type=int, default=None, help="Sampling seed.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the Hub.")
def chat_command(model, **options):
    """Chat with a model: streaming replies, history, /reset, /system <text>, /quit; reads a pipe too."""
    from .chat import chat

    check_blas()
    chat(model, **options)
