r"""How far to go along a Hessian-free direction: CG-iterate backtracking, then Armijo.

Two searches choose the step, in this order:

1. *CG-iterate backtracking* (Martens 2010, §4.6). CG minimizes the quadratic model, which
   the true loss follows only near the current point; a late CG iterate can overshoot
   where an earlier one would not. Of the iterates recorded at steps ``ceil(5 * 1.3^j)``
   and the final one, it walks back from the final one while the loss keeps falling, and
   keeps the last that lowered it.
2. *Armijo backtracking* (Nocedal & Wright, Alg. 3.1) on that iterate ``p``: the factors
   ``a = 1, c_f, c_f^2, ...`` until :math:`f(\theta + \eta a p) \le f(\theta) + c\,\eta a\,
   g^\top p` (and below :math:`f(\theta)`), at most ``max_steps`` shrinks.

:func:`search` runs both in one ``lax.while_loop`` whose body evaluates the loss once:
one copy of the forward pass in the compiled program, however many trials run. Each
trial's bookkeeping is one of two pure transitions, :func:`backtrack_iterates` and
:func:`armijo_backtrack`, each tested on its own.

References:
  J. Martens. "Deep learning via Hessian-free optimization." ICML 2010, §4.6.
  J. Nocedal and S. J. Wright. "Numerical Optimization", 2nd ed., Springer 2006, Alg. 3.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv.cg import CGInfo
from jaxcurv.tree import tree_absmax, tree_vdot

PyTree = Any

__all__ = [
    "Candidates",
    "DirectionStats",
    "SearchState",
    "armijo_backtrack",
    "armijo_condition",
    "backtrack_iterates",
    "cg_candidates",
    "direction_stats",
    "search",
]

# Phases of the search loop.
BACK, SEARCH, DONE = 0, 1, 2


class Candidates(NamedTuple):
    """The directions the search may take, by slot (Python callables: static structure)."""

    direction: Callable[[jax.Array], PyTree]  # slot -> the candidate direction
    previous: Callable[[jax.Array], jax.Array]  # slot -> the slot recorded before it, or -1
    last: int  # slot of the final CG iterate, where the walk starts
    model_values: jax.Array | None = None  # (R,): CG's damped model phi at each slot
    steps: jax.Array | None = None  # int32 (R,): CG step of each slot


def cg_candidates(x: PyTree, info: CGInfo, recorded: bool) -> Candidates:
    """The candidates of one CG solve: its recorded iterates, or only its final ``x``.

    With ``recorded`` (``cg(record_iterates=True)``), slot ``j`` holds the iterate at step
    ``ceil(5 * 1.3^j)`` (``-1``: not reached) and the last slot the final iterate.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv import cg
      >>> from jaxcurv.line_search import cg_candidates
      >>> x, info = cg(jnp.eye(2), jnp.ones(2))
      >>> c = cg_candidates(x, info, recorded=False)
      >>> c.last, c.direction(0), int(c.previous(0))
      (0, Array([1., 1.], dtype=float32), -1)
    """
    if not recorded:
        return Candidates(
            direction=lambda j: x,
            previous=lambda j: jnp.asarray(-1),
            last=0,
            model_values=info.quadratic_value[None],
            steps=jnp.asarray(info.num_steps)[None],
        )
    stacked, steps = info.iterates, info.iterate_steps
    slots = jnp.arange(steps.shape[0])
    # A slot recorded at the very step CG stopped holds the final iterate again: the walk
    # skips it (strictly earlier steps only) rather than evaluate the same point twice.
    earlier = lambda j: (slots < j) & (steps >= 0) & (steps < steps[j])
    return Candidates(
        direction=lambda j: jax.tree.map(lambda a: a[j], stacked),
        previous=lambda j: jnp.max(jnp.where(earlier(j), slots, -1)),
        last=steps.shape[0] - 1,
        model_values=info.iterate_values,
        steps=steps,
    )


class DirectionStats(NamedTuple):
    """What the search and the acceptance test need of one direction ``p``."""

    sq_norm: jax.Array  # ||p||^2 (to undo the damping in the model value)
    g_dot: jax.Array  # updates^T p: the model's linear term
    slope: jax.Array  # min(grad^T p, 0): the Armijo slope
    absmax: jax.Array  # max |p| (NaN if p holds one)


def direction_stats(d: PyTree, g: PyTree, grad: PyTree | None, dtype: Any) -> DirectionStats:
    """:class:`DirectionStats` of ``d``; ``grad`` (``None``: ``g``) gives the slope.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.line_search import direction_stats
      >>> s = direction_stats(jnp.array([-1.0, 2.0]), jnp.array([1.0, 0.0]), None, jnp.float32)
      >>> [float(v) for v in s]
      [5.0, -1.0, -1.0, 2.0]
    """
    as_f = lambda v: jnp.asarray(v, dtype)
    g_dot = as_f(tree_vdot(g, d))
    slope_dot = g_dot if grad is None else as_f(tree_vdot(grad, d))
    return DirectionStats(
        as_f(tree_vdot(d, d)), g_dot, jnp.minimum(slope_dot, 0.0), as_f(tree_absmax(d))
    )


def armijo_condition(
    f0: jax.typing.ArrayLike,
    f: jax.typing.ArrayLike,
    step: jax.typing.ArrayLike,
    slope: jax.typing.ArrayLike,
    c: float,
) -> jax.Array:
    r"""Sufficient decrease: :math:`f < f_0` and :math:`f \le f_0 + c\, t\, g^\top p`.

    Args:
      f0: the loss at the start.
      f: the loss at the trial point :math:`\theta + t p`.
      step: :math:`t`, the multiple of ``p`` tried.
      slope: :math:`g^\top p` (``<= 0`` for a descent direction).
      c: the Armijo constant in ``(0, 1)``.

    Example (:math:`f = x^2` from 1 along :math:`p = -1`: :math:`f(1 - t) \le 1 - 2 c t`
    holds for :math:`t \le 2 (1 - c)`):
      >>> from jaxcurv.line_search import armijo_condition
      >>> [bool(armijo_condition(1.0, (1 - t) ** 2, t, -2.0, 0.5)) for t in (0.5, 1.0, 1.5)]
      [True, True, False]

    References:
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, eq. (3.4).
    """
    return (f < f0) & (f <= f0 + c * step * slope)


class SearchState(NamedTuple):
    """The loop state of :func:`search`; after it, the outcome."""

    phase: jax.Array  # int32: BACK, SEARCH or DONE
    candidate: jax.Array  # int32: slot of the recorded CG iterate to try next (BACK)
    best: jax.Array  # int32: slot of the best iterate so far
    f_best: jax.Array  # loss at params + lr * iterate[best]
    stats: DirectionStats  # of iterate[best]
    alpha: jax.Array  # factor to try next (SEARCH), else the factor taken
    f_alpha: jax.Array  # loss at params + lr * alpha * iterate[best]
    tries: jax.Array  # int32: line-search shrinks so far
    evals: jax.Array  # int32: loss evaluations so far


def backtrack_iterates(
    s: SearchState,
    f: jax.Array,
    d: PyTree,
    *,
    stats: Callable[[PyTree], DirectionStats],
    previous: Callable[[jax.Array], jax.Array],
    sufficient: Callable[[Any, jax.Array, jax.Array], jax.Array],
    line_search: bool,
    factor: float,
) -> SearchState:
    """One trial of CG-iterate backtracking: ``f`` is the loss at the full step along
    ``d``, the iterate in slot ``s.candidate``.

    The walk goes on to the previous slot while the loss falls; when it stops, the best
    iterate's full step is kept if it passes Armijo (``sufficient(1, f, slope)``), else the
    line search starts at ``factor`` (or, with ``line_search=False``, the search ends).
    The first candidate (the final CG iterate) is the best so far whatever its loss, so
    its :func:`direction_stats` are always taken; later ones only for a new best.

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.6.
    """
    improved = f < s.f_best
    take = improved | (s.evals == 0)
    best = jnp.where(improved, s.candidate, s.best)
    f_best = jnp.where(improved, f, s.f_best)
    new_stats = jax.lax.cond(take, stats, lambda d: s.stats, d)
    walk_on = improved & (previous(s.candidate) >= 0)
    full_ok = sufficient(1.0, f_best, new_stats.slope)
    to_search = ~walk_on & ~full_ok & line_search
    phase = jnp.where(walk_on, BACK, jnp.where(to_search, SEARCH, DONE))
    return SearchState(
        phase=phase.astype(jnp.int32),
        candidate=previous(s.candidate).astype(jnp.int32),
        best=best.astype(jnp.int32),
        f_best=f_best,
        stats=new_stats,
        alpha=jnp.where(to_search, factor, 1.0).astype(s.alpha.dtype),
        f_alpha=f_best,
        tries=s.tries,
        evals=s.evals + 1,
    )


def armijo_backtrack(
    s: SearchState,
    f: jax.Array,
    *,
    sufficient: Callable[[Any, jax.Array, jax.Array], jax.Array],
    factor: float,
    max_steps: int,
) -> SearchState:
    """One trial of Armijo backtracking: ``f`` is the loss at factor ``s.alpha``.

    Accepted, or out of shrinks (``max_steps``), the search ends with ``alpha`` the last
    factor tried; else it shrinks ``alpha`` by ``factor``.

    References:
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, Alg. 3.1.
    """
    ok = sufficient(s.alpha, f, s.stats.slope)
    tries = s.tries + 1
    shrink = ~ok & (tries < max_steps)
    return s._replace(
        phase=jnp.where(shrink, SEARCH, DONE).astype(jnp.int32),
        alpha=jnp.where(shrink, s.alpha * factor, s.alpha).astype(s.alpha.dtype),
        f_alpha=f,
        tries=tries,
        evals=s.evals + 1,
    )


def search(
    trial_loss: Callable[[PyTree, jax.Array], jax.Array],
    candidates: Candidates,
    stats: Callable[[PyTree], DirectionStats],
    sufficient: Callable[[Any, jax.Array, jax.Array], jax.Array],
    *,
    dtype: Any,
    start: jax.typing.ArrayLike = True,
    line_search: bool = True,
    factor: float = 0.8,
    max_steps: int = 20,
) -> SearchState:
    r"""CG-iterate backtracking, then Armijo backtracking, in one loop.

    Args:
      trial_loss: ``(d, a) -> loss`` at the trial point ``params + lr * a * d``; a
        non-finite loss must come back as ``+inf`` (never better, never accepted).
      candidates: the directions (:func:`cg_candidates`).
      stats: ``d -> DirectionStats`` (:func:`direction_stats`).
      sufficient: ``(a, f, slope) -> bool``, the Armijo test at factor ``a``
        (:func:`armijo_condition` at step ``lr * a``).
      dtype: the loss's float dtype.
      start: ``False`` skips the search (an unusable start or learning rate): the state
        comes back with no evaluation and ``stats.absmax`` NaN.
      line_search: Armijo backtracking after the walk; off, the best iterate's full step.
      factor: the shrink factor in ``(0, 1)``.
      max_steps: at most this many shrinks.

    Returns:
      The final :class:`SearchState`: ``best`` (the slot taken), ``alpha`` and ``f_alpha``
      (the factor taken and the loss there), ``f_best`` (the loss at the full step),
      ``stats`` of the chosen direction and ``evals``.

    Example (:math:`f = (1 + a p)^2` with :math:`p = -3` overshoots; Armijo with
    :math:`c = 1/2`, :math:`(1 - 3a)^2 \le 1 - 3a`, accepts :math:`a \le 1/3`: so
    :math:`a = 1/4` after two shrinks by 1/2, three evaluations in all):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.line_search import Candidates, armijo_condition, direction_stats, search
      >>> p, g = jnp.asarray(-3.0), jnp.asarray(2.0)
      >>> found = search(
      ...     lambda d, a: (1.0 + a * d) ** 2,
      ...     Candidates(lambda j: p, lambda j: jnp.asarray(-1), 0),
      ...     lambda d: direction_stats(d, g, None, jnp.float32),
      ...     lambda a, f, slope: armijo_condition(1.0, f, a, slope, 0.5),
      ...     dtype=jnp.float32,
      ...     factor=0.5,
      ... )
      >>> float(found.alpha), float(found.f_alpha), int(found.evals)
      (0.25, 0.0625, 3)

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.6.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, Alg. 3.1.
    """
    as_f = lambda v: jnp.asarray(v, dtype)
    searching = line_search and max_steps > 0
    walk = lambda s, f, d: backtrack_iterates(
        s,
        f,
        d,
        stats=stats,
        previous=candidates.previous,
        sufficient=sufficient,
        line_search=searching,
        factor=factor,
    )
    shrink = lambda s, f, d: armijo_backtrack(
        s, f, sufficient=sufficient, factor=factor, max_steps=max_steps
    )

    def body(s):
        back = s.phase == BACK
        d = candidates.direction(jnp.where(back, s.candidate, s.best))
        # The one call site of the loss in the compiled loop.
        f = trial_loss(d, jnp.where(back, 1.0, s.alpha).astype(dtype))
        return jax.lax.cond(back, walk, shrink, s, f, d)

    last = jnp.asarray(candidates.last, jnp.int32)
    init = SearchState(
        phase=jnp.where(start, BACK, DONE).astype(jnp.int32),
        candidate=last,
        best=last,
        f_best=as_f(jnp.inf),
        # absmax NaN: never searched, the start or the rate was unusable.
        stats=DirectionStats(as_f(0.0), as_f(0.0), as_f(0.0), as_f(jnp.nan)),
        alpha=as_f(1.0),
        f_alpha=as_f(jnp.inf),
        tries=jnp.asarray(0, jnp.int32),
        evals=jnp.asarray(0, jnp.int32),
    )
    return jax.lax.while_loop(lambda s: s.phase != DONE, body, init)
