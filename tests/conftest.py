import atexit
import os
import shutil
import tempfile

import gift_mlx  # noqa: F401  (preloads the optimized BLAS before mlx.core is imported)
import pytest

# Tests assert exact stderr lines; the slow-BLAS warning, which a machine without OpenBLAS would add to
# every command, has its own tests (test_cli.py).
os.environ.setdefault("GIFT_BLAS_WARN", "0")
# gift train caches pair-check results in the user's cache dir: the tests keep theirs apart.
if "GIFT_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="gift-test-cache-")
    os.environ["GIFT_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)  # not one folder left in /tmp per session

from gift_mlx import toy


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory):
    """(base, instruct) folders of a tiny llama pair sharing one ChatML tokenizer."""
    return toy.build_pair(tmp_path_factory.mktemp("llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def qwen2_pair(tmp_path_factory):
    return toy.build_pair(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=1)


@pytest.fixture(scope="session")
def task_data(tmp_path_factory):
    """A data folder with train/valid/test.jsonl of the toy arithmetic task."""
    return toy.write_task_data(tmp_path_factory.mktemp("data"))
