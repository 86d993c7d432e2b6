"""kfac-jax runs of :mod:`benchmarks.optimizers_minibatch`, in the peers' environment.

Run by that module as ``.venv-peers/bin/python -m benchmarks.optimizers_minibatch_kfac
SETTINGS_JSON``; prints one JSON line ``{"budgets": [{name: run}, ...]}``, one dict per
budget of ``budgets_s`` (the same fields as the other runs).
kfac-jax's ``Optimizer`` with its documented defaults (the README's example: adaptive
learning rate, momentum and damping, ``l2_reg=0``, ``initial_damping=1``), the loss
registered with ``kfac_jax.register_sigmoid_cross_entropy_loss`` and the dense layers found
by kfac-jax's automatic registration; one run per initial damping of ``kfac_dampings`` at
the first budget, then (the benchmark's protocol) only the best of them at each later
budget, in this same process so that its programs compile once (the rerun reports the
first run's compile time). The same data, mini-batch order, clock and full-data
evaluations as the other runs.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.optimizers_minibatch import _summary, batch_at, best_of, problem, timed_run


def _jax_010_shim() -> None:
    """kfac-jax 0.0.8 unpacks ``Primitive.get_bind_params`` as ``(subfuns, params)``; jax
    0.10 returns the params alone. Its one caller, re-stated for both (nothing else
    changed)."""
    import jax.extend as jex
    from kfac_jax._src import tag_graph_matcher as tgm

    def eval_jaxpr_eqn(eqn, in_values):
        got = eqn.primitive.get_bind_params(eqn.params)
        subfuns, params = got if isinstance(got, tuple) else ((), got)
        with jex.source_info_util.user_context(eqn.source_info.traceback):
            out = eqn.primitive.bind(*subfuns, *in_values, **params)
        return out if isinstance(out, list) else [out]

    tgm.eval_jaxpr_eqn = eval_jaxpr_eqn


def main(argv=None) -> None:
    import kfac_jax

    _jax_010_shim()

    s = json.loads((argv or sys.argv[1:])[0])
    objective, p0, images, model = problem(s)
    b, key = s["kfac_batch"], jax.random.key(s["seed"] + 1)
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    draw = jax.jit(lambda k: batch_at(images, key, k, b))

    def loss_fn(params, batch):
        logits = model.apply(params, batch)
        kfac_jax.register_sigmoid_cross_entropy_loss(logits, batch)
        return model.loss(logits, batch)

    def make(damping):
        opt = kfac_jax.Optimizer(
            value_and_grad_func=jax.value_and_grad(loss_fn),
            l2_reg=0.0,
            use_adaptive_learning_rate=True,
            use_adaptive_momentum=True,
            use_adaptive_damping=True,
            initial_damping=damping,
            multi_device=False,
        )
        rng = jax.random.PRNGKey(s["seed"])

        def step(p, state, k, loss):
            i = int(k)
            p, state, stats = opt.step(
                p, state, jax.random.fold_in(rng, i), batch=draw(k), global_step_int=i
            )
            return p, state, k + 1, stats["loss"]

        def fresh():
            # By default kfac-jax first estimates the curvature on `num_burnin_steps` (10)
            # batches of a data iterator, inside its first step.
            # kfac-jax donates its arguments' buffers: a fresh copy of the start each time.
            start = jax.tree.map(jnp.copy, p0)
            state = opt.init(start, rng, draw(0))
            burnin = (draw(jnp.asarray(k, jnp.int32)) for k in range(10_000, 10_100))
            p, state, _ = opt.step(start, state, rng, data_iterator=burnin, global_step_int=0)
            return (p, state, jnp.ones((), jnp.int32), jnp.zeros(()))

        # kfac-jax compiles on first calls, one program per kind of step (with and without
        # the inverse update every `inverse_update_period` = 5 steps): a throw-away run of
        # 7 steps compiles them all (compile time); each timed run then starts afresh from
        # the burn-in and first step (not timed: ~11 batches of work).
        t0 = time.perf_counter()
        carry = fresh()
        for _ in range(7):
            carry = step(*carry)
        jax.block_until_ready(carry)
        return step, fresh, time.perf_counter() - t0

    def timed(damping, budget, made):
        step, fresh, compile_s = made
        p, state = fresh()[:2]
        hist, n, run_s, _ = timed_run(
            [step],
            [0.0],
            (p, state, jnp.ones((), jnp.int32), jnp.zeros(())),
            full,
            budget,
            s["eval_every_s"],
        )
        return _summary(
            "",
            "kfac",
            hist,
            n,
            run_s,
            compile_s,
            s["target_loss"],
            batch=b,
            initial_damping=damping,
        )

    name = lambda d: f"kfac-jax damping0={d:g}, batch {b}" + (" (defaults)" if d == 1.0 else "")
    made, out = {}, []
    dampings = s["kfac_dampings"]
    for i, budget in enumerate(s["budgets_s"]):
        runs = {}
        for d in dampings:
            if d not in made:
                made[d] = make(d)
            runs[name(d)] = timed(d, budget, made[d])
        out.append(runs)
        if i == 0:  # later budgets: the best initial damping at the first budget only
            dampings = [runs[best_of(runs, "kfac")]["initial_damping"]]
    print(json.dumps({"budgets": out}))


if __name__ == "__main__":
    main()
