"""Run folders and the files in them, written atomically.

A run folder is what ``--out`` names: :func:`prepare_run_dir` creates it and marks it as
jaxcurv's (the ``.jaxcurv-run`` marker), so that ``--overwrite`` only ever deletes folders
jaxcurv wrote. Every file of a run but the appended ``metrics.jsonl`` goes through
:func:`atomic_write` (a temporary file in the same folder, fsync, rename), so a crash
leaves the old file or the new one, never a part of one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import secrets
import shutil
from collections.abc import Callable
from typing import IO, Any

__all__ = [
    "RunExistsError",
    "atomic_write",
    "prepare_run_dir",
    "remove_stale_temporaries",
    "save_figure",
    "write_json",
    "write_text",
]

_MARKER = ".jaxcurv-run"


class RunExistsError(FileExistsError):
    """The output folder holds a previous run and neither overwrite nor resume was asked."""


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False
) -> pathlib.Path:
    """Write a file so that a reader sees the old content or the new, never a part.

    ``write(f)`` fills a temporary file in the same folder (one file system, so the rename
    is atomic); it is flushed and fsynced before ``os.replace`` moves it over ``path``, and
    removed if anything fails, an interrupt included.

    Returns:
      ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    # A hidden name that no reader globs for (``step_*.npz``, ``*.png``).
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb" if binary else "x") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: pathlib.Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text))


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (dicts, lists, numbers, strings) as indented JSON, atomically; NaN and
    infinities become ``null``, since JSON has no spelling for them."""
    text = json.dumps(_finite(obj), indent=1)
    atomic_write(path, lambda f: f.write(text))


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> pathlib.Path:
    """Save a matplotlib figure as PNG, atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi), binary=True)


def prepare_run_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False):
    """Create the run folder ``path``, refusing to clobber an existing run by accident.

    A missing folder (and its parents) is created. An empty folder is used as is. A folder
    with files is used only if a jaxcurv run wrote it (it holds the ``.jaxcurv-run``
    marker), and then only with ``resume=True`` (continue the run in it) or
    ``overwrite=True`` (delete it and start again). A folder with files and no marker is
    never written into nor deleted, whatever the flags: a mistyped ``--out`` cannot harm
    unrelated files.

    Returns:
      The folder as a ``pathlib.Path``.

    Raises:
      RunExistsError: the folder holds a jaxcurv run and neither flag allows using it.
      FileExistsError: ``path`` is a file, or a folder with files jaxcurv did not write.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path} is a file; give a folder for the run's outputs.")
    if path.is_dir() and any(path.iterdir()):
        if not (path / _MARKER).exists():
            raise FileExistsError(
                f"--out {path} is not empty and was not written by jaxcurv (no {_MARKER} "
                f"marker), so jaxcurv neither writes into it nor deletes it, with or without "
                f"--overwrite. Choose another --out: a new or an empty folder."
            )
        if resume:
            return path
        if not overwrite:
            raise RunExistsError(
                f"--out {path} already holds a run. Pass --overwrite to replace it, "
                f"--resume to continue it (train), or choose another --out."
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / _MARKER
    if not marker.exists():
        write_text(marker, "written by jaxcurv; --overwrite may delete this folder\n")
    return path


def remove_stale_temporaries(run_dir: pathlib.Path) -> None:
    """Delete what :func:`atomic_write` leaves when the process is killed half-way (or
    quits at once on a second Ctrl-C), in the run folder and its ``checkpoints/``."""
    # Nobody reads them, but they should not pile up.
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                path.unlink()
