"""Peak memory, each measurement in its own process (issues 2 and 6).

* dense ``jaxcurv.hessian`` vs ``jax.hessian`` at N = 2000 (the problem of
  :func:`benchmarks.products.dense_hessian_problem`);
* ``jax.grad`` vs ``jaxcurv.hvp`` vs the operators on the reference MLP;
* Lanczos (``jaxcurv.eigenvalues``) with m basis vectors, m swept.

On CPU the peak is the host's resident set: the high-water mark is reset
(``/proc/self/clear_refs``) after the inputs exist and the program is compiled, so the
number is what running the computation adds on top of its inputs. On a GPU it is the
device's ``peak_bytes_in_use`` above the bytes in use before the run. Compilation's peak is
reported apart. Each worker also reports the run's wall time.

    python -m benchmarks.memory [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax

from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from benchmarks.landscape_pipe import status_kib  # jax-free: the torch workers share it

DEFAULTS = {
    "full": {
        "hessian_n": 2000,
        "hessian_batch": 512,
        "sizes": [784, 1000, 1000, 1000, 10],
        "batch": 256,
        "lanczos_steps": [10, 20, 40, 80],
        "micro_batch": 256,
        "micro_batch_examples": [1024, 4096, 10240],
        "timeout_s": 600,
    },
    "quick": {
        "hessian_n": 1000,
        "hessian_batch": 256,
        "sizes": [784, 256, 256, 10],
        "batch": 128,
        "lanczos_steps": [10, 40],
        "micro_batch": 64,
        "micro_batch_examples": [256, 1024, 4096],
        "timeout_s": 300,
    },
}


# ---------------------------------------------------------------------- in the worker


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _device_stats():
    try:
        return jax.devices()[0].memory_stats() or None
    except Exception:  # noqa: BLE001 - CPU devices may not implement it
        return None


def _measure(build):
    """``build() -> (compiled_fn, args)``; returns peak bytes of compile and of the run."""
    gpu = jax.default_backend() != "cpu"
    _reset_peak()
    rss0 = status_kib("VmRSS")
    fn, args = build()
    compile_peak = None
    if not gpu and rss0 is not None:
        compile_peak = (status_kib("VmHWM") - rss0) * 1024
    jax.block_until_ready(args)
    stats0 = _device_stats() if gpu else None
    resettable = _reset_peak()
    base = status_kib("VmRSS")
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "compile_peak_bytes": compile_peak, "backend": jax.default_backend()}
    if gpu and stats0 is not None:
        stats = _device_stats()
        out["peak_bytes"] = stats.get("peak_bytes_in_use", 0) - stats0.get("bytes_in_use", 0)
        out["method"] = "device peak_bytes_in_use minus bytes in use before"
    else:
        peak = status_kib("VmHWM") if resettable else None
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_bytes"] = (peak - base) * 1024
        out["method"] = "host VmHWM after reset minus VmRSS before the run"
    return out


def _worker(case: str, params: dict) -> dict:
    import jaxcurv

    if case.startswith("micro_batch"):
        return _micro_batch_worker(params)

    if case in ("jax.hessian", "jaxcurv.hessian"):
        from benchmarks.products import dense_hessian_problem

        fun, z0, _ = dense_hessian_problem(params["n"], params["batch"])
        h = jax.hessian(fun) if case == "jax.hessian" else jaxcurv.hessian(fun)
        return _measure(lambda: (jax.jit(h).lower(z0).compile(), (z0,)))

    prob = common.mlp_problem(params["sizes"], params["batch"])
    f, p, v, x, y = common.mlp_loss, prob.params, prob.v, prob.x, prob.y
    if case == "jax.grad":
        return _measure(lambda: (jax.jit(jax.grad(f)).lower(p, x, y).compile(), (p, x, y)))
    if case == "jaxcurv.hvp":
        fn = jax.jit(lambda q, w: jaxcurv.hvp(f, q, w, x, y))
        return _measure(lambda: (fn.lower(p, v).compile(), (p, v)))
    if case == "hessian_operator build + apply":
        fn = jax.jit(lambda q, w: jaxcurv.hessian_operator(f, q, x, y)(w))
        return _measure(lambda: (fn.lower(p, v).compile(), (p, v)))
    if case == "hessian_operator apply (operator held)":
        op = jaxcurv.hessian_operator(f, p, x, y)
        jax.block_until_ready(op.grad)  # linearized now, so the program is the product only
        fn = jax.jit(lambda o, w: o(w))
        return _measure(lambda: (fn.lower(op, v).compile(), (op, v)))
    if case.startswith("lanczos"):
        op = jaxcurv.hessian_operator(f, p, x, y)
        jax.block_until_ready(op.grad)  # held linearized, as the row has always measured
        m = params["steps"]
        fn = jax.jit(lambda o: jaxcurv.eigenvalues(o, 1, num_iters=m).eigenvalues)
        res = _measure(lambda: (fn.lower(op).compile(), (op,)))
        res["basis_bytes"] = m * prob.num_params * 4
        return res
    raise ValueError(f"unknown memory case {case!r}")


def _micro_batch_worker(params: dict) -> dict:
    """One product of the micro-batched Hessian on ``n`` examples (issue 13): the operator
    is held (data on the device), so the run's peak is what the product adds."""
    import jaxcurv

    prob = common.mlp_problem(params["sizes"], params["n"])
    op = jaxcurv.hessian_operator(
        common.mlp_loss, prob.params, prob.x, prob.y, micro_batch=params["micro_batch"]
    )
    fn = jax.jit(lambda o, w: o(w))
    res = _measure(lambda: (fn.lower(op, prob.v).compile(), (op, prob.v)))
    compiled = fn.lower(op, prob.v).compile().memory_analysis()
    res["temp_bytes"] = getattr(compiled, "temp_size_in_bytes", None)
    res["data_bytes"] = prob.x.nbytes + prob.y.nbytes
    res["n"], res["micro_batch"] = params["n"], params["micro_batch"]
    return res


def micro_batch_memory(s: dict, timeout_s: float) -> dict:
    """The ``micro_batch`` part of the JSON: one worker per number of examples."""
    mp = {"sizes": s["sizes"], "micro_batch": s["micro_batch"]}
    print(f"micro-batched Hessian product, micro_batch={mp['micro_batch']}, n swept")
    results = [
        _spawn(f"micro_batch={mp['micro_batch']} n={n}", {**mp, "n": n}, timeout_s)
        for n in s["micro_batch_examples"]
    ]
    return {"params": {**mp, "examples": s["micro_batch_examples"]}, "results": results}


def _micro_batch_flatness(doc: dict, case: dict) -> float | None:
    """Peak of the product at the most examples over that at the fewest (flat: ~1)."""
    ok = [r for r in md.get(doc, "micro_batch", "results", default=[]) if "error" not in r]
    if len(ok) < 2:
        return None
    ok.sort(key=lambda r: r["n"])
    return ok[-1]["peak_bytes"] / max(ok[0]["peak_bytes"], 1)


def micro_batch_rows(doc: dict) -> list[list[str]]:
    """Report rows ``[examples, micro_batch, run peak, XLA temp, data, run s]``."""
    rows = []
    for r in md.get(doc, "micro_batch", "results", default=[]):
        if "error" in r:
            rows.append([r["case"], "error", r["error"][:80], "", "", ""])
            continue
        rows.append(
            [
                str(r["n"]),
                str(r["micro_batch"]),
                md.mib(r["peak_bytes"]),
                md.mib(r.get("temp_bytes")),
                md.mib(r["data_bytes"]),
                f"{r['wall_s']:.3f}",
            ]
        )
    return rows


# ------------------------------------------------------------------------ in the parent


def _spawn(case: str, params: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", case, json.dumps(params)]
    env = dict(os.environ)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"case": case, "error": f"timed out after {timeout_s} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-800:]
        return {"case": case, "error": f"exit {proc.returncode}: {tail}"}
    res = json.loads(lines[-1])
    res["case"] = case
    res["process_s"] = time.perf_counter() - t0
    mib = res["peak_bytes"] / 2**20
    print(f"  {case:<40s} peak {mib:9.1f} MiB  run {res['wall_s']:.3f} s")
    return res


# ----------------------------------------------------------------- targets and report


def _dense_peak_ratio(doc: dict, case: dict) -> float | None:
    """jaxcurv.hessian's peak over jax.hessian's (``None`` unless both workers succeeded)."""
    ok = {r["case"]: r for r in md.get(doc, "hessian", "results", default=[]) if "error" not in r}
    if len(ok) != 2:
        return None
    return ok["jaxcurv.hessian"]["peak_bytes"] / max(ok["jax.hessian"]["peak_bytes"], 1)


TARGETS = (
    tg.Target(
        "dense hessian peak memory far below jax.hessian's (ratio <= 0.5)",
        _dense_peak_ratio,
        "<=",
        0.5,
        headline=tg.Headline(
            lambda doc, case: (
                "dense `hessian` peak memory / `jax.hessian`'s "
                f"(N = {doc['hessian']['params']['n']})"
            ),
            "far below (<= 0.5x)",
        ),
    ),
)
TARGETS += (
    tg.Target(
        "micro-batched product peak memory flat in the number of examples (ratio <= 1.5)",
        _micro_batch_flatness,
        "<=",
        1.5,
    ),
)
TITLE = "Peak memory (`benchmarks/memory.py`, each in its own process)"
PARTS = ("hessian", "products", "lanczos", "micro_batch")  # the tables' rows, in this order


def _results(doc: dict) -> list[dict]:
    return [r for part in PARTS for r in md.get(doc, part, "results", default=[])]


def plot(doc: dict, path: Path) -> None:
    """Peak memory of every case that succeeded, as horizontal bars."""
    res = [r for r in _results(doc) if "error" not in r]
    plt = md.pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(res) + 1.2))
    ax.barh([r["case"] for r in res], [r["peak_bytes"] / 2**20 for r in res], color="C0")
    ax.set_xlabel("peak memory added by the run (MiB)")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _row(r: dict) -> list[str]:
    if "error" in r:
        return [r["case"], "error", r["error"][:80], "", ""]
    basis = md.mib(r["basis_bytes"]) if "basis_bytes" in r else ""
    peak, compile_peak = md.mib(r["peak_bytes"]), md.mib(r.get("compile_peak_bytes"))
    return [r["case"], peak, compile_peak, f"{r['wall_s']:.3f}", basis]


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md`` (and its plot), from its JSON."""
    out = [
        f"### {TITLE}",
        "",
        f"Dense Hessian at N = {doc['hessian']['params']['n']}; products and Lanczos on "
        f"{md.sizes(doc['products']['params']['sizes'])}, batch "
        f"{doc['products']['params']['batch']}. Peak = memory the run adds above its inputs "
        "(host RSS high-water mark on CPU, device peak on GPU).",
        "",
        *md.table(
            ["case", "run peak", "compile peak", "run s", "Lanczos basis"],
            [_row(r) for r in _results(doc)],
        ),
        "",
    ]
    if any("error" not in r for r in _results(doc)):
        out += [ctx.image("memory", "memory.png", plot, doc), ""]
    return "\n".join(out)


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--worker":
        print(json.dumps(_worker(argv[1], json.loads(argv[2]))))
        return
    s, out_dir, quick = common.settings_for("memory", DEFAULTS, argv)
    common.header("memory", quick)
    to = s["timeout_s"]
    hp = {"n": s["hessian_n"], "batch": s["hessian_batch"]}
    print(f"dense Hessian N = {hp['n']} (batch {hp['batch']})")
    hessian = [_spawn(c, hp, to) for c in ("jax.hessian", "jaxcurv.hessian")]
    mp = {"sizes": s["sizes"], "batch": s["batch"]}
    print(f"MLP {'-'.join(map(str, s['sizes']))}, batch {s['batch']}")
    products = [
        _spawn(c, mp, to)
        for c in (
            "jax.grad",
            "jaxcurv.hvp",
            "hessian_operator build + apply",
            "hessian_operator apply (operator held)",
        )
    ]
    print("Lanczos (Hessian operator), m steps")
    lanczos = [_spawn(f"lanczos m={m}", {**mp, "steps": m}, to) for m in s["lanczos_steps"]]
    common.write_result(
        out_dir,
        "memory",
        s,
        quick,
        {
            "hessian": {"params": hp, "results": hessian},
            "products": {"params": mp, "results": products},
            "lanczos": {"params": mp, "results": lanczos},
            "micro_batch": micro_batch_memory(s, to),
        },
        TARGETS,
    )


if __name__ == "__main__":
    main()
