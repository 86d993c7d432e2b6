"""The options of :func:`jaxcurv.hessian_free` and the arguments of its ``update``, checked.

Every option is checked once, at construction, as given (``TypeError`` for the wrong kind,
``ValueError`` for a value out of range, each naming the option, the value and the fix);
``update`` checks what only a call can show (no objective, a plain loss for Gauss-Newton,
stray keywords, an ``updates`` tree unlike ``params``). Options traced under ``jit``, as
``optax.inject_hyperparams`` makes them, are checked when their value is known.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxcurv._checks import (
    check_callable,
    check_choice,
    check_in_interval,
    check_int,
    check_learning_rate,
    check_real,
    check_value,
    describe_value,
)
from jaxcurv.model_and_loss import ModelAndLoss, check_value_fn_keywords
from jaxcurv.tree import tree_check_like

PyTree = Any

__all__ = [
    "check_options",
    "check_update_args",
]

_CURVATURES = ("ggn", "hessian")
_CG_STOPS = ("martens", "residual", "forcing")
_PRECONDITIONERS = (None, "martens", "kfac", "spectral")
_PRECONDITIONER_FIX = (
    "Or pass a callable `(params, damping, **extra_args) -> M` that builds the "
    "preconditioner `M: r -> M r` (symmetric positive definite) at each update."
)

_LR_FIX = (
    "Pass a positive finite float (1.0 is Martens' algorithm) or an optax schedule of the "
    "update count, e.g. `optax.exponential_decay(1.0, 100, 0.5)`."
)


# The range of every real option (`_checks.check_in_interval` states half-lines in words).
_RANGES = {
    "damping": "[0, inf)",
    "damping_increase": "(1, inf)",
    "damping_decrease": "(0, 1)",
    "cg_tol": "[0, inf)",
    "martens_eps": "(0, inf)",
    "cg_decay": "[0, 1]",
    "line_search_c": "(0, 1)",
    "line_search_factor": "(0, 1)",
    "preconditioner_exponent": "(0, inf)",
}


# Step counts and sizes: (minimum, what `None` means). They size loops and buffers, so they
# are Python ints; `None` defaults keep them static under `optax.inject_hyperparams`, which
# turns every numeric argument it is given (defaults included) into a traced array.
_COUNTS = {
    "cg_maxiter": (1, 250),
    "line_search_maxiter": (0, 20),
    "preconditioner_chunk_size": (1, 32),
    "preconditioner_rank": (1, 5),
    "preconditioner_every": (1, 10),
}


def _static_fix(name: str) -> str:
    return (
        f"It sizes loops or buffers, so it is static: under `optax.inject_hyperparams`, pass "
        f"`static_args=({name!r},)`."
    )


def check_options(cfg: Any) -> Any:
    """Every option of the factory, checked as given; returns them with ints as ints.

    A real option traced under ``jit`` (``optax.inject_hyperparams`` makes them arrays) is
    checked only when its value is known; the run-time guards (a rejected step) remain.

    Raises:
      TypeError: an option of the wrong kind (a float step count, a string damping).
      ValueError: an option out of range or an unknown choice.
    """
    opt = "hessian_free({}=...)".format
    known = lambda *names: not any(isinstance(getattr(cfg, n), jax.core.Tracer) for n in names)
    check_learning_rate(opt("learning_rate"), cfg.learning_rate, fix=_LR_FIX)
    check_choice(opt("curvature"), cfg.curvature, _CURVATURES)
    check_choice(opt("cg_stop"), cfg.cg_stop, _CG_STOPS)
    if not callable(cfg.preconditioner):
        check_choice(
            opt("preconditioner"), cfg.preconditioner, _PRECONDITIONERS, fix=_PRECONDITIONER_FIX
        )
    for name, interval in _RANGES.items():
        if known(name):
            check_in_interval(opt(name), getattr(cfg, name), interval)
    if cfg.curvature_fraction is not None:
        if isinstance(cfg.curvature_fraction, jax.Array):
            raise TypeError(
                f"`hessian_free(curvature_fraction=...)` must be a Python float, got "
                f"{describe_value(cfg.curvature_fraction)}. " + _static_fix("curvature_fraction")
            )
        fix = "Pass None for curvature on the whole batch."
        check_in_interval(opt("curvature_fraction"), cfg.curvature_fraction, "(0, 1]", fix=fix)
    if known("rho_low", "rho_high"):
        rho = [check_real(opt(n), getattr(cfg, n)) for n in ("rho_low", "rho_high")]
        pair = "non-negative and below `rho_high`"
        check_value(0 <= rho[0] < rho[1], opt("rho_low"), (cfg.rho_low, cfg.rho_high), pair)
    if known("min_damping", "max_damping"):
        bounds = [check_real(opt(n), getattr(cfg, n)) for n in ("min_damping", "max_damping")]
        pair = "non-negative and at most `max_damping`"
        check_value(
            0 <= bounds[0] <= bounds[1],
            opt("min_damping"),
            (cfg.min_damping, cfg.max_damping),
            pair,
        )
    if cfg.preconditioner in ("kfac", "spectral"):
        _check_positive_damping(cfg, known)
    words = {1: "a positive int", 0: "a non-negative int"}
    counts = {}
    for n, (low, default) in _COUNTS.items():
        v = default if getattr(cfg, n) is None else getattr(cfg, n)
        fix = _static_fix(n) if isinstance(v, jax.Array) else ""
        counts[n] = check_int(opt(n), v, minimum=low, requirement=words[low], fix=fix)
    return cfg._replace(**counts)


def _check_positive_damping(cfg: Any, known: Any) -> None:
    """K-FAC's factors are singular undamped, and the spectral preconditioner divides by
    the damped eigenvalues, zero pairs included: every damping an update uses is > 0."""
    name = cfg.preconditioner
    fix = {
        "kfac": "The K-FAC factors are singular without damping; pass a positive one, e.g. 1e-3.",
        "spectral": "The spectral preconditioner divides by eigenvalue + damping; pass a "
        "positive damping, e.g. 1e-3.",
    }[name]
    if known("damping"):
        check_value(
            cfg.damping > 0,
            "hessian_free(damping=...)",
            cfg.damping,
            f"positive with preconditioner='{name}'",
            fix=fix,
        )
    if cfg.adapt_damping and known("min_damping"):
        check_value(
            cfg.min_damping > 0,
            "hessian_free(min_damping=...)",
            cfg.min_damping,
            f"positive with preconditioner='{name}' and adapt_damping=True",
            fix=fix,
        )


def check_update_args(
    cfg: Any, updates: PyTree, params: PyTree, value_fn: Any, grad: PyTree, extra_args: dict
) -> None:
    if params is None:
        raise ValueError(
            "`hessian_free(...).update` needs `params`: call "
            "`opt.update(grads, state, params, value_fn=...)`."
        )
    if value_fn is None:
        raise TypeError(
            "`hessian_free(...).update` needs the objective: call `opt.update(grads, "
            "state, params, value_fn=loss, **batch)` with `loss(params, **batch)` the "
            "scalar loss (for curvature='ggn', `value_fn=ModelAndLoss(model_fn, "
            "loss_fn)`)."
        )
    check_callable("value_fn", value_fn)
    if cfg.curvature == "ggn" and not isinstance(value_fn, ModelAndLoss):
        raise TypeError(
            "`hessian_free(curvature='ggn')` needs the model and the loss apart, got a "
            f"plain `value_fn` ({type(value_fn).__name__}). Pass "
            "`value_fn=ModelAndLoss(model_fn, loss_fn)` (it is itself the loss), or use "
            "`hessian_free(curvature='hessian')`."
        )
    if cfg.has_aux and isinstance(value_fn, ModelAndLoss) and not value_fn.has_aux:
        raise TypeError(
            "`hessian_free(has_aux=True)` got a ModelAndLoss without auxiliary outputs. Say "
            "which function returns them: `ModelAndLoss(model_fn, loss_fn, "
            "model_has_aux=True)` (model state) or `loss_has_aux=True` (metrics); a "
            "ModelAndLoss states its own aux, so `has_aux` may then stay False."
        )
    check_value_fn_keywords(value_fn, extra_args)
    tree_check_like("updates", updates, params, "params")
    if grad is not None:
        tree_check_like("grad", grad, params, "params")
