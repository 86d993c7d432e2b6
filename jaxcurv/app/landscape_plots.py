"""The plots of ``jaxcurv landscape``: density, slices, interpolation and per-layer curvature.

:func:`plot_landscape` draws a :func:`jaxcurv.app.landscape_report.landscape_report` into
PNG files (matplotlib, imported only when used). Each plot says in its title or legend how
its numbers were obtained: the density its probes, Lanczos steps and smoothing width, the
eigenvalue marks which pairs converged, the 1-D slice its quadratic model.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from jaxcurv.app.layer_report import layers_figure
from jaxcurv.app.plots import pyplot
from jaxcurv.app.run_folder import save_figure

__all__ = ["plot_landscape"]

_DIRECTION_WORDS = {
    "eigenvectors": ("top eigenvector v1", "second eigenvector v2"),
    "random": ("random filter-normalized direction d1", "random filter-normalized d2"),
}


def _mark_eigenvalues(ax, rows: list[dict], color: str, label: str) -> None:
    """Vertical lines at the eigenvalues: solid if converged, dashed (and said) if not."""
    for i, r in enumerate(rows):
        ok = r["converged"]
        ax.axvline(
            r["eigenvalue"], color=color, lw=0.8, alpha=0.8, ls="-" if ok else "--",
            label=None if i else label,
        )  # fmt: skip
    bad = [r for r in rows if not r["converged"]]
    if bad:
        ax.plot([], [], color=color, ls="--", lw=0.8, label=f"{len(bad)} unconverged (dashed)")


def _density_figure(plt, report: dict):
    d, pairs = report["spectral_density"], report["eigenpairs"]
    grid, dens = np.asarray(d["grid"], dtype=float), np.asarray(d["density"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    peak = float(np.nanmax(dens)) if dens.size else 1.0
    # The SLQ density is a sum of Gaussians: between clusters it underflows to exact zeros
    # that a log axis cannot show. Those points are left out (gaps), and the axis spans
    # ten decades below the peak, rather than a floor drawn as if it were measured.
    low = peak * 1e-10
    ax.semilogy(grid, np.where(dens > low, dens, np.nan), color="C0", label="SLQ density")
    ax.set_ylim(low, peak * 3)
    _mark_eigenvalues(ax, pairs["top"], "C3", f"top {len(pairs['top'])} eigenvalues")
    _mark_eigenvalues(ax, pairs["bottom"], "C2", f"bottom {len(pairs['bottom'])} eigenvalues")
    lam_max, lam_min = pairs["top"][0]["eigenvalue"], pairs["bottom"][0]["eigenvalue"]
    ax.set_xlabel(f"Hessian eigenvalue (lambda_min = {lam_min:.4g}, lambda_max = {lam_max:.4g})")
    ax.set_ylabel("density (area 1)")
    bad = sum(not r["converged"] for r in pairs["top"] + pairs["bottom"])
    state = "all converged" if not bad else f"{bad} NOT converged"
    ax.set_title(
        f"spectral density, N = {report['num_parameters']}: SLQ, {d['num_samples']} probes x "
        f"{d['num_steps']} Lanczos steps,\nGaussian smoothing sigma = {d['sigma']:.3g};\n"
        f"eigenvalues: {pairs['method']} ({pairs['num_matvecs']} products, {state})",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")
    return fig


def _slice_1d_figure(plt, report: dict):
    s, pairs = report["slice_1d"], report["eigenpairs"]
    words = _DIRECTION_WORDS.get(report.get("slice_directions", "eigenvectors"))
    t, loss = np.asarray(s["t"], dtype=float), np.asarray(s["loss"], dtype=float)
    fine = np.linspace(t[0], t[-1], 201)
    quad = (
        s["value"] + s["slope"] * fine + 0.5 * s["curvature"] * s["direction_norm"] ** 2 * fine**2
    )
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    steps = np.diff(t)
    refined = ", denser near 0" if steps.size and steps.max() > 1.01 * steps.min() else ""
    ax.plot(t, loss, "o-", ms=3, label=f"measured loss ({t.size} points{refined})")
    ax.plot(fine, quad, "--", color="C1", label="quadratic model f + g.d t + 1/2 d'Hd t^2")
    span = np.nanmax(loss) - np.nanmin(loss) if loss.size else 1.0
    ax.set_ylim(np.nanmin(loss) - 0.05 * span, np.nanmax(loss) + 0.15 * span)
    ax.set_xlabel(f"step t along {words[0]}")
    ax.set_ylabel("loss")
    top = pairs["top"][0]
    state = "converged" if top["converged"] else "NOT converged"
    ax.set_title(
        f"1-D slice; curvature along it d'Hd/|d|^2 = {s['curvature']:.4g}\nlambda_max = "
        f"{top['eigenvalue']:.4g} (residual {top['residual']:.2g}, {state})",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    return fig


def _slice_2d_figure(plt, report: dict):
    s2 = report["slice_2d"]
    words = _DIRECTION_WORDS.get(report.get("slice_directions", "eigenvectors"))
    t = np.asarray(s2["t"])
    fig, ax = plt.subplots(figsize=(5, 4.2))
    cs = ax.contourf(t, t, np.asarray(s2["loss"], dtype=float).T, levels=30)
    fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "r+")
    ax.set_xlabel(words[0])
    ax.set_ylabel(words[1])
    ax.set_title(f"2-D loss slice on a {t.size} x {t.size} grid (+: the point)", fontsize=9)
    return fig


def _interpolation_figure(plt, report: dict):
    s = report["interpolation"]
    t, loss = np.asarray(s["t"], dtype=float), np.asarray(s["loss"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.plot(t, loss, "o-", ms=3)
    for at, name in ((0.0, "initialization"), (1.0, "analyzed")):
        ax.axvline(at, color="0.5", lw=0.6)
        ax.annotate(name, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    ha="center", va="bottom")  # fmt: skip
    if np.all(loss > 0):
        ax.set_yscale("log")
    ax.set_xlabel("t: parameters (1 - t) init + t analyzed")
    ax.set_ylabel("loss")
    ax.set_title("loss on the line from the initialization (Goodfellow et al. 2015)", fontsize=9,
                 pad=14)  # fmt: skip
    return fig


def plot_landscape(report: dict, out_dir: str | os.PathLike, *, prefix: str = "") -> dict:
    """Draw a :func:`~jaxcurv.app.landscape_report.landscape_report`:
    ``spectral_density.png``, ``slice_1d.png``, with two directions ``slice_2d.png``, with
    an ``interpolation`` table ``interpolation.png``, and with a per-layer table
    (:func:`jaxcurv.app.layer_report.layer_curvature`) ``layers.png``, in ``out_dir``.

    Returns:
      ``{role: file name}`` of the files written.
    """
    plt = pyplot()
    out_dir = pathlib.Path(out_dir)
    files = {}
    figures = [
        ("density_plot", "spectral_density.png", _density_figure),
        ("slice_1d_plot", "slice_1d.png", _slice_1d_figure),
    ]
    if report["slice_2d"] is not None:
        figures.append(("slice_2d_plot", "slice_2d.png", _slice_2d_figure))
    if report.get("interpolation"):
        figures.append(("interpolation_plot", "interpolation.png", _interpolation_figure))
    if (report.get("layers") or {}).get("layers"):
        figures.append(("layers_plot", "layers.png", layers_figure))
    for role, name, draw in figures:
        fig = draw(plt, report)
        fig.tight_layout()
        save_figure(fig, out_dir / f"{prefix}{name}", dpi=100)
        plt.close(fig)
        files[role] = f"{prefix}{name}"
    return files
