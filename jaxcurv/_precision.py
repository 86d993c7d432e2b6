"""Float16 and bfloat16: the domain is computed in float32 around the operator's own products."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv.tree import (
    tree_scale,
)

PyTree = Any


def _is_low_precision(dtype: Any) -> bool:
    """float16 and bfloat16: no ``eigh`` for them, and float16 overflows at 65504."""
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _working_dtype(dtype: Any) -> Any:
    """The dtype the arithmetic runs in: float32 for float16/bfloat16, else ``dtype``."""
    return jnp.dtype(jnp.float32) if _is_low_precision(dtype) else jnp.dtype(dtype)


def _to_working(tree: PyTree) -> PyTree:
    """``tree`` with float16/bfloat16 leaves cast to float32 (exactly); others unchanged."""
    return jax.tree.map(lambda a: jnp.asarray(a, _working_dtype(jnp.result_type(a))), tree)


def _has_low_precision(*trees: PyTree) -> bool:
    return any(_is_low_precision(jnp.result_type(a)) for t in trees for a in jax.tree.leaves(t))


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda t, lk: jnp.asarray(t).astype(jnp.result_type(lk)), tree, like)


def _scaled_product(fn: Callable, v: PyTree, in_like: PyTree, out_like: PyTree) -> PyTree:
    """``fn(v)`` with ``v`` rounded to ``in_like``'s dtypes and the result cast to ``out_like``'s.

    For a float16/bfloat16 ``fn``: ``v`` is first divided by its largest magnitude and the
    product multiplied back in the working precision -- exact by linearity -- so that
    neither a small vector (a late CG direction, a unit vector of a large space) drops
    below float16's smallest normal number, 6.1e-5, where precision is lost, nor a large
    one overflows at 65504.
    """
    mags = [jnp.max(jnp.abs(a)) for a in jax.tree.leaves(v) if jnp.size(a)]
    if not mags:
        return _cast_like(fn(_cast_like(v, in_like)), out_like)
    s = functools.reduce(jnp.maximum, mags)
    s = jnp.where((s > 0) & jnp.isfinite(s), s, jnp.ones_like(s))
    w = fn(_cast_like(tree_scale(v, 1.0 / s), in_like))
    return tree_scale(_cast_like(w, out_like), s)


def _working_matvec(matvec: Callable, example: PyTree) -> tuple[Callable, PyTree]:
    """``(matvec, example)`` that compute in float32 when the domain is float16/bfloat16.

    The products still run in the domain's dtype (all a float16 operator can do); the
    vectors, inner products and small eigenproblems around them run in float32.
    """
    if not _has_low_precision(example):
        return matvec, example
    work = _to_working(example)
    return (lambda v: _scaled_product(matvec, v, example, work)), work
