"""How the cost of curvature products grows with width, depth and batch size (issue 6).

For MLPs (tanh, softmax cross-entropy, float32) swept over width, depth and batch size,
each as a ratio to one ``jax.grad`` in the same interleaved run: ``jaxcurv.hvp`` (inside
``jax.jit``), ``hessian_operator`` and ``ggn_operator`` application, one ``jaxcurv.cg``
iteration on the GGN operator, and one Lanczos step (``jaxcurv.eigenvalues`` on the
Hessian operator with a fixed number of steps, time divided by the steps; full
reorthogonalization included). The matrix-multiply FLOP floors of each configuration are
stored beside the ratios. The same programs over several devices and processes:
:mod:`benchmarks.scaling_devices`.

    python -m benchmarks.scaling [--quick]
"""

from __future__ import annotations

import math
from pathlib import Path

import jax

import jaxcurv
from benchmarks import common
from benchmarks import markdown as md
from jaxcurv.tree import tree_scale

DEFAULTS = {
    "full": {
        "repeats": 9,
        "widths": [128, 256, 512, 1000],
        "depths": [1, 2, 3, 4, 6],
        "batches": [32, 64, 128, 256, 512, 1024],
        "base_width": 512,
        "base_depth": 3,
        "base_batch": 256,
        "cg_iters": 5,
        "lanczos_steps": 20,
        "damping": 1.0,
    },
    "quick": {
        "repeats": 5,
        "widths": [128, 512],
        "depths": [1, 3],
        "batches": [64, 256],
        "base_width": 512,
        "base_depth": 3,
        "base_batch": 256,
        "cg_iters": 3,
        "lanczos_steps": 10,
        "damping": 1.0,
    },
    # A GPU is busy only from larger sizes on: the sweeps reach further there.
    "accelerator": {
        "full": {
            "widths": [256, 512, 1024, 2048, 4096],
            "batches": [64, 256, 1024, 4096, 16384],
            "base_batch": 1024,
        },
        "quick": {"widths": [512, 2048], "batches": [256, 4096], "base_batch": 1024},
    },
}


def programs(s: dict, p, v, x, y) -> dict[str, tuple]:
    """``name -> (jitted function, arguments)``: the gradient, products and CG step.

    Shared with :mod:`benchmarks.scaling_devices`, which times the same programs with
    ``p``, ``v`` and the batch ``(x, y)`` laid out over a mesh (XLA partitions them).
    Compiled programs (not closures) so that their memory can be read from the
    executable as well.
    """
    f, k = common.mlp_loss, s["cg_iters"]
    hop = jaxcurv.hessian_operator(f, p, x, y)
    gop = jaxcurv.ggn_operator(common.mlp_apply, common.softmax_xent, p, x=x, labels=y)
    cg = jax.jit(lambda op, rhs: jaxcurv.cg(op, rhs, tol=0.0, maxiter=k, damping=s["damping"]))
    return {
        "jax.grad": (_GRAD, (p, x, y)),
        "hvp": (_HVP, (p, v, x, y)),
        "hessian_operator apply": (_APPLY, (hop, v)),
        "ggn_operator apply": (_APPLY, (gop, v)),
        "cg iteration (GGN)": (cg, (gop, tree_scale(gop.grad, -1.0))),
    }


# Module-level compiled functions: one compilation per shape and layout, across points.
_GRAD = jax.jit(jax.grad(common.mlp_loss))
_HVP = jax.jit(lambda q, w, a, b: jaxcurv.hvp(common.mlp_loss, q, w, a, b))
_APPLY = jax.jit(lambda op, w: op.mv(w))


def calls(progs: dict[str, tuple]) -> dict:
    """Zero-argument callables of :func:`programs`, for :func:`common.interleaved`."""
    return {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in progs.items()}


def check_programs(s: dict, checks: list[dict], res: dict, suffix: str = "") -> None:
    """The products agree and CG ran all its steps (raises otherwise: nothing is timed)."""
    common.check_close(
        checks,
        f"hessian_operator == hvp{suffix}",
        res[f"hessian_operator apply{suffix}"],
        res[f"hvp{suffix}"],
        1e-3,
    )
    steps = int(res[f"cg iteration (GGN){suffix}"][1].num_steps)
    if steps != s["cg_iters"]:
        raise AssertionError(f"CG stopped after {steps} of {s['cg_iters']} steps; raise `damping`.")


def point(s: dict, sizes, batch) -> dict:
    prob = common.mlp_problem(sizes, batch, seed=s["seed"])
    p, v, x, y = prob.params, prob.v, prob.x, prob.y
    k, m = s["cg_iters"], s["lanczos_steps"]
    print(f"sizes {'-'.join(map(str, sizes))}, batch {batch}, N = {prob.num_params:,}")
    cands = calls(programs(s, p, v, x, y))
    hop = jaxcurv.hessian_operator(common.mlp_loss, p, x, y)
    key = jax.random.key(0)
    cands["lanczos step (Hessian)"] = lambda: jaxcurv.eigenvalues(hop, 1, key=key, maxiter=m)
    checks: list[dict] = []
    t = common.interleaved(
        cands,
        repeats=s["repeats"],
        warmup=s["warmup"],
        per_call={"cg iteration (GGN)": k, "lanczos step (Hessian)": m},
        check=lambda res: check_programs(s, checks, res),
        log=None,
    )
    rows = common.ratio_rows(t, "jax.grad")
    ratios = {r["name"]: r["ratio"] for r in rows if r["name"] != "jax.grad"}
    print("  " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))
    return {
        "sizes": list(sizes),
        "batch": batch,
        "num_params": prob.num_params,
        "grad_median_s": t["jax.grad"].median,
        "checks": checks,
        "ratios": ratios,
        "ratios_min": {r["name"]: r["ratio_min"] for r in rows if r["name"] != "jax.grad"},
        "flop_floors": common.mlp_floors(sizes, batch),
        "rows": rows,
    }


# ------------------------------------------------------------------------------ report

TITLE = "Scaling (`benchmarks/scaling.py`)"
TARGETS = ()  # the sweeps show trends; the targets sit on the reference MLP (products)
CURVES = [
    "hvp",
    "hessian_operator apply",
    "ggn_operator apply",
    "cg iteration (GGN)",
    "lanczos step (Hessian)",
]
# Each curve's FLOP floor, drawn dashed beside it.
_FLOORS = {
    "hvp": "hvp",
    "hessian_operator apply": "hessian_apply",
    "ggn_operator apply": "ggn_apply",
}
_AXES = [
    ("width", "num_params", "parameters (width sweep)"),
    ("depth", "num_params", "parameters (depth sweep)"),
    ("batch", "batch", "batch size"),
]


def plot(doc: dict, path: Path) -> None:
    """Ratios to one gradient against size, one panel per sweep, FLOP floors dashed."""
    plt = md.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (sweep, xkey, xlabel) in zip(axes, _AXES, strict=True):
        pts = doc["sweeps"].get(sweep, [])
        if not pts:
            continue
        xs = [pt[xkey] for pt in pts]
        for i, n in enumerate(CURVES):
            ys = [pt["ratios"].get(n, math.nan) for pt in pts]
            line = ax.plot(xs, ys, "o-", label=n, color=f"C{i}")
            if n in _FLOORS:
                floors = [pt["flop_floors"][_FLOORS[n]] for pt in pts]
                ax.plot(xs, floors, "--", color=line[0].get_color(), alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("time / one jax.grad")
        ax.set_title(f"{sweep} sweep (dashed: FLOP floor)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md`` (and its plot), from its JSON."""
    out = [f"### {TITLE}", ""]
    if doc.get("sweeps"):
        out += [ctx.image("scaling", "scaling.png", plot, doc), ""]
    rows = [
        [sweep, md.sizes(pt["sizes"]), pt["batch"], f"{pt['num_params']:,}"]
        + [md.ms(pt["grad_median_s"])]
        + [md.ratio(pt["ratios"].get(n)) for n in CURVES]
        for sweep, pts in doc["sweeps"].items()
        for pt in pts
    ]
    out += [
        *md.table(["sweep", "sizes", "batch", "N", "grad ms"] + CURVES, rows),
        "",
        "Ratios against one `jax.grad` in the same interleaved run; a Lanczos step "
        "includes full reorthogonalization against all previous vectors.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for("scaling", DEFAULTS, argv)
    common.header("scaling", quick)
    w0, d0, b0 = s["base_width"], s["base_depth"], s["base_batch"]
    sweeps = {
        "width": [point(s, [784] + [w] * d0 + [10], b0) for w in s["widths"]],
        "depth": [point(s, [784] + [w0] * d + [10], b0) for d in s["depths"]],
        "batch": [point(s, [784] + [w0] * d0 + [10], b) for b in s["batches"]],
    }
    common.write_result(out_dir, "scaling", s, quick, {"sweeps": sweeps})


if __name__ == "__main__":
    main()
