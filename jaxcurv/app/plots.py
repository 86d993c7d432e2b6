"""Plots of a training run: loss against time, Hessian-free's damping, CG steps and rho, and
the sharpness recorded during training beside gradient descent's stability threshold.

matplotlib (the ``cli`` extra) is imported by :func:`pyplot` when a plot is drawn, never at
import time, and with the ``Agg`` backend: the command line draws files, not windows.
"""

from __future__ import annotations

import pathlib
import textwrap

import numpy as np

from jaxcurv.app.extras import INSTALL_CLI, MissingExtraError, installed
from jaxcurv.app.run_folder import save_figure

__all__ = ["plot_sharpness", "plot_training", "pyplot", "require_plotting", "stability_threshold"]


def require_plotting(what: str = "Plotting") -> None:
    """Check that matplotlib, which ``what`` needs for its plots, is installed: call it
    before any work rather than fail at the end of it.

    Raises:
      MissingExtraError: it is not; the message says how to install it.
    """
    if not installed("matplotlib"):
        raise MissingExtraError(
            f"{what} needs matplotlib, which is not installed. Install the command-line "
            f"extra: {INSTALL_CLI}."
        )


def pyplot():
    """``matplotlib.pyplot`` on the file-only ``Agg`` backend.

    Raises:
      MissingExtraError: matplotlib is not installed (see :func:`require_plotting`).
    """
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _loss_before_points(metrics: list[dict]) -> tuple[list[float], list[float]]:
    """``(times, losses)`` of the records' ``loss_before``, each at the time its step
    started."""
    # loss_before is measured at the parameters the step started from, so it belongs at
    # the time the step started, not at the time it ended.
    rows = [r for r in metrics if r.get("loss_before") is not None]
    return [r["time"] - r.get("step_time", 0.0) for r in rows], [r["loss_before"] for r in rows]


def plot_training(metrics: list[dict], run_dir: pathlib.Path, *, title: str = "") -> dict:
    """Loss against time (``loss_vs_time.png``) and, for Hessian-free, damping, CG steps
    and rho against step (``damping.png``). Returns ``{role: file name}``."""
    plt = pyplot()
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
    # A model name runs long: wrapped, the title fits the figure instead of being cut off.
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
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
        axes[0].set_title(textwrap.fill(title, 70), fontsize=9)
        fig.tight_layout()
        save_figure(fig, run_dir / "damping.png")
        plt.close(fig)
        files["damping_plot"] = "damping.png"
    return files


def stability_threshold(name: str, learning_rate: float, momentum: float = 0.0):
    """``(threshold, note)``: the sharpness above which the optimizer diverges on a
    quadratic, or ``None`` and why there is no such line.

    Gradient descent with a constant step ``eta`` is stable on a quadratic along an
    eigenvector of curvature ``lambda`` iff ``eta lambda < 2``; with heavy-ball momentum
    ``beta`` (optax's ``sgd(momentum=beta)``) iff ``eta lambda < 2 + 2 beta`` (the
    iteration matrix ``[[1 + beta - eta lambda, -beta], [1, 0]]`` has spectral radius below
    1). Cohen et al. (2021) found full-batch training drives the sharpness up to that line
    and holds it there ("the edge of stability").
    """
    if name != "sgd":
        return None, (
            f"no stability line: 2/lr is the threshold of gradient descent with a constant "
            f"step (Cohen et al. 2021); {name} adapts its steps"
        )
    if momentum:
        return (2 + 2 * momentum) / learning_rate, f"(2 + 2 beta)/lr, beta = {momentum:g}"
    return 2 / learning_rate, f"2/lr, lr = {learning_rate:g}"


def plot_sharpness(
    metrics: list[dict], run_dir: pathlib.Path, *, threshold, note: str, title: str = ""
) -> dict:
    """The recorded sharpness (top curvature eigenvalue) and trace against step
    (``sharpness.png``), with the stability ``threshold`` as a line when there is one.
    Returns ``{role: file name}`` (empty without records)."""
    rows = [r for r in metrics if r.get("sharpness") is not None]
    if not rows:
        return {}
    plt = pyplot()
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    ok = [r.get("sharpness_converged", True) for r in rows]
    axes[0].plot(steps, [r["sharpness"] for r in rows], "-", color="C0")
    axes[0].plot(
        [s for s, c in zip(steps, ok, strict=True) if c],
        [r["sharpness"] for r, c in zip(rows, ok, strict=True) if c],
        "o", ms=3, color="C0", label="top eigenvalue (converged)",
    )  # fmt: skip
    if not all(ok):
        axes[0].plot(
            [s for s, c in zip(steps, ok, strict=True) if not c],
            [r["sharpness"] for r, c in zip(rows, ok, strict=True) if not c],
            "x", color="C3", label="top eigenvalue (NOT converged)",
        )  # fmt: skip
    if threshold is not None:
        axes[0].axhline(
            threshold, color="k", ls="--", lw=0.8, label=f"stability line {note}: {threshold:.4g}"
        )
    axes[0].set_ylabel(f"sharpness ({rows[0].get('sharpness_curvature', 'hessian')})")
    axes[0].legend(fontsize=7)
    head = title if threshold is not None else f"{title}\n{note}"
    axes[0].set_title(textwrap.fill(head, 80), fontsize=8)
    trace = np.asarray([r.get("curvature_trace", np.nan) for r in rows], dtype=float)
    err = np.asarray([r.get("curvature_trace_stderr", np.nan) for r in rows], dtype=float)
    axes[1].plot(steps, trace, "o-", ms=3, color="C2")
    axes[1].fill_between(steps, trace - err, trace + err, color="C2", alpha=0.2, lw=0)
    axes[1].set_ylabel("trace (Hutchinson, +- 1 s.e.)")
    axes[1].set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, run_dir / "sharpness.png")
    plt.close(fig)
    return {"sharpness_plot": "sharpness.png"}
