"""How the cost of curvature products grows with width, depth and batch size (issue 6).

For MLPs (tanh, softmax cross-entropy, float32) swept over width, depth and batch size,
each as a ratio to one ``jax.grad`` in the same interleaved run: ``jaxcurv.hvp``,
``hessian_operator`` and ``ggn_operator`` application, one ``jaxcurv.cg`` iteration on the
GGN operator, and one Lanczos step (``jaxcurv.eigenvalues`` on the Hessian operator with a
fixed number of steps, time divided by the steps; full reorthogonalization included).
The matrix-multiply FLOP floors of each configuration are stored beside the ratios.

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
}


def point(s: dict, sizes, batch) -> dict:
    prob = common.mlp_problem(sizes, batch, seed=s["seed"])
    f, p, v, x, y = common.mlp_loss, prob.params, prob.v, prob.x, prob.y
    k, m = s["cg_iters"], s["lanczos_steps"]
    print(f"sizes {'-'.join(map(str, sizes))}, batch {batch}, N = {prob.num_params:,}")

    def model_fn(q):
        return common.mlp_apply(q, x)

    def loss_fn(o):
        return common.softmax_xent(o, y)

    grad = jax.jit(jax.grad(f))
    hop = jaxcurv.hessian_operator(f, p, x, y)
    gop = jaxcurv.ggn_operator(model_fn, loss_fn, p)
    b = tree_scale(gop.grad, -1.0)
    cg = jax.jit(lambda op, rhs: jaxcurv.cg(op, rhs, tol=0.0, maxiter=k, damping=s["damping"]))
    key = jax.random.key(0)
    cands = {
        "jax.grad": lambda: grad(p, x, y),
        "hvp": lambda: jaxcurv.hvp(f, p, v, x, y),
        "hessian_operator apply": lambda: hop(v),
        "ggn_operator apply": lambda: gop(v),
        "cg iteration (GGN)": lambda: cg(gop, b),
        "lanczos step (Hessian)": lambda: jaxcurv.eigenvalues(hop, 1, key=key, num_iters=m),
    }
    checks: list[dict] = []

    def check(res):
        common.check_close(
            checks, "hessian_operator == hvp", res["hessian_operator apply"], res["hvp"], 1e-3
        )
        steps = int(res["cg iteration (GGN)"][1].num_steps)
        if steps != k:
            raise AssertionError(f"CG stopped after {steps} of {k} steps; raise `damping`.")

    t = common.interleaved(
        cands,
        repeats=s["repeats"],
        warmup=s["warmup"],
        per_call={"cg iteration (GGN)": k, "lanczos step (Hessian)": m},
        check=check,
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
