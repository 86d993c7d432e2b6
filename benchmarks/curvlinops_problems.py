"""curvlinops' published MNIST-MLP problem, measured with jaxcurv (issue 16).

curvlinops publishes what its curvature products cost relative to one gradient on a
"synthetic MNIST MLP" (its ``docs/examples/basic_usage``: ``Linear`` layers
784-1024-512-256-128-64-10 with ReLU between them, cross-entropy, one batch of 512
uniform [0, 1) inputs with random labels), timed on an NVIDIA RTX A6000 with PyTorch
2.10 (minimum over 10 calls): compiled with ``torch.compile``, a Hessian-vector product
costs 1.06x its gradient-and-loss and a GGN-vector product 0.86x.

Here the same-shaped problem (its own random weights and data), in one interleaved run
against ``jax.value_and_grad`` (loss and gradient, as curvlinops' reference): the public
calls that redo the forward and backward pass per product as curvlinops' products do
(``jaxcurv.hvp``: forward-over-reverse like its ``jvp(jacrev)``; ``jaxcurv.ggn_vp``: jvp,
the loss's Hessian, vjp), and the operators that linearize once. The published figures
are quoted beside them, labelled as other hardware and software: compare ratios, not
times.

    python -m benchmarks.curvlinops_problems [--quick]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import jaxcurv
from benchmarks import common, products
from benchmarks import markdown as md

_SIZES = [784, 1024, 512, 256, 128, 64, 10]  # their `Sequential`'s layer widths
DEFAULTS = {"full": {"sizes": _SIZES, "batch": 512}, "quick": {"sizes": _SIZES, "batch": 512}}

# Their JSON files: docs/examples/basic_usage/benchmark/synthetic_mnist_mlp/*_cuda.json and
# benchmark/environment.json in the curvlinops repository (f-dangel/curvlinops, 63fd690).
PUBLISHED = {
    "source": "curvlinops repository (f-dangel/curvlinops, commit 63fd690), "
    "docs/examples/basic_usage/benchmark/synthetic_mnist_mlp/",
    "hardware": "NVIDIA RTX A6000",
    "software": "PyTorch 2.10.0+cu128, CUDA 12.8",
    "method": "minimum over 10 calls, cuda.synchronize around each",
    "sizes": _SIZES,
    "batch": 512,
    "gradient_and_loss_s": {"compiled": 0.00169665296562016, "eager": 0.0016922000795602798},
    "matvec_s": {
        "Hessian": {"compiled": 0.0017940410180017352, "eager": 0.009043801110237837},
        "GGN": {"compiled": 0.0014640530571341515, "eager": 0.006913652992807329},
    },
}
# curvlinops' product -> (jaxcurv's like-for-like call, jaxcurv's linearize-once operator).
PAIRS = {
    "Hessian": ("jaxcurv.hvp", "hessian_operator apply"),
    "GGN": ("jaxcurv.ggn_vp", "ggn_operator apply"),
}
BASELINE = "jax.value_and_grad"


def published_ratios() -> dict[str, dict[str, float]]:
    """``{"Hessian": {"compiled": 1.06, "eager": 5.3}, "GGN": ...}``: their time ratios.

    >>> r = published_ratios()
    >>> round(r["Hessian"]["compiled"], 2), round(r["GGN"]["compiled"], 2)
    (1.06, 0.86)
    """
    ref = PUBLISHED["gradient_and_loss_s"]
    return {
        op: {mode: t / ref[mode] for mode, t in times.items()}
        for op, times in PUBLISHED["matvec_s"].items()
    }


def _published_tflops(pub: dict) -> float:
    """The matrix-multiply rate of their compiled gradient."""
    flops = common.mlp_flops(pub["sizes"], pub["batch"])["grad"]
    return flops / pub["gradient_and_loss_s"]["compiled"] / 1e12


def relu_mlp(params, x):
    """Their ``Sequential``: ReLU between the linear layers, logits out."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None])
    return x @ params[-1]["w"] + params[-1]["b"][None]


def loss(params, x, labels):
    """Mean softmax cross-entropy of :func:`relu_mlp`, as their ``CrossEntropyLoss``."""
    return common.softmax_xent(relu_mlp(params, x), labels)


def problem(s: dict):
    """Weights (Glorot normal), inputs uniform in [0, 1), random labels, a direction."""
    kp, kx, ky, kv = jax.random.split(jax.random.key(s["seed"]), 4)
    sizes, batch = s["sizes"], s["batch"]
    params = common.mlp_init(kp, sizes)
    x = jax.random.uniform(kx, (batch, sizes[0]), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(kv, len(leaves))
    v = treedef.unflatten([jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])
    return params, v, x, y


def measure(s: dict) -> dict:
    p, v, x, y = problem(s)
    n = sum(a.size for a in jax.tree.leaves(p))
    print(f"curvlinops MNIST-MLP {md.sizes(s['sizes'])}, batch {s['batch']}, N = {n:,}")
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    hvp = jax.jit(lambda q, w, a, b: jaxcurv.hvp(loss, q, w, a, b))
    ggn_vp = jax.jit(
        lambda q, w, a, b: jaxcurv.ggn_vp(relu_mlp, common.softmax_xent, q, w, x=a, labels=b)
    )
    hop = jaxcurv.hessian_operator(loss, p, x, y)
    gop = jaxcurv.ggn_operator(relu_mlp, common.softmax_xent, p, x=x, labels=y)
    cands = {
        BASELINE: lambda: value_and_grad(p, x, y),
        "jaxcurv.hvp": lambda: hvp(p, v, x, y),
        "hessian_operator apply": lambda: hop(v),
        "jaxcurv.ggn_vp": lambda: ggn_vp(p, v, x, y),
        "ggn_operator apply": lambda: gop(v),
    }
    checks: list[dict] = []

    def check(res):
        c = common.check_close
        ref_h = jax.jit(lambda q, w: products.cookbook_hvp(loss, q, w, x, y))(p, v)
        ref_g = jax.jit(lambda q, w: products.raw_ggn_vp(lambda r: relu_mlp(r, x), y, q, w))(p, v)
        c(checks, "jaxcurv.hvp == cookbook jvp(grad)", res["jaxcurv.hvp"], ref_h, 1e-4)
        c(checks, "hessian_operator(v) == cookbook", res["hessian_operator apply"], ref_h, 1e-3)
        c(checks, "ggn_vp == raw jvp/softmax/vjp", res["jaxcurv.ggn_vp"], ref_g, 1e-3)
        c(checks, "ggn_operator(v) == raw jvp/softmax/vjp", res["ggn_operator apply"], ref_g, 1e-3)
        c(checks, "hessian_operator.grad == jax.grad", hop.grad, res[BASELINE][1], 1e-4)

    t = common.interleaved(cands, repeats=s["repeats"], warmup=s["warmup"], check=check)
    fl = common.mlp_flops(s["sizes"], s["batch"])
    floors = {
        "jaxcurv.hvp": fl["hvp"] / fl["grad"],
        "hessian_operator apply": fl["hessian_apply"] / fl["grad"],
        "jaxcurv.ggn_vp": (fl["forward"] + fl["ggn_apply"]) / fl["grad"],
        "ggn_operator apply": fl["ggn_apply"] / fl["grad"],
    }
    return {
        "problem": {
            "sizes": s["sizes"],
            "batch": s["batch"],
            "num_params": n,
            "activation": "relu",
            "loss": "softmax cross-entropy",
            "inputs": "uniform [0, 1)",
            "dtype": "float32",
        },
        "rows": common.ratio_rows(t, BASELINE, floors),
        "checks": checks,
        "published": PUBLISHED,
        "published_ratios": published_ratios(),
    }


# ------------------------------------------------------------------------------ report

TITLE = "curvlinops' MNIST-MLP problem (`benchmarks/curvlinops_problems.py`)"
TARGETS = ()  # their figures are from other hardware: quoted beside ours, not a target


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md``, from its JSON document."""
    prob, pub = doc["problem"], {**PUBLISHED, **doc["published"]}
    ratios = doc["published_ratios"]
    env = doc.get("environment", {})
    where = f"{md.get(env, 'backend', default=ctx.backend)} ({md.get(env, 'device', 'kind')})"
    body = []
    for op, names in PAIRS.items():
        r = ratios[op]
        quoted = f"{md.ratio(r['compiled'])} compiled, {md.ratio(r['eager'])} eager"
        for name, how in zip(names, ("like for like", "linearized once"), strict=True):
            row = md.row(doc["rows"], name)
            body.append(
                [f"{op}-vector product", quoted, f"`{name}` ({how})", md.ratio(row.get("ratio"))]
                + [md.ratio(row.get("ratio_min")), md.ratio(row.get("flop_floor"))]
            )
            quoted = ""
    header = ["product", f"curvlinops, published ({pub['hardware']})", "jaxcurv", "ratio"]
    header += ["ratio of minima", "FLOP floor"]
    out = [
        f"### {TITLE}",
        "",
        f"MLP {md.sizes(prob['sizes'])} (ReLU, softmax cross-entropy, N = "
        f"{prob['num_params']:,}), batch {prob['batch']} of {prob['inputs']} inputs, float32: "
        "the shape of curvlinops' `synthetic_mnist_mlp`. Ratios to one `jax.value_and_grad` "
        f"(loss and gradient, as their reference) on {where}.",
        "",
        f"**Published figures, other hardware**: measured by curvlinops on an "
        f"{pub['hardware']} ({pub['software']}; {pub['method']}), quoted from "
        f"{pub['source']}, not measured here. Their statistic is the ratio of minima. "
        "`like for like` redoes the forward and backward pass per product as their "
        "products do; `linearized once` is jaxcurv's operator, whose build is not timed. "
        "The FLOP floor counts matrix-multiply FLOPs only: a ratio below it means the "
        "gradient spends more of its time outside the multiplies (elementwise work, memory "
        "traffic, launches) than the product does. Their compiled gradient ran at "
        f"{_published_tflops(pub):.1f} TFLOP/s of multiplies, far below the card's float32 "
        "peak: at this size their times are mostly such overhead, which is why their ratios "
        "sit near 1.",
        "",
        *md.table(header, body),
        "",
        *md.timing_table(doc["rows"], with_floor=True),
        "",
        f"Checks: {md.checks(doc['checks'])}.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for("curvlinops_problems", DEFAULTS, argv)
    common.header("curvlinops_problems", quick)
    common.write_result(out_dir, "curvlinops_problems", s, quick, measure(s))


if __name__ == "__main__":
    main()
