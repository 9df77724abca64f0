"""outputs.py's guarantees without a model: one holder of a lock among concurrent processes (a stale lock
taken over included), folders a failing block created removed, orphaned temporaries cleaned, no write through
a symbolic link, an output that appears meanwhile never replaced."""

import os
import socket
import subprocess
import sys
import time

import pytest

from gift_mlx.errors import GiftError
from gift_mlx.outputs import LineWriter, new_folder, remove_orphans, staged_folder, write_text

CONTEND = """import os, sys, time
from pathlib import Path
from gift_mlx.errors import GiftError
from gift_mlx.outputs import folder_lock
folder, n, start = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
try:
    with folder_lock(folder):
        (folder / f"attempt-{os.getpid()}").touch()
        print("got", flush=True)
        deadline = time.time() + 60
        while len(list(folder.glob("attempt-*"))) < n and time.time() < deadline:  # hold until all have tried
            time.sleep(0.01)
except GiftError:
    (folder / f"attempt-{os.getpid()}").touch()
    print("busy", flush=True)
"""


@pytest.mark.parametrize("stale", [True, False])
def test_concurrent_processes_never_both_hold_a_lock(tmp_path, stale):
    n = 6
    for trial in range(3):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        if stale:  # a killed run's lock file: its process is gone
            (folder / ".gift.lock").write_text(f"999999999 {socket.gethostname()}")
        start = time.time() + 3  # every process has started by then
        procs = [subprocess.Popen([sys.executable, "-c", CONTEND, str(folder), str(n), str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        results = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert sorted(results) == ["busy"] * (n - 1) + ["got"], results
        assert not (folder / ".gift.lock").exists()


def test_a_failing_block_removes_the_folders_it_created(tmp_path):
    with pytest.raises(GiftError):
        with new_folder(tmp_path / "a" / "b" / "c") as c:
            (c / "x").write_text("partial")
            raise GiftError("boom")
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("user")
    with pytest.raises(GiftError):
        with new_folder(kept, owned=True):
            (kept / "scores").mkdir()
            raise GiftError("boom")
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]
    with pytest.raises(GiftError):
        with new_folder(tmp_path / "ckpt", keep=lambda: True) as c:
            (c / "checkpoint").write_text("resume from me")
            raise GiftError("boom")
    assert (tmp_path / "ckpt" / "checkpoint").exists()


def test_a_staged_output_into_a_new_parent_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(GiftError, match="boom"):
        with staged_folder(tmp_path / "p" / "q" / "out") as stage:
            (stage / "w.safetensors").write_bytes(b"half")
            raise GiftError("boom")
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_appears_meanwhile_is_not_replaced_and_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(GiftError, match="appeared or changed"):
        with staged_folder(out) as stage:
            with pytest.raises(GiftError, match="in use by another gift"):
                with staged_folder(out):
                    pass
            (stage / "result").write_text("ours")
            out.mkdir()
            (out / "theirs").write_text("someone else's")
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_orphaned_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".checkpoint-0000002.safetensors.tmp-{dead.pid}.safetensors"
    orphan.write_bytes(b"half")
    live = tmp_path / f".adapters.safetensors.tmp-{os.getpid()}.safetensors"
    live.write_bytes(b"being written")
    other = tmp_path / ".notes.txt"
    other.write_text("a user's hidden file")
    remove_orphans(tmp_path)
    assert not orphan.exists() and live.exists() and other.exists()


def test_nothing_is_written_through_a_symbolic_link(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "p", "completion": "c"}\n')
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(data)
    with pytest.raises(GiftError, match="symbolic link"):
        LineWriter(link, "a")
    write_text(link, "replaced")  # an atomic write replaces the link itself
    assert data.read_text() == '{"prompt": "p", "completion": "c"}\n' and not link.is_symlink()
