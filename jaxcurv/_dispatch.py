"""How the Krylov routines take ``A``: its domain checked eagerly, the call compiled once
(or, with ``loop="host"``, only its product compiled and the loop run in NumPy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._compile import compiled_call, is_traced
from jaxcurv._host_product import host_product, host_rng
from jaxcurv._lanczos import _matvec_checked
from jaxcurv._precision import _is_low_precision, _to_working
from jaxcurv._symmetry import check_symmetric_matrix
from jaxcurv.products import CurvatureOperator, as_matvec
from jaxcurv.tree import (
    tree_size,
)

PyTree = Any

# The one default of every `dense_threshold=` (eigenvalues, classify_critical_point,
# analyze_landscape): at most this many parameters, the matrix is formed and diagonalized
# exactly. Forming it costs N products and `eigh` O(N^3); thick-restart Lanczos for the 3
# extreme eigenvalues at each end costs 50-170 products. Measured on the project's 2-core
# CPU (float32 tanh-MLP Hessians, warm calls): N=277 dense 0.16 s vs Lanczos 0.24 s,
# N=552 0.38 vs 0.26 s, N=1102 3.0 vs 0.11 s; with the first call's compile included
# dense stays cheaper to N~1100 (3.7 vs 9.1 s). 512 keeps both within ~1.5x of the
# faster one, and below it every eigenvalue is exact and every sign count known.
DENSE_THRESHOLD = 512


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


# Where a Krylov routine's loop runs (`loop=`): "device" compiles the whole run into one
# program (the default), "host" compiles only the product and runs the recursion in NumPy
# (`jaxcurv._host_product`): a first answer in a fraction of the compile time.
LOOPS = ("device", "host")


def _on_host(
    loop: str, A: Any, example: PyTree | None, key: Any, block: tuple[int, int] | None = None
) -> tuple | None:
    """``(product, rng)`` for a host-driven loop, or ``None`` for the device loop.

    ``block=(num, host_row_bytes)``: the product is the one on a block of probes run in
    lockstep (``host_product``), for ``num`` probes each holding ``host_row_bytes`` on
    the host; ``None``: the product on one vector.

    ``None`` unless ``loop == "host"``, and also when anything is traced (a caller's
    ``jit``/``vmap``/``grad``): the host cannot see traced values, so the routine then runs
    its device loop, which is inlined into the caller's trace like every other call. Also
    ``None`` on several processes (``jax.distributed``): the host holds one process's part
    of a sharded vector only.
    """
    if loop != "host" or is_traced(key) or jax.process_count() > 1:
        return None
    prod = host_product(A, example, _matvec_checked, block)
    if prod is None:
        return None
    return prod, host_rng(key)


def _hold_fixed(A: Any, example: PyTree) -> tuple[Any, bool]:
    """``(A_fixed, traced)``: ``A`` with every traced value it holds or reads stopped.

    ``traced`` says whether there was one (a parameter the caller may differentiate, or
    any value under the caller's ``jit``). The Krylov loops then run on ``A_fixed``, which
    no derivative enters (reverse mode cannot go through a ``while_loop``), and the caller
    attaches the derivative it knows in closed form (``eigensolvers``: ``v^T dA v``). A
    bare callable's traced closure is found by ``jax.closure_convert``, which traces one
    product.
    """
    if isinstance(A, np.ndarray):
        return A, False
    if isinstance(A, (CurvatureOperator, jax.Array)):
        traced = is_traced(A)
        return (jax.lax.stop_gradient(A) if traced else A), traced
    converted, consts = jax.closure_convert(A, example)
    if not consts:
        return A, False
    fixed = jax.lax.stop_gradient(consts)
    return (lambda v: converted(v, *fixed)), True


# ------------------------------------------------------------ stacked-pytree algebra
