"""``streaming_operator``: host batches streamed per product equal the concatenated batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv

# A one-neuron regression (4 parameters): each product streams every batch, so the
# dense matrix costs 4 passes and stays cheap.
model_fn = lambda p, x: jnp.tanh(x @ p["w"] + p["b"])
loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)


def _problem(n):
    rng = np.random.default_rng(0)
    p = {"w": jnp.asarray(rng.standard_normal(3)), "b": jnp.asarray(0.3)}
    return p, rng.standard_normal((n, 3)), rng.standard_normal(n)


def test_streamed_batches_equal_the_operator_on_the_concatenated_batch():
    p, x, y = _problem(10)
    # Host (numpy) batches of 4, 4 and 2 examples: weighted 4/10, 4/10, 2/10.
    host = [(x[i : i + 4], y[i : i + 4]) for i in (0, 4, 8)]
    build = lambda b: jaxcurv.ggn_operator(model_fn, loss_fn, p, x=b[0], y=b[1])
    op = jaxcurv.streaming_operator(build, host)
    whole = jaxcurv.ggn_operator(model_fn, loss_fn, p, x=jnp.asarray(x), y=jnp.asarray(y))
    # Oracle: J^T J / n for the mean squared error, J from the dense Jacobian (float64);
    # the same 10 per-example terms summed in another order.
    flat, unravel = ravel_pytree(p)
    jac = np.asarray(jax.jacobian(lambda z: model_fn(unravel(z), x))(flat))
    np.testing.assert_allclose(op.to_dense(), jac.T @ jac / 10, atol=1e-15)
    np.testing.assert_allclose(op.value, whole.value, rtol=1e-14)
    np.testing.assert_allclose(ravel_pytree(op.grad)[0], ravel_pytree(whole.grad)[0], atol=1e-15)
    # The Krylov routines run on it unchanged, and with the same key see the same probes.
    key = jax.random.key(3)
    got, ref = jaxcurv.hutchinson_trace(op, key, 4), jaxcurv.hutchinson_trace(whole, key, 4)
    np.testing.assert_allclose(got.estimate, ref.estimate, rtol=1e-13)
    # A function returning a fresh iterator works as the source too.
    again = jaxcurv.streaming_operator(build, lambda: iter(host))
    v = jax.tree.map(jnp.ones_like, p)
    np.testing.assert_allclose(ravel_pytree(again(v))[0], ravel_pytree(whole(v))[0], atol=1e-15)


def test_streaming_bad_input():
    p, x, y = _problem(4)
    build = lambda b: jaxcurv.ggn_operator(model_fn, loss_fn, p, x=b[0], y=b[1])
    with pytest.raises(TypeError, match=r"must be re-iterable.*generator.*lambda"):
        jaxcurv.streaming_operator(build, (b for b in [(x, y)]))
    with pytest.raises(TypeError, match=r"must return a jaxcurv operator.*got tuple"):
        jaxcurv.streaming_operator(lambda b: b, [(x, y)])
    with pytest.raises(ValueError, match=r"yielded no batch"):
        jaxcurv.streaming_operator(build, [])
