"""Backpropagation as a chain of VJPs equals jax.grad and the explicit Jacobian product."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv


def _layers(rng):
    sizes = [4, 5, 3, 2]
    params = [
        {"w": jnp.asarray(rng.standard_normal((m, n))), "b": jnp.asarray(rng.standard_normal(n))}
        for m, n in zip(sizes[:-1], sizes[1:])
    ]
    dense = lambda p, h: jnp.tanh(h @ p["w"] + p["b"])
    return [dense] * 3, params


def test_chain_of_vjps_equals_jax_grad():
    rng = np.random.default_rng(0)
    layers, params = _layers(rng)
    x = jnp.asarray(rng.standard_normal(4))
    loss_fn = lambda y: jnp.sum((y - 0.5) ** 2)
    res = jaxcurv.backprop(layers, params, x, loss_fn)

    def full(ps, x):
        h = x
        for layer, p in zip(layers, ps):
            h = layer(p, h)
        return loss_fn(h)

    g_params, g_x = jax.grad(full, argnums=(0, 1))(params, x)
    np.testing.assert_allclose(res.loss, full(params, x), rtol=1e-12)
    np.testing.assert_allclose(res.input_grad, g_x, rtol=1e-12)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), res.param_grads, g_params
    )
    assert len(res.cotangents) == len(layers) + 1


def test_chain_equals_product_of_explicit_transposed_jacobians():
    # grad_x L = J_1^T J_2^T J_3^T grad_y L, with each J_i formed explicitly as the oracle.
    rng = np.random.default_rng(1)
    layers, params = _layers(rng)
    x = jnp.asarray(rng.standard_normal(4))
    hs = [x]
    for layer, p in zip(layers, params):
        hs.append(layer(p, hs[-1]))
    jacs = [
        np.asarray(jax.jacobian(lambda h, p=p, f=f: f(p, h))(h))
        for f, p, h in zip(layers, params, hs[:-1])
    ]
    g = 2 * (np.asarray(hs[-1]) - 0.5)
    for j in reversed(jacs):
        g = j.T @ g
    res = jaxcurv.backprop(layers, params, x, lambda y: jnp.sum((y - 0.5) ** 2))
    np.testing.assert_allclose(res.input_grad, g, rtol=1e-12)


def test_backprop_bad_input():
    with pytest.raises(ValueError, match=r"one params entry per layer.*2 layers and 1"):
        jaxcurv.backprop([jnp.multiply, jnp.multiply], [1.0], 1.0, lambda y: y)
    with pytest.raises(ValueError, match=r"loss_fn.*scalar"):
        jaxcurv.backprop([jnp.multiply], [jnp.ones(2)], jnp.ones(2), lambda y: y)
