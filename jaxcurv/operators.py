"""What every curvature operator shares: the ``CurvatureOperator`` base class, its dense
matrix and diagonal, the checks of tangents and scalar outputs, and ``as_matvec``.

An operator is a pytree holding a linearization at a point (arrays only), so it passes
through ``jax.jit``, ``lax`` loops and ``jax.vmap`` as an argument, and two operators built
by the same builder at points of the same shapes share one compiled application. The
builders live with what they compute: :mod:`jaxcurv.hessian_products` (the Hessian),
:mod:`jaxcurv.gauss_newton` (the generalised Gauss-Newton matrix), :mod:`jaxcurv.fisher`,
:mod:`jaxcurv.micro_batch` and :mod:`jaxcurv.streaming`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcurv._checks import check_callable
from jaxcurv._compile import at_top_level, compiled_call, is_traced
from jaxcurv.selection import Selection
from jaxcurv.tree import tree_check_like, tree_size

PyTree = Any

__all__ = [
    "OPERATOR_KEYWORDS",
    "CurvatureOperator",
    "as_matvec",
    "check_function",
    "check_scalar_output",
    "check_tangent",
    "on_full",
    "scalar_checked",
]


# ----------------------------------------------------------------------------- checks


def check_function(name: str, arg: str, fun: Any) -> None:
    """``fun`` must be callable: the first argument of ``name``, not its value."""
    check_callable(
        f"{name}({arg})",
        fun,
        fix=f"Pass the function itself first, e.g. `{name}(loss, params, ...)`, not its value.",
    )


def check_tangent(name: str, v: PyTree, x: PyTree, x_name: str = "x") -> None:
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


def check_scalar_output(name: str, out: Any, *, ggn: bool = False) -> None:
    """``out`` must be a real floating-point scalar (``ggn``: say so of the loss)."""
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


def scalar_checked(name: str, fun: Callable, *, ggn: bool = False) -> Callable:
    """``fun`` that checks its output where it is traced anyway: no extra trace to check."""

    def checked(*args, **kwargs):
        out = fun(*args, **kwargs)
        check_scalar_output(name, out, ggn=ggn)
        return out

    return checked


def on_full(fn: Callable, sel: Selection | None, rest: PyTree) -> Callable:
    """``fn`` with its first argument, the selected sub-tree, completed by ``rest``."""
    return fn if sel is None else sel.on_selected(fn, rest)


OPERATOR_KEYWORDS = """
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


# ------------------------------------------------------------------------ base class


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

    def _in_program(self) -> CurvatureOperator:
        """The operator to apply many times inside one traced program (``as_matvec``)."""
        return self

    def _for_host(self) -> CurvatureOperator:
        """The operator to pass to a compiled host-loop product (``_host_product``)."""
        return self

    def mv(self, v: PyTree) -> PyTree:
        """The product with ``v``, a pytree like ``x``."""
        check_tangent(type(self).__name__, v, self.x)
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

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.operators import as_matvec
      >>> mv, example = as_matvec(jnp.array([[2.0, 1.0], [1.0, 3.0]]))
      >>> mv(jnp.ones(2)), example.shape
      (Array([3., 4.], dtype=float32), (2,))
    """
    if isinstance(A, CurvatureOperator):
        if example is not None:
            tree_check_like(example_name, example, A.x, "A.x")
        # Inside a routine's compiled program: prepared once there, before its loop (a
        # deferred Hessian linearizes here, in the same program).
        return (A._in_program() if is_traced(A) or not at_top_level() else A).mv, A.x
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
