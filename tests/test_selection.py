"""``wrt=``: operators on a sub-tree of the parameters equal the dense sub-block."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv
from tests import _research_scale as rs


def test_hessian_wrt_a_bool_prefix_is_the_dense_sub_block_and_krylov_runs_on_it():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    op = jaxcurv.hessian_operator(rs.objective, p, x, y, wrt={"l1": True, "l2": False})
    assert op.x["l2"] == {"b": None, "w": None} and op.size == 16
    idx = rs.leaf_indices(p, [True, True, False, False])  # l1/b, l1/w, l2/b, l2/w
    block = rs.dense_hessian(p, x, y)[np.ix_(idx, idx)]  # oracle: jax.hessian, sliced
    # Same float64 products in another order: entries O(1), 1e-13 is ~500 eps.
    np.testing.assert_allclose(op.to_dense(), block, atol=1e-13)
    full_grad = jax.grad(rs.objective)(p, x, y)
    np.testing.assert_allclose(op.grad["l1"]["w"], full_grad["l1"]["w"], rtol=1e-13)

    # The Krylov routines take the sub-tree (with its None leaves) as they are.
    exact = np.linalg.eigvalsh(block)
    eig = jaxcurv.eigenvalues(op, 2, dense_threshold=0)
    assert bool(eig.converged)
    # Lanczos: an eigenvalue lies within the residual norm of each Ritz value.
    np.testing.assert_array_less(np.abs(eig.eigenvalues - exact[-2:]), eig.residual_norms + 1e-12)
    trace = jaxcurv.hutchinson_trace(op, jax.random.key(0), 64)
    # Unbiased, ~normal over 64 probes: 5 stderr is a >= 4 sigma margin.
    assert abs(float(trace.estimate) - np.trace(block)) <= 5 * float(trace.stderr)


def test_ggn_wrt_a_callable_on_key_paths_is_the_dense_sub_block():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    second_layer = lambda path, leaf: path[0].key == "l2"
    op = jaxcurv.ggn_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, wrt=second_layer)
    idx = rs.leaf_indices(p, [False, False, True, True])
    np.testing.assert_allclose(op.to_dense(), rs.dense_ggn(p, x, y)[np.ix_(idx, idx)], atol=1e-14)
    flat = ravel_pytree(op.x)[0]
    np.testing.assert_array_equal(flat, ravel_pytree(p)[0][idx])  # the sub-tree's order


def test_wrt_bad_input():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    build = lambda wrt: jaxcurv.hessian_operator(rs.objective, p, x, y, wrt=wrt)
    with pytest.raises(ValueError, match=r"`hessian_operator\(wrt=...\)` must be a prefix of `x`"):
        build({"l1": True})
    with pytest.raises(ValueError, match=r"prefix.*use False \(not None\)"):
        build({"l1": True, "l2": None})
    with pytest.raises(TypeError, match=r"pytree of bools.*\['l2'\] is int: 1"):
        build({"l1": True, "l2": 1})
    with pytest.raises(TypeError, match=r"must return a bool, got Array"):
        build(lambda path, leaf: jnp.ones(2) > 0)
    with pytest.raises(ValueError, match=r"selects no leaf of `x` \(4 leaves, all False\)"):
        build({"l1": False, "l2": False})
    with pytest.raises(ValueError, match=r"`ggn_operator\(wrt=...\)` selects no leaf of `params`"):
        jaxcurv.ggn_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, wrt=lambda path, leaf: False)
