"""Per-layer curvature for ``jaxcurv landscape``: a table and a plot of every layer's block.

:func:`layer_curvature` runs :func:`jaxcurv.block_curvature` on the Hessian of a model's
training loss, one block per layer (each top-level entry of the parameter tree: the app's
models keep one ``{"w", "b"}`` dict per layer), and turns the result into JSON-ready rows:
the trace of the layer's diagonal block :math:`H_{ll}` with its standard error (Hutchinson
probes shared by all layers, so it costs one product per probe whatever the depth) and the
block's largest eigenvalues, each with its residual and converged flag.
:func:`layers_figure` draws them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import jaxcurv
from jaxcurv.blocks import default_blocks
from jaxcurv.extreme_eigenpairs import default_tol, pair_flags

PyTree = Any

__all__ = ["layer_curvature", "layers_figure"]


def _leaf_label(path: tuple, leaf: Any, depth: int) -> str:
    """``w 256x64``: the leaf's own key (none when the block is the leaf) and its shape."""
    shape = "x".join(str(n) for n in np.shape(leaf)) or "scalar"
    if len(path) <= depth:
        return shape
    key = path[-1]
    name = next((getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)), key)
    return f"{name} {shape}"


def _layer_names(params: PyTree) -> dict[str, tuple[str, Callable]]:
    """``{block name: (label, wrt)}``: ``"layer 1"`` and its shapes, e.g. ``w 256x64, b 64``."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    depth = 2 if isinstance(params, dict) and list(params) == ["params"] else 1  # Flax
    out = {}
    for i, (name, wrt) in enumerate(default_blocks(params).items()):
        mine = sorted((leaf for leaf in leaves if wrt(*leaf)), key=lambda pl: -np.ndim(pl[1]))
        shapes = [_leaf_label(path, leaf, depth) for path, leaf in mine]  # weights first
        label = f"layer {i + 1}" if name.isdigit() else name
        out[name] = (f"{label} ({', '.join(shapes)})", wrt)
    return out


def _pair_flags(eig, tol: float, dense: bool, size: int, dtype) -> np.ndarray:
    """Per-pair converged flags: :func:`jaxcurv.extreme_eigenpairs`' rule on these pairs,
    with its allowance for the products' rounding in ``dtype`` (a float32 pair near 0
    meets no relative test, but is as converged as its products allow)."""
    if dense:  # eigh is backward stable: exact up to rounding unless the matrix is not finite
        return np.broadcast_to(bool(eig.converged), np.shape(eig.eigenvalues))
    return np.asarray(pair_flags(eig, tol, size, dtype))


def _eigen_rows(eig, tol: float, dense: bool, size: int, dtype) -> list[dict]:
    flags = _pair_flags(eig, tol, dense, size, dtype)
    lam, res = np.asarray(eig.eigenvalues, float), np.asarray(eig.residual_norms, float)
    order = np.argsort(-lam)  # largest first, as the landscape's top table
    return [
        {"eigenvalue": float(lam[i]), "residual": float(res[i]), "converged": bool(flags[i])}
        for i in order
    ]


def layer_curvature(fun: Callable, params: PyTree, *args: Any, options) -> dict:
    """Trace and top eigenvalues of every layer's diagonal Hessian block, as JSON tables.

    Args:
      fun: the loss ``fun(params, *args)`` (hashable, so compiled code is reused).
      params: the point; its top-level entries are the layers.
      *args: the data, held fixed.
      options: the ``[landscape]`` settings: ``layer_trace_num_samples`` (shared probes),
        ``layer_top_k`` (eigenvalues per layer), ``tol``, ``maxiter``, ``dense_threshold``
        and ``seed``.

    Returns:
      ``{"curvature": "hessian", "trace_method", "num_samples", "trace_num_matvecs",
      "eigen_tol", "layers": [...]}``; each layer row has ``name``, ``label`` (its
      shapes), ``size``, ``trace`` (``estimate``, ``stderr``) and ``eigenpairs`` (``None``
      with ``layer_top_k = 0``; else ``method``, ``num_matvecs``, ``num_restarts``,
      ``all_converged`` and ``top`` rows of ``eigenvalue``, ``residual``, ``converged``,
      largest first).

    Example (two layers of a separable quadratic: traces 3 and 30 exactly, as a diagonal
    matrix's Hutchinson samples do not vary):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.app.config import LandscapeConfig
      >>> f = lambda p: jnp.sum(jnp.array([1.0, 2.0]) * p[0] ** 2) / 2 + 5 * jnp.sum(p[1] ** 2)
      >>> opts = LandscapeConfig(layer_trace_num_samples=4, layer_top_k=0)
      >>> rows = layer_curvature(f, [jnp.ones(2), jnp.ones(3)], options=opts)["layers"]
      >>> [(r["label"], r["trace"]["estimate"], r["trace"]["stderr"]) for r in rows]
      [('layer 1 (2)', 3.0, 0.0), ('layer 2 (3)', 30.0, 0.0)]
    """
    names = _layer_names(params)
    dtype = jax.tree.leaves(params)[0].dtype
    tol = options.tol or default_tol(dtype)
    k = options.layer_top_k
    res = jaxcurv.block_curvature(
        lambda wrt: jaxcurv.hessian_operator(fun, params, *args, wrt=wrt),
        params,
        {name: wrt for name, (_, wrt) in names.items()},
        key=jax.random.fold_in(jax.random.key(options.seed), 2),
        k=k,
        num_samples=options.layer_trace_num_samples,
        eigenvalues_options={
            "tol": tol,
            "maxiter": options.maxiter,
            "dense_threshold": options.dense_threshold,
        },
    )
    layers = []
    for name, block in res.items():
        eig, dense = block.eigenvalues, block.size <= options.dense_threshold
        layers.append(
            {
                "name": name,
                "label": names[name][0],
                "size": int(block.size),
                "trace": {
                    "estimate": float(block.trace.estimate),
                    "stderr": float(block.trace.stderr),
                },
                "eigenpairs": None
                if eig is None
                else {
                    "method": "dense" if dense else "thick-restart",
                    "num_matvecs": int(eig.num_matvecs),
                    "num_restarts": int(eig.num_restarts),
                    "all_converged": bool(eig.converged),
                    "top": _eigen_rows(eig, tol, dense, int(block.size), dtype),
                },
            }
        )
    return {
        "curvature": "hessian",
        "trace_method": "Hutchinson, Rademacher probes shared by all layers",
        "num_samples": int(options.layer_trace_num_samples),
        "trace_num_matvecs": int(options.layer_trace_num_samples),
        "eigen_tol": float(tol),
        "layers": layers,
    }


def _axis_scale(ax, values: np.ndarray) -> str:
    """Log when every value is positive and they span more than two decades; symlog when
    signs are mixed over such a span; else linear. Returns the scale's name."""
    v = np.abs(values[np.isfinite(values) & (values != 0)])
    if v.size == 0 or v.max() / v.min() <= 100:
        return "linear"
    if np.all(values[np.isfinite(values)] > 0):
        ax.set_yscale("log")
        return "log"
    ax.set_yscale("symlog", linthresh=float(np.percentile(v, 10)))
    return "symlog"


def layers_figure(plt, report: dict):
    """Per-layer trace (with one standard error) and top eigenvalues, one column a layer."""
    lay = report["layers"]
    rows = lay["layers"]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    est = np.asarray([r["trace"]["estimate"] for r in rows], float)
    err = np.asarray([r["trace"]["stderr"] for r in rows], float)
    axes[0].errorbar(x, est, yerr=np.where(np.isfinite(err), err, 0), fmt="o", capsize=3)
    scale = _axis_scale(axes[0], est)
    axes[0].set_ylabel(f"trace of the layer's Hessian block ({scale})")
    axes[0].set_title(
        f"trace, Hutchinson: {lay['num_samples']} shared probes, bars = 1 s.e.", fontsize=9
    )
    have = [r for r in rows if r["eigenpairs"]]
    if have:
        k = max(len(r["eigenpairs"]["top"]) for r in have)
        named = set()  # one legend entry per rank, from the first layer that has it
        for i, r in enumerate(rows):
            for j, p in enumerate((r["eigenpairs"] or {"top": []})["top"]):
                axes[1].plot(
                    i, p["eigenvalue"], "o" if p["converged"] else "x", color=f"C{j}",
                    label=None if j in named else f"eigenvalue {j + 1}",
                )  # fmt: skip
                named.add(j)
        bad = sum(not p["converged"] for r in have for p in r["eigenpairs"]["top"])
        axes[1].plot([], [], "ko", label="o: converged")
        if bad:
            axes[1].plot([], [], "kx", label=f"x: {bad} NOT converged")
        lam = np.asarray([p["eigenvalue"] for r in have for p in r["eigenpairs"]["top"]])
        scale = _axis_scale(axes[1], lam)
        worst = max(p["residual"] for r in have for p in r["eigenpairs"]["top"])
        axes[1].set_ylabel(f"eigenvalue ({scale})")
        axes[1].set_title(
            f"top {k} eigenvalues per block (largest residual {worst:.2g})", fontsize=9
        )
        axes[1].legend(fontsize=7)
    else:
        axes[1].set_axis_off()
    for ax in axes[: 2 if have else 1]:
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_xticks(x, [r["label"] for r in rows], rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"per-layer curvature: diagonal blocks of the Hessian, N = {report['num_parameters']} "
        f"on {report.get('num_examples', '?')} examples",
        fontsize=10,
    )
    return fig
