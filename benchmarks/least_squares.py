"""``jaxcurv.least_squares`` on the 22 Moré-Garbow-Hillstrom problems, beside scipy and optimistix.

The problems (:mod:`benchmarks.mgh_problems`): MGH 1981's problems 1-18 at their standard
starting points, and extended Rosenbrock, extended Powell, discrete boundary value and
Broyden tridiagonal at n = 1000; float64. Each method gets the same budget of 500 updates
(steps tried, accepted or not) and its own default tolerances:

* ``jaxcurv``: ``jaxcurv.least_squares(residuals, x0, maxiter=500)``, all defaults
  (``linear_solver="auto"``: CG, switching to the formed Jacobian when a CG solve hits
  its cap);
* ``jaxcurv (CG only)``: the same with ``linear_solver="cg"``, the matrix-free recipe;
* ``scipy lm``: ``scipy.optimize.least_squares(method="lm", max_nfev=500)`` (MINPACK's
  ``lmder``; one function evaluation per trial step), Jacobian by a jitted
  ``jax.jacfwd``, residuals by a jitted function, called from Python;
* ``optimistix LM``: ``optimistix.least_squares(fn, LevenbergMarquardt(rtol=1e-8,
  atol=1e-8), x0, max_steps=500, throw=False)`` (QR inner solves), when installed (the
  ``.venv-peers``, `make bench-peers` environment), else reported "not installed".

Solved: the final ``f = sum(r^2)`` is within :func:`benchmarks.mgh_problems.tolerance` of a
minimum value MGH list (2e-5 relative for f* > 0, the six printed digits being truncated;
``1e-10 f(x0)`` for f* = 0). Times are after compilation (JAX methods are jitted ahead of
time, their compile time reported apart), medians of interleaved runs; evaluation counts
are the methods' own (optimistix's counted by a host callback in the residual function).

    python -m benchmarks.least_squares [--quick]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize as sopt

import jaxcurv
from benchmarks import common
from benchmarks import markdown as md
from benchmarks import mgh_problems as mgh
from benchmarks import targets as tg

DEFAULTS = {
    "full": {"maxiter": 500, "problems": None, "max_repeat_s": 2.0, "repeats": 5},
    "quick": {"maxiter": 500, "problems": [1, 3, 10, 28], "max_repeat_s": 0.5, "repeats": 2},
}
METHODS = ("jaxcurv", "jaxcurv (CG only)", "scipy lm", "optimistix LM")


def _optimistix():
    try:
        import optimistix
    except ImportError:
        return None
    return optimistix


def _jaxcurv(p, x0, maxiter, solver):
    fn = jax.jit(
        lambda x: jaxcurv.least_squares(p.residuals, x, maxiter=maxiter, linear_solver=solver)
    )
    t0 = time.perf_counter()
    compiled = fn.lower(x0).compile()
    compile_s = time.perf_counter() - t0

    def run():
        res = jax.block_until_ready(compiled(x0))
        return {
            "f": 2.0 * float(res.value),
            "updates": int(res.num_steps),
            "accepted": int(res.num_accepted),
            "fev": int(res.num_fev),
            "jev": int(res.num_jev),
            "matvecs": int(res.num_matvecs),
            "jvps": int(res.num_jvps),
            "dense": bool(res.dense),
            "status": res.reason,
        }

    return run, compile_s


def _scipy(p, x0, maxiter):
    f = jax.jit(p.residuals)
    jac = jax.jit(jax.jacfwd(p.residuals))
    t0 = time.perf_counter()
    jax.block_until_ready((f(x0), jac(x0)))
    compile_s = time.perf_counter() - t0
    x0n = np.asarray(x0)

    def run():
        r = sopt.least_squares(
            lambda x: np.asarray(f(x)),
            x0n,
            jac=lambda x: np.asarray(jac(x)),
            method="lm",
            max_nfev=maxiter,
        )
        return {"f": 2.0 * float(r.cost), "updates": int(r.nfev), "accepted": None,
                "fev": int(r.nfev), "jev": int(r.njev), "status": f"status {r.status}"}  # fmt: skip

    return run, compile_s


def _optx(optx, p, x0, maxiter):
    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)
    calls = []

    def counted(y):  # one host callback per evaluation: its cost is far below a QR step
        jax.debug.callback(lambda: calls.append(1))
        return p.residuals(y)

    def solve(x):
        sol = optx.least_squares(lambda y, _: counted(y), solver, x, max_steps=maxiter, throw=False)
        return sol.value, sol.result == optx.RESULTS.successful, sol.stats["num_steps"]

    t0 = time.perf_counter()
    compiled = jax.jit(solve).lower(x0).compile()
    compile_s = time.perf_counter() - t0

    def run():
        calls.clear()
        value, ok, steps = jax.block_until_ready(compiled(x0))
        jax.effects_barrier()
        r = p.residuals(value)
        return {"f": float(jnp.sum(r**2)), "updates": int(steps),
                "accepted": None, "fev": len(calls), "jev": None,
                "status": "successful" if bool(ok) else "failed"}  # fmt: skip

    return run, compile_s


def _runners(p, x0, s, optx):
    out = {
        "jaxcurv": _jaxcurv(p, x0, s["maxiter"], "auto"),
        "jaxcurv (CG only)": _jaxcurv(p, x0, s["maxiter"], "cg"),
        "scipy lm": _scipy(p, x0, s["maxiter"]),
    }
    if optx is not None:
        out["optimistix LM"] = _optx(optx, p, x0, s["maxiter"])
    return out


def _problem(p, s, optx) -> dict:
    x0 = jnp.asarray(p.start(), jnp.float64)
    f0 = float(jnp.sum(p.residuals(x0) ** 2))
    runners = _runners(p, x0, s, optx)
    results, times = {}, {k: [] for k in runners}
    for name, (run, _) in runners.items():  # one run each: the result, and a warm-up
        t0 = time.perf_counter()
        results[name] = run()
        times[name].append(time.perf_counter() - t0)
    for r in range(s["repeats"] - 1):  # interleaved, order rotating; slow runs once only
        names = [n for n in runners if times[n][0] <= s["max_repeat_s"]]
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            runners[name][0]()
            times[name].append(time.perf_counter() - t0)
    methods = {}
    for name, res in results.items():
        reached = mgh.solved(res["f"], p, f0)
        methods[name] = {**res, "solved": reached is not None, "reached": reached,
                         "run_s": float(np.median(times[name])), "runs": len(times[name]),
                         "compile_s": runners[name][1]}  # fmt: skip
    row = {"number": p.number, "name": p.name, "n": int(x0.size), "f0": f0, "fstar": p.fstar}
    line = ", ".join(
        f"{k}: {'ok' if v['solved'] else 'MISS'} f={v['f']:.4g} {v['updates']}u"
        for k, v in methods.items()
    )
    print(f"  {p.number:2d} {p.name:34s} {line}", flush=True)
    return {**row, "methods": methods}


def run(s: dict) -> dict:
    optx = _optimistix()
    chosen = [p for p in mgh.PROBLEMS if s["problems"] is None or p.number in s["problems"]]
    rows = [_problem(p, s, optx) for p in chosen]
    summary = {}
    for name in METHODS:
        got = [r["methods"][name] for r in rows if name in r["methods"]]
        summary[name] = (
            {"solved": sum(g["solved"] for g in got), "of": len(got),
             "run_s": sum(g["run_s"] for g in got), "fev": sum(g["fev"] for g in got)}
            if got else {"skipped": "optimistix not installed"}
        )  # fmt: skip
    for name, v in summary.items():
        print(f"  {name}: {v}")
    return {"problems": rows, "summary": summary, "maxiter": s["maxiter"]}


# ----------------------------------------------------------------- target and report


def _fraction_solved(doc: dict, case: dict) -> float | None:
    sm = md.get(doc, "summary", "jaxcurv")
    return None if not sm or not sm.get("of") else sm["solved"] / sm["of"]


def _missed(doc: dict, case: dict) -> str:
    miss = [r for r in doc["problems"] if not r["methods"]["jaxcurv"]["solved"]]
    return " Missed: " + "; ".join(
        f"{r['name']} (f = {r['methods']['jaxcurv']['f']:.4g}, "
        f"{r['methods']['jaxcurv']['status']})" for r in miss
    )  # fmt: skip


TARGETS = (
    tg.Target(
        "jaxcurv.least_squares solves every MGH problem run within 500 updates (fraction)",
        _fraction_solved,
        ">=",
        1.0,
        why=_missed,
        headline=tg.Headline("MGH least squares: `jaxcurv.least_squares` problems solved", "all"),
    ),
)

TITLE = "Least squares on Moré-Garbow-Hillstrom (`benchmarks/least_squares.py`)"


def _cell(m: dict | None) -> str:
    if m is None:
        return "not installed"
    mark = "✓" if m["solved"] else "✗"
    jev = f"+{m['jev']}j" if m.get("jev") is not None else ""
    return f"{mark} {m['f']:.4g}, {m['updates']} upd, {m['fev']}f{jev}, {md.ms(m['run_s'])}"


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md``, from its JSON document."""
    rows = [
        [f"{r['number']}. {r['name']}", ", ".join(f"{v:g}" for v in r["fstar"]),
         *(_cell(r["methods"].get(name)) for name in METHODS)]
        for r in doc["problems"]
    ]  # fmt: skip
    sums = doc["summary"]
    total = [
        f"{name}: {v['solved']}/{v['of']} solved, {md.seconds(v['run_s'])} in all"
        if "solved" in v else f"{name}: {v['skipped']}"
        for name, v in sums.items()
    ]  # fmt: skip
    return "\n".join(
        [
            f"### {TITLE}",
            "",
            (__doc__ or "").split("\n\n")[1].replace("\n", " "),
            "",
            "Each cell: solved (✓/✗), final f = Σr², updates (steps tried), residual "
            "evaluations f (+ Jacobians j), time after compilation.",
            "",
            *md.table(["problem", "f* (MGH)", *METHODS], rows),
            "",
            "; ".join(total) + ".",
            "",
        ]
    )


def main(argv=None) -> None:
    jax.config.update("jax_enable_x64", True)  # the problems are float64 (MGH's digits)
    s, out_dir, quick = common.settings_for("least_squares", DEFAULTS, argv)
    common.header("least_squares", quick)
    payload = run(s)
    common.write_result(out_dir, "least_squares", s, quick, payload, TARGETS)


if __name__ == "__main__":
    main()
