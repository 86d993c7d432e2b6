"""Filter-normalized random directions (Li et al. 2018) against their definition.

The oracle is numpy: each filter's norm, computed apart, must equal the same filter's norm
in the parameters; the Gaussian draw itself is ``tree_random_normal``'s.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv import random_direction

RNG = np.random.default_rng(0)
PARAMS = {
    "dense": {"w": RNG.normal(size=(5, 3)), "b": RNG.normal(size=3)},
    "conv": {"kernel": RNG.normal(size=(3, 3, 2, 4)), "bias": RNG.normal(size=4)},
    "scale": np.asarray(1.5),
}


def _params(dtype=jnp.float64):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), PARAMS)


def _filter_norms(a, axis):
    a = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0)
    return np.linalg.norm(a.reshape(a.shape[0], -1), axis=1)


@pytest.mark.parametrize("axis", [-1, 0])
def test_each_filter_has_the_norm_of_the_parameters_filter(axis):
    params = _params()
    d = random_direction(jax.random.key(0), params, filter_axis=axis)
    for name in (("dense", "w"), ("conv", "kernel")):
        got, theta = d[name[0]][name[1]], params[name[0]][name[1]]
        # float64: one square root and one division per filter, ~1e-15 relative.
        np.testing.assert_allclose(_filter_norms(got, axis), _filter_norms(theta, axis), rtol=1e-13)
        # Each filter is the Gaussian draw rescaled, not a new direction.
        raw = random_direction(jax.random.key(0), params, None)[name[0]][name[1]]
        ratio = np.moveaxis(np.asarray(got / raw), axis, 0).reshape(theta.shape[axis], -1)
        np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-12)
    # Li et al.: biases and other leaves of fewer than two axes get no direction.
    for leaf in (d["dense"]["b"], d["conv"]["bias"], d["scale"]):
        assert not np.any(np.asarray(leaf))


def test_layer_normalization_and_biases_kept():
    params = _params()
    d = random_direction(jax.random.key(1), params, "layer", zero_biases=False)
    for got, theta in zip(jax.tree.leaves(d), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(theta), rtol=1e-13)
    f = random_direction(jax.random.key(1), params, "filter", zero_biases=False)
    np.testing.assert_allclose(
        np.linalg.norm(f["dense"]["b"]), np.linalg.norm(params["dense"]["b"]), rtol=1e-13
    )


def test_shapes_dtypes_tree_and_key_determinism():
    small = {"w": jnp.ones((4, 2), jnp.float32), "b": jnp.ones(2, jnp.float32)}
    d32 = random_direction(jax.random.key(3), small)
    assert jax.tree.structure(d32) == jax.tree.structure(small)
    assert all(d32[k].shape == small[k].shape and d32[k].dtype == jnp.float32 for k in small)
    params = _params()
    a = random_direction(jax.random.key(3), params)
    same = random_direction(jax.random.key(3), params)
    legacy = random_direction(jax.random.PRNGKey(3), params)
    other = random_direction(jax.random.key(4), params)
    jitted = jax.jit(random_direction, static_argnames="normalization")(jax.random.key(3), params)
    for x, y, z in zip(jax.tree.leaves(a), jax.tree.leaves(same), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_allclose(x, z, rtol=1e-6)
    assert not np.allclose(a["dense"]["w"], other["dense"]["w"])
    assert jax.tree.structure(legacy) == jax.tree.structure(params)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda p: random_direction(jax.random.key(0), p, "fliter"), ValueError, "'filter'"),
        (lambda p: random_direction(0, p), TypeError, r"random_direction\(key=...\)"),
        (lambda p: random_direction(jax.random.key(0), p, filter_axis=1.0), TypeError, "an int"),
        (lambda p: random_direction(jax.random.key(0), p, filter_axis=4), ValueError, "shape"),
        (lambda p: random_direction(jax.random.key(0), {"w": jnp.ones(2, int)}), TypeError, "int"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(_params())
