"""CG-iterate backtracking and the Armijo line search, against closed forms and hand values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv import cg
from jaxcurv.line_search import (
    DONE,
    Candidates,
    armijo_condition,
    cg_candidates,
    direction_stats,
    search,
)


def _search(trial_loss, directions, g, f0, *, c=1e-2, lr=1.0, steps=None, jit=False, **kw):
    """``search`` over scalar candidate directions, walking back from the last slot."""
    ds = jnp.asarray(directions, jnp.float64)
    slots = jnp.arange(len(directions))
    steps = jnp.arange(len(directions)) if steps is None else jnp.asarray(steps)
    candidates = Candidates(
        direction=lambda j: ds[j],
        previous=lambda j: jnp.max(jnp.where((slots < j) & (steps >= 0), slots, -1)),
        last=len(directions) - 1,
    )

    def run():
        return search(
            lambda d, a: trial_loss(lr * a * d),
            candidates,
            lambda d: direction_stats(d, jnp.asarray(g), None, jnp.float64),
            lambda a, f, slope: armijo_condition(f0, f, lr * a, slope, c),
            dtype=jnp.float64,
            **kw,
        )

    return jax.jit(run)() if jit else run()


# ------------------------------------------------------------------------------ Armijo


def test_armijo_condition_is_sufficient_decrease():
    # f = x^2 from 1 along p = -1 (slope -2): f(1 - t) = (1 - t)^2 <= 1 - 2 c t exactly
    # when t <= 2 (1 - c); and never at f >= f0.
    c = 0.25
    for t in (0.1, 1.0, 1.4, 1.5):
        assert bool(armijo_condition(1.0, (1 - t) ** 2, t, -2.0, c)) == (t <= 2 * (1 - c))
    assert not bool(armijo_condition(1.0, 1.0, 1e-9, 0.0, c))  # no decrease at all


# Quadratic f(x) = h x^2 / 2 from x0 along p: f(x0 + t p) <= f0 + c t g p exactly for
# t <= t* = 2 (1 - c) (-g p) / (h p^2) (and f < f0 for t < 2 (-g p) / (h p^2), implied).
# The line search takes the first a = factor^k with lr a <= t*.
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "x0, h, p, c, factor, lr",
    [
        (2.0, 3.0, -3.0, 0.5, 0.8, 1.0),  # t* = 2/3: a = 0.8^2
        (2.0, 3.0, -2.0, 1e-2, 0.8, 1.0),  # the Newton step: a = 1
        (1.0, 1.0, -10.0, 0.1, 0.5, 1.0),  # t* = 0.18: a = 0.5^3
        (1.0, 1.0, -1.0, 0.3, 0.8, 5.0),  # t* = 1.4 with lr 5: a = 0.8^6
    ],
)
def test_armijo_on_a_quadratic_takes_the_first_step_below_the_closed_form_bound(
    x0, h, p, c, factor, lr, jit
):
    f = lambda x: 0.5 * h * x**2
    g = h * x0
    t_star = 2 * (1 - c) * (-g * p) / (h * p * p)
    k = max(0, math.ceil(math.log(t_star / lr) / math.log(factor)))
    assert abs(lr * factor**k - t_star) > 1e-6 * t_star  # no trial within rounding of t*
    found = _search(
        lambda t: f(x0 + t), [p], g, f(x0), c=c, lr=lr, factor=factor, jit=jit, max_steps=20
    )
    assert int(found.phase) == DONE
    np.testing.assert_allclose(float(found.alpha), factor**k, rtol=1e-14 * (k + 1))
    np.testing.assert_allclose(float(found.f_alpha), f(x0 + lr * factor**k * p), rtol=1e-13)
    assert int(found.tries) == k and int(found.evals) == k + 1
    assert int(found.best) == 0
    np.testing.assert_allclose(float(found.stats.slope), g * p, rtol=1e-15)


def test_armijo_gives_up_after_max_steps_on_the_last_factor_tried():
    f = lambda t: 0.5 * (1.0 + t) ** 2
    # p = -100 from x0 = 1: t* = 2 (1 - c) / 100 needs 0.8^k <= 0.0198, k = 18 > 5.
    found = _search(f, [-100.0], 1.0, 0.5, factor=0.8, max_steps=5)
    assert int(found.tries) == 5 and int(found.evals) == 6
    np.testing.assert_allclose(float(found.alpha), 0.8**5, rtol=1e-14)
    assert not bool(armijo_condition(0.5, found.f_alpha, found.alpha, found.stats.slope, 1e-2))


def test_without_a_line_search_the_full_step_is_the_answer():
    f = lambda t: 0.5 * (1.0 + t) ** 2
    found = _search(f, [-100.0], 1.0, 0.5, line_search=False)
    assert float(found.alpha) == 1.0 and int(found.evals) == 1
    assert float(found.f_alpha) == 0.5 * 99.0**2
    # max_steps = 0 is the same as no line search.
    found = _search(f, [-100.0], 1.0, 0.5, max_steps=0)
    assert float(found.alpha) == 1.0 and int(found.evals) == 1


# ------------------------------------------------------------------ iterate backtracking


def _table(losses):
    """A loss that is ``losses[j]`` at the full step along direction ``j + 1``."""
    table = jnp.asarray(losses, jnp.float64)
    return lambda t: table[jnp.round(t).astype(jnp.int32) - 1]


@pytest.mark.parametrize(
    "losses, best, evals",
    [
        # Walk from the last slot (loss 4) to slot 2 (2, lower), stop at slot 1 (3, higher).
        ([5.0, 3.0, 2.0, 4.0], 2, 3),
        # The last one is already best: one look back, no walk.
        ([1.0, 2.0, 3.0, 0.5], 3, 2),
        # Falling all the way: the walk ends at slot 0, which has no predecessor.
        ([0.0, 1.0, 2.0, 3.0], 0, 4),
        # A tie does not count as lower: the walk stops.
        ([9.0, 2.0, 2.0, 3.0], 2, 3),
    ],
)
def test_backtracking_walks_back_while_the_loss_falls(losses, best, evals):
    # Directions 1..4 (so the table can look them up); g = -10 makes each a descent
    # direction with full steps that pass Armijo (f0 = 100, slopes -10 to -40).
    found = _search(_table(losses), [1.0, 2.0, 3.0, 4.0], -10.0, 100.0, line_search=False)
    assert int(found.best) == best and int(found.evals) == evals
    assert float(found.f_best) == losses[best] == float(found.f_alpha)
    # The statistics are those of the direction taken, best + 1.
    d = best + 1.0
    assert float(found.stats.sq_norm) == d * d and float(found.stats.g_dot) == -10.0 * d
    assert float(found.stats.absmax) == d


def test_backtracking_skips_slots_cg_never_reached():
    # Slots 2 and 3 were not reached (step -1): slot 4 looks back to slot 1 directly. Their
    # table entries are NaN: evaluating them would make the walk stop with a NaN.
    losses = [5.0, 1.0, float("nan"), float("nan"), 3.0]
    found = _search(
        _table(losses),
        [1.0, 2.0, 3.0, 4.0, 5.0],
        -10.0,
        100.0,
        steps=[5, 7, -1, -1, 9],
        line_search=False,
    )
    assert int(found.best) == 1 and int(found.evals) == 3
    assert float(found.f_best) == 1.0


def test_after_the_walk_armijo_searches_along_the_chosen_iterate():
    # f = x^2 from x0 = -1 (g = -2) over directions 0.5, 1.5, 3: full-step losses 0.25,
    # 0.25, 4. The walk keeps slot 1 (0.25 < 4; the tie at slot 0 stops it). Armijo with
    # c = 0.3 fails there, 0.25 > 1 - 0.3 * 3 = 0.1, and passes at a = 1/2:
    # f(-1 + 0.75) = 0.0625 <= 1 - 0.3 * 0.5 * 3 = 0.55.
    f = lambda t: (-1.0 + t) ** 2
    found = _search(f, [0.5, 1.5, 3.0], -2.0, 1.0, c=0.3, factor=0.5)
    assert int(found.best) == 1 and float(found.f_best) == 0.25
    assert float(found.alpha) == 0.5 and float(found.f_alpha) == 0.0625
    assert int(found.evals) == 4 and int(found.tries) == 1


def test_non_finite_trial_losses_are_never_better_and_the_first_stats_are_kept():
    # The search treats +inf as "no better" (the optimizer maps NaN to +inf before): the
    # walk stops at once, on the final iterate.
    found = _search(lambda t: jnp.inf * t, [1.0, 2.0], -1.0, 0.0, line_search=False)
    assert int(found.best) == 1 and int(found.evals) == 1
    assert float(found.f_alpha) == np.inf
    assert float(found.stats.absmax) == 2.0  # the final iterate's, taken unconditionally


def test_an_unusable_start_is_not_searched():
    found = _search(lambda t: t, [1.0], -1.0, 0.0, start=jnp.asarray(False))
    assert int(found.phase) == DONE and int(found.evals) == 0
    assert np.isnan(float(found.stats.absmax))


def test_every_trial_goes_through_one_call_site():
    calls = [0]

    def f(t):
        calls[0] += 1
        return (-1.0 + t) ** 2

    jax.jit(lambda: _search(f, [0.5, 1.5, 3.0], -2.0, 1.0, c=0.3, factor=0.5)).lower()
    assert calls[0] == 1  # traced once, run four times (see the test above)


def test_cg_candidates_are_the_recorded_iterates_then_the_final_one():
    A = jnp.diag(jnp.linspace(1.0, 100.0, 30))
    b = jnp.ones(30)
    x, info = cg(A, b, maxiter=12, tol=0.0, record_iterates=True)
    c = cg_candidates(x, info, recorded=True)
    steps = np.asarray(info.iterate_steps)
    assert steps.tolist() == [5, 7, 9, 11, 12]  # ceil(5 * 1.3^j) <= 12, then the final one
    np.testing.assert_array_equal(c.direction(c.last), x)
    # Walking back from the last slot visits every recorded one, then stops.
    seen, j = [], c.last
    while j >= 0:
        seen.append(int(steps[j]))
        j = int(c.previous(jnp.asarray(j)))
    assert seen == [12, 11, 9, 7, 5]
    one = cg_candidates(x, info, recorded=False)
    assert one.last == 0 and int(one.previous(jnp.asarray(0))) == -1
    assert int(one.steps[0]) == int(info.num_steps)
    np.testing.assert_array_equal(one.model_values[0], info.quadratic_value)
