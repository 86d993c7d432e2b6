"""The ``jaxcurv landscape`` command: a trained model's curvature, as JSON and plots.

:func:`landscape` trains a model per a config, or loads a checkpoint, and runs the
library's :func:`jaxcurv.analyze_landscape` on its training loss
(:func:`analyze_model`) and :func:`jaxcurv.block_curvature` on every layer
(:mod:`jaxcurv.app.layer_report`); :func:`landscape_report` turns the resulting
:class:`jaxcurv.Landscape` into JSON-ready tables, :func:`model_report` adds the per-layer
table, the interpolation and the timings (compiling and running apart),
:func:`plot_landscape` (:mod:`jaxcurv.app.landscape_plots`) draws them, and
:func:`save_landscape` writes ``landscape.json``, ``landscape.md`` (the report in words,
:mod:`jaxcurv.app.landscape_text`) and the PNG plots.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxcurv
from jaxcurv.app import models as models_lib
from jaxcurv.app.checkpoints import (
    CheckpointError,
    checkpoint_metadata,
    latest_checkpoint,
    load_checkpoint,
)
from jaxcurv.app.config import (
    Config,
    ConfigError,
    LandscapeConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
)
from jaxcurv.app.landscape_plots import plot_landscape
from jaxcurv.app.landscape_text import render_landscape
from jaxcurv.app.layer_report import layer_curvature
from jaxcurv.app.loop import train
from jaxcurv.app.run_folder import prepare_run_dir, write_json, write_text
from jaxcurv.app.timing import CompileClock
from jaxcurv.app.training_step import build_data, build_model, build_optimizer

PyTree = Any

__all__ = [
    "analyze_model",
    "landscape",
    "landscape_report",
    "model_report",
    "plot_landscape",
    "save_landscape",
]


@dataclasses.dataclass(frozen=True)
class _ModelLoss:
    """``f(params, inputs, targets)`` of a model: hashable, so the library's jitted builders
    and spectral routines cache their compiled code per model, not per call."""

    model: models_lib.Model

    def __call__(self, params, inputs, targets):
        return self.model.loss(self.model.apply(params, inputs), targets)


def analyze_model(
    model: models_lib.Model,
    params: PyTree,
    inputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    options: LandscapeConfig,
) -> jaxcurv.Landscape:
    """:func:`jaxcurv.analyze_landscape` of ``model.loss(model.apply(params, inputs), targets)``
    with the settings of a config's ``[landscape]`` table."""
    key = jax.random.key(options.seed)
    directions = None
    if options.slice_directions == "random":
        # Li et al. 2018: two independent filter-normalized directions; keys apart from
        # the analysis' own so that the spectrum does not change with this setting.
        k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
        directions = (jaxcurv.random_direction(k1, params), jaxcurv.random_direction(k2, params))
    return jaxcurv.analyze_landscape(
        _ModelLoss(model),
        params,
        jnp.asarray(inputs),
        jnp.asarray(targets),
        key=key,
        top_k=options.top_k,
        bottom_k=options.bottom_k,
        maxiter=options.maxiter,
        tol=options.tol or None,
        num_steps=options.num_steps,
        trace_num_samples=options.trace_num_samples,
        density_num_samples=options.density_num_samples,
        slice_points=options.slice_points,
        slice_radius=options.slice_radius,
        slice_directions=directions,
        dense_threshold=options.dense_threshold,
    )


def interpolation_report(
    model: models_lib.Model,
    start: PyTree,
    end: PyTree,
    inputs: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    num_points: int,
) -> dict:
    """The loss on the line from ``start`` (the initialization) to ``end`` (the analyzed
    parameters), :func:`jaxcurv.linear_interpolation`, as a JSON-ready table."""
    s = jaxcurv.linear_interpolation(
        _ModelLoss(model), start, end, jnp.asarray(inputs), jnp.asarray(targets),
        num_points=num_points,
    )  # fmt: skip
    return {"t": _floats(s.t), "loss": _floats(s.along_1d), "from": "initialization"}


def _floats(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def _eigen_table(values, residuals, converged) -> list[dict]:
    return [
        {"eigenvalue": v, "residual": r, "converged": bool(c)}
        for v, r, c in zip(_floats(values), _floats(residuals), np.asarray(converged), strict=True)
    ]


def _slice_1d(s) -> dict:
    return {
        "t": _floats(s.t),
        "loss": _floats(s.along_1d),
        "quadratic_model": _floats(s.quadratic_1d),
        "value": float(s.value),
        "slope": float(s.slope),
        "curvature": float(s.curvature),
        "direction_norm": float(s.direction_norm),
    }


def landscape_report(result: jaxcurv.Landscape, *, slice_directions: str = "eigenvectors") -> dict:
    """A :class:`jaxcurv.Landscape` as JSON-ready tables (Python floats and lists, no arrays).

    Keys: ``num_parameters``, ``dtype``, ``loss``, ``gradient_norm``, ``top_eigenvalues`` (largest
    first), ``top_residuals``, ``top_converged``, ``bottom_eigenvalues`` (smallest first),
    ``bottom_residuals``, ``bottom_converged``, ``eigenpairs`` (``method``, ``tol``, the
    convergence test in words, ``num_matvecs``, ``all_converged``, and ``top`` / ``bottom``
    rows of ``eigenvalue``, ``residual``, ``converged``), ``critical_point`` (``kind``,
    ``reason``, ``method``, ``eigenvalues``), ``hutchinson_trace`` (``estimate``,
    ``stderr``, ``num_samples``), ``spectral_density`` (``grid``, ``density``, ``sigma``,
    ``num_samples``, ``num_steps``), ``slice_directions``, ``slice_1d`` (``t``, ``loss``,
    ``quadratic_model`` and its ``value``, ``slope``, ``curvature``, ``direction_norm``),
    ``slice_2d`` (``t``, ``loss``; ``None`` with one direction) and ``num_matvecs``.
    Non-finite numbers stay as they are; write the report with
    :func:`jaxcurv.app.run_folder.write_json`, which stores them as ``null``.
    """
    crit, trace, density, s = (
        result.critical_point,
        result.trace,
        result.density,
        result.slices,
    )
    top = _eigen_table(result.top_eigenvalues, result.top_residuals, result.top_converged)
    bottom = _eigen_table(
        result.bottom_eigenvalues, result.bottom_residuals, result.bottom_converged
    )
    test = (
        "exact (dense eigh of the formed Hessian)"
        if result.eigen_method == "dense"
        else f"residual ||H v - lambda v|| <= {result.eigen_tol:g} * max(|lambda|, "
        "eps^(2/3) max|lambda|); an eigenvalue is within its residual of a true one"
    )
    num_samples = int(np.shape(density.nodes)[0]) if np.ndim(density.nodes) == 2 else 1
    return {
        "num_parameters": int(result.num_parameters),
        "dtype": str(np.asarray(result.value).dtype),
        "loss": float(result.value),
        "gradient_norm": float(result.gradient_norm),
        "top_eigenvalues": [r["eigenvalue"] for r in top],
        "top_residuals": [r["residual"] for r in top],
        "top_converged": [r["converged"] for r in top],
        "bottom_eigenvalues": [r["eigenvalue"] for r in bottom],
        "bottom_residuals": [r["residual"] for r in bottom],
        "bottom_converged": [r["converged"] for r in bottom],
        "eigenpairs": {
            "method": result.eigen_method,
            "tol": result.eigen_tol,
            "convergence_test": test,
            "num_matvecs": int(result.critical_point.num_matvecs),
            "all_converged": all(r["converged"] for r in top + bottom),
            "top": top,
            "bottom": bottom,
        },
        "critical_point": {
            "kind": crit.kind,
            "reason": crit.reason,
            "method": crit.method,
            "eigenvalues": _floats(crit.eigenvalues),
        },
        "hutchinson_trace": {
            "estimate": float(trace.estimate),
            "stderr": float(trace.stderr),
            "num_samples": int(trace.num_matvecs),
        },
        "spectral_density": {
            "grid": _floats(density.grid),
            "density": _floats(density.density),
            "sigma": float(density.sigma),
            "num_samples": num_samples,
            "num_steps": int(np.shape(density.nodes)[-1]),
        },
        "slice_directions": slice_directions,
        "slice_1d": _slice_1d(s),
        "slice_2d": None
        if s.along_2d is None
        else {"t": _floats(s.t), "loss": _floats(s.along_2d)},
        "num_matvecs": int(result.num_matvecs),
    }


def save_landscape(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``report`` to ``out_dir/landscape.json``, its text to ``landscape.md``
    (:func:`jaxcurv.app.landscape_text.render_landscape`) and draw its plots there.

    Returns:
      The report with ``files`` (``{role: file name}`` of the plots and the text) added.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = plot_landscape(report, out_dir)
    report = {**report, "files": {**files, "report": "landscape.md"}}
    write_text(out_dir / "landscape.md", "\n".join(render_landscape(report, level=1)) + "\n")
    write_json(out_dir / "landscape.json", report)
    return report


def landscape(
    cfg: Config,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """The ``jaxcurv landscape`` run: analyze a checkpoint, or train per ``cfg`` first.

    With ``checkpoint`` (or ``cfg.landscape.checkpoint``) -- a ``.npz`` or a run folder --
    the model and data come from the config saved in the checkpoint, and ``cfg`` supplies
    only the ``[landscape]`` options. Otherwise ``cfg.run.steps`` steps of training run
    first (into ``out_dir/train``; zero steps analyzes the initialization). The loss is
    measured on the first ``landscape.num_examples`` training examples.

    Returns:
      The :func:`model_report` (the :func:`landscape_report` with ``layers``,
      ``interpolation`` and ``timing``) with ``model`` (its name), ``source`` (the
      checkpoint and its step, or the steps trained), ``num_examples`` and ``files`` (the
      plots and the text) added; also written to ``out_dir/landscape.json``, next to
      ``landscape.md`` (the report in words), ``config.toml`` and the PNG plots.

    Raises:
      RunExistsError: ``out_dir`` holds a run and ``overwrite`` is false.
      CheckpointError: a missing or unreadable checkpoint, or a run folder without one.
    """
    out_dir = prepare_run_dir(out_dir, overwrite=overwrite)
    checkpoint = checkpoint or cfg.landscape.checkpoint or None
    if checkpoint is not None:
        run_cfg, params, source = _from_checkpoint(cfg, pathlib.Path(checkpoint))
        model = build_model(run_cfg)
    elif cfg.run.steps > 0:
        run_cfg = cfg
        res = train(cfg, out_dir / "train", progress=progress)
        params, model = res.params, res.model
        source = {"trained_steps": cfg.run.steps}
    else:
        run_cfg = cfg
        model = build_model(cfg)
        params = model.init(jax.random.key(cfg.run.seed))
        source = {"trained_steps": 0}
    train_set, _ = build_data(run_cfg)
    num = min(cfg.landscape.num_examples, len(train_set))
    write_text(out_dir / "config.toml", config_to_toml(run_cfg))
    report = {"model": model.name, "source": source, "num_examples": num}
    report.update(model_report(model, params, train_set, num, run_cfg))
    return save_landscape(report, out_dir)


def model_report(model, params, train_set, num: int, cfg: Config) -> dict:
    """:func:`landscape_report` of the model at ``params`` on the first ``num`` training
    examples, with the per-layer table (``layers``, unless
    ``landscape.layer_trace_num_samples`` is 0), the interpolation from the run's
    initialization when configured, and ``timing``: each part's wall time with its
    compiling and running apart (:class:`jaxcurv.app.timing.CompileClock`)."""
    inputs, targets = jnp.asarray(train_set.inputs[:num]), jnp.asarray(train_set.targets[:num])
    options = cfg.landscape
    timing = {}
    with CompileClock() as clock:
        result = analyze_model(model, params, inputs, targets, options)
        report = landscape_report(result, slice_directions=options.slice_directions)
    timing["analysis"] = clock.as_dict()
    if options.layer_trace_num_samples:
        with CompileClock() as clock:
            report["layers"] = layer_curvature(
                _ModelLoss(model), params, inputs, targets, options=options
            )
        timing["per-layer"] = clock.as_dict()
    if options.interpolation_points:
        # The initialization is a pure function of the config's seed: the same for a run
        # trained here and for one loaded from a checkpoint.
        init = model.init(jax.random.key(cfg.run.seed))
        with CompileClock() as clock:
            report["interpolation"] = interpolation_report(
                model, init, params, inputs, targets, options.interpolation_points
            )
        timing["interpolation"] = clock.as_dict()
    report["timing"] = timing
    return report


def _from_checkpoint(cfg: Config, path: pathlib.Path) -> tuple[Config, PyTree, dict]:
    """The config a checkpoint was written with (``[landscape]`` from ``cfg``), its
    parameters, and where they came from."""
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(
                f"{path} has no checkpoints/step_*.npz. Pass a run folder written by "
                f"`jaxcurv train` or a checkpoint file."
            )
        path = found
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    meta = checkpoint_metadata(path)
    saved = dict(meta.get("config") or {})
    saved["landscape"] = config_to_dict(cfg)["landscape"]
    try:
        run_cfg = config_from_dict(saved, f"the config saved in {path}")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(run_cfg)
    opt = build_optimizer(run_cfg)
    like = model.init(jax.random.key(run_cfg.run.seed))
    ckpt = load_checkpoint(
        path,
        like,
        jax.eval_shape(opt.init, like),
        model_name=model.name,
        optimizer_name=run_cfg.optimizer.name,
    )
    return run_cfg, ckpt.params, {"checkpoint": str(path), "step": ckpt.step}
