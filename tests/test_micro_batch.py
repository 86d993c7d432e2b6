"""``micro_batch=``: operators summed over micro-batches equal the whole-batch operator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv
from tests import _research_scale as rs
from tests.helpers import count_compiles

EPS = float(np.finfo(np.float64).eps)


def _reordering_bound(x, y, num_micro_batches):
    """The float64 bound on ``|micro-batched - whole|`` entrywise: both sum the same ``n``
    per-example terms ``t_i = H_i / n`` in different orders (pairwise in the batch matmuls,
    then over ``num_micro_batches`` partial sums), so they differ by at most about
    ``(n + num_micro_batches) eps sum_i |t_i|``; a factor 8 covers the rounding inside each
    example's own product (tanh, softmax), which is of the same order."""
    p, n = rs.mlp_params(), x.shape[0]
    per_example = np.abs(rs.per_example_hessians(p, x, y)) / n
    return 8 * (n + num_micro_batches) * EPS * np.max(np.sum(per_example, axis=0))


def test_micro_batched_hessian_equals_whole_batch_also_for_a_ragged_last_micro_batch():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    # 6 = 4 + 2: the smaller last micro-batch is weighted 2/6, the full one 4/6.
    op = jaxcurv.hessian_operator(rs.objective, p, x, y, micro_batch=4)
    assert isinstance(op, jaxcurv.MicroBatchOperator) and op.batches.num_full == 1
    bound = _reordering_bound(x, y, 2)
    dense = rs.dense_hessian(p, x, y)  # independent oracle: jax.hessian of the whole batch
    # jax.hessian (forward-over-reverse on the flat vector) rounds differently from the
    # products: the bound applies to it too.
    np.testing.assert_allclose(op.to_dense(), dense, rtol=0, atol=bound)
    np.testing.assert_allclose(op.value, rs.objective(p, x, y), rtol=8 * 8 * EPS)
    grad = ravel_pytree(jax.grad(rs.objective)(p, x, y))[0]
    np.testing.assert_allclose(ravel_pytree(op.grad)[0], grad, rtol=0, atol=1e-15)


def test_micro_batched_ggn_with_keyword_data_and_wrt_equals_the_dense_sub_block():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    weights = lambda path, leaf: leaf.ndim == 2
    op = jaxcurv.ggn_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, micro_batch=2, wrt=weights)
    idx = rs.leaf_indices(p, [leaf.ndim == 2 for leaf in jax.tree.leaves(p)])
    # Oracle: J^T H J from dense matrices; reordering of 6 terms over 3 micro-batches in
    # float64, entries O(1): 1e-14 is ~5x the (6 + 3) eps bound.
    np.testing.assert_allclose(op.to_dense(), rs.dense_ggn(p, x, y)[np.ix_(idx, idx)], atol=1e-14)
    assert op.x["l1"]["b"] is None and op.x["l1"]["w"].shape == (3, 4)
    # It keeps no outputs (memory in proportion to the examples), and says so.
    assert not hasattr(op, "outputs")
    with pytest.raises(AttributeError, match=r"keeps no model outputs.*without `micro_batch=`"):
        op.outputs


def test_a_new_batch_of_the_same_shapes_compiles_nothing_and_globals_are_read_afresh():
    p = rs.mlp_params()
    x1, y1 = rs.mlp_data(6, seed=2)
    x2, y2 = rs.mlp_data(6, seed=3)
    v = jax.tree.map(jnp.ones_like, p)
    jaxcurv.hessian_operator(rs.objective, p, x1, y1, micro_batch=3)(v)
    with count_compiles() as compiles:
        op2 = jaxcurv.hessian_operator(rs.objective, p, x2, y2, micro_batch=3)
        got = op2(v)
    assert compiles[0] == 0
    expected = jaxcurv.hvp(lambda q: rs.objective(q, x2, y2), p, v)
    np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(expected)[0], atol=1e-13)

    scale = {"c": 1.0}
    f = lambda w, t: scale["c"] * jnp.mean((w * t) ** 2)  # Hessian 2 c mean(t^2)
    t = jnp.arange(4.0)
    first = jaxcurv.hessian_operator(f, jnp.ones(()), t, micro_batch=2).to_dense()
    scale["c"] = 3.0
    second = jaxcurv.hessian_operator(f, jnp.ones(()), t, micro_batch=2).to_dense()
    np.testing.assert_allclose([first, second], [[[7.0]], [[21.0]]], rtol=1e-15)


def test_micro_batch_bad_input():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    with pytest.raises(
        ValueError, match=r"micro_batch.*same number of examples.*\[1\].*5.*\[0\].*6"
    ):
        jaxcurv.hessian_operator(rs.objective, p, x, y[:5], micro_batch=2)
    with pytest.raises(ValueError, match=r"micro_batch=2.*needs data with a leading examples axis"):
        jaxcurv.hessian_operator(lambda q: rs.objective(q, x, y), p, micro_batch=2)
    with pytest.raises(
        ValueError, match=r"`hessian_operator\(micro_batch=...\)` must be >= 1, got 0"
    ):
        jaxcurv.hessian_operator(rs.objective, p, x, y, micro_batch=0)
    with pytest.raises(TypeError, match=r"`ggn_operator\(micro_batch=...\)` must be an int.*str"):
        jaxcurv.ggn_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, micro_batch="2")
