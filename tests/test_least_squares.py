"""`jaxcurv.least_squares` against closed forms and scipy's MINPACK `lm`, its stopping rule,
its failure reports and its bad-input errors.

Problems are MGH 1981's (`benchmarks/mgh_problems.py`, float64); each distinct residual
function or configuration compiles once, so the cases share them where they can.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize as sopt

import jaxcurv
from benchmarks.mgh_problems import bard, powell_badly_scaled
from jaxcurv.damping import nielsen_damping

S = jaxcurv.LeastSquaresStatus


def rosen(p):
    """MGH 1 on a dict (the params stay a pytree), and sqrt(z) - 0.1: NaN for z < 0."""
    return jnp.stack([10.0 * (p["y"] - p["x"] ** 2), 1.0 - p["x"], jnp.sqrt(p["z"]) - 0.1])


def _start(x, y, z=4.0):
    return {k: jnp.asarray(v, jnp.float64) for k, v in dict(x=x, y=y, z=z).items()}


def _xyz(p):
    return [float(p[k]) for k in "xyz"]


def _scipy_lm(fn, x0):
    f = jax.jit(fn)
    jac = jax.jit(jax.jacfwd(fn))
    return sopt.least_squares(
        lambda x: np.asarray(f(x)), x0, jac=lambda x: np.asarray(jac(x)), method="lm",
        xtol=1e-15, ftol=1e-15, gtol=1e-15,
    )  # fmt: skip


def test_rosenbrock_reaches_the_closed_form_minimum_and_says_why():
    res = jaxcurv.least_squares(rosen, _start(-1.2, 1.0), linear_solver="cg")
    assert jax.tree.structure(res.params) == jax.tree.structure(_start(0.0, 0.0))
    # Closed form: the minimum is (1, 1, 0.01) with f = 0. Near it |x - x*| ~ |r| /
    # sigma_min(J) (sigma_min ~ 0.45); xtol = 1e-8 stops once a step is below 1e-8 |Dx|,
    # and Gauss-Newton converges quadratically here, so the error is far below 1e-7.
    np.testing.assert_allclose(_xyz(res.params), [1.0, 1.0, 0.01], atol=1e-7)
    # From z = 4 the Gauss-Newton step in z lands below 0 (NaN): rejected, damping raised,
    # and the parameters never took a non-finite value.
    assert int(res.num_accepted) < int(res.num_steps)
    assert bool(res.converged) and res.reason in ("xtol", "ftol", "gtol")
    assert float(res.value) < 1e-14
    # Counts are consistent: every step evaluates the residual once, the start once more;
    # one linearization at the start and at every accepted point but one that ended the
    # run (its tests need no Jacobian).
    assert int(res.num_fev) == int(res.num_steps) + 1
    assert int(res.num_jev) in (int(res.num_accepted), int(res.num_accepted) + 1)
    assert 0 < int(res.num_accepted) <= int(res.num_steps) <= 500
    assert int(res.num_matvecs) > 0 and not bool(res.dense)
    # At the exact minimum r = 0 (sqrt(0.01) rounds to 0.1): gtol at once, no step taken
    # (the same compiled solve).
    at_min = jaxcurv.least_squares(rosen, _start(1.0, 1.0, 0.01), linear_solver="cg")
    assert at_min.reason == "gtol" and int(at_min.num_steps) == 0
    assert at_min.message.startswith("converged (gtol)")


def test_a_budget_that_is_too_small_never_claims_convergence():
    # (The budget is an argument of the compiled solve: no new compile.)
    res = jaxcurv.least_squares(rosen, _start(-1.2, 1.0), maxiter=2, linear_solver="cg")
    assert res.reason == "maxiter" and not bool(res.converged)
    assert int(res.num_steps) == 2 and res.message.startswith("not converged")
    assert float(res.value) < 12.18  # f0 / 2 = 12.1 + 0.081: steps lower f, or are not taken
    # A start with no finite residual (sqrt(-1)): nothing to step from, the start returned.
    bad = jaxcurv.least_squares(rosen, _start(-1.2, 1.0, -1.0), linear_solver="cg")
    assert bad.reason == "nonfinite" and not bool(bad.converged) and int(bad.num_steps) == 0
    assert _xyz(bad.params) == [-1.2, 1.0, -1.0]


def test_powell_badly_scaled_with_cg_matches_minpack():
    # The failure: every update rejected from about update 60 (damping at 1e10).
    # With Marquardt scaling and Jacobi-preconditioned CG it converges (f* = 0).
    x0 = np.array([0.0, 1.0])
    res = jaxcurv.least_squares(powell_badly_scaled, jnp.asarray(x0), linear_solver="cg")
    ref = _scipy_lm(powell_badly_scaled, x0)
    assert bool(res.converged) and int(res.num_steps) <= 500
    # f0 = 1.135; the solved criterion of benchmarks/least_squares.py is 1e-10 * f0.
    assert 2 * float(res.value) <= 1e-10 * 1.1353
    # The solution (1.098e-5, 9.106) is isolated; both solvers stop with |r| < 1e-10,
    # and the Jacobian there has sigma_min ~ 1e-5 relative to x2 ~ 9: |dx|/|x| < 1e-5.
    np.testing.assert_allclose(np.asarray(res.params), ref.x, rtol=1e-5)


def test_nonzero_residual_bard_agrees_with_minpack_and_stops_on_ftol():
    # cg_maxiter=1 caps every CG solve (n = 3): "auto" then forms J and solves densely.
    x0 = np.ones(3)
    res = jaxcurv.least_squares(bard, jnp.asarray(x0), cg_maxiter=1)
    ref = _scipy_lm(bard, x0)
    assert res.reason == "ftol" and bool(res.converged) and bool(res.dense)
    assert int(res.num_matvecs) >= 1  # the capped CG solve came first
    # ftol = 1e-8: the predicted relative reduction left is <= 1e-8, so f is within about
    # 1e-8 relative of the minimum; scipy ran to 1e-15. MGH: f* = 8.21487e-3.
    np.testing.assert_allclose(2 * float(res.value), 2 * ref.cost, rtol=1e-7)
    # |dx| <~ sqrt(2 * 1e-8 * f / sigma_min(J)^2): sigma_min ~ 0.1 here, so 1e-4 is safe.
    np.testing.assert_allclose(np.asarray(res.params), ref.x, rtol=1e-4)


def test_dense_solve_inside_jit_reaches_the_same_minimum():
    solve = jax.jit(lambda p: jaxcurv.least_squares(rosen, p, linear_solver="dense"))
    res = solve(_start(-1.2, 1.0))
    assert bool(res.dense) and bool(res.converged) and int(res.num_matvecs) == 0
    assert int(res.num_jvps) == 3 * int(res.num_jev)  # n = 3 columns per Jacobian
    np.testing.assert_allclose(_xyz(res.params), [1.0, 1.0, 0.01], atol=1e-7)


def test_nielsen_rule_closed_form():
    # rho = 0.75: factor max(1/3, 1 - 0.5^3) = 0.875; rejected: times nu, nu doubled.
    rule = jax.jit(nielsen_damping, static_argnames="max_damping")
    lam, nu = rule(1.0, 2.0, 0.75, True, max_damping=1e10)
    assert (float(lam), float(nu)) == (0.875, 2.0)
    lam, nu = rule(1.0, 4.0, 0.9, False, max_damping=3.0)
    assert (float(lam), float(nu)) == (3.0, 8.0)  # clipped at max_damping


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(residual_fn=3), TypeError, r"`least_squares\(residual_fn\)` must be callable"),
        (dict(params={"w": "a"}), TypeError, r"`params` at \['w'\] is a str"),
        (dict(params={}), ValueError, "has no array leaves"),
        (dict(maxiter=2.5), TypeError, r"`least_squares\(maxiter=...\)` must be an int"),
        (dict(maxiter=0), ValueError, r"`least_squares\(maxiter=...\)` must be positive, got 0"),
        (dict(cg_maxiter=0), ValueError, r"cg_maxiter=...\)` must be positive"),
        (dict(ftol=-1.0), ValueError, r"`least_squares\(ftol=...\)` must be non-negative"),
        (dict(xtol="1e-8"), TypeError, r"`least_squares\(xtol=...\)` must be a real number"),
        (dict(damping=0.0), ValueError, r"`least_squares\(damping=...\)` must be positive"),
        (dict(min_damping=2.0, max_damping=1.0), ValueError, "at most `max_damping`"),
        (dict(scaling="marquardt"), ValueError, r"scaling=...\)` must be one of"),
        (dict(linear_solver="qr"), ValueError, r"linear_solver=...\)` must be one of"),
        (dict(residual_fn=lambda p: jnp.sum(p) > 0), TypeError, "real floating dtype"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"residual_fn": lambda p: p - 1.0, "params": jnp.zeros(2), **kwargs}
    fn, params = args.pop("residual_fn"), args.pop("params")
    with pytest.raises(error, match=match):
        jaxcurv.least_squares(fn, params, **args)
