"""Small I/O helpers shared by every stage: atomic writes, hashing, logging.

Every output file is written to a temporary name in the same folder and then renamed,
so an interrupted run never leaves a truncated checkpoint, table or figure behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

LOG = logging.getLogger("emovit")


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Log ``emovit`` messages to stdout once (idempotent; safe to re-run in a notebook)."""
    if not any(getattr(h, "_emovit", False) for h in LOG.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[emovit] %(message)s"))
        handler._emovit = True  # type: ignore[attr-defined]
        LOG.addHandler(handler)
    LOG.setLevel(level)
    LOG.propagate = False
    return LOG


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary name keeps the file's extension, so libraries that infer the format
    from it (matplotlib, numpy, pandas) behave as for the final name. Before the rename the
    file gets the mode a plain ``open()`` would give it (0o666 minus the umask; mkstemp
    makes it owner-only) and its data is flushed to disk (``fsync``), so a crash right after
    cannot leave an empty or truncated file under the final name; the folder is fsync'ed
    after the rename so the new name itself survives a crash.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        _fsync(tmp, directory=False)
        os.replace(tmp, path)
        _fsync(folder, directory=True)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str, directory: bool) -> None:
    """Flush ``path`` to disk. Folders are fsync'ed on POSIX only (Windows cannot open them)."""
    if directory and os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str, text: str) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return path


def atomic_write_json(path: str, obj: Any) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def atomic_write_csv(path: str, frame: Any) -> str:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def atomic_savefig(fig: Any, path: str, dpi: int = 120) -> str:
    """Save a matplotlib figure atomically (PNG by the path's extension)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return path


def _json_default(obj: Any) -> Any:
    """JSON for numpy scalars and arrays."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def copy_file(src: str, dst: str) -> str:
    """Copy ``src`` to ``dst`` atomically (a reader never sees half a file); returns ``dst``."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def hash_json(obj: Any, length: int = 16) -> str:
    """Stable short SHA-256 of a JSON-serialisable object (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def file_fingerprint(path: str) -> list[Any]:
    """(path, size, mtime in ns): cheap identity of an input file for cache keys.

    An unreadable file gets size and mtime -1: it is not skipped here but reaches the
    extraction, which records why it cannot be read in errors.csv.
    """
    try:
        st = os.stat(path)
    except OSError:
        return [os.path.abspath(path), -1, -1]
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def parallel_imap(fn, tasks: list, workers: int, chunksize: int = 4) -> Iterator:
    """``map(fn, tasks)`` in order, over ``workers`` processes (in-process when 1).

    Processes are started with "spawn": forking a process that has run torch or OpenMP can
    deadlock. Spawned children get the parent's ``sys.path``, so ``fn`` must live in an
    importable module (every ``emovit`` function does). Each child uses one BLAS thread.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if workers == 1:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
        yield from pool.map(fn, tasks, chunksize=chunksize)


def _one_thread() -> None:
    threadpool_limits(1)


def load_checkpoint(path: str) -> dict:
    """``torch.load(path, weights_only=True)``; a corrupt or truncated file raises a
    RuntimeError that names the file (callers say how to retrain)."""
    # torch is imported here, not at the top: the spawned feature-extraction workers import this
    # module and need no torch, and with it loaded their log-mels differed from the serial ones in
    # the 4th digit (tests/test_features.py::test_parallel_equals_serial).
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise RuntimeError(f"cannot read checkpoint {path}: {err}.") from err
