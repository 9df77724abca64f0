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

# ---- merge / export (merge.py, export.py) ----

# ---- eval / chat (evaluate.py, chat.py) ----
