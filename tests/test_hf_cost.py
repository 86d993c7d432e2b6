"""Tests of the cheaper ``hessian_free`` update (issue 15): a separate curvature batch, the
search on the curvature sub-batch, no evaluation of a duplicated CG iterate, and a smoke
test of ``benchmarks/hf_cost.py`` (no timing asserts).

Oracles: numpy solves of the damped Gauss-Newton system of a linear least-squares model
(its GGN is ``X^T X / n`` exactly), ``value_fn`` itself at the returned parameters, and the
same update with the work not skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcurv.hessian_free import ModelAndLoss, hessian_free

MARGIN = 10.0
EPS = np.finfo(np.float64).eps


def _model(params, X):
    return X @ params["w"] + params["b"]


def _mse(out, y):
    return 0.5 * jnp.mean((out - y) ** 2)


OBJ = ModelAndLoss(_model, _mse)


def _problem(m=24, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, d))
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(m) + 0.3
    params = {"w": jnp.zeros(d), "b": jnp.zeros(())}
    return jnp.asarray(X), jnp.asarray(y), params


def _update(opt, params, state, **kw):
    """One update at top level: ``hessian_free`` compiles it once per computation."""
    batch = {k: v for k, v in kw.items() if k != "curvature_batch"}
    value, grads = jax.value_and_grad(OBJ)(params, **batch)
    return opt.update(grads, state, params, value_fn=OBJ, value=value, **kw)


def _ggn(X):
    Xs = np.c_[np.asarray(X), np.ones(len(X))]
    return Xs.T @ Xs / len(X)


def _grad(X, y):
    Xs = np.c_[np.asarray(X), np.ones(len(X))]
    return -Xs.T @ np.asarray(y) / len(X)  # at params = 0


def _solve_bound(A, g, tol, p):
    """||p - p*|| for CG stopped at ||r|| <= tol ||g||, plus rounding n cond eps ||p*||
    (Greenbaum 1997, §7.3)."""
    lam = np.linalg.eigvalsh(A)
    return tol * np.linalg.norm(g) / lam[0] + len(g) * lam[-1] / lam[0] * EPS * np.linalg.norm(p)


def test_curvature_batch_gives_the_curvature_of_its_own_data():
    X, y, params = _problem()
    Xc, yc = X[:8] * 2.0, y[:8]  # other data than the gradient's
    lam = 0.1
    # With the fraction, the sub-batch is of the curvature batch: B = Xc[:4]^T Xc[:4] / 4.
    opt = hessian_free(
        damping=lam, adapt_damping=False, cg_stop="residual", cg_tol=1e-12, curvature_fraction=0.5
    )
    _, state = _update(opt, params, opt.init(params), X=X, y=y, curvature_batch={"X": Xc, "y": yc})
    A, g = _ggn(Xc[:4]) + lam * np.eye(5), _grad(X, y)
    expected = -np.linalg.solve(A, g)
    got = np.r_[state.cg_init["w"], state.cg_init["b"]]  # the final CG solution
    assert np.linalg.norm(got - expected) <= MARGIN * _solve_bound(A, g, 1e-12, expected)


def test_search_on_the_curvature_sub_batch_reports_losses_there():
    X, y, params = _problem()
    opt = hessian_free(damping=1.0, curvature_fraction=0.25, search_batch="curvature")
    state = opt.init(params)
    for _ in range(2):
        u, state = _update(opt, params, state, X=X, y=y)
        new = optax.apply_updates(params, u)
        # The losses are the sub-batch's (its first 6 rows), at the parameters in and out.
        sub = {"X": X[:6], "y": y[:6]}
        for reported, at in ((state.loss, params), (state.new_loss, new)):
            want = float(OBJ(at, **sub))
            # Six squared residuals of five-term dot products: ~ (5 + 3) eps per term.
            assert abs(float(reported) - want) <= MARGIN * 8 * EPS * abs(want)
        assert not bool(state.rejected)
        params = new


def test_walk_skips_the_final_iterate_copy_and_whole_batch_search_is_the_usual_update():
    # cg_maxiter=5: CG stops at step 5, which is also the first recorded step; the walk
    # must not evaluate that copy. On a convex quadratic the full step passes Armijo, so
    # the search spends exactly one evaluation (the value is given).
    X, y, params = _problem(d=8)
    options = dict(damping=1.0, cg_maxiter=5, cg_decay=0.0)
    base = hessian_free(**options)
    ua, sa = _update(base, params, base.init(params), X=X, y=y)
    assert int(sa.cg_steps) == 5 and int(sa.cg_backtrack_step) == 5
    assert int(sa.fn_evals) == 1
    want = float(OBJ(optax.apply_updates(params, ua), X=X, y=y))
    # 24 squared residuals of nine-term dot products: ~ (9 + 3) eps per term.
    assert abs(float(sa.new_loss) - want) <= MARGIN * 12 * EPS * abs(want)
    # Searching "on the curvature batch" of the whole batch recomputes the start value
    # rather than take it: the same loss to rounding, so the same decisions and step,
    # and one more evaluation counted.
    same = hessian_free(search_batch="curvature", **options)
    ub, sb = _update(same, params, same.init(params), X=X, y=y)
    np.testing.assert_allclose(ub["w"], ua["w"], rtol=1e-12, atol=1e-15)
    assert int(sb.fn_evals) == int(sa.fn_evals) + 1
    assert int(sb.cg_backtrack_step) == int(sa.cg_backtrack_step)


def test_bad_curvature_batch_and_search_batch_say_so():
    X, y, params = _problem()
    opt = hessian_free()
    st = opt.init(params)
    g = jax.grad(OBJ)(params, X=X, y=y)
    with pytest.raises(TypeError, match=r"curvature_batch=.*must be a dict.*got"):
        opt.update(g, st, params, value_fn=OBJ, X=X, y=y, curvature_batch=(X, y))
    with pytest.raises(TypeError, match=r"Unexpected keyword|does not accept|\['z'\]"):
        opt.update(g, st, params, value_fn=OBJ, X=X, y=y, curvature_batch={"z": X})
    with pytest.raises(ValueError, match=r"search_batch=.*must be one of"):
        hessian_free(search_batch="sub")
    with pytest.raises(ValueError, match=r"search_batch=.*store_grad"):
        hessian_free(search_batch="curvature", store_grad=True)
