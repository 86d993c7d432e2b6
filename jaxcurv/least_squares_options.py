"""The options of :func:`jaxcurv.least_squares`, checked, and its residual function, guarded.

Every option is checked once, as given (``TypeError`` for the wrong kind, ``ValueError``
for a value out of range, each naming the option, the value and the fix); the residual
function's output is checked when it is traced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import (
    check_callable,
    check_choice,
    check_int,
    check_non_negative,
    check_positive,
    check_real_inputs,
    check_value,
    describe_value,
)

PyTree = Any

__all__ = ["Options", "check_options", "checked_residuals"]

SCALINGS = ("auto", "jacobian", "identity")
SOLVERS = ("auto", "cg", "dense")


class Options(NamedTuple):
    """The keyword options of :func:`jaxcurv.least_squares`, one field each."""

    maxiter: int
    ftol: float
    xtol: float
    gtol: float
    damping: float
    min_damping: float | None
    max_damping: float | None
    cg_maxiter: int | None
    scaling: str
    linear_solver: str


def check_options(residual_fn: Any, params: PyTree, cfg: Options) -> Options:
    """The arguments of :func:`jaxcurv.least_squares`, checked; counts as ints.

    Raises:
      TypeError: a value of the wrong kind.
      ValueError: a value out of range, an unknown choice, or empty ``params``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.least_squares_options import Options, check_options
      >>> opts = Options(0, 1e-8, 1e-8, 1e-8, 1e-3, None, None, None, "auto", "auto")
      >>> check_options(lambda p: p, jnp.zeros(2), opts)
      Traceback (most recent call last):
      ...
      ValueError: `least_squares(maxiter=...)` must be positive, got 0. It is the most ...
    """
    name = "least_squares({}=...)".format
    check_callable("least_squares(residual_fn)", residual_fn)
    check_real_inputs("least_squares", params, "`params`")
    fix = "It is the most steps tried (accepted or rejected), e.g. maxiter=500."
    maxiter = check_int(name("maxiter"), cfg.maxiter, minimum=1, requirement="positive", fix=fix)
    cg_maxiter = cfg.cg_maxiter
    if cg_maxiter is not None:
        cg_maxiter = check_int(name("cg_maxiter"), cg_maxiter, minimum=1, requirement="positive")
    for tol in ("ftol", "xtol", "gtol"):
        fix = "Pass 0 to switch this test off."
        check_non_negative(name(tol), getattr(cfg, tol), finite=True, fix=fix)
    check_positive(name("damping"), cfg.damping, finite=True)
    for bound in ("min_damping", "max_damping"):
        if getattr(cfg, bound) is not None:
            check_positive(name(bound), getattr(cfg, bound), finite=True)
    if cfg.min_damping is not None and cfg.max_damping is not None:
        check_value(
            cfg.min_damping <= cfg.max_damping,
            name("min_damping"),
            (cfg.min_damping, cfg.max_damping),
            "at most `max_damping`",
        )
    check_choice(name("scaling"), cfg.scaling, SCALINGS)
    check_choice(name("linear_solver"), cfg.linear_solver, SOLVERS)
    return cfg._replace(maxiter=maxiter, cg_maxiter=cg_maxiter)


def checked_residuals(residual_fn: Callable, args: tuple, dtype: Any) -> Callable:
    """``p -> r(p, *args)``, checked to be a tree of real floating arrays.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.least_squares_options import checked_residuals
      >>> y, p = jnp.ones(2, jnp.float32), jnp.zeros(2, jnp.float32)
      >>> checked_residuals(lambda p, y: p - y, (y,), jnp.float32)(p)
      Array([-1., -1.], dtype=float32)
    """

    def fn(p):
        out = residual_fn(p, *args)
        leaves = jax.tree.leaves(out)
        ok = [hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) for a in leaves]
        if not leaves or not all(ok):
            got = describe_value(leaves[ok.index(False)] if leaves else out)
            raise TypeError(
                "`least_squares(residual_fn)` must return the residuals, an array or a "
                f"pytree of arrays of real floating dtype, got {got}. Return e.g. "
                "`jnp.asarray(model(params, x) - y, jnp.float32)`: the residual vector, "
                "not its sum of squares as an int, nor a list of Python numbers."
            )
        return jax.tree.map(lambda a: a.astype(jnp.result_type(a, dtype)), out)

    return fn
