"""Loss-landscape analysis: the curvature of a loss at a point, from Hessian-vector products.

:func:`analyze_landscape` measures, at parameters ``x`` of a scalar loss ``f(x, *args)``:
the loss and its gradient norm, the ``top_k`` largest and ``bottom_k`` smallest Hessian
eigenvalues (Lanczos, or dense below a size threshold), the critical-point kind the seed's
eigenvalue rule gives, a Hutchinson estimate of the trace, the spectral density by
stochastic Lanczos quadrature, and 1-D / 2-D slices of the loss along the top two
eigenvectors (:func:`loss_slices`). It is numerics only: everything comes back as arrays in
:class:`Landscape` (a ``NamedTuple``), and all of it is computed by the public API --
:func:`jaxcurv.hessian_operator`, :func:`jaxcurv.eigenvalues`,
:func:`jaxcurv.classify_critical_point`, :func:`jaxcurv.hutchinson_trace` and
:func:`jaxcurv.spectral_density` -- on one linearized Hessian operator.

The second half of the module is the ``jaxcurv landscape`` command behind the CLI:
:func:`landscape_report` turns a :class:`Landscape` into JSON-ready tables,
:func:`plot_landscape` draws them (matplotlib, imported only when used), and
:func:`landscape` trains or loads a model per a config and writes ``landscape.json`` and
the PNG plots.

References:
  Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via Hessian
  eigenvalue density", ICML 2019 (spectra of network Hessians by SLQ).
  Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural nets",
  NeurIPS 2018 (loss surfaces along chosen directions).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxcurv
from jaxcurv import models as models_lib
from jaxcurv._compile import compiled_call
from jaxcurv.config import (
    Config,
    ConfigError,
    LandscapeConfig,
    config_from_dict,
    config_to_dict,
    config_to_toml,
)

PyTree = Any

__all__ = [
    "Landscape",
    "LossSlices",
    "analyze_landscape",
    "analyze_model",
    "landscape",
    "landscape_report",
    "loss_slices",
    "plot_landscape",
    "save_landscape",
]


# ----------------------------------------------------------------------------- numerics


class LossSlices(NamedTuple):
    """The loss along one or two directions through a point ``x``.

    Attributes:
      t: ``(p,)`` offsets, from ``-radius`` to ``radius``.
      along_1d: ``(p,)``, ``f(x + t_i v1)``.
      along_2d: ``(p, p)``, ``f(x + t_i v1 + t_j v2)``; ``None`` without a ``v2``.
    """

    t: jax.Array
    along_1d: jax.Array
    along_2d: jax.Array | None


class Landscape(NamedTuple):
    """What :func:`analyze_landscape` measures at a point.

    Attributes:
      value: scalar, the loss ``f(x)``.
      gradient_norm: scalar, ``||grad f(x)||``.
      top_eigenvalues: ``(top_k,)`` largest Hessian eigenvalues, descending.
      top_residuals: ``(top_k,)`` ``||H v - lambda v||`` of each top pair (convergence).
      top_eigenvectors: the matching unit eigenvectors: a pytree like ``x`` whose leaves
        carry a leading ``top_k`` axis, in the order of ``top_eigenvalues``.
      bottom_eigenvalues: ``(bottom_k,)`` smallest Hessian eigenvalues, ascending.
      critical_point: the :class:`jaxcurv.CriticalPoint` of the seed's eigenvalue rule.
      trace: a :class:`jaxcurv.TraceEstimate` (Hutchinson) of ``tr(H)``.
      density: a :class:`jaxcurv.SpectralDensity` (stochastic Lanczos quadrature).
      slices: :class:`LossSlices` along the top eigenvector (and the second one).
      num_parameters: ``N``, the number of scalars in ``x``.
    """

    value: jax.Array
    gradient_norm: jax.Array
    top_eigenvalues: jax.Array
    top_residuals: jax.Array
    top_eigenvectors: PyTree
    bottom_eigenvalues: jax.Array
    critical_point: jaxcurv.CriticalPoint
    trace: jaxcurv.TraceEstimate
    density: jaxcurv.SpectralDensity
    slices: LossSlices
    num_parameters: int


def _slices_impl(fun, x, v1, v2, t, args):
    def shift(tree, c, u):
        return jax.tree.map(lambda p, d: p + c.astype(p.dtype) * d.astype(p.dtype), tree, u)

    def loss_at(a, b):
        q = shift(x, a, v1)
        return fun(q if v2 is None else shift(q, b, v2), *args)

    along_1d = jax.vmap(lambda a: loss_at(a, jnp.zeros_like(a)))(t)
    if v2 is None:
        return LossSlices(t, along_1d, None)
    grid_a, grid_b = jnp.meshgrid(t, t, indexing="ij")
    return LossSlices(t, along_1d, jax.vmap(jax.vmap(loss_at))(grid_a, grid_b))


def _check_int(name: str, value: Any, low: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}: {value!r}.")
    if value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value}. {fix}")
    return int(value)


def loss_slices(
    fun: Callable,
    x: PyTree,
    v1: PyTree,
    v2: PyTree | None = None,
    *args: Any,
    radius: float = 1.0,
    num_points: int = 21,
) -> LossSlices:
    r"""The loss along ``v1`` (and over the plane of ``v1``, ``v2``) through ``x``.

    .. math:: s_1(a) = f(x + a v_1), \qquad s_2(a, b) = f(x + a v_1 + b v_2),

    for ``a, b`` on ``num_points`` evenly spaced offsets in ``[-radius, radius]``; all
    ``num_points (1 + num_points)`` evaluations run in one vectorized, jitted call.

    Args:
      fun: scalar loss ``f(x, *args)``.
      x: the point, a pytree of float arrays.
      v1, v2: directions, pytrees like ``x`` (``v2`` may be ``None``: no 2-D slice).
      *args: further arguments of ``fun`` (data), held fixed.
      radius: half-width of the offsets, in units of the directions' lengths.
      num_points: offsets per axis (odd counts include ``x`` itself, at the centre).

    Returns:
      :class:`LossSlices` ``(t, along_1d, along_2d)``.

    Raises:
      ValueError: ``num_points < 2`` or ``radius <= 0``.

    Example (:math:`f = x^2 + 3xy + y^2` along the axes: :math:`a^2` and :math:`a^2 + 3ab + b^2`):
      >>> import jax.numpy as jnp
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> s = loss_slices(f, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]),
      ...                 num_points=3)
      >>> s.along_1d.tolist(), s.along_2d.tolist()
      ([1.0, 0.0, 1.0], [[5.0, 1.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 1.0, 5.0]])

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural
      nets", NeurIPS 2018.
    """
    num_points = _check_int(
        "loss_slices(num_points=...)", num_points, 2, "A slice needs both of its ends."
    )
    if not radius > 0:
        raise ValueError(
            f"`loss_slices(radius=...)` must be positive, got {radius!r}: it is the "
            f"half-width of the offsets, in units of the directions' lengths."
        )
    dtype = jnp.result_type(*jax.tree.leaves(x))
    t = jnp.linspace(-radius, radius, num_points, dtype=dtype)
    # One compile per computation and shapes (`jaxcurv._compile`): a second point, batch or
    # closure of the same model compiles nothing.
    return compiled_call(lambda *a: _slices_impl(fun, *a), x, v1, v2, t, args)


def analyze_landscape(
    fun: Callable,
    x: PyTree,
    *args: Any,
    key: jax.Array,
    top_k: int = 5,
    bottom_k: int = 5,
    num_lanczos: int = 40,
    trace_samples: int = 30,
    density_probes: int = 4,
    slice_points: int = 21,
    slice_radius: float = 1.0,
    dense_threshold: int = 1024,
) -> Landscape:
    r"""The curvature of the loss ``f(x, *args)`` at ``x``: spectrum, kind, trace, slices.

    The Hessian :math:`H` of ``f`` at ``x`` is linearized once
    (:func:`jaxcurv.hessian_operator`) and every estimate runs on its products:

    - the extreme eigenpairs, ``k = max(top_k, bottom_k)`` from each end
      (:func:`jaxcurv.eigenvalues`, ``which="both"``): Lanczos with ``num_lanczos`` steps,
      or a dense ``eigh`` when ``N <= dense_threshold``;
    - the critical-point kind (:func:`jaxcurv.classify_critical_point`, same ``k``,
      Lanczos steps, key and threshold): minimum, maximum, saddle, degenerate or not
      critical;
    - :math:`\mathrm{tr}(H)` from ``trace_samples`` Rademacher probes
      (:func:`jaxcurv.hutchinson_trace`);
    - the eigenvalue density from ``density_probes`` Lanczos runs
      (:func:`jaxcurv.spectral_density`);
    - the loss along the top eigenvector and over the plane of the top two
      (:func:`loss_slices`).

    Args:
      fun: scalar loss ``f(x, *args)``. A hashable ``fun`` (a module-level function, a
        frozen dataclass) lets every step reuse its compiled code at the next point.
      x: the point, a pytree of real float arrays.
      *args: further arguments of ``fun`` (data), held fixed.
      key: PRNG key of the random starts and probes.
      top_k, bottom_k: how many of the largest / smallest eigenvalues to report (capped at
        what ``N`` allows).
      num_lanczos: Lanczos steps for the eigenvalues (raised to ``2 k + 2`` if lower) and
        per density probe; capped at ``N``.
      trace_samples: Hutchinson probes.
      density_probes: stochastic Lanczos quadrature probes.
      slice_points: offsets per slice axis.
      slice_radius: half-width of the slices along the unit eigenvectors.
      dense_threshold: form :math:`H` and diagonalize it exactly when ``N`` is at most
        this; ``0`` always uses Lanczos.

    Returns:
      A :class:`Landscape`.

    Raises:
      ValueError: a count below 1 (``trace_samples`` below 2, ``slice_points`` below 2),
        a non-positive ``slice_radius``, a negative ``dense_threshold``, or a non-scalar
        ``fun``. TypeError: a non-integer count, a bad ``key``, an integer ``x``.

    Example (the seed's :math:`x^2 + 3xy + y^2`: a saddle at the origin, Hessian
    eigenvalues 5 and -1, so the loss along the top eigenvector is :math:`5 t^2 / 2`):
      >>> import jax, jax.numpy as jnp
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> res = analyze_landscape(f, jnp.zeros(2), key=jax.random.key(0), top_k=1,
      ...                         bottom_k=1, slice_points=3)
      >>> res.top_eigenvalues.round(4).tolist(), res.bottom_eigenvalues.round(4).tolist()
      ([5.0], [-1.0])
      >>> res.critical_point.kind, res.slices.along_1d.round(4).tolist()
      ('saddle', [2.5, 0.0, 2.5])

    References:
      Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
      Hutchinson, Commun. Stat. Simul. Comput. 1989 (trace).
      Ubaru, Chen and Saad, SIAM J. Matrix Anal. Appl. 2017 (stochastic Lanczos
      quadrature).
      Ghorbani, Krishnan and Xiao, ICML 2019.
    """
    name = "analyze_landscape({}=...)".format
    count = "Ask for at least one."
    top_k = _check_int(name("top_k"), top_k, 1, count)
    bottom_k = _check_int(name("bottom_k"), bottom_k, 1, count)
    num_lanczos = _check_int(name("num_lanczos"), num_lanczos, 1, "Pass a positive step count.")
    trace_samples = _check_int(
        name("trace_samples"), trace_samples, 2, "A standard error needs two probes or more."
    )
    density_probes = _check_int(name("density_probes"), density_probes, 1, count)
    slice_points = _check_int(
        name("slice_points"), slice_points, 2, "A slice needs both of its ends."
    )
    dense_threshold = _check_int(
        name("dense_threshold"), dense_threshold, 0, "Use 0 to always run Lanczos."
    )
    if not slice_radius > 0:
        raise ValueError(
            f"`analyze_landscape(slice_radius=...)` must be positive, got {slice_radius!r}: "
            f"it is the half-width of the slices along the unit eigenvectors."
        )
    k_eig, k_trace, k_density = jax.random.split(key, 3)

    op = jaxcurv.hessian_operator(fun, x, *args)
    n = op.size
    # `which="both"` takes k from each end, so at most N // 2; a smaller problem reports
    # its whole spectrum instead.
    k = max(top_k, bottom_k)
    both = 2 * k <= n
    top_k, bottom_k = min(top_k, n), min(bottom_k, n)
    wanted = 2 * k if both else n
    m = min(n, max(num_lanczos, wanted + 2))
    eig = jaxcurv.eigenvalues(
        op,
        k if both else n,
        which="both" if both else "largest",
        key=k_eig,
        num_iters=m,
        return_eigenvectors=True,
        dense_threshold=dense_threshold,
    )
    # Same k, Lanczos steps, key and threshold: the classification sees the same spectrum.
    crit = jaxcurv.classify_critical_point(
        fun,
        x,
        *args,
        k=k if both else max(1, n // 2),
        key=k_eig,
        num_iters=m,
        dense_threshold=dense_threshold,
    )
    trace = jaxcurv.hutchinson_trace(op, k_trace, trace_samples)
    density = jaxcurv.spectral_density(
        op, k_density, num_probes=density_probes, num_lanczos=min(n, num_lanczos)
    )

    # Ascending from eigenvalues(); the top ones are its tail, largest first.
    top = slice(-1, -top_k - 1, -1)
    top_vecs = jax.tree.map(lambda a: a[top], eig.eigenvectors)
    v1 = jax.tree.map(lambda a: a[0], top_vecs)
    v2 = jax.tree.map(lambda a: a[1], top_vecs) if top_k >= 2 else None
    slices = loss_slices(fun, x, v1, v2, *args, radius=slice_radius, num_points=slice_points)
    return Landscape(
        value=op.value,
        gradient_norm=crit.gradient_norm,
        top_eigenvalues=eig.eigenvalues[top],
        top_residuals=eig.residual_norms[top],
        top_eigenvectors=top_vecs,
        bottom_eigenvalues=eig.eigenvalues[:bottom_k],
        critical_point=crit,
        trace=trace,
        density=density,
        slices=slices,
        num_parameters=n,
    )


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
) -> Landscape:
    """:func:`analyze_landscape` of ``model.loss(model.apply(params, inputs), targets)``
    with the settings of a config's ``[landscape]`` table."""
    return analyze_landscape(
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


# ---------------------------------------------------------------- reports and plots


def _floats(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def landscape_report(result: Landscape) -> dict:
    """A :class:`Landscape` as JSON-ready tables (Python floats and lists, no arrays).

    Keys: ``num_parameters``, ``loss``, ``gradient_norm``, ``top_eigenvalues`` (largest
    first), ``top_residuals``, ``bottom_eigenvalues`` (smallest first), ``critical_point``
    (``kind``, ``reason``, ``method``, ``eigenvalues``), ``hutchinson_trace``
    (``estimate``, ``stderr``, ``num_samples``), ``spectral_density`` (``grid``,
    ``density``, ``sigma``), ``slice_1d`` and ``slice_2d`` (``t``, ``loss``; ``slice_2d``
    is ``None`` with a single top eigenvector). Non-finite numbers stay as they are; write
    the report with :func:`jaxcurv.train.write_json`, which stores them as ``null``.
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
    from jaxcurv.train import _pyplot, save_figure

    plt = _pyplot()
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
    from jaxcurv.train import write_json

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {**report, "files": plot_landscape(report, out_dir)}
    write_json(out_dir / "landscape.json", report)
    return report


# ------------------------------------------------------------------------ the command


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
    from jaxcurv import train as train_lib

    out_dir = train_lib.prepare_run_dir(out_dir, overwrite=overwrite)
    checkpoint = checkpoint or cfg.landscape.checkpoint or None
    if checkpoint is not None:
        run_cfg, params, source = _from_checkpoint(cfg, pathlib.Path(checkpoint))
        model = train_lib.build_model(run_cfg)
    elif cfg.run.steps > 0:
        run_cfg = cfg
        res = train_lib.train(cfg, out_dir / "train", progress=progress)
        params, model = res.params, res.model
        source = {"trained_steps": cfg.run.steps}
    else:
        run_cfg = cfg
        model = train_lib.build_model(cfg)
        params = model.init(jax.random.key(cfg.run.seed))
        source = {"trained_steps": 0}
    train_set, _ = train_lib.build_data(run_cfg)
    num = min(cfg.landscape.num_examples, len(train_set))
    train_lib.write_text(out_dir / "config.toml", config_to_toml(run_cfg))
    result = analyze_model(
        model, params, train_set.inputs[:num], train_set.targets[:num], run_cfg.landscape
    )
    report = {"model": model.name, "source": source, "num_examples": num}
    return save_landscape({**report, **landscape_report(result)}, out_dir)


def _from_checkpoint(cfg: Config, path: pathlib.Path) -> tuple[Config, PyTree, dict]:
    """The config a checkpoint was written with (``[landscape]`` from ``cfg``), its
    parameters, and where they came from."""
    from jaxcurv import train as train_lib

    if path.is_dir():
        found = train_lib.latest_checkpoint(path)
        if found is None:
            raise train_lib.CheckpointError(
                f"{path} has no checkpoints/step_*.npz. Pass a run folder written by "
                f"`jaxcurv train` or a checkpoint file."
            )
        path = found
    if not path.exists():
        raise train_lib.CheckpointError(f"Checkpoint {path} does not exist.")
    meta = train_lib.checkpoint_metadata(path)
    saved = dict(meta.get("config") or {})
    saved["landscape"] = config_to_dict(cfg)["landscape"]
    try:
        run_cfg = config_from_dict(saved, f"the config saved in {path}")
    except ConfigError as e:
        raise train_lib.CheckpointError(str(e)) from None
    model = train_lib.build_model(run_cfg)
    opt = train_lib.build_optimizer(run_cfg)
    like = model.init(jax.random.key(run_cfg.run.seed))
    ckpt = train_lib.load_checkpoint(
        path,
        like,
        jax.eval_shape(opt.init, like),
        model_name=model.name,
        optimizer_name=run_cfg.optimizer.name,
    )
    return run_cfg, ckpt.params, {"checkpoint": str(path), "step": ckpt.step}
