"""Checkpoints of a training run: parameters and optimizer state in one ``.npz``.

:func:`save_checkpoint` writes the leaves of both trees flat, next to JSON metadata (tree
structures, leaf shapes and dtypes, the step, the model's and optimizer's names, the run's
config); :func:`load_checkpoint` checks that metadata against the trees it restores into
before it restores anything, so a checkpoint of another model is a
:class:`CheckpointError` that says so, and a file that cannot be read is a
:class:`DamagedCheckpointError` naming it. A run keeps its checkpoints in
``checkpoints/step_XXXXXXXX.npz`` (:func:`checkpoint_path`, :func:`list_checkpoints`,
:func:`latest_checkpoint`).

Compatibility: a state class that gains trailing fields left ``None`` by default (as
``HessianFreeState`` gained ``value`` and ``grad`` for ``store_grad=True``) adds no leaf,
so a checkpoint written before loads into it unchanged: the structure is compared with
and without such trailing ``None`` fields (:func:`_structures`), the leaves always. The
file format stays 1.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv.app.run_folder import atomic_write

PyTree = Any

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DamagedCheckpointError",
    "checkpoint_metadata",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or written for another model/optimizer."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read: truncated, overwritten, or not a checkpoint.

    Attributes:
      path: the file.
      reason: what reading it raised, in one line.
    """

    def __init__(self, path: pathlib.Path, reason: str):
        self.path, self.reason = pathlib.Path(path), reason
        super().__init__(
            f"{path} is damaged or is not a jaxcurv checkpoint ({reason}). Use another "
            f"checkpoint written by `jaxcurv train` (run folder/checkpoints/step_*.npz); "
            f"`jaxcurv train --resume` falls back to the previous one by itself."
        )


class Checkpoint(NamedTuple):
    """What :func:`load_checkpoint` restores.

    Attributes:
      params: the parameters, a tree like the ``params_like`` it was loaded into.
      state: the optimizer state, a tree like ``state_like``.
      step: optimizer steps done when it was written.
      elapsed: seconds spent in optimizer steps up to then (compilation excluded).
      meta: the file's metadata (see :func:`checkpoint_metadata`).
    """

    params: PyTree
    state: PyTree
    step: int
    elapsed: float
    meta: dict


def _leaf_to_numpy(x) -> tuple[np.ndarray, str]:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x)), str(jax.random.key_impl(x))
    return np.asarray(x), ""


def _describe_tree(tree: PyTree) -> list[list]:
    return [[list(np.shape(x)), str(jnp.result_type(x))] for x in jax.tree.leaves(tree)]


def save_checkpoint(
    path: str | os.PathLike,
    params: PyTree,
    state: PyTree,
    *,
    step: int,
    elapsed: float = 0.0,
    model_name: str = "",
    optimizer_name: str = "",
    config: Mapping | None = None,
) -> pathlib.Path:
    """Write parameters and optimizer state to one ``.npz``, atomically.

    Leaves are stored flat, in ``jax.tree.flatten`` order, next to JSON metadata holding
    the tree structures, leaf shapes and dtypes, the step and the model's name, which
    :func:`load_checkpoint` checks before restoring anything. The file appears complete
    or not at all (:func:`atomic_write`).

    Returns:
      ``path`` as a ``pathlib.Path``.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays, impls = {}, {}
    for prefix, tree in (("params", params), ("state", state)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}/{i}"], impl = _leaf_to_numpy(leaf)
            if impl:
                impls[f"{prefix}/{i}"] = impl
    meta = {
        "format": _FORMAT,
        "step": int(step),
        "elapsed": float(elapsed),
        "model": model_name,
        "optimizer": optimizer_name,
        "params_treedef": str(jax.tree.structure(params)),
        "state_treedef": str(jax.tree.structure(state)),
        "params_leaves": _describe_tree(params),
        "state_leaves": _describe_tree(state),
        "key_impls": impls,
        "config": dict(config or {}),
    }
    blob = np.array(json.dumps(meta))
    return atomic_write(path, lambda f: np.savez(f, __meta__=blob, **arrays), binary=True)


# What reading a truncated, overwritten or foreign file raises, from numpy, zipfile, zlib
# and json; anything else is a bug and should surface as one.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and every array of a checkpoint, all read now: ``np.load`` is lazy, and a
    damaged member would otherwise fail later, half-way through restoring."""
    with open(path, "rb") as f:
        head = f.read(4)
    # numpy's own complaint about other files suggests unpickling them: not an option.
    if head != b"PK\x03\x04":
        raise DamagedCheckpointError(path, "not an .npz (zip) archive" if head else "empty file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        meta = json.loads(str(arrays.pop("__meta__")))
        if not isinstance(meta, dict):
            raise ValueError("its metadata is not a JSON object")
    except _UNREADABLE as e:
        raise DamagedCheckpointError(path, " ".join(f"{type(e).__name__}: {e}".split())) from None
    return meta, arrays


def _read_meta(path: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    return _read_npz(path)


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint: step, model and optimizer names, the run's config.

    Raises:
      CheckpointError: the file is missing; :class:`DamagedCheckpointError` (a
        ``CheckpointError``) if it cannot be read.
    """
    return _read_meta(pathlib.Path(path))[0]


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _without_trailing_nones(tree: PyTree) -> PyTree:
    """``tree`` with every NamedTuple's trailing ``None`` fields dropped (a class of the
    same name and the leading fields): the structure it had before those fields existed.
    The leaves, and their order, are unchanged: a ``None`` field holds none."""
    if _is_namedtuple(tree):
        values = [_without_trailing_nones(v) for v in tree]
        k = len(values)
        while k and values[k - 1] is None:
            k -= 1
        if k == len(values):
            return type(tree)(*values)
        return collections.namedtuple(type(tree).__name__, tree._fields[:k])(*values[:k])
    if isinstance(tree, list | tuple) and type(tree) in (list, tuple):
        return type(tree)(_without_trailing_nones(v) for v in tree)
    if type(tree) is dict:
        return {k: _without_trailing_nones(v) for k, v in tree.items()}
    return tree


def _structures(tree: PyTree) -> set[str]:
    """The tree structures a checkpoint restorable into ``tree`` may have been written
    with: ``tree``'s own, and the one without trailing ``None`` NamedTuple fields."""
    return {str(jax.tree.structure(tree)), str(jax.tree.structure(_without_trailing_nones(tree)))}


def _check_compatible(
    path: pathlib.Path, meta: dict, like: dict, model_name: str, optimizer_name: str
) -> None:
    written = f"model '{meta.get('model')}' with optimizer '{meta.get('optimizer')}'"
    current = f"model '{model_name}' with optimizer '{optimizer_name}'"
    fix = (
        "Resume with the config that wrote it (saved as config.toml in its run folder), or "
        "start a fresh run in another --out."
    )
    if meta.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {meta.get('format')}, expected {_FORMAT}. {fix}"
        )
    for what, tree in like.items():
        same = meta.get(f"{what}_treedef") in _structures(tree) and meta.get(
            f"{what}_leaves"
        ) == _describe_tree(tree)
        if not same:
            label = "parameters" if what == "params" else "optimizer state"
            raise CheckpointError(
                f"Checkpoint {path} was written for {written}, but this run has {current}: "
                f"their {label} differ in structure, shapes or dtypes. {fix}"
            )


def _restore(path: pathlib.Path, arrays: dict, impls: dict, prefix: str, like: PyTree):
    leaves, treedef = jax.tree.flatten(like)
    out = []
    for i, ref in enumerate(leaves):
        name = f"{prefix}/{i}"
        if name not in arrays:
            raise DamagedCheckpointError(path, f"its metadata lists array {name}, which it lacks")
        if name in impls:
            out.append(jax.random.wrap_key_data(arrays[name], impl=impls[name]))
        else:
            out.append(jnp.asarray(arrays[name], dtype=jnp.result_type(ref)))
    return jax.tree.unflatten(treedef, out)


def load_checkpoint(
    path: str | os.PathLike,
    params_like: PyTree,
    state_like: PyTree,
    *,
    model_name: str = "",
    optimizer_name: str = "",
) -> Checkpoint:
    """Restore a checkpoint into trees shaped like ``params_like`` and ``state_like``.

    Returns:
      A :class:`Checkpoint`: the restored trees, the step, the time and the metadata.

    Raises:
      CheckpointError: the file is missing, or it was written for a different model or
        optimizer (tree structure, leaf shapes or dtypes differ); the message names both
        and says how to proceed.
      DamagedCheckpointError: a ``CheckpointError`` for a file that cannot be read
        (truncated, garbage); the message names the file.
    """
    path = pathlib.Path(path)
    meta, arrays = _read_meta(path)
    like = {"params": params_like, "state": state_like}
    _check_compatible(path, meta, like, model_name, optimizer_name)
    impls = meta.get("key_impls", {})
    try:
        step, elapsed = int(meta["step"]), float(meta["elapsed"])
    except (KeyError, TypeError, ValueError):
        raise DamagedCheckpointError(path, "its metadata has no valid step") from None
    return Checkpoint(
        _restore(path, arrays, impls, "params", params_like),
        _restore(path, arrays, impls, "state", state_like),
        step,
        elapsed,
        meta,
    )


def list_checkpoints(run_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The checkpoints in ``run_dir/checkpoints``, oldest step first."""
    folder = pathlib.Path(run_dir) / "checkpoints"
    found = sorted(folder.glob("step_*.npz")) if folder.is_dir() else []
    # Temporary files of older versions were named step_*.tmp.npz.
    return [p for p in found if not p.name.endswith(".tmp.npz")]


def latest_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> pathlib.Path:
    """Where the checkpoint of ``step`` goes in ``run_dir``: ``checkpoints/step_XXXXXXXX.npz``."""
    return pathlib.Path(run_dir) / "checkpoints" / f"step_{step:08d}.npz"
