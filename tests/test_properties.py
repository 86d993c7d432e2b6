"""Property-based tests: curvature identities on random smooth functions and random pytrees.

Hypothesis draws a pytree layout (dicts, tuples, nested; scalar, vector and matrix leaves)
and a function composed from smooth primitives (sin, cos, tanh, softplus, exp of small
arguments, polynomials, matrix products), all in float64. The properties are identities
that hold for every such function, checked against independent oracles: ``jax.hessian``
(``jacfwd(jacrev)``), ``jax.jacfwd`` of the model with ``jax.hessian`` of the loss for the
Gauss-Newton matrix, numpy's ``eigvalsh`` and float64 finite differences.

Run time is bounded by a settings profile: ``jaxcurv-ci`` (the default: a fixed number of
derandomized examples, no deadline) or ``jaxcurv-thorough`` for a longer local search,
chosen with ``JAXCURV_HYPOTHESIS_PROFILE=jaxcurv-thorough`` (which also shrinks failures).
"""

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import jaxcurv
from jaxcurv.cg import CGStatus, cg
from tests.helpers import fd_jacobian
from tests.test_cg import _norm, _phi_bound, _within

settings.register_profile(
    "jaxcurv-ci",
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No shrinking: a failure reports its example at once instead of spending minutes
    # recompiling smaller ones. Shrink locally with the thorough profile.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
)
settings.register_profile(
    "jaxcurv-thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# Applied per test rather than with settings.load_profile, which would change the
# settings of every other test module in the session.
PROFILE = settings(settings.get_profile(os.environ.get("JAXCURV_HYPOTHESIS_PROFILE", "jaxcurv-ci")))

# --------------------------------------------------------------------------- strategies

# Elementwise primitives whose compositions stay far from overflow on |t| <~ 4.
UNARY = {
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "exp_small": lambda t: jnp.exp(0.3 * t),
    "square": lambda t: 0.5 * t**2,
    "cubic": lambda t: t + t**3 / 6,
    "matmul": None,  # a random (m, m) matrix product, drawn per function
}
LEAF_SHAPES = [(), (1,), (2,), (3,), (2, 2)]


class Problem(NamedTuple):
    x: object  # the point, a pytree of float64 arrays
    A: np.ndarray  # (m, n) first layer over the flattened input
    mats: tuple  # one (m, m) matrix per "matmul" op
    ops: tuple  # names from UNARY
    w: np.ndarray  # (m,) readout
    d: np.ndarray  # (n,) non-negative quadratic term
    seed: int

    @property
    def n(self):
        return ravel_pytree(self.x)[0].size


@st.composite
def problems(draw, max_ops=3):
    shapes = draw(st.lists(st.sampled_from(LEAF_SHAPES), min_size=1, max_size=3))
    layout = draw(st.sampled_from(["dict", "tuple", "nested", "array"]))
    ops = tuple(draw(st.lists(st.sampled_from(sorted(UNARY)), min_size=1, max_size=max_ops)))
    m = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    leaves = [rng.uniform(-1, 1, s) for s in shapes]
    if layout == "array":
        x = jnp.asarray(leaves[0])
    elif layout == "dict":
        x = {f"p{i}": jnp.asarray(leaf) for i, leaf in enumerate(leaves)}
    elif layout == "tuple":
        x = tuple(jnp.asarray(leaf) for leaf in leaves)
    else:
        x = {"a": tuple(jnp.asarray(leaf) for leaf in leaves[:-1]), "b": jnp.asarray(leaves[-1])}
    n = ravel_pytree(x)[0].size
    A = rng.uniform(-1, 1, (m, n)) / math.sqrt(n)
    mats = tuple(rng.uniform(-1, 1, (m, m)) / math.sqrt(m) for op in ops if op == "matmul")
    w = rng.uniform(-1, 1, m)
    d = rng.uniform(0, 1, n)
    return Problem(x, A, mats, ops, w, d, seed)


def _features(prob, x):
    """``ops(... A z)`` with ``z`` the leaves of ``x`` concatenated: an ``(m,)`` vector."""
    z = jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(x)])
    u = prob.A @ z
    mats = iter(prob.mats)
    for op in prob.ops:
        u = next(mats) @ u if op == "matmul" else UNARY[op](u)
    return u, z


def scalar_fn(prob):
    def f(x):
        u, z = _features(prob, x)
        return jnp.dot(prob.w, u) + 0.5 * jnp.dot(prob.d, z * z)

    return f


def vector_fn(prob):
    """A pytree-valued function: ``{"u": (m,) vector, "s": scalar}``."""

    def f(x):
        u, z = _features(prob, x)
        return {"u": u, "s": jnp.sum(jnp.sin(z)) * u[0]}

    return f


def _random_like(x, key):
    return jaxcurv.tree.tree_random_normal(key, x)


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def _dense_blocks(blocks, out_like, in_like):
    """Assemble jax.jacobian-layout blocks (outer: outputs, inner: inputs) into (M, N)."""
    outer = jax.tree.structure(out_like)
    rows = outer.flatten_up_to(blocks)
    dense_rows = []
    for row, o in zip(rows, jax.tree.leaves(out_like)):
        mo = int(np.size(o))
        cols = [
            np.reshape(np.asarray(b), (mo, int(np.size(i))))
            for b, i in zip(jax.tree.leaves(row), jax.tree.leaves(in_like))
        ]
        dense_rows.append(np.concatenate(cols, axis=1))
    return np.concatenate(dense_rows, axis=0)


# Tolerances, each a stated bound times MARGIN (the largest measured error on the CI
# profile is noted with each). EPS is float64's.
MARGIN = 4
EPS = float(np.finfo(np.float64).eps)
# An AD evaluation of these functions (<= 3 unary ops, 4 x 9 and 4 x 4 products, a
# readout, forward and reverse passes and a tangent) takes at most L = 60 floating-point
# operations along any path, each within 2 ulp, so its error is at most ~L eps times the
# largest term it sums; the strategies (|t| <= 3 into at most 3 ops) keep terms within
# C = 1e3 of the result's scale. Bound L C eps, tolerance MARGIN L C eps = 5.3e-11
# (measured: 0.65 eps of the scale).
AD_RTOL = MARGIN * 60 * 1e3 * EPS
# Central differences with step h = 1e-6 (helpers.fd_jacobian): truncation h^2 f3 / 6
# (f3 the third derivative) plus cancellation eps |f| / h, with |f| and f3 within C = 1e3
# of the Jacobian's scale: MARGIN (C eps / h + C h^2 / 6) = 8.9e-7 (measured: 8e-11).
FD_RTOL = MARGIN * (1e3 * EPS / 1e-6 + 1e3 * 1e-12 / 6)


def _close(a, b, scale, rtol=AD_RTOL):
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * max(scale, 1.0))


# ------------------------------------------------------------------------------ hvp


@PROFILE
@given(prob=problems(), seed=st.integers(0, 2**31 - 1))
def test_hvp_is_symmetric(prob, seed):
    f = scalar_fn(prob)
    ku, kv = jax.random.split(jax.random.key(seed))
    u, v = _random_like(prob.x, ku), _random_like(prob.x, kv)
    hu = jaxcurv.hvp(f, prob.x, u)
    hv = jaxcurv.hvp(f, prob.x, v)
    uhv = float(jaxcurv.tree.tree_vdot(u, hv))
    vhu = float(jaxcurv.tree.tree_vdot(v, hu))
    scale = np.linalg.norm(_flat(u)) * np.linalg.norm(_flat(hv)) + np.linalg.norm(
        _flat(v)
    ) * np.linalg.norm(_flat(hu))
    _close(uhv, vhu, scale)


@PROFILE
@given(
    prob=problems(),
    seed=st.integers(0, 2**31 - 1),
    a=st.floats(-3, 3, allow_nan=False),
    b=st.floats(-3, 3, allow_nan=False),
)
def test_hvp_is_linear_in_v(prob, seed, a, b):
    f = scalar_fn(prob)
    ku, kv = jax.random.split(jax.random.key(seed))
    u, v = _random_like(prob.x, ku), _random_like(prob.x, kv)
    combo = jax.tree.map(lambda p, q: a * p + b * q, u, v)
    lhs = _flat(jaxcurv.hvp(f, prob.x, combo))
    rhs = a * _flat(jaxcurv.hvp(f, prob.x, u)) + b * _flat(jaxcurv.hvp(f, prob.x, v))
    _close(lhs, rhs, np.abs(rhs).max() + np.abs(lhs).max())


@PROFILE
@given(prob=problems())
def test_hvp_columns_are_the_dense_hessian(prob):
    f = scalar_fn(prob)
    flat, unravel = ravel_pytree(prob.x)
    eye = jnp.eye(flat.size, dtype=flat.dtype)

    @jax.jit  # one compile per example instead of many eager dispatches
    def all_three(x):
        columns = jax.vmap(lambda e: ravel_pytree(jaxcurv.hvp(f, x, unravel(e)))[0])(eye)
        return columns.T, jaxcurv.hessian(f)(x), jax.hessian(f)(x)

    columns, ours, oracle = all_three(prob.x)  # column i of `columns` is H e_i
    ours = _dense_blocks(ours, prob.x, prob.x)
    oracle = _dense_blocks(oracle, prob.x, prob.x)
    scale = np.abs(oracle).max()
    _close(np.asarray(columns), oracle, scale)
    _close(ours, oracle, scale)
    _close(oracle, oracle.T, scale)


# ------------------------------------------------------------------------------ GGN

LOSSES = {
    "mse": lambda o, t: 0.5 * jnp.sum((o - t) ** 2),
    "softmax_ce": lambda o, t: jax.nn.logsumexp(o) - o[0],
    "sigmoid_ce": lambda o, t: jnp.sum(jax.nn.softplus(o) - jax.nn.sigmoid(t) * o),
    "log_cosh": lambda o, t: jnp.sum(jnp.log(jnp.cosh(o - t))),
}


@PROFILE
@given(prob=problems(), loss=st.sampled_from(sorted(LOSSES)), seed=st.integers(0, 2**31 - 1))
def test_ggn_is_psd_and_equals_jt_h_j(prob, loss, seed):
    m = prob.w.size
    target = np.random.default_rng(seed).uniform(-1, 1, m)

    def model_fn(x):
        return _features(prob, x)[0]

    def loss_fn(o):
        return LOSSES[loss](o, target)

    flat, unravel = ravel_pytree(prob.x)
    v = _random_like(prob.x, jax.random.key(seed))

    @jax.jit
    def compute(x, v):
        op = jaxcurv.ggn_operator(model_fn, loss_fn, x)
        J = jax.jacfwd(lambda z: model_fn(unravel(z)))(ravel_pytree(x)[0])
        H = jax.hessian(loss_fn)(model_fn(x))
        return op.to_dense(), J, H, jaxcurv.ggn_vp(model_fn, loss_fn, x, v)

    G, J, H, gv = compute(prob.x, v)
    G, J, H = np.asarray(G), np.asarray(J), np.asarray(H)
    oracle = J.T @ H @ J
    scale = np.abs(oracle).max()
    _close(G, oracle, scale)
    # G is PSD exactly; entries within AD_RTOL of the scale move eigenvalues by at most
    # n AD_RTOL scale (Weyl, ||E||_2 <= n max|E|).
    floor = -G.shape[0] * AD_RTOL * max(scale, 1.0)
    assert np.linalg.eigvalsh(0.5 * (G + G.T)).min() >= floor
    assert float(jaxcurv.tree.tree_vdot(v, gv)) >= floor * _flat(v) @ _flat(v)
    _close(_flat(gv), oracle @ _flat(v), scale * np.abs(_flat(v)).sum())


# ------------------------------------------------------------------------------- CG


_SOLVERS = {}
_CG_N = 5


def _solver(maxiter):
    """One compiled CG per ``maxiter`` (static), shared by every example of that size."""
    if maxiter not in _SOLVERS:
        _SOLVERS[maxiter] = jax.jit(lambda A, b: cg(A, b, tol=0.0, maxiter=maxiter))
    return _SOLVERS[maxiter]


@st.composite
def symmetric_systems(draw):
    # One size keeps the compiled solvers (one per maxiter) shared by every example; the
    # spectrum is what varies: spread, repeated, singular, indefinite.
    n = _CG_N
    kind = draw(st.sampled_from(["spd", "spd_repeated", "psd_singular", "indefinite"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if kind == "spd":
        eig = 10.0 ** rng.uniform(-2, 2, n)
    elif kind == "spd_repeated":
        eig = np.repeat(10.0 ** rng.uniform(-1, 1, 2), [2, n - 2])
    elif kind == "psd_singular":
        eig = np.concatenate([10.0 ** rng.uniform(-1, 1, n - 1), [0.0]])
    else:
        eig = rng.uniform(-2, 2, n)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (q * eig) @ q.T
    A = 0.5 * (A + A.T)
    b = rng.standard_normal(n)
    return A, b, kind


def _after_n_steps(A, b):
    """MARGIN times the first-order bound on CG's residual after n steps (see below)."""
    lam = np.linalg.eigvalsh(A)
    delta = A.shape[0] * EPS * np.abs(lam).max()
    distinct = [lam[0]]
    for value in lam[1:]:  # eigenvalues closer than the smearing are one cluster
        if value - distinct[-1] > 10 * delta:
            distinct.append(value)
    slopes = [abs(np.prod([1 - li / lj for lj in distinct if lj != li]) / li) for li in distinct]
    return MARGIN * delta * max(slopes) * np.linalg.norm(b)


@PROFILE
@given(system=symmetric_systems())
def test_cg_never_increases_the_quadratic_model(system):
    A, b, kind = system
    n = b.size

    def phi(x):
        return 0.5 * x @ A @ x - b @ x

    def rounding(x):  # of numpy's phi(x): n-term sums, MARGIN n eps of the terms
        return MARGIN * n * EPS * (np.linalg.norm(A, 2) * (x @ x) + np.linalg.norm(b) * _norm(x))

    prev, prev_rounding = 0.0, 0.0  # phi(x0 = 0), exact
    for k in range(1, n + 1):
        x, info = _solver(k)(jnp.asarray(A), jnp.asarray(b))
        x = np.asarray(x)
        assert np.all(np.isfinite(x))
        value = phi(x)
        # Exactly, each CG step lowers phi (by (r^T z)^2 / (2 p^T A p)); only the two
        # evaluations' rounding can reverse the order (measured: never).
        slack = rounding(x) + prev_rounding
        assert value <= prev + slack, (kind, k, value, prev, int(info.status))
        # The recurrence's phi against the direct one: the residual drift (test_cg's
        # _phi_bound; measured: 0.3 eps of the terms).
        _within(float(info.quadratic_value) - value, _phi_bound(A, b, x, k, EPS), "phi")
        prev, prev_rounding = value, rounding(x)
    if kind.startswith("spd"):
        # n steps of exact-arithmetic CG solve an n x n SPD system. In finite precision CG
        # is exact CG on a matrix whose eigenvalues are smeared over intervals of width
        # delta ~ n eps ||A|| around A's (Greenbaum, Linear Algebra Appl. 113, 1989), so
        # after n steps the polynomial p(t) = prod_j (1 - t / lambda_j), zero at A's
        # distinct eigenvalues, leaves a residual of at most delta max_i |p'(lambda_i)|
        # ||b|| to first order -- large when eigenvalues are close.
        _within(np.linalg.norm(A @ x - b), _after_n_steps(A, b), "residual after n steps")
    if int(info.status) == CGStatus.NEGATIVE_CURVATURE:
        assert not kind.startswith("spd")


# ------------------------------------------------------------------------- jacobian


@PROFILE
@given(prob=problems(max_ops=2))
def test_jacobian_modes_agree_with_each_other_and_finite_differences(prob):
    f = vector_fn(prob)
    flat, unravel = ravel_pytree(prob.x)

    @jax.jit
    def compute(x):
        return f(x), {m: jaxcurv.jacobian(f, mode=m)(x) for m in ("fwd", "rev", "auto")}

    out, jacs = compute(prob.x)
    dense = {mode: _dense_blocks(j, out, prob.x) for mode, j in jacs.items()}
    flat_f = jax.jit(lambda z: ravel_pytree(f(unravel(z)))[0])
    oracle = fd_jacobian(lambda z: np.asarray(flat_f(jnp.asarray(z))), flat)
    scale = np.abs(oracle).max()
    for mode in ("fwd", "rev", "auto"):
        _close(dense[mode], dense["fwd"], scale)
        _close(dense[mode], oracle, scale, rtol=FD_RTOL)
