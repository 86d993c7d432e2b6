"""The descent of a Hessian-free step: curvature on a sub-batch, CG on the damped model."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv import ModelAndLoss
from jaxcurv.cg import CGStatus
from jaxcurv.descent import curvature_operator, damped_newton_direction
from jaxcurv.preconditioner import martens_preconditioner
from tests.helpers import random_symmetric

MARGIN = 10.0
EPS = np.finfo(np.float64).eps


def _tanh_regression(n=8, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    w = rng.standard_normal(d)
    model_fn = lambda w, x: jnp.tanh(x @ w)
    loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)
    return ModelAndLoss(model_fn, loss_fn), jnp.asarray(w), jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("fraction, rows", [(None, 8), (1.0, 8), (0.5, 4), (0.3, 3), (0.01, 1)])
def test_ggn_on_the_leading_sub_batch_is_j_transpose_j_over_its_size(fraction, rows):
    obj, w, x, y = _tanh_regression()
    op = curvature_operator(obj, w, {"x": x, "y": y}, curvature="ggn", fraction=fraction)
    assert rows == (8 if fraction is None else max(1, math.ceil(fraction * 8)))
    # Oracle in numpy: J_i = (1 - tanh^2(x_i w)) x_i, H_loss = I / rows.
    xs, wn = np.asarray(x)[:rows], np.asarray(w)
    jac = (1 - np.tanh(xs @ wn) ** 2)[:, None] * xs
    np.testing.assert_allclose(np.asarray(op.to_dense()), jac.T @ jac / rows, rtol=1e-12)


def test_hessian_on_the_sub_batch_matches_finite_differences():
    obj, w, x, y = _tanh_regression()
    op = curvature_operator(obj, w, {"x": x, "y": y}, curvature="hessian", fraction=0.5)
    xs, ys = np.asarray(x)[:4], np.asarray(y)[:4]

    def grad(wn):  # the analytic gradient of the sub-batch loss, in numpy
        t = np.tanh(xs @ wn)
        return xs.T @ ((t - ys) * (1 - t**2)) / 4

    h, wn = 1e-6, np.asarray(w)
    fd = np.stack([(grad(wn + h * e) - grad(wn - h * e)) / (2 * h) for e in np.eye(3)])
    # Central differences of an analytic gradient: O(h^2) truncation, O(eps / h) rounding.
    np.testing.assert_allclose(np.asarray(op.to_dense()), fd, atol=1e-8)


def test_curvature_operator_refuses_what_it_cannot_use():
    obj, w, x, y = _tanh_regression()
    with pytest.raises(ValueError, match=r"curvature_fraction=.*needs batched extra arguments"):
        curvature_operator(obj, w, {}, fraction=0.5)
    with pytest.raises(ValueError, match=r"leading size"):
        curvature_operator(obj, w, {"x": x, "y": y[:3]}, fraction=0.5)
    with pytest.raises(TypeError, match=r"ModelAndLoss"):
        curvature_operator(lambda p, x, y: obj(p, x=x, y=y), w, {"x": x, "y": y})


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_residual_stop_solves_the_damped_system(damping):
    rng = np.random.default_rng(1)
    B = random_symmetric(rng, [1.0, 2.0, 5.0, 10.0, 20.0])
    g = rng.standard_normal(5)
    p, info = damped_newton_direction(
        jnp.asarray(B), jnp.asarray(g), jnp.asarray(damping), stop="residual", tol=1e-13
    )
    A = B + damping * np.eye(5)
    expected = -np.linalg.solve(A, g)
    # CG to ||r|| <= 1e-13 ||g||: forward error <= cond(A) (tol + n eps) ||p*||.
    cond = np.linalg.cond(A)
    bound = cond * (1e-13 + 5 * EPS) * np.linalg.norm(expected)
    assert np.linalg.norm(np.asarray(p) - expected) <= MARGIN * bound
    assert int(info.status) == CGStatus.CONVERGED
    # A warm start at the answer leaves nothing to do.
    _, info = damped_newton_direction(
        jnp.asarray(B), jnp.asarray(g), jnp.asarray(damping), x0=jnp.asarray(expected), tol=1e-8
    )
    assert int(info.num_steps) == 0


def test_forcing_stop_is_loose_far_from_a_minimum_and_tight_near_it():
    rng = np.random.default_rng(2)
    B = random_symmetric(rng, np.geomspace(1.0, 1e3, 40))
    for scale in (100.0, 1e-6):
        g = scale * rng.standard_normal(40) / np.sqrt(40)
        gn = np.linalg.norm(g)
        # ||g|| ~ 100: the tolerance is 1/2; ||g|| ~ 1e-6: sqrt(||g||) ~ 1e-3.
        expected_tol = max(min(0.5, np.sqrt(gn)), 1e-9)
        p, info = damped_newton_direction(
            jnp.asarray(B), jnp.asarray(g), jnp.asarray(0.0), stop="forcing", tol=1e-9
        )
        # The residual, computed directly, meets ||r|| <= forcing ||g|| (plus rounding).
        r = np.linalg.norm(B @ np.asarray(p) + g)
        assert r <= expected_tol * gn * (1 + 1e-6)
        assert int(info.status) == CGStatus.CONVERGED
        _, tight = damped_newton_direction(
            jnp.asarray(B), jnp.asarray(g), jnp.asarray(0.0), stop="residual", tol=1e-9
        )
        # Looser than the tight solve of the same system, and far looser far from a minimum.
        assert int(info.num_steps) <= int(tight.num_steps)
        if scale > 1:
            assert int(info.num_steps) < int(tight.num_steps)


def test_martens_stop_and_a_preconditioner_pass_through():
    rng = np.random.default_rng(3)
    d = np.geomspace(1.0, 1e4, 12)
    B, g = np.diag(d), rng.standard_normal(12)
    M = martens_preconditioner(jnp.asarray(d))  # the exact diagonal: one step suffices
    p, info = damped_newton_direction(jnp.asarray(B), jnp.asarray(g), 0.0, M=M, stop="residual")
    np.testing.assert_allclose(np.asarray(p), -g / d, rtol=1e-12)
    assert int(info.num_steps) == 1
    # Martens' relative-progress stop may end before the residual tolerance; the direction
    # is still a descent direction of the model, with the iterates recorded for backtracking.
    p, info = damped_newton_direction(
        jnp.asarray(B), jnp.asarray(g), 0.0, stop="martens", tol=0.0, record_iterates=True
    )
    assert float(np.asarray(p) @ g) < 0
    assert info.iterates is not None and int(info.iterate_steps[-1]) == int(info.num_steps)
