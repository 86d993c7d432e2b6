"""The training loop behind ``jaxcurv train``: data, model, optimizer, checkpoints and plots.

:func:`train` trains a reference model of :mod:`jaxcurv.models` on an embedded dataset of
:mod:`jaxcurv.data` with :func:`jaxcurv.hessian_free.hessian_free` or an optax baseline
(``adam``, ``sgd``, ``lbfgs``), one jitted step per iteration. It writes, into its run
folder: ``config.toml`` (the resolved config, first of all, so that ``--resume`` can always
read it), ``metrics.jsonl`` (one JSON object per logged step), ``summary.json`` (final
losses, optimizer and compile time, device), ``checkpoints/step_XXXXXXXX.npz`` (parameters
and optimizer state) and PNG plots. Every file but the appended ``metrics.jsonl`` is
written atomically (a temporary file in the same folder, fsync, rename), so a crash leaves
the old file or the new one, never a part of one.

A ``metrics.jsonl`` record has ``step`` (optimizer steps done), ``time`` (seconds spent in
optimizer steps so far, compilation excluded), ``step_time`` (seconds of this step),
``loss_before`` (the loss on this step's training batch at the parameters *before* the
step: the value the step's gradient was taken at, computed for free), ``test_loss`` (on
the test set at the parameters *after* the step, every ``run.eval_every`` steps, at step 0
and at the end) and, for Hessian-free, ``damping``, ``rho``, ``cg_steps``, ``alpha`` and
``rejected`` of the step.

A run resumed from a checkpoint continues bit-identically: minibatches are a pure function
of the step (:func:`jaxcurv.data.batch_indices`), and the restored arrays and the compiled
step are the same as in an uninterrupted run. Ctrl-C stops it cleanly after the current
step and checkpoints that step (:class:`TrainingInterrupted`); a damaged checkpoint is
skipped with a one-line note and the run resumes from the newest readable one.

The loss-landscape analysis of a trained model (``jaxcurv landscape``) is in
:mod:`jaxcurv.landscape`.

Plots need matplotlib and the progress bar needs tqdm (the ``cli`` extra); both are imported
only when used, and a run without them trains fully and says what it left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import pathlib
import secrets
import shutil
import signal
import sys
import threading
import time
import tomllib
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcurv
from jaxcurv import data as data_lib
from jaxcurv import models as models_lib
from jaxcurv.config import (
    Config,
    DataConfig,
    ModelConfig,
    config_to_dict,
    config_to_toml,
)

PyTree = Any

__all__ = [
    "CheckpointError",
    "DamagedCheckpointError",
    "MissingExtraError",
    "RunExistsError",
    "TrainResult",
    "TrainingInterrupted",
    "atomic_write",
    "build_data",
    "build_model",
    "build_optimizer",
    "checkpoint_metadata",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prepare_run_dir",
    "read_metrics",
    "require_plotting",
    "save_checkpoint",
    "save_figure",
    "stop_on_interrupt",
    "train",
    "write_json",
    "write_text",
]

_MARKER = ".jaxcurv-run"
_FORMAT = 1
_INSTALL_CLI = "pip install 'jaxcurv[cli]'"


class RunExistsError(FileExistsError):
    """The output folder holds a previous run and neither overwrite nor resume was asked."""


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


class MissingExtraError(ImportError):
    """An optional dependency of the command line (the ``cli`` extra) is not installed."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train` between steps; what is on disk is said exactly.

    Attributes:
      run_dir: the run folder.
      step: optimizer steps completed when it stopped.
      total: the steps the run was asked for.
      checkpoint: the newest checkpoint on disk (where ``--resume`` continues from), or
        ``None`` if there is none yet.
      saved: whether this call wrote ``checkpoint`` on the way out.
    """

    def __init__(
        self,
        run_dir: pathlib.Path,
        step: int,
        total: int,
        checkpoint: pathlib.Path | None,
        saved: bool,
    ):
        self.run_dir, self.step, self.total = run_dir, step, total
        self.checkpoint, self.saved = checkpoint, saved
        if checkpoint is None:
            what = "no checkpoint exists yet"
        else:
            what = f"{'saved' if saved else 'the latest checkpoint is'} {checkpoint}"
        super().__init__(f"stopped after step {step} of {total}; {what}")


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ atomic files


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


# ------------------------------------------------------------------------ run folders


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


# ----------------------------------------------------------------- data, model, optimizer


def build_data(cfg: Config) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """The training and test sets the config describes (one draw, split in two).

    Returns:
      ``(train, test)`` :class:`jaxcurv.data.Dataset` pairs of host arrays; for curves the
      targets are the images themselves (an autoencoder reconstructs its input).
    """
    d = cfg.data
    n = d.num_train + d.num_test
    dtype = np.dtype(cfg.model.dtype)
    if d.kind == "curves":
        x = data_lib.curves(
            n, seed=d.seed, size=d.size, num_control_points=d.num_control_points, dtype=dtype
        )
        full = data_lib.Dataset(x, x)
    elif d.kind == "regression":
        full = data_lib.regression(
            n, seed=d.seed, in_dim=d.in_dim, out_dim=d.out_dim, noise=d.noise, dtype=dtype
        )
    else:
        full = data_lib.classification(
            n, seed=d.seed, in_dim=d.in_dim, num_classes=d.num_classes, dtype=dtype
        )
    split = d.num_train
    train = data_lib.Dataset(full.inputs[:split], full.targets[:split])
    test = data_lib.Dataset(full.inputs[split:], full.targets[split:])
    return train, test


def build_model(cfg: Config) -> models_lib.Model:
    """The :class:`jaxcurv.models.Model` of ``cfg.model`` (checked against ``cfg.data``).

    Equal settings return the same ``Model`` object: everything compiled for a model (its
    training step, its evaluation, the landscape analysis) is then compiled once per
    process, however many runs use it.
    """
    loss = cfg.model.loss
    if loss == "auto":
        loss = "softmax_cross_entropy" if cfg.data.kind == "classification" else "mse"
    return _build_model(cfg.model, loss)


@functools.lru_cache(maxsize=16)
def _build_model(m: ModelConfig, loss: str) -> models_lib.Model:
    dtype = jnp.dtype(m.dtype)
    if m.kind == "autoencoder":
        return models_lib.deep_autoencoder(
            m.sizes, activation=m.activation, init=m.init, dtype=dtype
        )
    return models_lib.mlp(m.sizes, activation=m.activation, loss=loss, init=m.init, dtype=dtype)


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The optax transformation named by ``cfg.optimizer.name``, with its options."""
    o = cfg.optimizer
    if o.name == "hessian_free":
        return jaxcurv.hessian_free(
            o.learning_rate,
            curvature=o.curvature,
            damping=o.damping,
            adapt_damping=o.adapt_damping,
            cg_maxiter=o.cg_maxiter,
            cg_tol=o.cg_tol,
            cg_stop=o.cg_stop,
            cg_backtracking=o.cg_backtracking,
            line_search=o.line_search,
            preconditioner=None if o.preconditioner == "none" else o.preconditioner,
            curvature_fraction=None if o.curvature_fraction >= 1.0 else o.curvature_fraction,
        )
    if o.name == "adam":
        return optax.adam(o.learning_rate, b1=o.b1, b2=o.b2)
    if o.name == "sgd":
        return optax.sgd(o.learning_rate, momentum=o.momentum or None)
    return optax.lbfgs(o.learning_rate)


def objective(model: models_lib.Model) -> jaxcurv.ModelAndLoss:
    """``value_fn(params, inputs=..., targets=...)`` with the model and loss kept apart."""

    def model_fn(params, inputs):
        return model.apply(params, inputs)

    def loss_fn(outputs, targets):
        return model.loss(outputs, targets)

    return jaxcurv.ModelAndLoss(model_fn, loss_fn)


def _strong(tree: PyTree) -> PyTree:
    # Weakly typed scalars (a Python float that became an array) trace differently from
    # strongly typed ones of the same dtype; making every leaf strong gives the step the
    # same signature whether its inputs come from init, a previous step or a checkpoint.
    def strong(x):
        if jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
            return x
        return jnp.asarray(x, dtype=jnp.result_type(x))

    return jax.tree.map(strong, tree)


@functools.lru_cache(maxsize=8)
def _compiled_parts(model_cfg, optimizer_cfg, data_kind):
    # One optimizer and jitted step per distinct configuration: a second run with the same
    # settings (a resume, the demo's rerun, a test) reuses the compiled step instead of
    # compiling it again. The parts are pure functions, so sharing is safe.
    cfg = Config(model=model_cfg, optimizer=optimizer_cfg, data=DataConfig(kind=data_kind))
    model = build_model(cfg)
    opt = build_optimizer(cfg)
    return model, opt, _make_step(cfg, model, opt), _evaluate(model)


def _make_step(cfg: Config, model: models_lib.Model, opt) -> Callable:
    value_fn = objective(model)
    name = cfg.optimizer.name

    def step(params, state, inputs, targets):
        loss, grads = jax.value_and_grad(value_fn)(params, inputs=inputs, targets=targets)
        if name == "hessian_free":
            updates, state = opt.update(
                grads,
                state,
                params,
                value_fn=value_fn,
                value=loss,
                inputs=inputs,
                targets=targets,
            )
            info = {
                "damping": state.damping,
                "rho": state.rho,
                "cg_steps": state.cg_steps,
                "alpha": state.alpha,
                "rejected": state.rejected,
            }
        elif name == "lbfgs":
            # optax's line search hands a value_fn only the keywords its signature names.
            def plain(params, inputs, targets):
                return value_fn(params, inputs=inputs, targets=targets)

            updates, state = opt.update(
                grads,
                state,
                params,
                value=loss,
                grad=grads,
                value_fn=plain,
                inputs=inputs,
                targets=targets,
            )
            info = {}
        else:
            updates, state = opt.update(grads, state, params)
            info = {}
        params = optax.apply_updates(params, updates)
        return _strong(params), _strong(state), loss, info

    return jax.jit(step)


# ------------------------------------------------------------------------- checkpoints


class _Checkpoint(NamedTuple):
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
        same = meta.get(f"{what}_treedef") == str(jax.tree.structure(tree)) and meta.get(
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
) -> _Checkpoint:
    """Restore a checkpoint into trees shaped like ``params_like`` and ``state_like``.

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
    return _Checkpoint(
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


def _checkpoint_path(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    return run_dir / "checkpoints" / f"step_{step:08d}.npz"


# ----------------------------------------------------------------------------- metrics


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The JSON lines of a ``metrics.jsonl`` as a list of dicts.

    A last line cut short (the process died while appending it) is left out; any other
    line that is not JSON raises ``ValueError`` naming the file and the line.
    """
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise ValueError(f"{path}, line {i + 1}, is not JSON: {e}.") from None
    return records


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      params: the final parameters.
      state: the final optimizer state.
      metrics: every logged metrics record of the run (including ones before a resume).
      model: the :class:`jaxcurv.models.Model` trained.
      run_dir: the run folder.
      files: names of the files written into it, by role.
      start: the step this call started from (0, or the checkpoint it resumed from).
    """

    params: PyTree
    state: PyTree
    metrics: list[dict]
    model: models_lib.Model
    run_dir: pathlib.Path
    files: dict[str, str]
    start: int = 0


@functools.lru_cache(maxsize=16)
def _evaluate(model: models_lib.Model) -> Callable:
    # Per model, not per optimizer: runs of one model with different optimizers (the
    # demo's race, the baselines) share one compiled evaluation.
    return jax.jit(lambda params, x, y: model.loss(model.apply(params, x), y))


class _StopRequest:
    """The SIGINT handler while :func:`train` runs: the first Ctrl-C asks the loop to stop
    after the current step; a second one calls ``on_repeat``, or raises KeyboardInterrupt."""

    def __init__(self, say: Callable[[str], None], on_repeat: Callable[[], None] | None):
        self.requested = False
        self._say, self._on_repeat = say, on_repeat

    def __call__(self, signum, frame) -> None:
        if self.requested:
            if self._on_repeat is not None:
                self._on_repeat()
            raise KeyboardInterrupt
        self.requested = True
        # The handler may run while the main thread is itself writing to stderr; a
        # reentrant write raises RuntimeError, and the note is not worth a crash.
        with contextlib.suppress(RuntimeError):
            self._say(
                "\nCtrl-C: stopping after the current step and checkpointing it (press "
                "Ctrl-C again to quit at once, without saving)."
            )


@contextlib.contextmanager
def stop_on_interrupt(
    echo: Callable[[str], None] | None = _to_stderr,
    on_repeat: Callable[[], None] | None = None,
) -> Iterator[_StopRequest]:
    """Within this context, Ctrl-C asks :func:`train` to stop after its current step.

    :func:`train` enters it by itself; a program enters it earlier (the command line does,
    before it reads the config) so that a Ctrl-C before training starts is not lost
    either. Nested uses share the outer one. It takes effect only in the main thread and
    over Python's default SIGINT handler; a handler someone else installed is kept.

    Args:
      echo: called with a one-line note when the first Ctrl-C arrives (``None``: silent).
      on_repeat: called on a second Ctrl-C, from the signal handler (a program may end
        the process there); if it returns, or is ``None``, KeyboardInterrupt is raised.

    Yields:
      The stop request; its ``requested`` attribute says whether Ctrl-C was pressed.
    """
    # Python's own handler raises KeyboardInterrupt wherever the main thread happens to
    # be. Inside JAX that is often a garbage-collection callback, which swallows it (the
    # run goes on), or the middle of a compilation, whose threads then crash the
    # interpreter as it exits (a segfault in 2 of 4 tries on jax 0.10). A flag that the
    # loop reads between steps avoids both.
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _StopRequest):
        yield current
        return
    stop = _StopRequest(echo or (lambda _: None), on_repeat)
    ours = threading.current_thread() is threading.main_thread()
    ours = ours and current is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, stop)
    try:
        yield stop
    finally:
        if ours:
            signal.signal(signal.SIGINT, current)


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    plots: bool = True,
    stop_after: int | None = None,
    echo: Callable[[str], None] | None = _to_stderr,
) -> TrainResult:
    """Train the configured model, logging metrics, checkpointing and plotting.

    Ctrl-C (SIGINT, when this runs in the main thread under Python's default handler)
    stops the loop after the current step, checkpoints that step and raises
    :class:`TrainingInterrupted`; a second Ctrl-C interrupts at once with a plain
    ``KeyboardInterrupt`` and saves nothing more.

    Args:
      cfg: the configuration (see :mod:`jaxcurv.config`).
      run_dir: the run folder; created if missing. See :func:`prepare_run_dir`.
      resume: continue from the newest readable checkpoint in ``run_dir`` up to
        ``cfg.run.steps`` (damaged ones are skipped with a note); a run that stopped before
        its first checkpoint starts again from step 0.
      overwrite: replace an existing run in ``run_dir``.
      progress: show a tqdm progress bar; ``None`` uses ``cfg.run.progress``.
      plots: write the PNG plots at the end (skipped, with a note, without matplotlib).
      stop_after: stop (with a checkpoint) after this many steps in total, as if
        interrupted; ``None`` runs to ``cfg.run.steps``.
      echo: called with each one-line note (a damaged checkpoint skipped, a missing
        optional dependency, Ctrl-C received); ``None`` silences them. Default: stderr.

    Returns:
      A :class:`TrainResult`.

    Raises:
      RunExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
      FileExistsError: ``run_dir`` is a file, or a folder with files jaxcurv did not write.
      CheckpointError: ``resume`` with nothing to resume, a checkpoint from another
        model/optimizer or config, or only damaged checkpoints.
      TrainingInterrupted: Ctrl-C; it says which step is checkpointed.
    """
    say = echo or (lambda _: None)
    with stop_on_interrupt(say) as stop:
        return _train(cfg, run_dir, resume, overwrite, progress, plots, stop_after, say, stop)


def _open_run(cfg: Config, run_dir: pathlib.Path, resume: bool, overwrite: bool):
    nothing = (
        f"--resume: {run_dir} has no checkpoints/step_*.npz to resume from. Train without "
        f"--resume first (checkpoints are written every `run.checkpoint_every` steps and at "
        f"the end)."
    )
    if resume and not run_dir.is_dir():
        raise CheckpointError(nothing)
    run_dir = prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    _remove_stale_temporaries(run_dir)
    if not resume:
        # Before any work, so that `--resume` can continue however early the run stops.
        write_text(run_dir / "config.toml", config_to_toml(cfg))
    elif latest_checkpoint(run_dir) is None and not (run_dir / "config.toml").is_file():
        raise CheckpointError(nothing)
    return run_dir


def _remove_stale_temporaries(run_dir: pathlib.Path) -> None:
    # What an atomic write leaves when the process is killed half-way (or quits at once on
    # a second Ctrl-C); nobody reads them, but they should not pile up.
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                path.unlink()


def _saved_tables(path: pathlib.Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _resume_point(run_dir, cfg, model, params, state, say) -> _Checkpoint | None:
    """The newest readable checkpoint of the run (``None``: it has none yet), checked
    against ``cfg``; damaged ones are skipped with a one-line note each."""
    tables = config_to_dict(cfg)
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(
                path, params, state, model_name=model.name, optimizer_name=cfg.optimizer.name
            )
        except DamagedCheckpointError as e:
            say(f"warning: skipping damaged checkpoint {path} ({e.reason}).")
            damaged.append(path.name)
            continue
        _check_same_run(ckpt.meta.get("config", {}), tables, path)
        return ckpt
    if damaged:
        raise CheckpointError(
            f"Cannot resume {run_dir}: every checkpoint in it is damaged "
            f"({', '.join(damaged)}). Start the run again with --overwrite, or in another --out."
        )
    config_path = run_dir / "config.toml"
    _check_same_run(_saved_tables(config_path), tables, config_path)
    say(
        f"note: {run_dir} has no checkpoint yet (the run stopped before its first one); "
        f"starting from step 0."
    )
    return None


_EXTRA_ROLE = {"matplotlib": "plots", "tqdm": "progress bar"}


def _missing_extras(plots: bool, bar: bool) -> list[str]:
    wanted = [("matplotlib", plots), ("tqdm", bar)]
    return [name for name, want in wanted if want and not _importable(name)]


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


class _Data(NamedTuple):
    """The arrays one run reads: ``batch(step)`` is that step's minibatch."""

    batch: Callable[[int], tuple[jax.Array, jax.Array]]
    test_x: jax.Array
    test_y: jax.Array


def _device_data(cfg: Config) -> _Data:
    train_set, test_set = build_data(cfg)
    full_x, full_y = jnp.asarray(train_set.inputs), jnp.asarray(train_set.targets)
    size = cfg.data.batch_size or len(train_set)

    def batch(step):
        if size == len(train_set):
            return full_x, full_y
        idx = data_lib.batch_indices(len(train_set), size, step, seed=cfg.data.seed)
        return jnp.asarray(train_set.inputs[idx]), jnp.asarray(train_set.targets[idx])

    return _Data(batch, jnp.asarray(test_set.inputs), jnp.asarray(test_set.targets))


def _starting_point(cfg, run_dir, model, opt, resume, say) -> tuple[PyTree, PyTree, int, float]:
    """``(params, state, step, elapsed)``: the initialization, or the checkpoint resumed."""
    params = _strong(model.init(jax.random.key(cfg.run.seed)))
    state = _strong(opt.init(params))
    if not resume:
        return params, state, 0, 0.0
    ckpt = _resume_point(run_dir, cfg, model, params, state, say)
    # The config may raise run.steps on resume; the run folder records what it runs.
    write_text(run_dir / "config.toml", config_to_toml(cfg))
    if ckpt is None:
        return params, state, 0, 0.0
    try:
        _truncate_metrics(run_dir / "metrics.jsonl", ckpt.step)
    except ValueError as e:
        raise CheckpointError(
            f"Cannot resume {run_dir}: {e} Delete that line, or start again with --overwrite."
        ) from None
    return _strong(ckpt.params), _strong(ckpt.state), ckpt.step, ckpt.elapsed


def _train(cfg, run_dir, resume, overwrite, progress, plots, stop_after, say, stop):
    run_dir = _open_run(cfg, pathlib.Path(run_dir), resume, overwrite)
    model, opt, step_fn, eval_fn = _compiled_parts(cfg.model, cfg.optimizer, cfg.data.kind)
    data = _device_data(cfg)
    params, state, start, elapsed = _starting_point(cfg, run_dir, model, opt, resume, say)
    total = cfg.run.steps if stop_after is None else min(cfg.run.steps, stop_after)
    show_bar = (cfg.run.progress if progress is None else progress) and start < total
    missing = _missing_extras(plots, show_bar)
    if missing:
        say(
            f"note: {', '.join(missing)} not installed: training without "
            f"{' or '.join(_EXTRA_ROLE[m] for m in missing)}; {_INSTALL_CLI} adds them."
        )

    def save(params, state, step, elapsed):
        save_checkpoint(
            _checkpoint_path(run_dir, step),
            params,
            state,
            step=step,
            elapsed=elapsed,
            model_name=model.name,
            optimizer_name=cfg.optimizer.name,
            config=config_to_dict(cfg),
        )

    wall0 = time.perf_counter()
    compile_time = 0.0
    if start < total and not stop.requested:
        # Compiled ahead of the loop so that the timings in the metrics are optimizer time
        # only; the compile time is reported apart, in summary.json.
        t0 = time.perf_counter()
        step_fn = step_fn.lower(params, state, *data.batch(start)).compile()
        compile_time = time.perf_counter() - t0
    if stop.requested:
        raise TrainingInterrupted(
            run_dir, start, cfg.run.steps, latest_checkpoint(run_dir), saved=False
        )
    bar = _progress_bar(cfg, start, show_bar and "tqdm" not in missing)
    try:
        params, state, done, elapsed = _run_steps(
            cfg,
            step_fn,
            eval_fn,
            data,
            (params, state, start, elapsed),
            total=total,
            metrics_path=run_dir / "metrics.jsonl",
            bar=bar,
            save=save,
            stop=stop,
        )
    finally:
        if bar is not None:
            bar.close()
    if stop.requested and done < total:
        saved = done > start
        if saved and not _checkpoint_path(run_dir, done).exists():
            save(params, state, done, elapsed)
        raise TrainingInterrupted(run_dir, done, cfg.run.steps, latest_checkpoint(run_dir), saved)
    if latest_checkpoint(run_dir) is None:
        save(params, state, done, elapsed)

    metrics = read_metrics(run_dir / "metrics.jsonl")
    times = {
        "optimizer_time_s": elapsed,
        "compile_time_s": compile_time,
        "wall_time_s": time.perf_counter() - wall0,
    }
    write_json(run_dir / "summary.json", _summary(cfg, model, params, metrics, done, times))
    files = {"config": "config.toml", "metrics": "metrics.jsonl", "summary": "summary.json"}
    if plots and "matplotlib" not in missing:
        files.update(plot_training(metrics, run_dir, title=f"{model.name}, {cfg.optimizer.name}"))
    return TrainResult(params, state, metrics, model, run_dir, files, start)


def _run_steps(cfg, step_fn, eval_fn, data, carry, *, total, metrics_path, bar, save, stop):
    """Steps from ``carry = (params, state, step, elapsed)`` up to ``total``, logging and
    checkpointing as configured; returns the new carry. Stops early on a stop request."""
    params, state, start, elapsed = carry
    done = start
    with open(metrics_path, "a" if start else "w") as log:
        if start == 0:
            test_loss = _json_float(eval_fn(params, data.test_x, data.test_y))
            log.write(json.dumps({"step": 0, "time": 0.0, "test_loss": test_loss}) + "\n")
        for step in range(start, total):
            if stop.requested:
                break
            inputs, targets = data.batch(step)
            t0 = time.perf_counter()
            params, state, loss, info = step_fn(params, state, inputs, targets)
            loss = jax.block_until_ready(loss)
            step_time = time.perf_counter() - t0
            elapsed += step_time
            done = step + 1
            # Which steps get a line depends on the step alone (not on where this call
            # stops), so an interrupted-and-resumed run logs what a straight run logs.
            last = done == cfg.run.steps
            if done % cfg.run.log_every == 0 or done % cfg.run.eval_every == 0 or last:
                record = {
                    "step": done,
                    "time": elapsed,
                    "step_time": step_time,
                    "loss_before": _json_float(loss),
                }
                record.update({k: _host_scalar(v) for k, v in info.items()})
                if done % cfg.run.eval_every == 0 or last:
                    record["test_loss"] = _json_float(eval_fn(params, data.test_x, data.test_y))
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_postfix(loss, info), refresh=False)
            every = cfg.run.checkpoint_every
            if (every and done % every == 0) or done == total:
                save(params, state, done, elapsed)
    return params, state, done, elapsed


def _summary(cfg, model, params, metrics, done, times) -> dict:
    def last(key):
        return next((r[key] for r in reversed(metrics) if r.get(key) is not None), None)

    return {
        "model": model.name,
        "optimizer": cfg.optimizer.name,
        "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "steps": done,
        # The batch loss before the last logged step, as in metrics.jsonl (see the top of
        # this module); final_test_loss is measured after the last step.
        "last_loss_before": last("loss_before"),
        "final_test_loss": last("test_loss"),
        **times,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
    }


def _check_same_run(saved: Mapping, tables: Mapping, path: pathlib.Path) -> None:
    # The step count may grow on resume; everything that shapes the trajectory may not.
    changed = []
    for section in ("data", "model", "optimizer"):
        for key, value in tables.get(section, {}).items():
            old = saved.get(section, {}).get(key, value)
            if old != value:
                changed.append(f"{section}.{key}: {old!r} -> {value!r}")
    old_seed = saved.get("run", {}).get("seed", tables["run"]["seed"])
    if old_seed != tables["run"]["seed"]:
        changed.append(f"run.seed: {old_seed!r} -> {tables['run']['seed']!r}")
    if changed:
        raise CheckpointError(
            f"Cannot resume from {path}: the config differs from the one that wrote it "
            f"({'; '.join(changed)}). Resume with the run's own config.toml (you may raise "
            f"run.steps), or start a fresh run in another --out."
        )


def _host_scalar(v):
    v = np.asarray(v)
    if v.dtype == bool:
        return bool(v)
    if np.issubdtype(v.dtype, np.integer):
        return int(v)
    return _json_float(v)


def _postfix(loss, info) -> dict:
    out = {"loss": f"{float(loss):.4g}"}
    if "damping" in info:
        out["damping"] = f"{float(info['damping']):.3g}"
        out["cg"] = int(info["cg_steps"])
        out["rho"] = f"{float(info['rho']):.2f}"
    return out


def _progress_bar(cfg: Config, start: int, progress: bool | None):
    show = cfg.run.progress if progress is None else progress
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the cli extra
        return None
    return tqdm(
        total=cfg.run.steps, initial=start, desc=cfg.optimizer.name, unit="step", dynamic_ncols=True
    )


# ------------------------------------------------------------------------------- plots


def require_plotting(what: str = "Plotting") -> None:
    """Check that matplotlib, which ``what`` needs for its plots, is installed: call it
    before any work rather than fail at the end of it.

    Raises:
      MissingExtraError: it is not; the message says how to install it.
    """
    if not _importable("matplotlib"):
        raise MissingExtraError(
            f"{what} needs matplotlib, which is not installed. Install the command-line "
            f"extra: {_INSTALL_CLI}."
        )


def _pyplot():
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_before_points(metrics: list[dict]) -> tuple[list[float], list[float]]:
    # loss_before is measured at the parameters the step started from, so it belongs at
    # the time the step started, not at the time it ended.
    rows = [r for r in metrics if r.get("loss_before") is not None]
    return [r["time"] - r.get("step_time", 0.0) for r in rows], [r["loss_before"] for r in rows]


def plot_training(metrics: list[dict], run_dir: pathlib.Path, *, title: str = "") -> dict:
    """Loss against time (``loss_vs_time.png``) and, for Hessian-free, damping, CG steps
    and rho against step (``damping.png``). Returns ``{role: file name}``."""
    plt = _pyplot()
    files = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    times, losses = _loss_before_points(metrics)
    ax.plot(times, losses, label="training batch loss (before each step)")
    test = [r for r in metrics if r.get("test_loss") is not None]
    ax.plot(
        [r["time"] for r in test], [r["test_loss"] for r in test], "o-", ms=3, label="test loss"
    )
    ax.set_xlabel("time (s, optimizer steps only)")
    ax.set_ylabel("loss")
    if losses and all(v > 0 for v in losses):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, run_dir / "loss_vs_time.png")
    plt.close(fig)
    files["loss_plot"] = "loss_vs_time.png"

    hf = [r for r in metrics if r.get("damping") is not None]
    if hf:
        fig, axes = plt.subplots(3, 1, figsize=(6, 6), sharex=True)
        steps = [r["step"] for r in hf]
        axes[0].semilogy(steps, [r["damping"] for r in hf])
        axes[0].set_ylabel("damping")
        axes[1].plot(steps, [r["cg_steps"] for r in hf])
        axes[1].set_ylabel("CG steps")
        axes[2].plot(steps, [r["rho"] if r["rho"] is not None else np.nan for r in hf], ".")
        axes[2].set_ylabel("rho")
        axes[2].set_xlabel("step")
        axes[0].set_title(title, fontsize=9)
        fig.tight_layout()
        save_figure(fig, run_dir / "damping.png")
        plt.close(fig)
        files["damping_plot"] = "damping.png"
    return files
