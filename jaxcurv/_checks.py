"""Argument checks shared by every jaxcurv module, and the one rule for which error they raise.

The rule:

* ``TypeError`` when the *kind* of a value is wrong: not an int where a count goes, not
  callable where a function goes, a string or a function where an array goes, an int seed
  where a PRNG key goes, a float array where a choice goes.
* ``ValueError`` when the kind is right but the value is not allowed: out of range, an
  unknown choice, a shape or tree-structure mismatch, an empty tree.

Every message names the argument as the user wrote it (`` `cg(maxiter=...)` ``), shows
what was received, and where one is needed says how to fix it:
`` `cg(maxiter=...)` must be positive, got -1. `` The ``name`` each helper takes is that
argument, without the backticks; ``fix`` is a sentence appended to the message.
"""

from __future__ import annotations

import math
import reprlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = [
    "check_array_leaves",
    "check_bounded_int",
    "check_callable",
    "check_choice",
    "check_in_interval",
    "check_instance",
    "check_int",
    "check_key",
    "check_learning_rate",
    "check_non_negative",
    "check_option",
    "check_positive",
    "check_real",
    "check_real_inputs",
    "check_value",
    "common_leading_size",
    "deprecated_keywords",
    "describe_value",
    "is_array",
    "is_real_scalar",
    "renamed_keyword",
]

# Leaf types JAX can turn into arrays; anything else in a differentiated tree is a mistake.
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct, int, float, complex)

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def _show(value: Any) -> str:
    """``repr(value)``, shortened: a stray array or closure must not flood the message."""
    return _repr.repr(value)


def _fail(error: type[Exception], name: str, requirement: str, got: str, fix: str) -> None:
    raise error(f"`{name}` must be {requirement}, got {got}." + (f" {fix}" if fix else ""))


# ------------------------------------------------------------------------ scalar options


def check_value(ok: bool, name: str, value: Any, requirement: str, *, fix: str = "") -> None:
    """Raise a ``ValueError`` unless ``ok``: the general form of every range check here.

    Example:
      >>> from jaxcurv._checks import check_value
      >>> check_value(0.9 > 1, "hessian_free(damping_increase=...)", 0.9, "greater than 1")
      Traceback (most recent call last):
      ...
      ValueError: `hessian_free(damping_increase=...)` must be greater than 1, got 0.9.
    """
    if not ok:
        _fail(ValueError, name, requirement, _show(value), fix)


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    requirement: str | None = None,
    fix: str = "",
) -> int:
    """``value`` as a Python int; ``TypeError`` if it is no int, ``ValueError`` below ``minimum``.

    Python and numpy integers are ints; bools, floats (even ``2.0``) and arrays are not.

    Args:
      name: the argument, e.g. ``"cg(maxiter=...)"``.
      value: what the user passed.
      minimum: the smallest allowed value (``None``: any int).
      requirement: how the ``ValueError`` states the range (default ``">= minimum"``).
      fix: a sentence appended to either message.

    Returns:
      ``int(value)``.

    Example:
      >>> from jaxcurv._checks import check_int
      >>> check_int("f(n=...)", 3, minimum=1)
      3
      >>> check_int("f(n=...)", 2.5, minimum=1)
      Traceback (most recent call last):
      ...
      TypeError: `f(n=...)` must be an int >= 1, got float: 2.5.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        kind = "an int" if minimum is None else f"an int >= {minimum}"
        _fail(TypeError, name, kind, f"{type(value).__name__}: {_show(value)}", fix)
    value = int(value)
    if minimum is not None and value < minimum:
        _fail(ValueError, name, requirement or f">= {minimum}", str(value), fix)
    return value


def is_real_scalar(x: Any) -> bool:
    """A Python/numpy real number or a 0-d integer/float array; bools are not numbers here."""
    if isinstance(x, bool | np.bool_):
        return False
    if isinstance(x, jax.Array | np.ndarray | np.generic):
        dtype = x.dtype
        real = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        return x.ndim == 0 and real
    return isinstance(x, int | float)


def check_real(name: str, value: Any, *, fix: str = "") -> float:
    """``float(value)``; a ``TypeError`` unless ``value`` is a real number (see
    :func:`is_real_scalar`).

    Example:
      >>> from jaxcurv._checks import check_real
      >>> check_real("f(tol=...)", "1e-3")
      Traceback (most recent call last):
      ...
      TypeError: `f(tol=...)` must be a real number, got str: '1e-3'.
    """
    if not is_real_scalar(value):
        _fail(TypeError, name, "a real number", f"{type(value).__name__}: {_show(value)}", fix)
    return float(value)


def _interval_words(interval: str) -> str:
    """``"[0, inf)"`` as "non-negative", ``"(1, inf)"`` as "greater than 1", ``"[0, 1]"`` as
    "in [0, 1]": how a message states the range."""
    low, high = (t.strip() for t in interval[1:-1].split(","))
    if high != "inf":
        return f"in {interval}"
    if low == "0":
        return "non-negative" if interval[0] == "[" else "positive"
    return f"at least {low}" if interval[0] == "[" else f"greater than {low}"


def check_in_interval(name: str, value: Any, interval: str, *, fix: str = "") -> None:
    """A real number in ``interval``, written as in mathematics: ``"(0, 1]"``, ``"[0, inf)"``.

    NaN is in no interval. Half-lines are stated in words: ``"(0, inf)"`` is "positive".

    Raises:
      TypeError: ``value`` is no real number (:func:`check_real`).
      ValueError: it is outside ``interval``.

    Example:
      >>> from jaxcurv._checks import check_in_interval
      >>> check_in_interval("hessian_free(cg_decay=...)", 1.5, "[0, 1]")
      Traceback (most recent call last):
      ...
      ValueError: `hessian_free(cg_decay=...)` must be in [0, 1], got 1.5.
      >>> check_in_interval("hessian_free(damping_increase=...)", 0.9, "(1, inf)")
      Traceback (most recent call last):
      ...
      ValueError: `hessian_free(damping_increase=...)` must be greater than 1, got 0.9.
    """
    low, high = (float(t) for t in interval[1:-1].split(","))
    v = check_real(name, value, fix=fix)
    above = v >= low if interval[0] == "[" else v > low
    below = v <= high if interval[-1] == "]" else v < high
    check_value(above and below, name, value, _interval_words(interval), fix=fix)


def check_positive(
    name: str, value: Any, *, finite: bool = False, requirement: str | None = None, fix: str = ""
) -> None:
    """A real number ``> 0`` (and finite if asked); NaN is never positive.

    Example:
      >>> from jaxcurv._checks import check_positive
      >>> check_positive("hessian(max_bytes=...)", 0)
      Traceback (most recent call last):
      ...
      ValueError: `hessian(max_bytes=...)` must be positive, got 0.
    """
    v = check_real(name, value, fix=fix)
    ok = v > 0 and (math.isfinite(v) or not finite)
    default = "positive and finite" if finite else "positive"
    check_value(ok, name, value, requirement or default, fix=fix)


def check_non_negative(
    name: str, value: Any, *, finite: bool = False, requirement: str | None = None, fix: str = ""
) -> None:
    """A real number ``>= 0`` (and finite if asked); NaN is never non-negative.

    Example:
      >>> from jaxcurv._checks import check_non_negative
      >>> check_non_negative("hessian_free(damping=...)", -1.0)
      Traceback (most recent call last):
      ...
      ValueError: `hessian_free(damping=...)` must be non-negative, got -1.0.
    """
    v = check_real(name, value, fix=fix)
    ok = v >= 0 and (math.isfinite(v) or not finite)
    default = "non-negative and finite" if finite else "non-negative"
    check_value(ok, name, value, requirement or default, fix=fix)


def check_choice(name: str, value: Any, options: Sequence[Any], *, fix: str = "") -> None:
    """One of ``options``: ``ValueError`` for an unknown one of the options' kind (a
    misspelt string), ``TypeError`` for a value of another kind altogether.

    Example:
      >>> from jaxcurv._checks import check_choice
      >>> check_choice("jacobian(mode=...)", "forward", ("auto", "fwd", "rev"))
      Traceback (most recent call last):
      ...
      ValueError: `jacobian(mode=...)` must be one of ('auto', 'fwd', 'rev'), got 'forward'.
    """
    options = tuple(options)
    if any(value is o or (isinstance(value, type(o)) and value == o) for o in options):
        return
    kinds = tuple({type(o) for o in options if o is not None})
    requirement = f"one of {options}"
    if kinds and not isinstance(value, kinds):
        _fail(TypeError, name, requirement, f"{type(value).__name__}: {_show(value)}", fix)
    _fail(ValueError, name, requirement, _show(value), fix)


def check_callable(name: str, value: Any, *, fix: str = "") -> None:
    """A ``TypeError`` unless ``value`` is callable.

    Example:
      >>> from jaxcurv._checks import check_callable
      >>> check_callable("hvp(fun)", 3)
      Traceback (most recent call last):
      ...
      TypeError: `hvp(fun)` must be callable, got int: 3.
    """
    if not callable(value):
        _fail(TypeError, name, "callable", f"{type(value).__name__}: {_show(value)}", fix)


def check_instance(name: str, value: Any, types: Any, kind: str, *, fix: str = "") -> None:
    """A ``TypeError`` unless ``isinstance(value, types)``; ``kind`` says it in words.

    Example:
      >>> from jaxcurv._checks import check_instance
      >>> check_instance("data_parallel_mesh(axis_name=...)", 0, str, "a string")
      Traceback (most recent call last):
      ...
      TypeError: `data_parallel_mesh(axis_name=...)` must be a string, got int: 0.
    """
    if not isinstance(value, types):
        _fail(TypeError, name, kind, f"{type(value).__name__}: {_show(value)}", fix)


# ------------------------------------------------------------------------ learning rates


def check_learning_rate(name: str, learning_rate: Any, *, fix: str) -> None:
    """What can be known of a learning rate before any update; raises if it is wrong.

    A constant must be a positive finite real number: a negative one steps uphill, zero
    never moves, NaN and inf have no step. A schedule (a callable of the int32 update count)
    must return a real scalar and must not start negative or non-finite; 0 at count 0 is
    allowed, since warm-up schedules start there. Later values, and a rate traced under
    ``jit``, can only be checked at run time, by the optimizer.

    Args:
      name: the argument, e.g. ``"hessian_free(learning_rate=...)"``.
      learning_rate: a number, a 0-d array, a tracer or a schedule.
      fix: the sentence that says what to pass.

    Raises:
      TypeError: not a real number nor a callable; a schedule that fails on an int32
        count or returns a non-real dtype.
      ValueError: a non-positive or non-finite constant; a non-scalar schedule value; a
        schedule negative or non-finite at count 0.

    Example:
      >>> from jaxcurv._checks import check_learning_rate
      >>> check_learning_rate("opt(learning_rate=...)", 0.5, fix="Pass 0.1.")
      >>> check_learning_rate("opt(learning_rate=...)", -1.0, fix="Pass 0.1.")
      Traceback (most recent call last):
      ...
      ValueError: `opt(learning_rate=...)` must be positive and finite, got -1.0: ... Pass 0.1.
    """
    if callable(learning_rate):
        _check_schedule(f"`{name}`", learning_rate, fix)
        return
    if isinstance(learning_rate, jax.core.Tracer):
        return  # its value exists only at run time, where it is checked
    if not is_real_scalar(learning_rate):
        raise TypeError(
            f"`{name}` must be a positive finite number or a schedule, got "
            f"{type(learning_rate).__name__}: {learning_rate!r}. {fix}"
        )
    value = float(learning_rate)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"`{name}` must be positive and finite, got {learning_rate!r}: a negative rate "
            f"steps uphill, zero never moves and NaN or inf has no step. {fix}"
        )


def _check_schedule(name: str, schedule: Callable, fix: str) -> None:
    count = jax.ShapeDtypeStruct((), jnp.int32)
    try:
        out = jax.eval_shape(schedule, count)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} got a callable, so it is taken as a schedule of the update count, but "
            f"calling it on an int32 count failed: {e} {fix}"
        ) from e
    dtype, shape = getattr(out, "dtype", None), getattr(out, "shape", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(
            f"{name} schedule must return a real scalar, got {type(out).__name__} "
            f"{dtype or ''}. {fix}"
        )
    if shape != ():
        raise ValueError(f"{name} schedule must return a scalar, got shape {shape}. {fix}")
    first = schedule(jnp.asarray(0, jnp.int32))
    if isinstance(first, jax.core.Tracer):
        return  # it closes over traced values: only the run-time check applies
    value = float(first)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} schedule gives {value!r} at count 0; a rate must be positive and "
            f"finite (0 is allowed only as the start of a warm-up). {fix}"
        )


# ------------------------------------------------------------------------- input trees


def is_array(x: Any) -> bool:
    """Whether JAX can treat ``x`` as an array (strings name dtypes, so are excluded first)."""
    if isinstance(x, str | bytes):
        return False
    if not (isinstance(x, _ARRAY_TYPES) or hasattr(x, "__jax_array__")):
        return False
    try:
        jnp.result_type(x)  # refuses numpy object arrays
    except (TypeError, ValueError):
        return False
    return True


def describe_value(x: Any) -> str:
    """A short description for messages: never a tracer's repr or a memory address."""
    if isinstance(x, tuple | list):
        return f"a {type(x).__name__} of length {len(x)}"
    if isinstance(x, str | bytes):
        return f"a {type(x).__name__} {reprlib.repr(x)}"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"an array of shape {tuple(x.shape)} and dtype {x.dtype}"
    if callable(x):
        return f"a {type(x).__name__} `{getattr(x, '__name__', '?')}`"
    return f"a {type(x).__name__}"


def check_array_leaves(name: str, tree: PyTree, what: str = "differentiated input") -> None:
    """Every leaf a real floating-point array or number; the tree may be empty.

    Raises:
      TypeError: a leaf that is no array (a string, a function: named by its path), or an
        integer, bool or complex one.
    """
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        where = jax.tree_util.keystr(path) or "<root>"
        if not is_array(leaf):
            raise TypeError(
                f"`{name}` differentiates arrays only, but the {what} at {where} is "
                f"{describe_value(leaf)}. Keep configuration out of the differentiated "
                "arguments: split a model with `params, static = eqx.partition(model, "
                "eqx.is_inexact_array)` and differentiate `params` (rebuild it with "
                "`eqx.combine(params, static)`), or pass settings by closure or keyword."
            )
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            if jnp.issubdtype(dtype, jnp.complexfloating):
                kind = "complex"
            elif jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
                kind = "integer/bool"
            else:
                kind = "non-floating"
            raise TypeError(
                f"`{name}` requires real floating-point inputs, but the {what} at {where} "
                f"has {kind} dtype {dtype}. Convert it first, e.g. `jnp.asarray(x, "
                f"jnp.float32)`; for complex functions use `jax.grad(..., holomorphic=True)`."
            )


def check_real_inputs(name: str, tree: PyTree, what: str = "differentiated input") -> None:
    """Real floating-point array leaves, and at least one of them.

    Shared by every module that differentiates a user's tree: strings, functions and other
    non-array leaves are a ``TypeError`` naming the leaf's path, integer and complex leaves
    a ``TypeError``, and a tree with no array leaves a ``ValueError``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv._checks import check_real_inputs
      >>> check_real_inputs("hvp", {"w": jnp.ones(2), "act": "tanh"}, "point `x`")
      Traceback (most recent call last):
      ...
      TypeError: `hvp` differentiates arrays only, but the point `x` at ['act'] is a str ...
    """
    check_array_leaves(name, tree, what)
    if not jax.tree.leaves(tree):
        raise ValueError(
            f"`{name}` has nothing to differentiate: the {what} has no array leaves (got "
            f"{jax.tree.structure(tree)}). Pass the arrays to differentiate, e.g. "
            "`{'w': jnp.zeros(3)}`"
            + (", and check `argnums`." if what == "differentiated input" else ".")
        )


def common_leading_size(tree: PyTree, mismatch: Callable[[str, int, str, int], str]) -> int | None:
    """The leading size shared by every leaf with ``ndim >= 1`` (``None``: no such leaf).

    Data with a batch axis (the extra arguments of an optimizer update, a batch to shard)
    must hold the same number of examples in every leaf; a mislabelled or truncated array
    would otherwise pair example ``i`` of one leaf with another example of the next.

    Args:
      tree: any pytree; scalars (``ndim == 0``) are skipped.
      mismatch: ``(first path, its size, other path, its size) -> message`` of the
        ``ValueError`` raised for the first leaf whose size differs.

    Example:
      >>> import numpy as np
      >>> from jaxcurv._checks import common_leading_size
      >>> say = lambda a, n, b, m: f"{a} has {n}, {b} has {m}"
      >>> common_leading_size({"x": np.zeros((4, 2)), "y": np.zeros(4), "t": 1.0}, say)
      4
      >>> common_leading_size({"x": np.zeros(4), "y": np.zeros(6)}, say)
      Traceback (most recent call last):
      ...
      ValueError: ['x'] has 4, ['y'] has 6
    """
    first = None
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if np.ndim(leaf) == 0:
            continue
        where, n = jax.tree_util.keystr(path) or "<root>", np.shape(leaf)[0]
        if first is None:
            first = (where, n)
        elif n != first[1]:
            raise ValueError(mismatch(first[0], first[1], where, n))
    return None if first is None else first[1]


# ------------------------------------------------------ Krylov routines: counts, keys


def check_bounded_int(name: str, value: Any, *, low: int, high: int | None = None, fix: str) -> int:
    """``value`` as an int in ``[low, high]``: the Krylov routines' counts (``num_iters``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}: {value!r}.")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"`{name}` must be {bounds}, got {value}. {fix}")
    return value


def check_option(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of the string ``choices``, else a ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


def check_key(name: str, key: Any) -> jax.Array:
    """``key`` if it is one PRNG key (typed, or a legacy ``uint32[2]``), else a ``TypeError``."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.shape(key) == ():
            return key
    elif dtype == jnp.uint32 and jnp.shape(key) == (2,):
        return key
    raise TypeError(
        f"`{name}(key=...)` must be a single JAX PRNG key such as `jax.random.key(0)`, "
        f"got {type(key).__name__}{'' if dtype is None else ' of dtype ' + str(dtype)}"
        f"{'' if dtype is None else ' and shape ' + str(jnp.shape(key))}."
    )


_UNSET: Any = object()


def renamed_keyword(
    function: str, old: str, old_value: Any, new: str, new_value: Any, default: Any = None
) -> Any:
    """The value of keyword ``new``, also accepting its old spelling ``old`` for one release.

    Call with the two received values; ``default`` is ``new``'s default, which says whether
    ``new`` was given. The old spelling gives a ``DeprecationWarning`` naming the new one;
    both at once is a ``TypeError`` (the same mistake as a repeated keyword).

    >>> renamed_keyword("f", "num_iters", None, "maxiter", 5)
    5
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     renamed_keyword("f", "num_iters", 7, "maxiter", None)
    ...     print(w[0].category.__name__)
    7
    DeprecationWarning
    """
    if old_value is None or old_value is _UNSET:
        return new_value
    if new_value is not default and new_value is not _UNSET:
        raise TypeError(
            f"`{function}` got both `{new}=` and its deprecated spelling `{old}=`; pass only "
            f"`{new}={new_value!r}`."
        )
    warnings.warn(
        f"`{function}({old}=...)` is deprecated and will be removed in the next release; "
        f"write `{function}({new}={old_value!r})`.",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value


def deprecated_keywords(**renames: str) -> Callable[[Callable], Callable]:
    """Mark keyword parameters of the decorated function as deprecated spellings.

    ``@deprecated_keywords(num_iters="maxiter")`` records ``{"num_iters": "maxiter"}`` as
    ``fn.__deprecated_keywords__`` and returns ``fn`` itself (no wrapper, so the signature
    and the compiled code are untouched). The function keeps each old name in its
    signature, keyword-only with default ``None``, and resolves it with
    :func:`renamed_keyword`; the mark is how ``tests/test_conventions.py`` tells a
    deprecated keyword from a current one. A mark that does not match the signature is a
    ``TypeError`` at import time.

    >>> @deprecated_keywords(num_iters="maxiter")
    ... def f(*, maxiter=None, num_iters=None):
    ...     return renamed_keyword("f", "num_iters", num_iters, "maxiter", maxiter)
    >>> f.__deprecated_keywords__, f(maxiter=3)
    ({'num_iters': 'maxiter'}, 3)
    """
    import inspect  # only at import time of the marked modules

    def mark(fn: Callable) -> Callable:
        params = inspect.signature(fn).parameters
        for old, new in renames.items():
            p = params.get(old)
            if p is None or p.kind is not p.KEYWORD_ONLY or p.default is not None:
                raise TypeError(
                    f"`{fn.__qualname__}`: a deprecated keyword `{old}` must be a keyword-only "
                    "parameter with default None."
                )
            if new not in params:
                raise TypeError(f"`{fn.__qualname__}` has no parameter `{new}` to rename to.")
        fn.__deprecated_keywords__ = {**getattr(fn, "__deprecated_keywords__", {}), **renames}
        return fn

    return mark
