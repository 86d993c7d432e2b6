"""Mini-batch training of the CURVES autoencoder: ``hessian_free`` vs Adam vs kfac-jax (issue 15).

Martens' (2010) CURVES architecture (784-400-200-100-50-25-6-25-50-100-200-400-784,
logistic units, sparse init) on ``num`` embedded CURVES-like images, float32, fixed seeds.
Every optimizer draws mini-batches from a fresh permutation each epoch and runs for the
same wall time after compilation (compile time reported apart; a growing batch compiles
each of its sizes before the clock starts). Every ``eval_every_s`` seconds of run time the
clock stops and the loss on *all* the images is computed (not counted as run time), so
each run has a training-loss curve: its final loss, and the first evaluation at or below
``target_loss`` (time to target, at that resolution).

Protocol, to keep the full run near 35 minutes on 2 cores: at the first budget of
``budgets_s`` (60 s) every entry of every family runs; at each later budget (300 s) only
the best entry of each family at the first budget (lowest final loss), its program
compiled once and reused (its compile time is the first run's). Each ``hessian_free`` run
also times one gradient on its batch, so the cost of an update is reported in gradients,
with its median CG products and loss evaluations (read from the state, clock stopped).

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
# Chosen by short runs (20-60 s; the table in the README's mini-batch recipe): damping
# starting at 1 (it falls to its floor within ~60 updates, rho stays near 1), 10 CG steps
# on a 125-250 sub-batch, the search on that sub-batch; the previous best (cg 20,
# damping 10) kept as the reference.
HF_GRID = {
    "hf b500 c125 cg10 d1 search c": {
        "batches": [500],
        "curvature": 125,
        "cg_maxiter": 10,
        "damping": 1.0,
        "search_batch": "curvature",
    },
    "hf b500 c250 cg10 d1 search c": {
        "batches": [500],
        "curvature": 250,
        "cg_maxiter": 10,
        "damping": 1.0,
        "search_batch": "curvature",
    },
    "hf b500->1000 c1/4 cg10 d1 search c": {
        "batches": [500, 1000],
        "switch_at": [0.0, 0.5],
        "curvature": 0.25,
        "cg_maxiter": 10,
        "damping": 1.0,
        "search_batch": "curvature",
    },
    "hf b500 c125 cg20 d10 search c": {
        "batches": [500],
        "curvature": 125,
        "cg_maxiter": 20,
        "search_batch": "curvature",
    },
}

DEFAULTS = {
    "full": {
        "num": 4000,
        "size": 28,
        "encoder": [784, 400, 200, 100, 50, 25, 6],
        "budgets_s": [60.0, 300.0],
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
        "budgets_s": [4.0, 8.0],
        "eval_every_s": 2.0,
        "target_loss": 60.0,
        "hf_damping": 10.0,
        "hf_grid": {
            "hf b100 c25 cg10 d1": {
                "batches": [100],
                "curvature": 25,
                "cg_maxiter": 10,
                "damping": 1.0,
            },
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


def timed_run(steps, switch_at, carry, full_loss, budget_s, eval_every_s, record=None):
    """Run ``steps[i]`` (one per batch size, switched at ``switch_at[i] * budget``) until
    the budget is spent; the clock stops for each full-data evaluation and for
    ``record(carry)`` (per-step statistics read back to the host), if given.

    Returns ``(history [(t, full loss)], steps taken, run seconds, [record(carry)...])``.
    """
    hist = [(0.0, float(full_loss(carry[0])))]
    run_s, n, next_eval, stage, recs = 0.0, 0, eval_every_s, 0, []
    while run_s < budget_s:
        while stage + 1 < len(steps) and run_s >= switch_at[stage + 1] * budget_s:
            stage += 1
        t0 = time.perf_counter()
        carry = steps[stage](*carry)
        jax.block_until_ready(carry[-1])  # the step's loss: one sync per step
        run_s += time.perf_counter() - t0
        n += 1
        if record is not None:
            recs.append(record(carry))
        if run_s >= next_eval or run_s >= budget_s:
            hist.append((run_s, float(full_loss(carry[0]))))
            next_eval += eval_every_s
    return hist, n, run_s, recs


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


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def _gradient_ms(objective, p, images, batch, repeats=5) -> float:
    """Median ms of one compiled gradient on ``batch`` images (the unit of an update)."""
    xb = images[:batch]
    f = jax.jit(jax.value_and_grad(lambda q: objective(q, inputs=xb, targets=xb)))
    jax.block_until_ready(f(p))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(p))
        times.append(time.perf_counter() - t0)
    return 1e3 * _median(times)


def _hf_compile(s, spec, objective, p0, images):
    """One compiled step per batch size of ``spec``, the start state and compile seconds.

    ``curvature`` is a size (examples of the gradient's batch, or of a batch drawn apart
    with ``curvature_apart``) or a fraction (<= 1) of the gradient's batch; ``damping``
    overrides the initial ``hf_damping``.
    """
    fr, apart = spec["curvature"], spec.get("curvature_apart", False)
    skip = ("batches", "curvature", "switch_at", "curvature_apart", "damping")
    options = {k: v for k, v in spec.items() if k not in skip}
    key, ckey = jax.random.key(s["seed"] + 1), jax.random.key(s["seed"] + 2)
    damping = spec.get("damping", s["hf_damping"])
    opts = []
    for b in spec["batches"]:
        fraction = 1.0 if apart else (fr if fr <= 1 else min(1.0, fr / b))
        # One optimizer per batch size (its fraction of that batch); one state, carried.
        opts.append(hessian_free(damping=damping, curvature_fraction=fraction, **options))
    state0 = opts[0].init(p0)
    carry0 = (p0, state0, jnp.zeros((), jnp.int32), jnp.zeros(()))
    steps, compile_s = [], 0.0
    for opt, b in zip(opts, spec["batches"], strict=True):
        c = round(fr * b) if fr <= 1 else int(fr)

        def step(p, st, k, loss, opt=opt, b=b, c=c):
            xb = batch_at(images, key, k, b)
            bkw = {"inputs": xb, "targets": xb}
            v, g = jax.value_and_grad(objective)(p, **bkw)
            extra = {}
            if apart:  # Martens & Sutskever's curvature mini-batch, drawn apart
                xc = batch_at(images, ckey, k, c)
                extra["curvature_batch"] = {"inputs": xc, "targets": xc}
            u, st = opt.update(g, st, p, value_fn=objective, value=v, **bkw, **extra)
            return optax.apply_updates(p, u), st, k + 1, v

        t0 = time.perf_counter()
        steps.append(jax.jit(step).lower(*carry0).compile())
        compile_s += time.perf_counter() - t0
    return steps, carry0, compile_s, options


def _hf_stats(carry):
    st = carry[1]
    return int(st.cg_steps), int(st.fn_evals), bool(st.rejected), float(st.damping)


def _hf_run(s, name, spec, budget, objective, p0, images, cache):
    """One timed ``hessian_free`` run; ``cache`` keeps its compiled steps for a rerun."""
    if name not in cache:
        cache[name] = _hf_compile(s, spec, objective, p0, images)
    steps, carry0, compile_s, options = cache[name]
    batches = spec["batches"]
    switch = spec.get("switch_at", [i / len(batches) for i in range(len(batches))])
    grad_ms = _gradient_ms(objective, p0, images, batches[-1])
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    hist, n, run_s, recs = timed_run(
        steps, switch, carry0, full, budget, s["eval_every_s"], record=_hf_stats
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
        curvature=spec["curvature"],
        curvature_apart=spec.get("curvature_apart", False),
        damping0=spec.get("damping", s["hf_damping"]),
        gradient_ms_last_batch=grad_ms,
        cg_steps_median=_median([r[0] for r in recs]),
        fn_evals_median=_median([r[1] for r in recs]),
        num_rejected=sum(r[2] for r in recs),
        final_damping=recs[-1][3] if recs else None,
    )


def _adam_run(s, lr, budget, objective, p0, images, cache):
    opt, b = optax.adam(lr), s["adam_batch"]
    key = jax.random.key(s["seed"] + 1)

    def step(p, st, k, loss):
        xb = batch_at(images, key, k, b)
        v, g = jax.value_and_grad(objective)(p, inputs=xb, targets=xb)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st, k + 1, v

    carry0 = (p0, opt.init(p0), jnp.zeros((), jnp.int32), jnp.zeros(()))
    if lr not in cache:
        t0 = time.perf_counter()
        cache[lr] = (jax.jit(step).lower(*carry0).compile(), time.perf_counter() - t0)
    compiled, compile_s = cache[lr]
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    hist, n, run_s, _ = timed_run([compiled], [0.0], carry0, full, budget, s["eval_every_s"])
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


def _kfac_runs(s) -> list[dict]:
    """kfac-jax in the peers' environment (a separate process, every budget in one so that
    it compiles once): one ``{name: run}`` per budget, or ``{"_skipped": why}`` in each."""
    skipped = lambda why: [{"_skipped": why} for _ in s["budgets_s"]]
    if not peers_python().exists():
        return skipped("kfac-jax not installed (no .venv-peers environment)")
    cmd = [str(peers_python()), "-m", "benchmarks.optimizers_minibatch_kfac", json.dumps(s)]
    out = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, check=False)
    sys.stderr.write(out.stderr[-2000:])
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return skipped(f"kfac-jax run failed (exit {out.returncode})")
    return json.loads(lines[-1])["budgets"]


def best_of(runs: dict, kind: str) -> str | None:
    """Name of the run of ``kind`` with the lowest final loss (``None``: no such run)."""
    names = [n for n, r in runs.items() if r["kind"] == kind]
    return min(names, key=lambda n: runs[n]["final_loss"], default=None)


def run(s: dict) -> dict:
    """The protocol: every entry of each family at the first budget; at each later budget,
    only the best entry of each family at the first budget (compiled once, reused)."""
    objective, p0, images, model = problem(s)
    full = jax.jit(lambda p: objective(p, inputs=images, targets=images))
    out = {
        "problem": {
            "model": model.name,
            "num_params": sum(a.size for a in jax.tree.leaves(p0)),
            "num_images": s["num"],
            "initial_loss": float(full(p0)),
        },
        "protocol": "every entry at the first budget; at later budgets the best entry of "
        "each optimizer family at the first budget",
        "budgets": [],
    }
    hf_grid, adam_lrs, hf_cache, adam_cache, kfac = s["hf_grid"], s["adam_lrs"], {}, {}, None
    for i, budget in enumerate(s["budgets_s"]):
        runs = {}
        for name, spec in hf_grid.items():
            runs[name] = _hf_run(s, name, spec, budget, objective, p0, images, hf_cache)
            _log(name, runs[name])
        for lr in adam_lrs:
            name = f"adam lr={lr:g}, batch {s['adam_batch']}"
            runs[name] = _adam_run(s, lr, budget, objective, p0, images, adam_cache)
            _log(name, runs[name])
        if kfac is None:
            kfac = _kfac_runs(s)
        skipped = kfac[i].pop("_skipped", None)
        for name, r in kfac[i].items():
            runs[name] = r
            _log(name, r)
        best = {kind: best_of(runs, kind) for kind in ("hessian_free", "adam", "kfac")}
        out["budgets"].append(
            {
                "budget_s": budget,
                "runs": runs,
                "best": best,
                "kfac_skipped": skipped,
                "load_avg_1": os.getloadavg()[0],
            }
        )
        if i == 0:
            hf_grid = {best["hessian_free"]: hf_grid[best["hessian_free"]]}
            adam_lrs = [runs[best["adam"]]["learning_rate"]]
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


def _first_at_or_below(hist, loss):
    return next((t for t, v in hist if v <= loss), None)


def _why(doc, case):
    """The miss, from this run's measurements: the cost of one update in gradients of its
    own batch (timed beside the run), the work inside it, and how much longer the peer's
    curve took to reach hessian_free's final loss than the budget (its lead in time)."""
    b = doc["budgets"][case["i"]]
    name, peer_name = b["best"]["hessian_free"], b["best"][case["peer"]]
    hf, peer = b["runs"][name], b["runs"][peer_name]
    hf_ms = hf["elapsed_s"] / max(hf["steps"], 1) * 1e3
    peer_ms = peer["elapsed_s"] / max(peer["steps"], 1) * 1e3
    out = f" Best hessian_free ({name}): {hf['steps']} updates, {hf_ms:.0f} ms each"
    if hf.get("gradient_ms_last_batch"):
        out += (
            f" = {hf_ms / hf['gradient_ms_last_batch']:.1f} gradients of its batch "
            f"{hf['batches'][-1]} (one gradient {hf['gradient_ms_last_batch']:.0f} ms, "
            f"timed in this run), median {hf['cg_steps_median']} CG products and "
            f"{hf['fn_evals_median']} loss evaluations per update, "
            f"{hf['num_rejected']} rejected"
        )
    out += (
        f"; best {case['peer']} ({peer_name}): {peer['steps']} steps, {peer_ms:.1f} ms each"
        f" ({hf_ms / peer_ms:.1f} of them per hessian_free update)."
    )
    t = _first_at_or_below(peer["history"], hf["final_loss"])
    if t is not None:
        out += (
            f" {case['peer']} reached hessian_free's final loss {hf['final_loss']:.1f} "
            f"after {t:.0f} s of its {peer['elapsed_s']:.0f} s (about {t / peer_ms * 1e3:.0f} "
            f"steps): one update bought the progress of "
            f"{t / peer_ms * 1e3 / max(hf['steps'], 1):.1f} of its steps and cost "
            f"{hf_ms / peer_ms:.1f}."
        )
    return out


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


def _per_update(r) -> str:
    """A hessian_free update's cost in gradients of its batch and the work inside it."""
    if not r.get("gradient_ms_last_batch"):
        return ""
    ms = r["elapsed_s"] / max(r["steps"], 1) * 1e3
    return (
        f"{ms / r['gradient_ms_last_batch']:.1f} gradients, {r['cg_steps_median']} CG, "
        f"{r['fn_evals_median']} evals, {r['num_rejected']} rejected"
    )


def report_section(doc: dict, ctx: md.Context) -> str:
    pr = doc.get("problem", {})
    out = [
        f"### {TITLE}",
        "",
        f"{pr.get('model', '')} ({pr.get('num_params', 0):,} parameters) on "
        f"{pr.get('num_images', 0):,} CURVES-like images; initial loss "
        f"{pr.get('initial_loss', float('nan')):.2f}. Final loss and time to target on "
        "all the images (evaluated with the clock stopped). Protocol: "
        f"{doc.get('protocol', 'every entry at every budget')}; a rerun reuses the "
        "compiled program (its compile time is the first run's).",
        "",
    ]
    header = [
        "optimizer",
        "steps",
        "ms / step",
        "final loss",
        "time to target",
        "compile s",
        "per HF update",
    ]
    for b in doc.get("budgets", []):
        rows = [
            [
                n,
                r["steps"],
                f"{r['elapsed_s'] / max(r['steps'], 1) * 1e3:.1f}",
                f"{r['final_loss']:.3f}",
                md.seconds(r["time_to_target_s"]),
                f"{r['compile_s']:.1f}",
                _per_update(r),
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
