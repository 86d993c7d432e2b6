"""``fisher_operator``: the empirical Fisher against per-example gradients, the Monte-Carlo
Fisher against the Gauss-Newton matrix it estimates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv
from tests import _research_scale as rs


def _per_example_gradients(p, x, y, loss=rs.loss_fn):
    """``(n, N)`` oracle: ``jax.jacrev`` of the vector of one-example losses."""
    flat, unravel = ravel_pytree(p)
    losses = lambda z: jax.vmap(lambda xi, yi: loss(rs.model_fn(unravel(z), xi[None]), yi[None]))(
        x, y
    )
    return np.asarray(jax.jit(jax.jacrev(losses))(flat))


def test_empirical_fisher_is_the_mean_of_per_example_gradient_outer_products():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    g = _per_example_gradients(p, x, y)
    expected = g.T @ g / 6
    op = jaxcurv.fisher_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y)
    dense = np.asarray(op.to_dense())
    # float64, entries O(0.1): the same products rounded differently, 1e-14 is ~50 eps.
    np.testing.assert_allclose(dense, expected, atol=1e-14)
    assert np.linalg.eigvalsh(dense).min() >= -1e-14 * np.abs(dense).max()  # PSD
    # micro_batch: the same matrix up to the reordering of 6 terms in float64; wrt: its block.
    sub = jaxcurv.fisher_operator(
        rs.model_fn, rs.loss_fn, p, x=x, y=y, micro_batch=4, wrt={"l1": False, "l2": True}
    )
    idx = rs.leaf_indices(p, [False, False, True, True])
    np.testing.assert_allclose(sub.to_dense(), expected[np.ix_(idx, idx)], atol=1e-14)
    np.testing.assert_allclose(op.value, rs.objective(p, x, y), rtol=1e-14)


def _mc(loss, y, key, num_samples=200, **kw):
    p, (x, _) = rs.mlp_params(), rs.mlp_data(6)
    op = jaxcurv.fisher_operator(
        rs.model_fn, loss, p, kind="mc", key=key, num_samples=num_samples, x=x, y=y, **kw
    )
    return np.asarray(op.to_dense())


def _mc_against_ggn(loss, y, ggn, replicates=6):
    """Mean of independent MC Fishers (200 labels per example each) and its Monte-Carlo
    error, Frobenius norms."""
    mats = [_mc(loss, y, jax.random.key(r)) for r in range(replicates)]
    mean = np.mean(mats, axis=0)
    # E||mean - G||_F^2 = sum of the entries' variances / replicates, estimated from the
    # spread of the replicates; the error is a sum of many squared entries, concentrated
    # near its mean: even if one entry dominated (one degree of freedom), exceeding 4x its
    # root-mean-square would be a 4 sigma event.
    spread = np.sum(np.var(mats, axis=0, ddof=1)) / replicates
    return np.linalg.norm(mean - ggn), np.sqrt(spread), mats[0]


def test_mc_fisher_converges_to_the_ggn_for_softmax_cross_entropy():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    ggn = rs.dense_ggn(p, x, y)
    err, rms, one = _mc_against_ggn(rs.loss_fn, y, ggn)
    assert err <= 4 * rms
    assert rms < 0.05 * np.linalg.norm(ggn)  # 6 x 200 samples per example resolve it
    assert np.linalg.eigvalsh(one).min() >= -1e-12  # PSD
    # One key per example: micro-batches see the same draws, summed in another order.
    split = _mc(rs.loss_fn, y, jax.random.key(0), micro_batch=4)
    np.testing.assert_allclose(split, one, atol=1e-14)


def test_mc_fisher_of_a_mean_squared_error_finds_the_gaussian_and_its_scale():
    p, (x, _) = rs.mlp_params(), rs.mlp_data(6)
    t = jnp.asarray(np.random.default_rng(5).standard_normal((6, 2)))
    mse = lambda out, y: jnp.mean((out - y) ** 2)  # 1/d = 1/2 of the unit Gaussian NLL, x2
    flat, unravel = ravel_pytree(p)
    jac = np.asarray(jax.jit(jax.jacobian(lambda z: rs.model_fn(unravel(z), x).ravel()))(flat))
    ggn = jac.T @ jac * (2 / 12)  # H_loss = 2 I / (n d) for the mean over n x d entries
    err, rms, _ = _mc_against_ggn(mse, t, ggn)
    assert err <= 4 * rms and rms < 0.05 * np.linalg.norm(ggn)


def test_fisher_bad_input():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    f = lambda **kw: jaxcurv.fisher_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, **kw)
    with pytest.raises(TypeError, match=r"kind='mc'.*needs `key=`"):
        f(kind="mc")
    with pytest.raises(ValueError, match=r"`fisher_operator\(kind=...\)` must be one of"):
        f(kind="MC")
    with pytest.raises(ValueError, match=r"likelihood=...\)` must be one of"):
        f(kind="mc", key=jax.random.key(0), likelihood="poisson")
    with pytest.raises(ValueError, match=r"num_samples=...\)` must be >= 1"):
        f(kind="mc", key=jax.random.key(0), num_samples=0)
    quartic = lambda out, y: jnp.mean(out**4)
    with pytest.raises(ValueError, match=r"no positive multiple of either family"):
        jaxcurv.fisher_operator(rs.model_fn, quartic, p, kind="mc", key=jax.random.key(0), x=x, y=y)
