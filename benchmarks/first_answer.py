"""Time to first answer: a one-off top-3 / trace / density job, compile included (issue 17).

Net: the MLP 784-32-10 (tanh, softmax cross-entropy, 25,450 parameters, float32) on 256
examples, weights and data drawn with NumPy (seed 0) so that building the problem
compiles nothing, and the same weights loaded into PyTorch for PyHessian.

Method. Every job runs in a FRESH process (``python -m benchmarks.first_answer --worker``),
so nothing is compiled or cached in memory before it: the process imports jax and
jaxcurv, builds the arrays, then times ``hessian_operator(...)`` ("build") and the first
call ("call") -- ``eigenvalues(op, 3, which="largest")``, ``hutchinson_trace(op, key,
100)`` or ``spectral_density(op, key)`` (10 probes x 64 steps) -- each to
``block_until_ready``, and a second call in the same process ("warm"). ``jax.monitoring``
splits each part into tracing (``jaxpr_trace_duration``), lowering to MLIR
(``jaxpr_to_mlir_module_duration``) and XLA compilation (``backend_compile_duration``);
"run" is the rest of the wall time (execution, Python, host loops). It counts the
programs compiled (a persistent-cache hit counts too: its "compile" time is then the time
to read it back) and the cache hits. Each job runs with ``loop="device"`` (the
default: the whole Krylov run is one program) and ``loop="host"`` (only the product is
compiled: on one vector for Lanczos, on a block of probes run in lockstep for Hutchinson
and SLQ, so 10 probes x 64 steps are 64 calls), without a persistent compilation cache,
then twice more with one (a fresh
temporary directory: the first process fills it, the second -- "cache warm" -- reads it).
PyHessian 0.1 (``.venv-peers``, ``make bench-peers``; skipped when missing) runs its whole
``eigenvalues(top_n=3)`` / ``trace()`` / ``density()`` job in a fresh process each, at its
defaults (power iteration to relative change 1e-3; Hutchinson to relative change 1e-3 of
the running mean, at most 100 probes; one SLQ probe of 100 steps -- ``torch.eig``, removed
from PyTorch, is replaced by ``torch.linalg.eigh``), ``torch.set_num_threads(2)``. Every
job is repeated ``repeats`` times, interleaved, and the median is reported.

    python -m benchmarks.first_answer [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import markdown as md
from benchmarks import targets as tg
from benchmarks.settings import peers_python

SIZES = (784, 32, 10)
BATCH = 256
ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("eigenvalues", "trace", "density")
_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}

DEFAULTS = {
    "full": {"repeats": 3, "trace_samples": 100, "density_samples": 10, "density_steps": 64},
    "quick": {"repeats": 1, "trace_samples": 100, "density_samples": 10, "density_steps": 64},
}


def _problem():
    """Weights and data as NumPy float32 (and int labels): nothing compiled to build them."""
    import numpy as np

    rng = np.random.default_rng(0)
    params = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        scale = np.sqrt(2.0 / (fan_in + fan_out))
        params.append(
            {
                "w": (scale * rng.standard_normal((fan_in, fan_out))).astype(np.float32),
                "b": (0.1 * rng.standard_normal(fan_out)).astype(np.float32),
            }
        )
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    return params, x, y


# ------------------------------------------------------------------ jaxcurv worker


def _call(tool: str, op, loop: str, s: dict):
    import jax

    import jaxcurv

    key = jax.random.key(0)
    if tool == "trace":
        return jaxcurv.hutchinson_trace(op, key, s["trace_samples"], loop=loop)
    if tool == "eigenvalues":
        return jaxcurv.eigenvalues(op, 3, which="largest", loop=loop)
    return jaxcurv.spectral_density(
        op, key, num_samples=s["density_samples"], num_steps=s["density_steps"], loop=loop
    )


def _jax_worker(job: dict) -> dict:
    t_start = time.perf_counter()
    import jax
    import jax.numpy as jnp

    if job.get("cache_dir"):
        jax.config.update("jax_compilation_cache_dir", job["cache_dir"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import jaxcurv
    from benchmarks.common import mlp_loss

    t_import = time.perf_counter() - t_start
    params, x, y = _problem()
    params, x, y = jax.tree.map(jnp.asarray, (params, x, y))
    parts: dict[str, dict] = {}
    current = {}

    def on_duration(event, duration, **_):
        if event in _EVENTS:
            current[_EVENTS[event]] = current.get(_EVENTS[event], 0.0) + duration
            if event.endswith("backend_compile_duration"):
                current["programs"] = current.get("programs", 0) + 1

    def on_event(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            current["cache_hits"] = current.get("cache_hits", 0) + 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    def timed(name, fn):
        current.clear()
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        wall = time.perf_counter() - t0
        rec = {"wall_s": wall, "trace_s": 0.0, "lower_s": 0.0, "compile_s": 0.0}
        rec.update({"programs": 0, "cache_hits": 0}, **current)
        rec["run_s"] = max(wall - rec["trace_s"] - rec["lower_s"] - rec["compile_s"], 0.0)
        parts[name] = rec
        return out

    op = timed("build", lambda: jaxcurv.hessian_operator(mlp_loss, params, x, y))
    res = timed("call", lambda: _call(job["tool"], op, job["loop"], job["settings"]))
    timed("warm", lambda: _call(job["tool"], op, job["loop"], job["settings"]))
    out = {"import_s": t_import, "parts": parts}
    if job["tool"] == "eigenvalues":
        out["eigenvalues"] = [float(v) for v in res.eigenvalues]
        out["num_matvecs"] = int(res.num_matvecs)
        out["converged"] = bool(res.converged)
    elif job["tool"] == "trace":
        out["estimate"], out["stderr"] = float(res.estimate), float(res.stderr)
    else:
        out["num_matvecs"] = int(res.num_matvecs)
    return out


# ---------------------------------------------------------------- PyHessian worker


def _pyhessian_worker(job: dict) -> dict:
    t_start = time.perf_counter()
    import numpy as np
    import torch
    from pyhessian import hessian

    torch.set_num_threads(2)
    if not hasattr(torch, "eig") or "removed" in (torch.eig.__doc__ or "removed"):
        # PyHessian 0.1's density() calls torch.eig (removed in PyTorch 1.9+); T is
        # symmetric, so eigh gives the same pairs, laid out as torch.eig returned them.
        def _eig(T, eigenvectors=True):
            w, v = torch.linalg.eigh(T)
            return torch.stack([w, torch.zeros_like(w)], dim=1), v

        torch.eig = _eig
    t_import = time.perf_counter() - t_start
    params, x, y = _problem()
    model = torch.nn.Sequential(
        torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.Tanh(), torch.nn.Linear(SIZES[1], SIZES[2])
    )
    with torch.no_grad():
        for layer, p in zip((model[0], model[2]), params, strict=True):
            layer.weight.copy_(torch.from_numpy(p["w"].T.copy()))
            layer.bias.copy_(torch.from_numpy(p["b"]))
    data = (torch.from_numpy(x), torch.from_numpy(np.asarray(y, np.int64)))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    comp = hessian(model, torch.nn.CrossEntropyLoss(), data=data, cuda=False)
    if job["tool"] == "eigenvalues":
        vals, _ = comp.eigenvalues(top_n=3)
        extra = {"eigenvalues": sorted(float(v) for v in vals)}
    elif job["tool"] == "trace":
        samples = comp.trace()
        extra = {"estimate": float(np.mean(samples)), "num_matvecs": len(samples)}
    else:
        comp.density()
        extra = {}
    wall = time.perf_counter() - t0
    return {"import_s": t_import, "parts": {"job": {"wall_s": wall}}, **extra}


# ----------------------------------------------------------------------- driver


def _spawn(python: str, job: dict) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [python, "-m", "benchmarks.first_answer", "--worker", json.dumps(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"  worker failed ({job}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def _jobs(s: dict, have_peer: bool) -> list[dict]:
    jobs = []
    for tool in TOOLS:
        for loop in ("device", "host"):
            for cache in ("none", "cold", "warm"):
                jobs.append({"kind": "jax", "tool": tool, "loop": loop, "cache": cache})
        if have_peer:
            jobs.append({"kind": "pyhessian", "tool": tool})
    return jobs


def _median_record(records: list[dict]) -> dict:
    """Median over repeats of every timing; the other fields from the first record."""
    out = dict(records[0])
    out["parts"] = {
        part: {
            f: statistics.median(r["parts"][part][f] for r in records)
            for f in records[0]["parts"][part]
        }
        for part in records[0]["parts"]
    }
    out["repeats"] = len(records)
    return out


def run(s: dict) -> dict:
    have_peer = peers_python().exists() and (
        subprocess.run(
            [str(peers_python()), "-c", "import torch, pyhessian"], capture_output=True
        ).returncode
        == 0
    )
    jobs = _jobs(s, have_peer)
    samples: dict[str, list[dict]] = {}
    for rnd in range(s["repeats"]):
        # One cache folder per round and configuration: "cold" fills it, "warm" reads it.
        with tempfile.TemporaryDirectory(prefix="jaxcurv-first-answer-") as tmp:
            for job in jobs:
                name = _name(job)
                spec = {"tool": job["tool"], "settings": s}
                if job["kind"] == "jax":
                    spec["loop"] = job["loop"]
                    if job["cache"] != "none":
                        spec["cache_dir"] = str(Path(tmp) / f"{job['tool']}-{job['loop']}")
                    rec = _spawn(sys.executable, spec)
                else:
                    rec = _spawn(str(peers_python()), {**spec, "peer": True})
                if rec is not None:
                    samples.setdefault(name, []).append(rec)
                    print(f"  round {rnd + 1}: {name:<42s} {_total(rec):7.3f} s")
    results = {name: _median_record(recs) for name, recs in samples.items()}
    return {
        "problem": {"sizes": list(SIZES), "batch": BATCH, "num_params": 25450},
        "pyhessian": "measured" if have_peer else "not installed",
        "results": results,
    }


def _name(job: dict) -> str:
    if job["kind"] == "pyhessian":
        return f"pyhessian {job['tool']}"
    return f"jaxcurv {job['tool']} loop={job['loop']} cache={job['cache']}"


def _total(rec: dict) -> float:
    """The first answer's wall time: building the operator and the first call (jaxcurv),
    the whole job (PyHessian)."""
    parts = rec["parts"]
    if "job" in parts:
        return parts["job"]["wall_s"]
    return parts["build"]["wall_s"] + parts["call"]["wall_s"]


# ------------------------------------------------------------------------ report

TITLE = "Time to first answer (`benchmarks/first_answer.py`)"


def _get(doc: dict, name: str) -> dict | None:
    return doc.get("results", {}).get(name)


def _ratio_to_peer(tool: str, loop: str, cache: str):
    def value(doc: dict, case: dict | None = None) -> float | None:
        ours, peer = (
            _get(doc, f"jaxcurv {tool} loop={loop} cache={cache}"),
            _get(doc, f"pyhessian {tool}"),
        )
        if ours is None or peer is None:
            return None
        return _total(ours) / _total(peer)

    return value


def _targets():
    out = []
    for tool in TOOLS:
        out.append(
            tg.Target(
                f"first {tool} (loop='host'), compile included, <= 2x PyHessian's whole job",
                _ratio_to_peer(tool, "host", "none"),
                "<=",
                2.0,
            )
        )
        out.append(
            tg.Target(
                f"second process with the compilation cache ({tool}, loop='host') faster "
                "than PyHessian",
                _ratio_to_peer(tool, "host", "warm"),
                "<",
                1.0,
            )
        )
    return tuple(out)


def report_section(doc: dict, ctx) -> str:
    """This benchmark's section of ``BENCHMARKS.md``: one row per job."""
    header = [
        "job",
        "first answer s",
        "build s",
        "call: trace+lower s",
        "call: compile s",
        "call: run s",
        "programs",
        "cache hits",
        "warm call s",
    ]
    rows = []
    for name, rec in doc.get("results", {}).items():
        p = rec["parts"]
        if "job" in p:
            rows.append([name, f"{_total(rec):.3f}", "", "", "", "", "", "", ""])
            continue
        c = p["call"]
        rows.append(
            [
                name,
                f"{_total(rec):.3f}",
                f"{p['build']['wall_s']:.3f}",
                f"{c['trace_s'] + c['lower_s']:.3f}",
                f"{c['compile_s']:.3f}",
                f"{c['run_s']:.3f}",
                f"{p['build']['programs']:.0f} + {c['programs']:.0f}",
                f"{p['build']['cache_hits'] + c['cache_hits']:.0f}",
                f"{p['warm']['wall_s']:.3f}",
            ]
        )
    return "\n".join([f"## {TITLE}", "", *md.table(header, rows), ""])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        job = json.loads(argv[1])
        rec = _pyhessian_worker(job) if job.get("peer") else _jax_worker(job)
        print(json.dumps(rec))
        return
    from benchmarks import common

    s, out_dir, quick = common.settings_for("first_answer", DEFAULTS, argv)
    common.header("first_answer", quick)
    payload = run(s)
    common.write_result(out_dir, "first_answer", s, quick, payload, TARGETS)


TARGETS = _targets()

if __name__ == "__main__":
    main()
