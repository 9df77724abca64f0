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
    click.option("--grad-checkpoint", is_flag=True, default=None),
    click.option("--seed", type=int),
    click.option("--steps-per-report", type=int),
    click.option("--steps-per-eval", type=int),
    click.option("--val-batches", type=int),
    click.option("--save-every", type=int),
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

    for split, path in run(make_config(**options), log=click.echo).items():
        click.echo(f"{split}: {path}")


@main.command()
@train_options
def train(**options):
    """Train a LoRA adapter on the base model with confidence-weighted loss."""
    from .train import train as run

    run(make_config(**options), log=click.echo)

# ---- merge / export (merge.py, export.py) ----

# ---- eval / chat (evaluate.py, chat.py) ----
