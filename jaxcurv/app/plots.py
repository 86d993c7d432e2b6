"""Plots of a training run: loss against time and Hessian-free's damping, CG steps, rho.

matplotlib (the ``cli`` extra) is imported by :func:`pyplot` when a plot is drawn, never at
import time, and with the ``Agg`` backend: the command line draws files, not windows.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxcurv.app.extras import INSTALL_CLI, MissingExtraError, installed
from jaxcurv.app.run_folder import save_figure

__all__ = ["plot_training", "pyplot", "require_plotting"]


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
