"""The landscape report against curvlinops and PyHessian on a whole dataset (issue 13, item 6).

The report: the top-``k`` eigenvalues of the Hessian, a Hutchinson trace and a stochastic
Lanczos quadrature (SLQ) density, of the mean loss over ``examples`` examples of the
784-1000-1000-1000-10 tanh MLP (softmax cross-entropy, float32), products accumulated over
micro-batches of ``micro_batch`` examples: jaxcurv's ``hessian_operator(...,
micro_batch=...)`` with ``eigenvalues``, ``hutchinson_trace`` and ``spectral_density``;
curvlinops 3's ``HessianLinearOperator`` over a ``DataLoader`` with ``scipy``'s ``eigsh``
(``tol`` equal to jaxcurv's float32 default), ``hutchinson_trace`` and
``lanczos_approximate_spectrum`` (which first finds the spectrum's ends with ``eigsh``);
PyHessian 0.1's ``dataloader=`` mode (power iteration with deflation, its ``trace`` with
exactly the same number of probes, its ``density``). The same weights, examples and
direction in every library (copied arrays); PyTorch on the CPU with 2 threads, as many as
JAX's CPU backend uses here. Each library runs in its own process (:mod:`benchmarks.
landscape_workers`), driven over a pipe, so that no thread pool competes with another.

Method. A Hessian-vector product over the whole set costs seconds on 2 cores, and the
report takes hundreds, so:

1. **Per-product time on all ``examples``**: each library builds its operator, applies it
   once to the shared direction (the products must agree, checked to ``1e-3``), then
   ``product_rounds`` interleaved rounds of one product each, in an order that rotates.
2. **The whole report at ``report_examples``** (the same settings for every library; the
   numbers of products each method takes do not depend on the examples' count beyond the
   spectrum's shape): time and products of each part, the eigenpairs' residuals
   ``||H v - lambda v||`` in the library's own operator and in jaxcurv's, the trace's
   standard error, the eigenvalues' agreement across libraries.
3. **The estimate on all examples** = products of the report x per-product time on all
   examples (1.), stated as such; beside it, the same plus the time the report spent
   outside its products at the reduced size (orthogonalization, ARPACK, compilation).
4. **Memory**: each process's peak resident memory above what it held once its data were
   loaded, after building the operator and the products of 1. (all examples) or of the
   same number of products at ``report_examples``: flat means the same at both counts.

PyTorch's OpenMP threads spin while they wait; on this shared machine (other jobs keep the
load above the core count) that made a product 4-5x slower (measured: 2.6 s vs 0.55 s
for one 256-example product at load 10), so the PyTorch workers run with
``OMP_WAIT_POLICY=PASSIVE`` (``omp_wait_policy``); wall and CPU seconds are both kept.

Every library starts its eigen-solve from its own default vector (``eig_seed=None``);
``--set landscape_peers.eig_seed=1`` gives jaxcurv ``key=jax.random.key(1)`` and PyTorch
``manual_seed(1)``. An eigen-solve that fails (NaN, not converged) is shown as such and the
speed-up targets are then not judged: fewer products spent on a NaN say nothing about speed.

    python -m benchmarks.landscape_peers [--quick]     # peers from .venv-peers/bin/python
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from benchmarks.landscape_pipe import LIBS, flat_from_layers, rounds, start, summary

NAME = "landscape_peers"
_MLP = [784, 1000, 1000, 1000, 10]
DEFAULTS = {
    "full": {
        "sizes": _MLP,
        "examples": 10000,
        "report_examples": 512,
        "micro_batch": 256,
        "k": 5,
        "eig_tol": 1e-5,
        "eig_seed": None,  # None: each library's default start vector
        "trace_num_samples": 100,
        "density_num_samples": 4,
        "density_num_steps": 40,
        "product_rounds": 3,
        "omp_wait_policy": "PASSIVE",
        "reply_timeout_s": 1800,
    },
    "quick": {
        "sizes": [784, 64, 64, 10],
        "examples": 1024,
        "report_examples": 256,
        "micro_batch": 128,
        "k": 3,
        "eig_tol": 1e-5,
        "eig_seed": None,
        "trace_num_samples": 20,
        "density_num_samples": 2,
        "density_num_steps": 10,
        "product_rounds": 2,
        "omp_wait_policy": "PASSIVE",
        "reply_timeout_s": 600,
    },
}
TASKS = ("eig", "trace", "density")
PEERS = ("curvlinops", "pyhessian")


def available() -> dict[str, bool]:
    """Which libraries this interpreter has (jaxcurv always; the peers need PyTorch)."""
    torch = importlib.util.find_spec("torch") is not None
    has = {lib: torch and importlib.util.find_spec(lib) is not None for lib in PEERS}
    return {"jaxcurv": True, **has}


def write_data(folder: Path, s: dict) -> None:
    """Weights, examples and a direction, once, for every worker (the JAX reference MLP)."""
    prob = common.mlp_problem(s["sizes"], s["examples"], seed=s["seed"])

    def flat(tree):
        return flat_from_layers([(np.asarray(t["w"]), np.asarray(t["b"])) for t in tree])

    np.savez(
        folder / "data.npz",
        sizes=np.asarray(s["sizes"]),
        params=flat(prob.params).astype(np.float32),
        v=flat(prob.v).astype(np.float32),
        x=np.asarray(prob.x),
        y=np.asarray(prob.y),
    )


def products_on_all(libs, folder: Path, s: dict) -> dict:
    """Part 1: the operator on all examples, checked, then interleaved products."""
    n = s["examples"]
    print(f"per-product time, {n} examples, micro-batches of {s['micro_batch']}")
    workers = start(libs, folder, n, s)
    try:
        first = {lib: w.call("product", save=f"hv_{lib}.npy") for lib, w in workers.items()}
        checks: list[dict] = []
        ref = np.load(folder / "hv_jaxcurv.npy")
        for lib in workers:
            if lib != "jaxcurv" and "error" not in first[lib]:
                got = np.load(folder / f"hv_{lib}.npy")
                # float32 products summed over the micro-batches in another order: ~1e-6.
                common.check_close(checks, f"{lib} Hv == jaxcurv Hv", got, ref, 1e-3)
        got = rounds(workers, s["product_rounds"])
        out = {}
        for lib, w in workers.items():
            out[lib] = {"build_s": w.ready["build_s"], "first_s": first[lib].get("s")}
            out[lib].update(summary(got[lib]))
            print(f"  {lib:<11s} product {out[lib].get('median_s', math.nan):7.2f} s (median)")
    finally:
        for w in workers.values():
            w.close()
    return {"num_examples": n, "libraries": out, "checks": checks}


def _each(workers, cmd, rot, args) -> dict[str, dict]:
    """``cmd`` in every library, one after the other, starting at a rotating one."""
    names, out = list(workers), {}
    k = rot % len(names)
    for lib in names[k:] + names[:k]:
        r = out[lib] = workers[lib].call(cmd, **args(lib))
        print(f"  {lib:<11s} {cmd:<8s} {r.get('s', math.nan):8.2f} s, "
              f"{r.get('num_matvecs', '?')} products")  # fmt: skip
    return out


def report_run(libs, folder: Path, s: dict) -> dict:
    """Part 2: the whole report at ``report_examples``, part by part, library by library."""
    n = s["report_examples"]
    print(f"the landscape report, {n} examples")
    workers = start(libs, folder, n, s)
    try:
        for w in workers.values():
            w.call("product")  # warm-up (jaxcurv compiles its product here)
        prods = {lib: summary(x) for lib, x in rounds(workers, s["product_rounds"]).items()}
        k, tol = s["k"], s["eig_tol"]
        eig_args = {"k": k, "tol": tol, "seed": s.get("eig_seed")}
        eig = _each(workers, "eig", 0, lambda lib: {**eig_args, "save": f"ev_{lib}.npy"})
        if "jaxcurv" in workers:
            for lib, r in eig.items():
                if lib != "jaxcurv" and "error" not in r:
                    cross = workers["jaxcurv"].call(
                        "residuals_of", path=f"ev_{lib}.npy", eigenvalues=r["eigenvalues"]
                    )
                    r["residuals_in_jaxcurv"] = cross.get("residuals")
        ns, seed = s["trace_num_samples"], s["seed"]
        trace = _each(workers, "trace", 1, lambda lib: {"num_samples": ns, "seed": seed + 1})
        p, m = s["density_num_samples"], s["density_num_steps"]
        dens = _each(
            workers, "density", 2, lambda lib: {"num_samples": p, "num_steps": m, "seed": seed + 2}
        )
    finally:
        for w in workers.values():
            w.close()
    out = {}
    for lib in workers:
        out[lib] = {"product": prods[lib], "eig": eig[lib], "trace": trace[lib]}
        out[lib]["density"] = dens[lib]
    return {"num_examples": n, "libraries": out}


def estimates(doc: dict) -> dict:
    """Part 3: per library and part, products x per-product time on all examples."""
    full, rep = doc["products"]["libraries"], doc["report"]["libraries"]
    out = {}
    for lib, r in rep.items():
        t_full = md.get(full, lib, "median_s")
        t_red = md.get(r, "product", "median_s")
        parts = {}
        for t in TASKS:
            count, measured = md.get(r, t, "num_matvecs"), md.get(r, t, "s")
            if count is None or t_full is None or t_red is None:
                continue
            overhead = max(measured - count * t_red, 0.0)
            parts[t] = {
                "num_matvecs": count,
                "measured_s": measured,
                "estimate_s": count * t_full,
                "overhead_s": overhead,
                "estimate_with_overhead_s": count * t_full + overhead,
            }
        if len(parts) == len(TASKS):
            for key in ("num_matvecs", "measured_s", "estimate_s", "estimate_with_overhead_s"):
                parts.setdefault("total", {})[key] = sum(parts[t][key] for t in TASKS)
        out[lib] = parts
    return out


def accuracy(rep: dict) -> dict:
    """Part 2's accuracy: relative residuals, eigenvalue agreement, trace z-scores."""
    out, ref = {}, rep.get("jaxcurv", {})
    lam0 = np.asarray(md.get(ref, "eig", "eigenvalues", default=[]), np.float64)
    for lib, r in rep.items():
        e, tr = r.get("eig", {}), r.get("trace", {})
        a = {}
        if "eigenvalues" in e:
            lam = np.abs(np.asarray(e["eigenvalues"], np.float64))
            a["max_rel_residual"] = float(np.max(np.asarray(e["residuals"]) / lam))
            if e.get("residuals_in_jaxcurv"):
                a["max_rel_residual_in_jaxcurv"] = float(
                    np.max(np.asarray(e["residuals_in_jaxcurv"]) / lam)
                )
            if lam0.size == lam.size:
                d = np.abs(np.asarray(e["eigenvalues"]) - lam0) / np.abs(lam0)
                a["max_rel_diff_eigenvalues_vs_jaxcurv"] = float(np.max(d))
        if "stderr" in tr:
            a["trace_rel_stderr"] = tr["stderr"] / abs(tr["estimate"])
            t0 = ref.get("trace", {})
            if "stderr" in t0:
                a["trace_z_vs_jaxcurv"] = abs(tr["estimate"] - t0["estimate"]) / math.hypot(
                    tr["stderr"], t0["stderr"]
                )
        out[lib] = a
    return out


def run(s: dict) -> dict:
    have = available()
    libs = [lib for lib in LIBS if have[lib]]
    for lib in PEERS:
        if not have[lib]:
            print(f"{lib} not installed: skipped (run with .venv-peers/bin/python).")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_data(folder, s)
        doc = {"products": products_on_all(libs, folder, s), "report": report_run(libs, folder, s)}
    doc["estimates"] = estimates(doc)
    doc["accuracy"] = accuracy(doc["report"]["libraries"])
    doc["available"] = have
    doc["omp_wait_policy"] = s["omp_wait_policy"]
    return doc


# --------------------------------------------------------------------------- targets


def _total(lib: str, key: str = "estimate_s") -> tg.Measure:
    return tg.at("estimates", lib, "total", key)


def _valid_speedup(peer: str) -> tg.Measure:
    """The peer's estimate over jaxcurv's, judged only when both found their eigenvalues:
    a run that stopped on a NaN spent fewer products and says nothing about speed."""
    ratio = tg.quotient(_total(peer), _total("jaxcurv"))

    def measured(doc: dict, case: dict) -> float | None:
        for lib in ("jaxcurv", peer):
            lam = md.get(doc, "report", "libraries", lib, "eig", "eigenvalues", default=[None])
            if md.get(doc, "report", "libraries", lib, "eig", "converged") is False or any(
                x is None or not math.isfinite(x) for x in lam
            ):
                return None
        return ratio(doc, case)

    return measured


def _memory_ratio(doc: dict, case: dict) -> float | None:
    big = md.get(doc, "products", "libraries", "jaxcurv", "peak_above_data_bytes")
    small = md.get(doc, "report", "libraries", "jaxcurv", "product", "peak_above_data_bytes")
    return None if big is None or not small else big / small


def _why_slower(peer: str):
    """A missed speed-up, from the measurements: per-product time and product counts."""

    def why(doc: dict, case: dict) -> str:
        full = doc["products"]["libraries"]
        per = full[peer]["median_s"] / full["jaxcurv"]["median_s"]
        est = doc["estimates"]
        counts = ", ".join(
            f"{t} {est[peer][t]['num_matvecs']} vs {est['jaxcurv'][t]['num_matvecs']}"
            for t in TASKS
        )
        parts = ", ".join(
            f"{t} {est[peer][t]['estimate_s'] / est['jaxcurv'][t]['estimate_s']:.2f}x"
            for t in TASKS
        )
        return (
            f" One product on all examples: {per:.2f}x jaxcurv's time. Products ({peer} vs "
            f"jaxcurv): {counts}. Speed-up per part: {parts}."
        )

    return why


def _speed_target(peer: str, limit: float) -> tg.Target:
    label = {"curvlinops": "curvlinops 3", "pyhessian": "PyHessian (dataloader= mode)"}[peer]
    return tg.Target(
        f"landscape report on all examples >= {limit:g}x faster than {label} "
        "(estimate: products x per-product time)",
        _valid_speedup(peer),
        ">=",
        limit,
        why=_why_slower(peer),
        headline=tg.Headline(
            f"landscape report (top-5, trace, SLQ) speed-up over {label}",
            f">= {limit:g}x",
            missing=f"{label} not installed, or an eigensolver failed",
        ),
    )


TARGETS = (
    _speed_target("curvlinops", 2.0),
    _speed_target("pyhessian", 4.0),
    tg.Target(
        "landscape report peak memory flat in the number of examples (ratio <= 1.5)",
        _memory_ratio,
        "<=",
        1.5,
    ),
)

# ------------------------------------------------------------------------------ report

TITLE = "The landscape report against curvlinops and PyHessian (`benchmarks/landscape_peers.py`)"


def _fmt(v, spec=".3g", default="n/a"):
    return default if v is None else format(v, spec)


def _product_rows(doc: dict) -> list[list[str]]:
    full, rep = doc["products"]["libraries"], doc["report"]["libraries"]
    rows = []
    for lib, r in full.items():
        if "error" in r:
            rows.append([lib, "error", r["error"][:60], "", "", "", ""])
            continue
        small = rep.get(lib, {}).get("product", {})
        rows.append(
            [
                lib,
                f"{r['build_s']:.1f}",
                f"{r['median_s']:.2f} ({r['min_s']:.2f} - {r['max_s']:.2f})",
                f"{r['cpu_median_s']:.2f}",
                _fmt(small.get("median_s"), ".3f"),
                md.mib(small.get("peak_above_data_bytes")),
                md.mib(r.get("peak_above_data_bytes")),
            ]
        )
    return rows


def _task_rows(doc: dict) -> list[list[str]]:
    rows = []
    for lib, parts in doc["estimates"].items():
        for t in (*TASKS, "total"):
            p = parts.get(t)
            if p is None:
                err = md.get(doc, "report", "libraries", lib, t, "error", default="n/a")
                rows.append([lib, t, "error", str(err)[:60], "", ""])
                continue
            rows.append(
                [
                    lib if t == "eig" else "",
                    t,
                    str(p["num_matvecs"]),
                    f"{p['measured_s']:.1f}",
                    f"{p['estimate_s']:.0f}",
                    f"{p['estimate_with_overhead_s']:.0f}",
                ]
            )
    return rows


def _accuracy_rows(doc: dict) -> list[list[str]]:
    rows = []
    for lib, r in doc["report"]["libraries"].items():
        a, e, tr = doc["accuracy"].get(lib, {}), r.get("eig", {}), r.get("trace", {})
        lams = ", ".join(_fmt(x, ".5g", "NaN") for x in e.get("eigenvalues", []))
        if e.get("converged") is False:
            lams += " (not converged)"
        trace = f"{tr['estimate']:.5g} +- {tr['stderr']:.3g}" if "stderr" in tr else "n/a"
        rows.append(
            [
                lib,
                lams or "error",
                _fmt(a.get("max_rel_residual"), ".1e"),
                _fmt(a.get("max_rel_residual_in_jaxcurv"), ".1e", "(itself)"),
                _fmt(a.get("max_rel_diff_eigenvalues_vs_jaxcurv"), ".1e"),
                trace,
                _fmt(a.get("trace_z_vs_jaxcurv"), ".2f"),
                _fmt(md.get(r, "density", "mean_eigenvalue"), ".4g"),
            ]
        )
    return rows


def _supplement_lines(doc: dict) -> list[str]:
    """A jaxcurv eigen-solve rerun apart (``doc["supplement"]``), and the estimate with it."""
    sup = doc.get("supplement")
    if not sup or "eig" not in sup:
        return []
    e, est = sup["eig"], doc["estimates"]
    t_full = doc["products"]["libraries"]["jaxcurv"]["median_s"]
    total = e["num_matvecs"] * t_full + sum(est["jaxcurv"][t]["estimate_s"] for t in TASKS[1:])
    lam = np.abs(np.asarray(e["eigenvalues"]))
    rel = float(np.max(np.asarray(e["residuals"]) / lam))
    ratios = ", ".join(
        f"{md.ratio(est[p]['total']['estimate_s'] / total)} over {p}"
        for p in PEERS
        if "total" in est.get(p, {})
    )
    return [
        f"**Supplement** ({sup['why']}): {e['num_matvecs']} products, {e['s']:.1f} s at "
        f"{doc['report']['num_examples']:,} examples, converged {e['converged']}, max relative "
        f"residual {rel:.1e}, eigenvalues {', '.join(f'{x:.5g}' for x in e['eigenvalues'])}. "
        f"With it jaxcurv's estimate on all examples is {total:.0f} s: {ratios}.",
        "",
    ]


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md``, from its JSON document."""
    s, est = doc["settings"], doc.get("estimates", {})
    n_all, n_rep = doc["products"]["num_examples"], doc["report"]["num_examples"]
    load = md.get(doc, "environment", "machine", "load_avg_1_5_15", default="n/a")
    out = [
        f"### {TITLE}",
        "",
        f"MLP {md.sizes(s['sizes'])}, float32, micro-batches of {s['micro_batch']}; the report "
        f"is the top-{s['k']} eigenvalues (`eig`), a {s['trace_num_samples']}-probe Hutchinson "
        f"trace and an SLQ density of {s['density_num_samples']} probes x "
        f"{s['density_num_steps']} steps. Per-product time on all {n_all:,} examples "
        f"(median of {s['product_rounds']} interleaved rounds); the whole report at "
        f"{n_rep:,} examples; the {n_all:,}-example estimate is **products x per-product "
        "time**, not a measurement of the whole report at that size (which would take "
        f"hours here), and beside it the same plus the report's time outside its products. "
        f"PyTorch 2 threads, `OMP_WAIT_POLICY={doc.get('omp_wait_policy')}`; machine load "
        f"{load} (1/5/15 min) at the end of the run. Method: the module's docstring.",
        "",
    ]
    missing = [lib for lib, ok in doc.get("available", {}).items() if not ok]
    if missing:
        out += [f"Not installed for this run: {', '.join(missing)}.", ""]
    head = ["library", "build s", f"product s, {n_all:,} ex.", "CPU s", f"product s, {n_rep:,} ex."]
    head += [f"peak, {n_rep:,} ex.", f"peak, {n_all:,} ex."]
    out += [*md.table(head, _product_rows(doc)), ""]
    head = ["library", "part", "products", f"measured s, {n_rep:,} ex."]
    head += [f"estimate s, {n_all:,} ex.", "+ overhead s"]
    out += [*md.table(head, _task_rows(doc)), ""]
    speed = []
    for peer in PEERS:
        if _valid_speedup(peer)(doc, {}) is None:
            if peer in est:
                speed.append([peer, *["n/a (an eigensolver failed)"] * 3])
        else:
            a, b = est[peer]["total"], est["jaxcurv"]["total"]
            speed.append(
                [
                    peer,
                    md.ratio(a["estimate_s"] / b["estimate_s"]),
                    md.ratio(a["estimate_with_overhead_s"] / b["estimate_with_overhead_s"]),
                    md.ratio(a["measured_s"] / b["measured_s"]),
                ]
            )
    if speed:
        head = ["jaxcurv's speed-up over", f"estimate, {n_all:,} ex.", "with overheads"]
        out += [*md.table([*head, f"measured, {n_rep:,} ex."], speed), ""]
    head = ["library", "top eigenvalues", "max rel. residual", "in jaxcurv's operator"]
    head += ["max rel. diff. vs jaxcurv", "trace +- stderr", "z vs jaxcurv", "SLQ mean eig."]
    out += [*md.table(head, _accuracy_rows(doc)), ""]
    out += _supplement_lines(doc)
    if doc["products"].get("checks"):
        out += [f"Checks: {md.checks(doc['products']['checks'])}.", ""]
    return "\n".join(out)


def main(argv=None) -> None:
    s, out_dir, quick = common.settings_for(NAME, DEFAULTS, argv)
    common.header(NAME, quick)
    payload = run(s)
    common.write_result(out_dir, NAME, s, quick, payload, TARGETS)


if __name__ == "__main__":
    main()
