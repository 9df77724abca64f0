"""The example data in examples/math/: what scripts/make_examples.py writes, readable by `gift train` and `gift eval`."""

import subprocess
import sys
from pathlib import Path

from gift_mlx import grading
from gift_mlx.data import load_data
from gift_mlx.models import load_tokenizer
from gift_mlx.problems import read_problems

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples" / "math"


def test_the_committed_examples_are_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_examples.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name


def test_the_training_reader_reads_the_examples(llama_pair):
    data = load_data(EXAMPLES, load_tokenizer(llama_pair[1]), max_seq_length=2048)
    assert {s: len(ds) for s, ds in data.items()} == {"train": 150, "valid": 24}
    assert all(ds.truncated == ds.dropped == 0 for ds in data.values())
    assert all(e.num_targets > 10 for e in data["train"].examples)


def test_the_eval_reader_reads_the_test_and_valid_files():
    test = read_problems(EXAMPLES / "test.jsonl")
    assert len(test) == 60 and all(p.reference.isdigit() for p in test)
    valid = read_problems(EXAMPLES / "valid.jsonl")  # the training shape, evaluated as it is
    assert len(valid) == 24 and all(p.reference.isdigit() for p in valid)
    for p in test[:6]:  # the reference is the answer a correct '#### N' completion is graded right with
        assert grading.grade(f"so the answer is\n#### {p.reference}", p.reference, 0)[1]
