"""Krylov methods on curvature products (issue 3, §3).

1. CG per iteration on the reference MLP, as a ratio to one ``jax.grad``: ``jaxcurv.cg``
   with the linearized GGN and Hessian operators, with a plain ``hvp`` / ``ggn_vp`` per
   iteration, and ``jax.scipy.sparse.linalg.cg`` with the same matvec (damping added in the
   matvec for it). Every solver runs a fixed number of iterations (``tol=0``) under
   ``jax.jit``, so per-iteration time is the call time over the iterations.
2. The same on a synthetic dense SPD matrix (condition number 1e3), plus
   ``scipy.sparse.linalg.cg``, per iteration and to a relative residual of 1e-4.
3. Top-10 eigenvalues of the MLP Hessian: ``jaxcurv.eigenvalues`` (Lanczos with full
   reorthogonalization, one jitted loop) vs ``scipy.sparse.linalg.eigsh`` (ARPACK) driven
   by the same operator products; time, products used, relative residuals
   ``||H v - lambda v|| / |lambda|`` of both Ritz pairs, and, on a small MLP whose dense
   Hessian is known exactly, the error of each eigenvalue (in
   :mod:`benchmarks.krylov_lanczos`, with its targets and tables).

    python -m benchmarks.krylov [--quick]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg as spla

import jaxcurv
from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from benchmarks.krylov_lanczos import LANCZOS_TARGETS, lanczos, lanczos_section
from jaxcurv.tree import tree_axpy, tree_scale

DEFAULTS = {
    "full": {
        "sizes": [784, 1000, 1000, 1000, 10],
        "batch": 256,
        "cg_iters": 10,
        "damping": 1.0,
        "hessian_damping": 3.0,
        "dense_n": 2000,
        "dense_iters": 50,
        "dense_cond": 1e3,
        # Full reorthogonalization streams the m x N basis 4 times per step: a mid-size MLP
        # keeps the eigsh comparison (which may need 150+ products) within a few minutes.
        "lanczos_sizes": [784, 300, 300, 10],
        "lanczos_batch": 256,
        "lanczos_repeats": 1,
        "lanczos_k": 10,
        "eigsh_tol": 1e-4,
        "exact_sizes": [16, 32, 32, 4],
        "exact_batch": 64,
    },
    "quick": {
        "sizes": [784, 1000, 1000, 1000, 10],
        "batch": 256,
        "cg_iters": 5,
        "damping": 1.0,
        "hessian_damping": 3.0,
        "dense_n": 1000,
        "dense_iters": 30,
        "dense_cond": 1e3,
        "lanczos_sizes": [784, 200, 200, 10],
        "lanczos_batch": 128,
        "lanczos_repeats": 1,
        "lanczos_k": 10,
        "eigsh_tol": 1e-4,
        "exact_sizes": [8, 16, 16, 4],
        "exact_batch": 32,
    },
}


# --------------------------------------------------------------------------- MLP CG


def _damped(matvec, lam):
    return lambda v: tree_axpy(lam, v, matvec(v))


def mlp_cg(s: dict) -> dict:
    prob = common.mlp_problem(s["sizes"], s["batch"], seed=s["seed"])
    f, p, x, y = common.mlp_loss, prob.params, prob.x, prob.y
    k, lam, hlam = s["cg_iters"], s["damping"], s["hessian_damping"]
    print(f"CG on MLP {'-'.join(map(str, prob.sizes))}, N = {prob.num_params:,}, {k} iterations")

    def model_fn(q):
        return common.mlp_apply(q, x)

    def loss_fn(o):
        return common.softmax_xent(o, y)

    hop = jaxcurv.hessian_operator(f, p, x, y)
    gop = jaxcurv.ggn_operator(model_fn, loss_fn, p)
    b = tree_scale(hop.grad, -1.0)
    grad = jax.jit(jax.grad(f))

    ours = jax.jit(lambda op, rhs, d: jaxcurv.cg(op, rhs, tol=0.0, maxiter=k, damping=d))
    plain_hvp = jax.jit(
        lambda q, rhs: jaxcurv.cg(
            lambda v: jaxcurv.hvp(f, q, v, x, y), rhs, tol=0.0, maxiter=k, damping=hlam
        )
    )
    plain_ggn = jax.jit(
        lambda q, rhs: jaxcurv.cg(
            lambda v: jaxcurv.ggn_vp(model_fn, loss_fn, q, v), rhs, tol=0.0, maxiter=k, damping=lam
        )
    )
    theirs = jax.jit(
        lambda op, rhs, d: jax.scipy.sparse.linalg.cg(_damped(op, d), rhs, tol=0.0, maxiter=k)
    )
    cands = {
        "jax.grad": lambda: grad(p, x, y),
        "ggn_operator apply (one product, dispatched alone)": lambda: gop(b),
        "jaxcurv.cg, ggn_operator": lambda: ours(gop, b, lam),
        "jaxcurv.cg, plain ggn_vp per iteration": lambda: plain_ggn(p, b),
        "jax.scipy cg, ggn_operator": lambda: theirs(gop, b, lam),
        "jaxcurv.cg, hessian_operator": lambda: ours(hop, b, hlam),
        "jaxcurv.cg, plain hvp per iteration": lambda: plain_hvp(p, b),
        "jax.scipy cg, hessian_operator": lambda: theirs(hop, b, hlam),
    }
    checks: list[dict] = []
    steps = {}

    def check(res):
        for name, r in res.items():
            if name.startswith("jaxcurv.cg"):
                steps[name] = int(r[1].num_steps)
                if steps[name] != k:
                    raise AssertionError(
                        f"{name} stopped after {steps[name]} of {k} steps "
                        f"({r[1].message}); raise `damping` / `hessian_damping` in the "
                        "krylov settings."
                    )
        c = common.check_close
        g = res["jaxcurv.cg, ggn_operator"][0]
        h = res["jaxcurv.cg, hessian_operator"][0]
        c(
            checks,
            "cg(ggn_operator) == cg(plain ggn_vp)",
            res["jaxcurv.cg, plain ggn_vp per iteration"][0],
            g,
            1e-3,
        )
        c(checks, "jaxcurv.cg == jax.scipy cg (GGN)", res["jax.scipy cg, ggn_operator"][0], g, 1e-3)
        c(
            checks,
            "cg(hessian_operator) == cg(plain hvp)",
            res["jaxcurv.cg, plain hvp per iteration"][0],
            h,
            1e-3,
        )
        c(
            checks,
            "jaxcurv.cg == jax.scipy cg (Hessian)",
            res["jax.scipy cg, hessian_operator"][0],
            h,
            1e-3,
        )

    per_call = {n: k for n in cands if n.startswith(("jaxcurv.cg", "jax.scipy"))}
    t = common.interleaved(
        cands, repeats=s["repeats"], warmup=s["warmup"], per_call=per_call, check=check
    )
    fl = common.mlp_floors(prob.sizes, prob.batch)
    floors = {
        "jaxcurv.cg, ggn_operator": fl["ggn_apply"],
        "jax.scipy cg, ggn_operator": fl["ggn_apply"],
        "jaxcurv.cg, hessian_operator": fl["hessian_apply"],
        "jax.scipy cg, hessian_operator": fl["hessian_apply"],
    }
    rows = common.ratio_rows(t, "jax.grad", floors)
    r = {row["name"]: row["ratio"] for row in rows}
    # What a CG iteration adds to its product: the vector updates and inner products over
    # all N parameters (memory-bound), in units of one gradient.
    overhead = (
        r["jaxcurv.cg, ggn_operator"] - r["ggn_operator apply (one product, dispatched alone)"]
    )
    return {
        "problem": {"sizes": list(prob.sizes), "batch": prob.batch, "num_params": prob.num_params},
        "cg_overhead_over_product": overhead,
        "iterations": k,
        "damping": lam,
        "hessian_damping": hlam,
        "checks": checks,
        "rows": rows,
        "note": "jax.scipy cg spends one extra product on the initial residual; per-iteration "
        "time is call time / iterations for every solver.",
    }


def _cg_overhead_why(doc: dict, case: dict) -> str:
    ov = md.get(doc, "mlp_cg", "cg_overhead_over_product")
    if ov is None:
        return ""
    return (
        f" A CG iteration costs its product plus {ov:.2f} gradients of vector "
        "updates and inner products over all N parameters (x, r, p and the "
        "damping term: memory-bound passes over N-vectors that the FLOP floor, "
        "which counts only matrix multiplies, leaves out)."
    )


def _cg_row(name: str) -> tg.Measure:
    return tg.row_ratio("mlp_cg", "rows", name=name)


def _with_floor(name: str):
    def value(doc: dict, case: dict) -> str:
        r = md.row(doc["mlp_cg"]["rows"], name)
        return f"{md.ratio(r['ratio'])} (floor {md.ratio(r.get('flop_floor'))})"

    return value


def _cg_targets(kind: str, op_name: str, limit: float, summary: bool) -> tuple[tg.Target, ...]:
    """CG per iteration on ``op_name``: against one gradient, and against jax.scipy's CG."""
    ours, theirs = f"jaxcurv.cg, {op_name}", f"jax.scipy cg, {op_name}"
    return (
        tg.Target(
            f"CG iteration on linearized {kind} <= {limit:g}x grad",
            _cg_row(ours),
            "<=",
            limit,
            why=_cg_overhead_why,
            headline=tg.Headline(
                f"CG iteration, linearized {kind} / grad", f"<= {limit:g}x", _with_floor(ours)
            ),
        ),
        tg.Target(
            f"jaxcurv.cg per iteration no slower than jax.scipy cg ({kind}, within 5%)",
            tg.quotient(_cg_row(ours), _cg_row(theirs)),
            "<=",
            1.05,
            headline=tg.Headline("CG iteration / `jax.scipy` CG, same matvec (MLP GGN)", "<= 1.05x")
            if summary
            else None,
        ),
    )


_GGN = _cg_targets("GGN", "ggn_operator", 1.3, summary=True)
_HESSIAN = _cg_targets("Hessian", "hessian_operator", 1.8, summary=False)
MLP_CG_TARGETS = (_GGN[0], _HESSIAN[0], _GGN[1], _HESSIAN[1])


# ------------------------------------------------------------------------ dense SPD


def dense_cg(s: dict) -> dict:
    n, k, cond = s["dense_n"], s["dense_iters"], s["dense_cond"]
    rng = np.random.default_rng(s["seed"])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a64 = (q * np.logspace(0, np.log10(cond), n)) @ q.T
    a64 = 0.5 * (a64 + a64.T)
    b64 = rng.standard_normal(n)
    a_np, b_np = a64.astype(np.float32), b64.astype(np.float32)
    a, b = jnp.asarray(a_np), jnp.asarray(b_np)
    print(f"CG on dense SPD n = {n}, cond {cond:.0e}, {k} iterations")

    ours = jax.jit(lambda m, rhs: jaxcurv.cg(m, rhs, tol=0.0, maxiter=k))
    theirs = jax.jit(
        lambda m, rhs: jax.scipy.sparse.linalg.cg(lambda v: m @ v, rhs, tol=0.0, maxiter=k)
    )

    def scipy_cg():
        return spla.cg(a_np, b_np, rtol=0.0, atol=0.0, maxiter=k)

    cands = {
        "jaxcurv.cg": lambda: ours(a, b),
        "jax.scipy.sparse.linalg.cg": lambda: theirs(a, b),
        "scipy.sparse.linalg.cg": scipy_cg,
    }
    checks: list[dict] = []

    def check(res):
        ref = res["jaxcurv.cg"][0]
        common.check_close(
            checks, "jax.scipy cg == jaxcurv.cg", res["jax.scipy.sparse.linalg.cg"][0], ref, 1e-3
        )
        common.check_close(
            checks, "scipy cg == jaxcurv.cg", res["scipy.sparse.linalg.cg"][0], ref, 1e-3
        )

    t = common.interleaved(
        cands,
        repeats=s["repeats"],
        warmup=s["warmup"],
        per_call={n_: k for n_ in cands},
        check=check,
    )
    rows = common.ratio_rows(t, "jax.scipy.sparse.linalg.cg")

    # To a tolerance: time, iterations and the true error against numpy.linalg.solve.
    tol = 1e-4
    exact = np.linalg.solve(a64, b64)
    solve_ours = jax.jit(lambda m, rhs: jaxcurv.cg(m, rhs, tol=tol, maxiter=10 * n))
    solve_theirs = jax.jit(
        lambda m, rhs: jax.scipy.sparse.linalg.cg(lambda v: m @ v, rhs, tol=tol, maxiter=10 * n)
    )
    counter = {"n": 0}

    def count(_):
        counter["n"] += 1

    solves = {}
    for name, fn in [
        ("jaxcurv.cg", lambda: solve_ours(a, b)),
        ("jax.scipy.sparse.linalg.cg", lambda: solve_theirs(a, b)),
        (
            "scipy.sparse.linalg.cg",
            lambda: spla.cg(a_np, b_np, rtol=tol, maxiter=10 * n, callback=count),
        ),
    ]:
        common.time_once(fn)  # compile
        counter["n"] = 0
        times, out = [], None
        for _ in range(max(3, s["repeats"] // 3)):
            dt, out = common.time_once(fn)
            times.append(dt)
        x = np.asarray(out[0], np.float64)
        if name == "jaxcurv.cg":
            iters = int(out[1].num_steps)
        elif name == "scipy.sparse.linalg.cg":
            iters = counter["n"] // len(times)
        else:
            iters = None  # jax.scipy's cg does not report its iterations
        solves[name] = {
            "median_s": float(np.median(times)),
            "min_s": float(np.min(times)),
            "max_s": float(np.max(times)),
            "iterations": iters,
            "rel_error_vs_numpy_solve": float(np.linalg.norm(x - exact) / np.linalg.norm(exact)),
            "rel_residual": float(np.linalg.norm(b64 - a64 @ x) / np.linalg.norm(b64)),
        }
        print(
            f"  solve to {tol:g}: {name:<28s} {solves[name]['median_s'] * 1e3:8.2f} ms, "
            f"{iters} it, err {solves[name]['rel_error_vs_numpy_solve']:.1e}"
        )
    return {
        "n": n,
        "cond": cond,
        "iterations": k,
        "checks": checks,
        "rows": rows,
        "solve_tol": tol,
        "solves": solves,
    }


def _dense_why(doc: dict, case: dict) -> str:
    dc = doc["dense_cg"]
    r, sv = md.row(dc["rows"], "jaxcurv.cg"), dc["solves"]
    return (
        f" Per iteration here is a {r['median_s'] * 1e3:.2f} ms matvec plus "
        "bookkeeping, so jaxcurv.cg's extra per-iteration scalars (status, "
        "curvature and finiteness checks) are visible; ratio of minima "
        f"{r['ratio_min']:.2f}x. Solving to {dc['solve_tol']:g}: jaxcurv.cg "
        f"{sv['jaxcurv.cg']['median_s'] * 1e3:.1f} ms, jax.scipy "
        f"{sv['jax.scipy.sparse.linalg.cg']['median_s'] * 1e3:.1f} ms."
    )


DENSE_CG_TARGETS = (
    tg.Target(
        "jaxcurv.cg per iteration no slower than jax.scipy cg (dense, within 5%)",
        tg.row_ratio("dense_cg", "rows", name="jaxcurv.cg"),  # paired, per round
        "<=",
        1.05,
        why=_dense_why,
        headline=tg.Headline("CG iteration / `jax.scipy` CG, same matvec (dense SPD)", "<= 1.05x"),
    ),
)


TARGETS = MLP_CG_TARGETS + DENSE_CG_TARGETS + LANCZOS_TARGETS

# ------------------------------------------------------------------------------ report

TITLE = "Krylov methods (`benchmarks/krylov.py`)"


def _solves_table(dc: dict) -> list[str]:
    rows = [
        [
            n,
            md.ms(r["median_s"]),
            f"{md.ms(r['min_s'])} - {md.ms(r['max_s'])}",
            r["iterations"] if r["iterations"] is not None else "not reported",
            f"{r['rel_error_vs_numpy_solve']:.1e}",
        ]
        for n, r in dc["solves"].items()
    ]
    header = ["", "median ms", "min-max ms", "iterations", "error vs numpy.linalg.solve"]
    return md.table(header, rows)


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md``, from its JSON document."""
    mc, dc = doc["mlp_cg"], doc["dense_cg"]
    out = [
        f"### {TITLE}",
        "",
        f"CG on the MLP ({mc['problem']['num_params']:,} parameters), {mc['iterations']} "
        f"iterations with damping {mc['damping']:g} (GGN) and "
        f"{mc.get('hessian_damping', mc['damping']):g} (Hessian, indefinite here), time per "
        f"iteration; ratios to one `jax.grad`. {mc['note']}",
        "",
        *md.timing_table(mc["rows"], with_floor=True),
        "",
        f"CG on a dense SPD matrix, n = {dc['n']}, condition number {dc['cond']:g}, time per "
        "iteration (ratios to `jax.scipy.sparse.linalg.cg`):",
        "",
        *md.timing_table(dc["rows"], with_floor=False),
        "",
        f"Solving the dense system to a relative residual of {dc['solve_tol']:g}:",
        "",
        *_solves_table(dc),
        "",
        *lanczos_section(doc["lanczos"]),
    ]
    return "\n".join(out)


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for("krylov", DEFAULTS, argv)
    common.header("krylov", quick)
    payload = {"mlp_cg": mlp_cg(s), "dense_cg": dense_cg(s), "lanczos": lanczos(s)}
    common.write_result(out_dir, "krylov", s, quick, payload, TARGETS)


if __name__ == "__main__":
    main()
