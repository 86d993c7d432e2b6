"""Spectral tools against numpy.linalg.eigvalsh, exact traces/diagonals and closed forms.

Matrices come from ``helpers.random_symmetric`` (a random orthogonal basis around a chosen
spectrum), so every eigenvalue, trace and density is known exactly. Randomized estimators
run with fixed keys and are held to a stated error for a stated budget of products.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.flatten_util import ravel_pytree

import jaxcurv
from jaxcurv import spectral
from jaxcurv.spectral import (
    classify_critical_point,
    eigenvalues,
    hutchinson_diagonal,
    hutchinson_trace,
    power_iteration,
    spectral_density,
)
from tests.helpers import plain_lanczos_ritz, random_symmetric

KEY = jax.random.key(0)


def _spectrum(case: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if case == "spread":  # a decaying spectrum of both signs, like a network's Hessian
        ev = rng.standard_normal(n) * np.geomspace(10.0, 0.1, n)
    elif case == "clustered":  # outliers, a tight cluster at the top of the bulk, a bulk
        ev = np.concatenate([[100.0, 50.0], 10.0 + 2e-3 * np.arange(3), rng.uniform(0, 1, n - 5)])
    elif case == "negative":  # negative definite with a cluster at the bottom
        ev = np.concatenate([[-80.0, -40.0 - 1e-2, -40.0], -rng.uniform(1, 5, n - 3)])
    else:
        raise AssertionError(case)
    return ev


def _tol(dtype, scale):
    return (1e-4 if dtype == np.float32 else 1e-9) * scale


# ------------------------------------------------------------------------- eigenvalues


# One configuration (N = 200, k = 5 from each end, 150 steps) for all spectra and the ghost
# test, so that it compiles once per dtype.
_N, _K, _M = 200, 5, 150


def _extremes(A, dtype):
    return eigenvalues(jnp.asarray(A, dtype), _K, which="both", dense_threshold=0, num_iters=_M)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["spread", "clustered", "negative"])
def test_lanczos_extremes_match_eigvalsh(case, dtype):
    rng = np.random.default_rng(0)
    A = random_symmetric(rng, _spectrum(case, _N, rng))
    exact = np.linalg.eigvalsh(A)
    res = _extremes(A, dtype)
    assert res.eigenvalues.dtype == dtype and res.eigenvalues.shape == (2 * _K,)
    want = np.concatenate([exact[:_K], exact[-_K:]])
    np.testing.assert_allclose(res.eigenvalues, want, atol=_tol(dtype, np.abs(exact).max()))
    assert int(res.num_matvecs) == _M
    # The residual bound says they converged (to rounding, which it does not include).
    assert np.all(np.asarray(res.residual_norms) <= 1e-3 * np.abs(exact).max())


def test_no_ghost_eigenvalues_on_clustered_spectrum_float32():
    rng = np.random.default_rng(0)
    A = random_symmetric(rng, _spectrum("clustered", _N, rng)).astype(np.float32)
    exact = np.linalg.eigvalsh(A.astype(np.float64))[-_K:]  # [10, 10.002, 10.004, 50, 100]
    # The setting is hard enough: plain Lanczos reports 100 several times.
    plain = plain_lanczos_ritz(A, _M)
    assert np.sum(np.abs(plain - 100.0) < 1e-2) >= 2
    top = np.asarray(_extremes(A, np.float32).eigenvalues[_K:])
    np.testing.assert_allclose(top, exact, atol=1e-3)
    assert np.all(np.diff(top) > 1e-3)  # each eigenvalue once


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_krylov_exhaustion_restarts_and_keeps_multiplicities(dtype):
    # Three distinct eigenvalues: the first Krylov space has dimension 3. Restarting on
    # breakdown must recover every copy -- no ghost, none missing.
    rng = np.random.default_rng(1)
    spectrum = np.repeat([-1.0, 2.0, 3.0], 20)
    A = jnp.asarray(random_symmetric(rng, spectrum), dtype)
    res = eigenvalues(A, 30, which="both", dense_threshold=0, num_iters=60)
    np.testing.assert_allclose(res.eigenvalues, np.sort(spectrum), atol=_tol(dtype, 30.0))
    # The identity breaks down at every step.
    eye = eigenvalues(jnp.eye(60, dtype=dtype), 30, which="both", dense_threshold=0, num_iters=60)
    np.testing.assert_allclose(eye.eigenvalues, np.ones(60), atol=_tol(dtype, 1.0))
    assert np.all(np.isfinite(eye.residual_norms))


# ------------------------------------------------------------- thick-restart Lanczos

# One configuration (N = 200, k = 5 from each end, default basis of 21 vectors, eigenvectors)
# per dtype for every thick-restart test on matrices: tol and num_iters are traced.


def _thick(A, dtype, **kw):
    return eigenvalues(
        jnp.asarray(A, dtype),
        _K,
        which="both",
        dense_threshold=0,
        method="thick-restart",
        return_eigenvectors=True,
        **kw,
    )


def _true_residuals(A, res):
    V = np.asarray(res.eigenvectors, np.float64)
    lam = np.asarray(res.eigenvalues, np.float64)
    return V, np.linalg.norm(A @ V.T - V.T * lam, axis=0)


def _one_pass_steps_needed(A: np.ndarray, k: int, tol: float) -> int:
    """Oracle: the fewest steps of one-pass Lanczos (numpy, float64, reorthogonalized twice
    against the whole basis) after which the k smallest and k largest Ritz pairs all have
    ``|beta s_mj| <= tol |theta_j|``."""
    n = A.shape[0]
    Q = np.zeros((n, n))
    q = np.random.default_rng(0).standard_normal(n)
    Q[0] = q / np.linalg.norm(q)
    alphas, betas = [], []
    for m in range(1, n + 1):
        w = A @ Q[m - 1]
        alphas.append(Q[m - 1] @ w)
        for _ in range(2):
            w -= Q[:m].T @ (Q[:m] @ w)
        betas.append(np.linalg.norm(w))
        if m >= 2 * k:
            theta, S = scipy.linalg.eigh_tridiagonal(alphas, betas[:-1])
            idx = np.r_[np.arange(k), np.arange(m - k, m)]
            if np.all(np.abs(betas[-1] * S[-1, idx]) <= tol * np.abs(theta[idx])):
                return m
        if m < n:
            Q[m] = w / betas[-1]
    return n


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", ["spread", "clustered", "negative"])
def test_thick_restart_matches_eigvalsh(case, dtype):
    rng = np.random.default_rng(0)
    A = random_symmetric(rng, _spectrum(case, _N, rng))
    exact = np.linalg.eigvalsh(A)
    scale = np.abs(exact).max()
    res = _thick(A, dtype)
    assert res.eigenvalues.dtype == dtype and res.eigenvalues.shape == (2 * _K,)
    assert bool(res.converged) and int(res.num_restarts) > 0
    want = np.concatenate([exact[:_K], exact[-_K:]])
    np.testing.assert_allclose(res.eigenvalues, want, atol=_tol(dtype, scale))
    # The reported residuals are the true ||A v - lambda v|| (up to rounding, ~eps ||A||),
    # and they met the default tolerance relative to |lambda|.
    V, true_res = _true_residuals(A, res)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(res.residual_norms, true_res, atol=20 * eps * scale)
    tol = 1e-8 if dtype == np.float64 else 1e-5
    assert np.all(np.asarray(res.residual_norms) <= tol * np.abs(want))
    np.testing.assert_allclose(V @ V.T, np.eye(2 * _K), atol=50 * eps)
    # Each eigenvalue lies within its true residual of the exact one (Weyl), no ghosts.
    assert np.all(np.abs(np.asarray(res.eigenvalues) - want) <= true_res + 20 * eps * scale)
    assert int(res.num_matvecs) <= 100 * 21


def test_thick_restart_fewer_vectors_and_comparable_products_float64():
    # A Krylov space of m products contains every thick-restart subspace built from the same
    # m products, so one pass cannot need more products for the same accuracy; thick restart
    # trades a few more products for a basis of 21 vectors instead of one that grows with
    # the products (and O(m N) instead of O(m^2 N) reorthogonalization).
    rng = np.random.default_rng(0)
    A = random_symmetric(rng, _spectrum("negative", _N, rng))
    res = _thick(A, np.float64)
    one_pass = _one_pass_steps_needed(A, _K, 1e-8)
    assert one_pass > 5 * 21  # one pass needs a basis 5x larger than thick restart's
    assert one_pass <= int(res.num_matvecs) <= 1.5 * one_pass
    # A budget too small to converge: reported, never exceeded, best pairs so far returned.
    short = _thick(A, np.float64, num_iters=40)
    assert not bool(short.converged) and int(short.num_matvecs) <= 40
    assert np.all(np.isfinite(short.eigenvalues))
    assert np.max(np.asarray(short.residual_norms)) > 1e-8 * 5.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_thick_restart_invariant_subspaces(dtype):
    # Few distinct eigenvalues: every cycle exhausts Krylov spaces of dimension 3 and
    # continues from fresh directions, so the repeated eigenvalues come with multiplicity.
    rng = np.random.default_rng(1)
    spectrum = np.repeat([-1.0, 2.0, 3.0], [60, 70, 70])
    A = random_symmetric(rng, spectrum)
    res = _thick(A, dtype)
    want = np.r_[-np.ones(_K), 3 * np.ones(_K)]
    np.testing.assert_allclose(res.eigenvalues, want, atol=_tol(dtype, 3.0))
    V, true_res = _true_residuals(A, res)
    np.testing.assert_allclose(V @ V.T, np.eye(2 * _K), atol=50 * np.finfo(dtype).eps)
    assert bool(res.converged) and np.all(true_res <= _tol(dtype, 3.0))
    eye = _thick(np.eye(_N), dtype)  # breaks down at every step
    np.testing.assert_allclose(eye.eigenvalues, np.ones(2 * _K), atol=_tol(dtype, 1.0))
    assert bool(eye.converged) and np.all(np.isfinite(eye.residual_norms))
    if dtype == np.float64:
        # k = N / 2 from each end: the basis is the whole space, one exact cycle.
        B = random_symmetric(rng, np.linspace(-1.0, 1.0, 12))
        full = eigenvalues(jnp.asarray(B), 6, which="both", dense_threshold=0)
        np.testing.assert_allclose(full.eigenvalues, np.linspace(-1.0, 1.0, 12), atol=1e-12)
        assert int(full.num_matvecs) == 12 and int(full.num_restarts) == 0


@pytest.mark.parametrize("dense_threshold", [0, 1000])
def test_eigenvectors_residuals_and_orthonormality(dense_threshold):
    rng = np.random.default_rng(2)
    n = 120
    A = random_symmetric(rng, _spectrum("spread", n, rng))
    res = eigenvalues(
        jnp.asarray(A),
        4,
        which="smallest",
        num_iters=100,
        dense_threshold=dense_threshold,
        return_eigenvectors=True,
    )
    exact = np.linalg.eigvalsh(A)[:4]
    np.testing.assert_allclose(res.eigenvalues, exact, atol=1e-8)
    V = np.asarray(res.eigenvectors)
    assert V.shape == (4, n)
    np.testing.assert_allclose(V @ V.T, np.eye(4), atol=1e-10)
    true_res = np.linalg.norm(A @ V.T - V.T * exact, axis=0)
    np.testing.assert_allclose(true_res, 0.0, atol=1e-7)
    # The reported residuals agree with the true ones to rounding.
    np.testing.assert_allclose(res.residual_norms, true_res, atol=1e-10 * np.abs(A).sum())
    assert int(res.num_matvecs) == (100 if dense_threshold == 0 else 0)


def _mlp_loss(p, X, Y):
    """Squared loss of a 4-8-3 tanh MLP; parameters as a dict or as nested tuples."""
    if isinstance(p, dict):
        a, b, c, d = p["hidden"]["w"], p["hidden"]["b"], p["out"]["w"], p["out"]["b"]
    else:
        (a, b), (c, d) = p
    return 0.5 * jnp.mean(jnp.sum((jnp.tanh(X @ a + b) @ c + d - Y) ** 2, axis=-1))


def _mlp(container="dict", dtype=jnp.float64):
    """The MLP's 67 parameters and a batch of 16; its Hessian there is indefinite."""
    rng = np.random.default_rng(3)
    w1, b1 = rng.standard_normal((4, 8)), 0.1 * rng.standard_normal(8)
    w2, b2 = rng.standard_normal((8, 3)) / 3, 0.1 * rng.standard_normal(3)
    if container == "dict":
        params = {"hidden": {"w": w1, "b": b1}, "out": {"w": w2, "b": b2}}
    else:
        params = ((w1, b1), (w2, b2))
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    X = jnp.asarray(rng.standard_normal((16, 4)), dtype)
    Y = jnp.asarray(rng.standard_normal((16, 3)), dtype)
    return _mlp_loss, params, X, Y


@functools.cache
def _mlp_hessian(container):
    """The oracle: jax.hessian of the loss over the flattened parameters, float64."""
    loss, params, X, Y = _mlp(container, jnp.float64)
    flat, unravel = ravel_pytree(params)
    H = jax.jit(jax.hessian(lambda z: loss(unravel(z), X, Y)))(flat)
    return np.asarray(H, np.float64)


def test_mlp_hessian_extremes_via_operator():
    loss, params, X, Y = _mlp("dict")
    H = _mlp_hessian("dict")
    exact = np.linalg.eigvalsh(H)
    assert exact[0] < 0 < exact[-1]  # an indefinite Hessian: both ends matter
    op = jaxcurv.hessian_operator(loss, params, X, Y)
    res = eigenvalues(
        op, 2, which="both", dense_threshold=0, num_iters=60, return_eigenvectors=True
    )
    want = np.concatenate([exact[:2], exact[-2:]])
    np.testing.assert_allclose(res.eigenvalues, want, atol=1e-8 * np.abs(exact).max())
    # Eigenvectors come back as stacked pytrees shaped like the parameters.
    assert jax.tree.structure(res.eigenvectors) == jax.tree.structure(params)
    assert res.eigenvectors["hidden"]["w"].shape == (4, 4, 8)
    V = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors))
    np.testing.assert_allclose(H @ V.T, V.T * want, atol=1e-7)
    dense = eigenvalues(op, 2, which="both")  # N = 67 <= dense_threshold: eigh of to_dense
    np.testing.assert_allclose(dense.eigenvalues, want, atol=1e-10)
    # Thick restart (a basis of 20 < N vectors, restarted): the three smallest, as pytrees.
    tr = eigenvalues(op, 3, which="smallest", dense_threshold=0, return_eigenvectors=True)
    assert bool(tr.converged) and int(tr.num_restarts) > 0
    np.testing.assert_allclose(tr.eigenvalues, exact[:3], atol=1e-9 * np.abs(exact).max())
    assert jax.tree.structure(tr.eigenvectors) == jax.tree.structure(params)
    V = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tr.eigenvectors))
    lam = np.asarray(tr.eigenvalues)
    true_res = np.linalg.norm(H @ V.T - V.T * lam, axis=0)
    assert np.all(true_res <= 1e-8 * np.abs(lam))  # default float64 tol, relative
    np.testing.assert_allclose(tr.residual_norms, true_res, atol=1e-12 * np.abs(exact).max())


def test_bare_callable_with_tuple_example_float32():
    loss, params, X, Y = _mlp("tuple", jnp.float32)
    exact = np.linalg.eigvalsh(_mlp_hessian("tuple"))

    def matvec(v):
        return jaxcurv.hvp(loss, params, v, X, Y)

    # Thick restart (the default), float32: converged to the default relative tol 1e-5.
    tr = eigenvalues(matvec, 3, example=params, dense_threshold=0, return_eigenvectors=True)
    assert tr.eigenvalues.dtype == jnp.float32 and bool(tr.converged)
    np.testing.assert_allclose(tr.eigenvalues, exact[-3:], atol=1e-4 * np.abs(exact).max())
    V = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tr.eigenvectors), np.float64)
    H = _mlp_hessian("tuple")
    true_res = np.linalg.norm(H @ V.T - V.T * np.asarray(tr.eigenvalues, np.float64), axis=0)
    assert np.all(true_res <= 2e-5 * np.abs(exact[-3:]))
    small = eigenvalues(matvec, 1, which="smallest", example=params)  # dense path, N products
    np.testing.assert_allclose(small.eigenvalues, exact[:1], atol=1e-4 * np.abs(exact).max())
    assert int(small.num_matvecs) == 67


def test_one_compilation_per_configuration_and_jit():
    traces = []
    A = random_symmetric(np.random.default_rng(4), np.linspace(-1.0, 4.0, 50))
    A = jnp.asarray(A)

    def matvec(v):
        traces.append(None)
        return A @ v

    example = jnp.zeros(50)
    first = eigenvalues(matvec, 2, example=example, dense_threshold=0, num_iters=50)
    count = len(traces)
    for seed in (1, 2):
        again = eigenvalues(
            matvec, 2, example=example, key=jax.random.key(seed), dense_threshold=0, num_iters=50
        )
        np.testing.assert_allclose(again.eigenvalues, first.eigenvalues, atol=1e-10)
    assert len(traces) == count  # new keys, same compiled code
    # Thick restart (the default without num_iters): key, tol and budget are traced too.
    thick = eigenvalues(matvec, 2, example=example, dense_threshold=0)
    count = len(traces)
    for seed, tol, budget in ((1, 1e-6, 500), (2, 1e-10, 900)):
        again = eigenvalues(
            matvec,
            2,
            example=example,
            key=jax.random.key(seed),
            dense_threshold=0,
            tol=tol,
            num_iters=budget,
            method="thick-restart",
        )
        assert bool(again.converged)
        np.testing.assert_allclose(again.eigenvalues, thick.eigenvalues, atol=1e-10)
    assert len(traces) == count
    # Operators and matrices are traced arguments: usable inside the caller's jit.
    jitted = jax.jit(lambda M, key: eigenvalues(M, 2, key=key, dense_threshold=0, num_iters=50))
    out = jitted(A, jax.random.key(1))
    exact = np.linalg.eigvalsh(np.asarray(A))[-2:]
    np.testing.assert_allclose(out.eigenvalues, exact, atol=1e-9)
    batched = jax.vmap(lambda M: eigenvalues(M, 2, dense_threshold=0, num_iters=50).eigenvalues)
    np.testing.assert_allclose(batched(jnp.stack([A, 2 * A])), [exact, 2 * exact], atol=1e-9)
    # Thick restart under jit and vmap: each batch member stops on its own convergence.
    B = jnp.asarray(random_symmetric(np.random.default_rng(5), np.linspace(-1.0, 1.0, 50)))
    out = jax.jit(jax.vmap(lambda M: eigenvalues(M, 2, dense_threshold=0)))(jnp.stack([A, B]))
    np.testing.assert_allclose(out.eigenvalues, [exact, [0.959183673, 1.0]], atol=1e-8)
    assert np.all(np.asarray(out.converged))


# ---------------------------------------------------------------------- power iteration


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_power_iteration_top_magnitude_is_signed(dtype):
    rng = np.random.default_rng(5)
    spectrum = np.concatenate([[-10.0, 6.0], rng.uniform(-3, 3, 58)])
    A = jnp.asarray(random_symmetric(rng, spectrum), dtype)
    res = power_iteration(A, key=KEY, tol=1e-4)
    assert bool(res.converged)
    np.testing.assert_allclose(float(res.eigenvalue), -10.0, rtol=1e-6)
    assert float(res.residual_norm) <= 1e-4 * 10.0
    v = np.asarray(res.eigenvector, np.float64)
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, atol=1e-6)
    # Convergence rate |6/10| per step: about log(1e-4)/log(0.6) = 18 steps, not 1000.
    assert 10 < int(res.num_matvecs) < 60


def test_power_iteration_reports_failure_for_plus_minus_pair():
    rng = np.random.default_rng(6)
    A = jnp.asarray(random_symmetric(rng, np.concatenate([[5.0, -5.0], rng.uniform(-1, 1, 58)])))
    res = power_iteration(A, key=KEY, tol=1e-4)
    assert not bool(res.converged) and int(res.num_matvecs) == 1000
    assert np.isfinite(float(res.eigenvalue))


# ------------------------------------------------------------------------ Hutchinson


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hutchinson_trace_within_stated_error(dtype):
    # Budget: 1000 products on a 100 x 100 matrix. Theory: std = sqrt(2 (||A||_F^2 -
    # sum_i A_ii^2) / 1000); the fixed-key estimate must be within 4 std, and the reported
    # stderr within 25% of the theoretical one.
    rng = np.random.default_rng(7)
    A = random_symmetric(rng, rng.uniform(-1.0, 3.0, 100))
    budget = 1000
    sd = np.sqrt(2 * (np.sum(A**2) - np.sum(np.diag(A) ** 2)) / budget)
    est = hutchinson_trace(jnp.asarray(A, dtype), KEY, budget)
    assert abs(float(est.estimate) - np.trace(A)) <= 4 * sd
    np.testing.assert_allclose(float(est.stderr), sd, rtol=0.25)
    assert int(est.num_matvecs) == budget


def test_hutchpp_beats_hutchinson_on_low_rank_plus_noise():
    # 10 large eigenvalues plus small noise: Hutch++ captures the top exactly and leaves
    # only the noise to the random probes. Same budget of 60 products each; mean absolute
    # error over 8 fixed keys.
    rng = np.random.default_rng(8)
    n = 300
    spectrum = np.concatenate([np.geomspace(100, 10, 10), 0.05 * rng.standard_normal(n - 10)])
    A = jnp.asarray(random_symmetric(rng, spectrum))
    exact = spectrum.sum()
    errs = {}
    for method in ("hutchinson", "hutch++"):
        e = []
        for seed in range(8):
            est = hutchinson_trace(A, jax.random.key(seed), 60, method=method)
            assert int(est.num_matvecs) == 60
            e.append(abs(float(est.estimate) - exact))
        errs[method] = np.mean(e)
    assert errs["hutch++"] < errs["hutchinson"] / 20
    assert errs["hutch++"] < 0.5  # the noise part alone has trace std ~ 0.05 * sqrt(2 n / 20)


def test_hutchpp_is_exact_on_low_rank():
    rng = np.random.default_rng(9)
    spectrum = np.concatenate([[5.0, -3.0, 2.0], np.zeros(297)])
    A = jnp.asarray(random_symmetric(rng, spectrum))
    est = hutchinson_trace(A, KEY, 60, method="hutch++")  # a sketch of 20 >= rank 3
    np.testing.assert_allclose(float(est.estimate), 4.0, atol=1e-9)


def test_hutchinson_diagonal_within_stated_error_dense():
    # Budget: 2000 products. Entry i has std sqrt(sum_{j != i} A_ij^2 / 2000); every entry
    # must be within 4.5 of its std (50 entries, fixed key).
    rng = np.random.default_rng(10)
    A = random_symmetric(rng, rng.uniform(0.5, 2.0, 50)) + np.diag(rng.uniform(0, 5, 50))
    budget = 2000
    sd = np.sqrt((np.sum(A**2, axis=1) - np.diag(A) ** 2) / budget)
    est = np.asarray(hutchinson_diagonal(jnp.asarray(A), KEY, budget))
    assert np.all(np.abs(est - np.diag(A)) <= 4.5 * sd)


def test_hutchinson_diagonal_of_mlp_hessian_is_a_pytree_float32():
    dtype = jnp.float32
    loss, params, X, Y = _mlp("dict", dtype)
    op = jaxcurv.hessian_operator(loss, params, X, Y)
    H = _mlp_hessian("dict")
    budget = 3000
    sd = np.sqrt((np.sum(H**2, axis=1) - np.diag(H) ** 2) / budget)
    est = hutchinson_diagonal(op, KEY, budget)
    assert jax.tree.structure(est) == jax.tree.structure(params)
    assert all(e.dtype == dtype for e in jax.tree.leaves(est))
    flat = np.asarray(ravel_pytree(est)[0], np.float64)
    assert np.all(np.abs(flat - np.diag(H)) <= 5 * sd + 1e-5)


# ------------------------------------------------------------------------ SLQ density


def test_spectral_density_matches_exact_spectrum():
    # 20 probes x 40 Lanczos steps = 800 products on N = 400.
    rng = np.random.default_rng(11)
    n = 400
    spectrum = np.concatenate([rng.normal(0.0, 1.0, n - 20), rng.normal(8.0, 0.5, 20)])
    A = random_symmetric(rng, spectrum)
    d = spectral_density(jnp.asarray(A), KEY, num_probes=20, num_lanczos=40, num_grid=1000)
    assert d.nodes.shape == (20, 40) and d.weights.shape == (20, 40)
    np.testing.assert_allclose(np.sum(d.weights, axis=1), 1.0, atol=1e-10)
    grid, dens = np.asarray(d.grid), np.asarray(d.density)
    assert np.all(dens >= 0)
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-4)

    # Moments: Gauss quadrature is exact for degree <= 79 per probe, so the only error is
    # the probes' (Hutchinson) noise: z^T A^p z / N has std sqrt(2 ||A^p||_F^2) / N.
    for p in (1, 2):
        Ap = np.linalg.matrix_power(A, p)
        slq = np.mean(np.sum(np.asarray(d.weights) * np.asarray(d.nodes) ** p, axis=1))
        sd = np.sqrt(2 * np.sum(Ap**2)) / n / np.sqrt(20)
        assert abs(slq - np.mean(spectrum**p)) <= 4 * sd

    # CDF of the quadrature measure vs the exact eigenvalue CDF (Kolmogorov distance).
    ts = np.linspace(spectrum.min(), spectrum.max(), 200)
    exact_cdf = np.mean(spectrum[None, :] <= ts[:, None], axis=1)
    nodes, weights = np.asarray(d.nodes).ravel(), np.asarray(d.weights).ravel() / 20
    slq_cdf = np.sum(weights[None, :] * (nodes[None, :] <= ts[:, None]), axis=1)
    assert np.max(np.abs(slq_cdf - exact_cdf)) < 0.05
    # The outlier bulk at 8 carries 5% of the mass, in the smoothed density too.
    np.testing.assert_allclose(np.trapezoid(dens * (grid > 5), grid), 0.05, atol=0.015)


def test_spectral_density_on_pytree_operator_with_grid():
    loss, params, X, Y = _mlp("tuple")
    op = jaxcurv.hessian_operator(loss, params, X, Y)
    exact = np.linalg.eigvalsh(_mlp_hessian("tuple"))
    grid = jnp.linspace(exact[0] - 1, exact[-1] + 1, 300)
    d = spectral_density(op, KEY, num_probes=2, num_lanczos=67, grid=grid, sigma=0.05)
    np.testing.assert_allclose(d.grid, grid)
    # A full-length Lanczos run sees the whole spectrum: nodes are the exact eigenvalues.
    np.testing.assert_allclose(np.sort(np.asarray(d.nodes[0])), exact, atol=1e-8)
    np.testing.assert_allclose(np.trapezoid(np.asarray(d.density), np.asarray(grid)), 1.0, 1e-3)


# ---------------------------------------------------------------- critical points


def _poly(p, c):
    """c0 x^2 + c1 x y + c2 y^2 + c3 x^4: one function (one compilation) for every case."""
    x, y = p[0], p[1]
    return c[0] * x**2 + c[1] * x * y + c[2] * y**2 + c[3] * x**4


_POLYS = {  # coefficients, expected kind, exact Hessian eigenvalues at 0
    "x^2+y^2": ([1, 0, 1, 0], "minimum", [2.0, 2.0]),
    "-x^2-y^2": ([-1, 0, -1, 0], "maximum", [-2.0, -2.0]),
    "x^2-y^2": ([1, 0, -1, 0], "saddle", [-2.0, 2.0]),
    "x^4+y^2": ([0, 0, 1, 1], "degenerate", [0.0, 2.0]),
    "x^2+3xy+y^2 (the seed's)": ([1, 3, 1, 0], "saddle", [-1.0, 5.0]),
}


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("name", list(_POLYS))
def test_classify_two_dimensional_critical_points(name, dtype):
    coeffs, kind, eigs = _POLYS[name]
    cp = classify_critical_point(_poly, jnp.zeros(2, dtype), jnp.asarray(coeffs, dtype))
    assert cp.kind == kind, cp.reason
    assert cp.method == "dense"
    np.testing.assert_allclose(cp.eigenvalues, eigs, atol=1e-6)  # the seed's: exactly 5, -1
    assert float(cp.gradient_norm) == 0.0
    signs = np.sign(eigs)
    assert (cp.num_positive, cp.num_negative, cp.num_zero) == (
        int(np.sum(signs > 0)),
        int(np.sum(signs < 0)),
        int(np.sum(signs == 0)),
    )
    assert kind.split()[-1] in cp.reason


def test_classify_point_away_from_critical_point():
    c = jnp.array([1.0, 0.0, 1.0, 0.0])  # x^2 + y^2
    cp = classify_critical_point(_poly, jnp.array([1.0, 2.0]), c)
    assert cp.kind == "not critical"
    np.testing.assert_allclose(float(cp.gradient_norm), np.hypot(2.0, 4.0))
    np.testing.assert_allclose(cp.eigenvalues, [2.0, 2.0])  # still reported
    assert "not a critical point" in cp.reason
    # Near the minimum the gradient tolerance decides, relative to max(1, |f|).
    assert classify_critical_point(_poly, jnp.array([1e-9, 0.0]), c).kind == "minimum"
    assert classify_critical_point(_poly, jnp.array([1e-3, 0.0]), c).kind == "not critical"
    loose = classify_critical_point(_poly, jnp.array([1e-3, 0.0]), c, grad_tol=1e-2)
    assert loose.kind == "minimum"


def _quadratic(p, A):
    z = ravel_pytree(p)[0]
    return 0.5 * z @ A @ z


def test_classify_lanczos_path_above_dense_threshold(monkeypatch):
    # N = 300 > dense_threshold = 100: only the extremes, by Lanczos on hessian_operator,
    # at a pytree point. f = x^T A x / 2 has Hessian A and a critical point at 0; A is an
    # argument, so the three cases share one compilation.
    rng = np.random.default_rng(12)
    n = 300
    bulk = rng.uniform(1.0, 2.0, n - 4)
    x = {"a": jnp.zeros(100), "b": jnp.zeros((20, 10))}
    cases = {
        "minimum": np.concatenate([[0.2, 0.3, 6.0, 8.0], bulk]),
        "saddle": np.concatenate([[-0.5, -0.1, 6.0, 8.0], bulk]),
        "maximum": -np.concatenate([[0.2, 0.3, 6.0, 8.0], bulk]),
    }
    traces = []
    impl = spectral._eigenvalues_impl
    monkeypatch.setattr(
        spectral, "_eigenvalues_impl", lambda *a, **k: traces.append(1) or impl(*a, **k)
    )
    for kind, spectrum in cases.items():
        A = jnp.asarray(random_symmetric(rng, spectrum))
        cp = classify_critical_point(_quadratic, x, A, dense_threshold=100, k=2, num_iters=60)
        assert cp.method == "lanczos"
        assert cp.kind == kind, cp.reason
        exact = np.sort(spectrum)
        np.testing.assert_allclose(
            cp.eigenvalues, np.concatenate([exact[:2], exact[-2:]]), atol=1e-8
        )
        if kind == "minimum":
            assert (cp.num_positive, cp.num_negative, cp.num_zero) == (n, 0, 0)
        if kind == "maximum":
            assert (cp.num_positive, cp.num_negative, cp.num_zero) == (0, n, 0)
        if kind == "saddle":
            assert cp.num_positive is None  # only the extremes are known
        assert "Ritz residual" in cp.reason
    assert len(traces) == 1  # new operators of the same shapes reuse the compiled Lanczos


# ------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_with_the_argument_named():
    A = jnp.eye(4)
    with pytest.raises(ValueError, match="which"):
        eigenvalues(A, 1, which="middle")
    with pytest.raises(ValueError, match="k="):
        eigenvalues(A, 0)
    with pytest.raises(ValueError, match="k="):
        eigenvalues(A, 5)
    with pytest.raises(ValueError, match="k="):
        eigenvalues(A, 3, which="both")
    with pytest.raises(TypeError, match="k="):
        eigenvalues(A, 1.5)
    with pytest.raises(ValueError, match="num_iters"):
        eigenvalues(A, 3, num_iters=2)
    with pytest.raises(ValueError, match="num_iters"):
        eigenvalues(A, 1, num_iters=9)
    with pytest.raises(ValueError, match="example"):
        eigenvalues(lambda v: v, 1)
    with pytest.raises(ValueError, match="method"):
        eigenvalues(A, 1, method="arpack")
    with pytest.raises(ValueError, match="tol"):
        eigenvalues(A, 1, tol=-1e-3)
    with pytest.raises(ValueError, match="max_basis"):
        eigenvalues(jnp.eye(50), 10, max_basis=10)
    with pytest.raises(ValueError, match="max_basis"):
        eigenvalues(A, 1, method="lanczos", max_basis=3)
    with pytest.raises(ValueError, match="num_iters"):
        eigenvalues(jnp.eye(50), 10, method="thick-restart", num_iters=5)
    with pytest.raises(TypeError, match="key"):
        eigenvalues(A, 1, key=0)
    with pytest.raises(ValueError, match="square"):
        eigenvalues(jnp.ones((3, 4)), 1)
    with pytest.raises(TypeError, match="floating"):
        eigenvalues(jnp.eye(3, dtype=jnp.int32), 1)
    with pytest.raises(ValueError, match="A\\(v\\)"):
        eigenvalues(lambda v: v[:2], 1, example=jnp.zeros(3), dense_threshold=0)
    with pytest.raises(ValueError, match="method"):
        hutchinson_trace(A, KEY, 10, method="exact")
    with pytest.raises(ValueError, match="num_samples"):
        hutchinson_trace(A, KEY, 2, method="hutch++")
    with pytest.raises(ValueError, match="num_samples"):
        hutchinson_diagonal(A, KEY, 0)
    with pytest.raises(ValueError, match="num_lanczos"):
        spectral_density(A, KEY, num_lanczos=5)
    with pytest.raises(ValueError, match="grid"):
        spectral_density(A, KEY, grid=jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(A, KEY, sigma=0.0)
    with pytest.raises(ValueError, match="tol"):
        power_iteration(A, key=KEY, tol=-1.0)
    with pytest.raises(TypeError, match="key"):
        power_iteration(A, key=None)
    with pytest.raises(ValueError, match="grad_tol"):
        classify_critical_point(lambda p: jnp.sum(p**2), jnp.zeros(2), grad_tol=-1.0)
