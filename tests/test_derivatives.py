"""Derivative wrappers against the seed's worked examples, closed forms, finite differences."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from tests.helpers import fd_gradient, fd_hessian, fd_jacobian

# ------------------------------------------------------------------- seed examples


@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_seed_jacobian_example(mode, dtype):
    # f(x, y) = [x^2 + y, xy] has J = [[2x, 1], [y, x]], J(2, 3) = [[4, 1], [3, 2]].
    f = lambda v: jnp.stack([v[0] ** 2 + v[1], v[0] * v[1]])
    j = jaxcurv.jacobian(f, mode=mode)(jnp.array([2.0, 3.0], dtype))
    assert j.dtype == dtype
    np.testing.assert_array_equal(np.asarray(j), [[4.0, 1.0], [3.0, 2.0]])


def test_seed_jacobian_two_arguments():
    f = lambda x, y: jnp.stack([x**2 + y, x * y])
    jx, jy = jaxcurv.jacobian(f, argnums=(0, 1))(2.0, 3.0)
    np.testing.assert_array_equal(np.stack([jx, jy], axis=1), [[4.0, 1.0], [3.0, 2.0]])


@pytest.mark.parametrize("point", [(0.0, 0.0), (1.0, -2.0), (3.5, 0.25)])
def test_seed_hessian_example(point):
    # f(x, y) = x^2 + 3xy + y^2: gradient [2x + 3y, 3x + 2y], H = [[2, 3], [3, 2]] everywhere.
    f = lambda v: v[0] ** 2 + 3 * v[0] * v[1] + v[1] ** 2
    x = jnp.array(point, jnp.float64)
    np.testing.assert_allclose(
        jaxcurv.gradient(f)(x), [2 * x[0] + 3 * x[1], 3 * x[0] + 2 * x[1]], rtol=1e-12
    )
    np.testing.assert_array_equal(np.asarray(jaxcurv.hessian(f)(x)), [[2.0, 3.0], [3.0, 2.0]])


def test_derivative_scalar():
    np.testing.assert_allclose(jaxcurv.derivative(jnp.sin)(0.3), np.cos(0.3), rtol=1e-6)
    d = jax.vmap(jaxcurv.derivative(lambda x: x**3))(jnp.arange(4.0))
    np.testing.assert_allclose(d, 3 * np.arange(4.0) ** 2)


# ------------------------------------------------------------------ independent oracles


def _smooth(x):
    return jnp.sum(jnp.sin(x) * x**2) + jnp.prod(jnp.cos(x[:3])) + jnp.sum(jnp.tanh(x)) ** 2


def test_gradient_and_hessian_match_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(6)
    fnp = lambda z: float(_smooth(jnp.asarray(z)))
    np.testing.assert_allclose(
        jaxcurv.gradient(_smooth)(jnp.asarray(x)), fd_gradient(fnp, x), rtol=1e-6, atol=1e-8
    )
    np.testing.assert_allclose(
        jaxcurv.hessian(_smooth)(jnp.asarray(x)), fd_hessian(fnp, x), rtol=1e-5, atol=1e-5
    )


def test_quadratic_hessian_is_a_plus_a_transpose():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((7, 7))
    f = lambda x: x @ jnp.asarray(a) @ x
    h = jaxcurv.hessian(f, chunk_size=3)(jnp.zeros(7))
    np.testing.assert_allclose(h, a + a.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape_in,shape_out", [((9,), 3), ((3,), 9), ((2, 3), 4)])
def test_jacobian_modes_agree_with_finite_differences(shape_in, shape_out):
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal((shape_out, int(np.prod(shape_in)))))
    f = lambda x: jnp.tanh(w @ jnp.ravel(x)) + jnp.sum(x**2)
    x = rng.standard_normal(shape_in)
    expected = fd_jacobian(lambda z: np.asarray(f(jnp.asarray(z))), x).reshape(
        (shape_out,) + shape_in
    )
    for mode in ["auto", "fwd", "rev"]:
        np.testing.assert_allclose(
            jaxcurv.jacobian(f, mode=mode)(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-8
        )


def test_jacobian_auto_picks_mode_by_shape(monkeypatch):
    picked = []
    import jaxcurv.derivatives as d

    real = d._choose_mode
    monkeypatch.setattr(d, "_choose_mode", lambda n, m: picked.append(real(n, m)) or real(n, m))
    jaxcurv.jacobian(lambda x: jnp.sum(x) * jnp.ones(3))(jnp.ones(10))
    jaxcurv.jacobian(lambda x: jnp.sum(x) * jnp.ones(10))(jnp.ones(3))
    assert picked == ["rev", "fwd"]


@pytest.mark.parametrize("container", ["dict", "tuple"])
def test_hessian_pytree_matches_jax_hessian(container):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(3), rng.standard_normal((2, 2))
    tree = (
        {"a": jnp.asarray(a), "b": jnp.asarray(b)}
        if container == "dict"
        else (jnp.asarray(a), (jnp.asarray(b),))
    )
    leaves = lambda t: jax.tree.leaves(t)
    f = lambda t: (
        jnp.sum(jnp.sin(leaves(t)[0])) * jnp.sum(leaves(t)[1] ** 3) + jnp.sum(leaves(t)[0] ** 2)
    )
    mine, ref = jaxcurv.hessian(f, chunk_size=2)(tree), jax.hessian(f)(tree)
    assert jax.tree.structure(mine) == jax.tree.structure(ref)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12), mine, ref)


def test_hessian_has_aux_and_argnums():
    f = lambda x, y: (jnp.sum(x**2 * y), {"y": y})
    h, aux = jaxcurv.hessian(f, argnums=0, has_aux=True)(jnp.ones(2), jnp.array([2.0, 5.0]))
    np.testing.assert_allclose(h, np.diag([4.0, 10.0]))
    np.testing.assert_allclose(aux["y"], [2.0, 5.0])
    g, aux = jaxcurv.gradient(f, argnums=1, has_aux=True)(jnp.array([1.0, 3.0]), jnp.ones(2))
    np.testing.assert_allclose(g, [1.0, 9.0])


@pytest.mark.parametrize("jit", [False, True])
def test_wrappers_under_jit_and_vmap(jit):
    f = lambda x: jnp.sum(jnp.sin(x) ** 2)
    hess = jaxcurv.hessian(f)
    hess = jax.jit(hess) if jit else hess
    xs = jnp.linspace(0.0, 1.0, 6).reshape(2, 3)
    batched = jax.vmap(hess)(xs)
    for x, h in zip(xs, batched):
        np.testing.assert_allclose(h, np.diag(2 * np.cos(2 * np.asarray(x))), atol=1e-6)


def test_float32_stays_float32():
    f = lambda x: jnp.sum(x**3)
    x = jnp.ones(3, jnp.float32)
    assert jaxcurv.gradient(f)(x).dtype == jnp.float32
    assert jaxcurv.hessian(f)(x).dtype == jnp.float32


# ------------------------------------------------------------------------ describe


def test_describe_reproduces_seed_table():
    scalar = jaxcurv.describe(lambda x: x**2, 1.0)
    assert (scalar.kind, scalar.shape) == ("derivative", (1, 1))
    grad = jaxcurv.describe(lambda x: jnp.sum(x**2), jnp.zeros(5))
    assert (grad.kind, grad.shape, grad.hessian.kind, grad.hessian.shape) == (
        "gradient",
        (5,),
        "hessian",
        (5, 5),
    )
    jac = jaxcurv.describe(lambda x: jnp.stack([x[0] ** 2 + x[1], x[0] * x[1], x[0]]), jnp.zeros(2))
    assert (jac.kind, jac.shape, jac.hessian) == ("jacobian", (3, 2), None)
    table = jaxcurv.derivative_table([("f", lambda x: jnp.sum(x**2), (jnp.zeros(4),))])
    assert "| f | vector | scalar | gradient | 4 x 1 |" in table
    assert "| f | vector | scalar | hessian | 4 x 4 |" in table


def test_describe_pytree_blocks():
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(3)}
    d = jaxcurv.describe(lambda p, x: p["w"] @ x + p["b"], params, jnp.zeros(2))
    assert d.kind == "jacobian" and d.shape == (3, 9)
    assert sorted(b[2] for b in d.blocks) == [(3, 3), (3, 3, 2)]


# ------------------------------------------------------------------------ bad input


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"scalar output.*shape \(3,\).*jacobian"):
        jaxcurv.gradient(lambda x: x)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"scalar output"):
        jaxcurv.hessian(lambda x: x)(jnp.ones(3))
    with pytest.raises(TypeError, match=r"integer.*int32.*jnp.asarray"):
        jaxcurv.gradient(lambda x: jnp.sum(x))(jnp.arange(3, dtype=jnp.int32))
    with pytest.raises(TypeError, match=r"complex"):
        jaxcurv.hessian(lambda x: jnp.sum(jnp.abs(x)))(jnp.ones(2, jnp.complex64))
    with pytest.raises(ValueError, match=r"mode.*'bogus'"):
        jaxcurv.jacobian(jnp.sin, mode="bogus")
    with pytest.raises(ValueError, match=r"argnums=2.*out of range.*2 positional"):
        jaxcurv.gradient(lambda x, y: jnp.sum(x * y), argnums=2)(jnp.ones(2), jnp.ones(2))
    with pytest.raises(TypeError, match=r"argnums"):
        jaxcurv.gradient(jnp.sum, argnums="0")
    with pytest.raises(TypeError, match=r"callable"):
        jaxcurv.hessian(3.0)
    with pytest.raises(ValueError, match=r"derivative.*scalar -> scalar.*gradient"):
        jaxcurv.derivative(jnp.sin)(jnp.ones(2))


def test_hessian_over_memory_budget_points_to_products():
    f = lambda x: jnp.sum(x**2)
    with pytest.raises(ValueError, match=r"100000 x 100000.*max_bytes.*hvp.*hessian_operator"):
        jaxcurv.hessian(f)(jax.ShapeDtypeStruct((100_000,), jnp.float32))
    with pytest.raises(ValueError, match=r"max_bytes"):
        jaxcurv.hessian(f, max_bytes=100)(jnp.ones(10))
    with pytest.raises(ValueError, match=r"chunk_size"):
        jaxcurv.hessian(f, chunk_size=0)


# ------------------------------------------------- drop-in for jax.* (issue 11)
# One test per reliability item; tests/test_jax_compat.py runs JAX's own cases through both.

WRAPPERS = {
    "gradient": (jaxcurv.gradient, jax.grad),
    "jacobian-fwd": (lambda f, *a, **k: jaxcurv.jacobian(f, *a, mode="fwd", **k), jax.jacfwd),
    "jacobian-rev": (lambda f, *a, **k: jaxcurv.jacobian(f, *a, mode="rev", **k), jax.jacrev),
    "jacobian-auto": (jaxcurv.jacobian, jax.jacfwd),  # scalar in and out: auto picks fwd
    "hessian": (jaxcurv.hessian, jax.hessian),
}


def _assert_tree_equal(mine, ref):
    """Same structure, shapes, dtypes, weak types; values equal to float64 rounding."""
    assert jax.tree.structure(mine) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        assert (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", WRAPPERS)
def test_keyword_arguments_reach_fun(name):
    mine, ref = WRAPPERS[name]
    f = lambda x, scale=1.0, *, flag: scale * jnp.sin(x) ** 2 if flag else None
    _assert_tree_equal(mine(f)(0.3, scale=2.0, flag=True), ref(f)(0.3, scale=2.0, flag=True))


@pytest.mark.parametrize("name", WRAPPERS)
def test_wrapped_function_keeps_the_signature(name):
    # jax.jit(static_argnames=...) reads the signature; "(*args)" makes it an invalid name.
    mine, ref = WRAPPERS[name]

    def f(x, flag):
        return x**2 if flag else jnp.zeros_like(x)

    assert str(inspect.signature(mine(f))) == "(x, flag)"
    g = jax.jit(mine(f), static_argnames=["flag"])
    _assert_tree_equal(g(1.5, True), ref(f)(1.5, True))


@pytest.mark.parametrize("name", ["gradient", "jacobian-auto", "hessian"])
def test_python_control_flow_on_concrete_inputs(name):
    # No separate jax.eval_shape trace: `fun` sees concrete values, as under jax.grad.
    mine, ref = WRAPPERS[name]

    def f(x):
        if x > 0 and x.astype(bool).item():
            return x**3
        return -x

    for x in (2.0, -1.0):
        _assert_tree_equal(mine(f)(x), ref(f)(x))


@pytest.mark.parametrize("name", WRAPPERS)
def test_jit_traces_fun_once(name):
    traces = []

    def f(x):
        traces.append(None)
        return jnp.sum(jnp.sin(x))

    g = jax.jit(WRAPPERS[name][0](f))
    g(jnp.ones(3))
    g(jnp.zeros(3))
    assert len(traces) == 1


@pytest.mark.parametrize("name", WRAPPERS)
def test_numpy_integer_argnums(name):
    mine, _ = WRAPPERS[name]
    f = lambda x, y: x * y**2
    # jax.grad's reading of argnums (operator.index): the bare derivative in y.
    expected = 4.0 if name == "hessian" else 12.0
    out = mine(f, argnums=np.int64(1))(2.0, 3.0)
    assert out.shape == () and float(out) == expected


def test_hessian_of_mixed_precision_tree_matches_jax():
    x = {
        "a": jnp.asarray([1.5, -0.5], jnp.float32),
        "b": jnp.asarray([0.5, 2.0, -1.0], jnp.float64),
        "c": 2.0,  # weakly typed
    }

    def f(t):
        a = t["a"].astype(jnp.float64)
        return jnp.sum(a**2) * jnp.sum(t["b"] ** 3) + t["c"] ** 3 + jnp.sum(a) * t["c"]

    mine, ref = jaxcurv.hessian(f, chunk_size=2)(x), jax.hessian(f)(x)
    assert mine["a"]["b"].dtype == jnp.float32 and mine["c"]["c"].weak_type
    # float32 rows: both round the same float64 products to float32 (at most 1 ulp apart).
    assert jax.tree.structure(mine) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        assert (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type)
        np.testing.assert_allclose(a, b, rtol=2 * float(jnp.finfo(a.dtype).eps))


def test_hessian_budget_prices_each_block_in_its_own_dtype():
    # 10 float32 + 10 float64 inputs: rows of the float32 leaf cost 4 bytes an entry.
    x = (jnp.ones(10, jnp.float32), jnp.ones(10, jnp.float64))
    f = lambda t: jnp.sum(t[0] ** 2) * jnp.sum(t[1] ** 2)
    nbytes = 20 * (10 * 4 + 10 * 8)
    with pytest.raises(ValueError, match=r"20 x 20 float32/float64 matrix of 2,400 bytes"):
        jaxcurv.hessian(f, max_bytes=nbytes - 1)(x)
    _assert_tree_equal(jaxcurv.hessian(f, max_bytes=nbytes, chunk_size=3)(x), jax.hessian(f)(x))


@pytest.mark.parametrize("name", WRAPPERS)
@pytest.mark.parametrize("out", [lambda x: (1, 2, 3), lambda x: x, lambda x: (x,)])
def test_has_aux_needs_a_pair(name, out):
    with pytest.raises(TypeError, match=r"has_aux=True\)` expects `fun` to return a two-element"):
        WRAPPERS[name][0](out, has_aux=True)(1.0)


@pytest.mark.parametrize("name", WRAPPERS)
def test_repeated_argnums_is_refused(name):
    mine, _ = WRAPPERS[name]
    f = lambda x, y: x * y
    with pytest.raises(ValueError, match=r"argnums=\(0, 0\)\)` names the same argument twice"):
        mine(f, argnums=(0, 0))
    with pytest.raises(ValueError, match=r"argnums=\(0, -2\)\)` names the same argument twice"):
        mine(f, argnums=(0, -2))(1.0, 2.0)


@pytest.mark.parametrize("name", ["jacobian-fwd", "jacobian-rev", "jacobian-auto", "hessian"])
def test_empty_tree_has_no_array_leaves(name):
    with pytest.raises(ValueError, match=r"has nothing to differentiate.*no array leaves"):
        WRAPPERS[name][0](lambda d: 1.0)({})


def test_gradient_of_empty_tree_is_the_empty_tree_as_in_jax():
    assert jaxcurv.gradient(lambda d: 1.0)({}) == jax.grad(lambda d: 1.0)({}) == {}


@pytest.mark.parametrize("name", WRAPPERS)
def test_non_array_leaves_name_their_path(name):
    import equinox as eqx

    mine, _ = WRAPPERS[name]
    fix = r"eqx\.partition\(model, eqx\.is_inexact_array\)"
    with pytest.raises(TypeError, match=r"at \['act'\] is a str 'tanh'.*" + fix):
        mine(lambda p: jnp.sum(p["w"] ** 2))({"w": jnp.ones(2), "act": "tanh"})
    model = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"at \.activation is a custom_jvp `relu`.*" + fix):
        mine(lambda m: jnp.sum(m(jnp.ones(2))))(model)


def test_check_real_inputs_contract():
    # Shared with products, determinism, spectral and hessian_free.
    from jaxcurv._checks import check_real_inputs as _check_real_inputs

    _check_real_inputs("f", {"w": jnp.ones(2), "b": 1.0, "s": jax.ShapeDtypeStruct((2,), float)})
    with pytest.raises(ValueError, match=r"`f` has nothing.*`params` has no array leaves"):
        _check_real_inputs("f", {"a": None}, "`params`")
    with pytest.raises(TypeError, match=r"`params` at \['f'\] is a PjitFunction `tanh`"):
        _check_real_inputs("f", {"f": jnp.tanh}, "`params`")
    with pytest.raises(TypeError, match=r"at \[0\] has integer/bool dtype int32"):
        _check_real_inputs("f", [jnp.ones(2, jnp.int32)])
    with pytest.raises(TypeError, match=r"at <root> has complex dtype complex64"):
        _check_real_inputs("f", jnp.ones(2, jnp.complex64))
