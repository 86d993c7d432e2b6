"""The method every benchmark shares, and the reference MLP they share.

Method (issue 6): a correctness check first (the compared things must compute the same
numbers), then each candidate's first call timed on its own (trace + compile + one run;
``compile_s`` is that minus the steady-state median), a few warm-up calls, and ``repeats``
interleaved rounds in which every candidate runs once, in an order that rotates from round
to round, so that a slow spell of a shared machine hits all of them alike. Every call ends
in ``block_until_ready`` (or ``torch.cuda.synchronize``); nothing syncs inside a timed
loop otherwise. Results keep every sample, the median and the min-max, and the environment
(machine, backend, device, versions, date, load average, matmul precision).

Ratios are taken against one ``jax.grad`` timed in the same interleaved run: the median
over rounds of the per-round ratio (:func:`paired_ratio`), with the ratio of medians and
the ratio of minima kept beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.settings import COMMON_DEFAULTS as COMMON_DEFAULTS
from benchmarks.settings import add_common_args as add_common_args
from benchmarks.settings import load_settings as load_settings
from benchmarks.settings import resolve as resolve
from benchmarks.targets import Target, record

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"

# --------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a peer that fails to import is simply absent
        return None
    return getattr(mod, "__version__", "unknown")


def _device_info(dev) -> dict[str, Any]:
    """The card (``device_kind``), its platform and driver version, count and memory."""
    info = {"kind": dev.device_kind, "platform": dev.platform, "count": jax.device_count()}
    try:
        info["platform_version"] = dev.client.platform_version
    except Exception:  # noqa: BLE001 - not every client exposes it
        pass
    try:
        stats = dev.memory_stats()  # None on CPU devices
    except Exception:  # noqa: BLE001
        stats = None
    if stats and stats.get("bytes_limit"):
        info["memory_gib"] = round(stats["bytes_limit"] / 2**30, 1)
    return info


def environment() -> dict[str, Any]:
    """Machine, backend, device, versions, date: everything a number depends on."""
    dev = jax.devices()[0]
    env = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "arch": platform.machine(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "mem_total_gib": _mem_total_gib(),
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        },
        "backend": jax.default_backend(),
        "device": _device_info(dev),
        "jax_config": {
            "default_matmul_precision": jax.config.jax_default_matmul_precision,
            "enable_x64": bool(jax.config.jax_enable_x64),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        },
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "jaxcurv": _version("jaxcurv"),
            "numpy": np.__version__,
            "scipy": _version("scipy"),
            "optax": _version("optax"),
        },
    }
    torch = optional_torch()
    if torch is not None:
        env["versions"]["torch"] = torch.__version__
        env["torch"] = {
            "num_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        }
    return env


def optional_torch():
    """PyTorch if installed (the ``bench`` extra), else ``None``: peers are optional."""
    try:
        import torch
    except Exception:  # noqa: BLE001
        return None
    return torch


# -------------------------------------------------------------------------------- timing


def sync(out: Any) -> Any:
    """Wait until ``out`` is computed: JAX arrays (any pytree) and torch tensors."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()
    return jax.block_until_ready(out)


@dataclasses.dataclass
class Timing:
    """Samples of one candidate, in seconds."""

    name: str
    first_s: float  # the first call: trace + compile + one run
    times: list[float]
    per_call: int = 1  # units of work per call (e.g. CG iterations): times are divided by it

    @property
    def median(self) -> float:
        return statistics.median(self.times) / self.per_call

    @property
    def min(self) -> float:
        return min(self.times) / self.per_call

    @property
    def max(self) -> float:
        return max(self.times) / self.per_call

    @property
    def compile_s(self) -> float:
        """First call minus one steady-state call: tracing and compilation."""
        return max(self.first_s - statistics.median(self.times), 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "compile_s": self.compile_s,
            "first_call_s": self.first_s,
            "repeats": len(self.times),
            "per_call": self.per_call,
            "samples_s": [round(t, 7) for t in self.times],
        }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = sync(fn())
    return time.perf_counter() - t0, out


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 2,
    per_call: Mapping[str, int] | None = None,
    check: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Timing]:
    """Time zero-argument callables A/B interleaved; the order rotates every round.

    ``check`` receives ``{name: result of the first call}`` before anything is timed further
    and should raise (see :func:`check_close`) if the candidates disagree.
    """
    if repeats < 1:
        raise ValueError(f"`interleaved(repeats=...)` must be >= 1, got {repeats}.")
    names = list(candidates)
    first, results = {}, {}
    for name in names:
        first[name], results[name] = _timed(candidates[name])
    if check is not None:
        check(results)
    del results
    for _ in range(warmup):
        for name in names:
            _timed(candidates[name])
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(_timed(candidates[name])[0])
    per_call = per_call or {}
    out = {n: Timing(n, first[n], samples[n], per_call.get(n, 1)) for n in names}
    if log is not None:
        for t in out.values():
            log(
                f"  {t.name:<44s} median {t.median * 1e3:9.3f} ms  "
                f"[{t.min * 1e3:.3f}, {t.max * 1e3:.3f}]  compile {t.compile_s:.2f} s"
            )
    return out


def time_once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one synchronized call, and its result."""
    return _timed(fn)


def paired_ratio(t: Timing, base: Timing) -> float:
    """Median over rounds of ``t``'s time over ``base``'s time in the same round.

    Both ran within the same rotating round, seconds apart, so a slow spell of a shared
    machine scales both and cancels in the ratio; the ratio of the two medians does not
    cancel it when the spell hits the candidates' samples unevenly.
    """
    ratios = [
        (a / t.per_call) / (b / base.per_call) for a, b in zip(t.times, base.times, strict=True)
    ]
    return statistics.median(ratios)


def ratio_rows(
    timings: Mapping[str, Timing],
    baseline: str,
    floors: Mapping[str, float] | None = None,
    hlo_flops: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per candidate: timing, ratio to ``baseline`` (median/median and min/min)."""
    base = timings[baseline]
    rows = []
    for name, t in timings.items():
        row = t.to_dict()
        row["ratio"] = paired_ratio(t, base)
        row["ratio_of_medians"] = t.median / base.median
        row["ratio_min"] = t.min / base.min
        if floors and name in floors:
            row["flop_floor"] = floors[name]
        if hlo_flops and name in hlo_flops and baseline in hlo_flops:
            row["hlo_flops"] = hlo_flops[name]
            row["hlo_flop_ratio"] = hlo_flops[name] / hlo_flops[baseline]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- correctness


def _flat64(tree: Any) -> np.ndarray:
    leaves = [np.asarray(leaf, dtype=np.float64).ravel() for leaf in jax.tree.leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


def rel_err(got: Any, want: Any) -> float:
    """``||got - want|| / ||want||`` over all leaves, in float64 (torch tensors welcome)."""
    g, w = _flat64(_to_numpy(got)), _flat64(_to_numpy(want))
    if g.shape != w.shape:
        raise ValueError(f"rel_err: {g.shape} vs {w.shape} scalars; the results differ in size.")
    return float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-300))


def _to_numpy(tree: Any) -> Any:
    def conv(x):
        if hasattr(x, "detach"):  # torch
            return x.detach().cpu().numpy()
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            # Spread over several processes: every process takes part in the gather.
            if x.is_fully_replicated:
                return np.asarray(x.addressable_shards[0].data)
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(conv, tree)


def check_close(checks: list[dict[str, Any]], name: str, got: Any, want: Any, rtol: float) -> None:
    """Record ``rel_err(got, want) <= rtol`` in ``checks``; raise if it fails (no timing then)."""
    err = rel_err(got, want)
    ok = bool(np.isfinite(err) and err <= rtol)
    checks.append({"name": name, "rel_err": err, "rtol": rtol, "ok": ok})
    print(f"  check {name:<56s} rel err {err:.2e} (<= {rtol:.0e}) {'ok' if ok else 'FAILED'}")
    if not ok:
        raise AssertionError(
            f"correctness check `{name}` failed: relative error {err:.3e} > {rtol:.1e}; "
            "the compared implementations do not compute the same numbers, so timing them "
            "would be meaningless."
        )


# ------------------------------------------------------------------------ compiled HLO


def hlo_cost(fn: Callable, *args: Any) -> dict[str, float]:
    """XLA's cost analysis of ``jax.jit(fn)(*args)``: FLOPs and bytes accessed."""
    compiled = jax.jit(fn).lower(*args).compile()
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else {}
    ca = ca or {}
    return {
        "flops": float(ca.get("flops", float("nan"))),
        "bytes_accessed": float(ca.get("bytes accessed", float("nan"))),
    }


def hlo_op_counts(fn: Callable, *args: Any) -> dict[str, int]:
    """Counts of the heavy ops in the optimized HLO (what a profile would show dominates)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    counts = {"dot": 0, "fusion": 0, "transpose": 0, "copy": 0, "while": 0}
    for line in text.splitlines():
        line = line.strip()
        if "=" not in line or line.startswith(("HloModule", "ENTRY", "}", "ROOT tuple")):
            continue
        rhs = line.split("=", 1)[1]
        for op in counts:
            if f" {op}(" in rhs:
                counts[op] += 1
    return counts


# ----------------------------------------------------------------- the reference MLP


def mlp_init(key: jax.Array, sizes: Sequence[int], dtype=jnp.float32) -> list[dict[str, Any]]:
    """Glorot-normal weights, small random biases; a list of ``{"w", "b"}`` per layer."""
    params = []
    for k, fan_in, fan_out in zip(
        jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:], strict=True
    ):
        kw, kb = jax.random.split(k)
        scale = math.sqrt(2.0 / (fan_in + fan_out))
        params.append(
            {
                "w": scale * jax.random.normal(kw, (fan_in, fan_out), dtype),
                "b": 0.1 * jax.random.normal(kb, (fan_out,), dtype),
            }
        )
    return params


def mlp_apply(params: list[dict[str, Any]], x: jax.Array) -> jax.Array:
    """tanh hidden layers, linear output (logits)."""
    # Explicit [None] keeps the code valid under jax_numpy_rank_promotion="raise".
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"][None])
    return x @ params[-1]["w"] + params[-1]["b"][None]


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


@dataclasses.dataclass(frozen=True)
class MLPProblem:
    """The MLP benchmark problem: parameters, a batch and the functions on them."""

    sizes: tuple[int, ...]
    batch: int
    params: Any
    x: jax.Array
    y: jax.Array
    v: Any  # a random direction like params

    def loss(self, params, x, y):
        """``f(params, x, y)``: the objective as ``hvp`` / ``hessian_operator`` take it."""
        return softmax_xent(mlp_apply(params, x), y)

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(self.params))


# Module-level functions so that jaxcurv's jit caches (keyed on the callables) hit.
def mlp_loss(params, x, y):
    """Softmax cross-entropy of the tanh MLP."""
    return softmax_xent(mlp_apply(params, x), y)


def mlp_problem(sizes: Sequence[int], batch: int, *, seed: int = 0, dtype=jnp.float32):
    """The reference problem: an MLP of ``sizes``, tanh, softmax cross-entropy, ``batch``."""
    kp, kx, ky, kv = jax.random.split(jax.random.key(seed), 4)
    params = mlp_init(kp, sizes, dtype)
    x = jax.random.normal(kx, (batch, sizes[0]), dtype)
    y = jax.random.randint(ky, (batch,), 0, sizes[-1])
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(kv, len(leaves))
    v = jax.tree.unflatten(
        treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    )
    return MLPProblem(tuple(sizes), batch, params, x, y, v)


def mlp_flops(sizes: Sequence[int], batch: int) -> dict[str, float]:
    """Matrix-multiply FLOPs of gradient, HVP and linearized products for the MLP.

    With ``c_i = 2 B d_i d_{i+1}`` per layer, ``S = sum c_i`` and ``c_1`` the first layer
    (its input needs no tangent and no cotangent): gradient ``3S - c_1``; forward-over-reverse
    HVP ``9S - 5c_1`` (primal and tangent forward and backward); the Hessian's linear part
    alone ``6S - 4c_1``; the Gauss-Newton ``J v`` and ``J^T u`` ``4S - 2c_1``.
    """
    c = [2.0 * batch * a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    s, c1 = sum(c), c[0]
    return {
        "forward": s,
        "grad": 3 * s - c1,
        "hvp": 9 * s - 5 * c1,
        "hessian_apply": 6 * s - 4 * c1,
        "ggn_apply": 4 * s - 2 * c1,
    }


def mlp_floors(sizes: Sequence[int], batch: int) -> dict[str, float]:
    """The FLOP ratios to one gradient: the floors the measured ratios are compared with."""
    f = mlp_flops(sizes, batch)
    return {k: f[k] / f["grad"] for k in ("hvp", "hessian_apply", "ggn_apply")}


# ------------------------------------------------------------------ settings and output


def parse_args(name: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=__doc__)
    add_common_args(p, name)
    p.add_argument("--settings-json", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def settings_for(name: str, defaults, argv=None) -> tuple[dict[str, Any], Path, bool]:
    """Parse a benchmark's command line: ``(settings, results folder, quick)``."""
    args = parse_args(name, argv)
    if args.settings_json is not None:
        settings = json.loads(args.settings_json)
    else:
        _, settings = load_settings(args.config, args.overrides)
    s = resolve(name, defaults, settings, args.quick, jax.default_backend())
    root = Path(args.out) if args.out else DEFAULT_OUT
    return s, results_dir(root, args.quick), args.quick


def results_dir(root: Path | str, quick: bool) -> Path:
    """``<root>/<backend>`` for full runs, ``<root>/<backend>-quick`` for quick ones."""
    d = Path(root) / (jax.default_backend() + ("-quick" if quick else ""))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic | jax.Array) and np.ndim(obj) == 0:
        return np.asarray(obj).item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_result(
    out_dir: Path,
    name: str,
    settings: Mapping[str, Any],
    quick: bool,
    payload: Mapping,
    targets: Sequence[Target] = (),
) -> Path:
    """Write ``<out_dir>/<name>.json``: environment, settings, results, judged ``targets``.

    The verdicts are stored for whoever reads the JSON; the report judges the
    measurements again with the same table (:mod:`benchmarks.targets`).
    """
    doc = {
        "benchmark": name,
        "quick": quick,
        "environment": environment(),
        "settings": dict(settings),
        **payload,
    }
    doc = _jsonable(doc)
    if targets:
        doc["targets"] = _jsonable(record(targets, doc))
    path = Path(out_dir) / f"{name}.json"
    path.write_text(json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def header(name: str, quick: bool) -> None:
    dev = jax.devices()[0]
    print(
        f"== benchmarks.{name} ({'quick' if quick else 'full'}) on {jax.default_backend()} "
        f"[{dev.device_kind}], jax {jax.__version__}, load {os.getloadavg()[0]:.1f}"
    )
