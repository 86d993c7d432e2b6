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
from jaxcurv.app.landscape_text import render_landscape
from jaxcurv.app.loop import train
from jaxcurv.app.plots import pyplot, require_plotting
from jaxcurv.app.run_folder import prepare_run_dir, save_figure, write_json, write_text
from jaxcurv.app.seed_sections import (
    backprop_section,
    critical_point_section,
    saddle_section,
    seed_section,
)
from jaxcurv.app.timing import CompileClock
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
        "cg_maxiter": cfg.optimizer.cg_maxiter,
        "plot": "hf_vs_baseline.png",
    }
    return section, hf


def spectrum_section(cfg: Config, hf, out: pathlib.Path) -> dict:
    """Curvature of the trained autoencoder's training loss at the Hessian-free solution."""
    train_set, _ = build_data(cfg)
    num = min(cfg.landscape.num_examples, len(train_set))
    report = model_report(hf.model, hf.params, train_set, num, cfg)
    report = save_landscape({"num_examples": num, **report}, out)
    if report.get("slice_2d"):  # its grid of losses is in landscape.json; the axis suffices
        report["slice_2d"] = {"t": report["slice_2d"]["t"]}
    return report


# ------------------------------------------------------------------------------ report


def _matrix(rows) -> str:
    return "[" + ", ".join("[" + ", ".join(f"{v:g}" for v in r) + "]" for r in rows) + "]"


def _seed_lines(r: dict) -> list[str]:
    """Sections 1-4: the seed notes, each number with the routine and arithmetic behind it."""
    s = r["seed"]
    dtype = s.get("dtype", "float32")
    lines = [
        "## 1. Derivatives and their shapes (computed by `jaxcurv.describe`)",
        "",
        "Kinds and shapes read from tracing each function once (no numerics involved):",
        "",
        s["table"],
        "",
        "## 2. The seed's worked examples",
        "",
        f"Automatic differentiation, exact up to {dtype} rounding (no finite differences):",
        "",
        f"- Jacobian of {s['jacobian']['function']} at (2, 3), `jaxcurv.jacobian` (forward "
        f"mode for this square shape): `{_matrix(s['jacobian']['value'])}` (seed: [[4, 1], "
        "[3, 2]])",
        f"- Gradient of {s['gradient']['function']} at (2, 3), reverse mode: "
        f"`{[round(v, 6) for v in s['gradient']['value']]}`",
        f"- Hessian of {s['hessian']['function']}, forward-over-reverse: "
        f"`{_matrix(s['hessian']['value'])}` (seed: [[2, 3], [3, 2]])",
        "",
    ]
    return lines + _critical_lines(r)


def _critical_lines(r: dict) -> list[str]:
    """Sections 3-4: critical points, saddles, backpropagation."""
    sd, bp, dtype = r["saddle"], r["backprop"], r["seed"].get("dtype", "float32")
    lines = [
        "## 3. Critical points, classified by the Hessian's eigenvalues",
        "",
        "Each Hessian formed densely and diagonalized by `eigh` (exact up to rounding; shown "
        "to 4 significant digits), with the gradient norm that says whether the point is "
        "critical at all:",
        "",
        "| function | at | gradient norm | Hessian eigenvalues (method) | kind |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in r["critical_points"]:
        eig = ", ".join(f"{v:.4g}" for v in row["eigenvalues"])
        lines.append(
            f"| {row['function']} | {tuple(row['at'])} | {row['gradient_norm']:.2g} | {eig} "
            f"({row.get('method', 'dense')}) | **{row['kind']}** |"
        )
    lines += [
        "",
        "All positive: a minimum. All negative: a maximum. Mixed signs: a saddle. A zero "
        "eigenvalue leaves the test undecided (degenerate).",
        "",
        "### Why saddles stall optimization",
        "",
        f"Counted in one run of {sd.get('num_steps_run', 400)} steps of gradient descent "
        f"(learning rate {sd['learning_rate']}) started 1e-6 away from the seed's saddle "
        f"(Hessian eigenvalues {sd['hessian_eigenvalues']}, dense `eigh`): "
        f"{sd['saddle_steps_with_small_gradient']} steps with a gradient norm below 1e-3, "
        f"and {sd['saddle_steps_to_escape']} steps to escape (to move 1 along the descending "
        "eigenvector), because the escaping component grows only by a factor 1.1 per step "
        "(1 + 0.1 x 1). From the same start next to the minimum of x^2 + y^2 it converges "
        f"(|x| <= 1e-6) in {sd['bowl_steps_to_converge']} steps. The Hessian sees what the "
        f"vanishing gradient cannot: its negative eigenvalue's eigenvector "
        f"{sd['escape_direction']} points straight down the saddle.",
        "",
        "## 4. Backpropagation = a chain of vector-Jacobian products",
        "",
        f"`jaxcurv.backprop` on {' -> '.join(bp['layers'])} applies J_3^T, J_2^T, J_1^T in "
        f"turn to the output gradient (cotangent shapes {bp['cotangent_shapes']}); largest "
        f"absolute difference from `jax.grad`, entry by entry in {bp.get('dtype', dtype)}: "
        f"{bp['max_abs_difference_vs_jax_grad']:.2e} (the same products in another order "
        "differ by rounding at most).",
        "",
    ]
    return lines


def _training_lines(t: dict) -> list[str]:
    """Section 5: the race, every loss and time with what it measures."""
    b = t["baseline"]
    hf = t["hessian_free"]
    lines = [
        f"## 5. Hessian-free vs {b} on CURVES-like images",
        "",
        f"{t['model']} ({t['num_parameters']} parameters), {t['data']}, both from the same "
        f"initialization (test loss there {t['initial_test_loss']:.4g}). Test loss: the mean "
        "loss over the whole test set after the last step, computed exactly (no sampling). "
        "Steps: wall-clock time of the optimizer steps alone (evaluations excluded); "
        "compile: the training step's XLA compilation, done before the first step and "
        "timed apart.",
        "",
        "| optimizer | steps | final test loss | steps (s) | compile (s) | total (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("hessian_free", b):
        x = t[name]
        lines.append(
            f"| {name} | {x['steps']} | {x['final_test_loss']:.4g} | "
            f"{x['optimizer_time_s']:.2f} | {x['compile_time_s']:.1f} | "
            f"{x['optimizer_time_s'] + x['compile_time_s']:.1f} |"
        )
    cap = t.get("cg_maxiter")
    lines += [
        "",
        f"Hessian-free averaged {t['mean_cg_steps']:.1f} CG steps per update"
        + (f" (cap `optimizer.cg_maxiter` = {cap})" if cap else "")
        + f". Plot: `{t['plot']}` (test loss against step time, compile time in the legend, "
        "and against steps on a log axis); each run's metrics, checkpoints and plots "
        f"(`loss_vs_time.png`, for Hessian-free `damping.png`) are in `{hf['run_dir']}/` "
        f"and `{t[b]['run_dir']}/`.",
        "",
    ]
    return lines


def render_report(r: dict) -> str:
    """The demo's findings as Markdown (also what the terminal shows)."""
    clock = r.get("timing") or {}
    spent = f" ({clock['compile_s']:.1f} s of it compiling, as JAX reports it)" if clock else ""
    lines = [
        "# jaxcurv demo",
        "",
        f"JAX {r['versions']['jax']} on {r['device']}; total {r['total_time_s']:.1f} s{spent}.",
        "",
        *_seed_lines(r),
        *_training_lines(r["training"]),
        *_spectrum_lines(r["spectrum"]),
    ]
    return "\n".join(lines)


def _spectrum_summary(sp: dict) -> list[str]:
    """What the terminal shows of section 6: each number with its method and error."""
    pairs, tr, d = sp["eigenpairs"], sp["hutchinson_trace"], sp["spectral_density"]
    bad = sum(not p["converged"] for p in pairs["top"] + pairs["bottom"])
    state = "all converged" if not bad else f"{bad} NOT CONVERGED"
    worst = max(p["residual"] for p in pairs["top"] + pairs["bottom"])
    return [
        f"Hessian eigenvalues ({pairs['method']}, {pairs['num_matvecs']} Hessian-vector "
        f"products, {state}, largest residual {worst:.2g}): largest "
        f"{[round(p['eigenvalue'], 4) for p in pairs['top']]}, smallest "
        f"{[round(p['eigenvalue'], 4) for p in pairs['bottom']]}: "
        f"{sp['critical_point']['kind']}",
        f"trace {tr['estimate']:.4g} +- {tr['stderr']:.2g} (Hutchinson, {tr['num_samples']} "
        f"probes, one standard error); density: SLQ, {d['num_samples']} probes x "
        f"{d['num_steps']} steps, sigma {d['sigma']:.3g}",
    ]


def _spectrum_lines(sp: dict) -> list[str]:
    """Section 6: the landscape report (:mod:`jaxcurv.app.landscape_text`) of the solution."""
    intro = (
        "At the Hessian-free solution, on its training loss. The full tables are in "
        "`landscape.json`; this section is also `landscape.md`."
    )
    return [*render_landscape(sp, level=2, title="6. The trained model's Hessian", intro=intro)]


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
    with CompileClock() as clock:
        _seed_sections(report, say)
        _curvature_sections(report, cfg, out, progress, say)
    report["timing"] = clock.as_dict()
    report["total_time_s"] = time.perf_counter() - t0
    report["files"] = {
        "report": "report.md",
        "json": "report.json",
        "plots": [
            "hf_vs_baseline.png",
            *sorted(f for f in report["spectrum"]["files"].values() if f.endswith(".png")),
        ],
    }
    text = render_report(report)
    write_text(out / "report.md", text)
    write_json(out / "report.json", report)
    say(
        f"\nreport written to {out / 'report.md'} ({report['total_time_s']:.0f} s, of which "
        f"{clock.compile_s:.0f} s compiling)"
    )
    return report


def _seed_sections(report: dict, say: Callable[[str], None]) -> None:
    """Sections 1-4 into ``report``, each echoed as it completes."""
    say("jaxcurv demo: the seed notes, computed\n")
    report["seed"] = seed_section()
    say(report["seed"]["table"])
    say(f"Jacobian of [x^2 + y, xy] at (2, 3): {_matrix(report['seed']['jacobian']['value'])}")
    say(f"Hessian of x^2 + 3xy + y^2: {_matrix(report['seed']['hessian']['value'])}\n")
    report["critical_points"] = critical_point_section()
    for row in report["critical_points"]:
        say(
            f"{row['function']:>28} at {tuple(row['at'])}: eigenvalues "
            f"{[round(v, 4) for v in row['eigenvalues']]} (dense eigh) -> {row['kind']}"
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


def _curvature_sections(report: dict, cfg: Config, out, progress, say) -> None:
    """Sections 5 (training race) and 6 (the solution's Hessian) into ``report``."""
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
    for line in _spectrum_summary(report["spectrum"]):
        say(line)
