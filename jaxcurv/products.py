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
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcurv._checks import check_callable, check_real_inputs
from jaxcurv._compile import compiled_call
from jaxcurv.model_and_loss import ModelAndLoss
from jaxcurv.selection import Selection, restrict
from jaxcurv.tree import tree_check_like, tree_size

PyTree = Any

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


# ----------------------------------------------------------------------------- checks


def _check_callable(name: str, arg: str, fun: Any) -> None:
    check_callable(
        f"{name}({arg})",
        fun,
        fix=f"Pass the function itself first, e.g. `{name}(loss, params, ...)`, not its value.",
    )


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


def _check_tangent(name: str, v: PyTree, x: PyTree, x_name: str = "x") -> None:
    """``v`` must match ``x`` in tree, shapes and dtypes (all static)."""
    tree_check_like("v", v, x, x_name)
    for path, lv, lx in zip(
        jax.tree_util.tree_leaves_with_path(x), jax.tree.leaves(v), jax.tree.leaves(x)
    ):
        dv, dx = jnp.result_type(lv), jnp.result_type(lx)
        if dv != dx:
            where = jax.tree_util.keystr(path[0]) or "<root>"
            raise TypeError(
                f"`{name}`: `v` leaf {where} has dtype {dv} but `{x_name}`'s has dtype {dx}. "
                f"Cast the tangent, e.g. `jax.tree.map(lambda a, b: a.astype(b.dtype), v, "
                f"{x_name})`."
            )


def _check_scalar_output(name: str, out: Any, *, ggn: bool = False) -> None:
    shape = getattr(out, "shape", None)
    if shape != ():
        alternative = (
            "make `loss_fn` reduce the model outputs to one number"
            if ggn
            else "for a vector output use `jaxcurv.jacobian`, or `ggn_vp` with the loss apart"
        )
        raise ValueError(
            f"`{name}` needs a scalar-valued function, but it returned "
            f"{'shape ' + str(shape) if shape is not None else type(out).__name__}. Reduce the "
            f"output (e.g. `jnp.mean` over the batch); {alternative}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`{name}` needs a real floating-point output, got dtype {out.dtype}.")


def _scalar(name: str, fun: Callable, *, ggn: bool = False) -> Callable:
    """``fun`` that checks its output where it is traced anyway: no extra trace to check."""

    def checked(*args, **kwargs):
        out = fun(*args, **kwargs)
        _check_scalar_output(name, out, ggn=ggn)
        return out

    return checked


# --------------------------------------------------------------------------- products


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
    _check_callable("hvp", "fun", fun)
    check_real_inputs("hvp", x, "point `x`")
    _check_tangent("hvp", v, x)
    fun = _scalar("hvp", fun)
    return compiled_call(lambda x, v, args: _hvp_impl(fun, x, v, args), x, v, args)


def _ggn_vp_impl(model_fn, loss_fn, params, v, model_args, loss_args, model_kw, loss_kw):
    out, jvp_fn = jax.linearize(lambda p: model_fn(p, *model_args, **model_kw), params)
    jv = jvp_fn(v)
    hjv = jax.jvp(jax.grad(lambda o: loss_fn(o, *loss_args, **loss_kw)), (out,), (jv,))[1]
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
    model and is positive semi-definite whenever :math:`\ell` is convex.

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
    _check_callable("ggn_vp", "model_fn", model_fn)
    _check_callable("ggn_vp", "loss_fn", loss_fn)
    check_real_inputs("ggn_vp", params, "`params`")
    _check_tangent("ggn_vp", v, params, "params")
    split = _split_data("ggn_vp", model_fn, loss_fn, model_args, loss_args, data)
    loss_fn = _scalar("ggn_vp(loss_fn)", loss_fn, ggn=True)
    # The data are arguments of the compiled call, never constants of it: a new batch
    # reuses the executable (`jaxcurv._compile`).
    return compiled_call(
        lambda p, v, *split: _ggn_vp_impl(model_fn, loss_fn, p, v, *split), params, v, *split
    )


# -------------------------------------------------------------------------- operators


class CurvatureOperator:
    """A symmetric linear operator on the pytree space of a point ``x``.

    Subclasses store a linearization at ``x`` (arrays only), so an operator is a pytree:
    it passes through ``jax.jit``, ``lax`` loops and ``jax.vmap`` as an argument, and two
    operators built by the same builder at points of the same shapes share one compiled
    application.

    Attributes:
      x: the linearization point; doubles as the template of the operator's domain.
      value: the scalar objective at ``x``.
      grad: the gradient at ``x`` (for the GGN, :math:`J^\\top \\nabla \\ell`, which equals
        the true gradient).
    """

    x: PyTree
    value: jax.Array
    grad: PyTree
    # Subclasses whose static parts hold the user's functions (micro-batched operators
    # recompute the forward pass per product) set this: their products, dense matrices and
    # diagonals then go through the compile policy, keyed on what they compute, never
    # through a bare `jax.jit` keyed on the user's function objects.
    _compile_by_jaxpr = False

    def _mv(self, v: PyTree) -> PyTree:  # pragma: no cover - abstract
        raise NotImplementedError

    def mv(self, v: PyTree) -> PyTree:
        """The product with ``v``, a pytree like ``x``."""
        _check_tangent(type(self).__name__, v, self.x)
        if self._compile_by_jaxpr:
            return compiled_call(lambda op, v: op._mv(v), self, v)
        return _apply(self, v)

    def __call__(self, v: PyTree) -> PyTree:
        return self.mv(v)

    def __matmul__(self, v: PyTree) -> PyTree:
        return self.mv(v)

    @property
    def size(self) -> int:
        """N, the total number of scalars in the domain (static)."""
        return tree_size(self.x)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def dtype(self):
        return ravel_pytree(jax.tree.map(lambda a: jnp.zeros((), a.dtype), self.x))[0].dtype

    def to_dense(self, *, chunk_size: int = 64) -> jax.Array:
        """The ``N x N`` matrix over ``ravel_pytree(x)`` order, from ``N`` products."""
        if self._compile_by_jaxpr:
            return compiled_call(lambda op: _dense_impl(op, chunk_size), self)
        return _to_dense(self, chunk_size)

    def diagonal(self, *, chunk_size: int = 64) -> PyTree:
        """The exact diagonal, a pytree like ``x``; costs ``N`` products (small problems).

        For large problems use ``jaxcurv.hutchinson_diagonal``.
        """
        if self._compile_by_jaxpr:
            diag = compiled_call(lambda op: _diagonal_impl(op, chunk_size), self)
        else:
            diag = _diagonal(self, chunk_size)
        return _like_sharding(diag, self.x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, dtype={self.dtype})"


def _like_sharding(tree: PyTree, like: PyTree) -> PyTree:
    """Put concrete leaves on ``like``'s shardings: raveling for the diagonal loses them."""

    def put(a, b):
        if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
            return a
        sharding = getattr(b, "sharding", None)
        return a if sharding is None else jax.device_put(a, sharding)

    return jax.tree.map(put, tree, like)


@jax.jit
def _apply(op: CurvatureOperator, v: PyTree) -> PyTree:
    return op._mv(v)


def _basis_map(op: CurvatureOperator, chunk_size: int, pick: Callable) -> jax.Array:
    flat, unravel = ravel_pytree(op.x)
    n = flat.size

    def column(i):
        e = jax.nn.one_hot(i, n, dtype=flat.dtype)
        col, _ = ravel_pytree(op._mv(unravel(e)))
        return pick(col, i)

    return jax.lax.map(column, jnp.arange(n), batch_size=min(n, chunk_size)), unravel


def _dense_impl(op: CurvatureOperator, chunk_size: int) -> jax.Array:
    rows, _ = _basis_map(op, chunk_size, lambda col, i: col)
    return rows.T


def _diagonal_impl(op: CurvatureOperator, chunk_size: int) -> PyTree:
    diag, unravel = _basis_map(op, chunk_size, lambda col, i: col[i])
    return unravel(diag)


_to_dense = jax.jit(_dense_impl, static_argnums=1)
_diagonal = jax.jit(_diagonal_impl, static_argnums=1)


@jax.tree_util.register_pytree_node_class
class HessianOperator(CurvatureOperator):
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


@jax.tree_util.register_pytree_node_class
class GaussNewtonOperator(CurvatureOperator):
    """:math:`J^\\top H_\\ell J`, :math:`J` linearized once, :math:`H_\\ell` at the outputs."""

    def __init__(self, x, value, grad, outputs, jvp, loss_lin):
        self.x, self.value, self.grad = x, value, grad
        self.outputs, self._jvp, self._loss_lin = outputs, jvp, loss_lin

    def tree_flatten(self):
        return (self.x, self.value, self.grad, self.outputs, self._jvp, self._loss_lin), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def _mv(self, v):
        w = self._loss_lin(self._jvp(v))
        (res,) = jax.linear_transpose(self._jvp, self.x)(w)
        return res


def _dup(value):
    return value, value


def _build_hessian_impl(fun, x, args):
    grad_and_value = jax.grad(lambda y: _dup(fun(y, *args)), has_aux=True)
    # One forward and backward pass; the operator keeps only the linear part.
    grad, lin, value = jax.linearize(grad_and_value, x, has_aux=True)
    return HessianOperator(x, value, grad, lin)


# ------------------------------------------------- wrt= and micro_batch= (shared parts)

_OPERATOR_KEYWORDS = """
    Every operator constructor also takes, as keywords (see README "Curvature at research
    scale"):

    * ``micro_batch``: an int. The data arguments carry a leading examples axis (every
      array with ``ndim >= 1``, all of the same length ``n``) and the loss is a *mean* over
      examples; products are summed over micro-batches of that many examples with a
      ``lax.scan``, each weighted by its share ``n_c / n`` (a smaller last micro-batch is
      allowed), so peak memory is one micro-batch's and the operator equals the one on the
      whole batch up to the reordering of the sum. Each product then reruns the forward
      pass (:class:`~jaxcurv.micro_batch.MicroBatchOperator`).
    * ``wrt``: a pytree of bools shaped like a prefix of the point, or a callable
      ``(key_path, leaf) -> bool``: the curvature of the selected leaves only, the others
      held fixed. The operator's vectors, ``x`` and ``grad`` are then the point's tree with
      ``None`` in place of every unselected leaf (:mod:`jaxcurv.selection`), and
      ``to_dense()`` is that sub-block of the full matrix.
"""


def _on_full(fn: Callable, sel: Selection | None, rest: PyTree) -> Callable:
    """``fn`` with its first argument, the selected sub-tree, completed by ``rest``."""
    return fn if sel is None else sel.on_selected(fn, rest)


@dataclasses.dataclass(frozen=True)
class _HessianSpec:
    """Per-micro-batch Hessian of ``fun(x, *data)`` (static: equal for the same ``fun``)."""

    fun: Callable
    sel: Selection | None

    def _f(self, fixed):
        return _on_full(_scalar("hessian_operator", self.fun), self.sel, fixed)

    def product(self, x, v, fixed, data):
        return _hvp_impl(self._f(fixed), x, v, data)

    def value_and_grad(self, x, fixed, data):
        return jax.value_and_grad(lambda y: self._f(fixed)(y, *data))(x)


@dataclasses.dataclass(frozen=True)
class _GGNSpec:
    """Per-micro-batch Gauss-Newton matrix; ``data`` is ``(m_args, l_args, m_kw, l_kw)``."""

    model_fn: Callable
    loss_fn: Callable
    sel: Selection | None

    def product(self, x, v, fixed, data):
        loss_fn = _scalar("ggn_operator(loss_fn)", self.loss_fn, ggn=True)
        return _ggn_vp_impl(_on_full(self.model_fn, self.sel, fixed), loss_fn, x, v, *data)

    def value_and_grad(self, x, fixed, data):
        m_args, l_args, m_kw, l_kw = data
        model_fn = _on_full(self.model_fn, self.sel, fixed)
        loss_fn = _scalar("ggn_operator(loss_fn)", self.loss_fn, ggn=True)
        return jax.value_and_grad(lambda y: loss_fn(model_fn(y, *m_args, **m_kw), *l_args, **l_kw))(
            x
        )


def _micro_batched(name, spec, x, fixed, data, micro_batch):
    # Imported here: jaxcurv.micro_batch builds on CurvatureOperator, defined above.
    from jaxcurv.micro_batch import micro_batch_operator

    return micro_batch_operator(name, spec, x, fixed, data, micro_batch)


# ---------------------------------------------------------------- the constructors


def hessian_operator(
    fun: Callable, x: PyTree, *args: Any, micro_batch: int | None = None, wrt: Any = None
) -> CurvatureOperator:
    r"""The Hessian of ``fun`` at ``x`` as a reusable linear operator.

    The gradient is linearized once (``jax.linearize``); each product then costs only the
    linear part, about two gradients' worth of work instead of ``hvp``'s three when products
    are dispatched one by one (Krylov solvers, eigen-solvers, Hutchinson).

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
    _check_callable("hessian_operator", "fun", fun)
    check_real_inputs("hessian_operator", x, "point `x`")
    sel, u, rest = restrict("hessian_operator", wrt, x, "x")
    if micro_batch is not None:
        return _micro_batched(
            "hessian_operator", _HessianSpec(fun, sel), u, rest, args, micro_batch
        )
    fun = _scalar("hessian_operator", fun)
    # Built through the compile policy, so operators of one computation at points of equal
    # shapes share the stored linearization (the cached executable returns the same one),
    # and hence one compiled `_apply`.
    return compiled_call(
        lambda u, rest, args: _build_hessian_impl(_on_full(fun, sel, rest), u, args), u, rest, args
    )


hessian_operator.__doc__ += _OPERATOR_KEYWORDS


def _build_ggn_impl(model_fn, loss_fn, params, model_args, loss_args, model_kw, loss_kw):
    out, jvp = jax.linearize(lambda p: model_fn(p, *model_args, **model_kw), params)
    loss_grad_and_value = jax.grad(lambda o: _dup(loss_fn(o, *loss_args, **loss_kw)), has_aux=True)
    g_out, loss_lin, value = jax.linearize(loss_grad_and_value, out, has_aux=True)
    (grad,) = jax.linear_transpose(jvp, params)(g_out)
    return GaussNewtonOperator(params, value, grad, out, jvp, loss_lin)


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
    transposed pass, about 1.25 gradients of work for an MLP.

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
    _check_callable("ggn_operator", "model_fn", model_fn)
    _check_callable("ggn_operator", "loss_fn", loss_fn)
    check_real_inputs("ggn_operator", params, "`params`")
    split = _split_data("ggn_operator", model_fn, loss_fn, model_args, loss_args, data)
    sel, u, rest = restrict("ggn_operator", wrt, params, "params")
    if micro_batch is not None:
        spec = _GGNSpec(model_fn, loss_fn, sel)
        return _micro_batched("ggn_operator", spec, u, rest, split, micro_batch)
    loss_fn = _scalar("ggn_operator(loss_fn)", loss_fn, ggn=True)
    return compiled_call(
        lambda u, rest, *split: _build_ggn_impl(_on_full(model_fn, sel, rest), loss_fn, u, *split),
        u,
        rest,
        *split,
    )


ggn_operator.__doc__ += _OPERATOR_KEYWORDS


# ------------------------------------------------------------------------- as_matvec


def as_matvec(
    A: Any, example: PyTree | None = None, *, example_name: str = "example"
) -> tuple[Callable, PyTree]:
    """Normalise ``A`` to ``(matvec, example)`` for the Krylov and spectral routines.

    Args:
      A: a ``CurvatureOperator`` (knows its domain), a dense square 2-D array (acts on 1-D
        vectors), or a callable ``v -> A v`` on pytrees (then ``example`` is required).
      example: a pytree with the structure, shapes and dtypes of the domain.
      example_name: what the caller calls ``example`` (e.g. ``"b"`` in ``cg``), for errors.

    Returns:
      ``(matvec, example)`` where ``example`` is a pytree of the domain's shape. For an
      operator it is always ``A.x``, so the operator's own dtypes are kept.

    Raises:
      ValueError: a non-square matrix, a callable without ``example``, an ``example`` that
        does not match the operator.
      TypeError: anything else.
    """
    if isinstance(A, CurvatureOperator):
        if example is not None:
            tree_check_like(example_name, example, A.x, "A.x")
        return A.mv, A.x
    if isinstance(A, (jax.Array, np.ndarray)):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(
                f"A dense `A` must be a square 2-D matrix, got shape {A.shape}. Pass a "
                "callable with `example=` for operators on other spaces."
            )
        if not jnp.issubdtype(A.dtype, jnp.floating):
            raise TypeError(f"`A` must be a real floating-point matrix, got dtype {A.dtype}.")
        mat = jnp.asarray(A)
        n = mat.shape[0]
        if example is None:
            example = jnp.zeros((n,), mat.dtype)
        elif jnp.shape(example) != (n,):
            raise ValueError(
                f"`{example_name}` must be a vector of shape ({n},) for a {n} x {n} matrix "
                f"`A`, got {jax.tree.map(jnp.shape, example)}."
            )
        return (lambda v: mat @ v), example
    if callable(A):
        if example is None:
            raise ValueError(
                "`A` is a bare callable, so its domain is unknown: pass `example=` (a pytree "
                "shaped like the vectors `A` acts on, e.g. the parameters), or use "
                "`jaxcurv.hessian_operator` / `jaxcurv.ggn_operator`, which know their domain."
            )
        return A, example
    raise TypeError(
        f"`A` must be a jaxcurv operator, a square matrix or a callable, got {type(A).__name__}."
    )
