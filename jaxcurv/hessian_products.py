r"""Hessian-vector products: ``hvp`` and the linearize-once ``hessian_operator``.

:math:`H v = \nabla^2 f(x)\, v` is computed forward-over-reverse as the directional
derivative of the gradient (Pearlmutter 1994), at about the cost of three gradients and
without any ``N x N`` intermediate. Krylov methods apply the same matrix at the same point
many times, so :func:`hessian_operator` runs the forward and backward pass once, keeps the
linearization of the gradient (``jax.linearize``) and applies only its linear part per
product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from jaxcurv._checks import check_real_inputs
from jaxcurv._compile import at_top_level, compiled_call, is_traced, traced_program
from jaxcurv.micro_batch import micro_batch_operator
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

__all__ = ["HessianOperator", "hessian_operator", "hvp"]


def _hvp_impl(fun, x, v, args):
    return jax.jvp(lambda y: jax.grad(fun)(y, *args), (x,), (v,))[1]


def hvp(fun: Callable, x: PyTree, v: PyTree, *args: Any) -> PyTree:
    r"""Hessian-vector product :math:`\nabla^2_x f(x, \dots)\, v`, forward-over-reverse.

    Args:
      fun: scalar function ``f(x, *args)``; ``x`` a pytree of real float arrays.
      x: the point.
      v: the direction, same tree, shapes and dtypes as ``x``.
      *args: further arguments of ``fun`` (data, targets), not differentiated.

    Returns:
      :math:`H v`, a pytree like ``x``.

    Raises:
      ValueError: non-scalar output, ``v`` with another tree structure or leaf shapes.
      TypeError: integer/complex ``x``, dtype mismatch between ``v`` and ``x``.

    Example (the seed's :math:`x^2 + 3xy + y^2`, :math:`H = [[2, 3], [3, 2]]`):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> jaxcurv.hvp(f, jnp.zeros(2), jnp.array([1.0, 0.0]))
      Array([2., 3.], dtype=float32)

    References:
      Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
    """
    check_function("hvp", "fun", fun)
    check_real_inputs("hvp", x, "point `x`")
    check_tangent("hvp", v, x)
    fun = scalar_checked("hvp", fun)
    return compiled_call(lambda x, v, args: _hvp_impl(fun, x, v, args), x, v, args)


@jax.tree_util.register_pytree_node_class
class _LinearizedHessian(CurvatureOperator):
    """:math:`\\nabla^2 f(x)` applied through the gradient linearized once at ``x``."""

    def __init__(self, x, value, grad, lin):
        self.x, self.value, self.grad, self._lin = x, value, grad, lin

    def tree_flatten(self):
        return (self.x, self.value, self.grad, self._lin), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def _mv(self, v):
        return self._lin(v)


def _dup(value):
    return value, value


def _build_hessian_impl(fun, x, args):
    grad_and_value = jax.grad(lambda y: _dup(fun(y, *args)), has_aux=True)
    # One forward and backward pass; the operator keeps only the linear part.
    grad, lin, value = jax.linearize(grad_and_value, x, has_aux=True)
    return _LinearizedHessian(x, value, grad, lin)


@jax.tree_util.register_pytree_node_class
class HessianOperator(CurvatureOperator):
    """:math:`\\nabla^2 f(x)`, built without computing anything, linearized on first use.

    It holds the point, the data and the traced loss (``jaxcurv._compile``: one computation
    gives one static part, so operators of equal computations share compiled code). Used
    directly (``op(v)``, ``op.value``, ``op.to_dense()``) it linearizes the gradient once,
    in a compiled program of its own, and keeps that linearization; inside a jaxcurv
    routine's compiled loop it is linearized in that same program (one compile, not two);
    a host loop (``loop="host"``) compiles only the product, forward-over-reverse, so the
    first answer waits for one compile.
    """

    def __init__(self, x, consts, others, loss, linearized=None):
        self.x, self._consts, self._others, self._loss = x, consts, others, loss
        self._cached = linearized

    def tree_flatten(self):
        # A linearization already made travels along (into the user's `jit`, a `lax`
        # loop), so it is never recomputed there.
        return (self.x, self._consts, self._others, self._cached), self._loss

    @classmethod
    def tree_unflatten(cls, loss, children):
        return cls(*children[:3], loss, children[3])

    def _f(self, u):
        return self._loss(self._consts, jax.tree.leaves(u) + list(self._others))

    def _linearized(self) -> _LinearizedHessian:
        """The linearized operator: compiled once and kept at top level, else inline."""
        if self._cached is not None:
            return self._cached
        traced = is_traced((self.x, self._consts, self._others)) or not at_top_level()
        if traced or isinstance(self._loss, _Closure):
            return _build_hessian_impl(lambda u: self._f(u), self.x, ())
        self._cached = compiled_call(
            lambda op: _build_hessian_impl(lambda u: op._f(u), op.x, ()), self
        )
        return self._cached

    def _in_program(self) -> CurvatureOperator:
        return self._linearized()

    def _for_host(self) -> CurvatureOperator:
        return self if self._cached is None else self._cached

    @property
    def value(self):
        return self._linearized().value

    @property
    def grad(self):
        return self._linearized().grad

    def _mv(self, v):
        return self._linearized()._mv(v)

    def mv(self, v: PyTree) -> PyTree:
        return self._linearized().mv(v)

    def to_dense(self, *, chunk_size: int = 64) -> jax.Array:
        return self._linearized().to_dense(chunk_size=chunk_size)

    def diagonal(self, *, chunk_size: int = 64) -> PyTree:
        return self._linearized().diagonal(chunk_size=chunk_size)


@dataclasses.dataclass(frozen=True, eq=False)
class _Closure:
    """``fun`` as a deferred operator's loss when it closes over a traced value (built
    inside a user's ``jit``/``grad``): evaluated inline, never compiled apart or cached."""

    fun: Callable
    u_tree: Any
    args_tree: Any

    def __call__(self, consts, dynamic):
        del consts
        n = self.u_tree.num_leaves
        u = jax.tree.unflatten(self.u_tree, dynamic[:n])
        return self.fun(u, *jax.tree.unflatten(self.args_tree, dynamic[n:]))


def _deferred_hessian(fun: Callable, u: PyTree, args: tuple) -> HessianOperator:
    """``HessianOperator`` of ``fun(u, *args)``: traced (milliseconds), nothing compiled."""
    leaves = jax.tree.leaves(u)
    traced = traced_program(lambda u, args: fun(u, *args), u, args)
    if traced is None:  # inside a user's transformation: nothing is shared or cached
        loss = _Closure(fun, jax.tree.structure(u), jax.tree.structure(args))
        return HessianOperator(u, [], list(jax.tree.leaves(args)), loss)
    program, consts, dynamic = traced
    return HessianOperator(u, consts, dynamic[len(leaves) :], program)


@dataclasses.dataclass(frozen=True)
class _HessianSpec:
    """Per-micro-batch Hessian of ``fun(x, *data)`` (static: equal for the same ``fun``)."""

    fun: Callable
    sel: Selection | None

    def _f(self, fixed):
        return on_full(scalar_checked("hessian_operator", self.fun), self.sel, fixed)

    def product(self, x, v, fixed, data):
        return _hvp_impl(self._f(fixed), x, v, data)

    def value_and_grad(self, x, fixed, data):
        return jax.value_and_grad(lambda y: self._f(fixed)(y, *data))(x)


def hessian_operator(
    fun: Callable, x: PyTree, *args: Any, micro_batch: int | None = None, wrt: Any = None
) -> CurvatureOperator:
    r"""The Hessian of ``fun`` at ``x`` as a reusable linear operator.

    The gradient is linearized once (``jax.linearize``); each product then costs only the
    linear part, about two gradients' worth of work instead of ``hvp``'s three when products
    are dispatched one by one (Krylov solvers, eigen-solvers, Hutchinson).

    Building only traces ``fun`` (milliseconds) and compiles nothing; the linearization is
    made where the operator is first used: in a program of its own, kept for later use,
    when used directly (``op(v)``, ``op.value``, ``op.grad``, ``op.to_dense()``); inside the
    one compiled program of a jaxcurv routine (``cg``, ``eigenvalues``, ...), before its
    loop; and per product on a host loop (``loop="host"``), whose first answer then waits
    for a single compile.

    Args:
      fun: scalar function ``f(x, *args)``.
      x: the point, a pytree of real float arrays.
      *args: further arguments of ``fun``, held fixed (the data).
      micro_batch: examples per micro-batch (see below); ``args`` then carry the examples
        along axis 0 and ``fun`` must be a mean over them.
      wrt: which leaves of ``x`` to differentiate (see below).

    Returns:
      A ``HessianOperator`` (a ``MicroBatchOperator`` with ``micro_batch``): ``op(v)``,
      ``op @ v``, ``op.to_dense()``, ``op.diagonal()``, with ``op.value`` and ``op.grad``
      at ``x``.

    Raises:
      ValueError: non-scalar ``fun``; ``wrt`` not a prefix of ``x`` or selecting nothing;
        data of different lengths or none with ``micro_batch``. TypeError: integer/complex
        ``x``; a non-bool ``wrt``; a non-int ``micro_batch``.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> op = jaxcurv.hessian_operator(lambda p: p[0]**2 + 3*p[0]*p[1] + p[1]**2, jnp.zeros(2))
      >>> op.to_dense()
      Array([[2., 3.],
             [3., 2.]], dtype=float32)
      >>> f = lambda p, t: jnp.mean((p["a"] * t + p["b"]) ** 2)   # a mean over examples t
      >>> p, t = {"a": jnp.ones(()), "b": jnp.ones(())}, jnp.arange(5.0)
      >>> jaxcurv.hessian_operator(f, p, t, micro_batch=2, wrt={"a": True, "b": False}).to_dense()
      Array([[12.]], dtype=float32)

    References:
      Pearlmutter 1994; Martens 2010 (products reused across CG iterations).
    """
    check_function("hessian_operator", "fun", fun)
    check_real_inputs("hessian_operator", x, "point `x`")
    sel, u, rest = restrict("hessian_operator", wrt, x, "x")
    if micro_batch is not None:
        spec = _HessianSpec(fun, sel)
        return micro_batch_operator("hessian_operator", spec, u, rest, args, micro_batch)
    fun = scalar_checked("hessian_operator", fun)
    # Nothing is computed yet: the first product, value or routine decides where the
    # linearization is compiled (alone, inside the routine's program, or not at all).
    return _deferred_hessian(
        lambda u, rest, *args: on_full(fun, sel, rest)(u, *args), u, (rest, *args)
    )


hessian_operator.__doc__ += OPERATOR_KEYWORDS
