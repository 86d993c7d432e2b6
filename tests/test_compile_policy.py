"""The compile policy (``jaxcurv._compile``): right answers, one compile, flat memory.

A script that calls ``jaxcurv.hvp(lambda p: loss(p, batch), params, v)`` in a loop over
batches builds a new closure per call. Keying compiled code on the function object (as
the first version did) compiled once per batch, kept every batch alive in the cache, and
returned stale answers after a global the function reads changed. The oracle for every
answer here is the plain JAX expression (``jax.jvp(jax.grad(f))``, a dense matrix).
"""

from __future__ import annotations

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcurv
from tests.helpers import count_compiles


def _loss(p, batch):
    return jnp.mean(jnp.tanh(batch["x"] @ p["w"] + p["b"]) ** 2 * batch["y"])


def _batch(i, n=16, d=5):
    k1, k2 = jax.random.split(jax.random.key(i))
    return {"x": jax.random.normal(k1, (n, d)), "y": jax.random.uniform(k2, (n,))}


_PARAMS = {"w": jnp.linspace(-1.0, 1.0, 5), "b": jnp.asarray(0.3)}
_V = {"w": jnp.ones(5), "b": jnp.asarray(1.0)}


def _oracle_hvp(f, x, v):
    return jax.jvp(jax.grad(f), (x,), (v,))[1]


def _close(a, b):
    # float32, a handful of operations: 1e-5 relative is ~100 eps of margin.
    for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)


def test_hvp_with_a_closure_per_batch_compiles_once_and_is_right():
    def one(i):
        batch = _batch(i)
        got = jaxcurv.hvp(lambda p: _loss(p, batch), _PARAMS, _V)
        _close(got, _oracle_hvp(lambda p: _loss(p, batch), _PARAMS, _V))

    one(0)  # warm: compiles the product, the batch's sampling and the eager oracle
    with count_compiles() as compiles:
        for i in range(1, 6):
            one(i)
    assert compiles[0] == 0


def test_the_cache_keeps_no_batch_alive():
    def use_a_batch():
        batch = _batch(7, n=64)
        jaxcurv.hvp(lambda p: _loss(p, batch), _PARAMS, _V)
        jaxcurv.hessian_operator(lambda p: _loss(p, batch), _PARAMS)
        return weakref.ref(batch["x"])

    ref = use_a_batch()
    gc.collect()
    assert ref() is None


def test_a_changed_global_is_read_afresh():
    scale = jnp.asarray(2.0)
    power = 2.0

    def f(x):
        return scale * jnp.sum(x**power)

    x, v = jnp.arange(1.0, 4.0), jnp.ones(3)
    _close(jaxcurv.hvp(f, x, v), _oracle_hvp(f, x, v))
    scale = jnp.asarray(5.0)  # an array global: hoisted as an argument
    _close(jaxcurv.hvp(f, x, v), _oracle_hvp(f, x, v))
    power = 3.0  # a Python number: a literal of the jaxpr, so a new computation
    _close(jaxcurv.hvp(f, x, v), _oracle_hvp(f, x, v))


def test_a_global_read_through_a_nested_jit_is_read_afresh():
    inner = jnp.asarray(2.0)
    x, v = jnp.arange(1.0, 4.0), jnp.ones(3)
    for value in (2.0, 7.0):
        inner = jnp.asarray(value)
        g = jax.jit(lambda t, inner=inner: inner * jnp.sum(t**3))
        _close(jaxcurv.hvp(g, x, v), _oracle_hvp(g, x, v))


def test_inside_a_user_jit_the_product_is_inlined_and_traced_once():
    traces = [0]

    def f(p, batch):
        traces[0] += 1
        return _loss(p, batch)

    step = jax.jit(lambda p, v, batch: jaxcurv.hvp(lambda q: f(q, batch), p, v))
    for i in range(3):
        batch = _batch(i)
        _close(step(_PARAMS, _V, batch), _oracle_hvp(lambda q, b=batch: _loss(q, b), _PARAMS, _V))
    assert traces[0] == 1


def test_operators_and_spectra_per_batch_compile_once():
    def analyse(i):
        batch = _batch(i)
        op = jaxcurv.hessian_operator(lambda p: _loss(p, batch), _PARAMS)
        top = jaxcurv.eigenvalues(op, 2, key=jax.random.key(0))
        dense = np.linalg.eigvalsh(np.asarray(op.to_dense(), np.float64))
        return top, dense

    analyse(0)
    with count_compiles() as compiles:
        for i in range(1, 4):
            top, dense = analyse(i)
            # 6 x 6 float32 operator: Lanczos to full dimension is exact up to rounding;
            # 1e-4 of the spectral radius is ~1000 eps of margin.
            scale = np.max(np.abs(dense))
            np.testing.assert_allclose(top.eigenvalues, dense[-2:], atol=1e-4 * scale)
    assert compiles[0] == 0


def test_a_bare_callable_per_call_compiles_once():
    def one(i):
        m = jax.random.normal(jax.random.key(i), (6, 6))
        a = m @ m.T
        res = jaxcurv.eigenvalues(lambda v: a @ v, 1, example=jnp.zeros(6))
        ref = np.linalg.eigvalsh(np.asarray(a, np.float64))[-1]
        np.testing.assert_allclose(res.eigenvalues[-1], ref, rtol=1e-4)

    one(0)
    with count_compiles() as compiles:
        for i in range(1, 4):
            one(i)
    assert compiles[0] == 0


def test_ggn_products_per_batch_compile_once():
    def model(p, x):
        return jnp.tanh(x @ p["w"] + p["b"])

    def loss(out, y):
        return 0.5 * jnp.mean((out - y) ** 2)

    def gv(i):
        b = _batch(i)
        got = jaxcurv.ggn_vp(lambda p: model(p, b["x"]), lambda o: loss(o, b["y"]), _PARAMS, _V)
        # Oracle: J^T H J v with H = I / n for the mean squared error, by plain JAX.
        out, jv = jax.jvp(lambda p: model(p, b["x"]), (_PARAMS,), (_V,))
        (ref,) = jax.vjp(lambda p: model(p, b["x"]), _PARAMS)[1](jv / out.shape[0])
        return got, ref

    gv(0)
    with count_compiles() as compiles:
        for i in range(1, 4):
            _close(*gv(i))
    assert compiles[0] == 0


def test_hessian_free_update_with_a_closure_per_batch_compiles_once():
    opt = jaxcurv.hessian_free(curvature="hessian", damping=1.0, cg_maxiter=5)

    def step(params, state, i):
        batch = _batch(i)
        value_fn = lambda p: _loss(p, batch)
        grads = jax.grad(value_fn)(params)
        updates, state = opt.update(grads, state, params, value_fn=value_fn)
        params = optax.apply_updates(params, updates)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))
        # The loss the state reports is the loss at the parameters produced.
        np.testing.assert_allclose(state.new_loss, value_fn(params), rtol=1e-5)
        return params, state

    params, state = step(_PARAMS, opt.init(_PARAMS), 0)
    params, state = step(params, state, 1)
    with count_compiles() as compiles:
        for i in range(2, 5):
            params, state = step(params, state, i)
    assert compiles[0] == 0


@pytest.mark.parametrize("n", [3])
def test_loss_slices_per_batch_compile_once(n):
    def slices(i):
        batch = _batch(i)
        f = lambda p: _loss(p, batch)
        got = jaxcurv.loss_slices(f, _PARAMS, directions=_V, num_points=n, radius=1.0)
        ref = [f(jax.tree.map(lambda p, d, t=t: p + t * d, _PARAMS, _V)) for t in got.t]
        return got, jnp.stack(ref)

    slices(0)
    with count_compiles() as compiles:
        for i in range(1, 4):
            got, ref = slices(i)
            np.testing.assert_allclose(got.along_1d, ref, rtol=1e-5)
    assert compiles[0] == 0


def test_cg_with_a_closure_per_call_compiles_once():
    def one(i):
        m = jax.random.normal(jax.random.key(i), (5, 5))
        a = m @ m.T + 5.0 * jnp.eye(5)
        b = jnp.arange(1.0, 6.0)
        x, info = jaxcurv.cg(lambda v: a @ v, b, tol=1e-6)
        # float32, cond(a) < 100 here: the 1e-6 residual stop gives a forward error of
        # ~1e-4 relative at worst; 1e-3 leaves an order of magnitude of margin.
        ref = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
        np.testing.assert_allclose(x, ref, rtol=1e-3)
        assert bool(info.converged)

    one(0)
    with count_compiles() as compiles:
        for i in range(1, 4):
            one(i)
    assert compiles[0] == 0
