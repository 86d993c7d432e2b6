"""``loop="host"`` with probes in lockstep blocks (issue 17 item 6), and the new ``loop=``
of ``hutchinson_diagonal`` and ``trace_function``.

Oracles: the dense matrix (``to_dense`` of a small Hessian, numpy products), the probes
themselves redrawn from ``host_rng(key)`` (the host routines draw a block of probes as
the same stream as one by one), closed forms (a full Lanczos pass is an exact Gauss rule:
``N e1^T f(T) e1 = z^T f(A) z``), and the one-vector product run probe by probe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from jaxcurv._dispatch import _on_host
from jaxcurv._host_lanczos import host_quadrature
from jaxcurv._host_product import _BLOCK_BYTES, block_rows, host_rng
from tests.helpers import count_compiles, random_symmetric

_N = 30
_SPECTRUM = np.linspace(0.5, 4.0, _N)  # SPD, distinct: a full pass is an exact rule


def _matrix() -> np.ndarray:
    return random_symmetric(np.random.default_rng(3), _SPECTRUM)


def _loss(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


def _net(n_in: int):
    rng = np.random.default_rng(4)
    params = {
        "w": jnp.asarray(rng.standard_normal((n_in, 3))),
        "b": jnp.asarray(rng.normal(size=3)),
    }
    return params, jnp.asarray(rng.standard_normal((9, n_in)))


def _probes(key, shape) -> np.ndarray:
    return host_rng(key).choice((-1.0, 1.0), shape)


def test_block_rows_rule():
    # Capped by _BLOCK_BYTES over the bytes of one row, then balanced: 10 rows capped at
    # 8 are two blocks of 5; never below one row, never above what is asked.
    per_row = _BLOCK_BYTES // 8
    assert block_rows(10, per_row - 2 * 100 * 4, 100, 4, 0) == 5
    assert block_rows(10, 0, 100, 4, 0) == 10
    assert block_rows(3, 10 * _BLOCK_BYTES, 100, 4, 0) == 1
    # The operator's bytes count per row: a third of the budget each (plus the vectors)
    # caps at 2 rows; 7 rows are then 4 blocks of at most 2.
    assert block_rows(7, 0, 100, 8, _BLOCK_BYTES // 3) == 2


def test_block_product_is_the_dense_product_row_by_row():
    params, x = _net(n_in=4)  # N = 15
    op = jaxcurv.hessian_operator(_loss, params, x)
    H = np.asarray(op.to_dense())
    prod, _ = _on_host("host", op, None, jax.random.key(0), block=(4, 0))
    assert prod.rows == 4
    V = np.random.default_rng(0).standard_normal((3, 15))  # fewer rows: zero-padded
    # float64 products: rounding ~1e-15 ||H|| ||v||; 1e-12 leaves margin.
    np.testing.assert_allclose(prod.block(V), V @ H, atol=1e-12 * np.abs(H).max() * 10)
    np.testing.assert_allclose(prod(V[0]), H @ V[0], atol=1e-12 * np.abs(H).max() * 10)


def test_lockstep_quadrature_equals_probe_by_probe():
    A = jnp.asarray(_matrix())
    block, _ = _on_host("host", A, None, jax.random.key(5), block=(4, 0))
    single, _ = _on_host("host", A, None, jax.random.key(5))
    assert block.rows == 4 and single.rows is None
    # The same probes (a block drawn at once is the same stream), the same float64
    # recursion: equal to rounding, ~1e-13 on Ritz values of a norm-4 matrix.
    n1, w1 = host_quadrature(block, host_rng(jax.random.key(5)), num_samples=4, m=12)
    n2, w2 = host_quadrature(single, host_rng(jax.random.key(5)), num_samples=4, m=12)
    np.testing.assert_allclose(n1, n2, atol=1e-11)
    np.testing.assert_allclose(w1, w2, atol=1e-11)


def test_lockstep_quadrature_in_float32_keeps_float32_accuracy():
    # A float32 domain: the bases are float32, as the products (and the device loop).
    # A full pass on 30 distinct eigenvalues in [0.5, 4]: nodes within ~sqrt(N) eps32
    # ||A|| ~ 3e-6 of the eigenvalues; 1e-4 leaves a 30x margin.
    A = jnp.asarray(_matrix(), jnp.float32)
    d = jaxcurv.spectral_density(A, jax.random.key(1), num_samples=3, num_steps=_N, loop="host")
    assert d.nodes.dtype == jnp.float32
    np.testing.assert_allclose(d.nodes, np.broadcast_to(_SPECTRUM, (3, _N)), atol=1e-4)
    np.testing.assert_allclose(np.sum(d.weights, axis=1), 1.0, rtol=1e-5)


def test_host_density_is_smoothed_like_the_device_and_compiles_one_program():
    params, x = _net(n_in=6)  # N = 21, a computation no other test compiles
    op = jaxcurv.hessian_operator(_loss, params, x)
    key = jax.random.key(0)
    with count_compiles() as n:
        d = jaxcurv.spectral_density(op, key, num_samples=3, num_steps=21, loop="host")
    assert n[0] == 1  # the block product only: no smoothing program, no `spent` cast
    # A full pass on 21 eigenvalues: the nodes are the dense eigenvalues.
    exact = np.linalg.eigvalsh(np.asarray(op.to_dense()))
    np.testing.assert_allclose(d.nodes, np.broadcast_to(exact, (3, 21)), atol=1e-10)
    # The NumPy smoothing agrees with the compiled one (float64 both: rounding), and the
    # density integrates to one over the default grid (nodes +- 5 sigma: 6e-7 of mass
    # outside; trapezoid on Gaussians sampled ~0.3 sigma apart is exact to far below).
    again = d.smooth(sigma=float(d.sigma), grid=d.grid)
    np.testing.assert_allclose(d.density, again.density, rtol=1e-10, atol=1e-12)
    assert float(jnp.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-5)


def test_host_diagonal_is_the_mean_of_its_probes():
    A = _matrix()
    key = jax.random.key(7)
    est = jaxcurv.hutchinson_diagonal(jnp.asarray(A), key, 9, loop="host")
    Z = _probes(key, (9, _N))
    samples = Z * (Z @ A)  # the same probes, numpy products
    np.testing.assert_allclose(est.estimate, samples.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(est.stderr, samples.std(0, ddof=1) / 3.0, rtol=1e-10)
    assert int(est.num_matvecs) == 9
    # Tree domain: a diagonal Hessian-like operator on a dict, exact (z_i^2 = 1).
    d = {"a": jnp.arange(1.0, 4.0), "b": jnp.full((2, 2), 5.0)}
    tree = jaxcurv.hutchinson_diagonal(lambda v: jax.tree.map(jnp.multiply, d, v), key, 1,
                                       example=d, loop="host")  # fmt: skip
    assert jax.tree.structure(tree.estimate) == jax.tree.structure(d)
    np.testing.assert_array_equal(tree.estimate["b"], d["b"])
    assert np.all(np.isinf(tree.stderr["a"]))  # one probe: no error estimate


def test_host_trace_function_is_exact_for_a_full_pass():
    A = _matrix()
    key = jax.random.key(2)
    est = jaxcurv.trace_function(jnp.asarray(A), key, jnp.log, num_samples=5, num_steps=_N,
                                 loop="host")  # fmt: skip
    lam, U = np.linalg.eigh(A)
    logA = (U * np.log(lam)) @ U.T
    Z = _probes(key, (5, _N))
    samples = np.einsum("ij,jk,ik->i", Z, logA, Z)  # z^T log(A) z of the same probes
    # N-node Gauss rule on N distinct eigenvalues: exact up to float64 rounding of the
    # recursion (~1e-13 relative on log-eigenvalues of size ~1).
    np.testing.assert_allclose(float(est.estimate), samples.mean(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(float(est.stderr), samples.std(ddof=1) / np.sqrt(5), rtol=1e-7)
    assert int(est.num_matvecs) == 5 * _N


def test_host_diagonal_under_jit_runs_the_device_loop():
    # (trace_function shares the same fallback, `_dispatch._on_host`; its device loop
    # under jit costs seconds of compile, so only the diagonal is run here.)
    D = jnp.diag(jnp.arange(1.0, 6.0))
    key = jax.random.key(0)
    diag = jax.jit(lambda a: jaxcurv.hutchinson_diagonal(a, key, 2, loop="host").estimate)(D)
    np.testing.assert_array_equal(diag, np.arange(1.0, 6.0))  # exact for a diagonal


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: jaxcurv.hutchinson_diagonal(jnp.eye(3), jax.random.key(0), 2, loop="gpu"),
         "hutchinson_diagonal(loop=...)"),
        (lambda: jaxcurv.trace_function(jnp.eye(3), jax.random.key(0), jnp.log, loop="gpu"),
         "trace_function(loop=...)"),
    ],
)  # fmt: skip
def test_bad_loop_names_the_argument(call, name):
    with pytest.raises(ValueError, match=r"loop") as err:
        call()
    assert name in str(err.value) and "'gpu'" in str(err.value)
