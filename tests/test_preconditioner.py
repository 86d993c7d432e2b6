"""Martens' diagonal preconditioner against a dense per-example loop in numpy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv.preconditioner import (
    martens_diagonal,
    martens_preconditioner,
    mean_squared_example_grads,
)

MARGIN = 10.0


def _model(params, x):
    return jnp.tanh(x @ params["w1"]) @ params["w2"]


def _objective(params, x, y, scale):
    return scale * 0.5 * jnp.mean((_model(params, x) - y) ** 2)


def _numpy_example_grads(params, x, y, scale):
    """Per-example gradients of ``scale * (f(x_i) - y_i)^2 / 2``, backpropagated by hand."""
    w1, w2 = (np.asarray(params[k], np.float64) for k in ("w1", "w2"))
    grads = []
    for xi, yi in zip(np.asarray(x, np.float64), np.asarray(y, np.float64), strict=True):
        h = np.tanh(xi @ w1)
        r = scale * (h @ w2 - yi)
        grads.append({"w1": np.outer(xi, (1 - h**2) * w2 * r), "w2": h * r})
    return grads


def _problem(dtype, n=11, d=3, k=4):
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((d, k)), dtype),
        "w2": jnp.asarray(rng.standard_normal(k), dtype),
    }
    x = jnp.asarray(rng.standard_normal((n, d)), dtype)
    y = jnp.asarray(rng.standard_normal(n), dtype)
    return params, x, y


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 64], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_mean_squared_example_grads_match_a_per_example_loop(dtype, chunk_size):
    params, x, y = _problem(dtype)
    # 11 examples: chunks of 4 pad the last chunk with weight-0 copies of example 0.
    got = mean_squared_example_grads(_objective, params, {"x": x, "y": y, "scale": 2.0}, chunk_size)
    grads = _numpy_example_grads(params, x, y, 2.0)
    eps = np.finfo(dtype).eps
    # Every gradient entry is the residual r_i = h_i . w2 - y_i (k + 1 terms: off by
    # (k + 1) eps (|h_i| . |w2| + |y_i|), so by that over |r_i| relative) times a chain of
    # about 10 roundings; squared (x2) and averaged over 11 terms (+11 eps).
    w2 = np.asarray(params["w2"], np.float64)
    h = np.tanh(np.asarray(x, np.float64) @ np.asarray(params["w1"], np.float64))
    yn = np.asarray(y, np.float64)
    cancellation = np.max((np.abs(h) @ np.abs(w2) + np.abs(yn)) / np.abs(h @ w2 - yn))
    rtol = 2 * (5 * eps * cancellation + 10 * eps) + 11 * eps
    for name in ("w1", "w2"):
        expected = np.mean([g[name] ** 2 for g in grads], axis=0)
        assert got[name].dtype == dtype
        np.testing.assert_allclose(np.asarray(got[name]), expected, rtol=MARGIN * rtol)


def test_without_batched_extras_the_statistic_is_the_squared_gradient():
    params, x, y = _problem(jnp.float64)
    fn = lambda p, scale: _objective(p, x, y, scale)  # the batch closed over
    got = mean_squared_example_grads(fn, params, {"scale": 2.0}, 4)
    grads = _numpy_example_grads(params, x, y, 2.0)
    for name in ("w1", "w2"):
        full = np.mean([g[name] for g in grads], axis=0)  # the gradient of the mean loss
        np.testing.assert_allclose(np.asarray(got[name]), full**2, rtol=1e-12)


@pytest.mark.parametrize("damping, exponent", [(0.0, 0.75), (0.5, 0.75), (2.0, 0.5)])
def test_martens_diagonal_and_the_preconditioner(damping, exponent):
    params, x, y = _problem(jnp.float64)
    extra = {"x": x, "y": y, "scale": 1.0}
    diag = martens_diagonal(_objective, params, extra, damping, exponent=exponent, chunk_size=3)
    grads = _numpy_example_grads(params, x, y, 1.0)
    residual = {"w1": jnp.ones((3, 4)), "w2": jnp.arange(1.0, 5.0)}
    applied = martens_preconditioner(diag)(residual)
    for name in ("w1", "w2"):
        expected = (np.mean([g[name] ** 2 for g in grads], axis=0) + damping) ** exponent
        np.testing.assert_allclose(np.asarray(diag[name]), expected, rtol=1e-12)
        np.testing.assert_allclose(
            np.asarray(applied[name]), np.asarray(residual[name]) / expected, rtol=1e-12
        )


def test_a_parameter_no_example_moves_is_left_unscaled_at_zero_damping():
    # `dead` does not enter the loss: its squared gradient is 0, and 0^(3/4) would divide
    # the residual by zero.
    fn = lambda p, x: jnp.mean((x * p["w"]) ** 2) + 0.0 * jnp.sum(p["dead"])
    params = {"w": jnp.asarray(1.0), "dead": jnp.zeros(2)}
    diag = martens_diagonal(fn, params, {"x": jnp.array([1.0, 2.0])}, 0.0)
    # Example i: d/dw (x_i w)^2 = 2 x_i^2 w = 2, 8; mean of squares 34; 34^(3/4).
    np.testing.assert_allclose(float(diag["w"]), 34.0**0.75, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(diag["dead"]), [1.0, 1.0])


def test_batched_extras_of_different_sizes_are_named():
    params, x, y = _problem(jnp.float64)
    with pytest.raises(ValueError, match=r"preconditioner=.*\['y'\] has leading size 5.*\['x'\]"):
        mean_squared_example_grads(_objective, params, {"x": x, "y": y[:5], "scale": 1.0}, 4)
