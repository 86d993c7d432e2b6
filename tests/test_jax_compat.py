"""jaxcurv's derivative wrappers are drop-in for JAX's: JAX's own test cases, run through both.

The cases are ported from ``tests/api_test.py`` of jax-ml/jax (the test each comes from is
named next to it). Every case runs through ``jax.grad`` / ``jax.jacfwd`` / ``jax.jacrev`` /
``jax.hessian`` and through ``jaxcurv.gradient`` / ``jacobian(mode="fwd")`` /
``jacobian(mode="rev")`` / ``hessian``, and the results must agree in tree structure, leaf
types, shapes, dtypes, weak types and values. ``jacobian(mode="auto")`` is checked against
``jax.jacfwd`` or ``jax.jacrev``, whichever its documented rule picks (forward when the
input is no larger than the output).

Values: ``gradient`` and ``jacobian(mode="fwd"/"rev")`` run JAX's own transform on the
same operations, so they must be bitwise equal. ``hessian`` (columns of a linearized
gradient) and ``jacobian(mode="auto")`` (JAX's transform of the linearized function)
evaluate the same forward-over-reverse products in another order, so they may differ by
rounding: ``_TOL_ULPS`` units in the last place of the largest entry, ample for these
functions of a handful of terms each.

Where jaxcurv deliberately raises a clearer error instead of following JAX, the test says so
and checks both sides: JAX's behaviour and jaxcurv's error.
"""

from __future__ import annotations

import functools
import inspect
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv

_TOL_ULPS = 64

# name -> (JAX's transform, jaxcurv's, whether jaxcurv's values are JAX's bit for bit)
PAIRS = {
    "grad": (jax.grad, jaxcurv.gradient, True),
    "jacfwd": (jax.jacfwd, functools.partial(jaxcurv.jacobian, mode="fwd"), True),
    "jacrev": (jax.jacrev, functools.partial(jaxcurv.jacobian, mode="rev"), True),
    "hessian": (jax.hessian, jaxcurv.hessian, False),
}
JACOBIANS = ["jacfwd", "jacrev"]


def _jax_auto(fun, argnums=0, has_aux=False):
    """The oracle for ``jacobian(mode="auto")``: JAX's jacfwd or jacrev by jaxcurv's rule."""

    @functools.wraps(fun)
    def jac(*args, **kwargs):
        # A concrete call, only to read the output size (arrays, so `.item()` works).
        nums = (argnums,) if isinstance(argnums, int) else argnums
        arrays = [jax.tree.map(jnp.asarray, a) if i in nums else a for i, a in enumerate(args)]
        out = fun(*arrays, **kwargs)
        out = out[0] if has_aux else out
        n_in = sum(np.size(leaf) for leaf in jax.tree.leaves([args[i] for i in nums]))
        n_out = sum(np.size(leaf) for leaf in jax.tree.leaves(out))
        transform = jax.jacfwd if n_in <= n_out else jax.jacrev
        return transform(fun, argnums, has_aux=has_aux)(*args, **kwargs)

    return jac


PAIRS["auto"] = (_jax_auto, functools.partial(jaxcurv.jacobian, mode="auto"), False)
ALL = list(PAIRS)  # for scalar-output functions: every pair applies
VECTOR = ["jacfwd", "jacrev", "auto"]  # for vector-output functions


def assert_same(mine, ref, exact=True):
    """Same tree, leaf types, shapes, dtypes, weak types, and values (see module docstring)."""
    assert jax.tree.structure(mine) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        if not isinstance(b, jax.Array):  # e.g. a constant Python float passed through aux
            assert type(a) is type(b) and a == b, (a, b)
            continue
        assert isinstance(a, jax.Array), type(a)
        assert (a.shape, a.dtype, a.weak_type) == (b.shape, b.dtype, b.weak_type)
        if exact:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        else:
            scale = max(1.0, float(np.max(np.abs(np.asarray(b, np.float64)), initial=0.0)))
            atol = _TOL_ULPS * float(jnp.finfo(b.dtype).eps) * scale
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def _index(argnums):
    """``argnums`` as ``jax.grad`` and ``jax.jacfwd`` read it (``operator.index``)."""
    try:
        return operator.index(argnums)
    except TypeError:
        return tuple(map(operator.index, argnums))


def _both(kind, fun, args, kwargs=None, **options):
    ref_t, mine_t, exact = PAIRS[kind]
    kwargs = kwargs or {}
    # jax.jacrev and jax.hessian test `isinstance(argnums, int)` and so return a 1-tuple for
    # argnums=np.int64(1); jaxcurv reads argnums as jax.grad does for every transform.
    ref_options = dict(options)
    if "argnums" in options:
        ref_options["argnums"] = _index(options["argnums"])
    mine = mine_t(fun, **options)(*args, **kwargs)
    return mine, ref_t(fun, **ref_options)(*args, **kwargs), exact


def _check(kind, fun, *args, kwargs=None, **options):
    mine, ref, exact = _both(kind, fun, args, kwargs, **options)
    assert_same(mine, ref, exact)
    return mine


# ------------------------------------------------------------------ values and types

_R = np.random.default_rng(0)
_A43, _A44 = _R.standard_normal((4, 3)), _R.standard_normal((4, 4))
_X3, _X4 = _R.standard_normal(3), _R.standard_normal(4)


def _linear_xyz(x, y, z, flag=False):
    assert flag  # test_grad_argnums: the keyword must reach `fun`
    return 1.0 * x + 2.0 * y + 3.0 * z


def _item_branch(x):  # test_grad_item: Python control flow on a concrete value
    if x.astype(bool).item():
        return x**2
    return x


def _compare_branch(x):
    return jnp.sum(x**3) if x > 0 else -x


def _mixed_tree(t):
    return (
        jnp.sum(t["a"].astype(jnp.float64) ** 2) * jnp.sum(t["b"])
        + t["c"] ** 3
        + jnp.sum(t["a"]) * t["c"]
    )


_MIXED = {
    "a": jnp.asarray([1.5, -0.5], jnp.float32),
    "b": jnp.asarray([0.5, 2.0, -1.0], jnp.float64),
    "c": 2.0,  # a Python float: weakly typed, as jax.hessian keeps it
}


class CustomNode(list):
    """test_grad_does_not_unflatten_tree_with_none: a node that refuses None children."""


def _unflatten_custom(aux, children):
    assert children[0] is not None
    return CustomNode(children)


jax.tree_util.register_pytree_node(CustomNode, lambda x: (x, None), _unflatten_custom)


# (case name, kinds, fun, args, kwargs, options)
SCALAR_CASES = [
    ("argnums-kwargs", _linear_xyz, (1.0, 1.0, 1.0), {"flag": True}, {}),
    ("argnums-1-kwargs", _linear_xyz, (1.0, 1.0, 1.0), {"flag": True}, {"argnums": 1}),
    ("argnums-20-kwargs", _linear_xyz, (1.0, 1.0, 1.0), {"flag": True}, {"argnums": (2, 0)}),
    ("argnums-np-int", _linear_xyz, (1.0, 1.0, 1.0), {"flag": True}, {"argnums": np.int64(1)}),
    ("argnums-list", _linear_xyz, (1.0, 1.0, 1.0), {"flag": True}, {"argnums": [0, 2]}),
    (
        "argnums-np-tuple",
        _linear_xyz,
        (1.0, 1.0, 1.0),
        {"flag": True},
        {"argnums": (np.int32(2), 0)},
    ),
    (
        "argnums-negative",  # test_grad_negative_argnums
        lambda x, y: x.sum() * y.sum(),
        (jnp.asarray(_R.standard_normal((3, 3))), jnp.asarray(_R.standard_normal((3, 3)))),
        {},
        {"argnums": -1},
    ),
    ("item", _item_branch, (2.0,), {}, {}),
    ("item-false", _item_branch, (0.0,), {}, {}),
    ("compare", _compare_branch, (2.0,), {}, {}),
    ("compare-negative", _compare_branch, (-1.0,), {}, {}),
    ("weak-identity", lambda x: x, (1.0,), {}, {}),  # test_ad_weak_types
    ("weak-square", lambda x: x**2, (3.0,), {}, {}),
    ("quadratic-f64", lambda x: x @ (jnp.asarray(_A44) @ x), (jnp.asarray(_X4),), {}, {}),
    (
        "quadratic-f32",  # test_hessian
        lambda x: x @ (jnp.asarray(_A44, jnp.float32) @ x),
        (jnp.asarray(_X4, jnp.float32),),
        {},
        {},
    ),
    ("float16", lambda x: jnp.sum(x**3), (jnp.asarray([1.0, 2.0], jnp.float16),), {}, {}),
    ("python-tuple", lambda x: jnp.sum(jnp.array(x) ** 2), ((1.0, 2.0),), {}, {}),
    ("mixed-precision-tree", _mixed_tree, (_MIXED,), {}, {}),
    ("none-leaf", lambda d: d["a"] ** 2, ({"a": 1.5, "b": None},), {}, {}),
    ("hessian-kwargs", lambda x, s=1.0: s * x**2, (1.5,), {"s": 3.0}, {}),
    (
        "two-args",  # test_issue1372
        lambda x, u: jnp.dot(x, x) + jnp.dot(u, u) * jnp.sum(x),
        (jnp.ones(5), jnp.arange(2.0)),
        {},
        {"argnums": (0, 1)},
    ),
    ("aux-basic", lambda x: (x**3, [x**2]), (3.0,), {}, {"has_aux": True}),
    ("aux-constant", lambda x: (x**3, [4.0]), (4.0,), {}, {"has_aux": True}),
    ("aux-constant-2", lambda x: (x**3, [x**2, 4.0]), (4.0,), {}, {"has_aux": True}),
    ("aux-dict", lambda x: (x**2, {"identity": x, "p1": x + 1}), (3.0,), {}, {"has_aux": True}),
    ("aux-list-pair", lambda x: [x**2, x], (3.0,), {}, {"has_aux": True}),
    (
        "aux-hessian",  # test_hessian_aux
        lambda x: (jnp.dot(x, jnp.dot(jnp.asarray(_A44), x)), x),
        (jnp.asarray(_X4),),
        {},
        {"has_aux": True},
    ),
]

VECTOR_CASES = [
    (
        "linear",
        lambda x: jnp.dot(jnp.asarray(_A43), x),
        (jnp.asarray(_X3),),
        {},
        {},
    ),  # test_jacobian
    ("tanh", lambda x: jnp.tanh(jnp.dot(jnp.asarray(_A43), x)), (jnp.asarray(_X3),), {}, {}),
    ("wide", lambda x: jnp.sin(jnp.asarray(_A43).T @ x), (jnp.asarray(_X4),), {}, {}),
    ("pytree-pair", lambda x, y: (x, y), (0.0, 1.0), {}, {}),  # test_jacobian_on_pytrees
    ("pytree-pair-1", lambda x, y: (x, y), (0.0, 1.0), {}, {"argnums": 1}),
    ("pytree-pair-01", lambda x, y: (x, y), (0.0, 1.0), {}, {"argnums": (0, 1)}),
    ("pytree-slice", lambda x: x[:2], ((1.0, 2.0, 3.0),), {}, {}),
    (
        "pytree-dict",
        lambda x, y: {"x": x, "xy": jnp.outer(x, y)},
        (jnp.asarray(_X3[:2]), jnp.asarray(_X4[:3])),
        {},
        {},
    ),
    (
        "heterogeneous",  # test_heterogeneous_jacfwd / test_heterogeneous_jacrev
        lambda t: (t[0], t[1], t[0] + t[1]),
        ((np.array([2.0], np.float16), np.array([3.0], np.float32)),),
        {},
        {},
    ),
    ("vector-kwargs", lambda x, s=1.0: s * x**2, (jnp.arange(3.0),), {"s": 2.0}, {}),
    ("vector-aux", lambda x: (x**3, [x**2]), (jnp.arange(3.0),), {}, {"has_aux": True}),
]


def _params(cases, kinds):
    return [
        pytest.param(kind, fun, args, kwargs, options, id=f"{name}-{kind}")
        for name, fun, args, kwargs, options in cases
        for kind in kinds
    ]


@pytest.mark.parametrize(
    "kind,fun,args,kwargs,options", _params(SCALAR_CASES, ALL) + _params(VECTOR_CASES, VECTOR)
)
def test_same_result_as_jax(kind, fun, args, kwargs, options):
    _check(kind, fun, *args, kwargs=kwargs, **options)


@pytest.mark.parametrize("kind", ALL)
def test_same_result_under_jit(kind):
    f = lambda t, scale=1.0: scale * _mixed_tree(t)
    ref_t, mine_t, exact = PAIRS[kind]
    mine = jax.jit(mine_t(f))(_MIXED, scale=2.0)
    assert_same(mine, jax.jit(ref_t(f))(_MIXED, scale=2.0), exact)


@pytest.mark.parametrize("kind", ALL)
def test_aux_holds_no_tracers(kind):
    # test_grad_and_aux_no_tracers
    _, aux = PAIRS[kind][1](lambda x: (x**2, {"identity": x, "p1": x + 1}), has_aux=True)(3.0)
    assert isinstance(aux, dict)
    assert not any(isinstance(v, jax.core.Tracer) for v in aux.values())


def test_empty_tree_gradient_is_the_empty_tree():
    # jax.grad accepts a tree with no leaves and returns it: so does gradient.
    _check("grad", lambda d: 1.0, {})
    _check("grad", lambda d: 1.0, ())
    _check("grad", lambda d, x: x**2, {}, 2.0, argnums=(0, 1))


def test_custom_node_is_not_unflattened_with_none():
    # test_grad_does_not_unflatten_tree_with_none
    _check("grad", lambda x: x[0], CustomNode([0.0]))


# ---------------------------------------------------------------- nested transforms


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("times_sin", [False, True])
def test_aux_nested(kind, times_sin):
    # test_grad_and_aux_nested, test_jacfwd_and_aux_nested, test_jacrev_and_aux_nested
    ref_t, mine_t, _ = PAIRS[kind]

    def outer(t):
        def f(x):
            _, aux = t(lambda x: (x**3, [x**3]), has_aux=True)(x)
            return aux[0] * jnp.sin(x) if times_sin else aux[0]

        return f

    f_mine, f_ref = outer(mine_t), outer(ref_t)
    ref = ref_t(f_ref)(4.0)
    assert_same(mine_t(f_mine)(4.0), ref, exact=False)
    assert_same(jax.jit(mine_t(f_mine))(4.0), ref, exact=False)
    assert_same(jax.jit(mine_t(jax.jit(f_mine)))(4.0), ref, exact=False)


@pytest.mark.parametrize("outer", JACOBIANS)
@pytest.mark.parametrize("inner", JACOBIANS)
def test_nested_jacobians(outer, inner):
    # test_issue1372: every composition of the two modes, diagonal and off-diagonal blocks.
    f = lambda x, u: jnp.dot(x, x) + jnp.dot(u, u)
    x, u = jnp.ones(5), jnp.ones(2)
    o_ref, o_mine, _ = PAIRS[outer]
    i_ref, i_mine, _ = PAIRS[inner]
    for a, b in [(0, 0), (1, 1), (1, 0), (0, 1)]:
        mine = o_mine(i_mine(f, a), b)(x, u)
        assert mine.shape == ((5, 2)[a], (5, 2)[b])
        assert_same(mine, o_ref(i_ref(f, a), b)(x, u))


# ----------------------------------------------------------------- the wrapped function


@pytest.mark.parametrize("kind", ALL)
def test_wrap_keeps_signature_for_static_argnames(kind):
    # test_grad_wrap: jit(static_argnames=...) reads the signature through the wrapper.
    ref_t, mine_t, exact = PAIRS[kind]

    def my_function(x, flag):
        return x if flag else jnp.zeros_like(x)

    wrapped = mine_t(my_function)
    assert inspect.signature(wrapped) == inspect.signature(my_function)
    assert wrapped.__wrapped__ is my_function and wrapped.__name__ == "my_function"
    mine = jax.jit(wrapped, static_argnames=["flag"])
    ref = jax.jit(ref_t(my_function), static_argnames=["flag"])
    for flag in (False, True):
        assert_same(mine(1.0, flag), ref(1.0, flag), exact)


@pytest.mark.parametrize("kind", ALL)
def test_jit_of_wrapper_traces_fun_once(kind):
    # test_jit_of_grad: one trace of `fun` for the first call, none for the second.
    traces = []

    def f(x):
        traces.append(None)
        return jnp.sum(jnp.sin(x) * x)

    g = jax.jit(PAIRS[kind][1](f))
    assert_same(g(jnp.ones(3)), jax.jit(PAIRS[kind][0](f))(jnp.ones(3)), exact=False)
    traces.clear()
    g = jax.jit(PAIRS[kind][1](f))
    g(jnp.ones(3))
    g(2 * jnp.ones(3))
    assert len(traces) == 1


@pytest.mark.parametrize("kind", ALL)
def test_wrapper_of_jit_reuses_the_compiled_fun(kind):
    # test_grad_of_jit: the jitted `fun` is traced once, on the first call only.
    traces = []

    @jax.jit
    def f(x):
        traces.append(None)
        return x * x

    ref_t, mine_t, exact = PAIRS[kind]
    mine = mine_t(f)(1.0)
    mine_t(f)(2.0)
    assert len(traces) == 1
    assert_same(mine, ref_t(f)(1.0), exact)


# --------------------------------------------------------------------------- errors
# Where both raise, the type is JAX's; jaxcurv's message names the argument and the fix.


def _raises_both(kind, exc, fun, *args, match=None, jax_exc=None, **options):
    ref_t, mine_t, _ = PAIRS[kind]
    with pytest.raises(jax_exc or exc):
        ref_t(fun, **options)(*args)
    with pytest.raises(exc, match=match):
        mine_t(fun, **options)(*args)


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize(
    "out", [lambda x: (1, 2, 3), lambda x: x, lambda x: (x,)], ids=["triple", "bare", "single"]
)
def test_aux_not_a_pair(kind, out):
    # test_grad_and_aux_error. jax.jacfwd says "too many values to unpack" (a ValueError)
    # for a triple; jaxcurv gives JAX's TypeError "two-element tuple" for every transform.
    ref_t, mine_t, _ = PAIRS[kind]
    if kind != "auto":  # the oracle for "auto" is not JAX's
        with pytest.raises((TypeError, ValueError)):
            ref_t(out, has_aux=True)(1.0)
    with pytest.raises(
        TypeError, match=r"has_aux=True.*two-element tuple.*Return `\(value, aux\)`"
    ):
        mine_t(out, has_aux=True)(1.0)


@pytest.mark.parametrize("kind", ALL)
def test_string_input(kind):
    # test_grad_bad_input / test_bad_input
    _raises_both(kind, TypeError, lambda x: x, "foo", match=r"at <root> is a str 'foo'")


@pytest.mark.parametrize("kind", ALL)
def test_string_leaf_names_its_path(kind):
    params = {"w": jnp.ones(2), "act": "tanh"}
    match = r"at \['act'\] is a str 'tanh'.*eqx\.partition\(model, eqx\.is_inexact_array\)"
    _raises_both(kind, TypeError, lambda p: jnp.sum(p["w"] ** 2), params, match=match)


@pytest.mark.parametrize("kind", ALL)
def test_whole_equinox_model_names_the_function_leaf(kind):
    model = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    loss = lambda m: jnp.sum(m(jnp.ones(2)) ** 2)
    match = r"at \.activation is a custom_jvp `relu`.*eqx\.partition"
    _raises_both(kind, TypeError, loss, model, match=match)
    # The fix the message gives works, and agrees with JAX.
    params, static = eqx.partition(model, eqx.is_inexact_array)
    _check(kind, lambda p: loss(eqx.combine(p, static)), params)


@pytest.mark.parametrize("kind", ALL)
def test_object_array(kind):
    # test_grad_object_array_error
    x = np.array([1, 2, 3], dtype=object)
    _raises_both(kind, TypeError, lambda x: x, x, match=r"is an array of shape \(3,\)")


@pytest.mark.parametrize("kind", ALL)
def test_integer_input(kind):
    # test_grad_of_int_errors
    _raises_both(kind, TypeError, lambda x: x**2, 3, match=r"integer/bool dtype int")


@pytest.mark.parametrize("kind", ["grad", "hessian"])
def test_complex_output(kind):
    # test_grad_complex_result_errors
    _raises_both(kind, TypeError, lambda x: x**2 + 1j, 3.0, match=r"real floating-point scalar")


@pytest.mark.parametrize("kind", ["jacfwd", "auto"])
def test_complex_input(kind):
    # test_jacfwd_of_complex_errors (jax.jacfwd refuses complex inputs too)
    _raises_both(kind, TypeError, lambda x: x**2, 3.0 + 1j, match=r"complex dtype complex128")


@pytest.mark.parametrize("out", [lambda x: (x, x), lambda x: ()], ids=["tuple", "unit"])
def test_tuple_output(out):
    # test_grad_tuple_output, test_grad_unit_output
    _raises_both("grad", TypeError, out, 1.0, match=r"scalar output, but it returned a tuple")


@pytest.mark.parametrize("kind", ["jacfwd", "jacrev", "hessian"])
def test_empty_tree(kind):
    # JAX fails deep inside ("at least one array or dtype is required", "Too few leaves").
    _raises_both(kind, ValueError, lambda d: 1.0, {}, match=r"no array leaves.*PyTreeDef\(\{\}\)")
    with pytest.raises(ValueError, match=r"`jacobian` has nothing to differentiate"):
        jaxcurv.jacobian(lambda d: 1.0)({})


# ------------------------------------------------------------- deliberate differences


@pytest.mark.parametrize("kind", ALL)
def test_repeated_argnums_is_a_clear_error(kind):
    # jax.grad(argnums=(0, 0)) calls `fun` with None for the other argument.
    f = lambda x, y: x * y * 3.0
    ref_t, mine_t, _ = PAIRS[kind]
    if kind != "auto":
        with pytest.raises(TypeError, match="NoneType"):
            ref_t(f, argnums=(0, 0))(2.0, 5.0)
    with pytest.raises(ValueError, match=r"argnums=\(0, 0\)\)` names the same argument twice"):
        mine_t(f, argnums=(0, 0))
    with pytest.raises(ValueError, match=r"argnums=\(1, -1\)\)` names the same argument twice"):
        mine_t(f, argnums=(1, -1))(2.0, 5.0)


@pytest.mark.parametrize("kind", ALL)
def test_argnums_out_of_range_is_a_value_error(kind):
    # test_grad_without_enough_args_error_message: jax.grad raises a TypeError there,
    # jax.jacfwd, jax.jacrev and jax.hessian a ValueError, as jaxcurv does for all.
    f = lambda x, y: x + y
    ref_t, mine_t, _ = PAIRS[kind]
    if kind != "auto":
        with pytest.raises(TypeError if kind == "grad" else ValueError):
            functools.partial(ref_t(f, argnums=0), x=0.0)(y=1.0)
    with pytest.raises(ValueError, match=r"argnums=0\)` needs the differentiated argument"):
        functools.partial(mine_t(f, argnums=0), x=0.0)(y=1.0)
    with pytest.raises(ValueError, match=r"argnums=2\)` is out of range"):
        mine_t(f, argnums=2)(1.0, 2.0)


@pytest.mark.parametrize("kind", ALL)
def test_bool_argnums_is_refused(kind):
    # JAX reads True as 1; here it is almost always `has_aux` passed by position.
    f = lambda x, y: x * y
    ref_t, mine_t, _ = PAIRS[kind]
    if kind != "auto":
        ref_t(f, True)(2.0, 3.0)
    with pytest.raises(TypeError, match=r"got the bool True.*`has_aux=...` by keyword"):
        mine_t(f, True)


def test_gradient_of_vector_output_is_a_value_error():
    # test_grad_nonscalar_output: JAX raises a TypeError; jaxcurv keeps its ValueError.
    with pytest.raises(TypeError, match="scalar-output"):
        jax.grad(lambda x: x)(np.zeros(3))
    with pytest.raises(ValueError, match=r"scalar output, but it returned shape \(3,\)"):
        jaxcurv.gradient(lambda x: x)(np.zeros(3))


def test_hessian_of_vector_output_is_refused():
    # test_hessian_on_pytrees: jax.hessian of a vector function is a third-order tensor;
    # jaxcurv.hessian is the dense N x N Hessian of a scalar function only.
    f = lambda x: jnp.array(x) ** 2
    ref = jax.hessian(f)((1.0, 2.0))
    np.testing.assert_array_equal(np.asarray(ref[0][0]), [2.0, 0.0])
    with pytest.raises(ValueError, match=r"scalar output.*`jaxcurv.jacobian` of a gradient"):
        jaxcurv.hessian(f)((1.0, 2.0))
    jax.hessian(lambda x: (x, x))(1.0)
    with pytest.raises(TypeError, match=r"scalar output, but it returned a tuple of length 2"):
        jaxcurv.hessian(lambda x: (x, x))(1.0)


@pytest.mark.parametrize("kind", ALL)
def test_numpy_int_argnums_gives_a_bare_derivative(kind):
    # jax.grad and jax.jacfwd read argnums=np.int64(1) as 1; jax.jacrev and jax.hessian
    # return a 1-tuple for it. jaxcurv returns the bare derivative everywhere.
    f = lambda x, y: x * y**2
    ref_t, mine_t, exact = PAIRS[kind]
    if kind in ("jacrev", "hessian"):
        assert isinstance(ref_t(f, argnums=np.int64(1))(2.0, 3.0), tuple)
    assert_same(mine_t(f, argnums=np.int64(1))(2.0, 3.0), ref_t(f, argnums=1)(2.0, 3.0), exact)


@pytest.mark.parametrize("kind", ["grad", "jacrev"])
def test_complex_input_real_output_is_refused(kind):
    # test_nonholomorphic_grad / test_nonholomorphic_jacrev: JAX differentiates a real
    # function of complex inputs (returning conjugate cotangents); jaxcurv refuses complex.
    zs = 0.5j * np.arange(5) + np.arange(5)
    f = lambda z: jnp.sum(jnp.cos(jnp.abs(z)))
    ref_t, mine_t, _ = PAIRS[kind]
    assert ref_t(f)(zs).dtype == jnp.complex128
    with pytest.raises(TypeError, match=r"complex dtype complex128"):
        mine_t(f)(zs)
