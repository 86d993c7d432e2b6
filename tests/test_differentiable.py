"""Differentiable curvature: gradients through ``cg`` and the eigenvalues, and ``tr f(A)``.

Oracles: float64 central finite differences of the same quantity computed densely by
numpy (``np.linalg.solve``, ``np.linalg.eigvalsh``), and closed forms (implicit
differentiation :math:`dx = A^{-1}(db - dA\\, x)`, Hellmann-Feynman :math:`d\\lambda =
v^\\top dA\\, v` with ``v`` from ``np.linalg.eigh``). The finite-difference error bound used
for every tolerance (``_fd_bound``): the central difference of a smooth ``g`` with step
``h`` errs by at most ``h^2 / 6 * max|g'''|`` (truncation) plus ``2 eps |g| / h``
(rounding of the two evaluations; ``eps`` is float64's), with ``max|g'''|`` estimated by a
third difference at a coarser step; a margin of 10 covers the estimate.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from tests.helpers import random_symmetric

EPS = float(np.finfo(np.float64).eps)
MARGIN = 10
H = 1e-5  # ~eps^(1/3): truncation ~1e-10 |g'''|, rounding ~2e-11 |g|


def _fd(g, theta: np.ndarray, h: float = H) -> np.ndarray:
    """Central differences of the numpy function ``g`` along each coordinate."""
    out = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        out[i] = (g(theta + e) - g(theta - e)) / (2 * h)
    return out


def _fd_bound(g, theta: np.ndarray, h: float = H, coarse: float = 1e-2) -> float:
    """MARGIN x (h^2/6 max|g'''| + 2 eps |g| / h), with g''' by a third difference."""
    third = 0.0
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = coarse
        d3 = (g(theta + 2 * e) - 2 * g(theta + e) + 2 * g(theta - e) - g(theta - 2 * e)) / (
            2 * coarse**3
        )
        third = max(third, abs(d3))
    return MARGIN * (h**2 / 6 * third + 2 * EPS * abs(g(theta)) / h)


# ------------------------------------------------------------- a small SPD family A(theta)

N = 8
_rng = np.random.default_rng(0)
B_ = _rng.standard_normal((N, N)) / math.sqrt(N)
C_ = random_symmetric(_rng, np.linspace(-1.0, 1.0, N))
b_ = _rng.standard_normal(N)
c_ = _rng.standard_normal(N)
THETA = np.array([0.7, 0.3])


def A_np(t):
    # SPD for these theta: B B^T t0 >= 0, (1 + t1^2) I dominates the indefinite 0.2 t1 C.
    return B_ @ B_.T * t[0] + np.eye(N) * (1 + t[1] ** 2) + 0.2 * t[1] * C_


def A_jax(t):
    return jnp.asarray(B_ @ B_.T) * t[0] + jnp.eye(N) * (1 + t[1] ** 2) + 0.2 * t[1] * C_


# CG to a residual of 1e-13 ||b||: the solution, hence the gradient, errs by at most
# cond(A) * 1e-13 relative, below 1e-11 here (cond < 20): negligible beside FD's bound.
_CG_TOL = 1e-13


def _solve_value(t, b, **kw):
    x, _ = jaxcurv.cg(lambda v: A_jax(t) @ v, b, tol=_CG_TOL, **kw)
    return jnp.dot(jnp.asarray(c_), x)


def test_cg_gradient_wrt_operator_parameters_and_rhs_matches_finite_differences():
    grad_t, grad_b = jax.jit(jax.grad(_solve_value, argnums=(0, 1)))(
        jnp.asarray(THETA), jnp.asarray(b_)
    )
    g_t = lambda t: c_ @ np.linalg.solve(A_np(t), b_)
    np.testing.assert_allclose(grad_t, _fd(g_t, THETA), rtol=0, atol=_fd_bound(g_t, THETA))
    # In b the function is linear: the derivative is A^{-T} c, in closed form.
    exact_b = np.linalg.solve(A_np(THETA).T, c_)
    np.testing.assert_allclose(grad_b, exact_b, rtol=1e-10)
    # Implicit differentiation's closed form: d/dt c^T x = -(A^{-1} c)^T (dA/dt) x.
    x = np.linalg.solve(A_np(THETA), b_)
    dA = [B_ @ B_.T, 2 * THETA[1] * np.eye(N) + 0.2 * C_]
    closed = [-exact_b @ d @ x for d in dA]
    np.testing.assert_allclose(grad_t, closed, rtol=1e-10)


def test_cg_gradient_wrt_damping_and_independent_of_x0_and_preconditioner():
    t = jnp.asarray(THETA)
    M = lambda r: r / jnp.diag(A_jax(t))  # Jacobi: changes the path, not the solution

    def value(lam, x0):
        x, _ = jaxcurv.cg(lambda v: A_jax(t) @ v, jnp.asarray(b_), x0, tol=_CG_TOL, M=M,
                          damping=lam)  # fmt: skip
        return jnp.dot(jnp.asarray(c_), x)

    lam = 0.25
    g_lam, g_x0 = jax.jit(jax.grad(value, argnums=(0, 1)))(lam, jnp.ones(N))
    # d/dlam c^T (A + lam I)^{-1} b = -c^T (A + lam I)^{-2} b, in closed form.
    shifted = A_np(THETA) + lam * np.eye(N)
    exact = -c_ @ np.linalg.solve(shifted, np.linalg.solve(shifted, b_))
    np.testing.assert_allclose(g_lam, exact, rtol=1e-10)
    np.testing.assert_array_equal(g_x0, np.zeros(N))  # the exact solution ignores x0


def test_cg_forward_mode_and_vmap_of_grad_agree_with_reverse_mode():
    tangent = jnp.array([0.3, -1.0])

    @jax.jit
    def modes(t, b):
        reverse = jax.grad(_solve_value)(t, b)
        _, forward = jax.jvp(lambda s: _solve_value(s, b), (t,), (tangent,))
        batched = jax.vmap(jax.grad(_solve_value), in_axes=(0, None))(jnp.stack([t, 2 * t]), b)
        return reverse, forward, batched

    reverse, forward, batched = modes(jnp.asarray(THETA), jnp.asarray(b_))
    # Both are the same closed form computed by two CG solves to 1e-13: agree to ~1e-11.
    np.testing.assert_allclose(forward, reverse @ tangent, rtol=1e-10)
    np.testing.assert_allclose(batched[0], reverse, rtol=1e-10)
    g = lambda t: c_ @ np.linalg.solve(A_np(t), b_)
    np.testing.assert_allclose(batched[1], _fd(g, 2 * THETA), atol=_fd_bound(g, 2 * THETA))


def test_cg_through_a_hessian_operator_built_from_params():
    # x(p) = H(p)^{-1} b for the Hessian of a convex loss; d/dp c^T x by FD of numpy solves.
    X = np.random.default_rng(1).standard_normal((12, 4))
    b, c = b_[:4], c_[:4]

    def loss(p):
        return jnp.sum(jnp.logaddexp(0.0, jnp.asarray(X) @ p)) + 0.5 * jnp.sum(p**2)

    def value(p):
        x, _ = jaxcurv.cg(jaxcurv.hessian_operator(loss, p), jnp.asarray(b), tol=_CG_TOL)
        return jnp.dot(jnp.asarray(c), x)

    def g(p):  # Hessian of the loss in closed form: X^T diag(s (1 - s)) X + I
        s = 1 / (1 + np.exp(-X @ p))
        return c @ np.linalg.solve(X.T @ ((s * (1 - s))[:, None] * X) + np.eye(4), b)

    p0 = np.array([0.3, -0.2, 0.5, 0.1])
    got = jax.jit(jax.grad(value))(jnp.asarray(p0))
    np.testing.assert_allclose(got, _fd(g, p0), rtol=0, atol=_fd_bound(g, p0))


# --------------------------------------------------------------- the eigenvalue derivative


def _hellmann_feynman(t, which):
    """dlambda/dt by v^T dA v with v from numpy's eigh (simple eigenvalues)."""
    w, V = np.linalg.eigh(A_np(t))
    dA = [B_ @ B_.T, 2 * t[1] * np.eye(N) + 0.2 * C_]
    v = V[:, which]
    return np.array([v @ d @ v for d in dA])


@pytest.mark.parametrize("options", [{"dense_threshold": 0}, {}], ids=["thick-restart", "dense"])
def test_top_eigenvalue_gradient_matches_dense_and_finite_differences(options):
    def top(t):
        op = lambda v: A_jax(t) @ v
        return jaxcurv.eigenvalues(op, 1, example=jnp.zeros(N), **options).eigenvalues[0]

    value, grad = jax.jit(jax.value_and_grad(top))(jnp.asarray(THETA))
    g = lambda t: np.linalg.eigvalsh(A_np(t))[-1]
    # The value is the solver's, unchanged by the derivative's construction.
    np.testing.assert_allclose(value, g(THETA), rtol=1e-8)
    np.testing.assert_allclose(grad, _fd(g, THETA), rtol=0, atol=_fd_bound(g, THETA))
    # Against the dense eigenvector's v^T dA v; the eigenvalue gap here is > 0.1, so the
    # top Ritz vector at tol 1e-8 gives it to ~1e-8 relative (the residual squared over
    # the gap bounds a Rayleigh quotient's error; the vector's error is residual / gap).
    np.testing.assert_allclose(grad, _hellmann_feynman(THETA, -1), rtol=1e-6)


def test_both_ends_and_power_iteration_are_differentiable():
    # One reverse pass through a weighted sum of the four eigenvalues of which="both"
    # (one Lanczos pass of N steps: the whole space) and power iteration's on A^2.
    w = jnp.array([1.0, -2.0, 0.5, 3.0])

    @jax.jit
    @jax.grad
    def weighted(t):
        both = jaxcurv.eigenvalues(
            A_jax(t), 2, which="both", dense_threshold=0, method="lanczos", maxiter=N
        ).eigenvalues
        power = jaxcurv.power_iteration(A_jax(t) @ A_jax(t), tol=1e-10).eigenvalue
        return jnp.dot(w, both) + power

    got = weighted(jnp.asarray(THETA))
    expected = sum(wj * _hellmann_feynman(THETA, j) for wj, j in zip(w, (0, 1, N - 2, N - 1)))
    # Power iteration on A^2 (positive, top eigenvalue separated): d(lambda^2) = 2 lambda
    # dlambda; at tol 1e-10 its Rayleigh quotient and vector are good to ~1e-10 / gap.
    expected = expected + 2 * np.linalg.eigvalsh(A_np(THETA))[-1] * _hellmann_feynman(THETA, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sharpness_as_a_regularizer():
    # jax.grad of loss(p) + c * lambda_max(Hessian of loss at p), the use case,
    # against FD of the same objective computed densely (jax.hessian + numpy eigvalsh).
    X = jnp.asarray(np.random.default_rng(2).standard_normal((10, 5)))

    def loss(p):
        return jnp.mean(jnp.tanh(X @ p) ** 2) + 0.05 * jnp.sum(p**4)

    def objective(p):
        sharpness = jaxcurv.eigenvalues(jaxcurv.hessian_operator(loss, p), 1).eigenvalues[0]
        return loss(p) + 0.5 * sharpness

    dense_hessian = jax.jit(jax.hessian(loss))

    def g(p):
        h = np.asarray(dense_hessian(jnp.asarray(p)))
        return float(loss(jnp.asarray(p))) + 0.5 * np.linalg.eigvalsh(h)[-1]

    p0 = np.array([0.4, -0.3, 0.2, 0.6, -0.1])
    got = jax.jit(jax.grad(objective))(jnp.asarray(p0))
    np.testing.assert_allclose(got, _fd(g, p0), rtol=0, atol=_fd_bound(g, p0))


# ------------------------------------------------------------------------------ tr f(A)


def test_trace_function_log_det_within_stated_error():
    n, s, m = 40, 30, 20
    lam = np.linspace(1.0, 10.0, n)  # SPD, condition number 10
    A = random_symmetric(np.random.default_rng(3), lam)
    F = random_symmetric(np.random.default_rng(3), np.log(lam))  # log(A): the same basis
    exact = float(np.sum(np.log(lam)))
    # Hutchinson's standard deviation with Rademacher probes, in closed form.
    sigma = math.sqrt(2 * (np.sum(F**2) - np.sum(np.diag(F) ** 2)) / s)
    # Quadrature error <= 2 N E_{2m-1}(log) with E_d <= 2 M rho^-d / (rho - 1) on the
    # Bernstein ellipse rho = 1.8 of [1, 10] (log's singularity at 0 lies on rho = 1.925),
    # M = max |log| on it, computed here: ~1e-8, far below sigma.
    rho, phi = 1.8, np.linspace(0, 2 * np.pi, 4000)
    z = (rho * np.exp(1j * phi) + np.exp(-1j * phi) / rho) / 2
    big = np.max(np.abs(np.log(5.5 + 4.5 * z)))
    quad = 2 * n * 2 * big * rho ** -(2 * m - 1) / (rho - 1)
    est = jaxcurv.trace_function(jnp.asarray(A), jax.random.key(4), jnp.log, num_samples=s,
                                 num_steps=m)  # fmt: skip
    assert int(est.num_matvecs) == s * m
    # 4 standard deviations (a 6e-5 chance for a Gaussian) plus the quadrature bound.
    assert abs(float(est.estimate) - exact) <= 4 * sigma + quad, (est, exact, sigma)
    # The reported stderr estimates sigma: with 30 samples its relative error has a
    # standard deviation ~ 1/sqrt(2 * 29) = 13%, so a factor 2 is > 5 of those.
    assert 0.5 * sigma <= float(est.stderr) <= 2 * sigma, (float(est.stderr), sigma)


def test_trace_function_on_a_pytree_operator_is_exact_for_a_diagonal():
    # diag(d) as a callable on a dict: every Rademacher probe sees z^T D^2 z = sum d^2,
    # and a 2-node Gauss rule integrates t^2 exactly: tr(A^2) with no error at all.
    d = {"a": jnp.arange(1.0, 4.0), "b": jnp.arange(4.0, 8.0).reshape(2, 2)}
    op = lambda v: jax.tree.map(jnp.multiply, d, v)
    est = jaxcurv.trace_function(op, jax.random.key(0), jnp.square, example=d, num_steps=2)
    np.testing.assert_allclose(est.estimate, np.sum(np.arange(1.0, 8.0) ** 2), rtol=1e-12)
    assert float(est.stderr) <= 1e-12 * float(est.estimate)
    assert int(est.num_matvecs) == 10 * 2
