"""The compile policy: compiled code is keyed on what a call computes, not on who called it.

Every jaxcurv function that compiles internally (the products, the operators' builders,
the Krylov and spectral routines, the optimizer's ``update`` outside a user's ``jit``)
goes through :func:`compiled_call`. It traces the call to a jaxpr, hoists every array the
user's functions close over into an argument, and looks the compiled executable up by the
jaxpr's text (plus the input structure and abstract values). Three consequences, each
tested in ``tests/test_compile_policy.py``:

* a closure built per batch (``hvp(lambda p: loss(p, batch), params, v)`` in a loop)
  compiles once: the batch is an argument of the executable, not a constant baked into it,
  and the cache never holds on to it, so memory stays flat;
* a global the function reads is read afresh on every call (an array global is hoisted as
  an argument; a Python number is a literal of the jaxpr, so a new value is a new key):
  the answer is always that of the plain, uncompiled JAX code;
* under the user's own ``jax.jit`` / ``vmap`` / ``grad`` nothing is cached here: the call
  is inlined into the user's trace, which is the normal way to compile a training step.

The price is one trace per top-level call (milliseconds; no compile). Nested closed jaxprs
whose constants cannot be hoisted (a ``jax.jit``-decorated function that itself closes
over an array) are keyed on those arrays' identities, and the cache entry keeps them
alive, so an identity is never reused for other values.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

__all__ = ["at_top_level", "compiled_call", "compiled_function", "is_traced", "traced_program"]

# Enough for every configuration a script uses at once; least recently used entries go.
_CACHE_SIZE = 64
_cache: collections.OrderedDict[Any, Callable] = collections.OrderedDict()
_lock = threading.Lock()


def is_traced(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a tracer (we are inside a user's transformation)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def at_top_level() -> bool:
    """Whether no JAX transformation is being traced now (work done here is concrete).

    Under ``make_jaxpr``/``jit`` even a call on concrete arrays is staged into the trace,
    so what it returns must not be kept past it. JAX has no public test for this; without
    the private one this answers ``False`` (nothing is kept: correct, only slower).
    """
    try:
        from jax._src import core as jax_core

        return bool(jax_core.trace_ctx.is_top_level())
    except (ImportError, AttributeError):  # pragma: no cover - another JAX
        return False


def _is_dynamic(leaf: Any) -> bool:
    # As `equinox.filter_jit`: arrays are traced; Python values (flags such as
    # `train=True`, sizes, names) stay Python values, baked into the trace, so they show
    # in the jaxpr's text and a new value is a new computation.
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def _nested_consts(jaxpr: Any) -> list[Any]:
    """Constants of closed jaxprs nested in ``jaxpr``'s equations (not in its text)."""
    found = []
    for eqn in jaxpr.eqns:
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    found.extend(sub.consts)
                    found.extend(_nested_consts(sub.jaxpr))
                elif isinstance(sub, jex_core.Jaxpr):
                    found.extend(_nested_consts(sub))
    return found


def _aval_key(aval: Any) -> tuple:
    return (aval.shape, str(aval.dtype), getattr(aval, "weak_type", False))


def _evaluator(jaxpr: Any, out_tree: Any) -> Callable:
    def run(consts, dynamic):
        outs = jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(jaxpr, consts))(*dynamic)
        return jax.tree.unflatten(out_tree, outs)

    return jax.jit(run)


def _prepare(fun: Callable, args: tuple, kwargs: dict) -> tuple | None:
    """Trace ``fun(*args, **kwargs)`` and find (or make) its executable.

    Returns ``(executable, consts, is_dynamic, in_tree)``, or ``None`` when only plain
    evaluation is correct (the arguments, or constants ``fun`` closes over, are traced).
    """
    leaves, in_tree = jax.tree.flatten((args, kwargs))
    if is_traced(leaves):
        return None
    is_dynamic = [_is_dynamic(leaf) for leaf in leaves]
    dynamic = [leaf for leaf, d in zip(leaves, is_dynamic, strict=True) if d]

    def flat_fun(*dynamic):
        it = iter(dynamic)
        merged = [next(it) if d else leaf for leaf, d in zip(leaves, is_dynamic, strict=True)]
        call_args, call_kwargs = jax.tree.unflatten(in_tree, merged)
        return fun(*call_args, **call_kwargs)

    closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*dynamic)
    consts = list(closed.consts)
    nested = _nested_consts(closed.jaxpr)
    if is_traced(consts) or is_traced(nested):
        # A function closing over an outer tracer (built inside a user's transformation
        # but called outside it): only plain evaluation is correct.
        return None
    out_tree = jax.tree.structure(out_shape)
    key = (
        str(closed.jaxpr),
        in_tree,
        # The output's static parts (say a linearization's function) are new objects on
        # every trace; their text is what must agree.
        str(out_tree),
        tuple(is_dynamic),
        tuple(_aval_key(a) for a in closed.in_avals),
        tuple(_aval_key(jax.typeof(c)) for c in consts),
        tuple(id(c) for c in nested),
    )
    with _lock:
        entry = _cache.get(key)
        if entry is None:
            # The nested constants ride along so their ids stay theirs while cached.
            entry = (_evaluator(closed.jaxpr, out_tree), nested)
            _cache[key] = entry
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return entry[0], consts, is_dynamic, in_tree


def _dynamic_leaves(args: tuple, kwargs: dict, is_dynamic: list[bool], in_tree: Any) -> list:
    leaves, tree = jax.tree.flatten((args, kwargs))
    if tree != in_tree:
        raise ValueError(f"arguments of structure {tree} where {in_tree} was traced")
    return [leaf for leaf, d in zip(leaves, is_dynamic, strict=True) if d]


def compiled_call(fun: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fun(*args, **kwargs)``, compiled once per distinct computation.

    Args:
      fun: any function of pytrees; typically a closure over the user's callables.
      *args: its positional arguments (pytrees).
      **kwargs: its keyword arguments (pytrees).

    Returns:
      What ``fun`` returns: computed by a cached executable when the call is at top level,
      by ``fun`` itself when it is traced (inside ``jit``/``vmap``/``grad``). Array leaves
      of the arguments are traced; any other leaf (a Python flag, a string) is a constant
      of the computation.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv._compile import compiled_call
      >>> batch = jnp.arange(3.0)
      >>> compiled_call(lambda w: jnp.sum(w * batch), jnp.ones(3))
      Array(3., dtype=float32)
    """
    prepared = _prepare(fun, args, kwargs)
    if prepared is None:
        return fun(*args, **kwargs)
    executable, consts, is_dynamic, in_tree = prepared
    return executable(consts, _dynamic_leaves(args, kwargs, is_dynamic, in_tree))


def compiled_function(fun: Callable, *args: Any) -> Callable | None:
    """``fun`` traced once on ``args``, as a callable that runs its executable directly.

    For a host loop that calls the same computation many times (``jaxcurv._host_product``):
    ``compiled_call`` traces on every call (milliseconds each), this only once. The
    returned function takes arguments of the same structure whose non-array leaves equal
    those of ``args`` (they are constants of the trace); it is keyed and cached exactly as
    ``compiled_call`` is. ``None`` when ``args``, or what ``fun`` closes over, is traced:
    then only plain evaluation is correct.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv._compile import compiled_function
      >>> double = compiled_function(lambda v: 2.0 * v, jnp.ones(2))
      >>> double(jnp.arange(2.0)).tolist()
      [0.0, 2.0]
    """
    prepared = _prepare(fun, args, {})
    if prepared is None:
        return None
    executable, consts, is_dynamic, in_tree = prepared

    def call(*call_args: Any) -> Any:
        return executable(consts, _dynamic_leaves(call_args, {}, is_dynamic, in_tree))

    return call


def traced_program(fun: Callable, *args: Any) -> tuple[Callable, list, list] | None:
    """``fun`` traced on ``args`` (nothing compiled): ``(program, consts, dynamic)``.

    ``program(consts, dynamic)`` equals ``fun(*args)``; ``dynamic`` are the array leaves of
    ``args`` in flattening order, ``consts`` the arrays ``fun`` closes over. ``program`` is
    the cache's one object for this computation (keyed as ``compiled_call`` keys it), so a
    pytree that keeps it as static data has equal structure for equal computations: user
    and jaxcurv ``jit`` caches hit across closures built per batch. ``None`` when anything
    is traced.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv._compile import traced_program
      >>> program, consts, dynamic = traced_program(lambda v: jnp.sum(v ** 2), jnp.arange(3.0))
      >>> float(program(consts, dynamic))
      5.0
      >>> traced_program(lambda v: jnp.sum(v ** 2), jnp.ones(3))[0] is program
      True
    """
    prepared = _prepare(fun, args, {})
    if prepared is None:
        return None
    executable, consts, is_dynamic, in_tree = prepared
    return executable, consts, _dynamic_leaves(args, {}, is_dynamic, in_tree)
