"""Spectral (deflation) preconditioner (jaxcurv.spectral_preconditioner).

Oracles: the closed form ``I + U diag(sigma / (theta + lambda) - 1) U^T`` from
``numpy.linalg.eigh`` of a dense SPD matrix, the closed-form spectrum of ``M A``
(``theta_{k+1..n} + lambda`` and ``sigma`` k times), ``numpy.linalg.solve`` of the damped
system, and a numpy preconditioned CG with the same ``M``. float64 (x64 is on in conftest).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv

N, K, LAM = 40, 6, 1e-2
EPS = float(np.finfo(np.float64).eps)


def _matrix(seed=0):
    """SPD with a spread-out top: eigenvalues 1e-2 ... 1 and six outliers 10 ... 1e3."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(N, N)))
    theta = np.concatenate([np.geomspace(1e-2, 1.0, N - K), np.geomspace(10.0, 1e3, K)])
    return (q * theta) @ q.T, theta, q


def _top(B, k=K):
    theta, q = np.linalg.eigh(B)
    return jnp.asarray(theta[-k:]), jnp.asarray(q[:, -k:].T)  # vectors along axis 0


def _dense(M, n=N):
    return np.asarray(jax.vmap(M)(jnp.eye(n))).T


def _numpy_pcg_steps(A, b, Mm, tol, maxiter=500):
    x, r = np.zeros_like(b), b.copy()
    z = Mm @ r
    p, rz = z.copy(), r @ z
    for k in range(1, maxiter + 1):
        ap = A @ p
        alpha = rz / (p @ ap)
        x, r = x + alpha * p, r - alpha * ap
        if np.linalg.norm(r) <= tol * np.linalg.norm(b):
            return k, x
        z = Mm @ r
        rz, old = r @ z, rz
        p = z + rz / old * p
    return maxiter, x


def test_matches_closed_form_and_spectrum():
    B, theta, _ = _matrix()
    vals, vecs = _top(B)
    M = jaxcurv.spectral_preconditioner((vals, vecs), damping=LAM)
    sigma = float(np.min(np.asarray(vals))) + LAM
    U = np.asarray(vecs).T
    oracle = np.eye(N) + U @ np.diag(sigma / (np.asarray(vals) + LAM) - 1) @ U.T
    np.testing.assert_allclose(_dense(M), oracle, atol=100 * EPS)
    # M A is similar to M^1/2 A M^1/2: the deflated values all become sigma, the rest stay.
    A = B + LAM * np.eye(N)
    got = np.sort(np.linalg.eigvals(oracle @ A).real)
    want = np.sort(np.concatenate([theta[: N - K] + LAM, np.full(K, sigma)]))
    np.testing.assert_allclose(got, want, rtol=1e-9 * np.linalg.cond(A))
    assert np.linalg.eigvalsh((oracle + oracle.T) / 2).min() > 0


def test_cg_same_solution_fewer_steps_as_numpy_pcg():
    B, _, _ = _matrix(1)
    b = jnp.asarray(np.random.default_rng(2).normal(size=N))
    M = jaxcurv.spectral_preconditioner(_top(B), damping=LAM)
    tol = 1e-10
    x0, i0 = jaxcurv.cg(jnp.asarray(B), b, damping=LAM, tol=tol, maxiter=500)
    x1, i1 = jaxcurv.cg(jnp.asarray(B), b, damping=LAM, tol=tol, maxiter=500, M=M)
    A = B + LAM * np.eye(N)
    exact = np.linalg.solve(A, np.asarray(b))
    # A relative residual tol bounds the relative error by cond(A) * tol.
    bound = 10 * np.linalg.cond(A) * tol * np.linalg.norm(exact)
    for x, info in ((x0, i0), (x1, i1)):
        assert bool(info.converged)
        assert np.linalg.norm(np.asarray(x) - exact) <= bound
    steps, _ = _numpy_pcg_steps(A, np.asarray(b), _dense(M), tol)
    assert abs(int(i1.num_steps) - steps) <= 1
    # Six outliers up to 1e3 deflated: the condition number falls from 1e5 to 1e2.
    assert int(i1.num_steps) < int(i0.num_steps)


def test_pytree_eigenvectors_from_eigenvalues_on_a_ggn():
    k = jax.random.split(jax.random.key(0), 3)
    params = {"w": jax.random.normal(k[0], (3, 4)), "b": jnp.zeros(4)}
    x = jax.random.normal(k[1], (10, 3))
    y = jax.random.normal(k[2], (10, 4))
    B = jaxcurv.ggn_operator(
        lambda p: x @ p["w"] + p["b"], lambda f: 0.5 * jnp.mean((f - y) ** 2), params
    )
    top = jaxcurv.eigenvalues(B, 3, return_eigenvectors=True, dense_threshold=0)
    M = jaxcurv.spectral_preconditioner(top, damping=LAM)
    g = jax.tree.map(jnp.ones_like, params)
    x0, _ = jaxcurv.cg(B, g, damping=LAM, tol=1e-12)
    x1, info = jaxcurv.cg(B, g, damping=LAM, tol=1e-12, M=M)
    assert bool(info.converged)
    dense = np.asarray(B.to_dense()) + LAM * np.eye(16)
    exact = np.linalg.solve(dense, np.asarray(ravel_pytree(g)[0]))
    bound = 10 * np.linalg.cond(dense) * 1e-12 * np.linalg.norm(exact)
    for sol in (x0, x1):
        assert np.linalg.norm(np.asarray(ravel_pytree(sol)[0]) - exact) <= bound
    # M as a dense matrix (ravelled like B.to_dense()) is SPD.
    flat, unravel = ravel_pytree(params)
    Md = np.asarray(jax.vmap(lambda e: ravel_pytree(M(unravel(e)))[0])(jnp.eye(flat.size)))
    np.testing.assert_allclose(Md, Md.T, atol=100 * EPS)
    assert np.linalg.eigvalsh(Md).min() > 0


def test_passes_jit_with_traced_damping():
    B, _, _ = _matrix()
    vals, vecs = _top(B)
    r = jnp.asarray(np.random.default_rng(3).normal(size=N))

    @jax.jit
    def apply(lam, r):
        return jaxcurv.spectral_preconditioner((vals, vecs), damping=lam)(r)

    M = jaxcurv.spectral_preconditioner((vals, vecs), damping=LAM)
    np.testing.assert_allclose(apply(LAM, r), M(r), rtol=1e-12)
    np.testing.assert_allclose(jax.jit(lambda M, r: M(r))(M, r), M(r), rtol=1e-12)


def test_hessian_free_takes_it_as_a_callable():
    """On a quadratic with CG run to convergence the step is the Newton step either way."""
    B, _, _ = _matrix(4)
    c = jnp.asarray(np.random.default_rng(5).normal(size=N))
    fn = lambda w: 0.5 * w @ (jnp.asarray(B) @ w) - c @ w  # noqa: E731
    top = _top(B)
    w0 = jnp.zeros(N)
    steps = []
    for pre in (None, lambda p, lam, **kw: jaxcurv.spectral_preconditioner(top, damping=lam)):
        opt = jaxcurv.hessian_free(
            curvature="hessian",
            damping=LAM,
            cg_stop="residual",
            cg_tol=1e-12,
            cg_maxiter=400,
            preconditioner=pre,
            line_search=False,
            adapt_damping=False,
            cg_backtracking=False,
        )
        up, _ = opt.update(jax.grad(fn)(w0), opt.init(w0), w0, value_fn=fn)
        steps.append(np.asarray(up))
    exact = np.linalg.solve(B + LAM * np.eye(N), np.asarray(c))
    for s in steps:
        np.testing.assert_allclose(s, exact, rtol=1e-6 * np.linalg.cond(B + LAM * np.eye(N)))


def test_errors_name_the_argument():
    B, _, _ = _matrix()
    vals, vecs = _top(B)
    no_vectors = jaxcurv.eigenvalues(jnp.asarray(B), 2)
    with pytest.raises(TypeError, match=r"spectral_preconditioner\(eigenpairs\).*return_eigen"):
        jaxcurv.spectral_preconditioner(no_vectors, damping=LAM)
    with pytest.raises(ValueError, match="leading axis of 6"):
        jaxcurv.spectral_preconditioner((vals, vecs[:3]), damping=LAM)
    with pytest.raises(ValueError, match=r"damping=\.\.\.\)` must be non-negative"):
        jaxcurv.spectral_preconditioner((vals, vecs), damping=-1.0)
    with pytest.raises(ValueError, match=r"min\(eigenvalue \+ damping\) > 0"):
        jaxcurv.spectral_preconditioner((-vals, vecs), damping=LAM)
    with pytest.raises(ValueError, match=r"shift=\.\.\.\)` must be positive"):
        jaxcurv.spectral_preconditioner((vals, vecs), damping=LAM, shift=0.0)


# ------------------------------------------------------ hessian_free(preconditioner="spectral")


def _quartic(B, c, s=0.05):
    """``0.5 w.Bw - c.w + s/4 sum w^4``: its Hessian ``B + 3 s diag(w^2)`` moves with ``w``."""
    return lambda w: 0.5 * w @ (jnp.asarray(B) @ w) - c @ w + 0.25 * s * jnp.sum(w**4)


def _hf(**kw):
    opts = dict(curvature="hessian", damping=LAM, adapt_damping=False, line_search=False)
    opts |= dict(cg_stop="residual", cg_tol=1e-10, cg_maxiter=400, cg_backtracking=False)
    return jaxcurv.hessian_free(**(opts | kw))


def _run(opt, fn, w, updates):
    step = jax.jit(lambda w, st: opt.update(jax.grad(fn)(w), st, w, value_fn=fn))
    st, states, points = opt.init(w), [], [w]
    for _ in range(updates):
        up, st = step(w, st)
        w = w + up
        states.append(st)
        points.append(w)
    return states, points


def test_hessian_free_spectral_pairs_refresh_on_schedule():
    B, _, _ = _matrix(6)
    c = jnp.asarray(np.random.default_rng(7).normal(size=N))
    fn = _quartic(B, c)
    opt = _hf(preconditioner="spectral", preconditioner_rank=K, preconditioner_every=2, damping=1.0)
    states, points = _run(opt, fn, jnp.zeros(N), 3)
    assert not any(bool(st.rejected) for st in states)  # the point moves
    for i, st in enumerate(states):
        # Refreshed at updates 0 and 2 from the Hessian where that update started.
        at = points[2 * (i // 2)]
        want = np.linalg.eigvalsh(np.asarray(jax.hessian(fn)(at)))[-K:]
        vals, vecs = st.spectral_pairs
        np.testing.assert_allclose(np.asarray(vals), want, rtol=1e-9)
        assert vecs.shape == (K, N)
    np.testing.assert_array_equal(states[1].spectral_pairs[0], states[0].spectral_pairs[0])
    # The refresh is seen: update 2's Hessian top differs from update 0's beyond the rtol.
    v0, v2 = (np.asarray(states[i].spectral_pairs[0]) for i in (0, 2))
    assert np.max(np.abs(v2 - v0) / v0) > 1e-6


def test_hessian_free_spectral_same_step_fewer_cg_steps():
    B, _, _ = _matrix(8)
    c = jnp.asarray(np.random.default_rng(9).normal(size=N))
    fn = _quartic(B, c, s=0.0)  # a quadratic: the converged step is the damped Newton step
    plain = _run(_hf(), fn, jnp.zeros(N), 1)[0][0]
    spec = _run(_hf(preconditioner="spectral", preconditioner_rank=K), fn, jnp.zeros(N), 1)
    st, (_, w1) = spec[0][0], spec[1]
    A = B + LAM * np.eye(N)
    exact = np.linalg.solve(A, np.asarray(c))
    np.testing.assert_allclose(w1, exact, rtol=10 * np.linalg.cond(A) * 1e-10)
    # Six outliers deflated: the same tolerance in fewer steps.
    assert int(st.cg_steps) < int(plain.cg_steps)


def test_refresh_meeting_nonfinite_curvature_gives_the_identity():
    from jaxcurv.descent import refresh_spectral_pairs

    held = (jnp.ones(2), jnp.ones((2, 4)))
    vals, vecs = refresh_spectral_pairs(jnp.full((4, 4), jnp.nan), held, 0, 1)
    np.testing.assert_array_equal(vals, 0.0)
    np.testing.assert_array_equal(vecs, 0.0)
    M = jaxcurv.spectral_preconditioner((vals, vecs), damping=LAM)
    np.testing.assert_array_equal(M(jnp.arange(4.0)), jnp.arange(4.0))
    # Off schedule the held pairs come back untouched.
    kept = refresh_spectral_pairs(jnp.full((4, 4), jnp.nan), held, 1, 2)
    np.testing.assert_array_equal(kept[1], held[1])


def test_hessian_free_spectral_options_checked():
    with pytest.raises(ValueError, match=r"damping=\.\.\.\)` must be positive with .*spectral"):
        jaxcurv.hessian_free(preconditioner="spectral", damping=0.0)
    with pytest.raises(ValueError, match=r"preconditioner_rank=\.\.\.\)` must be a positive"):
        jaxcurv.hessian_free(preconditioner="spectral", preconditioner_rank=0)
    with pytest.raises(TypeError, match=r"preconditioner_every=\.\.\.\)"):
        jaxcurv.hessian_free(preconditioner="spectral", preconditioner_every=1.5)
