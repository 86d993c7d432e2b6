"""Private: how the derivative wrappers read ``argnums`` and check ``fun``'s inputs and output.

Shared by :mod:`jaxcurv.derivatives` (the wrappers) and nothing else yet; kept apart so the
wrappers' module holds the wrappers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import (
    check_callable,
    describe_value,
    is_array,
)

PyTree = Any
Argnums = int | tuple[int, ...]


def _check_argnums(name: str, argnums: Any) -> Argnums:
    """``argnums`` read as JAX reads it (``operator.index``), checked when the wrapper is built.

    Returns an int or a tuple of ints, so results keep ``jax.grad``'s layout: a bare
    derivative for an int, a tuple for a sequence. Booleans are refused although JAX reads
    ``True`` as 1: ``gradient(f, True)`` is almost always ``has_aux`` passed by position.
    """
    if isinstance(argnums, (bool, np.bool_)):
        raise TypeError(
            f"`{name}(argnums=...)` must be an int or a non-empty tuple of ints, got the bool "
            f"{argnums!r}. Pass `has_aux=...` by keyword."
        )
    try:
        return operator.index(argnums)
    except TypeError:
        pass
    try:
        items = tuple(argnums)
    except TypeError:
        raise TypeError(
            f"`{name}(argnums=...)` must be an int or a tuple of ints, got {argnums!r}."
        ) from None
    try:
        if not items or any(isinstance(i, (bool, np.bool_)) for i in items):
            raise TypeError
        items = tuple(map(operator.index, items))
    except TypeError:
        raise TypeError(
            f"`{name}(argnums=...)` must be an int or a non-empty tuple of ints, got {argnums!r}."
        ) from None
    _check_distinct(name, items, items)
    return items


def _check_distinct(name: str, argnums: Argnums, positions: tuple[int, ...]) -> None:
    # jax.grad(argnums=(0, 0)) passes None for the other arguments: refuse it instead.
    if len(set(positions)) < len(positions):
        kept = tuple(dict.fromkeys(positions))
        raise ValueError(
            f"`{name}(argnums={argnums})` names the same argument twice. Differentiate each "
            f"argument once, e.g. `argnums={kept}`."
        )


def _check_fun(name: str, fun: Any) -> None:
    check_callable(f"{name}(fun)", fun)


def _check_positions(name: str, args: tuple, argnums: Argnums) -> None:
    """Raise a ``ValueError`` for ``argnums`` out of range (or repeated) for the actual call."""
    items = (argnums,) if isinstance(argnums, int) else argnums
    if not args:
        raise ValueError(
            f"`{name}(argnums={argnums})` needs the differentiated argument(s) by position, but "
            "the function was called with none. Keyword arguments reach `fun` but are not "
            "differentiated: pass the inputs to differentiate positionally."
        )
    for i in items:
        if not -len(args) <= i < len(args):
            raise ValueError(
                f"`{name}(argnums={i})` is out of range: the function was called with "
                f"{len(args)} positional argument(s). Pass argnums between 0 and "
                f"{len(args) - 1}."
            )
    _check_distinct(name, argnums, tuple(i % len(args) for i in items))


def _check_scalar_output(name: str, out: Any, alternative: str) -> None:
    if not is_array(out):
        raise TypeError(
            f"`{name}` needs a function with a scalar output, but it returned "
            f"{describe_value(out)}. Return one scalar (with `has_aux=True`, a pair "
            f"`(scalar, aux)`) or use {alternative}."
        )
    shape = jnp.shape(out)
    dtype = jnp.result_type(out)
    if shape != ():
        raise ValueError(
            f"`{name}` needs a function with a scalar output, but it returned shape {shape}. "
            f"Reduce it (e.g. `jnp.sum` or `jnp.mean`) or use {alternative}."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`{name}` needs a real floating-point scalar output, got dtype {dtype}.")


def _value_of_pair(name: str, out: Any) -> Any:
    # JAX's own rule for has_aux (jax/_src/interpreters/ad.py): a list or tuple of two.
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(
            f"`{name}(has_aux=True)` expects `fun` to return a two-element tuple "
            f"`(value, aux)`, but it returned {describe_value(out)}. Return `(value, aux)`, "
            "or drop `has_aux=True`."
        )
    return out[0]


def _validate_output(
    name: str, fun: Callable, has_aux: bool, scalar_alternative: str | None = None
) -> Callable:
    """``fun``, with its output checked where the JAX transform traces it.

    Checking inside the transform's own trace, rather than in a separate ``jax.eval_shape``,
    traces ``fun`` once (not twice under ``jax.jit``) and keeps concrete inputs concrete, so
    Python control flow on values (``if x > 0``, ``x.item()``) works as under ``jax.grad``.
    ``scalar_alternative`` (the fix to suggest) asks for a real scalar output.
    """

    def checked(*args, **kwargs):
        out = fun(*args, **kwargs)
        value = _value_of_pair(name, out) if has_aux else out
        if scalar_alternative is not None:
            _check_scalar_output(name, value, scalar_alternative)
        return out

    return checked


def _dyn_args(args: tuple, argnums: Argnums) -> PyTree:
    """The differentiated arguments: one for an int ``argnums``, a tuple otherwise."""
    return args[argnums] if isinstance(argnums, int) else tuple(args[i] for i in argnums)


def _partial_fun(fun: Callable, args: tuple, kwargs: dict, argnums: Argnums) -> tuple:
    """``(g, dyn)``: ``g(dyn) = fun(*args, **kwargs)`` with the differentiated arguments as ``dyn``.

    ``dyn`` is the single argument for an int ``argnums`` and a tuple otherwise, so every
    derivative comes out in ``jax.grad``'s layout without an extra tuple level.
    """
    single = isinstance(argnums, int)
    positions = [i % len(args) for i in ((argnums,) if single else argnums)]

    def g(dyn):
        full = list(args)
        for p, d in zip(positions, (dyn,) if single else dyn):
            full[p] = d
        return fun(*full, **kwargs)

    return g, _dyn_args(args, argnums)
