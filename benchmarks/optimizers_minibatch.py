"""Mini-batch training of the CURVES autoencoder: ``hessian_free`` vs Adam vs kfac-jax (issue 15).

Martens' (2010) CURVES architecture (784-400-200-100-50-25-6-25-50-100-200-400-784,
logistic units, sparse init) on ``num`` embedded CURVES-like images, float32, fixed seeds.
Every optimizer draws mini-batches from a fresh permutation each epoch and runs for the
same wall time after compilation (compile time reported apart; a growing batch compiles
each of its sizes before the clock starts). Every ``eval_every_s`` seconds of run time the
clock stops and the loss on *all* the images is computed (not counted as run time), so
each run has a training-loss curve: its final loss, and the first evaluation at or below
``target_loss`` (time to target, at that resolution).

* ``hessian_free``: a small stated grid (:data:`HF_GRID`): gradient batch, curvature
  sub-batch (``curvature_fraction``), CG cap, the search on the gradient batch or the
  curvature sub-batch (``search_batch``), and a batch growing over the run (Martens &
  Sutskever 2012, §20.12: sizes switching at fractions of the budget);
* ``optax.adam`` at batch ``adam_batch``, best of a learning-rate grid;
* kfac-jax's ``Optimizer`` (optional, in the peers' environment ``.venv-peers``,
  ``make bench-peers``; a separate process,
  :mod:`benchmarks.optimizers_minibatch_kfac`): its documented
  defaults (adaptive learning rate, momentum and damping; ``initial_damping=1``) and a
  small grid of initial dampings; skipped, and said so, when kfac-jax is missing.

    python -m benchmarks.optimizers_minibatch [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from benchmarks.settings import peers_python
from jaxcurv.app import data, models
from jaxcurv.hessian_free import ModelAndLoss, hessian_free

# name -> (batch sizes and the budget fractions they start at, hessian_free options).
HF_GRID = {
    "hf b1000 c250 cg30": {"batches": [1000], "curvature": 250, "cg_maxiter": 30},
    "hf b1000 c250 cg30 search c": {
        "batches": [1000],
        "curvature": 250,
        "cg_maxiter": 30,
        "search_batch": "curvature",
    },
    "hf b500 c125 cg20 search c": {
        "batches": [500],
        "curvature": 125,
        "cg_maxiter": 20,
        "search_batch": "curvature",
    },
    "hf b500->1000->2000 c1/4 cg30 search c": {
        "batches": [500, 1000, 2000],
        "curvature": 0.25,
        "cg_maxiter": 30,
        "search_batch": "curvature",
    },
}

DEFAULTS = {
    "full": {
        "num": 4000,
        "size": 28,
        "encoder": [784, 400, 200, 100, 50, 25, 6],
        "budgets_s": [60.0],
        "eval_every_s": 5.0,
        "target_loss": 80.0,
        "hf_damping": 10.0,
        "hf_grid": HF_GRID,
        "adam_batch": 250,
        "adam_lrs": [1e-3, 3e-3, 1e-2],
        "kfac_batch": 250,
        "kfac_dampings": [1.0, 0.1, 10.0],
    },
    "quick": {
        "num": 400,
        "size": 14,
        "encoder": [196, 50, 6],
        "budgets_s": [6.0],
        "eval_every_s": 2.0,
        "target_loss": 60.0,
        "hf_damping": 10.0,
        "hf_grid": {
            "hf b100 c25 cg10": {"batches": [100], "curvature": 25, "cg_maxiter": 10},
            "hf b50->100 c1/4 cg10 search c": {
                "batches": [50, 100],
                "curvature": 0.25,
                "cg_maxiter": 10,
                "search_batch": "curvature",
            },
        },
        "adam_batch": 50,
        "adam_lrs": [3e-3],
        "kfac_batch": 50,
        "kfac_dampings": [1.0],
    },
}


def problem(s: dict):
    """``(objective, params0, images)``: the autoencoder and its data."""
    images = jnp.asarray(data.curves(s["num"], seed=s["seed"], size=s["size"]))
    model = models.deep_autoencoder(tuple(s["encoder"]))
    objective = ModelAndLoss(
        lambda p, inputs: model.apply(p, inputs), lambda o, targets: model.loss(o, targets)
    )
    return objective, model.init(jax.random.key(s["seed"])), images, model


def batch_at(images, key, k, batch):
    """The ``k``-th mini-batch of size ``batch``: a fresh permutation every epoch."""
    num = images.shape[0]
    per_epoch = num // batch
    perm = jax.random.permutation(jax.random.fold_in(key, k // per_epoch), num)
    return images[jax.lax.dynamic_slice_in_dim(perm, (k % per_epoch) * batch, batch)]


def timed_run(steps, switch_at, carry, full_loss, budget_s, eval_every_s):
    """Run ``steps[i]`` (one per batch size, switched at ``switch_at[i] * budget``) until
    the budget is spent; the clock stops for each full-data evaluation.

    Returns ``(history [(t, full loss)], steps taken, run seconds)``.
    """
    hist = [(0.0, float(full_loss(carry[0])))]
    run_s, n, next_eval, stage = 0.0, 0, eval_every_s, 0
    while run_s < budget_s:
        while stage + 1 < len(steps) and run_s >= switch_at[stage + 1] * budget_s:
            stage += 1
        t0 = time.perf_counter()
        carry = steps[stage](*carry)
        jax.block_until_ready(carry[-1])  # the step's loss: one sync per step
        run_s += time.perf_counter() - t0
        n += 1
        if run_s >= next_eval or run_s >= budget_s:
            hist.append((run_s, float(full_loss(carry[0]))))
            next_eval += eval_every_s
    return hist, n, run_s


def _summary(name, kind, hist, n, run_s, compile_s, target, **extra):
    first = next((t for t, v in hist if v <= target), None)
    return {
        "kind": kind,
        "steps": n,
        "elapsed_s": run_s,
        "compile_s": compile_s,
        "final_loss": hist[-1][1],
        "time_to_target_s": first,
        "history": hist,
        **extra,
    }


def _hf_run(s, name, spec, budget, objective, p0, images):
    batches = spec["batches"]
    fr = spec["curvature"]
    key = jax.random.key(s["seed"] + 1)
    options = {k: v for k, v in spec.items() if k not in ("batches", "curvature", "switch_at")}
    steps, compile_s = [], 0.0
    opts = []
    for b in batches:
        fraction = fr if fr <= 1 else min(1.0, fr / b)
        # One optimizer per batch size (its fraction of that batch); one state, carried.
        opts.append(hessian_free(damping=s["hf_damping"], curvature_fraction=fraction, **options))
    state0 = opts[0].init(p0)

    for opt, b in zip(opts, batches, strict=True):

        def step(p, st, k, loss, opt=opt, b=b):
            xb = batch_at(images, key, k, b)
            bkw = {"inputs": xb, "targets": xb}
            v, g = jax.value_and_grad(objective)(p, **bkw)
            u, st = opt.update(g, st, p, value_fn=objective, value=v, **bkw)
            return optax.apply_updates(p, u), st, k + 1, v

        t0 = time.perf_counter()
        carry0 = (p0, state0, jnp.zeros((), jnp.int32), jnp.zeros(()))
        steps.append(jax.jit(step).lower(*carry0).compile())
        compile_s += time.perf_counter() - t0
    switch = spec.get("switch_at", [i / len(batches) for i in range(len(batches))])
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    hist, n, run_s = timed_run(
        steps,
        switch,
        (p0, state0, jnp.zeros((), jnp.int32), jnp.zeros(())),
        full,
        budget,
        s["eval_every_s"],
    )
    return _summary(
        name,
        "hessian_free",
        hist,
        n,
        run_s,
        compile_s,
        s["target_loss"],
        batches=batches,
        switch_at=switch,
        options=options,
        curvature=fr,
    )


def _adam_run(s, lr, budget, objective, p0, images):
    opt, b = optax.adam(lr), s["adam_batch"]
    key = jax.random.key(s["seed"] + 1)

    def step(p, st, k, loss):
        xb = batch_at(images, key, k, b)
        v, g = jax.value_and_grad(objective)(p, inputs=xb, targets=xb)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st, k + 1, v

    carry0 = (p0, opt.init(p0), jnp.zeros((), jnp.int32), jnp.zeros(()))
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(*carry0).compile()
    compile_s = time.perf_counter() - t0
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    hist, n, run_s = timed_run([compiled], [0.0], carry0, full, budget, s["eval_every_s"])
    return _summary(
        f"adam lr={lr:g}",
        "adam",
        hist,
        n,
        run_s,
        compile_s,
        s["target_loss"],
        batch=b,
        learning_rate=lr,
    )


def _kfac_runs(s, budget) -> dict:
    """kfac-jax in the peers' environment (a separate process); {} with a note if absent."""
    if not peers_python().exists():
        return {"_skipped": "kfac-jax not installed (no .venv-peers environment)"}
    cmd = [
        str(peers_python()),
        "-m",
        "benchmarks.optimizers_minibatch_kfac",
        json.dumps({**s, "budget_s": budget}),
    ]
    out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, check=False)
    sys.stderr.write(out.stderr[-2000:])
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"_skipped": f"kfac-jax run failed (exit {out.returncode})"}
    return json.loads(lines[-1])


def run(s: dict) -> dict:
    objective, p0, images, model = problem(s)
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    out = {
        "problem": {
            "model": model.name,
            "num_params": sum(a.size for a in jax.tree.leaves(p0)),
            "num_images": s["num"],
            "initial_loss": float(full(p0)),
        },
        "budgets": [],
    }
    for budget in s["budgets_s"]:
        runs = {}
        for name, spec in s["hf_grid"].items():
            runs[name] = _hf_run(s, name, spec, budget, objective, p0, images)
            _log(name, runs[name])
        for lr in s["adam_lrs"]:
            name = f"adam lr={lr:g}, batch {s['adam_batch']}"
            runs[name] = _adam_run(s, lr, budget, objective, p0, images)
            _log(name, runs[name])
        kfac = _kfac_runs(s, budget)
        skipped = kfac.pop("_skipped", None)
        for name, r in kfac.items():
            runs[name] = r
            _log(name, r)
        best = {
            kind: min(
                (n for n, r in runs.items() if r["kind"] == kind),
                key=lambda n: runs[n]["final_loss"],
                default=None,
            )
            for kind in ("hessian_free", "adam", "kfac")
        }
        out["budgets"].append(
            {
                "budget_s": budget,
                "runs": runs,
                "best": best,
                "kfac_skipped": skipped,
                "load_avg_1": os.getloadavg()[0],
            }
        )
    return out


def _log(name, r):
    print(
        f"  {name:<44s} {r['steps']:6d} steps {r['elapsed_s']:6.1f} s final "
        f"{r['final_loss']:.3f} to target {md.seconds(r['time_to_target_s'])} "
        f"compile {r['compile_s']:.1f} s",
        flush=True,
    )


# --------------------------------------------------------------------- target, report


def _cases(doc):
    return [
        {"i": i, "budget": b["budget_s"], "peer": peer}
        for i, b in enumerate(doc.get("budgets", []))
        for peer in ("adam", "kfac")
        if b["best"].get(peer)
    ]


def _ratio(doc, case):
    b = doc["budgets"][case["i"]]
    hf, peer = b["best"]["hessian_free"], b["best"][case["peer"]]
    return b["runs"][hf]["final_loss"] / b["runs"][peer]["final_loss"]


def _why(doc, case):
    b = doc["budgets"][case["i"]]
    hf, peer = b["runs"][b["best"]["hessian_free"]], b["runs"][b["best"][case["peer"]]]
    return (
        f" Best hessian_free ({b['best']['hessian_free']}): {hf['steps']} updates, "
        f"{hf['elapsed_s'] / hf['steps'] * 1e3:.0f} ms each; best {case['peer']} "
        f"({b['best'][case['peer']]}): {peer['steps']} steps, "
        f"{peer['elapsed_s'] / peer['steps'] * 1e3:.1f} ms each. Per update, the CG "
        "products are most of the cost (`benchmarks/hf_cost.py`: everything beyond them "
        "is under 1 gradient-equivalent on this net), so what loses is the number of "
        "updates the budget allows, not overhead."
    )


TARGETS = (
    tg.Target(
        "best mini-batch hessian_free lower training loss than the best mini-batch "
        "{peer} after {budget:g} s (CURVES autoencoder)",
        _ratio,
        "<",
        1.0,
        why=_why,
        cases=_cases,
    ),
)

TITLE = "Mini-batch training: `hessian_free`, Adam, kfac-jax (`benchmarks/optimizers_minibatch.py`)"


def report_section(doc: dict, ctx: md.Context) -> str:
    pr = doc.get("problem", {})
    out = [
        f"### {TITLE}",
        "",
        f"{pr.get('model', '')} ({pr.get('num_params', 0):,} parameters) on "
        f"{pr.get('num_images', 0):,} CURVES-like images; initial loss "
        f"{pr.get('initial_loss', float('nan')):.2f}. Final loss and time to target on "
        "all the images (evaluated with the clock stopped).",
        "",
    ]
    header = ["optimizer", "steps", "ms / step", "final loss", "time to target", "compile s"]
    for b in doc.get("budgets", []):
        rows = [
            [
                n,
                r["steps"],
                f"{r['elapsed_s'] / max(r['steps'], 1) * 1e3:.1f}",
                f"{r['final_loss']:.3f}",
                md.seconds(r["time_to_target_s"]),
                f"{r['compile_s']:.1f}",
            ]
            for n, r in b["runs"].items()
        ]
        out += [
            f"Budget {b['budget_s']:g} s (load {b['load_avg_1']:.1f}); target loss "
            f"{doc['settings']['target_loss']:g}"
            + (f"; kfac-jax: {b['kfac_skipped']}" if b.get("kfac_skipped") else "")
            + ":",
            "",
            *md.table(header, rows),
            "",
        ]
    return "\n".join(out)


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for("optimizers_minibatch", DEFAULTS, argv)
    common.header("optimizers_minibatch", quick)
    common.write_result(out_dir, "optimizers_minibatch", s, quick, run(s), TARGETS)


if __name__ == "__main__":
    main()
