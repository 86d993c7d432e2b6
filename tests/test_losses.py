"""``softmax_cross_entropy`` and its closed-form Hessian inside the Gauss-Newton products,
against dense autodiff oracles (float64) and compiled memory figures (float32)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv
from jaxcurv.losses import closed_form_hessian, softmax_hessian_vp

EPS = float(np.finfo(np.float64).eps)
B, S, V, D = 2, 3, 5, 3  # 6 tokens, 5 classes; 20 parameters
ce = jaxcurv.softmax_cross_entropy


def model_fn(p, x):
    return jnp.tanh(x @ p["w"]) * 2.0 + p["b"]


def _generic(logits, labels, weights=None):
    """The same loss through a wrapper: not recognised, so autodiff applies its Hessian."""
    return ce(logits, labels, weights)


def _problem(labels_kind):
    rng = np.random.default_rng(0)
    p = {"w": jnp.asarray(rng.standard_normal((D, V))), "b": jnp.asarray(rng.standard_normal(V))}
    x = jnp.asarray(rng.standard_normal((B, S, D)))
    classes = rng.integers(0, V, (B, S))
    data = {"labels": jnp.asarray(classes)}
    if labels_kind == "one_hot":
        data["labels"] = jax.nn.one_hot(classes, V, dtype=jnp.float64)
    elif labels_kind == "masked_soft":
        # Soft labels summing to 0.7 (label smoothing of a partial target), a mask that drops
        # two tokens, normalised to a mean over the kept ones.
        data["labels"] = jnp.asarray(0.7 * rng.dirichlet(np.ones(V), (B, S)))
        mask = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
        data["weights"] = jnp.asarray(mask / mask.mean())
    return p, x, data


def _dense_ggn_and_bound(p, x, data):
    """``J^T H J`` from the dense Jacobian and the dense autodiff Hessian of the loss, and
    the float64 rounding bound on any other evaluation of it: each entry sums ``T V`` and
    ``V`` products per token, so ``(T V + V) eps |J|^T |H| |J|``, times 8 for the rounding
    of p and of the tanh model inside each factor."""
    flat, unravel = ravel_pytree(p)
    shape = (B, S, V)
    jac = np.asarray(jax.jit(jax.jacobian(lambda z: model_fn(unravel(z), x).ravel()))(flat))
    loss = lambda o, data: _generic(o.reshape(shape), **data)
    h = np.asarray(jax.jit(jax.hessian(loss))(model_fn(p, x).ravel(), data))
    bound = 8 * (B * S * V + V) * EPS * (np.abs(jac).T @ np.abs(h) @ np.abs(jac))
    return jac.T @ h @ jac, bound, unravel


def _stored_bytes(tree):
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("labels_kind", ["int", "one_hot", "masked_soft"])
def test_closed_form_ggn_equals_the_generic_path(labels_kind, monkeypatch):
    # Chunks of 8 logits: these 30 logits then take the loop (one token per step) that
    # large vocabularies take, here under vmap too (`to_dense`).
    monkeypatch.setattr(jaxcurv.losses, "_CHUNK_ELEMENTS", 8)
    p, x, data = _problem(labels_kind)
    expected, bound, unravel = _dense_ggn_and_bound(p, x, data)
    op = jaxcurv.ggn_operator(model_fn, ce, p, x=x, **data)
    np.testing.assert_array_less(np.abs(np.asarray(op.to_dense()) - expected), bound + 1e-300)
    if labels_kind != "masked_soft":
        return
    # The most general case also through ggn_vp and the micro-batched operator (two
    # micro-batches of one example: the same bound for each of the two partial sums).
    v = unravel(jnp.asarray(np.random.default_rng(1).standard_normal(expected.shape[0])))
    got = ravel_pytree(jaxcurv.ggn_vp(model_fn, ce, p, v, x=x, **data))[0]
    v_flat = ravel_pytree(v)[0]
    np.testing.assert_array_less(np.abs(got - expected @ v_flat), bound @ np.abs(v_flat))
    micro = jaxcurv.ggn_operator(model_fn, ce, p, x=x, micro_batch=1, **data)
    got = ravel_pytree(micro(v))[0]
    np.testing.assert_array_less(np.abs(got - expected @ v_flat), 2 * bound @ np.abs(v_flat))
    # Value and gradient as the plain loss's; the operator stores the logits once and one
    # scale per token, where the generic path keeps the loss's linearization (3 more
    # tokens x vocabulary arrays here).
    value, grad = jax.jit(jax.value_and_grad(lambda q: _generic(model_fn(q, x), **data)))(p)
    np.testing.assert_allclose(op.value, value, rtol=1e-14)
    np.testing.assert_allclose(ravel_pytree(op.grad)[0], ravel_pytree(grad)[0], atol=1e-15)
    generic = jax.eval_shape(lambda p: jaxcurv.ggn_operator(model_fn, _generic, p, x=x, **data), p)
    assert _stored_bytes(generic) - _stored_bytes(op) >= 2 * B * S * V * 8


def test_cross_entropy_value_and_the_chunked_closed_form_against_numpy():
    rng = np.random.default_rng(2)
    z, u = rng.standard_normal((7, 4)), rng.standard_normal((7, 4))
    y = rng.integers(0, 4, 7)
    logp = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    jce = jax.jit(ce)  # one compile per kind of labels, not one per primitive
    # Integer labels, one-hot rows and their weighted mean: the numpy closed form.
    np.testing.assert_allclose(jce(z, y), -np.mean(logp[np.arange(7), y]), rtol=1e-14)
    np.testing.assert_allclose(jce(z, np.eye(4)[y]), -np.mean(logp[np.arange(7), y]), rtol=1e-14)
    w = rng.uniform(size=7)
    np.testing.assert_allclose(jce(z, y, w), -np.mean(w * logp[np.arange(7), y]), rtol=1e-14)
    # A masked token's label may be anything (an "ignore" index): weight 0 drops it.
    y_ignored, w0 = y.copy(), np.where(np.arange(7) == 3, 0.0, 1.0)
    y_ignored[3] = -100
    np.testing.assert_allclose(jce(z, y_ignored, w0), jce(z, y, w0), rtol=1e-15)
    # (diag(p) - p p^T) u per token, as dense 4 x 4 blocks; chunks of 1, 3 (7 = 3 + 3 + 1,
    # a ragged last chunk) and all 7 tokens agree to float64 rounding (4 terms per entry).
    pr = np.exp(logp)
    blocks = pr[:, :, None] * np.eye(4) - pr[:, :, None] * pr[:, None, :]
    dense = np.einsum("tij,tj->ti", blocks, u)
    hvp = jax.jit(softmax_hessian_vp, static_argnames="chunk_size")
    for chunk in (1, 3, 7):
        got = hvp(z, u, 0.5, chunk_size=chunk)
        np.testing.assert_allclose(got, 0.5 * dense, atol=16 * EPS * np.abs(u).max())
    # A partial of the loss binding keywords is recognised; a wrapper is not.
    assert closed_form_hessian(functools.partial(ce, labels=y)) is not None
    assert closed_form_hessian(lambda o, labels: ce(o, labels)) is None


def test_closed_form_product_memory_is_the_gradients():
    # float32, 1024 tokens x 4096 classes (one tokens x vocabulary array: 16 MiB), a linear
    # unembedding; compiled, never run. Measured on XLA:CPU (jax 0.10), MiB: gradient 32.0,
    # closed-form ggn_vp 35.0 (logits + J v + the chunk temporaries), generic ggn_vp 48.0
    # (a log_softmax loss: 64.0); operator products 32.0 either way; operators store
    # 16.6 (closed form) and 64.6 (generic).
    sd = jax.ShapeDtypeStruct
    p = {"w": sd((16, 4096), jnp.float32)}
    x, y = sd((8, 128, 16), jnp.float32), sd((8, 128), jnp.int32)
    linear = lambda p, x: x @ p["w"]
    temp = lambda f, *a: jax.jit(f).lower(*a).compile().memory_analysis().temp_size_in_bytes
    grad = temp(jax.grad(lambda p, x, y: ce(linear(p, x), y)), p, x, y)
    vp = lambda loss: lambda p, v, x, y: jaxcurv.ggn_vp(linear, loss, p, v, x=x, labels=y)
    closed, generic = temp(vp(ce), p, p, x, y), temp(vp(_generic), p, p, x, y)
    assert closed <= 1.25 * grad and closed <= generic  # 1.25: the chunks' 3 MiB, with margin
    build = lambda loss: lambda p, x, y: jaxcurv.ggn_operator(linear, loss, p, x=x, labels=y)
    op, op_generic = jax.eval_shape(build(ce), p, x, y), jax.eval_shape(build(_generic), p, x, y)
    assert temp(lambda op, v: op(v), op, p) <= 1.25 * grad
    one = 1024 * 4096 * 4
    # What the operator keeps: the logits, the model's linearization (x), the point, the
    # gradient, the value and one scale per token; nothing else of tokens x vocabulary size.
    assert _stored_bytes(op) <= one + _stored_bytes(x) + 2 * _stored_bytes(p) + 4 + 1024 * 4
    assert _stored_bytes(op_generic) - _stored_bytes(op) >= 2 * one


def test_softmax_cross_entropy_bad_input():
    z = jnp.zeros((3, 4))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy\(logits=...\).*floating.*int"):
        ce(jnp.zeros((3, 4), jnp.int32), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"labels=...\).*shape \(3,\).*got shape \(4,\)"):
        ce(z, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"labels=...\).*one-hot.*\(3, 4\).*got shape \(3, 5\)"):
        ce(z, jnp.zeros((3, 5)))
    with pytest.raises(TypeError, match=r"labels=...\).*integer class.*bool"):
        ce(z, jnp.zeros(3, bool))
    with pytest.raises(TypeError, match=r"labels=...\).*must be an array, got a str"):
        ce(z, "cat")
    with pytest.raises(ValueError, match=r"weights=...\).*shape \(3,\).*mask / mask.mean"):
        ce(z, jnp.zeros(3, jnp.int32), jnp.ones(4))
    with pytest.raises(ValueError, match=r"chunk_size=...\).*got 0"):
        softmax_hessian_vp(z, z, chunk_size=0)
