"""Part (b) of :mod:`benchmarks.optimizers`: Rosenbrock to a tolerance, against scipy.

Chained Rosenbrock, N = 100,000, float64, start uniform in [0, 2] (seeded):
``hessian_free`` with the recipe for deterministic objectives (Gauss-Newton on Rosenbrock
written as least squares, and the Hessian), the Hessian with Martens' defaults,
``scipy.optimize.minimize`` Newton-CG and trust-ncg with ``hessp``, and ``optax.lbfgs``;
time until ``max |x - 1| <= 1e-6``, whole runs repeated and interleaved. Its results are
the ``rosenbrock`` part of ``optimizers.json``; its target, table and plot are here. The
history helpers (:func:`thin`, :func:`first_time`) serve both parts.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize as sopt

from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from jaxcurv.hessian_free import ModelAndLoss, hessian_free

_MAX_POINTS = 400


def thin(hist):
    """At most ``_MAX_POINTS`` points of a history, always keeping the last."""
    if len(hist) <= _MAX_POINTS:
        return hist
    idx = np.unique(np.linspace(0, len(hist) - 1, _MAX_POINTS).round().astype(int))
    return [hist[i] for i in idx]


def first_time(hist, target):
    return next((t for t, v in hist if v <= target), None)


# -------------------------------------------------------------------------- Rosenbrock

HEADLINE = "jaxcurv hessian_free (Gauss-Newton)"


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosen_residuals(x):
    """Rosenbrock as least squares: ``rosen(x) == sum(rosen_residuals(x) ** 2)``."""
    return jnp.concatenate([10.0 * (x[1:] - x[:-1] ** 2), 1.0 - x[:-1]])


ROSEN_LEAST_SQUARES = ModelAndLoss(rosen_residuals, lambda r: jnp.vdot(r, r))
# The recipe for deterministic objectives (see `hessian_free`'s docstring).
DETERMINISTIC = {"cg_stop": "forcing", "cg_backtracking": False, "line_search_factor": 0.5}


def rosenbrock(s: dict) -> dict:
    n, tol, max_s = s["rosen_n"], s["rosen_tol"], s["rosen_max_s"]
    x0 = np.random.default_rng(s["seed"]).uniform(0.0, 2.0, n)
    print(f"Rosenbrock N = {n:,}, float64, until max|x - 1| <= {tol:g} (at most {max_s:.0f} s)")
    checks: list[dict] = []
    xj = jnp.asarray(x0, jnp.float64)
    common.check_close(checks, "rosen == scipy.optimize.rosen", rosen(xj), sopt.rosen(x0), 1e-12)
    common.check_close(
        checks,
        "sum(rosen_residuals ** 2) == scipy.optimize.rosen",
        ROSEN_LEAST_SQUARES(xj),
        sopt.rosen(x0),
        1e-12,
    )
    common.check_close(
        checks,
        "grad rosen == scipy.optimize.rosen_der",
        jax.grad(rosen)(xj),
        sopt.rosen_der(x0),
        1e-10,
    )

    def scipy_run(method):
        hist = []
        t0 = time.perf_counter()

        def callback(xk):
            err = float(np.max(np.abs(xk - 1.0)))
            hist.append((time.perf_counter() - t0, err))
            if err <= tol or hist[-1][0] > max_s:
                raise StopIteration

        opts = {"xtol": 1e-14} if method == "Newton-CG" else {"gtol": 1e-12}
        res = sopt.minimize(
            sopt.rosen,
            x0,
            jac=sopt.rosen_der,
            hessp=sopt.rosen_hess_prod,
            method=method,
            callback=callback,
            options={"maxiter": 100_000, **opts},
        )
        extra = {k: int(getattr(res, k, 0)) for k in ("nfev", "njev", "nhev")}
        return hist, extra

    def jax_runner(opt, kind, value_fn=rosen):
        st0 = opt.init(xj)

        def step(x, st):
            v, g = jax.value_and_grad(rosen)(x)
            if kind == "hessian_free":
                u, st = opt.update(g, st, x, value_fn=value_fn, value=v, grad=g)
            else:
                u, st = opt.update(g, st, x, value=v, grad=g, value_fn=rosen)
            x = optax.apply_updates(x, u)
            return x, st, jnp.max(jnp.abs(x - 1.0))

        t0 = time.perf_counter()
        compiled = jax.jit(step).lower(xj, st0).compile()
        compile_s = time.perf_counter() - t0

        def run():
            x, st, hist = xj, st0, []
            t0 = time.perf_counter()
            while True:
                x, st, err = compiled(x, st)
                hist.append((time.perf_counter() - t0, float(err)))
                if hist[-1][1] <= tol or hist[-1][0] > max_s:
                    return hist, {"compile_s": compile_s}

        return run

    methods = {
        "scipy Newton-CG": lambda: scipy_run("Newton-CG"),
        "scipy trust-ncg": lambda: scipy_run("trust-ncg"),
        HEADLINE: jax_runner(
            hessian_free(curvature="ggn", damping=s["rosen_hf_damping"], **DETERMINISTIC),
            "hessian_free",
            ROSEN_LEAST_SQUARES,
        ),
        "jaxcurv hessian_free (Hessian)": jax_runner(
            hessian_free(curvature="hessian", damping=s["rosen_hf_damping"], **DETERMINISTIC),
            "hessian_free",
        ),
        "jaxcurv hessian_free (Hessian, Martens defaults)": jax_runner(
            hessian_free(curvature="hessian", damping=s["rosen_hf_damping"]), "hessian_free"
        ),
        "optax lbfgs": jax_runner(optax.lbfgs(), "lbfgs"),
    }
    # Whole runs, repeated and interleaved (order rotating), as for every other timing:
    # numpy's large temporaries make scipy's times swing with the machine's load.
    names = list(methods)
    # One untimed run each first, as every other timing here has a warm-up: JAX is compiled
    # ahead of time anyway, and scipy's first run in a process was up to 20x slower than
    # its later ones in our runs (likely fresh pages for numpy's large temporaries).
    for name in names:
        methods[name]()
    results: dict[str, list] = {n: [] for n in names}
    for r in range(s["rosen_repeats"]):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(methods[name]())
    runs = {}
    for name in names:
        hists = [h for h, _ in results[name]]
        ttt = [first_time(h, tol) for h in hists]
        reached = [t for t in ttt if t is not None]
        # The repeat with the median time represents the method (its curve is plotted).
        order = sorted(range(len(hists)), key=lambda i: hists[i][-1][0])
        mid = order[len(order) // 2]
        hist, extra = results[name][mid]
        runs[name] = {
            **extra,
            "elapsed_s": hist[-1][0],
            "iterations": len(hist),
            "final_error": hist[-1][1],
            "time_to_tol_s": float(np.median(reached)) if len(reached) == len(ttt) else None,
            "time_to_tol_all_s": ttt,
            "history": thin(hist),
        }
    for name, r in runs.items():
        ttt = r["time_to_tol_s"]
        reached = f"{ttt:.2f} s" if ttt is not None else "not reached"
        print(
            f"  {name:<50s} {r['iterations']:6d} it, {r['elapsed_s']:7.2f} s, final err "
            f"{r['final_error']:.1e}, to tol: {reached}"
        )
    return {
        "n": n,
        "tol": tol,
        "start": "uniform(0, 2), seeded",
        "repeats": s["rosen_repeats"],
        "dtype": "float64",
        "checks": checks,
        "runs": runs,
    }


# ----------------------------------------------------------------- target and report


def _time_ratio(doc: dict, case: dict) -> float | None:
    """``hessian_free``'s time to tolerance over scipy Newton-CG's (0 / inf: one missed)."""
    runs = md.get(doc, "rosenbrock", "runs")
    if not runs:
        return None
    ours, theirs = runs[HEADLINE]["time_to_tol_s"], runs["scipy Newton-CG"]["time_to_tol_s"]
    if ours is not None and theirs is not None:
        return ours / theirs
    return 0.0 if ours is not None else float("inf")


def _each(r: dict) -> str:
    return ", ".join(md.seconds(x) for x in r.get("time_to_tol_all_s", []))


def _slower_why(doc: dict, case: dict) -> str:
    rb = doc["rosenbrock"]
    hf, sp = rb["runs"][HEADLINE], rb["runs"]["scipy Newton-CG"]
    return (
        f" Runs: hessian_free {_each(hf)} ({hf['iterations']} updates), scipy "
        f"Newton-CG {_each(sp)} ({sp['iterations']} iterations). Each "
        "hessian_free update also runs an Armijo line search on the objective: "
        f"{hf['elapsed_s'] / hf['iterations'] * 1e3:.1f} "
        f"ms per update against {sp['elapsed_s'] / sp['iterations'] * 1e3:.1f} ms per "
        "scipy iteration (numpy's vectorized Rosenbrock, float64)."
    )


def _times(doc: dict, case: dict) -> str:
    runs = doc["rosenbrock"]["runs"]
    ours, theirs = runs[HEADLINE]["time_to_tol_s"], runs["scipy Newton-CG"]["time_to_tol_s"]
    return f"{md.seconds(ours)} vs {md.seconds(theirs)}"


def _cases(doc: dict) -> list[dict]:
    rb = doc.get("rosenbrock")
    return [{"tol": rb["tol"], "n": rb["n"]}] if rb else []


def _per_iteration(r: dict) -> float:
    return r["elapsed_s"] / max(r["iterations"], 1)


def _iteration_ratio(doc: dict, case: dict) -> float | None:
    """``hessian_free``'s time per update over scipy Newton-CG's time per iteration."""
    runs = md.get(doc, "rosenbrock", "runs")
    if not runs:
        return None
    return _per_iteration(runs[HEADLINE]) / _per_iteration(runs["scipy Newton-CG"])


def _iterations_ratio(doc: dict, case: dict) -> float | None:
    runs = md.get(doc, "rosenbrock", "runs")
    if not runs:
        return None
    return runs[HEADLINE]["iterations"] / runs["scipy Newton-CG"]["iterations"]


def _iteration_why(doc: dict, case: dict) -> str:
    runs = doc["rosenbrock"]["runs"]
    hf, sp = runs[HEADLINE], runs["scipy Newton-CG"]
    return (
        f" {_per_iteration(hf) * 1e3:.2f} ms per update against "
        f"{_per_iteration(sp) * 1e3:.2f} ms per scipy iteration ({hf['iterations']} vs "
        f"{sp['iterations']}); `benchmarks/hf_cost.py` splits the update by part."
    )


TARGETS = (
    tg.Target(
        "hessian_free time per update <= 1.5x scipy Newton-CG's per iteration (Rosenbrock "
        "N = {n:,})",
        _iteration_ratio,
        "<=",
        1.5,
        why=_iteration_why,
        cases=_cases,
    ),
    tg.Target(
        "hessian_free fewer updates than scipy Newton-CG iterations (Rosenbrock N = {n:,})",
        _iterations_ratio,
        "<",
        1.0,
        cases=_cases,
    ),
    tg.Target(
        "hessian_free reaches max|x-1| <= {tol:g} faster than scipy Newton-CG (N = {n:,}; "
        "time ratio)",
        _time_ratio,
        "<",
        1.0,
        why=_slower_why,
        cases=_cases,
        headline=tg.Headline(
            "Rosenbrock N = {n:,} to {tol:g}: `hessian_free` vs scipy Newton-CG", "faster", _times
        ),
    ),
)


def plot(rb: dict, path) -> None:
    """Error against wall time, one line per method, the tolerance dotted."""
    plt = md.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, r in rb["runs"].items():
        if r["history"]:
            t, v = zip(*r["history"], strict=True)
            ax.plot(t, v, label=name)
    ax.axhline(rb["tol"], color="k", ls=":", lw=1, label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("max |x - 1|")
    ax.set_title(f"Rosenbrock N = {rb['n']:,} (float64)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def rosenbrock_section(rb: dict, ctx: md.Context) -> list[str]:
    """The Rosenbrock part of the optimizers section (and its plot)."""
    rows = [
        [
            n,
            r["iterations"],
            f"{r['final_error']:.1e}",
            md.seconds(r["time_to_tol_s"]),
            ", ".join(md.seconds(t) for t in r.get("time_to_tol_all_s", [r["time_to_tol_s"]])),
        ]
        for n, r in rb["runs"].items()
    ]
    header = ["method", "iterations", "final max error", "time to tolerance (median)", "each run"]
    return [
        "The `hessian_free` runs on Rosenbrock: (Gauss-Newton) and (Hessian) use the recipe "
        "for deterministic objectives, `cg_stop='forcing', cg_backtracking=False, "
        "line_search_factor=0.5`; Gauss-Newton is on Rosenbrock written as least squares "
        "(`ModelAndLoss(residuals, sum of squares)`), which makes it Levenberg-Marquardt with "
        "CG inner solves. (Hessian, Martens defaults) is the neural-network recipe.",
        "",
        f"Rosenbrock, N = {rb['n']:,}, {rb['dtype']}, start {rb['start']}; time until "
        f"max |x − 1| <= {rb['tol']:g}, {rb.get('repeats', 1)} whole runs per method, "
        "interleaved:",
        "",
        *md.table(header, rows),
        "",
        ctx.image("rosenbrock", "optimizers_rosenbrock.png", plot, rb),
        "",
    ]
