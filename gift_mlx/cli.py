"""The `gift` command line: a thin click layer over functions importable from gift_mlx."""

import sys
import traceback

import click

from .errors import INTERNAL_ERROR, USER_ERROR, GiftError


class Group(click.Group):
    """Every error ends a command as one line on stderr (docs/errors.md); `gift --debug` (or GIFT_DEBUG=1)
    prints the traceback before it."""

    def invoke(self, ctx):
        debug = ctx.params.get("debug")
        try:
            return super().invoke(ctx)
        except GiftError as e:  # a user mistake: one line, exit 2, no traceback
            fail(f"error: {e}", USER_ERROR, debug)
        except OSError as e:  # unwritable output, a file where a folder should be, a full disk...
            fail(f"error: {e.filename or ctx.invoked_subcommand or 'gift'}: {e.strerror or e}", USER_ERROR, debug)
        except KeyboardInterrupt as e:  # said once, with what was saved when a command says so (Interrupted)
            fail("interrupted" + (f": {e}" if str(e) else ""), 130, debug)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: usage errors and --help, printed by click
        except Exception as e:  # unforeseen, in gift or in model code: one line all the same, exit 1
            from .models import crash_line

            fail(f"error: {crash_line(e, ctx.invoked_subcommand)}"
                 + ("" if debug else "; run with --debug for the traceback"), INTERNAL_ERROR, debug)


def fail(line, status, debug):
    if debug:
        traceback.print_exc()
    click.echo(line, err=True)
    sys.exit(status)


# -h works as --help everywhere, and every option's help shows its default.
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class Option(click.Option):
    """An option whose help always shows a default: `shown` (for a default computed later), the value,
    'off' for a flag, 'none' for an optional value."""

    def __init__(self, *args, shown=None, **kwargs):
        self.shown = shown
        super().__init__(*args, **kwargs)

    def get_help_extra(self, ctx):
        extra = super().get_help_extra(ctx)
        if self.shown is not None:
            extra["default"] = self.shown
        elif "default" not in extra and not self.required:
            extra["default"] = "off" if self.is_flag else "none"
        return extra


def option(*decls, **kwargs):
    return click.option(*decls, cls=Option, **kwargs)


def check_blas():
    """On Linux CPU, warn before the work starts when the BLAS is slow or GIFT_BLAS unusable (doctor.py)."""
    from .doctor import blas_warnings

    for warning in blas_warnings():
        click.echo(f"warning: {warning}", err=True)


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="gift-mlx")
@option("--debug", is_flag=True, envvar="GIFT_DEBUG", help="On an error, print its traceback too (or GIFT_DEBUG=1).")
def main(debug):
    """GIFT: instruct-guided LoRA fine-tuning on a base model, transferred to its instruct model."""


# ---- score / train (core) ----

# Flags keep mlx-lm's names (--iters, --batch-size, --adapter-path, --save-every, ...) where it has them.
# Every flag defaults to None so that it overrides a YAML config only when given; the help shows the
# default of the TrainConfig field it sets (config.py), which also checks every value (YAML alike).
OPTIONS = {
    "config": (("-c", "--config"), dict(type=click.Path(), help="YAML file of TrainConfig fields; flags override it.")),
    "base": (("--base",), dict(help="Base (pretrained) model: Hub id or folder.")),
    "instruct": (("--instruct",), dict(help="Instruct model: Hub id or folder (chat template, confidences).")),
    "data": (("--data",), dict(help="Folder with train/valid.jsonl, or one .jsonl file.")),
    "adapter_path": (("--adapter-path",), dict(help="Output folder for the adapter.")),
    "method": (("--method",), dict(type=click.Choice(["gift", "shadow-ft", "direct", "gift-base", "dft"]))),
    "scores_path": (("--scores-path",), dict(help="Folder of cached score files.")),
    "online_scores": (("--online-scores",), dict(is_flag=True, help="Score inside the training step.")),
    "pair_check": (("--pair-check/--no-pair-check",), dict(help="Measure base vs instruct before training.")),
    "floor": (("--floor",), dict(type=float, help="Weight floor: w = max(q, floor)^gamma.")),
    "gamma": (("--gamma",), dict(type=float, help="Weight exponent.")),
    "fine_tune_type": (("--fine-tune-type",), dict(type=click.Choice(["lora", "dora"]))),
    "lora_rank": (("--lora-rank",), dict(type=int)),
    "lora_alpha": (("--lora-alpha",), dict(type=float, help="scale = alpha / rank.")),
    "lora_dropout": (("--lora-dropout",), dict(type=float)),
    "lora_keys": (("--lora-keys",), dict(help="Comma-separated module keys, e.g. self_attn.q_proj,mlp.down_proj.")),
    "num_layers": (("--num-layers",), dict(type=int, help="Adapt the last N blocks (-1: all).")),
    "iters": (("--iters",), dict(type=int, help="Optimizer steps.")),
    "epochs": (("--epochs",), dict(type=float, help="Used when --iters is not given.")),
    "batch_size": (("--batch-size",), dict(type=int, help="Micro-batch rows.")),
    "grad_accumulation_steps": (("--grad-accumulation-steps",), dict(type=int, help="Micro-batches per optimizer step.")),
    "learning_rate": (("--learning-rate",), dict(type=float)),
    "warmup_ratio": (("--warmup-ratio",), dict(type=float)),
    "weight_decay": (("--weight-decay",), dict(type=float)),
    "max_seq_length": (("--max-seq-length",), dict(type=int)),
    "pad_lengths": (("--pad-lengths",), dict(type=int, help="Batch lengths (compiled shapes), fitted to the data.")),
    "grad_checkpoint": (("--grad-checkpoint",), dict(is_flag=True)),
    "seed": (("--seed",), dict(type=int)),
    "steps_per_report": (("--steps-per-report",), dict(type=int)),
    "steps_per_eval": (("--steps-per-eval",), dict(type=int)),
    "val_batches": (("--val-batches",), dict(type=int, help="-1: the whole validation set; 0: none.")),
    "save_every": (("--save-every",), dict(type=int, help="Steps between checkpoints.")),
    "keep_checkpoints": (("--keep-checkpoints",), dict(type=int, help="Checkpoints kept for --resume.")),
    "resume": (("--resume",), dict(is_flag=True, help="Continue from the latest intact checkpoint.")),
    "overwrite": (("--overwrite",), dict(is_flag=True, help="Start afresh in an --adapter-path holding an earlier run.")),
    "skip_nonfinite": (("--skip-nonfinite",), dict(is_flag=True, help="Skip steps with a NaN/Inf loss.")),
    "trust_remote_code": (("--trust-remote-code",), dict(is_flag=True, help="Allow model code from the Hub.")),
    "report_to": (("--report-to",), dict(help="Log metrics to wandb (or swanlab; comma-separated), as mlx_lm.lora does.")),
    "project_name": (("--project-name",), dict(help="W&B / SwanLab project for --report-to.")),
}
SHOWN_DEFAULTS = {"config": "none", "base": "none", "instruct": "none", "data": "none", "scores_path": "<adapter-path>/scores",
                  "iters": "one epoch", "lora_keys": "every linear layer",
                  "pair_check": "when both models are on this machine", "report_to": "none",
                  "project_name": "gift-mlx"}
SCORE_FIELDS = ("config", "base", "instruct", "data", "adapter_path", "method", "scores_path", "max_seq_length",
                "trust_remote_code")


def config_options(names):
    """The TrainConfig flags `names`, each defaulting to None (so it overrides YAML only when given) and
    showing the field's default in --help."""
    from .config import TrainConfig

    defaults = TrainConfig()

    def decorate(f):
        for name in reversed(names):
            decls, kw = OPTIONS[name]
            shown = SHOWN_DEFAULTS.get(name, getattr(defaults, name, None))
            f = option(*decls, default=None, shown="off" if shown is False else str(shown), **kw)(f)
        return f
    return decorate


train_options = config_options(list(OPTIONS))


def make_config(config, lora_keys=None, **overrides):
    from .config import load_config

    if lora_keys:
        overrides["lora_keys"] = [k.strip() for k in lora_keys.split(",") if k.strip()]
    return load_config(config, overrides)


@main.command()
@config_options(SCORE_FIELDS)
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
@option("--out", default="runs/demo", help="Folder for the adapters, merged models and report.")
@option("--iters", type=int, default=None, shown="configs/demo.yaml's, 32",
              help="Optimizer steps per method.")
@option("--samples", default=4, help="Samples per problem (Average@k, pass@k, maj@k).")
@option("--seed", default=0, help="Seed of LoRA init, data order and sampling.")
@option("--gift-base", is_flag=True, help="Also run the paper's ablation (base model's own confidences).")
@option("--world", type=click.Path(), shown="the built-in one", help="A toy world folder.")
@option("--limit", type=int, shown="all", help="Evaluate only the first N problems of each set (a quick check).")
@option("--force", is_flag=True, help="Replace an earlier demo in --out.")
def demo(out, iters, samples, seed, gift_base, world, limit, force):
    """Train, merge and evaluate every method on the built-in toy world (no download, minutes on a CPU)."""
    from .demo import demo as run

    check_blas()
    run(out, iters=iters, samples=samples, seed=seed, gift_base=gift_base, world=world, limit=limit, force=force,
        log=click.echo)


@main.command("pair-check")
@click.argument("base")
@click.argument("instruct")
@option("--json", "as_json", is_flag=True, help="Print the whole result as JSON (per tensor, type and layer).")
def pair_check_command(base, instruct, as_json):
    """Is BASE/INSTRUCT a transfer pair? Architecture, tensors, tokenizers, and how far apart the weights are."""
    from .outputs import json_text
    from .pair_check import pair_check, summary_text

    result = pair_check(base, instruct)
    click.echo(json_text("pair-check --json", result).rstrip("\n") if as_json else summary_text(result))


PLAN_FIELDS = ("config", "base", "instruct", "data", "method", "online_scores", "lora_rank", "batch_size",
               "max_seq_length", "pad_lengths", "grad_checkpoint", "seed")


@main.command()
@config_options(PLAN_FIELDS)
@option("--shape", type=click.Choice(["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b", "llama-3.1-8b"]),
        help="A published model shape instead of --base (no files needed).")
@option("--bits", type=click.Choice(["0", "4", "8"]), shown="the model's", help="Plan for a quantized base (0: not).")
@option("--memory-gb", type=float, shown="this machine's", help="Plan for a machine with this much memory.")
@option("--device", type=click.Choice(["cpu", "gpu"]), shown="this machine's", help="gpu: Apple silicon (Metal).")
@option("--table", is_flag=True, help="Also print which settings fit (4-bit base, grad checkpoint, batch, length).")
@option("--download", is_flag=True, help="Fetch a Hub model's config.json if it is not on this machine.")
def plan(shape, bits, memory_gb, device, table, download, **options):
    """Estimate peak memory and time per epoch of a training run on this machine, without training."""
    from .config import check_value
    from .plan import plan as run

    check_value("--memory-gb", memory_gb, float, 0, 1e6, open_lo=True, optional=True)
    run(make_config(**options), shape=shape, bits=None if bits is None else int(bits), memory_gb=memory_gb,
        device=device, table=table, download=download, log=click.echo)


@main.command()
def doctor():
    """Print the MLX version, device, BLAS in use and a one-second matmul speed."""
    from .doctor import report

    click.echo(report())


# ---- merge / export (merge.py, export.py) ----

DTYPE_CHOICE = click.Choice(["bfloat16", "float16", "float32"])
UNFINISHED_HELP = "Use the adapter of a training run that is still running or was interrupted (an intermediate step's)."


@main.command()
@option("--instruct", shown="the adapter's instruct_model", help="Instruct model (Hub id or folder).")
@option("--adapter-path", default="adapters", show_default=True, help="Adapter trained on the base model.")
@option("--out", required=True, help="Output folder (written whole at the end, never half).")
@option("--format", "fmt", type=click.Choice(["mlx", "hf", "gguf"]), default="mlx", show_default=True,
        help="mlx: for mlx_lm.load/server; hf: for transformers; gguf: one model.gguf for llama.cpp, "
             "Ollama, LM Studio (llama, qwen2).")
@option("--dtype", type=DTYPE_CHOICE, shown="the instruct's", help="Float dtype of the output.")
@option("--scale", type=float, default=1.0, show_default=True, help="λ in W' = W_instruct + λ·ΔW.")
@option("--base", shown="none", help="The base model the adapter was trained on (required for DoRA adapters).")
@option("--requantize", is_flag=True, help="Re-quantize merged layers of a quantized instruct (lossy).")
@option("--gguf-type", type=click.Choice(["f16", "bf16", "q8_0", "f32"]), shown="from --dtype, else f16",
        help="Tensor type of --format gguf (norms stay f32).")
@option("--force", is_flag=True, help="Replace an existing output folder written by gift.")
@option("--allow-unfinished", is_flag=True, help=UNFINISHED_HELP)
@option("--upload-repo", help="Then upload the output (with its model card) to this Hugging Face Hub repo.")
def merge(instruct, adapter_path, out, fmt, dtype, scale, base, requantize, gguf_type, force, allow_unfinished,
          upload_repo):
    """Add the adapter's update to the instruct model and save the merged model."""
    from .export import upload
    from .merge import merge as run

    if gguf_type and fmt != "gguf":
        raise GiftError("--gguf-type applies to --format gguf only")
    run(instruct, adapter_path, out, fmt=fmt, dtype=dtype, scale=scale, base=base, requantize=requantize,
        gguf_type=gguf_type, force=force, allow_unfinished=allow_unfinished, log=click.echo)
    if upload_repo:
        upload(out, upload_repo, log=click.echo)


@main.command("export-adapter")
@option("--adapter-path", default="adapters", show_default=True)
@option("--format", "fmt", type=click.Choice(["peft"]), default="peft", show_default=True)
@option("--out", required=True, help="Output folder.")
@option("--instruct", shown="the adapter's instruct_model", help="base_model_name_or_path for PEFT.")
@option("--scale", type=float, default=1.0, show_default=True, help="λ, folded into lora_alpha.")
@option("--force", is_flag=True, help="Replace an existing output folder written by gift.")
@option("--allow-unfinished", is_flag=True, help=UNFINISHED_HELP)
@option("--upload-repo", help="Then upload the adapter (with its model card) to this Hugging Face Hub repo.")
def export_adapter(adapter_path, fmt, out, instruct, scale, force, allow_unfinished, upload_repo):
    """Write the adapter in PEFT's layout, to apply to the instruct model with transformers."""
    from .export import upload
    from .export_peft import export_peft

    path = export_peft(adapter_path, out, instruct=instruct, scale=scale, force=force,
                       allow_unfinished=allow_unfinished, log=click.echo)
    click.echo(f"wrote {path} ({fmt})")
    if upload_repo:
        upload(out, upload_repo, log=click.echo)

# ---- eval / chat (evaluate.py, chat.py) ----


@main.command("eval")
@option("--model", "models", multiple=True, required=True, help="Model folder or Hub id; repeat to compare.")
@option("--data", required=True, type=click.Path(), help="JSONL of problems (GSM8K, MATH, choices, chat...).")
@option("--out", default="results", show_default=True, type=click.Path(), help="Output folder.")
@option("--samples", default=16, show_default=True, help="Samples per problem (n); 0 with --greedy: greedy only.")
@option("--temperature", default=1.0, show_default=True)
@option("--top-p", default=1.0, show_default=True)
@option("--max-tokens", default=512, show_default=True, help="Tokens per completion.")
@option("--instruction", default=None, shown="reason, answer in \\boxed{}", help="Appended to each question.")
@option("--greedy", is_flag=True, help="Also measure greedy (temperature 0) accuracy.")
@option("--seed", default=0, show_default=True, help="Sampling seed: a rerun gives the same samples.")
@option("--batch-size", default=64, show_default=True, help="Sequences decoded together.")
@option("--limit", type=int, default=None, shown="all", help="Evaluate only the first N problems.")
@option("--overwrite", is_flag=True, help="Replace an earlier evaluation in --out.")
@option("--trust-remote-code", is_flag=True, help="Allow model code from the Hub.")
def eval_command(models, data, out, **options):
    """Sample each model on a test set: Average@k, pass@k, maj@k (k = 1, 2, 4, ... samples) and a scaling plot."""
    from .evaluate import evaluate

    from pathlib import Path

    check_blas()
    evaluate(list(models), data, out, log=click.echo, **options)
    click.echo(f"wrote {out}: " + ", ".join(sorted(p.name for p in Path(out).iterdir())))


@main.command("chat")
@option("--model", required=True, help="Model folder or Hub id (with a chat template).")
@option("--prompt", default=None, shown="none: a conversation", help="Answer this one message and exit.")
@option("--system", default=None, shown="none", help="System prompt.")
@option("--temperature", default=0.7, show_default=True)
@option("--top-p", default=1.0, show_default=True)
@option("--max-tokens", default=512, show_default=True, help="Tokens per reply.")
@option("--seed", type=int, default=None, shown="random", help="Sampling seed.")
@option("--trust-remote-code", is_flag=True, help="Allow model code from the Hub.")
def chat_command(model, **options):
    """Chat with a model: streaming replies, history, /reset, /system <text>, /quit; reads a pipe too."""
    from .chat import chat

    check_blas()
    chat(model, **options)
