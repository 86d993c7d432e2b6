r"""Curvature of part of a model: the ``wrt=`` keyword of the operator constructors.

Per-layer curvature (PyHessian #9, hessian-eigenthings' ``param_filter``, curvlinops'
``SubmatrixLinearOperator``) is the diagonal block :math:`H_{SS}` of the Hessian (or
Gauss-Newton, or Fisher) for a set :math:`S` of parameter leaves, the other leaves held
fixed. A :class:`Selection` says which leaves, and moves between the parameter tree and
the *sub-tree* the block acts on.

The sub-tree is the parameter tree with every unselected leaf replaced by ``None``. JAX
treats ``None`` as an empty subtree, so the sub-tree is a valid pytree of arrays: the
containers and their keys stay (``sub["l1"]["w"]`` still names the layer), and every
pytree routine -- ``eigenvalues``, ``cg``, ``hutchinson_trace``, ``spectral_density``,
``ravel_pytree`` -- runs on it unchanged. Its ``ravel_pytree`` order is the selected
leaves in the order of the full tree, so an operator's ``to_dense()`` is exactly the
sub-block ``H[np.ix_(idx, idx)]`` of the full dense matrix for the selected indices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

PyTree = Any

__all__ = ["Selection", "restrict", "selection"]


def _as_bool(value: Any) -> bool | None:
    """``value`` as a Python bool if it is a concrete boolean, else ``None``."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, jax.Array | np.ndarray) and not isinstance(value, jax.core.Tracer):
        if value.shape == () and value.dtype == np.bool_:
            return bool(value)
    return None


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which leaves of a parameter tree an operator differentiates (hashable, static).

    Attributes:
      treedef: the full parameter tree's structure.
      flags: one bool per leaf of the full tree, in ``jax.tree.leaves`` order.
    """

    treedef: Any
    flags: tuple[bool, ...]

    def select(self, tree: PyTree) -> PyTree:
        """The selected leaves of ``tree`` (shaped like the parameters), ``None`` elsewhere."""
        leaves = self.treedef.flatten_up_to(tree)
        return jax.tree.unflatten(
            self.treedef, [a if f else None for a, f in zip(leaves, self.flags)]
        )

    def rest(self, tree: PyTree) -> PyTree:
        """The unselected leaves of ``tree``, ``None`` elsewhere: what is held fixed."""
        leaves = self.treedef.flatten_up_to(tree)
        return jax.tree.unflatten(
            self.treedef, [None if f else a for a, f in zip(leaves, self.flags)]
        )

    def merge(self, sub: PyTree, rest: PyTree) -> PyTree:
        """The full tree from its selected part ``sub`` and fixed part ``rest``."""
        chosen, fixed = iter(jax.tree.leaves(sub)), iter(jax.tree.leaves(rest))
        return jax.tree.unflatten(
            self.treedef, [next(chosen) if f else next(fixed) for f in self.flags]
        )

    def on_selected(self, fn: Callable, rest: PyTree) -> Callable:
        """``fn(params, ...)`` as a function of the selected sub-tree, ``rest`` held fixed."""
        return lambda sub, *args, **kwargs: fn(self.merge(sub, rest), *args, **kwargs)


def _flags_from_callable(name: str, wrt: Callable, params: PyTree) -> list[bool]:
    flags = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        got = wrt(path, leaf)
        flag = _as_bool(got)
        if flag is None:
            raise TypeError(
                f"`{name}(wrt=...)` was called as `wrt(key_path, leaf)` and must return a "
                f"bool, got {type(got).__name__}: {got!r} at {jax.tree_util.keystr(path)}. "
                "Return a Python bool, e.g. `lambda path, leaf: leaf.ndim == 2`."
            )
        flags.append(flag)
    return flags


def _flags_from_tree(name: str, wrt: PyTree, params: PyTree, params_name: str) -> list[bool]:
    for path, leaf in jax.tree_util.tree_leaves_with_path(wrt):
        if _as_bool(leaf) is None:
            raise TypeError(
                f"`{name}(wrt=...)` must be a pytree of bools, but its leaf at "
                f"{jax.tree_util.keystr(path) or '<root>'} is {type(leaf).__name__}: "
                f"{leaf!r}. Use True to select a subtree and False to hold it fixed."
            )
    try:
        expanded = jax.tree.map(
            lambda flag, sub: jax.tree.map(lambda _: _as_bool(flag), sub), wrt, params
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`{name}(wrt=...)` must be a prefix of `{params_name}`'s tree (each bool standing "
            f"for the subtree it covers), got {jax.tree.structure(wrt)} for "
            f"{jax.tree.structure(params)}. Mirror the parameters' containers, e.g. "
            f"`{{'l1': True, 'l2': False}}`, and use False (not None) to hold a part fixed. "
            f"({e})"
        ) from None
    return jax.tree.leaves(expanded)


def selection(name: str, wrt: Any, params: PyTree, params_name: str = "params") -> Selection:
    """Normalise ``wrt`` (a bool pytree prefix or a ``(key_path, leaf) -> bool`` callable).

    Args:
      name: the calling function, for messages (``"hessian_operator"``).
      wrt: a pytree of bools shaped like a prefix of ``params`` (``True`` selects the
        whole subtree it stands for), or a callable ``(key_path, leaf) -> bool`` called
        on every leaf of ``params`` with its ``jax.tree_util`` key path.
      params: the full parameter tree.
      params_name: what the caller calls ``params``, for messages.

    Returns:
      A :class:`Selection`.

    Raises:
      TypeError: a non-bool leaf of ``wrt`` or a non-bool result of the callable.
      ValueError: ``wrt`` not a prefix of ``params``; nothing selected.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.selection import selection
      >>> params = {"l1": {"w": jnp.ones(2), "b": jnp.ones(1)}, "l2": jnp.ones(3)}
      >>> s = selection("f", {"l1": True, "l2": False}, params)
      >>> s.select(params)
      {'l1': {'b': Array([1.], dtype=float32), 'w': Array([1., 1.], dtype=float32)}, 'l2': None}
      >>> s = selection("f", lambda path, leaf: leaf.ndim == 1 and leaf.size > 1, params)
      >>> s.flags
      (False, True, True)
    """
    if callable(wrt):
        flags = _flags_from_callable(name, wrt, params)
    else:
        flags = _flags_from_tree(name, wrt, params, params_name)
    if not any(flags):
        raise ValueError(
            f"`{name}(wrt=...)` selects no leaf of `{params_name}` "
            f"({len(flags)} leaves, all False). Select at least one leaf, or pass wrt=None "
            "for the whole tree."
        )
    return Selection(jax.tree.structure(params), tuple(flags))


def restrict(
    name: str, wrt: Any, params: PyTree, params_name: str = "params"
) -> tuple[Selection | None, PyTree, PyTree]:
    """``(selection, selected sub-tree, fixed rest)``; ``(None, params, None)`` for ``wrt=None``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.selection import restrict
      >>> sel, sub, rest = restrict("f", (True, False), (jnp.ones(1), jnp.zeros(2)))
      >>> sub, sel.merge(sub, rest)[1].shape
      ((Array([1.], dtype=float32), None), (2,))
    """
    if wrt is None:
        return None, params, None
    sel = selection(name, wrt, params, params_name)
    return sel, sel.select(params), sel.rest(params)
