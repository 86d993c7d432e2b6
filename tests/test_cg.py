"""Tests for jaxcurv.cg against numpy.linalg.solve, scipy's CG and an independent numpy CG."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as spla

from jaxcurv.cg import CGInfo, CGStatus, cg, cg_record_steps, cg_status_message
from jaxcurv.products import ggn_operator, hessian_operator
from tests.helpers import random_symmetric


def _maybe_jit(fn, use_jit):
    return jax.jit(fn) if use_jit else fn


def spd(n, cond, seed=0):
    rng = np.random.default_rng(seed)
    return random_symmetric(rng, np.logspace(0, math.log10(cond), n)), rng.standard_normal(n)


def np_cg(A, b, x0=None, M=None, maxiter=1000):
    """Textbook preconditioned CG (Nocedal & Wright Alg. 5.3) in float64 numpy.

    Returns the iterates x_0..x_k (stopping before a non-positive-curvature direction or
    when the residual vanishes) and the quadratic values phi(x_i).
    """
    A = np.asarray(A, np.float64)
    b = np.asarray(b, np.float64)
    M = np.eye(b.size) if M is None else np.asarray(M, np.float64)
    x = np.zeros_like(b) if x0 is None else np.asarray(x0, np.float64)
    r = b - A @ x
    z = M @ r
    p = z.copy()
    xs = [x.copy()]
    for _ in range(maxiter):
        pap = p @ A @ p
        if pap <= 0 or np.linalg.norm(r) == 0:
            break
        alpha = (r @ z) / pap
        x = x + alpha * p
        r_new = r - alpha * (A @ p)
        z_new = M @ r_new
        p = z_new + (r_new @ z_new) / (r @ z) * p
        r, z = r_new, z_new
        xs.append(x.copy())
    phis = [0.5 * xi @ A @ xi - b @ xi for xi in xs]
    return xs, phis


def phi(A, b, x):
    x = np.asarray(x, np.float64)
    return 0.5 * x @ A @ x - b @ x


# ------------------------------------------------------------------ SPD solves, dtypes


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("cond", [1e1, 1e3, 1e5])
def test_spd_matches_numpy_and_scipy_float64(cond, use_jit):
    A, b = spd(40, cond)
    tol = 1e-10
    x, info = _maybe_jit(lambda A, b: cg(A, b, tol=tol), use_jit)(jnp.asarray(A), jnp.asarray(b))
    assert isinstance(info, CGInfo)
    assert int(info.status) == CGStatus.CONVERGED and bool(info.converged)
    x_np = np.linalg.solve(A, b)
    # Backward-stable bound: relative error <= cond * relative residual (plus rounding).
    err = np.linalg.norm(np.asarray(x) - x_np) / np.linalg.norm(x_np)
    assert err <= cond * tol * 10
    true_res = np.linalg.norm(b - A @ np.asarray(x))
    assert true_res <= 2 * tol * np.linalg.norm(b)
    np.testing.assert_allclose(float(info.residual_norm), true_res, rtol=0.05, atol=1e-13)
    np.testing.assert_allclose(float(info.quadratic_value), phi(A, b, x), rtol=1e-10)
    assert float(info.curvature) > 0

    steps_sp = []
    x_sp, code = spla.cg(
        A, b, rtol=tol, atol=0.0, maxiter=10 * b.size, callback=lambda xk: steps_sp.append(1)
    )
    assert code == 0
    np.testing.assert_allclose(
        np.asarray(x), x_sp, rtol=0, atol=cond * tol * 10 * np.abs(x_np).max()
    )
    # Same algorithm, same stopping rule: the step counts agree up to rounding.
    assert abs(int(info.num_steps) - len(steps_sp)) <= max(2, len(steps_sp) // 20)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("cond", [1e1, 1e3])
def test_spd_float32(cond, use_jit):
    A, b = spd(30, cond, seed=1)
    A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    x, info = _maybe_jit(lambda A, b: cg(A, b, tol=1e-5), use_jit)(A32, b32)
    assert x.dtype == jnp.float32
    assert info.residual_norm.dtype == jnp.float32 and info.num_steps.dtype == jnp.int32
    assert int(info.status) == CGStatus.CONVERGED
    x_np = np.linalg.solve(A, b)
    err = np.linalg.norm(np.asarray(x, np.float64) - x_np) / np.linalg.norm(x_np)
    assert err <= cond * 1e-4
    assert np.linalg.norm(b - A @ np.asarray(x, np.float64)) <= 1e-4 * np.linalg.norm(b)


def test_jit_and_no_jit_agree_and_single_trace():
    A, b = spd(20, 1e2, seed=2)
    traces = []

    def solve(A, b, lam):
        traces.append(1)
        return cg(A, b, tol=1e-8, damping=lam, stop_rule="martens", record_iterates=True)

    jitted = jax.jit(solve)
    x_j, info_j = jitted(jnp.asarray(A), jnp.asarray(b), 0.5)
    x_e, info_e = solve(jnp.asarray(A), jnp.asarray(b), 0.5)
    np.testing.assert_allclose(np.asarray(x_j), np.asarray(x_e), rtol=1e-10, atol=1e-12)
    assert int(info_j.num_steps) == int(info_e.num_steps)
    # New values (and a new damping) of the same shapes: no retrace.
    jitted(jnp.asarray(A) * 2, jnp.asarray(b) + 1, 0.25)
    jitted(jnp.asarray(A), jnp.asarray(-b), 1.0)
    assert len(traces) == 2  # one jit trace + one eager call


def test_vmap_over_b_dense():
    A, _ = spd(15, 1e2, seed=3)
    B = np.random.default_rng(3).standard_normal((4, 15))
    B[2] = 0.0  # converges at step 0 while the others run on
    X, info = jax.vmap(lambda b: cg(jnp.asarray(A), b, tol=1e-10))(jnp.asarray(B))
    np.testing.assert_allclose(np.asarray(X), np.linalg.solve(A, B.T).T, rtol=1e-7, atol=1e-10)
    assert info.status.shape == (4,)
    assert np.all(np.asarray(info.status) == CGStatus.CONVERGED)
    assert int(info.num_steps[2]) == 0


# ------------------------------------------------------------ negative curvature, damping


@pytest.mark.parametrize("use_jit", [False, True])
def test_indefinite_stops_with_negative_curvature(use_jit):
    rng = np.random.default_rng(4)
    A = random_symmetric(rng, np.concatenate([[-3.0, -0.5], np.linspace(0.5, 5, 28)]))
    b = rng.standard_normal(30)
    x, info = _maybe_jit(lambda A, b: cg(A, b), use_jit)(jnp.asarray(A), jnp.asarray(b))
    assert int(info.status) == CGStatus.NEGATIVE_CURVATURE
    assert np.all(np.isfinite(np.asarray(x)))
    assert float(info.curvature) <= 0
    xs, phis = np_cg(A, b)
    # The last good iterate: the independent CG stops before the same direction.
    assert int(info.num_steps) == len(xs) - 1 >= 1
    np.testing.assert_allclose(np.asarray(x), xs[-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(info.quadratic_value), phis[-1], rtol=1e-9)
    assert float(info.quadratic_value) < 0
    true_res = np.linalg.norm(b - A @ np.asarray(x))
    np.testing.assert_allclose(float(info.residual_norm), true_res, rtol=1e-8)


@pytest.mark.parametrize("with_x0", [False, True])
def test_negative_curvature_at_first_step_returns_descent_direction(with_x0):
    A = np.diag([-2.0, 1.0, 3.0])
    b = np.array([1.0, 0.1, 0.0])  # b^T A b < 0: the first direction already fails
    x0 = np.array([0.0, 0.0, 0.1]) if with_x0 else None
    x, info = cg(jnp.asarray(A), jnp.asarray(b), None if x0 is None else jnp.asarray(x0))
    assert int(info.status) == CGStatus.NEGATIVE_CURVATURE
    start = np.zeros(3) if x0 is None else x0
    r0 = b - A @ start
    np.testing.assert_allclose(np.asarray(x), start + r0, rtol=1e-12)
    assert int(info.num_steps) == 1
    np.testing.assert_allclose(float(info.curvature), r0 @ A @ r0, rtol=1e-12)
    assert phi(A, b, x) < phi(A, b, start)
    np.testing.assert_allclose(float(info.quadratic_value), phi(A, b, x), rtol=1e-12)
    np.testing.assert_allclose(
        float(info.residual_norm), np.linalg.norm(b - A @ np.asarray(x)), rtol=1e-12
    )


@pytest.mark.parametrize("use_jit", [False, True])
def test_damping_equals_solving_shifted_system(use_jit):
    rng = np.random.default_rng(5)
    A = random_symmetric(rng, np.linspace(-1.0, 4.0, 25))  # indefinite
    b = rng.standard_normal(25)
    lam = 1.7
    x, info = _maybe_jit(lambda A, b, lam: cg(A, b, tol=1e-11, damping=lam), use_jit)(
        jnp.asarray(A), jnp.asarray(b), lam
    )
    assert int(info.status) == CGStatus.CONVERGED
    shifted = A + lam * np.eye(25)
    np.testing.assert_allclose(np.asarray(x), np.linalg.solve(shifted, b), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        float(info.residual_norm),
        np.linalg.norm(b - shifted @ np.asarray(x)),
        rtol=0.05,
        atol=1e-14,
    )
    np.testing.assert_allclose(float(info.quadratic_value), phi(shifted, b, x), rtol=1e-10)
    # Without damping the same matrix is indefinite.
    assert int(cg(jnp.asarray(A), jnp.asarray(b))[1].status) == CGStatus.NEGATIVE_CURVATURE


# ----------------------------------------------------------------------- pytrees, M


def _block_problem(seed=6):
    rng = np.random.default_rng(seed)
    K = random_symmetric(rng, np.logspace(0, 2, 7))
    return K, rng.standard_normal(7)


def _dict_operator(K):
    """K acting on {"a": (3,), "w": (2, 2)} block by block, written without flattening."""
    Kaa, Kaw, Kww = jnp.asarray(K[:3, :3]), jnp.asarray(K[:3, 3:]), jnp.asarray(K[3:, 3:])

    def mv(v):
        w = v["w"].reshape(4)
        return {"a": Kaa @ v["a"] + Kaw @ w, "w": (Kaw.T @ v["a"] + Kww @ w).reshape(2, 2)}

    return mv


def _tuple_operator(K):
    Kaa, Kaw, Kww = jnp.asarray(K[:3, :3]), jnp.asarray(K[:3, 3:]), jnp.asarray(K[3:, 3:])
    return lambda v: (Kaa @ v[0] + Kaw @ v[1], Kaw.T @ v[0] + Kww @ v[1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_pytree_rhs_with_block_operator(kind, dtype):
    K, bf = _block_problem()
    sol = np.linalg.solve(K, bf)
    if kind == "dict":
        mv = _dict_operator(K.astype(dtype))
        b = {"a": jnp.asarray(bf[:3], dtype), "w": jnp.asarray(bf[3:].reshape(2, 2), dtype)}
        flat = lambda t: np.concatenate([np.ravel(t["a"]), np.ravel(t["w"])])
    else:
        mv = _tuple_operator(K.astype(dtype))
        b = (jnp.asarray(bf[:3], dtype), jnp.asarray(bf[3:], dtype))
        flat = lambda t: np.concatenate([np.ravel(t[0]), np.ravel(t[1])])
    x, info = jax.jit(lambda b: cg(mv, b, tol=1e-6))(b)
    assert jax.tree.structure(x) == jax.tree.structure(b)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(x))
    assert int(info.status) == CGStatus.CONVERGED
    rtol = 1e-4 if dtype == jnp.float32 else 1e-6
    np.testing.assert_allclose(flat(x), sol, rtol=rtol * 100, atol=rtol * np.abs(sol).max())
    # A pytree warm start at the solution converges without a step.
    _, info0 = cg(mv, b, jax.tree.map(jnp.asarray, x), tol=1e-3)
    assert int(info0.num_steps) == 0 and int(info0.status) == CGStatus.CONVERGED


def test_jacobi_preconditioning_reduces_steps():
    rng = np.random.default_rng(7)
    n = 60
    d = np.logspace(0, 6, n)
    off = rng.standard_normal((n, n)) * 0.05
    off = (off + off.T) / 2
    np.fill_diagonal(off, 0)
    A = np.diag(d) + off * np.sqrt(np.outer(d, d))  # diagonally dominant, cond ~ 1e6
    b = rng.standard_normal(n)
    inv_diag = jnp.asarray(1.0 / np.diag(A))
    tol = 1e-10
    x_plain, info_plain = cg(jnp.asarray(A), jnp.asarray(b), tol=tol)
    x_pre, info_pre = cg(jnp.asarray(A), jnp.asarray(b), tol=tol, M=lambda r: inv_diag * r)
    sol = np.linalg.solve(A, b)
    for x, info in ((x_plain, info_plain), (x_pre, info_pre)):
        assert int(info.status) == CGStatus.CONVERGED
        np.testing.assert_allclose(np.asarray(x), sol, rtol=1e-4, atol=1e-12)
    assert int(info_pre.num_steps) * 3 <= int(info_plain.num_steps)
    # Same preconditioned iteration as scipy (M as a dense matrix this time).
    count = []
    spla.cg(A, b, rtol=tol, atol=0.0, M=np.diag(1 / np.diag(A)), callback=lambda _: count.append(1))
    _, info_dense_m = cg(jnp.asarray(A), jnp.asarray(b), tol=tol, M=jnp.diag(inv_diag))
    assert abs(int(info_dense_m.num_steps) - len(count)) <= 2
    assert int(info_dense_m.num_steps) == int(info_pre.num_steps)


# -------------------------------------------------------------- Martens rule, recording


def test_martens_stop_matches_rule_on_independent_phi():
    rng = np.random.default_rng(8)
    n = 200
    # Moderately conditioned, so that numpy's CG tracks ours to rounding over the whole run
    # and its phi sequence is an exact oracle for where the rule fires.
    A = random_symmetric(rng, np.logspace(-2, 0, n))
    b = rng.standard_normal(n)
    eps = 5e-4
    x, info = cg(
        jnp.asarray(A), jnp.asarray(b), tol=0.0, maxiter=n, stop_rule="martens", martens_eps=eps
    )
    assert int(info.status) == CGStatus.PROGRESS_STALLED
    steps = int(info.num_steps)
    assert 10 < steps < n
    _, phis = np_cg(A, b, maxiter=steps + 5)

    def rule(i):
        k = max(10, math.ceil(0.1 * i))
        return i > k and phis[i] < 0 and (phis[i] - phis[i - k]) / phis[i] < k * eps

    assert rule(steps) and not any(rule(i) for i in range(1, steps))
    np.testing.assert_allclose(float(info.quadratic_value), phi(A, b, x), rtol=1e-8)
    np.testing.assert_allclose(float(info.quadratic_value), phis[steps], rtol=1e-8)
    # The residual rule alone runs on to maxiter on this problem.
    _, info_res = cg(jnp.asarray(A), jnp.asarray(b), tol=0.0, maxiter=2 * steps)
    assert int(info_res.status) == CGStatus.MAX_STEPS and int(info_res.num_steps) == 2 * steps


def test_record_steps_schedule():
    assert cg_record_steps(40) == (5, 7, 9, 11, 15, 19, 25, 32)
    assert cg_record_steps(4) == ()
    steps = cg_record_steps(10**6)
    assert all(s == math.ceil(5 * 1.3**j) for j, s in enumerate(steps))


@pytest.mark.parametrize("use_jit", [False, True])
def test_recorded_iterates_match_numpy_cg(use_jit):
    A, b = spd(60, 10, seed=9)
    maxiter = 40
    x, info = _maybe_jit(
        lambda A, b: cg(A, b, tol=1e-8, maxiter=maxiter, record_iterates=True), use_jit
    )(jnp.asarray(A), jnp.asarray(b))
    rec_steps = cg_record_steps(maxiter)
    assert info.iterates.shape == (len(rec_steps) + 1, 60)
    n_steps = int(info.num_steps)
    steps = np.asarray(info.iterate_steps)
    assert steps.dtype == np.int32
    np.testing.assert_array_equal(steps, [s if s <= n_steps else -1 for s in rec_steps] + [n_steps])
    assert 25 < n_steps < 32  # some slots filled, one empty
    xs, _ = np_cg(A, b, maxiter=n_steps)
    values = np.asarray(info.iterate_values)
    for slot, s in enumerate(steps):
        if s >= 0:
            np.testing.assert_allclose(
                np.asarray(info.iterates[slot]), xs[s], rtol=1e-10, atol=1e-13
            )
            # The recorded model value is phi at that iterate, computed directly here.
            phi = 0.5 * xs[s] @ A @ xs[s] - b @ xs[s]
            np.testing.assert_allclose(values[slot], phi, rtol=1e-10)
        else:
            assert not np.any(np.asarray(info.iterates[slot])) and values[slot] == 0.0
    np.testing.assert_array_equal(np.asarray(info.iterates[-1]), np.asarray(x))
    np.testing.assert_array_equal(values[-1], np.asarray(info.quadratic_value))


def test_recorded_iterates_pytree_and_default_maxiter():
    K, bf = _block_problem()
    b = {"a": jnp.asarray(bf[:3]), "w": jnp.asarray(bf[3:].reshape(2, 2))}
    x, info = cg(_dict_operator(K), b, record_iterates=True)
    r = len(cg_record_steps(10 * 7)) + 1  # default maxiter = 10 * size
    assert info.iterates["a"].shape == (r, 3) and info.iterates["w"].shape == (r, 2, 2)
    np.testing.assert_array_equal(np.asarray(info.iterates["w"][-1]), np.asarray(x["w"]))
    assert cg(_dict_operator(K), b)[1].iterates is None


# ------------------------------------------------ non-finite, singular, extreme scales


def test_nonfinite_product_returns_last_finite_iterate():
    A, b = spd(20, 1e2, seed=10)
    Aj = jnp.asarray(A)
    # The product turns NaN once the direction gets small, i.e. part-way through the run.
    mv = lambda v: Aj @ v + jnp.where(jnp.linalg.norm(v) < 0.05, jnp.nan, 0.0)
    x, info = cg(mv, jnp.asarray(b), tol=1e-12)
    assert int(info.status) == CGStatus.NONFINITE
    assert np.all(np.isfinite(np.asarray(x)))
    xs, _ = np_cg(A, b, maxiter=int(info.num_steps))
    assert int(info.num_steps) >= 1
    np.testing.assert_allclose(np.asarray(x), xs[-1], rtol=1e-7)
    assert "NaN" in info.message


def test_nonfinite_inputs():
    A, b = spd(5, 10)
    b_nan = b.copy()
    b_nan[1] = np.nan
    x, info = cg(jnp.asarray(A), jnp.asarray(b_nan))
    assert int(info.status) == CGStatus.NONFINITE and int(info.num_steps) == 0
    assert np.all(np.isfinite(np.asarray(x)))
    x0 = np.full(5, np.inf)
    x, info = cg(jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0))
    assert int(info.status) == CGStatus.NONFINITE
    np.testing.assert_array_equal(np.asarray(x), 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_singular_psd(dtype):
    rng = np.random.default_rng(11)
    n = 30
    A = random_symmetric(rng, np.concatenate([np.zeros(4), np.logspace(0, 2, n - 4)]))
    # Consistent right-hand side: CG from zero stays in range(A) -> minimum-norm solution.
    b = A @ rng.standard_normal(n)
    x, info = cg(jnp.asarray(A, dtype), jnp.asarray(b, dtype), tol=1e-5)
    assert int(info.status) == CGStatus.CONVERGED
    sol = np.linalg.pinv(A) @ b
    np.testing.assert_allclose(
        np.asarray(x, np.float64), sol, rtol=0, atol=1e-3 * np.abs(sol).max()
    )
    # Inconsistent: phi is unbounded below along the null space -> zero curvature exit.
    b_bad = b + rng.standard_normal(n)
    x, info = cg(jnp.asarray(A, dtype), jnp.asarray(b_bad, dtype))
    assert int(info.status) == CGStatus.NEGATIVE_CURVATURE
    assert np.all(np.isfinite(np.asarray(x)))
    assert np.isfinite(float(info.residual_norm)) and np.isfinite(float(info.quadratic_value))
    assert float(info.quadratic_value) < 0


@pytest.mark.parametrize("scale", [1e-8, 1e8])
def test_extreme_scales_float32(scale):
    A, b = spd(20, 1e2, seed=12)
    sol = np.linalg.solve(A, b)
    A32 = jnp.asarray(A * scale, jnp.float32)
    # Scaling A and b together leaves x alone; scaling b alone scales x.
    for bs, expected in ((b * scale, sol), (b, sol / scale)):
        x, info = cg(A32, jnp.asarray(bs, jnp.float32), tol=1e-5)
        assert int(info.status) == CGStatus.CONVERGED
        assert np.all(np.isfinite(np.asarray(x)))
        np.testing.assert_allclose(
            np.asarray(x, np.float64), expected, rtol=0, atol=1e-3 * np.abs(expected).max()
        )


# ---------------------------------------------------------------- operators from products


def test_hessian_operator_newton_step():
    """Newton step of f(p) = 0.5 p^T Q p + sum(p^4)/4 on a dict: H = Q + 3 diag(p^2)."""
    rng = np.random.default_rng(13)
    Q = random_symmetric(rng, np.linspace(1.0, 10.0, 5))
    Qj = jnp.asarray(Q)

    def f(p):
        v = jnp.concatenate([p["u"], p["v"]])
        return 0.5 * v @ Qj @ v + jnp.sum(v**4) / 4

    p0 = {"u": jnp.asarray(rng.standard_normal(2)), "v": jnp.asarray(rng.standard_normal(3))}
    op = hessian_operator(f, p0)
    v0 = np.concatenate([np.asarray(p0["u"]), np.asarray(p0["v"])])
    H = Q + 3 * np.diag(v0**2)
    g = Q @ v0 + v0**3
    solve = jax.jit(lambda op: cg(op, jax.tree.map(jnp.negative, op.grad), tol=1e-10))
    x, info = solve(op)
    assert int(info.status) == CGStatus.CONVERGED
    got = np.concatenate([np.asarray(x["u"]), np.asarray(x["v"])])
    np.testing.assert_allclose(got, np.linalg.solve(H, -g), rtol=1e-8)
    # A float32 operator with a float64 right-hand side: products run in the operator's
    # dtype, the iteration in b's.
    op32 = hessian_operator(f, jax.tree.map(lambda a: a.astype(jnp.float32), p0))
    x32, info32 = cg(op32, jax.tree.map(jnp.negative, op.grad), tol=1e-5)
    assert x32["u"].dtype == jnp.float64 and int(info32.status) == CGStatus.CONVERGED
    got32 = np.concatenate([np.asarray(x32["u"]), np.asarray(x32["v"])])
    np.testing.assert_allclose(got32, np.linalg.solve(H, -g), rtol=1e-4)


def test_ggn_operator_damped_solve_under_jit():
    rng = np.random.default_rng(14)
    W = rng.standard_normal((8, 4))
    Wj = jnp.asarray(W)
    traces = []

    def solve(op, b, lam):
        traces.append(1)
        return cg(op, b, tol=1e-10, damping=lam, stop_rule="martens")

    solve = jax.jit(solve)
    model_fn = lambda w: jnp.tanh(Wj @ w)
    loss_fn = lambda y: 0.5 * jnp.sum(y**2)
    for seed in (0, 1):
        params = jnp.asarray(np.random.default_rng(seed).standard_normal(4))
        op = ggn_operator(model_fn, loss_fn, params)
        b = jnp.asarray(np.random.default_rng(seed + 10).standard_normal(4))
        x, info = solve(op, b, 0.1)
        J = (1 - np.tanh(W @ np.asarray(params)) ** 2)[:, None] * W  # closed-form Jacobian
        G = J.T @ J + 0.1 * np.eye(4)
        assert int(info.status) == CGStatus.CONVERGED
        np.testing.assert_allclose(np.asarray(x), np.linalg.solve(G, np.asarray(b)), rtol=1e-7)
    assert len(traces) == 1


# -------------------------------------------------------------------- status, messages


def test_messages_say_what_to_try():
    for status in CGStatus:
        assert cg_status_message(int(status)) == status.message
        assert CGStatus.message(int(status)) == status.message
        assert cg_status_message(np.int32(status)) == status.message
    assert "maxiter" in CGStatus.MAX_STEPS.message
    assert "damping" in CGStatus.NEGATIVE_CURVATURE.message
    assert "martens_eps" in CGStatus.PROGRESS_STALLED.message
    A, b = spd(10, 1e3)
    _, info = cg(jnp.asarray(A), jnp.asarray(b), tol=0.0, maxiter=3)
    assert int(info.status) == CGStatus.MAX_STEPS and int(info.num_steps) == 3
    assert info.message == CGStatus.MAX_STEPS.message and not bool(info.converged)
    with pytest.raises(ValueError, match="not a CGStatus"):
        cg_status_message(7)
    with pytest.raises(ValueError, match="one status"):
        cg_status_message(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="tracer"):
        jax.jit(lambda s: len(cg_status_message(s)))(0)


def test_max_steps_iterate_matches_numpy():
    A, b = spd(25, 1e3, seed=15)
    x, info = cg(jnp.asarray(A), jnp.asarray(b), maxiter=6)
    assert int(info.status) == CGStatus.MAX_STEPS
    np.testing.assert_allclose(np.asarray(x), np_cg(A, b, maxiter=6)[0][6], rtol=1e-9)


# ------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"maxiter": 0}, ValueError, r"cg\(maxiter=...\)` must be positive, got 0"),
        ({"maxiter": -1}, ValueError, r"maxiter=...\)` must be positive, got -1"),
        ({"maxiter": 2.5}, TypeError, r"maxiter"),
        ({"tol": -1e-3}, ValueError, r"cg\(tol=...\)"),
        ({"atol": -1.0}, ValueError, r"cg\(atol=...\)"),
        ({"stop_rule": "steps"}, ValueError, r"stop_rule.*'steps'"),
        ({"martens_eps": 0.0}, ValueError, r"martens_eps"),
        ({"M": "jacobi"}, TypeError, r"cg\(M=...\)"),
        ({"M": jnp.eye(3)}, ValueError, r"cg\(M=...\)"),
    ],
)
def test_bad_arguments_raise(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cg(jnp.eye(4), jnp.ones(4), **kwargs)


def test_bad_shapes_raise():
    K, bf = _block_problem()
    b = {"a": jnp.asarray(bf[:3]), "w": jnp.asarray(bf[3:].reshape(2, 2))}
    with pytest.raises(ValueError, match="`x0` must have the same tree structure"):
        cg(_dict_operator(K), b, (b["a"], b["w"]))
    with pytest.raises(ValueError, match=r"`x0` leaf \['w'\] has shape \(4,\)"):
        cg(_dict_operator(K), b, {"a": b["a"], "w": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"`A\(v\)`"):
        cg(lambda v: {"a": v["a"], "w": v["w"].ravel()}, b)
    with pytest.raises(ValueError, match=r"`cg\(b\)` must be a vector of shape \(3,\)"):
        cg(jnp.eye(3), jnp.ones(4))
    with pytest.raises(ValueError, match=r"`cg\(b\)` must be a vector"):
        cg(jnp.eye(3), (jnp.ones(3),))
    with pytest.raises(ValueError, match="square"):
        cg(jnp.ones((3, 4)), jnp.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        cg(lambda v: v, jnp.arange(3))
