r"""Curvature-vector products: ``hvp``, ``ggn_vp`` and the linearize-once operators.

When a Hessian is too big to form, its products stand in for it. Two of them:

* the Hessian-vector product :math:`H v = \nabla^2 f(x)\, v`, computed forward-over-reverse
  as the directional derivative of the gradient (Pearlmutter 1994), at about the cost of
  three gradients and without any ``N x N`` intermediate;
* the generalised Gauss-Newton product :math:`G v = J^\top H_\ell J v` for
  :math:`f = \ell \circ m`, with :math:`J` the Jacobian of the model outputs and
  :math:`H_\ell` the Hessian of the loss in the outputs (Schraudolph 2002). ``G`` is
  positive semi-definite whenever the loss is convex in the outputs, which is what makes
  it the curvature of choice inside conjugate gradient (Martens 2010).

Krylov methods apply the same matrix at the same point many times. ``hessian_operator``
and ``ggn_operator`` therefore run the forward (and for the Hessian, backward) pass once,
keep the linearization (``jax.linearize``; the GGN's :math:`J^\top` is the transpose of
the stored :math:`J`, not a second forward pass), and apply only the linear part per
product. Inside one jitted loop XLA already hoists the forward pass out of a plain
``hvp``; the operators are what makes separately dispatched products cheap.

This module gathers them under one name; each lives with what it computes:
:mod:`jaxcurv.operators` (the ``CurvatureOperator`` base class, dense matrix, diagonal,
``as_matvec``), :mod:`jaxcurv.hessian_products` (``hvp``, ``hessian_operator``),
:mod:`jaxcurv.gauss_newton` (``ggn_vp``, ``ggn_operator``) and :mod:`jaxcurv.losses` (the
softmax cross-entropy Hessian in closed form).
"""

from __future__ import annotations

from jaxcurv.gauss_newton import GaussNewtonOperator, ggn_operator, ggn_vp
from jaxcurv.hessian_products import HessianOperator, hessian_operator, hvp
from jaxcurv.operators import CurvatureOperator, as_matvec

__all__ = [
    "CurvatureOperator",
    "GaussNewtonOperator",
    "HessianOperator",
    "as_matvec",
    "ggn_operator",
    "ggn_vp",
    "hessian_operator",
    "hvp",
]
