"""The ``jaxcurv landscape`` command: a trained model's curvature, as JSON and plots.

:func:`landscape` trains a model per a config, or loads a checkpoint, and runs the
library's :func:`jaxcurv.analyze_landscape` on its training loss
(:func:`analyze_model`); :func:`landscape_report` turns the resulting
:class:`jaxcurv.Landscape` into JSON-ready tables, :func:`plot_landscape` draws them
(matplotlib, imported only when used), and :func:`save_landscape` writes
``landscape.json`` and the PNG plots.
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
from jaxcurv.app.loop import train
from jaxcurv.app.plots import pyplot
from jaxcurv.app.run_folder import prepare_run_dir, save_figure, write_json, write_text
from jaxcurv.app.training_step import build_data, build_model, build_optimizer

PyTree = Any

__all__ = [
    "analyze_model",
    "landscape",
    "landscape_report",
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
    return jaxcurv.analyze_landscape(
        _ModelLoss(model),
        params,
        jnp.asarray(inputs),
        jnp.asarray(targets),
        key=jax.random.key(options.seed),
        top_k=options.top_k,
        bottom_k=options.bottom_k,
        num_lanczos=options.num_lanczos,
        trace_samples=options.trace_samples,
        density_probes=options.density_probes,
        slice_points=options.slice_points,
        slice_radius=options.slice_radius,
        dense_threshold=options.dense_threshold,
    )


def _floats(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def landscape_report(result: jaxcurv.Landscape) -> dict:
    """A :class:`jaxcurv.Landscape` as JSON-ready tables (Python floats and lists, no arrays).

    Keys: ``num_parameters``, ``loss``, ``gradient_norm``, ``top_eigenvalues`` (largest
    first), ``top_residuals``, ``bottom_eigenvalues`` (smallest first), ``critical_point``
    (``kind``, ``reason``, ``method``, ``eigenvalues``), ``hutchinson_trace``
    (``estimate``, ``stderr``, ``num_samples``), ``spectral_density`` (``grid``,
    ``density``, ``sigma``), ``slice_1d`` and ``slice_2d`` (``t``, ``loss``; ``slice_2d``
    is ``None`` with a single top eigenvector). Non-finite numbers stay as they are; write
    the report with :func:`jaxcurv.app.run_folder.write_json`, which stores them as
    ``null``.
    """
    crit, trace, density, s = (
        result.critical_point,
        result.trace,
        result.density,
        result.slices,
    )
    t = _floats(s.t)
    return {
        "num_parameters": int(result.num_parameters),
        "loss": float(result.value),
        "gradient_norm": float(result.gradient_norm),
        "top_eigenvalues": _floats(result.top_eigenvalues),
        "top_residuals": _floats(result.top_residuals),
        "bottom_eigenvalues": _floats(result.bottom_eigenvalues),
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
        },
        "slice_1d": {"t": t, "loss": _floats(s.along_1d)},
        "slice_2d": None if s.along_2d is None else {"t": t, "loss": _floats(s.along_2d)},
    }


def plot_landscape(report: dict, out_dir: str | os.PathLike, *, prefix: str = "") -> dict:
    """Draw a :func:`landscape_report`: ``spectral_density.png``, ``slice_1d.png`` and
    (with two top eigenvectors) ``slice_2d.png`` in ``out_dir``.

    Returns:
      ``{role: file name}`` of the files written.
    """
    plt = pyplot()
    out_dir = pathlib.Path(out_dir)
    files = {}

    def save(fig, role, name):
        fig.tight_layout()
        save_figure(fig, out_dir / f"{prefix}{name}", dpi=100)
        plt.close(fig)
        files[role] = f"{prefix}{name}"

    d = report["spectral_density"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(d["grid"], np.maximum(np.asarray(d["density"], dtype=float), 1e-12))
    for lam in report["top_eigenvalues"]:
        ax.axvline(lam, color="C3", lw=0.6, alpha=0.6)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density (SLQ)")
    ax.set_title(
        f"spectral density; red: top eigenvalues; N = {report['num_parameters']}", fontsize=9
    )
    save(fig, "density_plot", "spectral_density.png")

    s = report["slice_1d"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(s["t"], s["loss"])
    ax.set_xlabel("step along top eigenvector v1")
    ax.set_ylabel("loss")
    ax.set_title(f"1-D slice; lambda_max = {report['top_eigenvalues'][0]:.4g}", fontsize=9)
    save(fig, "slice_1d_plot", "slice_1d.png")

    if report["slice_2d"] is not None:
        s2 = report["slice_2d"]
        t = np.asarray(s2["t"])
        fig, ax = plt.subplots(figsize=(5, 4.2))
        cs = ax.contourf(t, t, np.asarray(s2["loss"], dtype=float).T, levels=30)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.plot([0], [0], "r+")
        ax.set_xlabel("v1 (top eigenvector)")
        ax.set_ylabel("v2 (second eigenvector)")
        ax.set_title("2-D loss slice", fontsize=9)
        save(fig, "slice_2d_plot", "slice_2d.png")
    return files


def save_landscape(report: dict, out_dir: str | os.PathLike) -> dict:
    """Write ``report`` to ``out_dir/landscape.json`` and draw its plots there.

    Returns:
      The report with ``files`` (``{role: file name}`` of the plots) added.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**report, "files": plot_landscape(report, out_dir)}
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
      The :func:`landscape_report` with ``model`` (its name), ``source`` (the checkpoint
      and its step, or the steps trained), ``num_examples`` and ``files`` (the plots)
      added; also written to ``out_dir/landscape.json``, next to ``config.toml`` and the
      PNG plots.

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
    result = analyze_model(
        model, params, train_set.inputs[:num], train_set.targets[:num], run_cfg.landscape
    )
    report = {"model": model.name, "source": source, "num_examples": num}
    return save_landscape({**report, **landscape_report(result)}, out_dir)


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
