"""``ModelAndLoss``: keyword routing, batched keyword data, and where it can be imported from."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from jaxcurv.model_and_loss import (
    ModelAndLoss,
    batch_size,
    check_value_fn_keywords,
    take_batch,
)


def test_one_class_under_every_name_it_had():
    from jaxcurv.hessian_free import ModelAndLoss as from_optimizer

    assert jaxcurv.ModelAndLoss is ModelAndLoss is from_optimizer
    assert ModelAndLoss.__module__ == "jaxcurv.model_and_loss"


def test_keywords_are_routed_by_the_signatures():
    obj = ModelAndLoss(lambda w, x, *, train=False: x @ w, lambda out, y, **kw: out - y)
    m_kw, l_kw = obj.split_kwargs({"x": 1, "y": 2, "train": True, "w": 3})
    # Each gets what it names; `loss_fn`'s **kw gets what `model_fn` does not name.
    assert m_kw == {"x": 1, "train": True} and l_kw == {"y": 2, "w": 3}
    w = jnp.asarray([1.0, 2.0])
    np.testing.assert_array_equal(obj(w, x=jnp.eye(2), y=jnp.ones(2)), [0.0, 1.0])
    with pytest.raises(TypeError, match=r"\['z'\].*neither `model_fn` nor `loss_fn`"):
        ModelAndLoss(lambda w, x: w, lambda o, y: o).split_kwargs({"x": 1, "y": 2, "z": 3})
    with pytest.raises(TypeError, match=r"`ModelAndLoss\(model_fn=...\)` must be callable"):
        ModelAndLoss("mlp", lambda o: o)


def test_value_fn_keywords_are_checked_for_plain_functions_and_model_and_loss():
    check_value_fn_keywords(lambda p, x: p, {"x": 1})
    check_value_fn_keywords(lambda p, **kw: p, {"anything": 1})
    with pytest.raises(TypeError, match=r"\['y'\] passed to `hessian_free\(...\).update`"):
        check_value_fn_keywords(lambda p, x: p, {"x": 1, "y": 2})
    with pytest.raises(TypeError, match=r"\['y'\]"):
        check_value_fn_keywords(ModelAndLoss(lambda w, x: w, lambda o: o), {"x": 1, "y": 2})


def test_batched_keyword_data_share_a_leading_size_and_sub_batches_are_leading_rows():
    extra = {"x": jnp.arange(12.0).reshape(6, 2), "y": jnp.arange(6.0), "scale": 2.0}
    assert batch_size(extra, "curvature_fraction") == 6
    assert batch_size({"scale": 2.0, "flag": True}, "preconditioner") is None
    sub = take_batch(extra, 2)
    np.testing.assert_array_equal(sub["x"], [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(sub["y"], [0.0, 1.0])
    assert sub["scale"] == 2.0
    with pytest.raises(ValueError, match=r"`hessian_free\(preconditioner=...\)`.*\['y'\]"):
        batch_size({"x": jnp.zeros((6, 2)), "y": jnp.zeros(5)}, "preconditioner")


def _flax_like_apply(variables, *args, rngs=None, mutable=False, **kwargs):
    """Flax's `Module.apply` signature: keywords it does not name reach `__call__`."""

    def call(x, train=False):
        return x @ variables["w"] * (2.0 if train else 1.0)

    return call(*args, **kwargs)


def test_a_kwargs_model_gets_only_the_keywords_the_loss_does_not_name():
    loss_fn = lambda out, y: jnp.sum((out - y) ** 2)
    obj = ModelAndLoss(_flax_like_apply, loss_fn)
    v = {"w": jnp.asarray([1.0, 2.0])}
    x, y = jnp.eye(2), jnp.asarray([1.0, 1.0])
    # Oracle: the composition written out by hand.
    expected = float(loss_fn(_flax_like_apply(v, x, train=True), y))
    assert float(obj(v, x=x, y=y, train=True)) == expected  # `y` never reaches `apply`
    assert obj.split_kwargs({"x": 1, "y": 2, "train": True}) == ({"x": 1, "train": True}, {"y": 2})
    # Positional data: `apply` takes *args, so the split is read from the loss's one target.
    assert float(obj(v, x, y, train=True)) == expected


def test_routing_stated_explicitly_when_signatures_cannot_say_it():
    both_kwargs = ModelAndLoss(
        lambda w, **kw: kw["x"] @ w, lambda o, **kw: jnp.sum((o - kw["y"]) ** 2)
    )
    with pytest.raises(TypeError, match=r"\['x', 'y'\] could go to both.*model_keys="):
        both_kwargs.split_kwargs({"x": 1, "y": 2})
    stated = ModelAndLoss(
        both_kwargs.model_fn, both_kwargs.loss_fn, model_keys="x", loss_keys=("y",)
    )
    assert stated.model_keys == ("x",)
    assert stated.split_kwargs({"x": 1, "y": 2}) == ({"x": 1}, {"y": 2})
    w, x, y = jnp.asarray([1.0, -1.0]), jnp.eye(2), jnp.zeros(2)
    assert float(stated(w, x=x, y=y)) == 2.0  # |x w - 0|^2 = 1 + 1
    with pytest.raises(TypeError, match=r"\['z'\].*neither"):
        stated.split_kwargs({"x": 1, "y": 2, "z": 3})
    with pytest.raises(TypeError, match=r"`ModelAndLoss\(model_keys=...\)` must be a tuple"):
        ModelAndLoss(lambda w: w, lambda o: o, model_keys=3)


def test_positional_data_are_split_by_count():
    obj = ModelAndLoss(lambda w, x, train=False: x @ w, lambda o, y: jnp.sum((o - y) ** 2))
    w, x, y = jnp.asarray([1.0, 2.0]), jnp.eye(2), jnp.asarray([1.0, 0.0])
    assert float(obj(w, x, y)) == float(obj(w, x=x, y=y)) == 4.0  # (1-1)^2 + (2-0)^2
    assert obj.split_args((1, 2)) == ((1,), (2,))
    star = ModelAndLoss(lambda w, *a: a[0] @ w, lambda o, *a: jnp.sum(o - a[0]))
    with pytest.raises(TypeError, match=r"cannot split them.*num_model_args=1"):
        star(w, x, y)
    stated = ModelAndLoss(star.model_fn, star.loss_fn, num_model_args=1)
    assert float(stated(w, x, y)) == 2.0  # (1 - 1) + (2 - 0)
    with pytest.raises(ValueError, match=r"num_model_args"):
        ModelAndLoss(star.model_fn, star.loss_fn, num_model_args=-1)


def test_aux_of_the_model_and_of_the_loss():
    def model_fn(w, x):
        out = x @ w
        return out, {"mean": jnp.mean(out)}  # like Flax's mutable batch statistics

    def loss_fn(out, y):
        loss = jnp.sum((out - y) ** 2)
        return loss, {"max": jnp.max(jnp.abs(out - y))}  # a metric

    w, x, y = jnp.asarray([1.0, 3.0]), jnp.eye(2), jnp.zeros(2)
    both = ModelAndLoss(model_fn, loss_fn, model_has_aux=True, loss_has_aux=True)
    loss, (model_aux, loss_aux) = both(w, x=x, y=y)
    assert both.has_aux and float(loss) == 10.0 and float(model_aux["mean"]) == 2.0
    assert float(loss_aux["max"]) == 3.0
    only_model = ModelAndLoss(model_fn, lambda o, y: jnp.sum((o - y) ** 2), model_has_aux=True)
    (value, aux), grad = jax.value_and_grad(only_model, has_aux=True)(w, x=x, y=y)
    np.testing.assert_allclose(grad, 2.0 * w)  # d/dw |w|^2
    assert float(value) == 10.0 and float(aux["mean"]) == 2.0
    plain = only_model.without_aux()
    assert not plain.has_aux and float(plain(w, x=x, y=y)) == 10.0
    model, loss = only_model.bind(x=x, y=y)
    np.testing.assert_array_equal(model(w), w)
    assert float(loss(w)) == 10.0
    with pytest.raises(TypeError, match=r"`model_fn` to return a pair `\(outputs, aux\)`"):
        ModelAndLoss(lambda w, x: x @ w, loss_fn, model_has_aux=True)(w, x=x, y=y)
    with pytest.raises(TypeError, match=r"must be a bool"):
        ModelAndLoss(model_fn, loss_fn, loss_has_aux=1)


@pytest.mark.parametrize("positional", [False, True])
def test_bound_softmax_cross_entropy_takes_the_closed_form_gauss_newton_path(
    positional, monkeypatch
):
    # The optimizer's GGN is `ggn_operator(*objective.bind(**batch), params)`: the bound
    # loss must still be recognised as softmax cross-entropy, so its Hessian in the logits
    # is the closed form (diag(p) - p p^T) per token, not autodiff twice.
    from jaxcurv import gauss_newton, losses
    from jaxcurv.descent import curvature_operator

    # What the operator's builder found for the loss it was given (called in Python on
    # every construction, so no compile cache can hide it).
    found = []
    recognise = gauss_newton.closed_form_hessian
    monkeypatch.setattr(
        gauss_newton, "closed_form_hessian", lambda f: found.append(recognise(f)) or found[-1]
    )
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 3)))  # float64 (conftest turns x64 on)
    labels = jnp.asarray(rng.integers(0, 4, size=6))
    params = {"w": jnp.asarray(rng.standard_normal((3, 4))), "b": jnp.zeros(4)}
    model = lambda p, x: jnp.tanh(x @ p["w"] + p["b"])  # noqa: E731
    objective = ModelAndLoss(model, jaxcurv.softmax_cross_entropy)
    if positional:  # positional data are bound by the loss's parameter names
        op = jaxcurv.ggn_operator(*objective.bind(x, labels), params)
    else:
        op = curvature_operator(objective, params, {"x": x, "labels": labels})
    assert len(found) == 1 and found[0].func is losses.softmax_cross_entropy_hessian
    dense = np.asarray(op.to_dense())
    # The oracle: the generic path (the loss hidden in a lambda, Hessian by autodiff), and
    # J^T H J formed from jax.jacfwd and the dense per-token softmax Hessian. Both are exact
    # up to float64 rounding of a few dozen terms of size <= ~10: 1e-12 leaves margin.
    generic = jaxcurv.ggn_operator(
        lambda p: model(p, x), lambda o: jaxcurv.softmax_cross_entropy(o, labels), params
    )
    np.testing.assert_allclose(dense, np.asarray(generic.to_dense()), rtol=0, atol=1e-12)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    J = np.asarray(jax.jacfwd(lambda f: model(unravel(f), x))(flat)).reshape(24, -1)
    p = np.asarray(jax.nn.softmax(model(params, x)))
    H = np.zeros((24, 24))
    for t in range(6):
        H[4 * t : 4 * t + 4, 4 * t : 4 * t + 4] = (np.diag(p[t]) - np.outer(p[t], p[t])) / 6
    np.testing.assert_allclose(dense, J.T @ H @ J, rtol=0, atol=1e-12)


def test_bind_falls_back_to_a_plain_binding_when_data_have_no_names():
    # *args and positional-only parameters cannot be bound by name: still the same function.
    def loss(out, *scales):
        return jnp.sum(out) * scales[0]

    def model(w, x, /):
        return w * x

    _, bound_loss = ModelAndLoss(lambda w, x: w, loss, num_model_args=1).bind(1.0, 3.0)
    assert float(bound_loss(jnp.ones(2))) == 6.0
    bound_model, _ = ModelAndLoss(model, loss, num_model_args=1).bind(2.0, 3.0)
    assert float(bound_model(jnp.asarray(5.0))) == 10.0
