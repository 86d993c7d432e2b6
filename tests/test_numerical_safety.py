"""Numerical safety across modules: the optimizer, CG and Lanczos on hostile problems.

The single-module cases live with their modules (dense singular and badly scaled CG in
``test_cg.py``, a NaN objective in ``test_hessian_free.py``, a dense clustered spectrum in
``test_spectral.py``). Here the problems come through the whole stack: a training loop whose
batches overflow or carry NaNs, curvature that is infinite at the current point, a
rank-deficient Gauss-Newton *operator* at extreme scales in float32, and Lanczos on a
pytree GGN operator with a clustered spectrum. Oracles: the known positions of the bad
batches, ``numpy.linalg.pinv`` / ``eigvalsh`` in float64, and plain Lanczos without
reorthogonalization (to show the problem is hard enough to produce ghosts).

Tolerances are stated bounds times a margin, from the helpers of ``test_cg.py`` (CG's
residual drift, ``_drift``) and ``test_spectral.py`` (Kato-Temple from the returned
eigenvectors, ``_ritz_bound``); see there for the derivations.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcurv
from jaxcurv.cg import CGStatus, cg
from jaxcurv.hessian_free import ModelAndLoss, hessian_free
from tests.helpers import plain_lanczos_ritz
from tests.test_cg import _drift, _phi_bound, _within
from tests.test_spectral import MARGIN, _krylov_rounding, _ritz_bound, _vectors

EPS32 = float(np.finfo(np.float32).eps)
# The damping rule multiplies a float32 damping by 1.5: one rounding, eps32 / 2 relative.
ONE_ROUNDING = MARGIN * EPS32 / 2

# --------------------------------------------------------------------- the optimizer


def _mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _mse(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def _batches(num, bad):
    """``num`` float32 batches of a smooth regression; ``bad`` maps index -> corruption."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(num):
        x = rng.uniform(-1, 1, (16, 3)).astype(np.float32)
        y = np.sin(2 * x[:, :2]).astype(np.float32)
        if bad.get(i) == "overflow":
            y = y * np.float32(1e30)  # (out - y)**2 ~ 1e60: inf in float32
        elif bad.get(i) == "nan":
            y[3, 1] = np.nan
        out.append((jnp.asarray(x), jnp.asarray(y)))
    return out


def _init_params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "w1": jax.random.normal(k1, (3, 8), jnp.float32),
        "b1": jnp.zeros(8, jnp.float32),
        "w2": 0.3 * jax.random.normal(k2, (8, 2), jnp.float32),
    }


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_training_through_overflowing_and_nan_batches_keeps_params_finite(curvature):
    bad = {1: "overflow", 3: "nan", 4: "overflow"}
    batches = _batches(7, bad)
    value_fn = ModelAndLoss(_mlp, _mse)
    opt = hessian_free(curvature=curvature, damping=1.0, cg_maxiter=20)
    params = start = _init_params()
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(value_fn)(params, x=x, y=y)
        updates, state = opt.update(grads, state, params, value_fn=value_fn, value=loss, x=x, y=y)
        return optax.apply_updates(params, updates), state

    for i, (x, y) in enumerate(batches):
        # The oracle for "bad": the loss on this batch, computed apart, is not finite.
        assert (i in bad) == (not np.isfinite(float(value_fn(params, x=x, y=y))))
        new, new_state = step(params, state, x, y)
        chex.assert_tree_all_finite((new, new_state.cg_init, new_state.damping))
        if i in bad:
            chex.assert_trees_all_equal(new, params)  # the step was rejected, nothing written
            assert bool(new_state.rejected)
            want = 1.5 * np.float64(state.damping)
            np.testing.assert_allclose(new_state.damping, want, rtol=ONE_ROUNDING)
        params, state = new, new_state
    assert int(state.num_nonfinite) == len(bad)
    assert int(state.num_rejected) >= len(bad)
    assert int(step._cache_size()) == 1  # bad batches do not recompile anything
    # Training went on: the loss on the first good batch fell.
    x0, y0 = batches[0]
    assert float(value_fn(params, x=x0, y=y0)) < float(value_fn(start, x=x0, y=y0))


def test_infinite_curvature_is_reported_and_the_step_rejected():
    # f(w) = sum |w|^1.5 + |w - 1|^2: finite value and gradient everywhere, but the second
    # derivative of |w|^1.5 is infinite at w = 0, so every curvature product there is not.
    def f(w):
        return jnp.sum(jnp.abs(w) ** 1.5) + jnp.sum((w - 1.0) ** 2)

    params = jnp.asarray([0.0, 0.5], jnp.float32)
    assert np.isfinite(float(f(params)))
    assert np.all(np.isfinite(np.asarray(jax.grad(f)(params))))
    hv = jaxcurv.hvp(f, params, jnp.asarray([1.0, 0.0], jnp.float32))
    assert not np.all(np.isfinite(np.asarray(hv)))  # the premise: curvature is infinite

    opt = hessian_free(curvature="hessian", damping=1.0)
    state = opt.init(params)
    loss, grads = jax.value_and_grad(f)(params)
    updates, state = jax.jit(lambda g, s, p: opt.update(g, s, p, value_fn=f, value=loss))(
        grads, state, params
    )
    assert np.all(np.isfinite(np.asarray(updates)))
    assert int(state.cg_status) == CGStatus.NONFINITE
    assert bool(state.rejected)
    np.testing.assert_array_equal(np.asarray(updates), 0.0)
    np.testing.assert_allclose(float(state.damping), 1.5, rtol=ONE_ROUNDING)


# --------------------------------------------------------- CG on a singular GGN operator


def _rank_deficient_ggn(scale, rng):
    """GGN of a linear model with 12 examples and 20 parameters: rank 12 of 20."""
    X = rng.standard_normal((12, 20)) / np.sqrt(20)
    y = rng.standard_normal(12)
    Xj = jnp.asarray(X, jnp.float32)
    yj = jnp.asarray(y, jnp.float32)

    def model_fn(p):
        return Xj[:, :8] @ p["a"] + Xj[:, 8:] @ p["b"]

    def loss_fn(o):
        return jnp.float32(scale) * 0.5 * jnp.sum((o - yj) ** 2)

    params = {"a": jnp.zeros(8, jnp.float32), "b": jnp.zeros(12, jnp.float32)}
    op = jaxcurv.ggn_operator(model_fn, loss_fn, params)
    G = scale * X.T @ X  # the oracle, float64
    return op, G, X, y


def _flat(tree):
    return np.concatenate([np.asarray(tree["a"], np.float64), np.asarray(tree["b"], np.float64)])


def _tree(v):
    return {"a": jnp.asarray(v[:8], jnp.float32), "b": jnp.asarray(v[8:], jnp.float32)}


@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_cg_on_singular_ggn_operator_at_extreme_scales_float32(scale):
    rng = np.random.default_rng(5)
    op, G, X, y = _rank_deficient_ggn(scale, rng)
    assert np.linalg.matrix_rank(G / scale) == 12
    # The float32 gradient -scale X^T y: a 12-term sum per entry of float32-rounded data,
    # so at most (12 + 3) roundings (eps32 / 2 each) of |X|^T |y| (Higham's gamma_n).
    g = _flat(op.grad)
    per_entry = MARGIN * 15 * EPS32 / 2 * scale * np.abs(X).T @ np.abs(y)
    _within((g + scale * X.T @ y) / per_entry, 1.0, "gradient, in units of its bound")
    # The gradient lies in range(G): CG converges to the minimum-norm Newton step.
    x, info = jax.jit(lambda op, b: cg(op, b, tol=1e-4, maxiter=60))(op, op.grad)
    assert int(info.status) == CGStatus.CONVERGED, info
    got = _flat(x)
    assert np.all(np.isfinite(got))
    k = int(info.num_steps)
    null = np.linalg.svd(X)[2][12:]  # orthonormal rows spanning the null space of G
    lam = np.linalg.eigvalsh(G)[-12:]  # the non-zero eigenvalues
    # On range(G): ||G^+|| (tol ||g|| + drift + the float32 operator's distance to G);
    # off it, what rounding pushed into the null space, where CG never reduces it (each
    # step's update rounds by sqrt(n) eps relative, times G's condition on its range).
    dG = np.linalg.norm(np.asarray(op.to_dense(), np.float64) - G, 2)
    moved = dG * np.linalg.norm(got)
    residual = 1e-4 * np.linalg.norm(g) + _drift(G, got, g, k, EPS32) + moved
    on_null = null @ got
    cond = lam.max() / lam.min()
    drift_null = MARGIN * np.sqrt(20) * np.sqrt(k + 1) * cond * EPS32 * np.linalg.norm(got)
    _within(on_null, drift_null, "null-space component")
    expected = np.linalg.pinv(G) @ g
    _within(got - null.T @ on_null - expected, residual / lam.min(), "range component")
    # A right-hand side with a null-space part: the model is unbounded below along it;
    # CG must stop on (numerically) zero curvature with finite output, not divide by ~0.
    b = g + np.abs(g).max() * null.T @ rng.standard_normal(8)
    x, info = jax.jit(lambda op, b: cg(op, b, maxiter=60))(op, _tree(b))
    assert int(info.status) == CGStatus.NEGATIVE_CURVATURE, info
    got = _flat(x)
    assert np.all(np.isfinite(got))
    assert np.isfinite(float(info.residual_norm))
    # The returned iterate does not increase the quadratic model (oracle: float64 numpy):
    # the recurrence's phi only decreases, and differs from phi(x) by the drift and by the
    # distance of the system the solver saw (G32, b32) to (G, b).
    assert float(info.quadratic_value) <= 0.0
    phi = 0.5 * got @ G @ got - b @ got
    k = int(info.num_steps)
    moved = dG * np.linalg.norm(got) + np.linalg.norm(_flat(_tree(b)) - b)
    bound = _phi_bound(G, b, got, k, EPS32) + np.linalg.norm(got) * moved
    _within(float(info.quadratic_value) - phi, bound, "phi")


# -------------------------------------------------- Lanczos on a clustered GGN operator


def test_lanczos_on_clustered_ggn_operator_float32_has_no_ghosts():
    rng = np.random.default_rng(1)
    n = 150
    top = np.array([10.0, 10.002, 10.004, 50.0, 100.0])
    spectrum = np.concatenate([rng.uniform(0.01, 1.0, n - top.size), top])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    # G = J^T J with J = diag(sqrt(spectrum)) Q^T: a linear model under 0.5 ||o||^2.
    J = (np.sqrt(spectrum)[:, None] * q.T).astype(np.float32)
    Jj = jnp.asarray(J)
    params = {"w": jnp.zeros((10, 10), jnp.float32), "b": jnp.zeros(50, jnp.float32)}

    def model_fn(p):
        return Jj[:, :100] @ p["w"].reshape(-1) + Jj[:, 100:] @ p["b"]

    op = jaxcurv.ggn_operator(model_fn, lambda o: 0.5 * jnp.sum(o**2), params)
    # The oracle: J^T J of the float32 data in float64, columns in ravel_pytree order
    # (params "b" before "w"), which is how eigenvectors come back.
    J64 = np.concatenate([J[:, 100:], J[:, :100]], axis=1).astype(np.float64)
    G = J64.T @ J64
    exact = np.linalg.eigvalsh(G)
    m = 60
    plain = plain_lanczos_ritz(J.T @ J, m)
    # Hard enough: plain Lanczos ghosts. The next eigenvalue is 50, so two Ritz values
    # within 1e-2 of 100 are one eigenvalue twice.
    assert np.sum(np.abs(plain - 100.0) < 1e-2) >= 2
    res = jaxcurv.eigenvalues(
        op,
        5,
        key=jax.random.key(0),
        method="lanczos",
        maxiter=m,
        dense_threshold=0,
        return_eigenvectors=True,
    )
    assert res.eigenvalues.dtype == jnp.float32
    got = np.asarray(res.eigenvalues, np.float64)
    # Each Ritz value is its vector's Rayleigh quotient up to the rounding of 60 steps
    # (each product is two float32 matrix products, J then J^T), and Kato-Temple puts it
    # within the returned bound of the matching eigenvalue; every bound is below half the
    # distance to the neighbouring eigenvalues, so each of the five appears exactly once.
    rounding = MARGIN * (_krylov_rounding(n, m) + np.sqrt(n)) * EPS32 * 100.0
    bound = _ritz_bound(G, got, _vectors(res.eigenvectors), np.arange(n - 5, n), rounding)
    _within(bound / (0.5 * np.diff(exact[-6:])), 1.0, "Ritz bounds against half the gaps")
