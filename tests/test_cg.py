"""Tests for jaxcurv.cg against numpy.linalg.solve, scipy's CG and an independent numpy CG.

Every tolerance is a stated bound times ``MARGIN``:

* the recurrence residual ``r_k`` drifts from the true ``b - A x_k`` by the rounding of
  each step (Greenbaum, SIAM J. Matrix Anal. Appl. 18(3), 1997: at most ``u O(k) (||A||
  max_j ||x_j|| + ||b||)``, times the product's ``O(n)``); ``_drift`` takes the
  probabilistic form ``sqrt(n) sqrt(k + 1) eps (||A|| ||x|| + ||b||)`` (``||x_j||`` grows
  monotonically in CG from zero, Hestenes and Stiefel 1952, so the last is the largest);
* a converged solve then has ``||b - A x|| <= tol ||b|| + drift``, and ``||x - x*|| <=
  ||A^{-1}|| (tol ||b|| + drift)``: ``_solve_bound``, the forward error predicted from the
  stopping rule, not from the measured residual;
* two finite-precision runs of the same recurrence (ours and the numpy oracle) differ by
  the drift amplified by the conditioning, ``_two_runs`` -- while the Krylov space is far
  from exhausted (``k < n / 2``; every such comparison asserts it): once it fills, the
  runs lose orthogonality differently and their iterates part exponentially (measured on
  a 20 x 20 problem of condition 100: 1e-15 at step 9, 1e-4 at step 20), so converged runs
  are compared by their forward-error bounds instead;
* float32 data are the float64 data rounded: their distance enters as a perturbation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as spla

from jaxcurv._cg_loop import _RUNNING, _init, _Problem, _step
from jaxcurv.cg import CGInfo, CGStatus, cg, cg_record_steps, cg_status_message
from jaxcurv.products import ggn_operator, hessian_operator
from tests.helpers import random_symmetric

# Every tolerance is MARGIN times its stated bound; the bounds are first-order models and
# measure 1e-2 or less of themselves here, so 4x is for machines that round differently.
MARGIN = 4
EPS64 = float(np.finfo(np.float64).eps)


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64)))


def _drift(A, x, b, steps, eps) -> float:
    """MARGIN times the model of ``||(b - A x) - r_rec||`` after ``steps`` CG steps."""
    n = np.size(b)
    scale = np.linalg.norm(A, 2) * _norm(x) + _norm(b)
    return MARGIN * math.sqrt(n) * math.sqrt(steps + 1) * eps * scale


def _oracle(A, x, b) -> float:
    """MARGIN times the rounding of the float64 oracle's own ``b - A x`` and solve."""
    n = np.size(b)
    return MARGIN * n * EPS64 * (np.linalg.norm(A, 2) * _norm(x) + _norm(b))


def _solve_bound(A, b, x, steps, eps, tol, perturbation=0.0) -> float:
    """``||x - x*||`` predicted by the stopping rule: ``||A^{-1}|| (tol ||b|| + drift + ...)``.

    ``perturbation`` bounds ``||(b - A x) - (b' - A' x)||`` when the solver saw other data
    ``A', b'`` (float32-rounded ones: ``||A - A'|| ||x|| + ||b - b'||``).
    """
    inv = 1.0 / np.min(np.abs(np.linalg.eigvalsh(A)))
    residual = tol * _norm(b) + _drift(A, x, b, steps, eps) + perturbation + _oracle(A, x, b)
    return inv * residual


def _two_runs(A, x, steps, eps) -> float:
    """``||x_ours - x_oracle||`` of two runs of k steps: drift amplified by cond(A)."""
    assert steps < np.shape(A)[0] / 2, "two runs part once the Krylov space fills"
    lam = np.abs(np.linalg.eigvalsh(A))
    cond = lam.max() / lam.min()
    return MARGIN * math.sqrt(np.shape(A)[0]) * math.sqrt(steps + 1) * cond * eps * _norm(x)


def _phi_bound(A, b, x, steps, eps) -> float:
    """``|phi_rec - phi(x)|``: ``phi(x) = -x^T (r + b) / 2``, so half the drift times
    ``||x||``, plus the oracle's rounding of the direct ``x^T A x / 2 - b^T x``."""
    size = np.linalg.norm(A, 2) * _norm(x) ** 2 + _norm(b) * _norm(x)
    return 0.5 * _norm(x) * _drift(A, x, b, steps, eps) + MARGIN * np.size(b) * EPS64 * size


def _data_perturbation(A, A_seen, b, b_seen, x) -> float:
    """``||A - A'|| ||x|| + ||b - b'||`` for the data the solver saw (measured)."""
    dA = np.linalg.norm(np.asarray(A_seen, np.float64) - A, 2)
    return dA * _norm(x) + _norm(np.asarray(b_seen, np.float64) - b)


def _within(actual, bound, what: str) -> None:
    """``|actual| <= bound``; the message says by how much it failed."""
    actual = float(np.max(np.abs(np.asarray(actual, np.float64))))
    assert actual <= bound, f"{what}: {actual:.3g} is {actual / bound:.3g} times its bound"


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


def _check_converged_solve(A, b, x, info, tol, eps, perturbation=0.0):
    """A ``CONVERGED`` solve's claims against the float64 oracle (``A``, ``b``)."""
    assert int(info.status) == CGStatus.CONVERGED and bool(info.converged)
    x = np.asarray(x, np.float64)
    k = int(info.num_steps)
    true_res = _norm(b - A @ x)
    drift = _drift(A, x, b, k, eps) + perturbation
    # The reported residual is the recurrence's: the true one up to the drift.
    _within(float(info.residual_norm) - true_res, drift + _oracle(A, x, b), "residual_norm")
    # Converged means what it says: the true residual meets tol up to the drift.
    _within(true_res, tol * _norm(b) + drift + _oracle(A, x, b), "true residual")
    x_star = np.linalg.solve(A, b)
    bound = _solve_bound(A, b, x, k, eps, tol, perturbation)
    _within(_norm(x - x_star), bound, "forward error")
    # phi of the system the solver saw differs from phi(x) by at most ||x|| perturbation.
    phi_bound = _phi_bound(A, b, x, k, eps) + _norm(x) * perturbation
    _within(float(info.quadratic_value) - phi(A, b, x), phi_bound, "phi")
    return k, true_res


# ------------------------------------------------------------------ SPD solves, dtypes


def test_one_step_is_the_hestenes_stiefel_update():
    # A = [[4, 1], [1, 3]], b = [1, 2], x0 = 0, by hand: r0 = p0 = b, A p0 = [6, 7],
    # alpha = r0^T r0 / p0^T A p0 = 5 / 20, x1 = alpha p0 = [1/4, 1/2],
    # r1 = r0 - alpha A p0 = [-1/2, 1/4], beta = r1^T r1 / r0^T r0 = (5/16) / 5 = 1/16,
    # p1 = r1 + beta p0 = [-7/16, 3/8], phi(x1) = x1^T A x1 / 2 - b^T x1 = -5/8.
    A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    b = jnp.array([1.0, 2.0])
    problem = _Problem(
        apply_a=lambda v: A @ v,
        apply_m=lambda r: r,
        preconditioned=False,
        out_like=None,
        thresh2=jnp.asarray(1e-20),
        tiny=jnp.asarray(np.finfo(np.float64).eps),
        maxiter=10,
        martens_eps=None,
        rec_steps=None,
    )
    s0 = _init(problem, b, None, jnp.asarray(True))
    np.testing.assert_array_equal(s0.r, b)
    np.testing.assert_array_equal(s0.p, b)
    assert int(s0.status) == _RUNNING and int(s0.num_matvecs) == 0  # r0 = b: no product
    s1 = _step(problem, s0)
    np.testing.assert_allclose(s1.x, [0.25, 0.5], rtol=1e-15)
    np.testing.assert_allclose(s1.r, [-0.5, 0.25], rtol=1e-15)
    np.testing.assert_allclose(s1.p, [-7 / 16, 3 / 8], rtol=1e-15)
    np.testing.assert_allclose(s1.rr, 5 / 16, rtol=1e-15)
    np.testing.assert_allclose(s1.rz, 5 / 16, rtol=1e-15)
    np.testing.assert_allclose(s1.pmp, s1.p @ s1.p, rtol=1e-15)  # p^T p by recurrence
    np.testing.assert_allclose(s1.curvature, 20.0, rtol=1e-15)
    np.testing.assert_allclose(s1.phi, -5 / 8, rtol=1e-15)
    assert int(s1.i) == 1 and int(s1.status) == _RUNNING and int(s1.num_matvecs) == 1
    # The second step solves the 2 x 2 system exactly and stops on the residual test.
    s2 = _step(problem, s1)
    np.testing.assert_allclose(s2.x, np.linalg.solve(A, b), rtol=1e-14)
    assert int(s2.i) == 2 and int(s2.status) == CGStatus.CONVERGED
    assert int(s2.num_matvecs) == 2


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("cond", [1e1, 1e3, 1e5])
def test_spd_matches_numpy_and_scipy_float64(cond, use_jit):
    A, b = spd(40, cond)
    tol = 1e-10
    x, info = _maybe_jit(lambda A, b: cg(A, b, tol=tol), use_jit)(jnp.asarray(A), jnp.asarray(b))
    assert isinstance(info, CGInfo)
    k, _ = _check_converged_solve(A, b, x, info, tol, EPS64)
    assert float(info.curvature) > 0

    steps_sp = []
    x_sp, code = spla.cg(
        A, b, rtol=tol, atol=0.0, maxiter=10 * b.size, callback=lambda xk: steps_sp.append(1)
    )
    assert code == 0
    # Both meet the same stopping rule: each within its forward-error bound of x*.
    both = _solve_bound(A, b, x_sp, len(steps_sp), EPS64, tol) + _solve_bound(
        A, b, np.asarray(x), k, EPS64, tol
    )
    _within(np.asarray(x) - x_sp, both, "ours against scipy")
    # Same algorithm, same stopping rule: the step counts agree up to rounding, which can
    # move the stop by a step or two near the threshold (CG residuals are not monotone)
    # and, over the ~150 steps at cond 1e5, shift the convergence curve by a few percent.
    assert abs(k - len(steps_sp)) <= max(2, len(steps_sp) // 20)


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("cond", [1e1, 1e3])
def test_spd_float32(cond, use_jit):
    A, b = spd(30, cond, seed=1)
    A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    x, info = _maybe_jit(lambda A, b: cg(A, b, tol=1e-5), use_jit)(A32, b32)
    assert x.dtype == jnp.float32
    assert info.residual_norm.dtype == jnp.float32 and info.num_steps.dtype == jnp.int32
    # The solver saw the float32-rounded A and b: their distance is a perturbation.
    moved = _data_perturbation(A, A32, b, b32, x)
    _check_converged_solve(A, b, x, info, 1e-5, _eps(np.float32), moved)


def test_jit_and_no_jit_agree_and_single_trace():
    A, b = spd(20, 1e2, seed=2)
    traces = []

    def solve(A, b, lam):
        traces.append(1)
        return cg(A, b, tol=1e-8, damping=lam, stop_rule="martens", record_iterates=True)

    jitted = jax.jit(solve)
    x_j, info_j = jitted(jnp.asarray(A), jnp.asarray(b), 0.5)
    x_e, info_e = solve(jnp.asarray(A), jnp.asarray(b), 0.5)
    # The same computation compiled whole or op by op: it rounds differently only where
    # XLA fuses differently. Both converged, past n / 2 steps: each is within its forward
    # error bound of x*, and they stop within a step of each other.
    shifted = A + 0.5 * np.eye(20)
    both = sum(
        _solve_bound(shifted, b, np.asarray(x), int(info.num_steps), EPS64, 1e-8)
        for x, info in ((x_j, info_j), (x_e, info_e))
    )
    _within(np.asarray(x_j) - np.asarray(x_e), both, "jit vs eager")
    assert abs(int(info_j.num_steps) - int(info_e.num_steps)) <= 1
    # New values (and a new damping) of the same shapes: no retrace.
    jitted(jnp.asarray(A) * 2, jnp.asarray(b) + 1, 0.25)
    jitted(jnp.asarray(A), jnp.asarray(-b), 1.0)
    assert len(traces) == 2  # one jit trace + one eager call


def test_vmap_over_b_dense():
    A, _ = spd(15, 1e2, seed=3)
    B = np.random.default_rng(3).standard_normal((4, 15))
    B[2] = 0.0  # converges at step 0 while the others run on
    X, info = jax.vmap(lambda b: cg(jnp.asarray(A), b, tol=1e-10))(jnp.asarray(B))
    assert info.status.shape == (4,)
    assert np.all(np.asarray(info.status) == CGStatus.CONVERGED)
    for j in range(4):
        one = jax.tree.map(lambda a, j=j: a[j], info)
        _check_converged_solve(A, B[j], np.asarray(X[j]), one, 1e-10, EPS64)
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
    k = int(info.num_steps)
    assert k == len(xs) - 1 >= 1
    x = np.asarray(x)
    _within(x - xs[-1], _two_runs(A, xs[-1], k, EPS64), "iterate")
    _within(float(info.quadratic_value) - phis[-1], _phi_bound(A, b, x, k, EPS64), "phi")
    assert float(info.quadratic_value) < 0
    true_res = _norm(b - A @ x)
    _within(float(info.residual_norm) - true_res, _drift(A, x, b, k, EPS64), "residual")


@pytest.mark.parametrize("with_x0", [False, True])
def test_negative_curvature_at_first_step_returns_descent_direction(with_x0):
    A = np.diag([-2.0, 1.0, 3.0])
    b = np.array([1.0, 0.1, 0.0])  # b^T A b < 0: the first direction already fails
    x0 = np.array([0.0, 0.0, 0.1]) if with_x0 else None
    x, info = cg(jnp.asarray(A), jnp.asarray(b), None if x0 is None else jnp.asarray(x0))
    assert int(info.status) == CGStatus.NEGATIVE_CURVATURE
    start = np.zeros(3) if x0 is None else x0
    r0 = b - A @ start
    # One step, a handful of roundings of 3-term sums: (n + 1) eps of the terms' sizes.
    one = MARGIN * 4 * EPS64
    scale = np.linalg.norm(A, 2) * _norm(start) + _norm(b)
    _within(np.asarray(x) - (start + r0), one * scale, "x0 + r0")
    assert int(info.num_steps) == 1
    _within(float(info.curvature) - r0 @ A @ r0, one * 3.0 * _norm(r0) ** 2, "curvature")
    assert phi(A, b, x) < phi(A, b, start)
    _within(float(info.quadratic_value) - phi(A, b, x), _phi_bound(A, b, x, 1, EPS64), "phi")
    true_res = _norm(b - A @ np.asarray(x))
    _within(float(info.residual_norm) - true_res, _drift(A, x, b, 1, EPS64), "residual")


@pytest.mark.parametrize("use_jit", [False, True])
def test_damping_equals_solving_shifted_system(use_jit):
    rng = np.random.default_rng(5)
    A = random_symmetric(rng, np.linspace(-1.0, 4.0, 25))  # indefinite
    b = rng.standard_normal(25)
    lam = 1.7
    x, info = _maybe_jit(lambda A, b, lam: cg(A, b, tol=1e-11, damping=lam), use_jit)(
        jnp.asarray(A), jnp.asarray(b), lam
    )
    _check_converged_solve(A + lam * np.eye(25), b, x, info, 1e-11, EPS64)
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
    K_seen = K.astype(dtype)
    if kind == "dict":
        mv = _dict_operator(K_seen)
        b = {"a": jnp.asarray(bf[:3], dtype), "w": jnp.asarray(bf[3:].reshape(2, 2), dtype)}
        flat = lambda t: np.concatenate([np.ravel(t["a"]), np.ravel(t["w"])])
    else:
        mv = _tuple_operator(K_seen)
        b = (jnp.asarray(bf[:3], dtype), jnp.asarray(bf[3:], dtype))
        flat = lambda t: np.concatenate([np.ravel(t[0]), np.ravel(t[1])])
    x, info = jax.jit(lambda b: cg(mv, b, tol=1e-6))(b)
    assert jax.tree.structure(x) == jax.tree.structure(b)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(x))
    moved = _data_perturbation(K, K_seen, bf, flat(b), flat(x))
    _check_converged_solve(K, bf, flat(x), info, 1e-6, _eps(dtype), moved)
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
    for x, info in ((x_plain, info_plain), (x_pre, info_pre)):
        _check_converged_solve(A, b, x, info, tol, EPS64)
    # The claim is the cost: Jacobi takes a third of the steps or fewer (cond 1e6 -> ~1).
    assert int(info_pre.num_steps) * 3 <= int(info_plain.num_steps)
    # Same preconditioned iteration as scipy (M as a dense matrix this time): step counts
    # within rounding's couple of steps of the stopping threshold.
    count = []
    spla.cg(A, b, rtol=tol, atol=0.0, M=np.diag(1 / np.diag(A)), callback=lambda _: count.append(1))
    _, info_dense_m = cg(jnp.asarray(A), jnp.asarray(b), tol=tol, M=jnp.diag(inv_diag))
    assert abs(int(info_dense_m.num_steps) - len(count)) <= 2
    # diag(d) @ r adds exact zeros to d_i r_i: the same bits as d * r, the same steps.
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
    assert steps < n / 2  # the regime where the numpy run is an oracle (see _two_runs)
    xs, phis = np_cg(A, b, maxiter=steps + 5)
    x = np.asarray(x)

    # Our phi and the oracle's differ by at most dphi (two runs of the recurrence plus the
    # drift), so the rule's decision is the oracle's wherever its test value clears the
    # threshold by more than that perturbation of a ratio of phis -- checked, then used.
    def dphi(i):
        xi = xs[i]
        moved = _norm(A @ xi - b) * _two_runs(A, xi, i, EPS64)  # grad phi . (x - x_np)
        return _phi_bound(A, b, xi, i, EPS64) + moved

    def rule(i):
        k = max(10, math.ceil(0.1 * i))
        return i > k and phis[i] < 0 and (phis[i] - phis[i - k]) / phis[i] < k * eps

    # The rule's value (phi_i - phi_{i-k}) / phi_i moves by about 2 dphi / |phi_i| when
    # both phis move by dphi: where it clears k eps by more, its decision is rounding-proof.
    for i in range(11, steps + 1):
        k = max(10, math.ceil(0.1 * i))
        clearance = abs((phis[i] - phis[i - k]) / phis[i] - k * eps) * abs(phis[i]) / 2
        assert clearance > dphi(i) + dphi(i - k), f"step {i}: the rule is within rounding"
    assert rule(steps) and not any(rule(i) for i in range(1, steps))
    _within(float(info.quadratic_value) - phi(A, b, x), _phi_bound(A, b, x, steps, EPS64), "phi")
    _within(float(info.quadratic_value) - phis[steps], dphi(steps), "phi against the oracle's")
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
            got = np.asarray(info.iterates[slot])
            _within(got - xs[s], _two_runs(A, xs[s], s, EPS64), f"iterate {s}")
            # The recorded model value is phi at that iterate, computed directly here.
            _within(values[slot] - phi(A, b, got), _phi_bound(A, b, got, s, EPS64), f"phi {s}")
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
    # The product turns NaN once the direction gets small, i.e. part-way through the run
    # (at step 8 of 20: early enough for the numpy run to be an oracle of the iterate).
    mv = lambda v: Aj @ v + jnp.where(jnp.linalg.norm(v) < 0.5, jnp.nan, 0.0)
    x, info = cg(mv, jnp.asarray(b), tol=1e-12)
    assert int(info.status) == CGStatus.NONFINITE and not bool(info.converged)
    assert np.all(np.isfinite(np.asarray(x)))
    k = int(info.num_steps)
    xs, _ = np_cg(A, b, maxiter=k)
    assert k >= 1
    _within(np.asarray(x) - xs[-1], _two_runs(A, xs[-1], k, EPS64), "last finite iterate")
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


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_matrix_is_never_converged(value):
    # Issue 11: no NaN or inf is ever "converged"; x stays finite.
    A, b = spd(5, 10)
    A[1, 3] = A[3, 1] = value
    x, info = cg(jnp.asarray(A), jnp.asarray(b))
    assert int(info.status) == CGStatus.NONFINITE and not bool(info.converged)
    assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_singular_psd(dtype):
    rng = np.random.default_rng(11)
    n = 30
    eig = np.concatenate([np.zeros(4), np.logspace(0, 2, n - 4)])
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (q * eig) @ q.T
    null = q[:, :4]  # an orthonormal basis of A's null space
    # Consistent right-hand side: CG from zero stays in range(A) -> minimum-norm solution.
    b = A @ rng.standard_normal(n)
    A_seen, b_seen = jnp.asarray(A, dtype), jnp.asarray(b, dtype)
    x, info = cg(A_seen, b_seen, tol=1e-5)
    assert int(info.status) == CGStatus.CONVERGED
    x = np.asarray(x, np.float64)
    k, eps = int(info.num_steps), _eps(dtype)
    sol = np.linalg.pinv(A) @ b
    # On range(A) the error is ||A^+|| (tol ||b|| + drift + data rounding), with ||A^+|| = 1
    # (the smallest non-zero eigenvalue); off it, x holds only what rounding pushed into
    # the null space, where CG never reduces it: each step's update rounds by sqrt(n) eps
    # relative, amplified by A's condition on its range (100), adding up as sqrt(k + 1).
    moved = _data_perturbation(A, A_seen, b, b_seen, x)
    on_range = 1e-5 * _norm(b) + _drift(A, x, b, k, eps) + moved + _oracle(A, x, b)
    drift_null = MARGIN * math.sqrt(n) * math.sqrt(k + 1) * 100 * eps * _norm(x)
    _within(null.T @ x, drift_null, "null-space component")
    _within(x - null @ (null.T @ x) - sol, on_range, "range component")
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
    A32 = jnp.asarray(A * scale, jnp.float32)
    # Scaling A and b together leaves x alone; scaling b alone scales x.
    for bs in (b * scale, b):
        b32 = jnp.asarray(bs, jnp.float32)
        x, info = cg(A32, b32, tol=1e-5)
        assert np.all(np.isfinite(np.asarray(x)))
        moved = _data_perturbation(A * scale, A32, bs, b32, x)
        _check_converged_solve(A * scale, bs, x, info, 1e-5, _eps(np.float32), moved)


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
    flat = lambda t: np.concatenate([np.asarray(t["u"], np.float64), np.asarray(t["v"])])
    solve = jax.jit(lambda op: cg(op, jax.tree.map(jnp.negative, op.grad), tol=1e-10))
    x, info = solve(op)
    # The operator's AD products and gradient differ from the closed forms by rounding:
    # measured, and a perturbation of the system.
    moved = _data_perturbation(H, op.to_dense(), -g, -flat(op.grad), flat(x))
    _check_converged_solve(H, -g, flat(x), info, 1e-10, EPS64, moved)
    # A float32 operator with a float64 right-hand side: products run in the operator's
    # dtype (at the float32-rounded point), the iteration in b's; a product rounds to
    # sqrt(n) eps32 ||H|| ||x|| besides its matrix's distance to H.
    op32 = hessian_operator(f, jax.tree.map(lambda a: a.astype(jnp.float32), p0))
    x32, info32 = cg(op32, jax.tree.map(jnp.negative, op.grad), tol=1e-5)
    assert x32["u"].dtype == jnp.float64
    product = MARGIN * math.sqrt(5) * _eps(np.float32) * np.linalg.norm(H, 2) * _norm(flat(x32))
    moved = _data_perturbation(H, op32.to_dense(), -g, -flat(op.grad), flat(x32)) + product
    _check_converged_solve(H, -g, flat(x32), info32, 1e-5, EPS64, moved)


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
        b = np.random.default_rng(seed + 10).standard_normal(4)
        x, info = solve(op, jnp.asarray(b), 0.1)
        J = (1 - np.tanh(W @ np.asarray(params)) ** 2)[:, None] * W  # closed-form Jacobian
        G = J.T @ J + 0.1 * np.eye(4)
        moved = _data_perturbation(G, np.asarray(op.to_dense()) + 0.1 * np.eye(4), b, b, x)
        _check_converged_solve(G, b, x, info, 1e-10, EPS64, moved)
    assert len(traces) == 1


# ------------------------------------------------------- float16 and bfloat16 (issue 11)

_D = np.arange(1.0, 11.0)  # SPD diag(1, ..., 10): cond 10, ||A^{-1}|| = 1


def _low_b(kind, dtype):
    rng = np.random.default_rng(17)
    values = {
        "ones": np.ones(10),
        "norm 316 (b^T b overflowed float16)": 100 * np.ones(10),
        "random": 10 * rng.standard_normal(10),
        "near float16's max": 6e4 * np.ones(10),
        "small": 1e-3 * np.ones(10),
    }[kind]
    return jnp.asarray(values, dtype)


@pytest.mark.parametrize("operator", ["dense", "callable"])
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize(
    "kind", ["ones", "norm 316 (b^T b overflowed float16)", "random", "near float16's max", "small"]
)
def test_low_precision_solves_in_float32(kind, dtype, operator):
    # Issue 11: in float16, b^T b overflowed for ||b|| > 256 (NONFINITE at step 0, x = 0),
    # and the SPD diag(1..10) reported negative curvature once directions underflowed.
    b = _low_b(kind, dtype)
    b64 = np.asarray(b, np.float64)  # the data the solver saw, exactly
    if operator == "dense":
        A = jnp.diag(jnp.asarray(_D, dtype))
    else:
        d = jnp.asarray(_D, dtype)
        A = lambda v: d * v  # products rounded to dtype
    x, info = cg(A, b)
    assert int(info.status) == CGStatus.CONVERGED, info.message
    assert x.dtype == dtype and info.residual_norm.dtype == jnp.float32
    x_star = b64 / _D  # numpy's float64 solve of the diagonal system
    u = _eps(dtype) / 2  # unit roundoff of dtype
    # The float32 iteration meets tol = 1e-5 up to float32 drift; a dense low-precision
    # matrix is exact in float32, a callable's products each round to dtype (relative u,
    # input and output: at most 2 u ||A|| ||p|| per product), which the recurrence does not
    # see: their sum over the run, 2 u ||A|| sum_j ||x_{j+1} - x_j|| (Greenbaum 1997),
    # taken from the oracle's iterates. ||A^{-1}|| = 1; the final cast rounds x by u.
    xs, _ = np_cg(np.diag(_D), b64)
    path = sum(_norm(xs[j + 1] - xs[j]) for j in range(len(xs) - 1))
    products = 0.0 if operator == "dense" else MARGIN * 2 * u * 10.0 * path
    steps = int(info.num_steps)
    residual = 1e-5 * _norm(b64) + _drift(np.diag(_D), x_star, b64, steps, _eps(np.float32))
    error = np.abs(np.asarray(x, np.float64) - x_star)
    _within(error, residual + products + MARGIN * u * np.abs(x_star).max(), "x")


def test_low_precision_iterate_that_overflows_is_not_returned():
    # x = b / d reaches 1e5 > 65504: the iterate that would overflow float16 stops the run,
    # and the last representable one comes back.
    b = jnp.full(4, 100.0, jnp.float16)
    x, info = cg(jnp.diag(jnp.full(4, 1e-3, jnp.float16)), b)
    assert int(info.status) == CGStatus.NONFINITE and not bool(info.converged)
    assert x.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(x)))


def test_low_precision_records_and_warm_starts_in_its_dtype():
    b = jnp.asarray(100 * np.ones(10), jnp.bfloat16)
    A = jnp.diag(jnp.asarray(_D, jnp.bfloat16))
    x, info = cg(A, b, x0=jnp.ones(10, jnp.bfloat16), record_iterates=True)
    assert int(info.status) == CGStatus.CONVERGED
    assert info.iterates.dtype == jnp.bfloat16 and info.iterate_values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(info.iterates[-1]), np.asarray(x))


# -------------------------------------------------- symmetric matrices only (issue 11)


def test_non_symmetric_dense_matrix_is_refused():
    with pytest.raises(ValueError, match="not symmetric") as info:
        cg(jnp.array([[1.0, 10.0], [0.0, 2.0]]), jnp.ones(2))
    message = str(info.value)
    assert "`cg(A)`" in message and "max|A - A^T| / max|A| = 10 / 10 = 1" in message
    assert "(A + A.T) / 2" in message and "positive-definite" in message
    # Rounding-level asymmetry passes: a float32 Gram matrix, formed by a matmul.
    J = jnp.asarray(np.random.default_rng(18).standard_normal((40, 20)), jnp.float32)
    _, info = cg(J.T @ J + jnp.eye(20, dtype=jnp.float32), jnp.ones(20, jnp.float32))
    assert int(info.status) == CGStatus.CONVERGED


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
    xs, _ = np_cg(A, b, maxiter=6)
    _within(np.asarray(x) - xs[6], _two_runs(A, xs[6], 6, EPS64), "iterate 6")


# ------------------------------------------------------------------ num_matvecs (issue 12)


_CALLS: list[int] = []


def _count(_):
    _CALLS.append(1)


def _counted(M):
    # One callback object for every matrix: the jaxprs of the cases agree, so the compile
    # cache serves them all (a new lambda per case would compile each).
    def matvec(v):
        jax.debug.callback(_count, v)
        return M @ v

    return matvec


def test_num_matvecs_counts_every_product_with_a():
    # A counter on the host, bumped by every product XLA actually executes (a debug
    # callback runs once per evaluation, inside the while loop too): the oracle for
    # info.num_matvecs, on the plain loop (top level) and on the implicit-differentiation
    # wrapper (under jit), which must run the primal solve alone.
    A, b = spd(12, 1e2, seed=3)
    indefinite = random_symmetric(np.random.default_rng(4), np.linspace(-1.0, 3.0, 12))
    cases = {
        # name: (A, x0, the expected count in closed form)
        "zero start": (A, None, lambda info: int(info.num_steps)),
        "x0 given": (A, np.ones(12), lambda info: int(info.num_steps) + 1),
        "start at the solution": (A, np.linalg.solve(A, b), lambda info: 1),
        # The step that meets negative curvature spent its product and did not move.
        "negative curvature": (indefinite, None, lambda info: int(info.num_steps) + 1),
    }
    jitted = jax.jit(lambda M, b, x0: cg(_counted(M), b, x0, tol=1e-10))
    for name, (M, x0, expected) in cases.items():
        x0 = None if x0 is None else jnp.asarray(x0)
        for how, solve in (
            ("top level", lambda M, b, x0: cg(_counted(M), b, x0, tol=1e-10)),
            ("jit", jitted),
        ):
            if how == "jit" and x0 is None:
                continue  # one jit configuration is enough
            _CALLS.clear()
            x, info = solve(jnp.asarray(M), jnp.asarray(b), x0)
            jax.block_until_ready(x)
            jax.effects_barrier()
            assert int(info.num_matvecs) == len(_CALLS) == expected(info), (name, how)
    assert int(info.status) == CGStatus.NEGATIVE_CURVATURE
