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


@jax.jit
def _per_example_oracles(p, x, y):
    """Each one-example loss's value, gradient and ``jax.hessian`` (forward-over-reverse on
    the flat vector), from one compile: the whole batch's are their means (the loss is a
    mean over examples), and their absolute values size the rounding bound."""
    flat, unravel = ravel_pytree(p)
    one = lambda z, xi, yi: rs.objective(unravel(z), xi[None], yi[None])
    terms = lambda xi, yi: (
        one(flat, xi, yi),
        jax.grad(one)(flat, xi, yi),
        jax.hessian(one)(flat, xi, yi),
    )
    return jax.vmap(terms)(x, y)


def _reordering_bound(per_example_terms, num_micro_batches):
    """The float64 bound on ``|micro-batched - whole|`` entrywise: both sum the same ``n``
    per-example terms ``t_i`` (values, gradients or Hessians over ``n``) in different orders
    (pairwise in the batch matmuls, then over ``num_micro_batches`` partial sums), so they
    differ by at most about ``(n + num_micro_batches) eps sum_i |t_i|``; a factor 8 covers
    the rounding inside each example's own product (tanh, softmax), of the same order."""
    terms = np.asarray(per_example_terms)
    n = terms.shape[0]
    return 8 * (n + num_micro_batches) * EPS * np.max(np.sum(np.abs(terms) / n, axis=0))


def test_micro_batched_hessian_equals_whole_batch_also_for_a_ragged_last_micro_batch():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    # 6 = 4 + 2: the smaller last micro-batch is weighted 2/6, the full one 4/6.
    op = jaxcurv.hessian_operator(rs.objective, p, x, y, micro_batch=4)
    assert isinstance(op, jaxcurv.MicroBatchOperator)
    assert (op.batches.num_full, op.batches.num_rest) == (1, 2)
    # Independent oracles: the means of the one-example losses' values, gradients and dense
    # Hessians (jax.hessian rounds differently from the products: the bound covers it).
    for got, terms in zip(
        (op.value, ravel_pytree(op.grad)[0], op.to_dense()), _per_example_oracles(p, x, y)
    ):
        want = np.mean(np.asarray(terms), axis=0)
        np.testing.assert_allclose(got, want, rtol=0, atol=_reordering_bound(terms, 2))


def test_micro_batches_read_the_data_in_place_without_a_second_copy():
    # 20,003 = 1,250 x 16 + 3 examples, 480 KB of x: cutting it into stacked micro-batches
    # (the former implementation) copied all of x, under `jit` as compiler temporaries (as
    # much as x) and outside it as a second array held by the operator (checked below in
    # the test of a new batch).
    p = rs.mlp_params()
    x, y = rs.mlp_data(20_003, seed=4)
    v = jax.tree.map(jnp.ones_like, p)
    product = lambda p, x, y, v: jaxcurv.hessian_operator(rs.objective, p, x, y, micro_batch=16)(v)
    memory = jax.jit(product).lower(p, x, y, v).compile().memory_analysis()
    # One micro-batch's working set is a few (16, 4) arrays (~KBs), whatever n: well below
    # a tenth of x, which any copy of the data would exceed.
    assert memory.temp_size_in_bytes < x.nbytes / 10, (memory.temp_size_in_bytes, x.nbytes)


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
    # Built outside `jit`, the operator holds the caller's arrays themselves, not a copy.
    held = jax.tree.leaves(op2.batches)
    assert any(a is x2 for a in held) and any(a is y2 for a in held)
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
