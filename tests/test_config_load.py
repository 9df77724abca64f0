"""Config files that must be refused at load, before any work: a YAML alias bomb, NaN in `extra`, deep
nesting; and `gift plan --memory-gb` out of range."""

import pytest
from click.testing import CliRunner

from gift_mlx.cli import main
from gift_mlx.config import load_config
from gift_mlx.errors import GiftError

BOMB = "extra:\n  a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"  {c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("text, message", [
    (BOMB, "line 3: aliases (*name) are not supported"),
    ("extra:\n  notes: {lr: .nan}\n", "field 'extra.notes.lr' must be a finite number"),
    ("extra:\n  x: -.inf\n", "field 'extra.x' must be a finite number"),
    ("extra: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("extra:\n" + "".join("  " * (i + 1) + "k:\n" for i in range(40)) + "  " * 41 + "1\n", "nested deeper than 32"),
])
def test_a_bad_config_is_refused_at_load(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(GiftError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")) as e:
        load_config(path)
    assert str(e.value).startswith(str(path))


def test_a_config_with_plain_extra_notes_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("extra:\n  note: baseline\n  sizes: [1, 2.5]\n")
    assert load_config(path).extra == {"note": "baseline", "sizes": [1, 2.5]}


@pytest.mark.parametrize("value, message", [("nan", "must be a finite number"), ("inf", "must be a finite number"),
                                            ("-1", "must be positive"), ("0", "must be positive")])
def test_plan_memory_gb_must_be_positive_and_finite(value, message):
    r = CliRunner().invoke(main, ["plan", "--shape", "qwen2.5-0.5b", "--memory-gb", value])
    assert r.exit_code == 2 and r.stderr.strip() == f"error: --memory-gb: {message}, got {float(value)}", r.output
