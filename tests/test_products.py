"""Curvature products and operators against dense Hessians, closed forms and each other."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv
from jaxcurv.products import as_matvec
from tests.helpers import count_compiles


def _mlp_problem(dtype=jnp.float64, container="dict", seed=0):
    """A 3-4-2 tanh MLP with softmax cross-entropy on a batch of 5."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.standard_normal((3, 4)), rng.standard_normal(4) * 0.1
    w2, b2 = rng.standard_normal((4, 2)), rng.standard_normal(2) * 0.1
    if container == "dict":
        params = {"l1": {"w": w1, "b": b1}, "l2": {"w": w2, "b": b2}}
        unpack = lambda p: (p["l1"]["w"], p["l1"]["b"], p["l2"]["w"], p["l2"]["b"])
    else:
        params = ((w1, b1), (w2, b2))
        unpack = lambda p: (p[0][0], p[0][1], p[1][0], p[1][1])
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    x = jnp.asarray(rng.standard_normal((5, 3)), dtype)
    y = jax.nn.one_hot(jnp.array([0, 1, 1, 0, 1]), 2, dtype=dtype)

    def model_fn(p):
        a, b, c, d = unpack(p)
        return jnp.tanh(x @ a + b) @ c + d

    def loss_fn(logits):
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))

    return params, model_fn, loss_fn


def _dense(fun_of_flat, params):
    # Jitted: one compile, where eager jax.hessian dispatches (and compiles) op by op.
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda z: fun_of_flat(unravel(z))))(flat)), flat, unravel


@pytest.mark.parametrize("container", ["dict", "tuple"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_hvp_and_operator_equal_dense_hessian(container, dtype):
    params, model_fn, loss_fn = _mlp_problem(dtype, container)
    f = lambda p: loss_fn(model_fn(p))
    h, flat, unravel = _dense(f, params)
    rng = np.random.default_rng(1)
    v_flat = jnp.asarray(rng.standard_normal(flat.size), dtype)
    v = unravel(v_flat)
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    hv = ravel_pytree(jaxcurv.hvp(f, params, v))[0]
    np.testing.assert_allclose(hv, h @ np.asarray(v_flat), rtol=tol, atol=tol)
    op = jaxcurv.hessian_operator(f, params)
    np.testing.assert_allclose(ravel_pytree(op(v))[0], hv, rtol=tol, atol=tol)
    np.testing.assert_allclose(ravel_pytree(op @ v)[0], hv, rtol=tol, atol=tol)
    np.testing.assert_allclose(op.to_dense(), h, rtol=tol, atol=tol)
    np.testing.assert_allclose(ravel_pytree(op.diagonal())[0], np.diag(h), rtol=tol, atol=tol)
    np.testing.assert_allclose(op.value, f(params), rtol=tol)
    np.testing.assert_allclose(
        ravel_pytree(op.grad)[0], ravel_pytree(jax.jit(jax.grad(f))(params))[0], rtol=tol, atol=tol
    )
    assert op.shape == (flat.size, flat.size) and op.dtype == dtype
    assert jax.tree.structure(op(v)) == jax.tree.structure(params)


def test_hvp_extra_args_are_held_fixed():
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.standard_normal((4, 4)))
    f = lambda x, m, c: 0.5 * x @ m @ x + c * jnp.sum(x**4)
    x, v = jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(4))
    expected = 0.5 * (a + a.T) @ v + 3.0 * 12 * x**2 * v
    np.testing.assert_allclose(jaxcurv.hvp(f, x, v, a, 3.0), expected, rtol=1e-12)
    op = jaxcurv.hessian_operator(f, x, a, 3.0)
    np.testing.assert_allclose(op(v), expected, rtol=1e-12)


def test_ggn_equals_hessian_for_linear_model_under_squared_loss():
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.standard_normal((6, 4)))
    t = jnp.asarray(rng.standard_normal(6))
    model_fn = lambda w: a @ w
    loss_fn = lambda y: 0.5 * jnp.sum((y - t) ** 2)
    w = jnp.asarray(rng.standard_normal(4))
    expected = np.asarray(a.T @ a)  # closed form: GGN = Hessian = A^T A
    op = jaxcurv.ggn_operator(model_fn, loss_fn, w)
    np.testing.assert_allclose(op.to_dense(), expected, rtol=1e-12)
    np.testing.assert_allclose(
        jaxcurv.hessian_operator(lambda z: loss_fn(model_fn(z)), w).to_dense(), expected, rtol=1e-12
    )
    v = jnp.asarray(rng.standard_normal(4))
    np.testing.assert_allclose(jaxcurv.ggn_vp(model_fn, loss_fn, w, v), expected @ v, rtol=1e-12)
    np.testing.assert_allclose(op.grad, a.T @ (a @ w - t), rtol=1e-12)


@pytest.mark.parametrize("container", ["dict", "tuple"])
def test_ggn_matches_jacobian_formula_and_is_psd(container):
    params, model_fn, loss_fn = _mlp_problem(jnp.float64, container)
    flat, unravel = ravel_pytree(params)
    jac = np.asarray(jax.jit(jax.jacobian(lambda z: model_fn(unravel(z)).ravel()))(flat))
    out = model_fn(params)
    h_loss = np.asarray(jax.jit(jax.hessian(lambda o: loss_fn(o.reshape(out.shape))))(out.ravel()))
    expected = jac.T @ h_loss @ jac
    op = jaxcurv.ggn_operator(model_fn, loss_fn, params)
    g = np.asarray(op.to_dense())
    np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12)
    assert np.linalg.eigvalsh(g).min() > -1e-10
    v = unravel(jnp.asarray(np.random.default_rng(4).standard_normal(flat.size)))
    np.testing.assert_allclose(
        ravel_pytree(jaxcurv.ggn_vp(model_fn, loss_fn, params, v))[0],
        expected @ np.asarray(ravel_pytree(v)[0]),
        rtol=1e-10,
        atol=1e-12,
    )
    # The GGN's gradient J^T grad(loss) is the true gradient.
    np.testing.assert_allclose(
        ravel_pytree(op.grad)[0],
        ravel_pytree(jax.jit(jax.grad(lambda p: loss_fn(model_fn(p))))(params))[0],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        ravel_pytree(op.diagonal())[0], np.diag(expected), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("jit", [False, True])
def test_operators_pass_through_jit_and_vmap(jit):
    params, model_fn, loss_fn = _mlp_problem(jnp.float64)
    f = lambda p: loss_fn(model_fn(p))
    hop = jaxcurv.hessian_operator(f, params)
    gop = jaxcurv.ggn_operator(model_fn, loss_fn, params)
    apply = lambda op, v: op(v)
    apply = jax.jit(apply) if jit else apply
    flat, unravel = ravel_pytree(params)
    vs = jnp.asarray(np.random.default_rng(5).standard_normal((3, flat.size)))
    for op in (hop, gop):
        dense = np.asarray(op.to_dense())
        batched = jax.vmap(lambda z, op=op: ravel_pytree(apply(op, unravel(z)))[0])(vs)
        np.testing.assert_allclose(batched, vs @ dense.T, rtol=1e-10, atol=1e-12)


def test_no_recompilation_on_second_call():
    params, model_fn, loss_fn = _mlp_problem(jnp.float32)
    f = lambda p: loss_fn(model_fn(p))
    v = jax.tree.map(jnp.ones_like, params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(op, v):
        return op(v)

    op1 = jaxcurv.hessian_operator(f, params)
    op2 = jaxcurv.hessian_operator(f, jax.tree.map(lambda a: a * 2, params))
    apply(op1, v)
    apply(op2, v)  # a new point of the same shapes reuses the compiled application

    jaxcurv.hvp(f, params, v)
    shifted = jax.tree.map(lambda a: a + 1, params)
    with count_compiles() as compiles:
        jaxcurv.hvp(f, shifted, v)
    assert compiles[0] == 0


def test_ggn_operator_equals_plain_product_in_float32():
    params, model_fn, loss_fn = _mlp_problem(jnp.float32)
    v = jax.tree.map(jnp.ones_like, params)
    gop = jaxcurv.ggn_operator(model_fn, loss_fn, params)
    np.testing.assert_allclose(
        ravel_pytree(gop(v))[0],
        ravel_pytree(jaxcurv.ggn_vp(model_fn, loss_fn, params, v))[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_as_matvec_normalises_operators_matrices_and_callables():
    m = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    mv, ex = as_matvec(m)
    np.testing.assert_allclose(mv(jnp.array([1.0, 1.0])), [3.0, 4.0])
    assert ex.shape == (2,)
    op = jaxcurv.hessian_operator(lambda x: jnp.sum(x**2), jnp.ones(3))
    mv, ex = as_matvec(op)
    np.testing.assert_allclose(mv(jnp.ones(3)), 2 * np.ones(3))
    mv, ex = as_matvec(lambda v: v, example={"a": jnp.ones(2)})
    assert set(ex) == {"a"}
    with pytest.raises(ValueError, match=r"bare callable.*example="):
        as_matvec(lambda v: v)
    with pytest.raises(ValueError, match=r"square"):
        as_matvec(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"example.*shape \(2,\)"):
        as_matvec(m, example=jnp.ones(3))
    with pytest.raises(TypeError, match=r"`A` must be"):
        as_matvec("matrix")


def test_bad_tangents_and_outputs():
    f = lambda p: jnp.sum(p["a"] ** 2)
    x = {"a": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"`v` must have the same tree structure as `x`"):
        jaxcurv.hvp(f, x, (jnp.ones(3),))
    with pytest.raises(ValueError, match=r"`v` leaf \['a'\] has shape \(2,\).*\(3,\)"):
        jaxcurv.hvp(f, x, {"a": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"dtype float32.*float64.*astype"):
        jaxcurv.hvp(f, x, {"a": jnp.ones(3, jnp.float32)})
    with pytest.raises(ValueError, match=r"scalar-valued.*shape \(3,\)"):
        jaxcurv.hvp(lambda p: p["a"], x, x)
    with pytest.raises(TypeError, match=r"integer"):
        jaxcurv.hvp(f, {"a": jnp.arange(3)}, {"a": jnp.arange(3)})
    with pytest.raises(ValueError, match=r"loss_fn.*scalar"):
        jaxcurv.ggn_vp(lambda p: p["a"], lambda y: y, x, x)
    with pytest.raises(TypeError, match=r"model_fn.*callable"):
        jaxcurv.ggn_operator(None, jnp.sum, x)
    op = jaxcurv.hessian_operator(f, x)
    with pytest.raises(ValueError, match=r"`v` leaf"):
        op({"a": jnp.ones(4)})


def test_ggn_with_keyword_batch_data_reuses_compilation():
    rng = np.random.default_rng(6)
    model_fn = lambda w, x: jnp.tanh(x @ w)
    loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)
    w = jnp.asarray(rng.standard_normal(3))
    batches = [
        (jnp.asarray(rng.standard_normal((4, 3))), jnp.asarray(rng.standard_normal(4)))
        for _ in range(3)
    ]
    new_compiles = []
    for x, y in batches:
        with count_compiles() as compiles:
            op = jaxcurv.ggn_operator(model_fn, loss_fn, w, x=x, y=y)
        new_compiles.append(compiles[0])
        closed = jaxcurv.ggn_operator(
            lambda p, x=x: model_fn(p, x), lambda o, y=y: loss_fn(o, y), w
        )
        v = jnp.ones(3)
        np.testing.assert_allclose(op(v), closed(v), rtol=1e-12)
        np.testing.assert_allclose(
            jaxcurv.ggn_vp(model_fn, loss_fn, w, v, x=x, y=y), op(v), rtol=1e-12
        )
        # Oracle: J^T H J with J from finite-size jacobian and H = I / n for the mean loss.
        j = np.asarray(jax.jacobian(lambda p, x=x: model_fn(p, x))(w))
        np.testing.assert_allclose(op.to_dense(), j.T @ j / 4, rtol=1e-10)
    # The first batch compiles unless an earlier test built the same computation; the
    # later ones, same shapes and new data, never do.
    assert new_compiles[1:] == [0, 0]


def test_ggn_keywords_are_routed_as_model_and_loss_routes_them():
    rng = np.random.default_rng(7)
    x, y = jnp.asarray(rng.standard_normal((6, 3))), jnp.asarray(rng.standard_normal(6))
    w, v = jnp.asarray(rng.standard_normal(3)), jnp.asarray(rng.standard_normal(3))
    scale = jnp.asarray(3.0)
    # `scale` is named by both functions: both receive it.
    model_fn = lambda p, x, scale: scale * (x @ p)
    loss_fn = lambda out, y, scale: jnp.mean((out - y) ** 2) / scale
    got = jaxcurv.ggn_vp(model_fn, loss_fn, w, v, x=x, y=y, scale=scale)
    # Oracle: G = J^T H J with J = scale X and H = 2 I / (n scale).
    expected = (3.0 * x).T @ ((2.0 / (6 * 3.0)) * ((3.0 * x) @ v))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    dense = jaxcurv.ggn_operator(model_fn, loss_fn, w, x=x, y=y, scale=scale).to_dense()
    np.testing.assert_allclose(dense @ v, expected, rtol=1e-12)
    with pytest.raises(TypeError, match=r"\['z'\].*neither `model_fn` nor `loss_fn`"):
        jaxcurv.ggn_vp(model_fn, loss_fn, w, v, x=x, y=y, scale=scale, z=1.0)
    with pytest.raises(TypeError, match=r"\['z'\]"):
        jaxcurv.ggn_operator(model_fn, loss_fn, w, x=x, y=y, scale=scale, z=1.0)


@pytest.mark.parametrize("fn", ["ggn_vp", "ggn_operator"])
def test_positional_model_and_loss_args_still_work_with_a_deprecation_warning(fn):
    rng = np.random.default_rng(8)
    x, y = jnp.asarray(rng.standard_normal((5, 2))), jnp.asarray(rng.standard_normal(5))
    w, v = jnp.asarray(rng.standard_normal(2)), jnp.asarray(rng.standard_normal(2))
    model_fn = lambda p, x: jnp.tanh(x @ p)
    loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)

    def product(**kw):
        if fn == "ggn_vp":
            return jaxcurv.ggn_vp(model_fn, loss_fn, w, v, **kw)
        return jaxcurv.ggn_operator(model_fn, loss_fn, w, **kw)(v)

    with pytest.warns(DeprecationWarning) as record:
        old = product(model_args=(x,), loss_args=(y,))
    message = str(record[0].message)
    assert f"`{fn}(model_args=..., loss_args=...)` is deprecated" in message
    assert "x=x, y=y)" in message  # says what to write instead
    assert record[0].filename == __file__  # points at the caller's line
    # Oracle: J^T H J v with J = diag(1 - tanh^2) X and H = I / n, in numpy.
    xn, wn, vn = np.asarray(x), np.asarray(w), np.asarray(v)
    jac = (1 - np.tanh(xn @ wn) ** 2)[:, None] * xn
    np.testing.assert_allclose(old, jac.T @ (jac @ vn) / 5, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the keyword spelling warns about nothing
        np.testing.assert_allclose(product(x=x, y=y), old, rtol=1e-12)
