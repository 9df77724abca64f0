"""Safe outputs for every command: nothing half-written, no input overwritten, nothing foreign deleted.

An output folder is built in a hidden sibling folder and renamed into place at the end, so an interrupted
run leaves no half-written output; temporary folders left by a killed run are removed by the next one.
`check_output` refuses an output that is, contains or lies inside an input, and replaces (with --force) only
a folder that gift wrote. JSON files are written atomically.
"""

import glob
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import GiftError

RECORD = "gift_export.json"  # the provenance record of a merged model or exported adapter: marks gift's outputs


def _overlaps(a, b):
    return a == b or a in b.parents or b in a.parents


def check_output(out, inputs=(), force=False):
    """Refuse outputs that would overwrite an input or an existing folder; return the resolved path."""
    out = Path(out).resolve()
    for p in inputs:
        if p and Path(p).exists() and _overlaps(out, Path(p).resolve()):
            raise GiftError(f"{out}: the output must not be, contain or lie inside the input {p}")
    if out.exists() and not force:
        raise GiftError(f"{out}: already exists (pass --force to replace it)")
    # --force deletes the old output, so only ever delete what gift wrote (or an empty folder).
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / RECORD).is_file())):
        raise GiftError(f"{out}: exists and was not written by gift (no {RECORD}); not replacing it")
    return out


@contextmanager
def output_folder(out, inputs=(), force=False):
    """check_output, then staged_folder."""
    with staged_folder(check_output(out, inputs, force)) as tmp:
        yield tmp


@contextmanager
def staged_folder(out):
    """Yield a temporary sibling folder that replaces `out` in one rename on success and is removed on failure.
    The caller decides beforehand whether an existing `out` may be replaced."""
    out = Path(out)
    remove_orphans(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # --force: move the old output aside first, so some complete output exists at every moment
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def remove_orphans(out):
    """Delete temporary folders beside `out` left by a killed run (SIGKILL skips clean-up): those whose
    process is gone."""
    for tmp in Path(out).parent.glob(f".{glob.escape(Path(out).name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_json(path, data):
    """Atomic: written beside and renamed into place, so a reader never sees half a file."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
