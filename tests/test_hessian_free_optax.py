"""``hessian_free`` as an optax client sees it: aux outputs, model state and dropout keys
through ``update``, ``optax.value_and_grad_from_state``, ``optax.chain``,
``optax.inject_hyperparams``, one compile per configuration, the renamed keyword.

Oracles: the exact Newton step of a masked quadratic (closed form), the same update
computed without aux or injection, ``jax.value_and_grad`` at the returned parameters.
All problems are a few parameters in float64 (``tests/conftest.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcurv import ModelAndLoss, hessian_free
from tests._client_checks import fast_jit  # one compile, its slow passes off

EPS = np.finfo(np.float64).eps


def _masked_quadratic(w, target, key):
    """Dropout on a quadratic: ``0.5 sum_i m_i (w_i - t_i)^2``, ``m ~ Bernoulli(1/2)``."""
    mask = jax.random.bernoulli(key, 0.5, w.shape).astype(w.dtype)
    return 0.5 * jnp.sum(mask * (w - target) ** 2), {"mask": mask}


def test_one_update_sees_one_dropout_mask_and_the_next_a_fresh_one():
    """The gradient, the curvature products and the line search share the update's key.

    Undamped, CG on the masked Hessian ``diag(m)`` from ``g = m (w - t)`` is exact in one
    step per distinct eigenvalue: the Newton step puts the kept coordinates on the target
    and leaves the dropped ones. A curvature or a line search with another mask would move
    the dropped coordinates or stop short of the target. (No warm start: undamped, the
    last update's direction would stay in the new mask's null space.)
    """
    opt = hessian_free(
        curvature="hessian",
        damping=0.0,
        adapt_damping=False,
        cg_stop="residual",
        cg_tol=1e-14,
        cg_decay=0.0,
        has_aux=True,
    )
    w, target = jnp.linspace(-1.0, 1.0, 12), jnp.full(12, 3.0)
    state = opt.init(w)

    @fast_jit
    def step(w, state, key):
        (loss, aux), grads = jax.value_and_grad(_masked_quadratic, has_aux=True)(w, target, key)
        updates, state = opt.update(
            grads, state, w, value_fn=_masked_quadratic, target=target, key=key
        )
        return optax.apply_updates(w, updates), state, loss, aux["mask"]

    masks = []
    for i in range(2):
        key = jax.random.fold_in(jax.random.key(0), i)  # a fresh key per update
        new, state, loss, mask = step(w, state, key)
        masks.append(np.asarray(mask))
        oracle = np.where(mask > 0, target, w)
        # CG in float64 to ||r|| <= 1e-14 ||g|| on a matrix with eigenvalues {0, 1}: the
        # step is exact up to a few roundings of |t - w| <= 4 (margin 100).
        np.testing.assert_allclose(new, oracle, rtol=0, atol=100 * 4 * EPS)
        assert not bool(state.rejected) and float(state.alpha) == 1.0
        # The optimizer's own evaluations used the same mask: its loss at params is the
        # user's, and the loss at the returned params is that mask's 0 (to rounding).
        assert float(state.loss) == float(loss)
        assert abs(float(state.new_loss)) <= 100 * 16 * EPS
        w = new
    assert 0 < np.sum(masks[0] != masks[1])  # the second update drew another mask


def _linear_with_state(params, x, stats):
    """A model that also returns state (a running mean, as BatchNorm keeps)."""
    out = x @ params["w"] + params["b"]
    return out, {"mean": 0.9 * stats["mean"] + 0.1 * jnp.mean(out)}


def _mse_with_metric(out, y):
    err = out - y
    return 0.5 * jnp.mean(err**2), {"max_error": jnp.max(jnp.abs(err))}


def test_aux_outputs_change_nothing_but_what_the_loss_returns():
    """Gauss-Newton of a model that returns state, with a loss that returns a metric.

    (A plain ``value_fn`` with aux and ``curvature="hessian"`` is the dropout test above.)
    """
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(16, 3))), jnp.asarray(rng.normal(size=16))
    params = {"w": jnp.asarray(rng.normal(size=3)), "b": jnp.zeros(())}
    batch = {"x": x, "y": y, "stats": {"mean": jnp.zeros(())}}
    with_aux = ModelAndLoss(
        _linear_with_state, _mse_with_metric, model_has_aux=True, loss_has_aux=True
    )
    plain = ModelAndLoss(
        lambda p, x, stats: _linear_with_state(p, x, stats)[0],
        lambda o, y: _mse_with_metric(o, y)[0],
    )

    @fast_jit  # both updates in one program: one compile
    def both(params, batch):
        results = []
        for objective in (with_aux, plain):
            opt = hessian_free(damping=0.1)
            value_and_grad = jax.value_and_grad(objective, has_aux=objective.has_aux)
            out, grads = value_and_grad(params, **batch)
            updates, s = opt.update(grads, opt.init(params), params, value_fn=objective, **batch)
            results.append((updates, s.new_loss, out))
        return results

    (u_aux, loss_aux, ((_, (stats, metrics)))), (u_plain, loss_plain, _) = both(params, batch)
    # The same arithmetic in the same order: equal to rounding (a few ulp of |w| ~ 1).
    for a, b in zip(jax.tree.leaves(u_aux), jax.tree.leaves(u_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=100 * EPS)
    assert float(loss_aux) == pytest.approx(float(loss_plain), abs=100 * EPS)
    out = x @ params["w"] + params["b"]
    assert float(stats["mean"]) == pytest.approx(0.1 * float(jnp.mean(out)), rel=100 * EPS)
    assert float(metrics["max_error"]) == pytest.approx(float(jnp.max(jnp.abs(out - y))))


def test_aux_flags_that_disagree_with_the_objective_are_named():
    w = jnp.ones(2)
    objective = ModelAndLoss(lambda w, x: x @ w, lambda o: jnp.sum(o**2))
    with pytest.raises(TypeError, match=r"has_aux=True\)` got a ModelAndLoss without"):
        hessian_free(has_aux=True).update(w, hessian_free().init(w), w, value_fn=objective, x=w)
    opt = hessian_free(curvature="hessian")
    with pytest.raises(ValueError, match=r"pass `hessian_free\(has_aux=True\)`"):
        opt.update(w, opt.init(w), w, value_fn=lambda w: (jnp.sum(w**2), w))
    opt = hessian_free(curvature="hessian", has_aux=True)
    with pytest.raises(TypeError, match=r"needs `value_fn` to return a pair `\(loss, aux\)`"):
        opt.update(w, opt.init(w), w, value_fn=lambda w: jnp.sum(w**2))


def _rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_store_grad_feeds_optax_value_and_grad_from_state():
    # Update 3 has rate 0 (say a schedule's restart): rejected, it returns `params` and
    # must store the gradient it was given.
    schedule = lambda count: jnp.where(count == 3, 0.0, 1.0)
    opt = hessian_free(schedule, curvature="hessian", damping=1e-3, store_grad=True)
    value_and_grad = optax.value_and_grad_from_state(_rosenbrock)

    @fast_jit
    def step(x, state):
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value_fn=_rosenbrock, value=value, grad=grad)
        return optax.apply_updates(x, updates), state, grad

    x0 = jnp.asarray([-1.2, 1.0, 0.5])
    x, state = x0, opt.init(x0)
    assert float(state.value) == np.inf  # so the first call computes value and grad
    for i in range(8):
        previous = x
        x, state, grad_in = step(x, state)
        value, grad = jax.value_and_grad(_rosenbrock)(x)
        # Stored at the returned parameters: what `jax.value_and_grad` computes there, to
        # the rounding of two evaluations of the same expression (1e3 ulp of margin).
        assert float(state.value) == pytest.approx(float(value), rel=1e3 * EPS, abs=1e-300)
        np.testing.assert_allclose(state.grad, grad, rtol=1e3 * EPS, atol=1e3 * EPS)
        if i == 3:
            assert bool(state.rejected)
            np.testing.assert_array_equal(x, previous)
            np.testing.assert_array_equal(state.grad, grad_in)  # no recomputation
        else:
            assert not bool(state.rejected)
    assert float(_rosenbrock(x)) < 0.1 * float(_rosenbrock(x0))
    plain = hessian_free(curvature="hessian")
    assert plain.init(x0).grad is None and plain.init(x0).value is None
    with pytest.raises(ValueError, match="not found in the state"):
        value_and_grad(x0, state=plain.init(x0))


def _quadratic_objective():
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=8))
    objective = ModelAndLoss(lambda w, x: jnp.tanh(x @ w), lambda o, y: jnp.mean((o - y) ** 2))
    return objective, jnp.asarray([0.3, -0.2, 0.1]), {"x": x, "y": y}


def _one_update(opt, objective, w, state, batch):
    value, grads = jax.value_and_grad(objective)(w, **batch)
    return opt.update(grads, state, w, value_fn=objective, value=value, **batch)


def test_inject_hyperparams_sets_the_rate_and_the_damping_and_compiles_once():
    objective, w, batch = _quadratic_objective()
    traces = [0]

    def counted(w, x):
        traces[0] += 1  # a Python side effect: runs once per trace, never per call
        return jnp.tanh(x @ w)

    counted_objective = ModelAndLoss(counted, objective.loss_fn)
    options = dict(adapt_damping=False, cg_backtracking=False)
    injected = optax.inject_hyperparams(hessian_free)(learning_rate=0.5, damping=0.3, **options)
    step = fast_jit(lambda w, s, b: _one_update(injected, counted_objective, w, s, b))
    state, first_traces = injected.init(w), None
    for i, (lr, lam) in enumerate([(0.5, 0.3), (0.25, 2.0), (0.25, 2.0)]):
        state.hyperparams["learning_rate"] = jnp.asarray(lr, w.dtype)
        state.hyperparams["damping"] = jnp.asarray(lam, w.dtype)
        updates, state = step(w, state, batch)
        first_traces = traces[0] if i == 0 else first_traces
        if i == 1:  # oracle: the optimizer built with the new values directly
            direct = hessian_free(lr, damping=lam, **options)
            oracle = fast_jit(lambda w, b, d=direct: _one_update(d, objective, w, d.init(w), b))
            expected, _ = oracle(w, batch)
            # The same program (compiled alike) with the values as constants: equal to
            # rounding.
            np.testing.assert_allclose(updates, expected, rtol=1e3 * EPS, atol=1e3 * EPS)
        assert float(state.inner_state.learning_rate) == lr
        assert float(state.inner_state.damping) == lam
        w = optax.apply_updates(w, updates)
    # Whatever the injected values: no new trace, one executable.
    assert traces[0] == first_traces and step._cache_size() == 1
    with pytest.raises(TypeError, match=r"static_args=\('cg_maxiter',\)"):
        optax.inject_hyperparams(hessian_free)(cg_maxiter=10).init(w)
    optax.inject_hyperparams(hessian_free, static_args=("cg_maxiter",))(cg_maxiter=10).init(w)


def test_in_optax_chain_with_aux_state_and_keys_compiles_once():
    """A real training step: chained, model state and dropout keys through update."""

    def model_fn(w, x, stats, key):
        keep = jax.random.bernoulli(key, 0.8, x.shape).astype(x.dtype)
        out = jnp.tanh((keep * x / 0.8) @ w)
        return out, {"mean": 0.9 * stats["mean"] + 0.1 * jnp.mean(out)}

    objective = ModelAndLoss(model_fn, lambda o, y: jnp.mean((o - y) ** 2), model_has_aux=True)
    _, w, batch = _quadratic_objective()
    opt = optax.chain(optax.clip_by_global_norm(10.0), hessian_free(damping=0.1))
    traces = [0]

    @fast_jit
    def step(w, stats, state, key):
        traces[0] += 1
        data = dict(batch, stats=stats, key=key)
        (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(w, **data)
        updates, state = opt.update(grads, state, w, value_fn=objective, value=loss, **data)
        # Model state from the gradient evaluation at `w`, kept only for an accepted step.
        stats = optax.tree.where(state[1].rejected, stats, new_stats)
        return optax.apply_updates(w, updates), stats, state, loss

    stats, state = {"mean": jnp.zeros(())}, opt.init(w)
    losses = []
    for i in range(6):
        w, stats, state, loss = step(w, stats, state, jax.random.fold_in(jax.random.key(1), i))
        losses.append(float(loss))
    assert traces[0] == 1 and step._cache_size() == 1
    assert int(state[1].count) == 6 and np.all(np.isfinite(losses))
    assert float(stats["mean"]) != 0.0


def test_line_search_max_steps_is_renamed_line_search_maxiter():
    with pytest.warns(DeprecationWarning, match=r"write `hessian_free\(line_search_maxiter=3\)`"):
        hessian_free(curvature="hessian", line_search_max_steps=3)
    # The old spelling's value is the new option's, checked as such.
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match=r"`hessian_free\(line_search_maxiter=...\)`.*got -1"),
    ):
        hessian_free(line_search_max_steps=-1)
    with pytest.raises(TypeError, match=r"both `line_search_maxiter=` and its deprecated"):
        hessian_free(line_search_maxiter=3, line_search_max_steps=3)
    with pytest.raises(ValueError, match=r"`hessian_free\(line_search_maxiter=...\)`"):
        hessian_free(line_search_maxiter=-1)
