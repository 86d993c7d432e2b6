"""CG steps on the CURVES autoencoder's damped Gauss-Newton system: K-FAC, Martens' diagonal, none.

The system is Martens' (2010) Hessian-free step at the sparse initialization of the
CURVES deep autoencoder (784-400-200-100-50-25-6-25-50-100-200-400-784, logistic units,
logistic cross-entropy; ``jaxcurv.app.models.deep_autoencoder``) on ``num`` CURVES-style
images (``jaxcurv.app.data.curves``): ``(G + lambda I) p = -grad``. For each
preconditioner it records the CG steps to reach a relative residual of 1e-3 and 1e-4
(capped at ``maxiter``; a capped run says so), the wall time per CG step (second call,
compiled; solve time over steps), and the preconditioner's setup time in
gradient-equivalents (its compiled construction over one compiled ``jax.grad`` of the
same batch loss, medians of interleaved rounds).

Run: ``python -m benchmarks.kfac_cg [--quick]``; writes
``benchmarks/results/<backend>[-quick]/kfac_cg.json``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import jaxcurv
from benchmarks.common import DEFAULT_OUT, header, interleaved, results_dir, sync, write_result
from jaxcurv.app import data, models
from jaxcurv.preconditioner import martens_diagonal, martens_preconditioner

FULL = {"num": 500, "dampings": [1e-2, 1.0], "tols": [1e-3, 1e-4], "maxiter": 500, "repeats": 3}
QUICK = {"num": 100, "dampings": [1.0], "tols": [1e-3, 1e-4], "maxiter": 100, "repeats": 2}


def _problem(num: int):
    model = models.deep_autoencoder()
    params = model.init(jax.random.key(0))
    images = jnp.asarray(data.curves(num, seed=0))
    objective = jaxcurv.ModelAndLoss(model.apply, model.loss)
    return model, params, images, objective


def _preconditioners(objective, lam):
    """name -> a jitted builder ``(params, images) -> preconditioner`` (None: none).

    The images are arguments, not constants: XLA would constant-fold the factors of
    constant images at compile time (minutes on 2 cores).
    """
    key = jax.random.key(1)

    def kfac(**options):
        return jax.jit(
            lambda p, x: jaxcurv.kfac_preconditioner(
                objective, p, damping=lam, inputs=x, targets=x, **options
            )
        )

    def diag(p, x):
        return martens_diagonal(objective, p, {"inputs": x, "targets": x}, lam, chunk_size=100)

    return {
        "none": None,
        "martens_diag": jax.jit(diag),
        "kfac_mc_pi": kfac(kind="mc", key=key, likelihood="bernoulli"),
        "kfac_mc_eigen": kfac(kind="mc", key=key, likelihood="bernoulli", damping_mode="eigen"),
        "kfac_empirical_pi": kfac(kind="empirical"),
    }


def _solve(B, b, lam, M, tol, maxiter):
    return jaxcurv.cg(B, b, tol=tol, damping=lam, M=M, maxiter=maxiter)


def run(s: dict) -> dict:
    model, params, images, objective = _problem(s["num"])
    kw = {"inputs": images, "targets": images}
    grad_fn = jax.jit(jax.grad(lambda p, x: objective(p, inputs=x, targets=x)))
    b = jax.tree.map(jnp.negative, grad_fn(params, images))
    B = jaxcurv.ggn_operator(*objective.bind(**kw), params)
    rows = []
    for lam in s["dampings"]:
        builders = _preconditioners(objective, lam)
        calls = {k: (lambda f=f: f(params, images)) for k, f in builders.items() if f is not None}
        timings = interleaved(
            {"grad": lambda: grad_fn(params, images), **calls}, repeats=s["repeats"], warmup=1
        )
        for name, build in builders.items():
            M = None if build is None else sync(build(params, images))
            if name == "martens_diag":
                M = martens_preconditioner(M)
            row = {"damping": lam, "preconditioner": name}
            if name != "none":
                row["setup_grad_equivalents"] = timings[name].median / timings["grad"].median
                row["setup_s"] = timings[name].median
            for tol in s["tols"]:
                _solve(B, b, lam, M, tol, s["maxiter"])  # compile
                t0 = time.perf_counter()
                _, info = sync(_solve(B, b, lam, M, tol, s["maxiter"]))
                elapsed = time.perf_counter() - t0
                steps = int(info.num_steps)
                row[f"steps_{tol:g}"] = steps
                row[f"reached_{tol:g}"] = bool(info.converged)
                row[f"seconds_per_step_{tol:g}"] = elapsed / max(steps, 1)
            row["grad_s"] = timings["grad"].median
            print(row)
            rows.append(row)
    return {"rows": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kfac_cg", description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    s = QUICK if args.quick else FULL
    header("kfac_cg", args.quick)
    payload = run(s)
    write_result(results_dir(DEFAULT_OUT, args.quick), "kfac_cg", s, args.quick, payload)


if __name__ == "__main__":
    main()
