"""Hessian-free optimization (Martens 2010) as an optax gradient transformation.

Each update solves the damped Newton system ``(B + lambda I) p = -g`` with truncated
conjugate gradient on curvature-vector products -- Gauss-Newton (``B = J^T H_loss J``,
positive semi-definite) or the Hessian -- without ever forming ``B``. Around that solve it
runs the whole of Martens' recipe: Levenberg-Marquardt damping driven by the reduction ratio,
warm-started CG with a relative-progress stop, CG-iterate backtracking, an Armijo line search,
a diagonal preconditioner and curvature on a sub-batch. Every part can be switched off.

This module holds the state and the factory; the update is
orchestration over named, pure parts, each tested on its own (optimistix builds a solver
the same way, from a descent and a search):

* the curvature operator (GGN or Hessian, on a sub-batch) and the CG solve of the damped
  model: :mod:`jaxcurv.descent`;
* the preconditioners: Martens' diagonal (:mod:`jaxcurv.preconditioner`), K-FAC
  (:mod:`jaxcurv.kfac`), spectral from the curvature's top eigenpairs, refreshed on a
  schedule and carried in the state (:mod:`jaxcurv.spectral_preconditioner`);
* CG-iterate backtracking and the Armijo line search: :mod:`jaxcurv.line_search`;
* the reduction ratio and the Levenberg-Marquardt damping rule: :mod:`jaxcurv.damping`;
* the model, the loss and the batch handed over: :mod:`jaxcurv.model_and_loss`.
* the options and the update's arguments, checked: :mod:`jaxcurv.hessian_free_options`.

References:
  J. Martens. "Deep learning via Hessian-free optimization." ICML 2010.
  J. Martens and I. Sutskever. "Training deep and recurrent networks with Hessian-free
  optimization." Neural Networks: Tricks of the Trade, 2nd ed., Springer 2012.
  N. N. Schraudolph. "Fast curvature matrix-vector products for second-order gradient
  descent." Neural Computation 14(7), 2002. (Gauss-Newton products.)
  J. Nocedal and S. J. Wright. "Numerical Optimization", 2nd ed., Springer 2006.
  (Ch. 3 line search, Ch. 4 trust regions and the reduction ratio, Ch. 7 truncated Newton.)
"""

from __future__ import annotations

import collections
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcurv._checks import (
    check_choice,
    check_real_inputs,
    check_value,
    deprecated_keywords,
    describe_value,
    renamed_keyword,
)
from jaxcurv._compile import compiled_call
from jaxcurv.cg import CGStatus
from jaxcurv.damping import (
    DAMPING_DECREASE,
    DAMPING_INCREASE,
    MAX_DAMPING,
    MIN_DAMPING,
    RHO_HIGH,
    RHO_LOW,
    levenberg_marquardt_damping,
    reduction_ratio,
)
from jaxcurv.descent import (
    cg_preconditioner,
    curvature_operator,
    curvature_sub_batch,
    damped_newton_direction,
    refresh_spectral_pairs,
)
from jaxcurv.hessian_free_options import check_options, check_update_args
from jaxcurv.line_search import armijo_condition, cg_candidates, direction_stats, search
from jaxcurv.model_and_loss import ModelAndLoss, check_value_fn_keywords

# Tests of the statistic import it from here, where it was first written.
from jaxcurv.preconditioner import mean_squared_example_grads as _mean_squared_example_grads  # noqa: F401
from jaxcurv.sharding import state_shardings
from jaxcurv.tree import tree_all_finite, tree_scale, tree_where, tree_zeros_like

PyTree = Any

# `ModelAndLoss` (from `jaxcurv.model_and_loss`) is also reachable here, where it began.
__all__ = [
    "HessianFreeState",
    "ModelAndLoss",
    "hessian_free",
]


class HessianFreeState(NamedTuple):
    """State of :func:`hessian_free`: arrays only, so it checkpoints and passes through jit.

    Fields about "the last update" hold their initial values before the first update.
    """

    count: jax.Array  # int32 (), number of `update` calls so far.
    damping: jax.Array  # float (), Tikhonov damping lambda the next update will use.
    cg_init: PyTree  # like params: final CG solution of the last update (warm start).
    rho: jax.Array  # float (), reduction ratio actual / predicted of the last update (nan: none).
    loss: jax.Array  # float (), value_fn at params at the start of the last update.
    new_loss: jax.Array  # float (), value_fn at params + updates (== loss if rejected).
    alpha: jax.Array  # float (), line-search factor of the last update (0 if rejected).
    learning_rate: jax.Array  # float (), rate the last update used (schedule value; nan: none).
    cg_steps: jax.Array  # int32 (), CG iterations of the last update.
    cg_status: jax.Array  # int32 (), CGStatus of the last CG solve.
    cg_backtrack_step: jax.Array  # int32 (), CG step whose iterate was taken.
    fn_evals: jax.Array  # int32 (), value_fn evaluations made by the last update.
    rejected: jax.Array  # bool (), the last update left params unchanged.
    num_rejected: jax.Array  # int32 (), rejected updates so far.
    num_nonfinite: jax.Array  # int32 (), updates that met a non-finite loss/gradient/direction.
    # With `store_grad=True` (else None, so the other fields checkpoint as before), what
    # `optax.value_and_grad_from_state` reads: the loss (inf before the first update) and
    # the gradient at the parameters the last update returned, on that update's data.
    value: jax.Array | None = None  # float ()
    grad: PyTree | None = None  # like params
    # With `preconditioner="spectral"` (else None): the top eigenpairs of the curvature,
    # ((k,) eigenvalues, eigenvectors like params with a leading k axis), refreshed every
    # `preconditioner_every` updates; zeros (the identity preconditioner) before the first.
    spectral_pairs: tuple | None = None


# --------------------------------------------------------------------------------------------
# The optimizer.


def _init(cfg: Any, params: PyTree) -> HessianFreeState:
    # Configuration in the parameter tree (an activation name, a whole Equinox module
    # with its functions) has no step to take: say which leaf, before any arithmetic.
    check_real_inputs("hessian_free(...).init", params, "`params`")
    dtype = jnp.result_type(*jax.tree.leaves(params))  # floating: checked just above
    scalars, like = state_shardings(params)
    i32 = lambda v: jnp.asarray(v, jnp.int32, device=scalars)
    f = lambda v: jnp.asarray(v, dtype, device=scalars)
    # Strongly typed even for weakly typed params, so the state's types never change
    # across updates (a change would retrace a jitted step).
    zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p), device=like(p))
    return HessianFreeState(
        count=i32(0),
        damping=f(cfg.damping),
        cg_init=jax.tree.map(zeros, params),
        rho=f(jnp.nan),
        loss=f(jnp.nan),
        new_loss=f(jnp.nan),
        alpha=f(0.0),
        learning_rate=f(jnp.nan),
        cg_steps=i32(0),
        cg_status=i32(CGStatus.CONVERGED),
        cg_backtrack_step=i32(-1),
        fn_evals=i32(0),
        rejected=jnp.asarray(False, device=scalars),
        num_rejected=i32(0),
        num_nonfinite=i32(0),
        value=f(jnp.inf) if cfg.store_grad else None,
        grad=jax.tree.map(zeros, params) if cfg.store_grad else None,
        spectral_pairs=_no_pairs(cfg, params, dtype) if cfg.preconditioner == "spectral" else None,
    )


def _no_pairs(cfg: Any, params: PyTree, dtype: Any) -> tuple:
    """Zero pairs, with which the spectral preconditioner is the identity."""
    k = cfg.preconditioner_rank
    stacked = lambda p: jnp.zeros((k, *jnp.shape(p)), jnp.result_type(p))  # noqa: E731
    return jnp.zeros((k,), dtype), jax.tree.map(stacked, params)


def _loss_only(value_fn: Callable, has_aux: bool) -> Callable:
    """``value_fn`` returning the loss alone (its routing and signature unchanged)."""
    if isinstance(value_fn, ModelAndLoss):
        return value_fn.without_aux()
    if not has_aux:
        return value_fn

    @functools.wraps(value_fn)
    def loss(params, **extra_args):
        out = value_fn(params, **extra_args)
        if not (isinstance(out, tuple | list) and len(out) == 2):
            raise TypeError(
                "`hessian_free(has_aux=True)` needs `value_fn` to return a pair `(loss, "
                f"aux)`, got {describe_value(out)}. Return the pair, or set `has_aux=False`."
            )
        return out[0]

    return loss


def _scalar_loss(value_fn: Callable, extra_args: dict, dtype: Any) -> Callable:
    """``p -> value_fn(p, **extra_args)`` in the state's dtype, checked to be a scalar."""

    def loss(p):
        out = value_fn(p, **extra_args)
        if isinstance(out, tuple | list) or jnp.shape(out) != ():
            raise ValueError(
                f"`value_fn` must return a scalar loss, got {describe_value(out)}. Reduce "
                "it with `.mean()` or `.sum()`; if it returns `(loss, aux)`, pass "
                "`hessian_free(has_aux=True)` (or `ModelAndLoss(..., loss_has_aux=True)`)."
            )
        return jnp.asarray(out, dtype)

    return loss


def _is_zero(x: Any) -> bool:
    """``x`` is known, now, to be 0 (a traced option could be anything)."""
    return not isinstance(x, jax.core.Tracer) and bool(np.all(np.asarray(x) == 0))


def _descent(
    cfg, g, damping, cg_init, params, value_fn, extra_args, curv_args=None, count=0, pairs=None
):
    """``(p, info, pairs)``: CG on the damped model at ``params``, preconditioned if asked,
    and the spectral pairs it used (``None`` unless ``preconditioner="spectral"``).

    ``B`` is of ``curv_args`` (``None``: ``extra_args``), the preconditioner of
    ``extra_args``, the gradient's batch. K-FAC's sampled labels are keyed by the update's
    ``count`` (the state stays key-free, and the update a pure function of its inputs);
    spectral pairs (``pairs``, the state's) are of ``B``, refreshed on schedule.
    """
    # B at params (on the sub-batch when asked), linearized once for all of CG.
    op = curvature_operator(
        value_fn,
        params,
        extra_args if curv_args is None else curv_args,
        curvature=cfg.curvature,
        fraction=cfg.curvature_fraction,
    )
    if cfg.preconditioner == "spectral":
        pairs = refresh_spectral_pairs(op, pairs, count, cfg.preconditioner_every)
    precond = cg_preconditioner(
        cfg.preconditioner,
        value_fn,
        params,
        extra_args,
        damping,
        exponent=cfg.preconditioner_exponent,
        chunk_size=cfg.preconditioner_chunk_size,
        key=jax.random.fold_in(jax.random.key(0), count) if cfg.preconditioner == "kfac" else None,
        pairs=pairs,
    )
    x, info = damped_newton_direction(
        op,
        g,
        damping,
        x0=None if _is_zero(cfg.cg_decay) else tree_scale(cg_init, cfg.cg_decay),
        M=precond,
        stop=cfg.cg_stop,
        tol=cfg.cg_tol,
        maxiter=cfg.cg_maxiter,
        martens_eps=cfg.martens_eps,
        record_iterates=cfg.cg_backtracking,
    )
    return x, info, pairs


def _search(cfg, loss, params, x, info, g, grad, f0, lr, start):
    """``(candidates, found, sufficient)``: backtracking over the CG iterates, then Armijo.

    The learning rate scales every trial point, not only the step finally returned: the
    line search, the acceptance test, rho and `new_loss` then all judge the step taken,
    `lr * alpha * p`. (Scaling after the search would report the loss at `params + alpha
    p` for parameters that moved elsewhere; re-evaluating at the end would cost a forward
    pass and still leave rho judging another step.) With lr = 1 this is Martens' algorithm.
    """
    dtype = f0.dtype

    def trial_loss(d, a):
        # The same product `lr * a` scales the returned step: `new_loss` is the loss at
        # exactly the parameters the caller gets. Non-finite trial losses compare as +inf:
        # never "better", never accepted.
        step = tree_scale(d, lr * a)
        v = loss(jax.tree.map(lambda t, s: t + s.astype(t.dtype), params, step))
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    candidates = cg_candidates(x, info, cfg.cg_backtracking)
    sufficient = _sufficient(cfg, f0, lr)
    found = search(
        trial_loss,
        candidates,
        lambda d: direction_stats(d, g, grad, dtype),
        sufficient,
        dtype=dtype,
        start=start,
        line_search=cfg.line_search,
        factor=cfg.line_search_factor,
        max_steps=cfg.line_search_maxiter,
    )
    return candidates, found, sufficient


def _next_damping(cfg, lam, rho, accepted, lr_ok):
    if not cfg.adapt_damping:
        return lam
    return levenberg_marquardt_damping(
        lam,
        rho,
        accepted,
        increase=cfg.damping_increase,
        decrease=cfg.damping_decrease,
        rho_low=cfg.rho_low,
        rho_high=cfg.rho_high,
        min_damping=cfg.min_damping,
        max_damping=cfg.max_damping,
        # An unusable rate says nothing about the quadratic model: damping stays.
        informative=lr_ok,
    )


def _next_warm_start(accepted, lr_ok, x, cg_init):
    # Martens warm-starts from the final CG solution, not the backtracked iterate (CG
    # returns only finite iterates). After a rejected step the next solve starts from
    # zero: the rejected direction is what failed, and starting from it again repeats
    # the failure at every damping on the way up (measured on Rosenbrock: 29 rejected
    # updates in a row instead of 1). An update voided by its rate judged no direction:
    # it keeps the previous warm start.
    new_init = tree_where(accepted, x, tree_zeros_like(x))
    new_init = jax.tree.map(lambda a, t: a.astype(t.dtype), new_init, cg_init)
    return tree_where(lr_ok, new_init, cg_init)


def _stored_grad(loss, params, new_updates, accepted, incoming):
    """The gradient at the returned parameters, for ``optax.value_and_grad_from_state``:
    computed at an accepted step's point; a rejected step returns ``params`` themselves,
    whose gradient came in (``grad``, else ``updates``)."""
    like = lambda t: jax.tree.map(lambda a, p: jnp.asarray(a).astype(p.dtype), t, params)
    new_params = optax.apply_updates(params, new_updates)
    return jax.lax.cond(
        accepted, lambda q: like(jax.grad(loss)(q)), lambda q: like(incoming), new_params
    )


def _search_objective(cfg, plain_fn, extra_args, curv_args, value, dtype):
    """``(trial_loss, f0, evals)``: the loss the search judges steps by, its value at the
    start, and the evaluations spent on that value.

    ``search_batch="curvature"`` judges on the curvature sub-batch (Martens: its backtracking
    and ratio), at a quarter of the cost on a 4x smaller sub-batch; ``value`` is of the
    gradient's batch there, so the start is evaluated (one sub-batch loss).
    """
    if cfg.search_batch == "curvature":
        sub = curvature_sub_batch(
            extra_args if curv_args is None else curv_args, cfg.curvature_fraction
        )
        loss = _scalar_loss(plain_fn, sub, dtype)
        return loss, None, 1
    return _scalar_loss(plain_fn, extra_args, dtype), value, int(value is None)


def _update(cfg, updates, state, params, value_fn, value, grad, extra_args, curv_args=None):
    """One update: the descent, the search, the ratio and the damping; the new state."""
    dtype = state.damping.dtype
    as_f = lambda v: jnp.asarray(v, dtype)
    plain_fn = _loss_only(value_fn, cfg.has_aux)
    if value is not None and jnp.shape(value) != ():
        raise ValueError(f"`value` must be a scalar, got shape {jnp.shape(value)}.")
    loss, start_value, start_evals = _search_objective(
        cfg, plain_fn, extra_args, curv_args, value, dtype
    )
    f0 = loss(params) if start_value is None else as_f(start_value)
    g = updates
    lam = _damping(cfg, state)

    x, info, pairs = _descent(
        cfg,
        g,
        lam,
        state.cg_init,
        params,
        plain_fn,
        extra_args,
        curv_args,
        state.count,
        state.spectral_pairs,
    )
    lr, lr_ok = _rate(cfg, state.count, dtype)
    start_finite = jnp.isfinite(f0) & tree_all_finite(g)
    found = _search(cfg, loss, params, x, info, g, grad, f0, lr, start_finite & lr_ok)[1]
    return _finish(cfg, updates, state, params, loss, grad, f0, start_evals, x, info, found, pairs)


def _sufficient(cfg, f0, lr):
    """Armijo's test ``(alpha, f, slope) -> bool`` of the step ``lr * alpha``."""
    return lambda a, f, slope: armijo_condition(f0, f, lr * a, slope, cfg.line_search_c)


def _damping(cfg, state):
    # Not adapted, the damping is the option's value: `optax.inject_hyperparams` may set it.
    return state.damping if cfg.adapt_damping else jnp.asarray(cfg.damping, state.damping.dtype)


def _rate(cfg, count, dtype):
    """``(lr, lr_ok)``: the update's rate and whether it is usable. A rate that is not
    positive and finite at run time (a schedule's 0, NaN) rejects the update unsearched:
    no uphill step, no non-finite value."""
    rate = cfg.learning_rate
    lr = jnp.asarray(rate(count) if callable(rate) else rate, dtype)
    return lr, jnp.isfinite(lr) & (lr > 0)


def _finish(cfg, updates, state, params, loss, grad, f0, start_evals, x, info, found, pairs=None):
    """The rest of the update once CG and the search are done: the step, the ratio, the
    damping and the new state (apart so that its cost can be timed on its own,
    ``benchmarks/hf_cost.py``; it evaluates no loss unless ``store_grad``)."""
    dtype = state.damping.dtype
    as_f = lambda v: jnp.asarray(v, dtype)
    g = updates
    lam = _damping(cfg, state)
    lr, lr_ok = _rate(cfg, state.count, dtype)
    start_finite = jnp.isfinite(f0) & tree_all_finite(g)
    candidates = cg_candidates(x, info, cfg.cg_backtracking)
    sufficient = _sufficient(cfg, f0, lr)
    p, stats, alpha = candidates.direction(found.best), found.stats, found.alpha
    # With an unusable rate the direction was never examined (absmax stays NaN).
    nonfinite = ~start_finite | (lr_ok & ~jnp.isfinite(stats.absmax))
    # The ratio judges the step the search starts from, lr * p (Martens: p).
    model_value = as_f(candidates.model_values[found.best])
    ratio = reduction_ratio(f0, found.f_best, model_value, stats.g_dot, stats.sq_norm, lam, lr)
    rho = jnp.where(lr_ok, ratio, jnp.nan)

    # `p * scale` is finite exactly when `max|p| * scale` is (rounding is monotone), so the
    # step is checked without another pass over the parameters. The trial loss alone is not
    # enough: a loss can be finite at infinite parameters (a clipped or saturating function).
    scale = lr * alpha
    step_finite = jnp.isfinite(stats.absmax * scale)
    accepted = lr_ok & sufficient(alpha, found.f_alpha, stats.slope) & ~nonfinite & step_finite
    step = tree_scale(p, scale)
    new_updates = tree_where(accepted, step, tree_zeros_like(step))
    new_updates = jax.tree.map(lambda u, t: u.astype(t.dtype), new_updates, params)
    new_loss = jnp.where(accepted, found.f_alpha, f0)
    stored = (None, None)
    if cfg.store_grad:
        incoming = updates if grad is None else grad
        stored = (new_loss, _stored_grad(loss, params, new_updates, accepted, incoming))

    new_state = HessianFreeState(
        count=optax.safe_increment(state.count),
        damping=as_f(_next_damping(cfg, lam, rho, accepted, lr_ok)),
        cg_init=_next_warm_start(accepted, lr_ok, x, state.cg_init),
        rho=as_f(rho),
        loss=f0,
        new_loss=new_loss,
        alpha=jnp.where(accepted, alpha, 0.0).astype(dtype),
        learning_rate=lr,
        cg_steps=jnp.asarray(info.num_steps, jnp.int32),
        cg_status=jnp.asarray(info.status, jnp.int32),
        cg_backtrack_step=jnp.asarray(candidates.steps[found.best], jnp.int32),
        fn_evals=jnp.asarray(start_evals, jnp.int32)
        + found.evals
        + (accepted.astype(jnp.int32) if cfg.store_grad else 0),
        rejected=~accepted,
        num_rejected=state.num_rejected + (~accepted).astype(jnp.int32),
        num_nonfinite=state.num_nonfinite + nonfinite.astype(jnp.int32),
        value=stored[0],
        grad=stored[1],
        spectral_pairs=state.spectral_pairs if pairs is None else pairs,
    )
    return new_updates, new_state


@deprecated_keywords(line_search_max_steps="line_search_maxiter")
def hessian_free(
    learning_rate: float | optax.Schedule = 1.0,
    *,
    curvature: str = "ggn",
    damping: float = 1.0,
    adapt_damping: bool = True,
    damping_increase: float = DAMPING_INCREASE,
    damping_decrease: float = DAMPING_DECREASE,
    rho_low: float = RHO_LOW,
    rho_high: float = RHO_HIGH,
    min_damping: float = MIN_DAMPING,
    max_damping: float = MAX_DAMPING,
    cg_maxiter: int | None = None,
    cg_tol: float = 1e-5,
    cg_stop: str = "martens",
    martens_eps: float = 5e-4,
    cg_decay: float = 0.95,
    cg_backtracking: bool = True,
    line_search: bool = True,
    line_search_c: float = 1e-2,
    line_search_factor: float = 0.8,
    line_search_maxiter: int | None = None,
    preconditioner: str | Callable | None = None,
    preconditioner_exponent: float = 0.75,
    preconditioner_chunk_size: int | None = None,
    preconditioner_rank: int | None = None,
    preconditioner_every: int | None = None,
    curvature_fraction: float | None = None,
    search_batch: str = "gradient",
    has_aux: bool = False,
    store_grad: bool = False,
    line_search_max_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free (truncated Newton) optimizer of Martens (2010), for optax.

    Each update minimizes the local quadratic model of ``value_fn`` by conjugate gradient on
    curvature-vector products, never forming the curvature matrix ``B``:

    .. math:: p \\approx \\arg\\min_p\\; g^T p + \\tfrac12 p^T (B + \\lambda I) p,
       \\qquad \\theta \\leftarrow \\theta + \\eta\\, \\alpha\\, p

    with ``B`` the Gauss-Newton matrix ``J^T H_loss J`` (``curvature="ggn"``, positive
    semi-definite) or the Hessian (``curvature="hessian"``), ``g`` the incoming ``updates``
    (the gradient, possibly transformed by earlier links of an ``optax.chain``), ``alpha``
    from the line search and ``eta = learning_rate`` (keep 1 for Martens' algorithm). The
    rate scales every trial point, so everything below judges the step actually returned,
    ``eta alpha p``. In order, one update (each step a pure function of its own):

    1. builds ``B`` at ``params`` once (:func:`jaxcurv.descent.curvature_operator`), on the
       first ``ceil(curvature_fraction * n)`` examples if ``curvature_fraction`` is set;
    2. runs CG on ``(B + lambda I) p = -g`` from ``cg_decay *`` the previous solution, with
       the stop rule ``cg_stop``, at most ``cg_maxiter`` steps, leaving early on negative
       curvature (:func:`jaxcurv.descent.damped_newton_direction`), optionally
       preconditioned by ``(mean_i grad l_i^2 + lambda)^preconditioner_exponent``
       (:func:`jaxcurv.preconditioner.martens_diagonal`) or by K-FAC;
    3. CG backtracking: of the iterates recorded at steps ``ceil(5 * 1.3^j)`` and the last,
       walks back from the last while the loss at ``theta + eta p`` keeps falling, and takes
       that one (:func:`jaxcurv.line_search.backtrack_iterates`);
    4. ``rho = (f(theta + eta p) - f(theta)) / m(eta p)`` against the *undamped* model
       ``m(s) = g^T s + s^T B s / 2`` (:func:`jaxcurv.damping.reduction_ratio`) drives
       Levenberg-Marquardt damping (:func:`jaxcurv.damping.levenberg_marquardt_damping`);
    5. Armijo backtracking ``f(theta + eta a p) <= f(theta) + c eta a g^T p``,
       ``a = 1, 0.8, ...`` (:func:`jaxcurv.line_search.armijo_backtrack`); a step that does
       not lower the loss within ``line_search_maxiter`` tries is rejected: zero updates
       (params unchanged) and ``lambda`` raised.

    ``state.new_loss`` is ``value_fn`` at ``optax.apply_updates(params, updates)``, the
    parameters the caller gets (``state.loss`` when the step is rejected). A non-finite
    loss, gradient or CG direction always rejects the step, so the parameters never receive
    a non-finite value; ``state.num_nonfinite`` counts such updates. The next CG solve after
    a rejected step starts from zero rather than from the rejected direction. A scheduled
    rate that is not positive and finite at run time (a warm-up's 0, say) rejects that
    update without a search and leaves damping and warm start as they were;
    ``state.learning_rate`` shows the value used.

    The defaults are Martens' recipe for training networks on mini-batches. For a
    deterministic objective (full batch, a test function, a least-squares fit) the
    truncated-Newton recipe is faster: ``cg_stop="forcing", cg_backtracking=False,
    line_search_factor=0.5`` and a small initial ``damping``; with a least-squares
    ``ModelAndLoss`` (residuals, sum of squares) and ``curvature="ggn"`` it is the
    Levenberg-Marquardt method with CG inner solves.

    ``update(updates, state, params, *, value_fn, value=None, grad=None,
    curvature_batch=None, **extra_args)`` follows ``optax.lbfgs``: ``value_fn(params,
    **extra_args)`` is the scalar loss of the current batch; ``value`` (the loss at
    ``params``) and ``grad`` (the raw gradient, used for the Armijo slope; defaults to
    ``updates``) save recomputation when given. ``curvature_batch`` (a dict of the same
    keywords) gives the curvature products data of their own -- Martens & Sutskever's
    curvature mini-batch drawn apart from the gradient's -- of which ``curvature_fraction``
    then takes its leading rows; ``None`` takes them from the batch itself. Gauss-Newton
    needs the model and the loss apart: pass ``value_fn=ModelAndLoss(model_fn, loss_fn)``.
    Keyword arguments ``value_fn`` does not accept are a ``TypeError``.

    Aux outputs, model state and randomness, as Flax and Equinox training steps write
    them (kfac-jax's ``value_func_has_aux/state/rng``, in optax's form):

    * ``value_fn`` may return ``(loss, aux)``: say so with ``has_aux=True`` (a
      :class:`ModelAndLoss` says it itself with ``model_has_aux`` / ``loss_has_aux``). The
      optimizer uses the loss; the aux of its own evaluations is dropped.
    * Model state (Flax ``batch_stats`` from ``apply(..., mutable=["batch_stats"])``, an
      Equinox ``eqx.nn.State``) goes in as an extra argument and comes out in ``aux``.
      Every evaluation of one update -- gradient, curvature, line search -- sees the same
      input state, so the quadratic model and the search judge one function. Take the new
      state from *your* gradient evaluation at ``params``, and keep it only if the update
      was accepted: ``model_state = optax.tree.where(opt_state.rejected, model_state,
      new_model_state)``. That point is the one evaluated on every update, at the
      parameters the step starts from, on this batch; the trial points are probes, most of
      them rejected, and a rejected update (a non-finite loss, say) must not leave its
      statistics behind. It is also where every optax optimizer's Flax/Equinox loop takes
      it (one step behind the parameters, as with SGD or Adam).
    * Randomness (a dropout key) is an extra argument too: pass one ``key=`` per update,
      the same one your gradient evaluation used (``jax.random.fold_in(key, step)``).
      Then the gradient, the curvature products and the line search of one update see
      the same mask -- the consistent quadratic model Martens asks for -- and the next
      update a fresh one. (The optimizer never draws or stores keys: its state stays
      key-free and the update pure. With ``curvature_fraction`` the sub-batch draws its
      mask from the same key at its own shape; the preconditioner's per-example gradients
      see the key once per example.)

    ``optax.value_and_grad_from_state(value_fn)`` works with ``store_grad=True``: the state
    then holds ``value`` and ``grad`` at the returned parameters, as optax's line searches
    do (``value = inf`` before the first update, so the first call computes them). That
    costs one gradient at the accepted point -- the one the next update needs anyway; the
    search itself evaluates losses only. It is right for deterministic objectives (full
    batch, no dropout): the stored gradient is of this update's data and key.

    With ``optax.inject_hyperparams(hessian_free)(learning_rate=..., damping=...)`` the
    real options may be traced arrays, set per update through ``state.hyperparams``: an
    injected ``damping`` is used as is when ``adapt_damping=False`` (adapted, it is only
    the initial value). Step counts and ``curvature_fraction`` size loops and buffers and
    must stay static: set them through ``static_args=(...)``.

    Batched extra arguments (:mod:`jaxcurv.model_and_loss`): ``curvature_fraction`` and
    ``preconditioner="martens"`` or ``"kfac"`` treat every array in ``extra_args`` with
    ``ndim >= 1`` as a batch along axis 0; the sub-batch is the leading rows (shuffle
    batches as usual), and
    per-example losses are ``value_fn`` on one example (a mean of per-example terms).

    Jit the training step: the update is all ``lax`` control flow and compiles once. (It is
    also jitted internally when ``value_fn`` is hashable and every extra argument is an
    array, so an un-jitted loop does not re-trace; Python values among the extras keep it
    eager, so that a flag like ``train=True`` stays a Python bool.) With parameters laid out
    on a mesh (a ``NamedSharding``), ``init`` puts the state where the step returns it:
    scalars replicated over that mesh, ``cg_init`` sharded like the parameters; so the
    step's second call finds the same input layouts and does not compile again.

    Args:
      learning_rate: ``eta``, scale of the CG direction ``p``: a positive finite float or
        an ``optax`` schedule of ``state.count``. The line search tries ``eta a p`` with
        ``a = 1, 0.8, ...``, so ``eta`` is the largest step it may take; 1 is Martens'
        algorithm.
      curvature: ``"ggn"`` (Gauss-Newton; ``value_fn`` must be a :class:`ModelAndLoss`) or
        ``"hessian"`` (any ``value_fn``; indefinite: CG stops at negative curvature).
      damping: initial Tikhonov damping ``lambda >= 0`` (with ``adapt_damping``, later
        values stay at or above ``min_damping``).
      adapt_damping: Levenberg-Marquardt adaptation of ``lambda`` from ``rho``:
        ``rho < rho_low`` (or non-finite) multiplies it by ``damping_increase``,
        ``rho > rho_high`` by ``damping_decrease``.
      damping_increase, damping_decrease: factors (``> 1`` and in ``(0, 1)``).
      rho_low, rho_high: thresholds ``0 <= rho_low < rho_high``.
      min_damping, max_damping: bounds kept after every adaptation.
      cg_maxiter: CG step cap per update (``None``: 250).
      cg_tol: relative residual tolerance of CG (also active under the Martens stop).
      cg_stop: ``"martens"`` (relative progress of the quadratic, Martens §4.4),
        ``"residual"`` (``||r|| <= cg_tol ||g||``) or ``"forcing"``: the inexact-Newton
        forcing sequence ``||r|| <= max(min(1/2, sqrt||g||), cg_tol) ||g||`` (Nocedal &
        Wright Alg. 7.1, as in scipy's Newton-CG): loose far from a minimum and tight near
        it, for superlinear convergence on deterministic objectives.
      martens_eps: tolerance of the relative-progress stop.
      cg_decay: warm start ``x0 = cg_decay * previous solution``; 0 starts CG from zero.
      cg_backtracking: choose among recorded CG iterates by the loss (Martens §4.6).
      line_search: Armijo backtracking; off, the full step is taken if it lowers the loss.
      line_search_c, line_search_factor, line_search_maxiter: Armijo constant, step
        shrink factor and number of shrinks (``None``: 20).
      preconditioner: ``None``; ``"martens"`` (diagonal, from per-example gradients);
        ``"kfac"``: :func:`jaxcurv.kfac_preconditioner` of the damped Gauss-Newton system
        at each update (``kind="mc"``: one label per example sampled from the model's
        predictive, keyed by ``jax.random.fold_in(jax.random.key(0), state.count)``;
        needs a ``ModelAndLoss`` with dense layers and a positive damping);
        ``"spectral"``: :func:`jaxcurv.spectral_preconditioner` of the curvature's top
        ``preconditioner_rank`` eigenpairs, computed on the update's curvature batch every
        ``preconditioner_every`` updates and carried in ``state.spectral_pairs``
        (:func:`jaxcurv.descent.refresh_spectral_pairs`; a refresh costs at most ``10 k +
        40`` curvature products, not counted in ``cg_steps``; needs a positive damping); or
        a callable ``(params, damping, **extra_args) -> M`` building an SPD ``M: r -> M r``
        (:func:`jaxcurv.descent.cg_preconditioner`). Not the default: a preconditioner
        changes the CG steps, not the system solved. On the CURVES autoencoder
        (``benchmarks/kfac_cg.py``) the spectral one cut the steps to a relative residual
        of 1e-3 at every damping tried, but inside ``hessian_free`` its refreshes cost more
        time than the CG steps they saved; K-FAC and Martens' diagonal mostly added steps.
      preconditioner_exponent: the exponent (Martens: 3/4).
      preconditioner_chunk_size: per-example gradients computed this many at a time
        (``None``: 32).
      preconditioner_rank: eigenpairs of ``"spectral"`` (``None``: 5).
      preconditioner_every: updates between refreshes of ``"spectral"``'s pairs (``None``:
        10; 1 refreshes at every update).
      curvature_fraction: in ``(0, 1]``: curvature products on the leading fraction of the
        batch (Martens used a sub-batch); ``None`` uses the whole batch.
      search_batch: ``"gradient"`` (the trial losses of CG backtracking and the line
        search, and ``rho``, on the gradient's batch) or ``"curvature"``: on the curvature
        sub-batch (the leading ``curvature_fraction`` of the curvature data), as Martens'
        backtracking and ``rho`` are; each trial then costs that fraction of a forward
        pass, and one more evaluation gives the start value (``value`` is of the other
        batch). ``state.loss`` and ``state.new_loss`` are then the sub-batch's losses.
        Not with ``store_grad``.
      has_aux: ``value_fn`` returns ``(loss, aux)`` (see above).
      store_grad: keep ``value`` and ``grad`` at the returned parameters in the state, for
        ``optax.value_and_grad_from_state``.
      line_search_max_steps: deprecated spelling of ``line_search_maxiter``
        (a ``DeprecationWarning``; removed in the next release).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`HessianFreeState`; ``optax.apply_updates(params, updates)`` takes the step.

    Raises:
      ValueError: an option out of range or an unknown choice (at construction), e.g. a
        ``learning_rate`` that is not positive and finite, or a schedule negative or
        non-finite at count 0.
      TypeError: an option of the wrong kind (at construction): a ``cg_maxiter`` that is
        no int, a string ``damping``, a ``learning_rate`` that is neither a real number
        nor a schedule; at
        ``init``: a parameter leaf that is not a floating-point array (a string, a
        function: keep configuration out of the parameters, e.g. with ``eqx.partition``);
        at ``update``: no ``value_fn``, ``curvature="ggn"`` with a ``value_fn`` that is not
        a :class:`ModelAndLoss`, or keywords ``value_fn`` does not accept.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxcurv.hessian_free import ModelAndLoss, hessian_free
      >>> x = jnp.linspace(-1.0, 1.0, 32)[:, None]
      >>> y = jnp.sin(3.0 * x)
      >>> def model_fn(params, x):
      ...     return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
      >>> def loss_fn(outputs, y):
      ...     return 0.5 * jnp.mean((outputs - y) ** 2)
      >>> objective = ModelAndLoss(model_fn, loss_fn)
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> params = {"w1": jax.random.normal(k1, (1, 16)), "b1": jnp.zeros(16),
      ...           "w2": 0.1 * jax.random.normal(k2, (16, 1))}
      >>> opt = hessian_free(curvature="ggn", damping=1.0)
      >>> state = opt.init(params)
      >>> @jax.jit
      ... def step(params, state, x, y):
      ...     loss, grads = jax.value_and_grad(objective)(params, x=x, y=y)
      ...     updates, state = opt.update(grads, state, params, value_fn=objective,
      ...                                 value=loss, x=x, y=y)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(20):
      ...     params, state = step(params, state, x, y)
      >>> bool(state.new_loss < 1e-3)
      True

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010.
      Martens & Sutskever, "Training deep and recurrent networks with Hessian-free
      optimization", Neural Networks: Tricks of the Trade, 2012.
      Schraudolph, "Fast curvature matrix-vector products for second-order gradient
      descent", Neural Computation, 2002.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006 (Ch. 3, 4, 7).
    """
    line_search_maxiter = renamed_keyword(
        "hessian_free",
        "line_search_max_steps",
        line_search_max_steps,
        "line_search_maxiter",
        line_search_maxiter,
    )
    cfg = _check_search_batch(check_options(_Config(**locals())))  # the arguments, as given

    def init_fn(params: PyTree) -> HessianFreeState:
        return _init(cfg, params)

    def update_fn(
        updates: PyTree,
        state: HessianFreeState,
        params: PyTree | None = None,
        *,
        value_fn: Callable[..., jax.Array] | None = None,
        value: jax.typing.ArrayLike | None = None,
        grad: PyTree | None = None,
        curvature_batch: dict[str, Any] | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, HessianFreeState]:
        check_update_args(cfg, updates, params, value_fn, grad, extra_args)
        _check_curvature_batch(value_fn, curvature_batch)
        if curvature_batch is not None and cfg.search_batch == "curvature":
            # The search would judge steps on another batch than the one whose gradient
            # they descend (measured: half the updates rejected, damping at its ceiling).
            raise ValueError(
                "`hessian_free(search_batch='curvature')` judges steps on a sub-batch of "
                "the gradient's batch, so it cannot be combined with "
                "`update(curvature_batch=...)`, a batch drawn apart (got both). Use "
                "`curvature_fraction=` for a sub-batch, or `search_batch='gradient'`."
            )
        # The compile policy (`jaxcurv._compile`): inlined into the user's jitted step; at
        # top level compiled once per computation, whatever closure `value_fn` is, with the
        # batch an argument of the executable (Python flags such as `train=True` stay
        # Python values).
        return compiled_call(
            lambda u, s, p, v, g, e, c: _update(cfg, u, s, p, value_fn, v, g, e, c),
            updates,
            state,
            params,
            value,
            grad,
            extra_args,
            curvature_batch,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_search_batch(cfg: Any) -> Any:
    """``search_batch`` is a known choice, and not combined with ``store_grad`` (whose
    stored value must be the gradient batch's loss)."""
    check_choice("hessian_free(search_batch=...)", cfg.search_batch, ("gradient", "curvature"))
    check_value(
        not (cfg.store_grad and cfg.search_batch == "curvature"),
        "hessian_free(search_batch=...)",
        cfg.search_batch,
        "'gradient' with store_grad=True",
        fix="The stored value is the gradient batch's loss: use search_batch='gradient'.",
    )
    return cfg


def _check_curvature_batch(value_fn: Any, curvature_batch: Any) -> None:
    """``curvature_batch`` is ``None`` or a dict of keywords ``value_fn`` accepts."""
    if curvature_batch is None:
        return
    if not isinstance(curvature_batch, dict):
        raise TypeError(
            "`hessian_free(...).update(curvature_batch=...)` must be a dict of the keyword "
            f"arguments of `value_fn` (like the batch), got {describe_value(curvature_batch)}. "
            "Pass e.g. `curvature_batch={'x': x_curv, 'y': y_curv}`, or None."
        )
    if value_fn is not None:
        check_value_fn_keywords(value_fn, curvature_batch)


# The options of one `hessian_free`, as checked: one field per argument of the factory.
_Config = collections.namedtuple("_Config", inspect.signature(hessian_free).parameters)
