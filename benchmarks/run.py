"""Run the whole benchmark suite and regenerate ``BENCHMARKS.md``.

    python -m benchmarks.run                      # full suite (< 30 min on 2 CPU cores)
    python -m benchmarks.run --quick              # a few minutes; results apart
    python -m benchmarks.run --set krylov.cg_iters=20  # any setting; or --config FILE
    python -m benchmarks.run --only products,peers
    python -m benchmarks.run --report-only        # rebuild BENCHMARKS.md from the JSON

Each benchmark runs in its own process (its own JAX configuration, its own peak memory),
on whatever backend JAX sees, and writes ``<out>/<backend>/<name>.json`` (``<backend>-quick``
for ``--quick``) and ``<name>.log``. A benchmark that fails is recorded as failed in
``suite.json`` and the others still run. The full run then rewrites ``BENCHMARKS.md`` at the
repository root from every ``<out>/<backend>/`` folder present (CPU and GPU side by side);
a quick run writes its report into its own folder and leaves the committed one alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.settings import expand

BENCHMARKS = ("products", "krylov", "peers", "scaling", "memory", "optimizers")


def _backend() -> str:
    import jax

    return jax.default_backend()


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
      timeout_s: per-benchmark limit (default 900 s, 1800 s for the full optimizer run).
    """
    from benchmarks import report

    root = Path(out) if out else common.DEFAULT_OUT
    names = list(only) if only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}.")
    out_dir = common.results_dir(root, quick)
    if not report_only:
        settings_json = json.dumps(expand(dict(settings or {})))
        suite_path = out_dir / "suite.json"
        suite = json.loads(suite_path.read_text()) if suite_path.exists() else {}
        suite.setdefault("runs", {})
        for name in names:
            cmd = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(root)]
            cmd += ["--settings-json", settings_json] + (["--quick"] if quick else [])
            limit = timeout_s or (1800 if name == "optimizers" and not quick else 900)
            load0 = os.getloadavg()
            t0 = time.perf_counter()
            log_path = out_dir / f"{name}.log"
            status = _stream(cmd, log_path, limit)
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
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.endswith("-quick"))
        report.write_report(target, dirs)
    print(f"wrote {target}")
    return target


def _stream(cmd: list[str], log_path: Path, limit: float) -> str:
    """Run ``cmd``, echo and log its output; ``"ok"``, ``"failed (exit N)"`` or timeout."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + limit
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                return f"timed out after {limit:.0f} s"
        code = proc.wait()
    return "ok" if code == 0 else f"failed (exit {code})"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common.add_common_args(p, "products")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--report-only", action="store_true", help="only rebuild BENCHMARKS.md")
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
    )


if __name__ == "__main__":
    main()
