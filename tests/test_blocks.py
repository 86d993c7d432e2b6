"""``block_curvature``: per-block traces and eigenvalues against the dense sub-blocks."""

import jax
import numpy as np
import pytest

import jaxcurv
from tests import _research_scale as rs


def test_block_curvature_matches_dense_sub_blocks():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    build = lambda wrt: jaxcurv.ggn_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, wrt=wrt)
    out = jaxcurv.block_curvature(
        build,
        p,
        key=jax.random.key(0),
        k=2,
        num_samples=200,
        eigenvalues_options={"dense_threshold": 0},
    )
    assert list(out) == ["l1", "l2"]  # default: the top-level entries
    dense = rs.dense_ggn(p, x, y)
    for name, flags in (("l1", [True, True, False, False]), ("l2", [False, False, True, True])):
        idx = rs.leaf_indices(p, flags)
        block = dense[np.ix_(idx, idx)]
        r = out[name]
        assert r.size == idx.size
        # Unbiased; 200 shared probes, ~normal: 5 stderr is a >= 4 sigma margin.
        assert abs(float(r.trace.estimate) - np.trace(block)) <= 5 * float(r.trace.stderr)
        assert float(r.trace.stderr) < 0.2 * np.trace(block)  # the estimate says something
        # Lanczos: an eigenvalue of the block lies within each Ritz value's residual norm.
        top = np.linalg.eigvalsh(block)[-2:]
        assert bool(r.eigenvalues.converged)
        np.testing.assert_array_less(
            np.abs(r.eigenvalues.eigenvalues - top), r.eigenvalues.residual_norms + 1e-12
        )


def test_block_curvature_shared_probes_of_one_block_are_hutchinson_and_groups_are_named():
    p, (x, y) = rs.mlp_params(), rs.mlp_data(6)
    build = lambda wrt: jaxcurv.ggn_operator(rs.model_fn, rs.loss_fn, p, x=x, y=y, wrt=wrt)
    key = jax.random.key(1)
    groups = {"all": True, "weights": lambda path, leaf: leaf.ndim == 2}
    out = jaxcurv.block_curvature(build, p, groups, key=key, k=0, num_samples=200)
    assert out["all"].eigenvalues is None and out["weights"].size == 20
    # The whole tree as one block is plain Hutchinson with the same probes.
    ref = jaxcurv.hutchinson_trace(build(None), jax.random.split(key)[0], 200)
    np.testing.assert_allclose(out["all"].trace.estimate, ref.estimate, rtol=1e-13)
    np.testing.assert_allclose(out["all"].trace.stderr, ref.stderr, rtol=1e-10)
    with pytest.raises(
        ValueError, match=r"block_curvature\(blocks\['none'\]\)\(wrt=...\)` selects no leaf"
    ):
        jaxcurv.block_curvature(build, p, {"none": False}, key=key)
    with pytest.raises(TypeError, match=r"must return a jaxcurv operator"):
        jaxcurv.block_curvature(lambda wrt: None, p, key=key)
