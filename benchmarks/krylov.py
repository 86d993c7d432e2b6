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
   Hessian is known exactly, the error of each eigenvalue.

    python -m benchmarks.krylov [--quick]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg as spla
from jax.flatten_util import ravel_pytree

import jaxcurv
from benchmarks import common
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
    targets = [
        {
            "target": "CG iteration on linearized GGN <= 1.3x grad",
            "value": r["jaxcurv.cg, ggn_operator"],
            "limit": 1.3,
        },
        {
            "target": "CG iteration on linearized Hessian <= 1.8x grad",
            "value": r["jaxcurv.cg, hessian_operator"],
            "limit": 1.8,
        },
        {
            "target": "jaxcurv.cg per iteration no slower than jax.scipy cg (GGN, within 5%)",
            "value": r["jaxcurv.cg, ggn_operator"] / r["jax.scipy cg, ggn_operator"],
            "limit": 1.05,
        },
        {
            "target": "jaxcurv.cg per iteration no slower than jax.scipy cg (Hessian, within 5%)",
            "value": r["jaxcurv.cg, hessian_operator"] / r["jax.scipy cg, hessian_operator"],
            "limit": 1.05,
        },
    ]
    for tg in targets:
        tg["met"] = bool(tg["value"] <= tg["limit"])
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
        "targets": targets,
        "note": "jax.scipy cg spends one extra product on the initial residual; per-iteration "
        "time is call time / iterations for every solver.",
    }


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
    rel = {row["name"]: row["ratio"] for row in rows}  # paired, per round
    return {
        "n": n,
        "cond": cond,
        "iterations": k,
        "checks": checks,
        "rows": rows,
        "solve_tol": tol,
        "solves": solves,
        "target": {
            "target": "jaxcurv.cg per iteration no slower than jax.scipy cg (dense, within 5%)",
            "value": rel["jaxcurv.cg"],
            "limit": 1.05,
            "met": bool(rel["jaxcurv.cg"] <= 1.05),
        },
    }


# --------------------------------------------------------------------------- Lanczos


def _scipy_operator(op, counter):
    flat0, unravel = ravel_pytree(op.x)
    n = flat0.size

    def matvec(v):
        counter["n"] += 1
        w = op(unravel(jnp.asarray(np.asarray(v, np.float32).ravel())))
        return np.asarray(ravel_pytree(w)[0])

    return spla.LinearOperator((n, n), matvec=matvec, dtype=np.float32), unravel


def _rel_residuals(op, vals, vecs_flat, unravel):
    res = []
    for lam, vec in zip(vals, vecs_flat, strict=True):
        hv = np.asarray(ravel_pytree(op(unravel(jnp.asarray(vec, jnp.float32))))[0], np.float64)
        res.append(float(np.linalg.norm(hv - lam * vec) / max(abs(lam), 1e-30)))
    return res


def _run_lanczos(op, k, repeats, key, num_iters, unravel):
    def ours():
        return jaxcurv.eigenvalues(
            op, k, which="largest", key=key, num_iters=num_iters, return_eigenvectors=True
        )

    first, res = common.time_once(ours)
    t_ours = [common.time_once(ours)[0] for _ in range(repeats)]
    vals = np.asarray(res.eigenvalues, np.float64)
    vecs = np.stack(
        [
            np.asarray(ravel_pytree(jax.tree.map(lambda leaf, j=j: leaf[j], res.eigenvectors))[0])
            for j in range(k)
        ]
    ).astype(np.float64)
    return {
        "num_iters": num_iters,
        "median_s": float(np.median(t_ours)),
        "min_s": float(np.min(t_ours)),
        "max_s": float(np.max(t_ours)),
        "compile_s": max(first - float(np.median(t_ours)), 0.0),
        "matvecs": int(res.num_matvecs),
        "eigenvalues": vals.tolist(),
        "rel_residuals": _rel_residuals(op, vals, vecs, unravel),
    }


def _lanczos_vs_eigsh(op, k, repeats, eigsh_tol):
    """eigsh first; then jaxcurv at its default steps and at eigsh's number of products."""
    key = jax.random.key(0)
    counter = {"n": 0}
    lin, unravel = _scipy_operator(op, counter)
    v0 = np.asarray(ravel_pytree(jaxcurv.tree.tree_random_normal(key, op.x))[0])

    def theirs():
        return spla.eigsh(lin, k=k, which="LA", tol=eigsh_tol, v0=v0)

    t_theirs, out = [], None
    for _ in range(repeats):
        counter["n"] = 0
        t0 = time.perf_counter()
        out = theirs()
        t_theirs.append(time.perf_counter() - t0)
    eigsh_matvecs = counter["n"]
    vals_t, vecs_t = out
    order = np.argsort(vals_t)
    vals_t, vecs_t = vals_t[order].astype(np.float64), vecs_t[:, order].T.astype(np.float64)
    n = op.size
    default = _run_lanczos(op, k, repeats, key, None, unravel)
    # The fewest Lanczos steps (from a short ladder) whose Ritz pairs are at least as
    # accurate as eigsh's; eigsh's own number of products at most.
    goal = max(np.max(_rel_residuals(op, vals_t, vecs_t, unravel)), 1e-30)
    budget = min(n, max(eigsh_matvecs, 2 * k))
    ladder = sorted({m for m in (60, 80, 100, 130) if default["matvecs"] < m < budget} | {budget})
    matched = default
    for m in ladder:
        if max(matched["rel_residuals"]) <= goal:
            break
        matched = _run_lanczos(op, k, repeats, key, m, unravel)
    return {
        "jaxcurv": matched,
        "jaxcurv_default_steps": default,
        "eigsh": {
            "median_s": float(np.median(t_theirs)),
            "min_s": float(np.min(t_theirs)),
            "max_s": float(np.max(t_theirs)),
            "matvecs": eigsh_matvecs,
            "tol": eigsh_tol,
            "eigenvalues": vals_t.tolist(),
            "rel_residuals": _rel_residuals(op, vals_t, vecs_t, unravel),
        },
        "max_rel_diff_eigenvalues": float(
            np.max(np.abs(np.asarray(matched["eigenvalues"]) - vals_t) / np.abs(vals_t))
        ),
    }


def lanczos(s: dict) -> dict:
    k = s["lanczos_k"]
    out = {}
    prob = common.mlp_problem(s["lanczos_sizes"], s["lanczos_batch"], seed=s["seed"])
    print(f"Lanczos top-{k} on MLP {'-'.join(map(str, prob.sizes))}, N = {prob.num_params:,}")
    op = jaxcurv.hessian_operator(common.mlp_loss, prob.params, prob.x, prob.y)
    big = _lanczos_vs_eigsh(op, k, s["lanczos_repeats"], s["eigsh_tol"])
    big["problem"] = {"sizes": list(prob.sizes), "batch": prob.batch, "num_params": prob.num_params}
    out["mlp"] = big
    _print_lanczos(big)

    small = common.mlp_problem(s["exact_sizes"], s["exact_batch"], seed=s["seed"])
    print(
        f"Lanczos top-{k} on MLP {'-'.join(map(str, small.sizes))}, N = {small.num_params:,} "
        "(exact eigenvalues known)"
    )
    sop = jaxcurv.hessian_operator(common.mlp_loss, small.params, small.x, small.y)
    exact = np.linalg.eigvalsh(np.asarray(sop.to_dense(), np.float64))[-k:]
    scale = np.max(np.abs(exact))
    sm = _lanczos_vs_eigsh(sop, k, max(3, s["lanczos_repeats"]), s["eigsh_tol"])
    sm["problem"] = {
        "sizes": list(small.sizes),
        "batch": small.batch,
        "num_params": small.num_params,
    }
    sm["exact_eigenvalues"] = exact.tolist()
    for who in ("jaxcurv", "jaxcurv_default_steps", "eigsh"):
        err = np.abs(np.asarray(sm[who]["eigenvalues"]) - exact) / scale
        sm[who]["max_error_vs_exact"] = float(np.max(err))
    out["exact"] = sm
    _print_lanczos(sm)
    acc = big["jaxcurv"]["rel_residuals"], big["eigsh"]["rel_residuals"]
    out["targets"] = [
        {
            "target": "Lanczos top-10 faster than eigsh (MLP)",
            "value": big["jaxcurv"]["median_s"] / big["eigsh"]["median_s"],
            "limit": 1.0,
        },
        {
            "target": "Lanczos top-10 at least as accurate as eigsh (max relative residual, MLP)",
            "value": max(acc[0]) / max(max(acc[1]), 1e-30),
            "limit": 1.0,
        },
        {
            "target": "Lanczos top-10 at least as accurate as eigsh (error vs exact, small MLP)",
            "value": sm["jaxcurv"]["max_error_vs_exact"]
            / max(sm["eigsh"]["max_error_vs_exact"], 1e-7),
            "limit": 1.0,
        },
    ]
    for tg in out["targets"]:
        tg["met"] = bool(tg["value"] <= tg["limit"])
    return out


def _print_lanczos(r):
    for who in ("jaxcurv_default_steps", "jaxcurv", "eigsh"):
        d = r[who]
        extra = f", err vs exact {d['max_error_vs_exact']:.1e}" if "max_error_vs_exact" in d else ""
        print(
            f"  {who:<8s} {d['median_s']:8.3f} s, {d['matvecs']} products, max rel residual "
            f"{max(d['rel_residuals']):.1e}{extra}"
        )


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for("krylov", DEFAULTS, argv)
    common.header("krylov", quick)
    payload = {"mlp_cg": mlp_cg(s), "dense_cg": dense_cg(s), "lanczos": lanczos(s)}
    common.write_result(out_dir, "krylov", s, quick, payload)


if __name__ == "__main__":
    main()
