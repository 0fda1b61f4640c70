"""Atomic file writes and hashing: an interrupted run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rescompile.errors import RescompileError
import re

# No file rescompile writes nests deeper than about 8; 64 leaves room for any honest edit. The
# limit is ours, not the json module's, whose own give-up depth moves between Python versions.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


def json_depth(raw: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings ignored)."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    step = np.isin(codes, (0x5B, 0x7B)).astype(np.int32) - np.isin(codes, (0x5D, 0x7D)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def loads_json(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that refuses text nested deeper than ``max_depth`` with a ValueError, the same
    on every Python version (and before the json module could exhaust the stack)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = json_depth(data)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep, more than the {max_depth} any rescompile file uses")
    return json.loads(data.decode("utf-8") if isinstance(raw, bytes) else raw)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success only.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    On any exception (KeyboardInterrupt included) the temporary file is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give the result the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


STAGING_PREFIX = ".staging-"
LOCK_NAME = ".rescompile.lock"


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike[str], *, last: tuple[str, ...] = (), first_remove: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a hidden staging folder inside ``target``; on success move every file in it into
    ``target`` (each rename atomic), on any failure delete it: ``target`` gains all or nothing.

    ``first_remove`` names are deleted from ``target`` before anything moves (a manifest that
    would otherwise describe a half-replaced directory); ``last`` names move after all others.
    """
    import shutil

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    try:
        yield stage
        for name in first_remove:
            old = target / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
        items = sorted(stage.iterdir(), key=lambda p: (p.name in last, p.name))
        for item in items:
            dest = target / item.name
            if item.is_dir() and dest.is_dir():
                shutil.rmtree(dest)
            os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_staging(target: str | os.PathLike[str]) -> int:
    """Delete staging folders a killed run left behind (call it while holding the lock)."""
    import shutil

    count = 0
    for item in Path(target).glob(STAGING_PREFIX + "*"):
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
            count += 1
    return count


class BusyError(RescompileError):
    """Another run holds the output directory."""


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` for one run: a second run into it fails fast instead
    of interleaving its files (fcntl advisory lock; released even when the process is killed)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    path = target / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, still one writer per run in practice
        yield path
        return
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise BusyError(
                f"{target} is being written by another rescompile run ({holder})",
                "Wait for it to finish, or pass another --output-dir",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield path
    finally:
        fh.close()  # closing releases the lock


def expand_user(path: str | os.PathLike[str]) -> Path:
    """Path.expanduser without its RuntimeError for an unknown user ("~nobody/x" stays as written)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def remove_if_empty(target: str | os.PathLike[str]) -> bool:
    """Remove ``target`` when a failed run left nothing in it but its lock file."""
    target = Path(target)
    if not target.is_dir() or any(p.name != LOCK_NAME for p in target.iterdir()):
        return False
    (target / LOCK_NAME).unlink(missing_ok=True)
    target.rmdir()
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return write_bytes_atomic(target, text.encode())


def write_with(target: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
