"""Loss-landscape analysis against a float64 finite-difference Hessian.

The oracle is a numpy copy of the loss, differentiated by central differences
(``tests/helpers.py``): nothing in it goes through JAX's autodiff or jaxcurv.
"""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxcurv.app.landscape_report import landscape_report
from jaxcurv.landscape import analyze_landscape, loss_slices
from tests.helpers import fd_gradient, fd_hessian

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(40, 2)), RNG.normal(size=(40, 1))
PARAMS = {
    "w1": RNG.normal(size=(2, 6)),
    "b1": RNG.normal(size=6) * 0.1,
    "w2": RNG.normal(size=(6, 1)),
    "b2": np.zeros(1),
}
N = 25
RADIUS = 1e-3


def loss(params, x, y):
    """A 2-6-1 tanh network's mean squared error (module level: hashable, compiled once)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return 0.5 * jnp.mean(jnp.sum((h @ params["w2"] + params["b2"] - y) ** 2, axis=-1))


def _numpy_loss(flat):
    p = _unravel_numpy(flat)
    h = np.tanh(X @ p["w1"] + p["b1"])
    return 0.5 * np.mean(np.sum((h @ p["w2"] + p["b2"] - Y) ** 2, axis=-1))


def _unravel_numpy(flat):
    # ravel_pytree's order: leaves of the dict in sorted key order.
    out, start = {}, 0
    for name in sorted(PARAMS):
        size = PARAMS[name].size
        out[name] = flat[start : start + size].reshape(PARAMS[name].shape)
        start += size
    return out


@pytest.fixture(scope="module")
def oracle():
    flat = np.concatenate([PARAMS[k].ravel() for k in sorted(PARAMS)])
    np.testing.assert_array_equal(flat, ravel_pytree(PARAMS)[0])
    h = fd_hessian(_numpy_loss, flat)
    return {
        "flat": flat,
        "hessian": h,
        "eigenvalues": np.linalg.eigvalsh(h),
        "gradient": fd_gradient(_numpy_loss, flat),
        "loss": _numpy_loss(flat),
    }


def _analyze(params=PARAMS, **options):
    settings = dict(
        key=jax.random.key(3),
        top_k=3,
        bottom_k=2,
        num_lanczos=N,
        trace_samples=50,
        density_probes=2,
        slice_points=3,
        slice_radius=RADIUS,
        dense_threshold=0,
    )
    settings.update(options)
    params = jax.tree.map(jnp.asarray, params)
    return analyze_landscape(loss, params, jnp.asarray(X), jnp.asarray(Y), **settings)


def _flat_vector(stacked, i):
    """Vector ``i`` of a stacked pytree, flattened in ``ravel_pytree`` order."""
    return np.asarray(ravel_pytree(jax.tree.map(lambda a: a[i], stacked))[0])


@pytest.mark.parametrize(
    "bottom_k, dense_threshold",
    [(2, 0), (13, 1024)],
    ids=["lanczos-both-ends", "dense-whole-spectrum"],  # 2 * 13 > N: every eigenvalue
)
def test_matches_finite_difference_hessian(oracle, bottom_k, dense_threshold):
    res = _analyze(bottom_k=bottom_k, dense_threshold=dense_threshold)
    eig, h = oracle["eigenvalues"], oracle["hessian"]
    assert res.num_parameters == N
    # Lanczos with N steps spans the whole space: exact up to rounding, like eigh.
    np.testing.assert_allclose(res.top_eigenvalues, eig[::-1][:3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.bottom_eigenvalues, eig[:bottom_k], rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(res.top_residuals) < 1e-8)
    method = "lanczos" if dense_threshold == 0 else "dense"
    assert res.critical_point.method == method
    np.testing.assert_allclose(res.value, oracle["loss"], rtol=1e-12)
    np.testing.assert_allclose(
        res.gradient_norm, np.linalg.norm(oracle["gradient"]), rtol=1e-6, atol=1e-9
    )
    assert res.critical_point.kind == "not critical"  # a random point has a gradient
    # The eigenvectors are unit eigenvectors of the oracle Hessian.
    for i, lam in enumerate(eig[::-1][:3]):
        v = _flat_vector(res.top_eigenvectors, i)
        np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-10)
        np.testing.assert_allclose(h @ v, lam * v, atol=1e-6)
    tr = res.trace
    assert abs(float(tr.estimate) - np.trace(h)) <= 5 * float(tr.stderr) + 1e-9
    # The density's grid covers the spectrum, and each probe's Ritz values lie inside it.
    assert res.density.grid[0] <= eig[0] and res.density.grid[-1] >= eig[-1]
    assert np.all(np.asarray(res.density.nodes) >= eig[0] - 1e-8)
    assert np.all(np.asarray(res.density.nodes) <= eig[-1] + 1e-8)

    # The slices are the loss itself along the top two eigenvectors ...
    s = res.slices
    np.testing.assert_allclose(s.t, [-RADIUS, 0.0, RADIUS])
    v1, v2 = _flat_vector(res.top_eigenvectors, 0), _flat_vector(res.top_eigenvectors, 1)
    flat = oracle["flat"]
    want_1d = [_numpy_loss(flat + a * v1) for a in np.asarray(s.t)]
    want_2d = [[_numpy_loss(flat + a * v1 + b * v2) for b in np.asarray(s.t)] for a in s.t]
    np.testing.assert_allclose(s.along_1d, want_1d, rtol=1e-12)
    np.testing.assert_allclose(s.along_2d, want_2d, rtol=1e-12)
    # ... so their second differences are the top two eigenvalues.
    d1 = (s.along_1d[0] - 2 * s.along_1d[1] + s.along_1d[2]) / RADIUS**2
    d2 = (s.along_2d[1, 0] - 2 * s.along_2d[1, 1] + s.along_2d[1, 2]) / RADIUS**2
    np.testing.assert_allclose([d1, d2], eig[::-1][:2], rtol=1e-3)

    report = json.loads(json.dumps(landscape_report(res)))  # JSON-ready: plain lists
    assert report["top_eigenvalues"] == pytest.approx(list(eig[::-1][:3]), rel=1e-6, abs=1e-6)
    assert report["critical_point"]["kind"] == "not critical"
    assert report["hutchinson_trace"]["num_samples"] == 50
    assert np.shape(report["slice_2d"]["loss"]) == (3, 3)


def test_a_second_point_compiles_nothing(caplog):
    _analyze()  # compiles (or finds) everything for this loss, these options and shapes
    moved = jax.tree.map(lambda a: a + 0.1, PARAMS)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        res = _analyze(moved)
        jax.block_until_ready(res.top_eigenvalues)
    compiles = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert compiles == []
    assert float(res.value) != pytest.approx(float(_analyze().value))


def test_loss_slices_closed_form():
    # f = x^2 + 3xy + y^2 along the axes: a^2, and a^2 + 3ab + b^2 over the plane.
    f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
    e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    s = loss_slices(f, jnp.zeros(2), e1, e2, radius=2.0, num_points=5)
    t = np.linspace(-2.0, 2.0, 5)
    np.testing.assert_allclose(s.t, t)
    np.testing.assert_allclose(s.along_1d, t**2)
    np.testing.assert_allclose(s.along_2d, t[:, None] ** 2 + 3 * np.outer(t, t) + t[None] ** 2)
    only = loss_slices(f, jnp.zeros(2), e1, num_points=5, radius=2.0)
    assert only.along_2d is None
    np.testing.assert_allclose(only.along_1d, t**2)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"top_k": 0}, ValueError, r"`analyze_landscape\(top_k=...\)` must be >= 1, got 0"),
        ({"trace_samples": 1}, ValueError, r"trace_samples=...\)` must be >= 2, got 1"),
        ({"slice_points": 2.5}, TypeError, r"slice_points=...\)` must be an int >= 2, got float"),
        ({"slice_radius": 0.0}, ValueError, r"slice_radius=...\)` must be positive, got 0.0"),
        ({"dense_threshold": -1}, ValueError, r"dense_threshold=...\)` must be >= 0, got -1"),
    ],
)
def test_bad_arguments_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        _analyze(**options)


def test_loss_slices_bad_arguments():
    f = lambda p: jnp.sum(p**2)
    with pytest.raises(ValueError, match=r"`loss_slices\(num_points=...\)` must be >= 2"):
        loss_slices(f, jnp.zeros(2), jnp.ones(2), num_points=1)
    with pytest.raises(ValueError, match=r"`loss_slices\(radius=...\)` must be positive"):
        loss_slices(f, jnp.zeros(2), jnp.ones(2), radius=-1.0)
