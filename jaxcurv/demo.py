"""``jaxcurv demo``: the seed notes, end to end, computed by the library.

In order: the table of derivative kinds and shapes (:func:`jaxcurv.describe`); the worked
Jacobian of :math:`f(x, y) = [x^2 + y, xy]` at :math:`(2, 3)` and Hessian of
:math:`x^2 + 3xy + y^2`; critical points classified by Hessian eigenvalues, and why saddles
stall gradient descent; backpropagation as a chain of vector-Jacobian products checked
against ``jax.grad``; a short Hessian-free training run on the embedded CURVES-like data
beside an optax baseline; and the top eigenvalues and spectral density of the trained
model's Hessian. :func:`run_demo` returns the numbers, prints a readable report and writes
``report.md``, ``report.json`` and PNG plots to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxcurv
from jaxcurv.config import Config, load_config
from jaxcurv.landscape import analyze_model, landscape_report, save_landscape
from jaxcurv.train import (
    _pyplot,
    build_data,
    prepare_run_dir,
    require_plotting,
    save_figure,
    train,
    write_json,
    write_text,
)

__all__ = ["DEMO_DEFAULTS", "demo_config", "run_demo"]

#: The demo's built-in configuration over the config defaults; ``configs/demo.toml`` spells
#: out the same tables. A small autoencoder on 16x16 curves. The ``[demo]`` table is not
#: here: its defaults are :class:`jaxcurv.config.DemoConfig`'s, the one place they live.
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
        "num_lanczos": 40,
        "trace_samples": 20,
        "density_probes": 3,
        "slice_points": 21,
        "slice_radius": 1.0,
    },
}


def demo_config(path=None, overrides=()) -> Config:
    """The demo's config: :data:`DEMO_DEFAULTS`, then the file ``path``, then overrides."""
    return load_config(path, overrides, base=DEMO_DEFAULTS)


# ---------------------------------------------------------------------------- the seed


def _seed_jacobian_fun(p):
    x, y = p[0], p[1]
    return jnp.stack([x**2 + y, x * y])


def _seed_loss(p):
    x, y = p[0], p[1]
    return x**2 + 3 * x * y + y**2


def derivative_examples() -> list[tuple[str, Callable, tuple]]:
    """The functions behind the seed's table: one per row kind."""
    w = jnp.arange(12.0).reshape(3, 4) / 10
    return [
        ("sin(x)", jnp.sin, (jnp.asarray(1.0),)),
        ("sum(x**2), x in R^3", lambda x: jnp.sum(x**2), (jnp.ones(3),)),
        ("[x^2 + y, xy]", _seed_jacobian_fun, (jnp.array([2.0, 3.0]),)),
        ("W @ x, W 3x4", lambda x: w @ x, (jnp.ones(4),)),
        ("x^2 + 3xy + y^2", _seed_loss, (jnp.array([2.0, 3.0]),)),
    ]


def seed_section() -> dict:
    """The table of derivative kinds and the two worked examples, computed."""
    examples = derivative_examples()
    table = jaxcurv.derivative_table(examples)
    kinds = []
    for label, fun, args in examples:
        d = jaxcurv.describe(fun, *args)
        kinds.append({"function": label, "kind": d.kind, "shape": list(d.shape)})
        if d.hessian is not None:
            kinds.append({"function": label, "kind": "hessian", "shape": list(d.hessian.shape)})
    point = jnp.array([2.0, 3.0])
    jac = jaxcurv.jacobian(_seed_jacobian_fun)(point)
    grad = jaxcurv.gradient(_seed_loss)(point)
    hess = jaxcurv.hessian(_seed_loss)(point)
    return {
        "table": table,
        "kinds": kinds,
        "jacobian": {
            "function": "f(x, y) = [x^2 + y, xy]",
            "at": [2.0, 3.0],
            "value": np.asarray(jac).tolist(),
        },
        "gradient": {
            "function": "x^2 + 3xy + y^2",
            "at": [2.0, 3.0],
            "value": np.asarray(grad).tolist(),
        },
        "hessian": {
            "function": "x^2 + 3xy + y^2",
            "at": [2.0, 3.0],
            "value": np.asarray(hess).tolist(),
        },
    }


# ------------------------------------------------------------------- critical points


def _rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


CRITICAL_POINTS: list[tuple[str, Callable, tuple[float, float]]] = [
    ("x^2 + y^2", lambda p: p[0] ** 2 + p[1] ** 2, (0.0, 0.0)),
    ("-(x^2 + y^2)", lambda p: -(p[0] ** 2) - p[1] ** 2, (0.0, 0.0)),
    ("x^2 + 3xy + y^2 (the seed)", _seed_loss, (0.0, 0.0)),
    ("x^4 + y^2", lambda p: p[0] ** 4 + p[1] ** 2, (0.0, 0.0)),
    ("Rosenbrock", _rosenbrock, (1.0, 1.0)),
]


def critical_point_section() -> list[dict]:
    """Each function of :data:`CRITICAL_POINTS` classified at its critical point."""
    rows = []
    for label, fun, at in CRITICAL_POINTS:
        cp = jaxcurv.classify_critical_point(fun, jnp.asarray(at, jnp.float64 if _x64() else None))
        rows.append(
            {
                "function": label,
                "at": list(at),
                "kind": cp.kind,
                "eigenvalues": np.round(np.asarray(cp.eigenvalues, np.float64), 6).tolist(),
                "gradient_norm": float(cp.gradient_norm),
                "reason": cp.reason,
            }
        )
    return rows


def _x64() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


@jax.jit
def _gradient_descent(x0, lr, saddle):
    # Plain gradient descent on the seed's saddle (or on a bowl), 400 steps in one scan.
    fun = lambda p: jnp.where(saddle, _seed_loss(p), p[0] ** 2 + p[1] ** 2)
    grad = jaxcurv.gradient(fun)

    def body(x, _):
        g = grad(x)
        return x - lr * g, (x, jnp.linalg.norm(g), fun(x))

    _, (xs, gnorms, values) = jax.lax.scan(body, x0, None, length=400)
    return xs, gnorms, values


def saddle_section() -> dict:
    r"""Gradient descent started next to the seed's saddle versus next to a minimum.

    At the saddle of :math:`x^2 + 3xy + y^2` the Hessian has eigenvalue 5 along
    :math:`(1, 1)/\sqrt2` and -1 along :math:`(1, -1)/\sqrt2`. From a start on the stable
    direction with a :math:`10^{-6}` nudge along the unstable one, each step with learning
    rate 0.1 halves the stable component and multiplies the escaping one by only 1.1: the
    gradient is tiny for a long stretch (a plateau) before the loss falls away. The same
    start next to the minimum of :math:`x^2 + y^2` simply converges.
    """
    lr = 0.1
    up = np.array([1.0, 1.0]) / math.sqrt(2)
    down = np.array([1.0, -1.0]) / math.sqrt(2)
    x0 = jnp.asarray(up + 1e-6 * down)
    xs, gnorms, values = (np.asarray(a) for a in _gradient_descent(x0, lr, True))
    b_xs, b_gnorms, _ = (np.asarray(a) for a in _gradient_descent(x0, lr, False))
    # Escaped: the component along the descending eigenvector has grown to 1.
    along = np.abs(xs @ down)
    stalled = int(np.sum(gnorms < 1e-3))
    escape = int(np.argmax(along >= 1.0)) if np.any(along >= 1.0) else None
    b_norms = np.linalg.norm(b_xs, axis=1)
    converged = int(np.argmax(b_norms <= 1e-6)) if np.any(b_norms <= 1e-6) else None
    cp = jaxcurv.classify_critical_point(_seed_loss, jnp.zeros(2, x0.dtype))
    return {
        "learning_rate": lr,
        "start": np.asarray(x0).tolist(),
        "hessian_eigenvalues": np.round(np.asarray(cp.eigenvalues, np.float64), 6).tolist(),
        "escape_direction": np.round(down, 4).tolist(),
        "saddle_steps_with_small_gradient": stalled,
        "saddle_steps_to_escape": escape,
        "bowl_steps_to_converge": converged,
        "trace": {
            "saddle_grad_norm": gnorms.tolist(),
            "saddle_loss": values.tolist(),
            "bowl_grad_norm": b_gnorms.tolist(),
        },
    }


# --------------------------------------------------------------------------- backprop


def backprop_section() -> dict:
    """A 3-layer tanh network's gradient as a chain of VJPs, compared with ``jax.grad``."""
    # Host-side random numbers: the example needs no compiled random-number generator.
    rng = np.random.default_rng(0)
    sizes = [(5, 8), (8, 8), (8, 3)]
    params = [
        {"w": jnp.asarray(rng.normal(size=s) / math.sqrt(s[0])), "b": jnp.zeros(s[1])}
        for s in sizes
    ]
    x = jnp.asarray(rng.normal(size=(4, 5)))
    layer = lambda p, h: jnp.tanh(h @ p["w"] + p["b"])
    loss_fn = lambda y: 0.5 * jnp.sum(y**2)
    res = jax.jit(lambda ps, x: jaxcurv.backprop([layer] * 3, ps, x, loss_fn))(params, x)

    def direct(ps):
        h = x
        for p in ps:
            h = layer(p, h)
        return loss_fn(h)

    ref = jax.jit(jax.grad(direct))(params)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(res.param_grads), jax.tree.leaves(ref), strict=True)
    )
    return {
        "layers": [f"tanh({a}->{b})" for a, b in sizes],
        "loss": float(res.loss),
        "cotangent_shapes": [list(np.shape(c)) for c in res.cotangents],
        "max_abs_difference_vs_jax_grad": diff,
    }


# ---------------------------------------------------------------------------- training


def _race_plot(runs: dict[str, list[dict]], path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, metrics in runs.items():
        rows = [r for r in metrics if r.get("test_loss") is not None]
        axes[0].plot(
            [r["time"] for r in rows], [r["test_loss"] for r in rows], "o-", ms=3, label=name
        )
        axes[1].plot(
            [r["step"] for r in rows], [r["test_loss"] for r in rows], "o-", ms=3, label=name
        )
    axes[0].set_xlabel("optimizer time (s)")
    axes[1].set_xlabel("step")
    for ax in axes:
        ax.set_ylabel("test loss (cross-entropy)")
        ax.set_yscale("log")
        ax.legend()
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
    _race_plot(
        {"hessian_free": hf.metrics, cfg.demo.baseline: base.metrics}, out / "hf_vs_baseline.png"
    )

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

    section = {
        "model": hf.model.name,
        "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(hf.params))),
        "data": f"{cfg.data.num_train} train / {cfg.data.num_test} test curves, "
        f"{cfg.data.size}x{cfg.data.size}",
        "hessian_free": summary(hf, cfg.run.steps),
        cfg.demo.baseline: summary(base, cfg.demo.baseline_steps),
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
    result = analyze_model(
        hf.model, hf.params, train_set.inputs[:num], train_set.targets[:num], cfg.landscape
    )
    report = save_landscape({"num_examples": num, **landscape_report(result)}, out)
    return {k: v for k, v in report.items() if k not in ("slice_1d", "slice_2d")}


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
        "| optimizer | steps | final test loss | optimizer time (s) | compile (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("hessian_free", b):
        x = t[name]
        lines.append(
            f"| {name} | {x['steps']} | {x['final_test_loss']:.4g} | "
            f"{x['optimizer_time_s']:.2f} | {x['compile_time_s']:.1f} |"
        )
    sp = r["spectrum"]
    top = ", ".join(f"{v:.4g}" for v in sp["top_eigenvalues"])
    bottom = ", ".join(f"{v:.4g}" for v in sp["bottom_eigenvalues"])
    lines += [
        "",
        f"Hessian-free averaged {t['mean_cg_steps']:.1f} CG steps per update. Plot: "
        f"`{t['plot']}`; each run's metrics, checkpoints and plots are in its own folder.",
        "",
        "## 6. The trained model's Hessian",
        "",
        f"At the Hessian-free solution, on {sp['num_examples']} training images "
        f"({sp['num_parameters']} parameters, loss {sp['loss']:.4g}, gradient norm "
        f"{sp['gradient_norm']:.3g}):",
        "",
        f"- top eigenvalues (Lanczos): {top}",
        f"- smallest eigenvalues: {bottom}",
        f"- Hutchinson trace: {sp['hutchinson_trace']['estimate']:.4g} +- "
        f"{sp['hutchinson_trace']['stderr']:.2g}",
        f"- critical-point test: **{sp['critical_point']['kind']}** "
        f"({sp['critical_point']['reason']})",
        "",
        "Plots: `spectral_density.png` (stochastic Lanczos quadrature), `slice_1d.png` and "
        "`slice_2d.png` (the loss along the top eigenvectors).",
        "",
    ]
    return "\n".join(lines)


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
      out_dir: output folder (see :func:`jaxcurv.train.prepare_run_dir`).
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
    say(
        f"final test loss: hessian_free {t['hessian_free']['final_test_loss']:.4g} in "
        f"{t['hessian_free']['optimizer_time_s']:.1f} s, {cfg.demo.baseline} "
        f"{t[cfg.demo.baseline]['final_test_loss']:.4g} in "
        f"{t[cfg.demo.baseline]['optimizer_time_s']:.1f} s"
    )
    say("analyzing the trained model's Hessian ...")
    report["spectrum"] = spectrum_section(cfg, hf, out)
    sp = report["spectrum"]
    say(
        f"top Hessian eigenvalues {[round(v, 4) for v in sp['top_eigenvalues']]}, smallest "
        f"{[round(v, 4) for v in sp['bottom_eigenvalues']]}, trace ~ "
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
