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

from jaxcurv import classify_critical_point
from jaxcurv.app.landscape_report import landscape_report
from jaxcurv.directions import linear_interpolation
from jaxcurv.landscape import analyze_landscape, loss_slices
from tests.helpers import fd_gradient, fd_hessian, fd_jacobian, random_symmetric

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


def _numpy_loss(flat, y=Y):
    p = _unravel_numpy(flat)
    h = np.tanh(X @ p["w1"] + p["b1"])
    return 0.5 * np.mean(np.sum((h @ p["w2"] + p["b2"] - y) ** 2, axis=-1))


def _flat_params():
    return np.concatenate([PARAMS[k].ravel() for k in sorted(PARAMS)])


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


def _analyze(params=PARAMS, y=Y, **options):
    settings = dict(
        key=jax.random.key(3),
        top_k=3,
        bottom_k=2,
        num_steps=N,
        trace_num_samples=50,
        density_num_samples=2,
        slice_points=3,
        slice_radius=RADIUS,
        dense_threshold=0,
    )
    settings.update(options)
    params = jax.tree.map(jnp.asarray, params)
    return analyze_landscape(loss, params, jnp.asarray(X), jnp.asarray(y), **settings)


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
    # Every reported pair converged, by eigenvalues()' test, and the flags say so.
    lam = np.concatenate([res.top_eigenvalues, res.bottom_eigenvalues])
    resid = np.concatenate([res.top_residuals, res.bottom_residuals])
    assert np.all(res.top_converged) and np.all(res.bottom_converged)
    if dense_threshold == 0:
        floor = np.finfo(np.float64).eps ** (2 / 3) * np.max(np.abs(eig))
        assert np.all(resid <= res.eigen_tol * np.maximum(np.abs(lam), floor))
    assert res.eigen_method == ("thick-restart" if dense_threshold == 0 else "dense")
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
    # The quadratic model's curvature along the unit top eigenvector is the top eigenvalue.
    np.testing.assert_allclose(s.curvature, eig[-1], rtol=1e-6)
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
    s = loss_slices(f, jnp.zeros(2), directions=(e1, e2), radius=2.0, num_points=5)
    # The refined grid: t = r (s + 3 s^3) / 4 for s evenly spaced in [-1, 1].
    u = np.linspace(-1.0, 1.0, 5)
    t = 2.0 * (u + 3 * u**3) / 4
    np.testing.assert_allclose(s.t, t, rtol=1e-12)
    np.testing.assert_allclose(s.along_1d, t**2)
    np.testing.assert_allclose(s.along_2d, t[:, None] ** 2 + 3 * np.outer(t, t) + t[None] ** 2)
    only = loss_slices(f, jnp.zeros(2), directions=e1, num_points=5, radius=2.0)
    assert only.along_2d is None
    np.testing.assert_allclose(only.along_1d, t**2)
    # Near 0 the spacing is a quarter of the uniform one; the ends stay at +-radius.
    assert s.t[0] == -2.0 and s.t[-1] == 2.0
    fine = loss_slices(f, jnp.zeros(2), directions=e1, radius=1.0, num_points=21)
    np.testing.assert_allclose(np.diff(fine.t)[9], 0.1 / 4 * (1 + 3 * 0.1**2), rtol=1e-12)


def test_loss_slices_old_positional_form_still_works_with_a_warning():
    # loss_slices(fun, x, v1, v2, *args) -- the directions before the data -- keeps working
    # for one release, on its old uniform grid.
    def f(p, c):
        return c * (p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2)

    e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
    c = jnp.asarray(2.0)
    with pytest.warns(DeprecationWarning, match=r"directions=\(v1, v2\)"):
        old = loss_slices(f, jnp.zeros(2), e1, e2, c, radius=2.0, num_points=5)
    new = loss_slices(
        f, jnp.zeros(2), c, directions=(e1, e2), radius=2.0, num_points=5, spacing="uniform"
    )
    for a, b in zip(old, new, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(old.t, np.linspace(-2.0, 2.0, 5))
    with pytest.warns(DeprecationWarning):
        one = loss_slices(f, jnp.zeros(2), e1, None, c, num_points=3)
    assert one.along_2d is None


def test_quadratic_model_matches_a_cubic_to_third_order():
    # f(x) = b.x + 1/2 x'Ax + sum_i c_i x_i^3 along d from x0: the slice is the cubic
    # phi(t) = f0 + (g.d) t + 1/2 (d'Hd) t^2 + (sum_i c_i d_i^3) t^3 exactly, so the
    # quadratic model differs from it by exactly (sum c d^3) t^3 (closed form); float64
    # rounding of O(10)-sized sums bounds the rest by 1e-12.
    rng = np.random.default_rng(1)
    b, c = rng.normal(size=4), rng.normal(size=4)
    A = rng.normal(size=(4, 4))
    A = A + A.T
    x0, d = rng.normal(size=4), rng.normal(size=4)

    def f(x):
        return b @ x + 0.5 * x @ (A @ x) + jnp.sum(c * x**3)

    s = loss_slices(f, jnp.asarray(x0), directions=jnp.asarray(d), radius=0.5, num_points=11)
    t = np.asarray(s.t)
    np.testing.assert_allclose(
        np.asarray(s.along_1d) - np.asarray(s.quadratic_1d), np.sum(c * d**3) * t**3, atol=1e-12
    )
    hessian = A + np.diag(6 * c * x0)
    np.testing.assert_allclose(s.curvature, d @ hessian @ d / (d @ d), rtol=1e-12)
    np.testing.assert_allclose(s.slope, (b + A @ x0 + 3 * c * x0**2) @ d, rtol=1e-12)
    np.testing.assert_allclose(s.direction_norm, np.linalg.norm(d), rtol=1e-12)


def test_linear_interpolation_between_two_points():
    # Goodfellow et al.'s line: f((1 - t) a + t b) for f = |x|^2 is |a + t (b - a)|^2.
    a, b = np.array([1.0, -2.0]), np.array([3.0, 1.0])
    s = linear_interpolation(lambda p: jnp.sum(p**2), jnp.asarray(a), jnp.asarray(b))
    t = np.linspace(-0.5, 1.5, 41)
    np.testing.assert_allclose(s.t, t, rtol=1e-12, atol=1e-15)
    want = [np.sum((a + ti * (b - a)) ** 2) for ti in t]
    np.testing.assert_allclose(s.along_1d, want, rtol=1e-12)
    assert s.along_1d[10] == pytest.approx(a @ a) and s.along_1d[30] == pytest.approx(b @ b)
    with pytest.raises(ValueError, match="margin"):
        linear_interpolation(lambda p: jnp.sum(p**2), jnp.zeros(2), jnp.ones(2), margin=-1.0)
    with pytest.raises(ValueError, match="same tree structure"):
        linear_interpolation(lambda p: jnp.sum(p**2), jnp.zeros(2), (jnp.ones(2),))


def _quadratic(p, A, b):
    """``p'Ap / 2 - b'p``: module level and one shape, so every case below shares one compile."""
    return 0.5 * p @ (A @ p) - b @ p


@pytest.mark.parametrize(
    "eigs, b, kind",
    [
        ([-1.0, 0.5, 2.0, 5.0], 0.0, "saddle"),
        ([0.5, 1.0, 2.0, 5.0], 0.0, "minimum"),
        ([-5.0, -2.0, -1.0, -0.5], 0.0, "maximum"),
        ([0.5, 1.0, 2.0, 5.0], 1.0, "not critical"),
    ],
)
def test_critical_point_from_the_one_spectrum_agrees_with_classify(eigs, b, kind):
    # analyze_landscape decides the kind on the spectrum it has already computed; the
    # verdict, counts and eigenvalue range are classify_critical_point's, which computes
    # its own (dense here; the Lanczos path is checked against the oracle below).
    dense_threshold = 512
    A = jnp.asarray(random_symmetric(np.random.default_rng(2), eigs))
    args = (jnp.zeros(4), A, jnp.full(4, b))
    res = analyze_landscape(
        _quadratic, *args, key=jax.random.key(0), top_k=1, bottom_k=1, trace_num_samples=2,
        density_num_samples=1, slice_points=3, dense_threshold=dense_threshold,
    )  # fmt: skip
    cp = classify_critical_point(_quadratic, *args, k=1, dense_threshold=dense_threshold)
    assert res.critical_point.kind == cp.kind == kind
    got = res.critical_point
    assert (got.num_positive, got.num_negative, got.num_zero, got.method) == (
        cp.num_positive,
        cp.num_negative,
        cp.num_zero,
        cp.method,
    )
    # Both ends of the spectrum, from eigh: the closed form to 1e-8.
    np.testing.assert_allclose(
        [got.eigenvalues[0], got.eigenvalues[-1]], [eigs[0], eigs[-1]], rtol=1e-8
    )


def test_a_fitted_network_is_a_minimum_on_the_lanczos_path():
    # Targets that the network fits exactly make PARAMS a global minimum of the squared
    # error: gradient 0 and Hessian exactly J'J / n (no residual term). With J from float64
    # finite differences of the outputs (error ~1e-10 relative), the oracle's smallest
    # eigenvalue, ~2e-7, is known to ~1e-9 and clears the zero tolerance sqrt(eps) *
    # max|lambda| ~ 6e-8. The Lanczos path (both ends only) must call it a minimum and
    # count all N eigenvalues positive.
    def outputs(flat):
        p = _unravel_numpy(flat)
        return (np.tanh(X @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]).ravel()

    flat = _flat_params()
    J = fd_jacobian(outputs, flat)
    oracle = np.linalg.eigvalsh(J.T @ J / len(X))
    res = _analyze(y=outputs(flat)[:, None])
    cp = res.critical_point
    assert (cp.kind, cp.method, cp.num_positive, cp.num_negative) == ("minimum", "lanczos", N, 0)
    np.testing.assert_allclose(res.bottom_eigenvalues[:2], oracle[:2], rtol=1e-2, atol=1e-9)
    np.testing.assert_allclose(res.top_eigenvalues[0], oracle[-1], rtol=1e-8)


def test_unconverged_eigenvalues_are_flagged_and_within_their_residual(oracle):
    # One Lanczos cycle of 20 products in 25 dimensions, asked for residuals of 1e-14
    # relative: not every pair gets there, and each flag is exactly eigenvalues()' test on
    # its own residual. Every Ritz value still lies within its residual of a true
    # eigenvalue (for a symmetric matrix, |lambda - theta| <= ||H v - theta v||), up to the
    # finite-difference oracle's error (~1e-6, as in the test above).
    res = _analyze(maxiter=20, tol=1e-14)
    eig = oracle["eigenvalues"]
    lam = np.concatenate([res.top_eigenvalues, res.bottom_eigenvalues])
    resid = np.concatenate([res.top_residuals, res.bottom_residuals])
    flags = np.concatenate([res.top_converged, res.bottom_converged])
    floor = np.finfo(np.float64).eps ** (2 / 3) * np.max(np.abs(lam))
    np.testing.assert_array_equal(flags, resid <= 1e-14 * np.maximum(np.abs(lam), floor))
    assert not flags.all()
    for theta, r in zip(lam, resid, strict=True):
        assert np.min(np.abs(eig - theta)) <= r + 1e-6
    assert res.num_matvecs == (
        int(res.critical_point.num_matvecs) + int(res.trace.num_matvecs)
        + int(res.density.num_matvecs) + 1
    )  # fmt: skip


def test_old_keyword_spellings_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="num_steps"):
        old = _analyze(num_steps=None, num_lanczos=N)  # None: num_steps not given
    new = _analyze()
    np.testing.assert_array_equal(old.density.density, new.density.density)
    with pytest.raises(TypeError, match="both"):
        _analyze(trace_samples=5)  # trace_num_samples=50 is also given by _analyze


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"top_k": 0}, ValueError, r"`analyze_landscape\(top_k=...\)` must be >= 1, got 0"),
        ({"trace_num_samples": 1}, ValueError, r"trace_num_samples=...\)` must be >= 2, got 1"),
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
        loss_slices(f, jnp.zeros(2), directions=jnp.ones(2), num_points=1)
    with pytest.raises(ValueError, match=r"`loss_slices\(radius=...\)` must be positive"):
        loss_slices(f, jnp.zeros(2), directions=jnp.ones(2), radius=-1.0)
    with pytest.raises(ValueError, match=r"`loss_slices\(spacing=...\)` must be one of"):
        loss_slices(f, jnp.zeros(2), directions=jnp.ones(2), spacing="log")
    with pytest.raises(ValueError, match=r"`loss_slices\(directions=...\)` must be one"):
        loss_slices(f, jnp.zeros(2), directions={"a": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"offsets=...\)` must be a 1-D array"):
        loss_slices(f, jnp.zeros(2), directions=jnp.ones(2), offsets=[0.0])
    with pytest.raises(TypeError, match="needs the directions"):
        loss_slices(f, jnp.zeros(2))
