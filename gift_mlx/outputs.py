"""Safe outputs for every command: nothing half-written, no input overwritten, nothing foreign deleted, and a
failed write (a full disk, a read-only folder) reported as one `error: PATH: ...` line.

An output folder is built in a hidden sibling folder and renamed into place at the end, so an interrupted
run leaves no half-written output; temporary folders left by a killed run are removed by the next one.
Single files (JSON, safetensors, raw bytes) are written to a hidden sibling and renamed into place; the
temporary is removed on any failure. `check_output` refuses an output that is, contains or lies inside an
input, and replaces (with --force) only a folder that gift wrote. `folder_lock` and `path_lock` keep two runs
out of one folder (an OS lock, released by the kernel when its process dies, so no lock is ever stale).
`new_folder` removes, after any failure, what a command created. Nothing is written through a symbolic link.
Hidden names stay within the 255-byte limit of a file name however long the output's name is.
"""

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from .errors import GiftError

RECORD = "gift_export.json"  # the provenance record of a merged model or exported adapter: marks gift's outputs
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems
LOCK = ".gift.lock"  # folder_lock's file: a run holds it while it writes the folder


# ---- names ----

def hidden_name(name, tag):
    """`.<name>.<tag>`, with the name shortened (and a hash of it kept) when the whole would not fit NAME_MAX."""
    full = f".{name}.{tag}"
    if len(full.encode()) <= NAME_MAX:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    room = NAME_MAX - len(f"..{tag}~{digest}".encode())
    short = name.encode()[:room].decode("utf-8", "ignore")
    return f".{short}~{digest}.{tag}"


def _tmp_path(path, tag="tmp"):
    path = Path(path)
    name = hidden_name(path.name, f"{tag}-{os.getpid()}")
    # MLX's writer appends .safetensors to any other name: keep the suffix last
    return path.with_name(name + (".safetensors" if path.suffix == ".safetensors" else ""))


# ---- errors ----

def write_error(path, e):
    """The GiftError for a failed write of `path` (an OSError, or MLX's RuntimeError for its own writes)."""
    if isinstance(e, GiftError):
        return e
    where = getattr(e, "filename", None) or path
    what = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    return GiftError(f"{where}: cannot write ({what})")


@contextmanager
def writing(path):
    """Report an OSError inside the block as one line naming `path` (or the file the OS names)."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from None


# ---- folders ----

def _overlaps(a, b):
    return a == b or a in b.parents or b in a.parents


def check_not_inside(out, inputs, what="output"):
    """Refuse an output path that is, contains or lies inside an existing input path."""
    out = Path(out).resolve()
    for p in inputs:
        if p and Path(p).exists() and _overlaps(out, Path(p).resolve()):
            raise GiftError(f"{out}: the {what} must not be, contain or lie inside the input {p}")
    return out


def check_output(out, inputs=(), force=False):
    """Refuse outputs that would overwrite an input or an existing folder; return the resolved path."""
    out = check_not_inside(out, inputs)
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


def _identity(path):
    """(device, inode) of what is at `path` now (not following a link), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def staged_folder(out):
    """Yield a temporary sibling folder that replaces `out` in one rename on success and is removed on any
    failure (an OSError becomes one error line naming the path). The caller decides beforehand whether an
    existing `out` may be replaced; the output is locked for the block (a second run into it stops at once),
    and a folder that appears at `out` meanwhile (another program) is never replaced. Parent folders
    created for it are removed on failure (new_folder)."""
    out = Path(out)
    tmp = _tmp_path(out)
    try:
        with new_folder(out.parent, label=out), path_lock(out.parent / hidden_name(out.name, "lock"), out):
            before = _identity(out)
            try:
                remove_orphans(out.parent, out.name)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            except OSError as e:  # named by the output asked for, not its hidden stand-in
                raise GiftError(str(write_error(out, e)).replace(str(tmp), str(out))) from None
            try:
                yield tmp
                if _identity(out) != before:
                    raise GiftError(f"{out}: appeared or changed while this command ran; not replacing it "
                                    "(run again, or choose another output)")
                if before is not None:  # --force: move the old output aside first, so some complete output exists
                    old = _tmp_path(out, "old")
                    out.rename(old)
                    tmp.rename(out)
                    _remove(old)
                else:
                    tmp.rename(out)
            except BaseException as e:
                _remove(tmp)
                if isinstance(e, OSError):
                    e = write_error(out, e)
                if isinstance(e, GiftError):  # name the output the user asked for, not its hidden stand-in
                    raise GiftError(str(e).replace(str(tmp), str(out))) from None
                raise
    except OSError as e:
        raise write_error(out, e) from None


def _remove(path):
    """Delete a file or a folder tree (never following a link out of it)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


ORPHAN = re.compile(r"\..*\.(tmp|old)-(\d+)(\.safetensors)?")  # _tmp_path's names


def remove_orphans(folder, name=None):
    """Delete the temporary files and folders in `folder` (only those of the output `name`, if given) left by
    a killed run (SIGKILL skips clean-up): those whose process is gone."""
    stem = name and hidden_name(name, "tmp-0")[: -len("tmp-0")]
    for path in _list(folder):
        m = ORPHAN.fullmatch(path.name)
        if m and (not stem or path.name.startswith(stem)) and not process_alive(int(m.group(2))):
            _remove(path)


def _created(path):
    """The folders `mkdir -p path` would create, the topmost last."""
    path, missing = Path(os.path.abspath(path)), []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    return missing


@contextmanager
def new_folder(path, owned=False, keep=lambda: False, label=None):
    """Create `path` (and its parents) if missing, and after any failure in the block remove the topmost
    folder it created. owned=True (a folder the command holds locked): when `path` existed, remove instead
    the entries that appeared in it during the block. keep(), checked at failure time, true keeps all (a
    training run's checkpoints, to resume from). A failure to create it is an error naming `label` (or path)."""
    path = Path(path)
    missing = _created(path)
    before = {p.name for p in _list(path)}
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where `label`'s parent folder should be: not a directory, for `label`
        code = errno.ENOTDIR if label and isinstance(e, FileExistsError) else e.errno
        raise write_error(label or path, OSError(code, os.strerror(code))) from None
    try:
        yield path
    except BaseException:
        if not keep():
            if missing:
                _remove(missing[-1])
            elif owned:
                for p in _list(path):
                    if p.name not in before and p.name != LOCK:  # the lock goes with its holder
                        _remove(p)
        raise


def _list(folder):
    try:
        return list(Path(folder).iterdir())
    except OSError:
        return []


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def folder_lock(folder, what="run"):
    """Hold `<folder>/.gift.lock` (LOCK) for the block (path_lock)."""
    with path_lock(Path(folder) / LOCK, folder, what):
        yield


@contextmanager
def path_lock(path, owner, what="run"):
    """Hold an exclusive OS lock (flock) on the file `path` for the block, the file naming this process and
    host. A second process gets one error line naming `owner`. The kernel releases the lock of a killed
    process, so a stale lock file is simply taken; taking it is one atomic flock, then a check that the file
    locked is still the one at `path` (a holder unlinks it on release), so two processes never both hold it."""
    path = Path(path)
    while True:
        try:  # never through a link: a planted link would have the lock truncate its target
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:  # named by what is locked, not the hidden lock file
            raise write_error(owner, OSError(e.errno, e.strerror)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise write_error(path, e) from None
            pid, _, host = holder.partition(" ")
            raise GiftError(f"{owner}: in use by another gift {what} (process {pid or '?'} on {host or 'this host'}); "
                            "wait for it to finish or use another folder") from None
        if _identity(path) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            break
        os.close(fd)  # released and unlinked by its holder between our open and flock: take the new file
    try:
        with writing(path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}".encode())
        yield
    finally:
        try:
            path.unlink(missing_ok=True)  # while still held: a waiter then sees another file at `path`
        finally:
            os.close(fd)


# ---- files ----

def atomic_write(path, write):
    """Run write(tmp) for a hidden sibling tmp, then rename it to `path`; remove tmp on any failure."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)):  # named by the file asked for, not its temporary
            raise write_error(path, e if getattr(e, "filename", None) != str(tmp) else OSError(e.errno, e.strerror)) from None
        raise
    return path


def no_link(path):
    """`path`, refused when it is a symbolic link: an output is never written through one (a planted link
    would have gift overwrite the file it points to)."""
    if Path(path).is_symlink():
        raise GiftError(f"{path}: is a symbolic link; gift does not write through links (remove it)")
    return path


def write_bytes(path, data):
    """Atomic: written beside and renamed into place, so a reader never sees half a file."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return atomic_write(path, write)


def write_text(path, text):
    return write_bytes(path, text.encode("utf-8"))


def nonfinite_at(data, where=""):
    """The place (a.b[2]) of the first NaN or infinity in nested JSON data, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "the value"
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for k, v in items:
        found = nonfinite_at(v, f"{where}{'' if str(k).startswith('[') or not where else '.'}{k}")
        if found:
            return found
    return None


def json_text(path, data):
    """JSON of data (one object) with no NaN or infinity, which JSON cannot hold."""
    bad = nonfinite_at(data)
    if bad:
        raise GiftError(f"{path}: {bad} is not a finite number; nothing written")
    return json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"


def write_json(path, data):
    """Atomic, and never a NaN."""
    return write_text(path, json_text(path, data))


def nonfinite(tensors):
    """The names of the floating tensors (of a name -> mx.array dict) that hold a NaN or infinity, lazily: one
    tensor at a time, so the check's temporaries never exceed one tensor's size."""
    import mlx.core as mx

    return (k for k, v in tensors.items() if mx.issubdtype(v.dtype, mx.inexact) and not mx.isfinite(v).all().item())


def check_finite(tensors, where):
    """Raise naming the first floating tensor (of a name -> mx.array dict) that holds a NaN or infinity."""
    bad = list(nonfinite(tensors))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise GiftError(f"{where}: tensor {bad[0]}{more} holds NaN or infinite values; nothing written")


def save_tensors(path, tensors, metadata=None, check=True):
    """MLX arrays as safetensors, atomically, after checking they are finite (unless the caller did)."""
    import mlx.core as mx

    if check:
        check_finite(tensors, path)
    return atomic_write(path, lambda tmp: mx.save_safetensors(str(tmp), tensors, metadata=metadata or {}))


class LineWriter:
    """An appendable JSON-lines file (metrics.jsonl, samples.jsonl): one flushed line per row, never a NaN,
    and a failed write reported naming the file."""

    def __init__(self, path, mode="w"):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if mode == "a" else os.O_TRUNC)
        with writing(self.path):
            self.file = open(os.open(no_link(self.path), flags, 0o644), "w")

    def write(self, row):
        line = json.dumps(row, allow_nan=False) if nonfinite_at(row) is None else None
        if line is None:
            raise GiftError(f"{self.path}: {nonfinite_at(row)} is not a finite number")
        with writing(self.path):
            self.file.write(line + "\n")
            self.file.flush()

    def close(self):
        with writing(self.path):
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.close()
        except GiftError:
            if exc[0] is None:
                raise
