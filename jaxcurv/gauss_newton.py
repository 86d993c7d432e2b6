r"""Generalised Gauss-Newton products: ``ggn_vp`` and the linearize-once ``ggn_operator``.

:math:`G v = J^\top H_\ell J v` for :math:`f = \ell \circ m`, with :math:`J` the Jacobian
of the model outputs and :math:`H_\ell` the Hessian of the loss in the outputs
(Schraudolph 2002). ``G`` is positive semi-definite whenever the loss is convex in the
outputs, which is what makes it the curvature of choice inside conjugate gradient
(Martens 2010). The GGN's :math:`J^\top` is the transpose of the stored linearization
:math:`J`, never a second forward pass.

:math:`H_\ell` is applied by differentiating the loss twice at the outputs, except for a
loss whose Hessian jaxcurv knows in closed form (:func:`jaxcurv.softmax_cross_entropy`;
:mod:`jaxcurv.losses`): then :math:`(\mathrm{diag}(p) - p p^\top) u` per token, chunked
over tokens, and the linearized operator stores only the logits and a scale per token.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax

from jaxcurv._checks import check_real_inputs
from jaxcurv._compile import compiled_call
from jaxcurv.losses import closed_form_hessian
from jaxcurv.micro_batch import micro_batch_operator
from jaxcurv.model_and_loss import ModelAndLoss
from jaxcurv.operators import (
    OPERATOR_KEYWORDS,
    CurvatureOperator,
    check_function,
    check_tangent,
    on_full,
    scalar_checked,
)
from jaxcurv.selection import Selection, restrict

PyTree = Any

__all__ = ["GaussNewtonOperator", "ggn_operator", "ggn_vp"]


def _split_data(
    name: str, model_fn: Callable, loss_fn: Callable, model_args: Any, loss_args: Any, data: dict
) -> tuple[tuple, tuple, dict, dict]:
    """``(model_args, loss_args, model keywords, loss keywords)`` for a Gauss-Newton call.

    Keyword data is routed as :class:`~jaxcurv.ModelAndLoss` routes it, by the names in
    the two signatures. The positional tuples are the old spelling, kept for one release.
    """
    if model_args is not None or loss_args is not None:
        warnings.warn(
            f"`{name}(model_args=..., loss_args=...)` is deprecated and will be removed in "
            f"the next release. Pass the data as keywords named as in the two functions' "
            f"signatures, routed as `ModelAndLoss` routes them: for `model_fn(params, x)` "
            f"and `loss_fn(outputs, y)`, write `{name}(model_fn, loss_fn, params, "
            f"{'v, ' if name == 'ggn_vp' else ''}x=x, y=y)`.",
            DeprecationWarning,
            stacklevel=3,
        )
    m_kw, l_kw = ModelAndLoss(model_fn, loss_fn).split_kwargs(data)
    return tuple(model_args or ()), tuple(loss_args or ()), m_kw, l_kw


def _loss_hvp(loss_fn, closed, out, u, loss_args, loss_kw):
    """:math:`H_\\ell u` at the outputs: the closed form when there is one, else autodiff."""
    if closed is not None:
        return closed(out, *loss_args, **loss_kw)(out, u)
    return jax.jvp(jax.grad(lambda o: loss_fn(o, *loss_args, **loss_kw)), (out,), (u,))[1]


def _ggn_vp_impl(model_fn, loss_fn, closed, params, v, model_args, loss_args, model_kw, loss_kw):
    out, jvp_fn = jax.linearize(lambda p: model_fn(p, *model_args, **model_kw), params)
    hjv = _loss_hvp(loss_fn, closed, out, jvp_fn(v), loss_args, loss_kw)
    # J^T is the transpose of the stored linearization: no second forward pass.
    (res,) = jax.linear_transpose(jvp_fn, params)(hjv)
    return res


def ggn_vp(
    model_fn: Callable,
    loss_fn: Callable,
    params: PyTree,
    v: PyTree,
    *,
    model_args: tuple | None = None,
    loss_args: tuple | None = None,
    **data: Any,
) -> PyTree:
    r"""Generalised Gauss-Newton product :math:`J^\top H_\ell J v`.

    With :math:`m` = ``model_fn`` and :math:`\ell` = ``loss_fn``, :math:`J = \partial m /
    \partial \theta` and :math:`H_\ell = \nabla^2 \ell(m(\theta))`. The GGN drops the
    second-order terms of the model from the Hessian; it equals the Hessian for a linear
    model and is positive semi-definite whenever :math:`\ell` is convex. With
    ``loss_fn=jaxcurv.softmax_cross_entropy``, :math:`H_\ell` is applied in closed form,
    chunked over tokens (:mod:`jaxcurv.losses`).

    Args:
      model_fn: ``model_fn(params, **kw) -> outputs`` (a pytree).
      loss_fn: ``loss_fn(outputs, **kw) -> scalar``.
      params: the point, a pytree of real float arrays.
      v: direction like ``params``.
      model_args: deprecated (a ``DeprecationWarning``; removed in the next release):
        positional data for the model. Pass keywords instead.
      loss_args: deprecated likewise: positional data for the loss.
      **data: the batch, as keywords routed by name as :class:`~jaxcurv.ModelAndLoss`
        routes them: ``model_fn`` gets those its signature names, ``loss_fn`` those its
        signature names. Traced rather than closed over, so a new batch reuses the
        compiled product.

    Returns:
      :math:`G v`, a pytree like ``params``.

    Raises:
      ValueError: ``loss_fn`` not scalar, ``v`` not like ``params``.
      TypeError: non-callable functions, integer/complex ``params``, dtype mismatch, a
        keyword that neither function accepts.

    Example (a linear model under squared loss: GGN = Hessian = :math:`2 A^\top A`):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> A = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> jaxcurv.ggn_vp(lambda w: A @ w, lambda y: jnp.sum(y**2), jnp.zeros(2),
      ...                jnp.array([1.0, 0.0]))
      Array([2., 4.], dtype=float32)

    With data (the same model written ``model_fn(w, a)``; ``loss_fn`` takes no keyword):
      >>> jaxcurv.ggn_vp(lambda w, a: a @ w, lambda y: jnp.sum(y**2), jnp.zeros(2),
      ...                jnp.array([1.0, 0.0]), a=A)
      Array([2., 4.], dtype=float32)

    References:
      Schraudolph, "Fast curvature matrix-vector products for second-order gradient
      descent", Neural Computation 2002. Martens, "Deep learning via Hessian-free
      optimization", ICML 2010.
    """
    check_function("ggn_vp", "model_fn", model_fn)
    check_function("ggn_vp", "loss_fn", loss_fn)
    check_real_inputs("ggn_vp", params, "`params`")
    check_tangent("ggn_vp", v, params, "params")
    split = _split_data("ggn_vp", model_fn, loss_fn, model_args, loss_args, data)
    closed = closed_form_hessian(loss_fn)
    loss_fn = scalar_checked("ggn_vp(loss_fn)", loss_fn, ggn=True)
    # The data are arguments of the compiled call, never constants of it: a new batch
    # reuses the executable (`jaxcurv._compile`).
    return compiled_call(
        lambda p, v, *split: _ggn_vp_impl(model_fn, loss_fn, closed, p, v, *split),
        params,
        v,
        *split,
    )


def _linearized(lin: Callable, outputs: PyTree, u: PyTree) -> PyTree:
    del outputs  # the linearization already holds what it needs of them
    return lin(u)


@jax.tree_util.register_pytree_node_class
class GaussNewtonOperator(CurvatureOperator):
    """:math:`J^\\top H_\\ell J`, :math:`J` linearized once, :math:`H_\\ell` at the outputs.

    ``loss_hessian(outputs, u) -> H_ell u`` is a pytree: the loss's linearized gradient, or
    a closed form holding only what it adds to the outputs (:mod:`jaxcurv.losses`).
    """

    def __init__(self, x, value, grad, outputs, jvp, loss_hessian):
        self.x, self.value, self.grad = x, value, grad
        self.outputs, self._jvp, self._loss_hessian = outputs, jvp, loss_hessian

    def tree_flatten(self):
        children = (self.x, self.value, self.grad, self.outputs, self._jvp, self._loss_hessian)
        return children, None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def _mv(self, v):
        w = self._loss_hessian(self.outputs, self._jvp(v))
        (res,) = jax.linear_transpose(self._jvp, self.x)(w)
        return res


def _dup(value):
    return value, value


def _build_ggn_impl(model_fn, loss_fn, closed, params, model_args, loss_args, model_kw, loss_kw):
    out, jvp = jax.linearize(lambda p: model_fn(p, *model_args, **model_kw), params)
    loss = lambda o: loss_fn(o, *loss_args, **loss_kw)
    if closed is None:
        grad_and_value = jax.grad(lambda o: _dup(loss(o)), has_aux=True)
        g_out, lin, value = jax.linearize(grad_and_value, out, has_aux=True)
        hess = jax.tree_util.Partial(_linearized, lin)
    else:
        value, g_out = jax.value_and_grad(loss)(out)
        hess = closed(out, *loss_args, **loss_kw)
    (grad,) = jax.linear_transpose(jvp, params)(g_out)
    return GaussNewtonOperator(params, value, grad, out, jvp, hess)


@dataclasses.dataclass(frozen=True)
class _GGNSpec:
    """Per-micro-batch Gauss-Newton matrix; ``data`` is ``(m_args, l_args, m_kw, l_kw)``."""

    model_fn: Callable
    loss_fn: Callable
    sel: Selection | None

    def _loss(self):
        return scalar_checked("ggn_operator(loss_fn)", self.loss_fn, ggn=True)

    def product(self, x, v, fixed, data):
        closed = closed_form_hessian(self.loss_fn)
        model_fn = on_full(self.model_fn, self.sel, fixed)
        return _ggn_vp_impl(model_fn, self._loss(), closed, x, v, *data)

    def value_and_grad(self, x, fixed, data):
        m_args, l_args, m_kw, l_kw = data
        model_fn, loss_fn = on_full(self.model_fn, self.sel, fixed), self._loss()
        objective = lambda y: loss_fn(model_fn(y, *m_args, **m_kw), *l_args, **l_kw)
        return jax.value_and_grad(objective)(x)


def ggn_operator(
    model_fn: Callable,
    loss_fn: Callable,
    params: PyTree,
    *,
    model_args: tuple | None = None,
    loss_args: tuple | None = None,
    micro_batch: int | None = None,
    wrt: Any = None,
    **data: Any,
) -> CurvatureOperator:
    r"""The generalised Gauss-Newton matrix :math:`J^\top H_\ell J` as a reusable operator.

    The model is linearized once; :math:`J^\top` is the transpose of that linearization,
    and the loss's Hessian in the outputs is linearized at the outputs (cheap: outputs are
    small next to parameters). Each product is then one linearized forward and one
    transposed pass, about 1.25 gradients of work for an MLP. With
    ``loss_fn=jaxcurv.softmax_cross_entropy`` the loss's Hessian is instead applied in
    closed form, chunked over tokens, and the operator stores only the logits and one scale
    per token (:mod:`jaxcurv.losses`): a large vocabulary costs no more than the gradient.

    Args:
      model_fn: ``model_fn(params, **kw) -> outputs``.
      loss_fn: ``loss_fn(outputs, **kw) -> scalar``.
      params: the point.
      model_args: deprecated (a ``DeprecationWarning``; removed in the next release):
        positional data for the model. Pass keywords instead.
      loss_args: deprecated likewise: positional data for the loss.
      micro_batch: examples per micro-batch (see below); the data then carry the examples
        along axis 0 and ``loss_fn`` must be a mean over them.
      wrt: which leaves of ``params`` to differentiate (see below).
      **data: the batch, as keywords routed by name as :class:`~jaxcurv.ModelAndLoss`
        routes them. Passed as traced arguments: building operators for new batches
        outside ``jit`` then reuses one compilation instead of caching a new closure per
        batch.

    Returns:
      A ``GaussNewtonOperator`` with ``op(v)``, ``op @ v``, ``op.to_dense()``,
      ``op.diagonal()``, ``op.value``, ``op.grad`` and ``op.outputs`` (a
      ``MicroBatchOperator``, without ``outputs``, when ``micro_batch`` is given).

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> A = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> op = jaxcurv.ggn_operator(lambda w: A @ w, lambda y: 0.5 * jnp.sum(y**2), jnp.ones(2))
      >>> op.to_dense()
      Array([[1., 2.],
             [2., 5.]], dtype=float32)
      >>> op = jaxcurv.ggn_operator(lambda w, a: a @ w, lambda y, t: 0.5 * jnp.sum((y - t)**2),
      ...                           jnp.ones(2), a=A, t=jnp.zeros(2))
      >>> op.to_dense()
      Array([[1., 2.],
             [2., 5.]], dtype=float32)

    References:
      Schraudolph 2002; Martens 2010.
    """
    check_function("ggn_operator", "model_fn", model_fn)
    check_function("ggn_operator", "loss_fn", loss_fn)
    check_real_inputs("ggn_operator", params, "`params`")
    split = _split_data("ggn_operator", model_fn, loss_fn, model_args, loss_args, data)
    sel, u, rest = restrict("ggn_operator", wrt, params, "params")
    if micro_batch is not None:
        spec = _GGNSpec(model_fn, loss_fn, sel)
        return micro_batch_operator("ggn_operator", spec, u, rest, split, micro_batch)
    closed = closed_form_hessian(loss_fn)
    loss_fn = scalar_checked("ggn_operator(loss_fn)", loss_fn, ggn=True)

    def build(u, rest, *split):
        return _build_ggn_impl(on_full(model_fn, sel, rest), loss_fn, closed, u, *split)

    return compiled_call(build, u, rest, *split)


ggn_operator.__doc__ += OPERATOR_KEYWORDS
