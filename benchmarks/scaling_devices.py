"""The products and a CG step over 1, 2, 4, 8 devices and over 2 processes (issue 16).

The programs of :mod:`benchmarks.scaling` (``jax.grad``, ``hvp``, ``hessian_operator``
and ``ggn_operator`` products, one ``jaxcurv.cg`` iteration on the GGN) on the reference
MLP, with the batch split over the devices (``shard_batch``) and the parameters either
replicated or split FSDP-style (``shard_params``). Each configuration runs in its own
process, since the device count (``--xla_force_host_platform_device_count``) is fixed
before JAX starts: one process with 1, 2, 4 or 8 devices, then two processes with k
devices each, joined by ``jax.distributed.initialize`` on a localhost coordinator with
gloo CPU collectives. Times are reported as ratios to the 1-device process's (of medians,
and of minima: no rounds are shared across processes), next to each process's own paired
ratios to its ``jax.grad``.

Memory per device, replicated vs FSDP parameters: ``device.memory_stats()`` is ``None``
for CPU devices, so it is read from each compiled executable's ``memory_analysis()``
(the per-device program's arguments + outputs + temporaries - aliased bytes) and from
the parameter shards each device holds.

Every configuration's results are checked against the 1-device run (norm and projection
on a fixed direction of every product and of the CG iterate).

    python -m benchmarks.scaling_devices [--quick]
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, scaling
from benchmarks import markdown as md
from jaxcurv.tree import tree_vdot

DEFAULTS = {
    "full": {
        "repeats": 7,
        "sizes": [784, 1000, 1000, 1000, 10],
        "batch": 256,
        "device_counts": [1, 2, 4, 8],
        "process_devices": [1, 2, 4],  # devices per process, with `num_processes` processes
        "num_processes": 2,
        "cg_iters": 5,
        "damping": 1.0,
        "timeout_s": 600,
    },
    "quick": {
        "repeats": 5,
        "sizes": [784, 256, 256, 10],
        "batch": 128,
        "device_counts": [1, 2, 4, 8],
        "process_devices": [1, 2],
        "num_processes": 2,
        "cg_iters": 3,
        "damping": 1.0,
        "timeout_s": 300,
    },
    # On a GPU the batch is what keeps a device busy; the counts are capped by the cards.
    "accelerator": {"full": {"batch": 2048}, "quick": {"batch": 512}},
}
FSDP = ("hvp", "ggn_operator apply", "cg iteration (GGN)")
CG = "cg iteration (GGN)"
MEMORY_METHOD = (
    "compiled executable `memory_analysis()` of the per-device program: arguments + "
    "outputs + temporaries - aliased bytes (an upper bound on its live bytes)"
)
# Agreement with one device: float32 sums over the batch and the parameters taken in other
# orders, as `scaling`'s own product checks (1e-3) allow.
RTOL = 1e-3

# ------------------------------------------------------------------- in each process


def _host_scalar(a) -> float:
    """A replicated scalar as a float, in any process (every process holds all of it)."""
    return float(np.asarray(a.addressable_shards[0].data))


_NORM_DOT = jax.jit(lambda r, w: (jnp.sqrt(tree_vdot(r, r)), tree_vdot(r, w)))


def _summaries(res: dict, w) -> dict:
    """Norm and projection on ``w`` of every result: what other device counts must match."""
    out = {}
    for name, r in res.items():
        r = r[0] if name.startswith(CG) else r  # (iterate, info)
        norm, dot = _NORM_DOT(r, w)
        out[name] = {"norm": _host_scalar(norm), "dot": _host_scalar(dot)}
    return out


def _memory(fn, args) -> dict:
    m = fn.lower(*args).compile().memory_analysis()
    if m is None:
        return {}
    out = {
        "argument_bytes": m.argument_size_in_bytes,
        "output_bytes": m.output_size_in_bytes,
        "temp_bytes": m.temp_size_in_bytes,
        "alias_bytes": m.alias_size_in_bytes,
    }
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    out["total_bytes"] -= out["alias_bytes"]
    return out


def _bytes_per_device(tree) -> int:
    """Bytes of ``tree`` each device holds (its shard of every leaf; all shards alike)."""
    return sum(
        int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
    )


def measure(
    s: dict, num_devices: int, process_id: int = 0, num_processes: int = 1, fsdp_too: bool = True
) -> dict:
    """Time and size the programs on the first ``num_devices`` devices of all processes.

    ``fsdp_too=False`` leaves out the FSDP layout (the smoke test's shortcut).
    """
    from jaxcurv.sharding import data_parallel_mesh, replicate, shard_batch, shard_params

    mesh = data_parallel_mesh(devices=jax.devices()[:num_devices])
    prob = common.mlp_problem(s["sizes"], s["batch"], seed=s["seed"])
    n = s["batch"] // num_processes
    rows = slice(process_id * n, (process_id + 1) * n)  # this process's part of the batch
    x, y = shard_batch((np.asarray(prob.x)[rows], np.asarray(prob.y)[rows]), mesh)
    rep = replicate((prob.params, prob.v), mesh)
    fsdp = shard_params((prob.params, prob.v), mesh)
    progs = scaling.programs(s, *rep, x, y)
    fprogs = {}
    if fsdp_too:
        fprogs = {
            f"{k} (FSDP)": v for k, v in scaling.programs(s, *fsdp, x, y).items() if k in FSDP
        }
    checks: list[dict] = []
    summaries = {}

    def check(res):
        scaling.check_programs(s, checks, res)
        for name in (n for n in FSDP if f"{n} (FSDP)" in res):
            got, want = res[f"{name} (FSDP)"], res[name]
            got, want = (got[0], want[0]) if name == CG else (got, want)
            # Same arithmetic, other partitioning: float32 reorderings only (see RTOL).
            common.check_close(checks, f"{name}: FSDP == replicated", got, want, 1e-4)
        summaries.update(_summaries(res, rep[1]))

    per_call = {CG: s["cg_iters"], f"{CG} (FSDP)": s["cg_iters"]}
    t = common.interleaved(
        scaling.calls({**progs, **fprogs}),
        repeats=s["repeats"],
        warmup=s["warmup"],
        per_call=per_call,
        check=check,
    )
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.local_devices()[0].device_kind,
        "devices": num_devices,
        "processes": jax.process_count(),
        "num_params": prob.num_params,
        "rows": common.ratio_rows(t, "jax.grad"),
        "checks": checks,
        "summaries": summaries,
        "w_norm": _host_scalar(_NORM_DOT(rep[1], rep[1])[0]),
        **_sizes(progs, fprogs, rep[0], fsdp[0]),
        "load_avg_after": [round(v, 2) for v in os.getloadavg()],
    }


def _sizes(progs: dict, fprogs: dict, rep, fsdp) -> dict:
    """Bytes per device of each program and of the parameters, in both layouts."""
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - CPU devices may not implement it
        stats = None
    return {
        "memory": {
            layout: {k.removesuffix(" (FSDP)"): _memory(*ps[k]) for k in ps if k != "jax.grad"}
            for layout, ps in (("replicated", progs), ("fsdp", fprogs))
        },
        "param_bytes_per_device": {
            "replicated": _bytes_per_device(rep),
            "fsdp": _bytes_per_device(fsdp),
        },
        "memory_stats_available": stats is not None,
    }


def worker(argv: list[str]) -> None:
    """``--worker SETTINGS_JSON OUT DEVICES PROCESSES PORT PROCESS_ID``: one process."""
    s, out = json.loads(argv[0]), Path(argv[1])
    k, nproc, port, pid = (int(a) for a in argv[2:6])
    load0 = [round(v, 2) for v in os.getloadavg()]
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=nproc,
            process_id=pid,
            initialization_timeout=120,
        )
    if jax.device_count() < k * nproc:  # a machine with fewer cards than that
        result = {"skipped": f"only {jax.device_count()} {jax.default_backend()} device(s)"}
    else:  # forced CPU devices: exactly k per process; real cards: the first k
        result = {"load_avg_before": load0, **measure(s, k * nproc, pid, nproc)}
    if pid == 0:
        out.write_text(json.dumps(common._jsonable(result)))
    if nproc > 1:
        jax.distributed.shutdown()


# ------------------------------------------------------------------------------ report

TITLE = "Scaling over devices and processes (`benchmarks/scaling_devices.py`)"
TARGETS = ()  # the figures show the cost of partitioning on this machine; no target
TIMED = ["jax.grad", "hvp", "hessian_operator apply", "ggn_operator apply", CG]
TIMED += [f"{n} (FSDP)" for n in FSDP]


def _cell(c: dict, name: str) -> str:
    a, b = md.get(c, "vs_one_device", name), md.get(c, "vs_one_device_min", name)
    return "n/a" if a is None else f"{md.ratio(a)} ({md.ratio(b)})"


def _devices(c: dict) -> int:
    return c["processes"] * c["devices_per_process"]


def plot(doc: dict, path: Path) -> None:
    """Time over one device's against the device count; memory per device, two layouts."""
    plt = md.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    done = [c for c in doc["configs"] if "vs_one_device" in c]
    single = [c for c in done if c["processes"] == 1]
    multi = [c for c in done if c["processes"] > 1]
    for i, n in enumerate(TIMED):
        style = "s--" if n.endswith("(FSDP)") else "o-"
        ys = [c["vs_one_device"].get(n, float("nan")) for c in single]
        ax.plot([_devices(c) for c in single], ys, style, color=f"C{i}", label=n)
        ys = [c["vs_one_device"].get(n, float("nan")) for c in multi]
        ax.plot([_devices(c) for c in multi], ys, "x", color=f"C{i}", markersize=9)
    xs = [_devices(c) for c in single]
    for layout, style in (("replicated", "o-"), ("fsdp", "s--")):
        ys = [md.get(c, "memory", layout, CG, "total_bytes", default=0) / 2**20 for c in single]
        ps = [c["param_bytes_per_device"][layout] / 2**20 for c in single]
        bx.plot(
            xs, ys, style, color="C0" if layout == "fsdp" else "C1", label=f"CG iteration, {layout}"
        )
        bx.plot(
            xs,
            ps,
            style,
            color="C0" if layout == "fsdp" else "C1",
            alpha=0.4,
            label=f"parameters, {layout}",
        )
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("devices (x: 2 processes)")
    ax.set_ylabel("time / time on 1 device")
    ax.set_title("time relative to one device (medians)")
    ax.legend(fontsize=7)
    bx.set_xlabel("devices")
    bx.set_ylabel("MiB per device")
    bx.set_title("memory per device (memory_analysis)")
    bx.legend(fontsize=7)
    counts = sorted({_devices(c) for c in done})
    for a in (ax, bx):
        a.set_xscale("log", base=2)
        a.set_xticks(counts, [str(k) for k in counts])
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fsdp_over_replicated(c: dict, name: str) -> float | None:
    """Median over the process's rounds of FSDP's time over replicated's in the same round.

    >>> rows = [{"name": "a", "samples_s": [1.0, 2.0, 4.0]},
    ...         {"name": "a (FSDP)", "samples_s": [2.0, 2.0, 2.0]}]
    >>> fsdp_over_replicated({"rows": rows}, "a")
    1.0
    """
    a, b = md.row(c["rows"], f"{name} (FSDP)"), md.row(c["rows"], name)
    if not a.get("samples_s") or not b.get("samples_s"):
        return None
    return statistics.median(x / y for x, y in zip(a["samples_s"], b["samples_s"], strict=True))


def _mib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f}"


def _memory_rows(doc: dict) -> list[list[str]]:
    rows = []
    for c in (c for c in doc["configs"] if "memory" in c):
        mem, pb = c["memory"], c["param_bytes_per_device"]
        line = [c["label"], _mib(pb["replicated"]), _mib(pb["fsdp"])]
        for n in FSDP:
            line += [_mib(md.get(mem, lay, n, "total_bytes")) for lay in ("replicated", "fsdp")]
        rows.append(line)
    return rows


def _machine_note(doc: dict) -> str:
    cores = md.get(doc, "environment", "machine", "cpus_usable")
    backend = md.get(doc, "environment", "backend", default="cpu")
    if backend != "cpu":
        return (
            f"Devices are {backend} cards; configurations with more cards than present are skipped."
        )
    return (
        f"**This machine has {cores} usable cores**: forced CPU devices are partitions of "
        "the same cores, so more devices than cores cannot run faster. The ratios above 1 "
        "show the overhead of partitioning (collectives, per-device work too small to keep "
        "the cores busy, threads contending), not a speed-up that real devices would give."
    )


def report_section(doc: dict, ctx: md.Context) -> str:
    """This benchmark's section of ``BENCHMARKS.md`` (and its plot), from its JSON."""
    prob, configs = doc["problem"], doc["configs"]
    out = [
        f"### {TITLE}",
        "",
        f"MLP {md.sizes(prob['sizes'])}, batch {prob['batch']} split over the devices "
        "(`shard_batch`); parameters replicated (`replicate`), or split FSDP-style "
        "(`shard_params`) in the columns marked FSDP. Each row ran in its own process "
        "(`--xla_force_host_platform_device_count`); `2 x k` is two processes of k devices "
        "joined by `jax.distributed.initialize` on localhost (gloo collectives).",
        "",
        _machine_note(doc),
        "",
    ]
    if any("vs_one_device" in c for c in configs):
        out += [ctx.image("scaling over devices", "scaling_devices.png", plot, doc), ""]
    out += [
        "Time over the 1-device process's time: ratio of medians (ratio of minima); "
        "`grad ms` is that row's median `jax.grad`.",
        "",
    ]
    body = []
    for c in configs:
        load = md.get(c, "load_avg_before", 0)
        head = [c["label"], "n/a" if load is None else f"{load:.1f}"]
        if "rows" not in c:
            body.append(head + [c.get("error") or c.get("skipped", "")] + [""] * len(TIMED))
            continue
        grad = md.row(c["rows"], "jax.grad")
        body.append(head + [md.ms(grad.get("median_s"))] + [_cell(c, n) for n in TIMED])
    out += [*md.table(["devices", "load", "grad ms", *TIMED], body), ""]
    paired = [
        [c["label"]] + [md.ratio(fsdp_over_replicated(c, n)) for n in FSDP]
        for c in configs
        if "rows" in c
    ]
    out += [
        "FSDP time over replicated time within each process (median over its interleaved "
        "rounds, so the load of the moment cancels):",
        "",
        *md.table(["devices", *FSDP], paired),
        "",
    ]
    header = ["devices", "params replicated", "params FSDP"]
    header += [f"{n} {lay}" for n in FSDP for lay in ("replicated", "FSDP")]
    out += [
        f"Memory per device, MiB: {doc['memory_method']}; `device.memory_stats()` is not "
        "available for CPU devices. Parameters: the bytes of the parameter shards each "
        "device holds. Replicated parameters keep every device's parameters, gradient and "
        "CG vectors whole, so only the activations shrink with the device count; FSDP "
        "splits them all.",
        "",
        *md.table(header, _memory_rows(doc)),
        "",
    ]
    if doc.get("multiprocess_note"):
        out += [doc["multiprocess_note"], ""]
    checks = [ch for c in configs for ch in c.get("checks", [])] + doc.get("checks", [])
    if checks:
        worst = max(checks, key=lambda ch: ch["rel_err"] / ch["rtol"])
        verdict = "passed" if all(ch["ok"] for ch in checks) else "**not** passed"
        out += [
            f"Checks: {len(checks)} agreements (FSDP == replicated within each process; every "
            f"configuration == 1 device), all {verdict}; "
            f"the closest to its tolerance: {worst['name']} ({worst['rel_err']:.0e} <= "
            f"{worst['rtol']:.0e}).",
            "",
        ]
    return "\n".join(out)


# ------------------------------------------------------------------- the parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    """This environment with exactly ``devices`` forced host devices (any earlier count out)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return env


def run_config(s: dict, devices: int, processes: int = 1) -> dict:
    """One configuration in its own process(es); every process reaped, even on failure."""
    label = f"{processes} x {devices}" if processes > 1 else f"{devices} device(s)"
    print(f"== {label}", flush=True)
    port = _free_port() if processes > 1 else 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.scaling_devices", "--worker", json.dumps(s)]
        cmd += [str(out), str(devices), str(processes), str(port)]
        procs = [
            subprocess.Popen(
                [*cmd, str(i)],
                cwd=common.ROOT,
                env=_env(devices),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(processes)
        ]
        logs = []
        try:
            for p in procs:
                logs.append(p.communicate(timeout=s["timeout_s"])[0])
        except subprocess.TimeoutExpired:
            logs.append(f"timed out after {s['timeout_s']} s")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        print(logs[0] if logs else "", end="", flush=True)
        base = {"label": label, "processes": processes, "devices_per_process": devices}
        if any(p.returncode != 0 for p in procs) or not out.exists():
            tail = "\n".join(log[-2000:] for log in logs)
            print(tail)
            return {**base, "error": f"exit {[p.returncode for p in procs]}: {tail[-300:]}"}
        return {**base, **json.loads(out.read_text())}


def _medians(cfg: dict) -> dict[str, tuple[float, float]]:
    return {r["name"]: (r["median_s"], r["min_s"]) for r in cfg.get("rows", [])}


def relate(configs: list[dict], checks: list[dict]) -> None:
    """Add each configuration's times over the 1-device run's, and check its results."""
    ref = next((c for c in configs if "rows" in c and c["devices"] == 1), None)
    if ref is None:
        return
    one = _medians(ref)
    for c in (c for c in configs if "rows" in c):
        times = _medians(c)
        c["vs_one_device"] = {n: times[n][0] / one[n][0] for n in times if n in one}
        c["vs_one_device_min"] = {n: times[n][1] / one[n][1] for n in times if n in one}
        if c is ref:
            continue
        for name, want in ref["summaries"].items():
            got = c["summaries"][name]
            # The projection is judged against |r| |w|, the most it can be (Cauchy-Schwarz).
            err = max(
                abs(got["norm"] - want["norm"]) / want["norm"],
                abs(got["dot"] - want["dot"]) / (want["norm"] * ref["w_norm"]),
            )
            ok = bool(np.isfinite(err) and err <= RTOL)
            checks.append(
                {
                    "name": f"{c['label']}: {name} == 1 device",
                    "rel_err": err,
                    "rtol": RTOL,
                    "ok": ok,
                }
            )


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--worker":
        worker(argv[1:])
        return
    s, out_dir, quick = common.settings_for("scaling_devices", DEFAULTS, argv)
    common.header("scaling_devices", quick)
    configs = [run_config(s, k) for k in s["device_counts"]]
    backend = next((c["backend"] for c in configs if "backend" in c), None)
    if backend == "cpu":  # gloo collectives: processes of CPU devices
        configs += [run_config(s, k, s["num_processes"]) for k in s["process_devices"]]
    checks: list[dict] = []
    relate(configs, checks)
    payload = {
        "problem": {"sizes": s["sizes"], "batch": s["batch"], "dtype": "float32"},
        "configs": configs,
        "checks": checks,
        "memory_method": MEMORY_METHOD,
        "multiprocess_note": None
        if backend == "cpu"
        else "Several processes are run with CPU devices only (gloo collectives).",
    }
    common.write_result(out_dir, "scaling_devices", s, quick, payload)
    failed = [c["name"] for c in checks if not c["ok"]]
    if failed:
        raise SystemExit(f"results differ from the 1-device run: {failed}")


if __name__ == "__main__":
    main()
