"""How the Krylov routines take ``A``: its domain checked eagerly, the call compiled once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._compile import compiled_call
from jaxcurv._precision import _is_low_precision, _to_working
from jaxcurv._symmetry import check_symmetric_matrix
from jaxcurv.products import CurvatureOperator, as_matvec
from jaxcurv.tree import (
    tree_size,
)

PyTree = Any


_EIG_FIX = (
    "If the asymmetry is rounding or noise, pass its symmetric part `(A + A.T) / 2`; for a "
    "non-symmetric matrix use `numpy.linalg.eig`, which does not assume symmetry."
)


def _domain(name: str, A: Any, example: PyTree | None) -> tuple[Any, PyTree, int, Any]:
    """Validate ``A`` eagerly; return it (ready for ``_run``), its domain, size and dtype.

    A dense matrix is checked for symmetry (``check_symmetric_matrix``) and a float16 or
    bfloat16 one is cast to float32, which holds it exactly, so its products are exact too.
    The returned dtype is the domain's own, before any such cast.
    """
    if isinstance(A, np.ndarray):
        A = jnp.asarray(A)
    if isinstance(A, jax.Array):
        check_symmetric_matrix(f"{name}(A)", A, fix=_EIG_FIX)
    _, example = as_matvec(A, example)
    leaves = jax.tree.leaves(example)
    if not leaves:
        raise ValueError(f"`{name}`: the domain of `A` has no arrays, got example={example!r}.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(example):
        if not hasattr(leaf, "dtype"):
            where = jax.tree_util.keystr(path) or "<root>"
            raise TypeError(
                f"`{name}(example=...)` must be a pytree of arrays shaped like the vectors `A` "
                f"acts on, but the leaf at {where} is not an array: {type(leaf).__name__} "
                f"{leaf!r}. Pass the arrays only, e.g. `example=params` without settings or "
                "functions."
            )
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` needs a real floating-point domain, but `A`'s vectors have dtype "
            f"{dtype}. Cast `example` (or the matrix) to float32 or float64."
        )
    if isinstance(A, jax.Array) and _is_low_precision(A.dtype):
        A = A.astype(jnp.float32)
        example = _to_working(example)
    return A, example, tree_size(example), dtype


# ------------------------------------------------------------------ jit dispatch of `A`


def _run(impl: Callable, A: Any, example: PyTree | None, *args: Any, **config: Any) -> Any:
    """Call ``impl(A, matvec, example, *args, **config)`` under the compile policy.

    Operators and matrices are pytrees, so they are arguments of the compiled code; a bare
    callable is traced with the rest, its closed-over arrays hoisted into arguments. Either
    way a new operator, matrix or closure of the same computation reuses the compiled code,
    and under the user's own ``jit`` the call is simply inlined (``jaxcurv._compile``).
    """
    if isinstance(A, np.ndarray):
        A = jnp.asarray(A)

    def call(dynamic_A, example, args):
        A_ = A if dynamic_A is None else dynamic_A
        matvec, example = as_matvec(A_, example)
        return impl(A_, matvec, example, *args, **config)

    if isinstance(A, (CurvatureOperator, jax.Array)):
        return compiled_call(call, A, example, args)
    return compiled_call(lambda example, args: call(None, example, args), example, args)


# ------------------------------------------------------------ stacked-pytree algebra
