"""Private pytree arithmetic shared by the products, Krylov and optimizer modules.

Every function here takes and returns pytrees of arrays with identical structure; none of
them flattens the tree, so user parameter trees (dicts, tuples, Flax/Equinox trees) pass
through unchanged and keep their shardings.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = [
    "tree_absmax",
    "tree_axpy",
    "tree_check_like",
    "tree_norm",
    "tree_random_normal",
    "tree_scale",
    "tree_size",
    "tree_sub",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
    "tree_all_finite",
]


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Inner product ``sum_i <a_i, b_i>`` over matching leaves, as a scalar."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    if not leaves:
        return jnp.zeros(())
    return sum(leaves[1:], leaves[0])


def tree_sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, a, b)


def tree_scale(a: PyTree, s: jax.typing.ArrayLike) -> PyTree:
    """``s * a``; the scalar is cast to each leaf's dtype so float32 trees stay float32."""
    return jax.tree.map(lambda x: jnp.asarray(s, x.dtype) * x, a)


def tree_axpy(alpha: jax.typing.ArrayLike, x: PyTree, y: PyTree) -> PyTree:
    """``alpha * x + y`` leafwise."""
    return jax.tree.map(lambda u, w: jnp.asarray(alpha, u.dtype) * u + w, x, y)


def tree_norm(a: PyTree) -> jax.Array:
    """Euclidean norm of the concatenation of all leaves."""
    return jnp.sqrt(jnp.real(tree_vdot(a, a)))


def tree_zeros_like(a: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, a)


def tree_where(pred: jax.typing.ArrayLike, a: PyTree, b: PyTree) -> PyTree:
    """Select ``a`` where the scalar ``pred`` holds, else ``b``, leafwise."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def tree_all_finite(a: PyTree) -> jax.Array:
    """Scalar boolean: every entry of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(a)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.stack(leaves).all()


def tree_absmax(tree: PyTree) -> jax.Array:
    """``max |tree|`` over all leaves (NaN if any entry is NaN); 0 for empty leaves."""
    maxes = [jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree) if jnp.size(leaf)]
    if not maxes:
        return jnp.zeros(())
    return jnp.max(jnp.stack([m.astype(jnp.result_type(*maxes)) for m in maxes]))


def tree_size(a: PyTree) -> int:
    """Total number of scalars in the tree (static)."""
    return sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(a))


def _split_like(key: jax.Array, a: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(a)
    keys = jax.random.split(key, max(len(leaves), 1))[: len(leaves)]
    return jax.tree.unflatten(treedef, list(keys))


def tree_random_normal(key: jax.Array, like: PyTree) -> PyTree:
    """Independent standard normal entries shaped like ``like``."""
    keys = _split_like(key, like)
    return jax.tree.map(
        lambda k, x: jax.random.normal(k, jnp.shape(x), dtype=jnp.result_type(x)),
        keys,
        like,
    )


def tree_check_like(name: str, tree: PyTree, like: PyTree, like_name: str = "x") -> None:
    """Raise a ``ValueError`` naming ``name`` when ``tree`` does not match ``like``.

    Checks tree structure and leaf shapes, which are static, so this runs at trace time.
    """
    t_struct, l_struct = jax.tree.structure(tree), jax.tree.structure(like)
    if t_struct != l_struct:
        raise ValueError(
            f"`{name}` must have the same tree structure as `{like_name}`, got {t_struct} "
            f"but `{like_name}` is {l_struct}. Build `{name}` with "
            f"`jax.tree.map(jnp.zeros_like, {like_name})` or unflatten it with "
            f"`{like_name}`'s treedef."
        )
    for path_leaf, t, lk in zip(
        jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(tree), jax.tree.leaves(like)
    ):
        if jnp.shape(t) != jnp.shape(lk):
            where = jax.tree_util.keystr(path_leaf[0]) or "<root>"
            raise ValueError(
                f"`{name}` leaf {where} has shape {jnp.shape(t)} but `{like_name}`'s has "
                f"shape {jnp.shape(lk)}; every leaf of `{name}` must match `{like_name}`."
            )
