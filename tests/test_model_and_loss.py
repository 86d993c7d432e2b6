"""``ModelAndLoss``: keyword routing, batched keyword data, and where it can be imported from."""

from __future__ import annotations

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
    m_kw, l_kw = obj.split_kwargs({"x": 1, "y": 2, "train": True})
    # `loss_fn` takes **kw: it receives everything; `model_fn` only what it names.
    assert m_kw == {"x": 1, "train": True} and l_kw == {"x": 1, "y": 2, "train": True}
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
