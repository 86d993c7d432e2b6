"""Run the whole benchmark suite and regenerate ``BENCHMARKS.md``.

    python -m benchmarks.run                      # full suite (~50 min on 2 busy CPU cores)
    python -m benchmarks.run --quick              # a few minutes; results apart
    python -m benchmarks.run --set krylov.cg_iters=20  # any setting; or --config FILE
    python -m benchmarks.run --only products,peers
    python -m benchmarks.run --report-only        # rebuild BENCHMARKS.md from the JSON
    JAX_PLATFORMS=cuda python -m benchmarks.run   # a GPU (`make bench-gpu`): no edits

Each benchmark runs in its own process (its own JAX configuration, its own peak memory),
on whatever backend JAX sees, and writes ``<out>/<backend>/<name>.json`` (``<backend>-quick``
for ``--quick``) and ``<name>.log``. A benchmark that fails or overruns its time limit is
recorded as such in ``suite.json`` and the others still run. The full run then rewrites
``BENCHMARKS.md`` at the repository root from every ``<out>/<backend>/`` folder present
(CPU and GPU side by side); a quick run writes its report into its own folder and leaves
the committed one alone.

On an accelerator the benchmarks size their problems for it (``"accelerator"`` defaults),
record the card (``device_kind``), and run with ``JAX_DEFAULT_MATMUL_PRECISION=highest``
(true float32: the correctness gates compare with float32 tolerances and PyTorch's
matmuls, which do not use TF32 by default) unless that variable is set. JAX's GPU memory
preallocation is off in every benchmark process (``XLA_PYTHON_CLIENT_PREALLOCATE=false``),
so that the processes a benchmark starts (PyTorch, the memory workers) find the memory
free. This process itself never starts a JAX backend. Missing peers (PyTorch) are
skipped, and say so in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.settings import expand

BENCHMARKS = (
    "products",
    "krylov",
    "peers",
    "curvlinops_problems",
    "scaling",
    "scaling_devices",
    "memory",
    "optimizers",
    "landscape_peers",
    "first_answer",
    "spectral_accuracy",
    "hf_cost",
    "kfac_cg",
    "optimizers_minibatch",
    "least_squares",
)
# Seconds per benchmark (full run, quick run). Measured full runs on the 2 shared CPU cores:
# optimizers 762 s, scaling_devices 1131 s (load ~10), the others under 600 s; an
# accelerator runs them faster, compiles taking about as long.
TIMEOUTS = {
    "optimizers": (1800, 900),
    "scaling_devices": (1800, 900),
    "landscape_peers": (2400, 900),
    "spectral_accuracy": (1800, 900),
    "optimizers_minibatch": (2700, 900),
    "least_squares": (3600, 900),
}
DEFAULT_TIMEOUT = (900, 900)


def detect_backend() -> str:
    """JAX's default backend (``cpu``, ``gpu``, ``tpu``), asked of a short-lived process.

    Asking here would start the backend in this process, which on a GPU would hold memory
    (and a context) for the whole suite while the benchmarks need it.
    """
    code = "import jax; print(jax.default_backend())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env()
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"JAX could not start a backend (JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}):"
            f"\n{out.stderr[-2000:]}\nInstall the plugin for the accelerator (`make bench-gpu` "
            "installs JAX's CUDA plugin) or unset JAX_PLATFORMS to run on the CPU."
        )
    return out.stdout.strip().splitlines()[-1]


def child_env(backend: str | None = None) -> dict[str, str]:
    """The environment of every benchmark process (see the module docstring)."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if backend is not None and backend != "cpu":
        env.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
    return env


def run_suite(
    *,
    quick: bool = False,
    out: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    only: Sequence[str] | None = None,
    report_only: bool = False,
    timeout_s: float | None = None,
) -> Path:
    """Run the benchmarks (all, or ``only``) and write the report; returns its path.

    Args:
      quick: small sizes and few repeats; results in ``<out>/<backend>-quick``.
      out: results root (default ``benchmarks/results``).
      settings: the ``[bench.settings]`` table (nested tables or dotted keys).
      only: names from :data:`BENCHMARKS`.
      report_only: skip running; rebuild the report from existing JSON.
      timeout_s: per-benchmark limit (default :data:`TIMEOUTS`, else 900 s).
    """
    from benchmarks import report

    root = Path(out) if out else common.DEFAULT_OUT
    names = list(only) if only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}.")
    backend = detect_backend()
    out_dir = root / (backend + ("-quick" if quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"== backend {backend}: results in {out_dir}")
    if not report_only:
        settings_json = json.dumps(expand(dict(settings or {})))
        suite_path = out_dir / "suite.json"
        suite = json.loads(suite_path.read_text()) if suite_path.exists() else {}
        suite.setdefault("runs", {})
        for name in names:
            cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(root)]
            cmd += ["--settings-json", settings_json] + (["--quick"] if quick else [])
            limit = timeout_s or TIMEOUTS.get(name, DEFAULT_TIMEOUT)[int(quick)]
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            log_path = out_dir / f"{name}.log"
            status = _stream(cmd, log_path, limit, child_env(backend))
            suite["runs"][name] = {
                "status": status,
                "seconds": round(time.perf_counter() - t0, 1),
                "load_avg_before": [round(x, 2) for x in load0],
                "load_avg_after": [round(x, 2) for x in os.getloadavg()],
                "date_utc": common.environment()["date_utc"],
            }
            print(f"== {name}: {status} in {suite['runs'][name]['seconds']} s")
        suite_path.write_text(json.dumps(suite, indent=1) + "\n")
    if quick:
        target = out_dir / "BENCHMARKS.md"
        report.write_report(target, [out_dir])
    else:
        target = common.ROOT / "BENCHMARKS.md"
        report.write_report(target, report.full_run_dirs(root))
    print(f"wrote {target}")
    return target


def _stream(cmd: list[str], log_path: Path, limit: float, env: dict[str, str]) -> str:
    """Run ``cmd``, echo and log its output; ``"ok"``, ``"failed (exit N)"`` or timeout.

    The limit holds even while the benchmark prints nothing (a watchdog kills it), and a
    benchmark's own worker processes go with it (it leads its own process group).
    """
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=common.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        fired = threading.Event()

        def expire():
            fired.set()
            _kill_group(proc)

        timer = threading.Timer(limit, expire)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:  # interrupted: take the benchmark's processes along
                _kill_group(proc)
                proc.wait()
    if fired.is_set():
        with open(log_path, "a") as log:
            log.write(f"\ntimed out after {limit:.0f} s\n")
        return f"timed out after {limit:.0f} s"
    return "ok" if code == 0 else f"failed (exit {code})"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and the processes it started (its process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_args(p, "products")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--report-only", action="store_true", help="only rebuild BENCHMARKS.md")
    p.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    args = p.parse_args(argv)
    bench, settings = common.load_settings(args.config, args.overrides)
    quick = args.quick or bool(bench.get("quick", False))
    out = args.out or bench.get("out")
    if out is not None and not Path(out).is_absolute():
        out = common.ROOT / out
    run_suite(
        quick=quick,
        out=out,
        settings=settings,
        only=args.only.split(",") if args.only else None,
        report_only=args.report_only,
        timeout_s=args.timeout,
    )


if __name__ == "__main__":
    main()
