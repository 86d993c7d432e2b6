"""jaxcurv against PyTorch on the very same MLP with the very same weights (issue 6).

PyTorch (optional: ``pip install torch``; CPU here, CUDA when a GPU is present):

* gradient by ``torch.autograd.grad``;
* HVP by double backward, fresh per product (forward, backward with ``create_graph``,
  backward again: what curvlinops pays per product) and with the first-order graph
  retained across products (what PyHessian pays);
* HVP by ``torch.func`` (``jvp`` of ``grad``, forward-over-reverse like jaxcurv);
* Gauss-Newton product by ``torch.func`` (``jvp`` of the model, the softmax Hessian in
  closed form, ``vjp``).

In the same interleaved run: ``jax.grad``, ``jaxcurv.hvp``, ``ggn_operator`` application and
one ``jaxcurv.cg`` iteration on the GGN. Raw-JAX and scipy/optax peers sit beside the
jaxcurv function they compete with, in products / krylov / optimizers.

    python -m benchmarks.peers [--quick]
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

import jaxcurv
from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from jaxcurv.tree import tree_scale

DEFAULTS = {
    "full": {"sizes": [784, 1000, 1000, 1000, 10], "batch": 256, "cg_iters": 10, "damping": 1.0},
    "quick": {"sizes": [784, 1000, 1000, 1000, 10], "batch": 256, "cg_iters": 5, "damping": 1.0},
}


def torch_problem(torch, prob: common.MLPProblem):
    """The same MLP in PyTorch: weights, batch and direction copied from the JAX problem."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"

    def t(a, grad=False):
        return torch.tensor(np.asarray(a), device=dev, requires_grad=grad)

    params = [t(leaf[k], True) for leaf in prob.params for k in ("w", "b")]
    v = [t(leaf[k]) for leaf in prob.v for k in ("w", "b")]
    x, y = t(prob.x), torch.tensor(np.asarray(prob.y), device=dev, dtype=torch.long)
    nlayers = len(prob.params)

    def apply(ps, inp):
        h = inp
        for i in range(nlayers):
            h = h @ ps[2 * i] + ps[2 * i + 1]
            if i < nlayers - 1:
                h = torch.tanh(h)
        return h

    def loss(ps):
        return torch.nn.functional.cross_entropy(apply(ps, x), y)

    return params, v, x, y, apply, loss


def torch_candidates(torch, params, v, apply, loss, y):
    from torch.func import grad as fgrad
    from torch.func import jvp, vjp

    tparams = tuple(p.detach() for p in params)
    tv = tuple(v)

    def grad():
        return torch.autograd.grad(loss(params), params)

    def hvp_double_backward():
        g = torch.autograd.grad(loss(params), params, create_graph=True)
        return torch.autograd.grad(g, params, grad_outputs=v)

    retained = {}

    def hvp_retained():
        if "g" not in retained:  # PyHessian: gradient graph built once, reused per product
            retained["g"] = torch.autograd.grad(loss(params), params, create_graph=True)
        return torch.autograd.grad(retained["g"], params, grad_outputs=v, retain_graph=True)

    def floss(*ps):
        return loss(list(ps))

    g_of = fgrad(lambda ps: floss(*ps))

    def hvp_func():
        return jvp(g_of, (tparams,), (tv,))[1]

    def fmodel(ps):
        return apply(list(ps), apply.x)

    def ggn_func():
        logits, jv = jvp(fmodel, (tparams,), (tv,))
        prob = torch.softmax(logits, dim=-1)
        hjv = (prob * jv - prob * (prob * jv).sum(-1, keepdim=True)) / logits.shape[0]
        _, pullback = vjp(fmodel, tparams)
        return pullback(hjv)[0]

    return {
        "torch grad": grad,
        "torch HVP double backward (fresh)": hvp_double_backward,
        "torch HVP double backward (graph retained)": hvp_retained,
        "torch.func HVP jvp(grad)": hvp_func,
        "torch.func GGN product": ggn_func,
    }


def _as_jax_layout(flat, nlayers):
    return [{"w": flat[2 * i], "b": flat[2 * i + 1]} for i in range(nlayers)]


def _jax_side(s: dict):
    prob = common.mlp_problem(s["sizes"], s["batch"], seed=s["seed"])
    f, p, x, y = common.mlp_loss, prob.params, prob.x, prob.y

    def model_fn(q):
        return common.mlp_apply(q, x)

    def loss_fn(o):
        return common.softmax_xent(o, y)

    gop = jaxcurv.ggn_operator(model_fn, loss_fn, p)
    hop = jaxcurv.hessian_operator(f, p, x, y)
    return prob, gop, hop


def run_torch(s: dict, torch) -> dict:
    """The PyTorch side, in its own process: JAX's results are computed once first, as the
    reference of the checks, so no XLA thread pool is busy while PyTorch is timed."""
    prob, gop, _ = _jax_side(s)
    f, p, v, x, y = common.mlp_loss, prob.params, prob.v, prob.x, prob.y
    refs = {
        "grad": jax.block_until_ready(jax.grad(f)(p, x, y)),
        "hvp": jax.block_until_ready(jaxcurv.hvp(f, p, v, x, y)),
        "ggn": jax.block_until_ready(gop(v)),
    }
    tparams, tv, _, _, apply, loss = torch_problem(torch, prob)
    apply.x = torch.tensor(np.asarray(x), device=tparams[0].device)
    cands = torch_candidates(torch, tparams, tv, apply, loss, y)
    nlayers = len(p)
    checks: list[dict] = []

    def check(res):
        c = common.check_close
        lay = lambda r: _as_jax_layout(list(r), nlayers)  # noqa: E731
        c(checks, "torch grad == jax.grad", lay(res["torch grad"]), refs["grad"], 1e-4)
        for name in (
            "torch HVP double backward (fresh)",
            "torch HVP double backward (graph retained)",
            "torch.func HVP jvp(grad)",
        ):
            c(checks, f"{name} == jaxcurv.hvp", lay(res[name]), refs["hvp"], 1e-3)
        c(
            checks,
            "torch.func GGN product == ggn_operator",
            lay(res["torch.func GGN product"]),
            refs["ggn"],
            1e-3,
        )

    t = common.interleaved(cands, repeats=s["repeats"], warmup=s["warmup"], check=check)
    return {"rows": common.ratio_rows(t, "torch grad"), "checks": checks}


def run(s: dict, torch_side) -> dict:
    """The JAX side timed here; then ``torch_side()`` (PyTorch in its own process, or None)."""
    prob, gop, hop = _jax_side(s)
    f, p, v, x, y = common.mlp_loss, prob.params, prob.v, prob.x, prob.y
    k, lam = s["cg_iters"], s["damping"]
    print(f"MLP {'-'.join(map(str, prob.sizes))}, batch {prob.batch}, N = {prob.num_params:,}")
    grad = jax.jit(jax.grad(f))
    b = tree_scale(gop.grad, -1.0)
    cg = jax.jit(lambda op, rhs: jaxcurv.cg(op, rhs, tol=0.0, maxiter=k, damping=lam))
    # The public call inside the user's jit, as the docs say to run it hot.
    hvp_jit = jax.jit(lambda q, w, a, b: jaxcurv.hvp(f, q, w, a, b))
    cands = {
        "jax.grad": lambda: grad(p, x, y),
        "jaxcurv.hvp": lambda: hvp_jit(p, v, x, y),
        "jaxcurv hessian_operator apply": lambda: hop(v),
        "jaxcurv ggn_operator apply": lambda: gop(v),
        "jaxcurv.cg iteration, ggn_operator": lambda: cg(gop, b),
    }
    per_call = {"jaxcurv.cg iteration, ggn_operator": k}
    t = common.interleaved(cands, repeats=s["repeats"], warmup=s["warmup"], per_call=per_call)
    rows = common.ratio_rows(t, "jax.grad")
    checks: list[dict] = []
    med = {name: tm.median for name, tm in t.items()}
    torch_rows = torch_side()
    if torch_rows is not None:
        checks = torch_rows["checks"]
        for r in torch_rows["rows"]:
            # Across processes there are no shared rounds: ratios of medians here.
            r = {
                **r,
                "ratio_vs_torch_grad": r["ratio"],
                "ratio": r["median_s"] / med["jax.grad"],
                "ratio_min": r["min_s"] / t["jax.grad"].min,
            }
            rows.append(r)
            med[r["name"]] = r["median_s"]
    like_for_like = {}
    if torch_rows is not None:
        # PyHessian's retained graph is a linearize-once product: compare it with ours.
        like_for_like = {
            "hessian_operator apply vs torch retained-graph HVP (speed-up)": med[
                "torch HVP double backward (graph retained)"
            ]
            / med["jaxcurv hessian_operator apply"],
            "jaxcurv.hvp vs torch.func HVP (speed-up)": med["torch.func HVP jvp(grad)"]
            / med["jaxcurv.hvp"],
            "ggn_operator apply vs torch.func GGN product (speed-up)": med["torch.func GGN product"]
            / med["jaxcurv ggn_operator apply"],
            "jax.grad vs torch grad (speed-up)": med["torch grad"] / med["jax.grad"],
        }
    return {
        "problem": {"sizes": list(prob.sizes), "batch": prob.batch, "num_params": prob.num_params},
        "like_for_like": like_for_like,
        "torch_available": torch_rows is not None,
        "torch_note": "PyTorch timed in its own process right after the JAX side (same "
        "weights, batch and direction), so that neither library's thread pool competes with "
        "the other's; PyTorch ratios are ratios of medians across the two processes.",
        "cg_iters": k,
        "damping": lam,
        "checks": checks,
        "rows": rows,
    }


# --------------------------------------------------------------------------- targets

_FRESH, _RETAINED = (
    "torch HVP double backward (fresh)",
    "torch HVP double backward (graph retained)",
)
_CG = "jaxcurv.cg iteration, ggn_operator"
_LFL_KEY = "hessian_operator apply vs torch retained-graph HVP (speed-up)"


def _speedup(ours: str, ref: str, key: str = "median_s") -> tg.Measure:
    """``ref``'s time over ``ours``: medians (across the two processes), or minima."""
    return tg.quotient(
        tg.row_ratio("rows", name=ref, key=key), tg.row_ratio("rows", name=ours, key=key)
    )


def _torch_why(ours: str, ref: str):
    """A miss against PyTorch: the minima, and what a retained graph skips."""

    def why(doc: dict, case: dict) -> str:
        fastest = _speedup(ours, ref, "min_s")(doc, case)
        text = f" From the fastest samples instead of medians: {fastest:.2f}x."
        if ref == _RETAINED:
            lfl = doc.get("like_for_like", {}).get(_LFL_KEY, math.nan)
            text += (
                " A retained graph skips the forward and first backward pass for every product "
                "after the first, so it is a linearize-once product: its like-for-like rival is "
                f"`hessian_operator`, which is {lfl:.2f}x as fast, where `jaxcurv.hvp` recomputes "
                "both passes per product."
            )
        return text

    return why


def _peer_targets(ref: str) -> tuple[tg.Target, ...]:
    fresh = ref == _FRESH
    return (
        tg.Target(
            f"jaxcurv.hvp >= 1.25x faster than {ref}",
            _speedup("jaxcurv.hvp", ref),
            ">=",
            1.25,
            why=_torch_why("jaxcurv.hvp", ref),
            headline=tg.Headline(
                "`hvp` speed-up over PyTorch double-backward HVP",
                ">= 1.25x",
                missing="PyTorch not installed",
            )
            if fresh
            else None,
        ),
        tg.Target(
            f"jaxcurv CG iteration (GGN) >= 2.5x faster than {ref}",
            _speedup(_CG, ref),
            ">=",
            2.5,
            why=_torch_why(_CG, ref),
            headline=tg.Headline(
                "CG iteration (GGN) speed-up over PyTorch double-backward HVP",
                ">= 2.5x",
                missing="PyTorch not installed",
            )
            if fresh
            else None,
        ),
    )


TARGETS = _peer_targets(_FRESH) + _peer_targets(_RETAINED)

# ------------------------------------------------------------------------------ report

TITLE = "PyTorch on the same MLP with the same weights (`benchmarks/peers.py`)"


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md``, from its JSON document."""
    out = [
        f"### {TITLE}",
        "",
        f"{md.sizes(doc['problem']['sizes'])}, batch {doc['problem']['batch']}; "
        "JAX rows: ratios to one `jax.grad` in one interleaved run. The CG row is one iteration of "
        f"a {doc['cg_iters']}-iteration `jaxcurv.cg` on the GGN operator.",
        "",
    ]
    if not doc["torch_available"]:
        out += ["PyTorch was not installed for this run (`pip install torch==2.13.0`).", ""]
    elif doc.get("torch_note"):
        out += [doc["torch_note"], ""]
    out += [*md.timing_table(doc["rows"], with_floor=False), ""]
    if doc.get("like_for_like"):
        rows = [[k, md.ratio(v)] for k, v in doc["like_for_like"].items()]
        out += [*md.table(["like for like (medians)", "speed-up"], rows), ""]
    if doc["checks"]:
        out += [f"Checks: {md.checks(doc['checks'])}.", ""]
    return "\n".join(out)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--torch-worker":
        s = json.loads(argv[1])
        Path(argv[2]).write_text(json.dumps(run_torch(s, common.optional_torch())))
        return
    s, out_dir, quick = common.settings_for("peers", DEFAULTS, argv)
    common.header("peers", quick)

    def torch_side():
        if common.optional_torch() is None:
            print("PyTorch not installed: JAX side only (pip install torch==2.13.0).")
            return None
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "torch.json"
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.peers",
                "--torch-worker",
                json.dumps(s),
                str(out),
            ]
            proc = subprocess.run(cmd, cwd=common.ROOT, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"the PyTorch side failed (exit {proc.returncode})")
            return json.loads(out.read_text())

    payload = run(s, torch_side)
    common.write_result(out_dir, "peers", s, quick, payload, TARGETS)


if __name__ == "__main__":
    main()
