"""The training loop behind ``jaxcurv train``: data, model, optimizer, checkpoints and plots.

:func:`train` trains a reference model of :mod:`jaxcurv.models` on an embedded dataset of
:mod:`jaxcurv.data` with :func:`jaxcurv.hessian_free.hessian_free` or an optax baseline
(``adam``, ``sgd``, ``lbfgs``), one jitted step per iteration. It writes, into its run
folder: ``config.toml`` (the resolved config), ``metrics.jsonl`` (one JSON object per logged
step), ``summary.json`` (final losses, optimizer and compile time, device),
``checkpoints/step_XXXXXXXX.npz`` (parameters and optimizer state) and PNG plots.
A run resumed from a checkpoint continues bit-identically: minibatches are a pure function
of the step (:func:`jaxcurv.data.batch_indices`), and the restored arrays and the compiled
step are the same as in an uninterrupted run.

The loss-landscape analysis of a trained model (``jaxcurv landscape``) is in
:mod:`jaxcurv.landscape`.

Plots need matplotlib and the progress bar needs tqdm (the ``cli`` extra); both are imported
only when used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

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
    "RunExistsError",
    "TrainResult",
    "build_data",
    "build_model",
    "build_optimizer",
    "checkpoint_metadata",
    "latest_checkpoint",
    "load_checkpoint",
    "prepare_run_dir",
    "read_metrics",
    "save_checkpoint",
    "train",
    "write_json",
]

_MARKER = ".jaxcurv-run"
_FORMAT = 1


class RunExistsError(FileExistsError):
    """The output folder holds a previous run and neither overwrite nor resume was asked."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or written for another model/optimizer."""


# ------------------------------------------------------------------------ run folders


def prepare_run_dir(path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False):
    """Create the run folder ``path``, refusing to clobber an existing run by accident.

    A missing folder (and its parents) is created. An empty folder is used as is. A folder
    with files is used only with ``resume=True`` (continue the run in it) or
    ``overwrite=True``; ``overwrite`` deletes it only if a jaxcurv run wrote it (it holds
    the ``.jaxcurv-run`` marker), so a mistyped ``--out`` never deletes unrelated files.

    Returns:
      The folder as a ``pathlib.Path``.

    Raises:
      RunExistsError: the folder has files and neither flag allows using it.
      FileExistsError: ``path`` is a file, or ``overwrite`` on a folder jaxcurv did not write.
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path} is a file; give a folder for the run's outputs.")
    if path.is_dir() and any(path.iterdir()):
        if resume:
            return path
        if not overwrite:
            raise RunExistsError(
                f"--out {path} already holds a run. Pass --overwrite to replace it, "
                f"--resume to continue it (train), or choose another --out."
            )
        if not (path / _MARKER).exists():
            raise FileExistsError(
                f"--out {path} is not empty and was not written by jaxcurv (no {_MARKER} "
                f"marker), so --overwrite will not delete it. Choose another --out."
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / _MARKER).write_text("written by jaxcurv; --overwrite may delete this folder\n")
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
    """Write parameters and optimizer state to one ``.npz`` (atomically).

    Leaves are stored flat, in ``jax.tree.flatten`` order, next to JSON metadata holding
    the tree structures, leaf shapes and dtypes, the step and the model's name, which
    :func:`load_checkpoint` checks before restoring anything.
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
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __meta__=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path


def _read_meta(path: pathlib.Path) -> tuple[dict, Any]:
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["__meta__"]))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{path} is not a jaxcurv checkpoint ({type(e).__name__}: {e}). Point --checkpoint "
            f"at a file written by `jaxcurv train` (run folder/checkpoints/step_*.npz)."
        ) from None
    return meta, z


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint: step, model and optimizer names, the run's config.

    Raises:
      CheckpointError: the file is missing or is not a jaxcurv checkpoint.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    return _read_meta(path)[0]


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
      CheckpointError: the file is missing or unreadable, or it was written for a different
        model or optimizer (tree structure, leaf shapes or dtypes differ); the message names
        both and says how to proceed.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    meta, z = _read_meta(path)
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
    for what, like in (("params", params_like), ("state", state_like)):
        same = meta[f"{what}_treedef"] == str(jax.tree.structure(like)) and meta[
            f"{what}_leaves"
        ] == _describe_tree(like)
        if not same:
            label = "parameters" if what == "params" else "optimizer state"
            raise CheckpointError(
                f"Checkpoint {path} was written for {written}, but this run has {current}: "
                f"their {label} differ in structure, shapes or dtypes. {fix}"
            )
    impls = meta.get("key_impls", {})

    def restore(prefix, like):
        leaves, treedef = jax.tree.flatten(like)
        out = []
        for i, ref in enumerate(leaves):
            arr = z[f"{prefix}/{i}"]
            if f"{prefix}/{i}" in impls:
                out.append(jax.random.wrap_key_data(arr, impl=impls[f"{prefix}/{i}"]))
            else:
                out.append(jnp.asarray(arr, dtype=jnp.result_type(ref)))
        return jax.tree.unflatten(treedef, out)

    return _Checkpoint(
        restore("params", params_like),
        restore("state", state_like),
        int(meta["step"]),
        float(meta["elapsed"]),
        meta,
    )


def latest_checkpoint(run_dir: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or ``None``."""
    folder = pathlib.Path(run_dir) / "checkpoints"
    found = sorted(folder.glob("step_*.npz")) if folder.is_dir() else []
    found = [p for p in found if not p.name.endswith(".tmp.npz")]
    return found[-1] if found else None


def _checkpoint_path(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    return run_dir / "checkpoints" / f"step_{step:08d}.npz"


# ----------------------------------------------------------------------------- metrics


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (dicts, lists, numbers, strings) as indented JSON; NaN and infinities
    become ``null``, since JSON has no spelling for them."""
    with open(path, "w") as f:
        json.dump(_finite(obj), f, indent=1)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The JSON lines of a ``metrics.jsonl`` as a list of dicts."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_metrics(path: pathlib.Path, step: int) -> None:
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r["step"] <= step]
    with open(path, "w") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")


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
    """

    params: PyTree
    state: PyTree
    metrics: list[dict]
    model: models_lib.Model
    run_dir: pathlib.Path
    files: dict[str, str]


@functools.lru_cache(maxsize=16)
def _evaluate(model: models_lib.Model) -> Callable:
    # Per model, not per optimizer: runs of one model with different optimizers (the
    # demo's race, the baselines) share one compiled evaluation.
    return jax.jit(lambda params, x, y: model.loss(model.apply(params, x), y))


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    plots: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the configured model, logging metrics, checkpointing and plotting.

    Args:
      cfg: the configuration (see :mod:`jaxcurv.config`).
      run_dir: the run folder; created if missing. See :func:`prepare_run_dir`.
      resume: continue from the latest checkpoint in ``run_dir`` up to ``cfg.run.steps``.
      overwrite: replace an existing run in ``run_dir``.
      progress: show a tqdm progress bar; ``None`` uses ``cfg.run.progress``.
      plots: write the PNG plots at the end.
      stop_after: stop (with a checkpoint) after this many steps in total, as if
        interrupted; ``None`` runs to ``cfg.run.steps``.

    Returns:
      A :class:`TrainResult`.

    Raises:
      RunExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
      CheckpointError: ``resume`` without a checkpoint, or one from another model/optimizer.
    """
    run_dir = prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    model, opt, step_fn, eval_fn = _compiled_parts(cfg.model, cfg.optimizer, cfg.data.kind)
    train_set, test_set = build_data(cfg)
    metrics_path = run_dir / "metrics.jsonl"
    tables = config_to_dict(cfg)

    params = _strong(model.init(jax.random.key(cfg.run.seed)))
    state = _strong(opt.init(params))
    start, elapsed = 0, 0.0
    if resume:
        ckpt_path = latest_checkpoint(run_dir)
        if ckpt_path is None:
            raise CheckpointError(
                f"--resume: {run_dir} has no checkpoints/step_*.npz to resume from. Train "
                f"without --resume first (checkpoints are written every "
                f"`run.checkpoint_every` steps and at the end)."
            )
        ckpt = load_checkpoint(
            ckpt_path, params, state, model_name=model.name, optimizer_name=cfg.optimizer.name
        )
        _check_same_run(ckpt.meta.get("config", {}), tables, ckpt_path)
        params, state = _strong(ckpt.params), _strong(ckpt.state)
        start, elapsed = ckpt.step, ckpt.elapsed
        _truncate_metrics(metrics_path, start)
    (run_dir / "config.toml").write_text(config_to_toml(cfg))

    full_x, full_y = jnp.asarray(train_set.inputs), jnp.asarray(train_set.targets)
    test_x, test_y = jnp.asarray(test_set.inputs), jnp.asarray(test_set.targets)
    batch = cfg.data.batch_size or len(train_set)
    total = cfg.run.steps if stop_after is None else min(cfg.run.steps, stop_after)

    def get_batch(step):
        if batch == len(train_set):
            return full_x, full_y
        idx = data_lib.batch_indices(len(train_set), batch, step, seed=cfg.data.seed)
        return jnp.asarray(train_set.inputs[idx]), jnp.asarray(train_set.targets[idx])

    def save(step):
        save_checkpoint(
            _checkpoint_path(run_dir, step),
            params,
            state,
            step=step,
            elapsed=elapsed,
            model_name=model.name,
            optimizer_name=cfg.optimizer.name,
            config=tables,
        )

    wall0 = time.perf_counter()
    compile_time = 0.0
    if start < total:
        # Compiled ahead of the loop so that the timings in the metrics are optimizer time
        # only; the compile time is reported apart, in summary.json.
        t0 = time.perf_counter()
        step_fn = step_fn.lower(params, state, *get_batch(start)).compile()
        compile_time = time.perf_counter() - t0

    bar = _progress_bar(cfg, start, progress)
    mode = "a" if resume else "w"
    done = start
    try:
        with open(metrics_path, mode) as log:
            if start == 0:
                record = {
                    "step": 0,
                    "time": 0.0,
                    "test_loss": _json_float(eval_fn(params, test_x, test_y)),
                }
                log.write(json.dumps(record) + "\n")
            for step in range(start, total):
                inputs, targets = get_batch(step)
                t0 = time.perf_counter()
                new_params, new_state, loss, info = step_fn(params, state, inputs, targets)
                loss = jax.block_until_ready(loss)
                elapsed += time.perf_counter() - t0
                params, state, done = new_params, new_state, step + 1
                # Which steps get a line depends on the step alone (not on where this call
                # stops), so an interrupted-and-resumed run logs what a straight run logs.
                last = done == cfg.run.steps
                if done % cfg.run.log_every == 0 or done % cfg.run.eval_every == 0 or last:
                    record = {"step": done, "time": elapsed, "loss": _json_float(loss)}
                    record.update({k: _host_scalar(v) for k, v in info.items()})
                    if done % cfg.run.eval_every == 0 or last:
                        record["test_loss"] = _json_float(eval_fn(params, test_x, test_y))
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_postfix(loss, info), refresh=False)
                every = cfg.run.checkpoint_every
                if (every and done % every == 0) or done == total:
                    save(done)
            if latest_checkpoint(run_dir) is None:
                save(done)
    except KeyboardInterrupt:
        # Keep what was computed: the last completed step is checkpointed for --resume.
        _truncate_metrics(metrics_path, done)
        save(done)
        raise
    finally:
        if bar is not None:
            bar.close()

    metrics = read_metrics(metrics_path)
    files = {"config": "config.toml", "metrics": "metrics.jsonl", "summary": "summary.json"}
    last_loss = next((r["loss"] for r in reversed(metrics) if r.get("loss") is not None), None)
    last_test = next(
        (r["test_loss"] for r in reversed(metrics) if r.get("test_loss") is not None), None
    )
    summary = {
        "model": model.name,
        "optimizer": cfg.optimizer.name,
        "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "steps": done,
        "final_loss": last_loss,
        "final_test_loss": last_test,
        "optimizer_time_s": elapsed,
        "compile_time_s": compile_time,
        "wall_time_s": time.perf_counter() - wall0,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
    }
    write_json(run_dir / "summary.json", summary)
    if plots:
        files.update(plot_training(metrics, run_dir, title=f"{model.name}, {cfg.optimizer.name}"))
    return TrainResult(params, state, metrics, model, run_dir, files)


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(metrics: list[dict], run_dir: pathlib.Path, *, title: str = "") -> dict:
    """Loss against time (``loss_vs_time.png``) and, for Hessian-free, damping, CG steps
    and rho against step (``damping.png``). Returns ``{role: file name}``."""
    plt = _pyplot()
    files = {}
    rows = [r for r in metrics if r.get("loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["time"] for r in rows], [r["loss"] for r in rows], label="training batch loss")
    test = [r for r in metrics if r.get("test_loss") is not None]
    ax.plot(
        [r["time"] for r in test], [r["test_loss"] for r in test], "o-", ms=3, label="test loss"
    )
    ax.set_xlabel("time (s, optimizer steps only)")
    ax.set_ylabel("loss")
    if all(r["loss"] > 0 for r in rows) and rows:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_vs_time.png", dpi=100)
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
        fig.savefig(run_dir / "damping.png", dpi=100)
        plt.close(fig)
        files["damping_plot"] = "damping.png"
    return files
