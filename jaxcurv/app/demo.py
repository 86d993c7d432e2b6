"""``jaxcurv demo``: the seed notes, end to end, computed by the library.

In order: the table of derivative kinds and shapes (:func:`jaxcurv.describe`); the worked
Jacobian of :math:`f(x, y) = [x^2 + y, xy]` at :math:`(2, 3)` and Hessian of
:math:`x^2 + 3xy + y^2`; critical points classified by Hessian eigenvalues, and why saddles
stall gradient descent; backpropagation as a chain of vector-Jacobian products checked
against ``jax.grad`` (those four in :mod:`jaxcurv.app.seed_sections`); a short
Hessian-free training run on the embedded CURVES-like data beside an optax baseline; and
the top eigenvalues and spectral density of the trained model's Hessian. :func:`run_demo`
returns the numbers, prints a readable report and writes ``report.md``, ``report.json``
and PNG plots to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

import jaxcurv
from jaxcurv.app.config import Config, load_config
from jaxcurv.app.landscape_report import model_report, save_landscape
from jaxcurv.app.loop import train
from jaxcurv.app.plots import pyplot, require_plotting
from jaxcurv.app.run_folder import prepare_run_dir, save_figure, write_json, write_text
from jaxcurv.app.seed_sections import (
    backprop_section,
    critical_point_section,
    saddle_section,
    seed_section,
)
from jaxcurv.app.training_step import build_data

__all__ = ["DEMO_DEFAULTS", "demo_config", "run_demo"]

#: The demo's built-in configuration over the config defaults; ``configs/demo.toml`` spells
#: out the same tables. A small autoencoder on 16x16 curves. The ``[demo]`` table is not
#: here: its defaults are :class:`jaxcurv.app.config.DemoConfig`'s, the one place they live.
DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"seed": 0, "steps": 30, "log_every": 1, "eval_every": 5, "checkpoint_every": 0},
    "data": {
        "kind": "curves",
        "num_train": 2000,
        "num_test": 500,
        "size": 16,
        "batch_size": 0,
        "seed": 0,
    },
    "model": {
        "kind": "autoencoder",
        "sizes": [256, 64, 16, 4],
        "activation": "logistic",
        "init": "sparse",
        "dtype": "float32",
    },
    "optimizer": {
        "name": "hessian_free",
        "curvature": "ggn",
        "damping": 1.0,
        "cg_maxiter": 50,
        "curvature_fraction": 0.25,
    },
    "landscape": {
        "num_examples": 500,
        "top_k": 5,
        "bottom_k": 3,
        "num_steps": 40,
        "trace_num_samples": 20,
        "density_num_samples": 3,
        "slice_points": 21,
        "slice_radius": 1.0,
    },
}


def demo_config(path=None, overrides=()) -> Config:
    """The demo's config: :data:`DEMO_DEFAULTS`, then the file ``path``, then overrides."""
    return load_config(path, overrides, base=DEMO_DEFAULTS)


# ---------------------------------------------------------------------------- training


def _race_plot(runs: dict[str, list[dict]], compile_s: dict[str, float], path: pathlib.Path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, metrics in runs.items():
        rows = [r for r in metrics if r.get("test_loss") is not None]
        label = f"{name} (+{compile_s[name]:.1f} s compile, not drawn)"
        axes[0].plot(
            [r["time"] for r in rows], [r["test_loss"] for r in rows], "o-", ms=3, label=label
        )
        axes[1].plot(
            [r["step"] for r in rows], [r["test_loss"] for r in rows], "o-", ms=3, label=name
        )
    axes[0].set_xlabel("optimizer time (s, steps only; compile time in the legend)")
    # Tens of Hessian-free steps against hundreds of baseline steps: on a linear axis the
    # first run is squashed against zero. symlog keeps step 0 and spaces the rest by decade.
    axes[1].set_xscale("symlog", linthresh=1)
    axes[1].set_xlabel("step (log scale)")
    for ax in axes:
        ax.set_ylabel("test loss (cross-entropy)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("CURVES-like autoencoder: Hessian-free vs baseline", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def training_section(cfg: Config, out: pathlib.Path, progress: bool | None) -> tuple[dict, Any]:
    """Hessian-free and the baseline on the same data from the same initialization."""
    hf = train(cfg, out / "hessian_free", overwrite=True, progress=progress)
    base_cfg = dataclasses.replace(
        cfg,
        optimizer=dataclasses.replace(
            cfg.optimizer, name=cfg.demo.baseline, learning_rate=cfg.demo.baseline_learning_rate
        ),
        run=dataclasses.replace(
            cfg.run, steps=cfg.demo.baseline_steps, eval_every=max(1, cfg.demo.baseline_steps // 20)
        ),
    )
    base = train(base_cfg, out / cfg.demo.baseline, overwrite=True, progress=progress)

    def summary(res, steps):
        s = json.loads((res.run_dir / "summary.json").read_text())
        return {
            "steps": steps,
            "final_test_loss": s["final_test_loss"],
            "last_loss_before": s["last_loss_before"],
            "optimizer_time_s": s["optimizer_time_s"],
            "compile_time_s": s["compile_time_s"],
            "run_dir": res.run_dir.name,
        }

    runs = {"hessian_free": hf, cfg.demo.baseline: base}
    steps = {"hessian_free": cfg.run.steps, cfg.demo.baseline: cfg.demo.baseline_steps}
    summaries = {name: summary(res, steps[name]) for name, res in runs.items()}
    _race_plot(
        {name: res.metrics for name, res in runs.items()},
        {name: x["compile_time_s"] for name, x in summaries.items()},
        out / "hf_vs_baseline.png",
    )
    section = {
        "model": hf.model.name,
        "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(hf.params))),
        "data": f"{cfg.data.num_train} train / {cfg.data.num_test} test curves, "
        f"{cfg.data.size}x{cfg.data.size}",
        **summaries,
        "baseline": cfg.demo.baseline,
        "initial_test_loss": hf.metrics[0]["test_loss"],
        "mean_cg_steps": float(np.mean([r["cg_steps"] for r in hf.metrics if "cg_steps" in r])),
        "plot": "hf_vs_baseline.png",
    }
    return section, hf


def spectrum_section(cfg: Config, hf, out: pathlib.Path) -> dict:
    """Curvature of the trained autoencoder's training loss at the Hessian-free solution."""
    train_set, _ = build_data(cfg)
    num = min(cfg.landscape.num_examples, len(train_set))
    report = model_report(hf.model, hf.params, train_set, num, cfg)
    report = save_landscape({"num_examples": num, **report}, out)
    return {k: v for k, v in report.items() if k not in ("slice_1d", "slice_2d", "interpolation")}


# ------------------------------------------------------------------------------ report


def _matrix(rows) -> str:
    return "[" + ", ".join("[" + ", ".join(f"{v:g}" for v in r) + "]" for r in rows) + "]"


def render_report(r: dict) -> str:
    """The demo's findings as Markdown (also what the terminal shows)."""
    s = r["seed"]
    lines = [
        "# jaxcurv demo",
        "",
        f"JAX {r['versions']['jax']} on {r['device']}; total {r['total_time_s']:.1f} s.",
        "",
        "## 1. Derivatives and their shapes (computed by `jaxcurv.describe`)",
        "",
        s["table"],
        "",
        "## 2. The seed's worked examples",
        "",
        f"- Jacobian of {s['jacobian']['function']} at (2, 3): "
        f"`{_matrix(s['jacobian']['value'])}` (seed: [[4, 1], [3, 2]])",
        f"- Gradient of {s['gradient']['function']} at (2, 3): "
        f"`{[round(v, 6) for v in s['gradient']['value']]}`",
        f"- Hessian of {s['hessian']['function']}: `{_matrix(s['hessian']['value'])}` "
        "(seed: [[2, 3], [3, 2]])",
        "",
        "## 3. Critical points, classified by the Hessian's eigenvalues",
        "",
        "| function | at | Hessian eigenvalues | kind |",
        "| --- | --- | --- | --- |",
    ]
    for row in r["critical_points"]:
        eig = ", ".join(f"{v:.4g}" for v in row["eigenvalues"])
        lines.append(f"| {row['function']} | {tuple(row['at'])} | {eig} | **{row['kind']}** |")
    sd = r["saddle"]
    lines += [
        "",
        "All positive: a minimum. All negative: a maximum. Mixed signs: a saddle. A zero "
        "eigenvalue leaves the test undecided (degenerate).",
        "",
        "### Why saddles stall optimization",
        "",
        f"Gradient descent (learning rate {sd['learning_rate']}) started 1e-6 away from the "
        f"seed's saddle (Hessian eigenvalues {sd['hessian_eigenvalues']}) spends "
        f"{sd['saddle_steps_with_small_gradient']} steps with a gradient norm below 1e-3 and "
        f"needs {sd['saddle_steps_to_escape']} steps to escape (to move 1 along the "
        "descending eigenvector), because the "
        "escaping component grows only by a factor 1.1 per step. From the same start next to "
        f"the minimum of x^2 + y^2 it converges (|x| <= 1e-6) in "
        f"{sd['bowl_steps_to_converge']} steps. The Hessian sees what the vanishing "
        f"gradient cannot: its negative eigenvalue's eigenvector {sd['escape_direction']} "
        "points straight down the saddle.",
        "",
        "## 4. Backpropagation = a chain of vector-Jacobian products",
        "",
        f"`jaxcurv.backprop` on {' -> '.join(r['backprop']['layers'])} applies "
        "J_3^T, J_2^T, J_1^T in turn to the output gradient (cotangent shapes "
        f"{r['backprop']['cotangent_shapes']}); max |difference| from `jax.grad`: "
        f"{r['backprop']['max_abs_difference_vs_jax_grad']:.2e}.",
        "",
    ]
    t = r["training"]
    b = t["baseline"]
    lines += [
        f"## 5. Hessian-free vs {b} on CURVES-like images",
        "",
        f"{t['model']} ({t['num_parameters']} parameters), {t['data']}; test loss at "
        f"initialization {t['initial_test_loss']:.4g}.",
        "",
        "| optimizer | steps | final test loss | time incl. compile (s) | steps (s) | "
        "compile (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("hessian_free", b):
        x = t[name]
        lines.append(
            f"| {name} | {x['steps']} | {x['final_test_loss']:.4g} | "
            f"{x['optimizer_time_s'] + x['compile_time_s']:.1f} | "
            f"{x['optimizer_time_s']:.2f} | {x['compile_time_s']:.1f} |"
        )
    sp = r["spectrum"]
    lines += [
        "",
        f"Hessian-free averaged {t['mean_cg_steps']:.1f} CG steps per update. Plot: "
        f"`{t['plot']}`; each run's metrics, checkpoints and plots are in its own folder.",
        "",
        *_spectrum_lines(sp),
    ]
    return "\n".join(lines)


def _pairs_text(rows: list[dict]) -> str:
    return ", ".join(
        f"{p['eigenvalue']:.4g} (residual {p['residual']:.1g}"
        f"{'' if p['converged'] else ', NOT converged'})"
        for p in rows
    )


def _spectrum_lines(sp: dict) -> list[str]:
    """Section 6: every eigenvalue with its residual, and how each number was obtained."""
    pairs, d = sp["eigenpairs"], sp["spectral_density"]
    how = (
        f"thick-restart Lanczos, {pairs['num_matvecs']} Hessian-vector products, "
        f"{pairs['convergence_test']}"
        if pairs["method"] != "dense"
        else pairs["convergence_test"]
    )
    verdict = "all converged" if pairs["all_converged"] else "SOME NOT CONVERGED: do not trust them"
    return [
        "## 6. The trained model's Hessian",
        "",
        f"At the Hessian-free solution, on {sp['num_examples']} training images "
        f"({sp['num_parameters']} parameters, loss {sp['loss']:.4g}, gradient norm "
        f"{sp['gradient_norm']:.3g}); {sp['num_matvecs']} Hessian-vector products in all:",
        "",
        f"- eigenvalues ({how}; {verdict}):",
        f"  - largest: {_pairs_text(pairs['top'])}",
        f"  - smallest: {_pairs_text(pairs['bottom'])}",
        f"- Hutchinson trace ({sp['hutchinson_trace']['num_samples']} Rademacher probes): "
        f"{sp['hutchinson_trace']['estimate']:.4g} +- {sp['hutchinson_trace']['stderr']:.2g} "
        "(one standard error)",
        f"- critical-point test, on those eigenvalues: **{sp['critical_point']['kind']}** "
        f"({sp['critical_point']['reason']})",
        f"- spectral density: stochastic Lanczos quadrature, {d['num_samples']} probes x "
        f"{d['num_steps']} steps, Gaussian smoothing sigma = {d['sigma']:.3g}",
        "",
        "Plots: `spectral_density.png` (the density with the extreme eigenvalues marked; "
        "dashed: unconverged), `slice_1d.png` (the loss along the top eigenvector beside its "
        "quadratic model), `slice_2d.png` (over the plane of the top two) and "
        "`interpolation.png` (the loss on the line from the initialization to the solution, "
        "Goodfellow et al. 2015).",
        "",
    ]


def run_demo(
    cfg: Config | None = None,
    out_dir: str | pathlib.Path = "runs/demo",
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """Run every section, write ``report.md``, ``report.json`` and plots to ``out_dir``.

    Args:
      cfg: the demo config; ``None`` uses :func:`demo_config`.
      out_dir: output folder (see :func:`jaxcurv.app.run_folder.prepare_run_dir`).
      overwrite: replace a previous demo in ``out_dir``.
      progress: progress bars for the two training runs; ``None`` follows the config.
      echo: called with each section's text as it completes (``None``: silent).

    Returns:
      The report as a JSON-ready dict.

    Raises:
      MissingExtraError: matplotlib (the ``cli`` extra) is not installed; checked first.
      RunExistsError: ``out_dir`` holds a previous demo and ``overwrite`` is false.
    """
    t0 = time.perf_counter()
    cfg = demo_config() if cfg is None else cfg
    require_plotting("`jaxcurv demo`")
    out = prepare_run_dir(out_dir, overwrite=overwrite)
    say = echo or (lambda _: None)
    report: dict[str, Any] = {
        "versions": {"jax": jax.__version__, "jaxcurv": jaxcurv.__version__},
        "device": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
    }
    say("jaxcurv demo: the seed notes, computed\n")
    report["seed"] = seed_section()
    say(report["seed"]["table"])
    say(f"Jacobian of [x^2 + y, xy] at (2, 3): {_matrix(report['seed']['jacobian']['value'])}")
    say(f"Hessian of x^2 + 3xy + y^2: {_matrix(report['seed']['hessian']['value'])}\n")
    report["critical_points"] = critical_point_section()
    for row in report["critical_points"]:
        say(
            f"{row['function']:>28} at {tuple(row['at'])}: eigenvalues "
            f"{[round(v, 4) for v in row['eigenvalues']]} -> {row['kind']}"
        )
    report["saddle"] = saddle_section()
    sd = report["saddle"]
    say(
        f"\ngradient descent near the seed's saddle: {sd['saddle_steps_with_small_gradient']} "
        f"steps with |grad| < 1e-3, escapes after {sd['saddle_steps_to_escape']} steps; near "
        f"a minimum: converges in {sd['bowl_steps_to_converge']} steps"
    )
    report["backprop"] = backprop_section()
    say(
        f"backprop as a chain of VJPs vs jax.grad: max |diff| = "
        f"{report['backprop']['max_abs_difference_vs_jax_grad']:.2e}\n"
    )
    say(
        f"training {cfg.run.steps} Hessian-free steps and {cfg.demo.baseline_steps} "
        f"{cfg.demo.baseline} steps ..."
    )
    report["training"], hf = training_section(cfg, out, progress)
    t = report["training"]
    hf_t, base_t = t["hessian_free"], t[cfg.demo.baseline]
    say(
        f"final test loss: hessian_free {hf_t['final_test_loss']:.4g} in "
        f"{hf_t['optimizer_time_s']:.1f} s of steps + {hf_t['compile_time_s']:.1f} s compile, "
        f"{cfg.demo.baseline} {base_t['final_test_loss']:.4g} in "
        f"{base_t['optimizer_time_s']:.1f} s + {base_t['compile_time_s']:.1f} s compile"
    )
    say("analyzing the trained model's Hessian ...")
    report["spectrum"] = spectrum_section(cfg, hf, out)
    sp = report["spectrum"]
    converged = "all converged" if sp["eigenpairs"]["all_converged"] else "SOME NOT CONVERGED"
    say(
        f"top Hessian eigenvalues {[round(v, 4) for v in sp['top_eigenvalues']]}, smallest "
        f"{[round(v, 4) for v in sp['bottom_eigenvalues']]} ({converged}, largest residual "
        f"{max(sp['top_residuals'] + sp['bottom_residuals']):.2g}), trace ~ "
        f"{sp['hutchinson_trace']['estimate']:.4g}: {sp['critical_point']['kind']}"
    )
    report["total_time_s"] = time.perf_counter() - t0
    report["files"] = {
        "report": "report.md",
        "json": "report.json",
        "plots": ["hf_vs_baseline.png", *sorted(sp.get("files", {}).values())],
    }
    text = render_report(report)
    write_text(out / "report.md", text)
    write_json(out / "report.json", report)
    say(f"\nreport written to {out / 'report.md'} ({report['total_time_s']:.0f} s)")
    return report
