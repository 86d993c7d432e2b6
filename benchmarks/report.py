"""Assemble ``BENCHMARKS.md`` from ``benchmarks/results/<backend>/*.json``.

Each benchmark module of :data:`benchmarks.run.BENCHMARKS` owns its part of the report:
``TARGETS`` (its declarative targets, with the explanation of a miss beside the
measurement, :mod:`benchmarks.targets`), ``TITLE`` and ``report_section(doc, ctx)`` (its
Markdown and plots, from its own JSON). This module only loads the JSON, asks each module
for its part, and assembles the header, the summary (backends side by side), the machine,
the targets table and the sections; a benchmark without JSON, or whose last run failed
(``suite.json``), gets a line that says so. ``python -m benchmarks.report`` rebuilds the
root ``BENCHMARKS.md`` from every full-run folder present.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import common
from benchmarks import markdown as md
from benchmarks import targets as tg
from benchmarks.run import BENCHMARKS

METHOD = (
    "Method: every candidate's first call (trace + compile) is timed apart, then warm-up, "
    "then interleaved rounds in which each candidate runs once (order rotating), each call "
    "ended by `block_until_ready`; the compared things are checked to compute the same "
    "numbers first. A **ratio** is the median over rounds of the candidate's time over the "
    "baseline's time in the same round (robust to a shared machine's slow spells); the "
    "ratio of minima is given beside it."
)


def module(name: str) -> ModuleType:
    """The benchmark module ``benchmarks.<name>``: its ``TARGETS``, ``TITLE``, section."""
    return importlib.import_module(f"benchmarks.{name}")


def load(folder: Path) -> dict[str, Any]:
    """``{name: JSON document}`` for every benchmark (and ``suite``) found in ``folder``."""
    out = {}
    for name in (*BENCHMARKS, "suite"):
        path = Path(folder) / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def judged(d: dict) -> list[tg.Checked]:
    """Every benchmark's targets judged on its document, benchmark by benchmark."""
    return [c for n in BENCHMARKS if n in d for c in tg.evaluate(module(n).TARGETS, d[n], n)]


# ---------------------------------------------------------------------------- summary


def summary_table(per_backend: dict[str, dict]) -> list[str]:
    """One row per headline target, one column per backend."""
    merged: dict[str, dict] = {}
    for b, d in per_backend.items():
        for n in (n for n in BENCHMARKS if n in d):
            for measure, target, value, met in tg.headlines(module(n).TARGETS, d[n]):
                row = merged.setdefault(measure, {"target": target})
                row[b] = f"{value} ({md.mark(met)})" if met is not None else value
    header = ["Measure", "Target"] + [_backend_label(d, b) for b, d in per_backend.items()]
    body = [[m, r["target"]] + [r.get(b, "n/a") for b in per_backend] for m, r in merged.items()]
    return md.table(header, body)


# ------------------------------------------------------------------------ environment


def _env(d: dict) -> dict:
    return next((d[n]["environment"] for n in BENCHMARKS if n in d), {})


def _loads(d: dict) -> dict[str, float]:
    """The 1-minute load average when each benchmark started."""
    return {n: d[n]["environment"]["machine"]["load_avg_1_5_15"][0] for n in BENCHMARKS if n in d}


def _backend_label(d: dict, backend: str) -> str:
    env = _env(d)
    if backend.startswith("cpu"):
        return f"{backend} ({md.get(env, 'machine', 'cpus_usable')} cores)"
    return f"{backend} ({md.get(env, 'device', 'kind', default=backend)})"


def _device_line(env: dict) -> str:
    """``cpu``, or the cards: ``1 x NVIDIA H200 (139.8 GiB, cuda 12080)``."""
    dev = env.get("device", {})
    if dev.get("platform", "cpu") == "cpu":
        return str(dev.get("kind"))
    extra = [f"{dev['memory_gib']} GiB"] if dev.get("memory_gib") else []
    extra += [" ".join(str(dev["platform_version"]).split())] if dev.get("platform_version") else []
    detail = f" ({', '.join(extra)})" if extra else ""
    return f"{dev.get('count', 1)} x {dev.get('kind')}{detail}"


def env_lines(d: dict, backend: str) -> list[str]:
    """Machine, versions, precision, dates and load of one backend's runs."""
    env = _env(d)
    if not env:
        return []
    v, m = env["versions"], env["machine"]
    dates = sorted({d[n]["environment"]["date_utc"][:16] for n in BENCHMARKS if n in d})
    precision = md.get(env, "jax_config", "default_matmul_precision") or "default"
    return [
        f"- **{backend}**: {_device_line(env)} ({m.get('cpu')}, "
        f"{m.get('cpus_usable')} usable cores, {m.get('mem_total_gib')} GiB), {m.get('platform')}",
        f"- versions: python {v.get('python')}, jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, "
        f"jaxcurv {v.get('jaxcurv')}, numpy {v.get('numpy')}, scipy {v.get('scipy')}, optax "
        f"{v.get('optax')}, torch {v.get('torch', 'not installed')}",
        f"- matmul precision: {precision}; run dates (UTC): {', '.join(dates)}",
        "- 1-minute load average when each benchmark started: "
        + ", ".join(f"{n} {x:.1f}" for n, x in _loads(d).items()),
    ]


def _busy_note(d: dict) -> list[str]:
    """A note when the machine was busier than its cores while the benchmarks ran."""
    cores = md.get(_env(d), "machine", "cpus_usable") or 1
    loads = list(_loads(d).values())
    if not loads or max(loads) <= cores:
        return []
    return [
        f"- The machine was shared while these ran (1-minute load up to {max(loads):.1f} on "
        f"{cores} cores): absolute times carry that noise; the per-round paired ratios "
        "and A/B interleaving keep the comparisons fair, with the ratios of minima beside "
        "them."
    ]


# --------------------------------------------------------------------------- sections


def targets_part(d: dict) -> list[str]:
    """The targets table of one backend, then why each missed target missed."""
    checked = judged(d)
    out = []
    if checked:
        header = ["target", "benchmark", "measured", "limit", ""]
        out += ["### Targets", "", *md.table(header, [c.row() for c in checked]), ""]
    notes = tg.notes(checked) + _busy_note(d)
    if notes:
        out += ["Missed targets, and why:", "", *notes, ""]
    return out


def section(name: str, d: dict, ctx: md.Context) -> list[str]:
    """One benchmark's section; a line instead where it has no JSON, a warning if it failed."""
    mod, status = module(name), md.get(d, "suite", "runs", name, "status")
    failed = status is not None and status != "ok"
    if name not in d:
        why = (
            f"its last run {status} (see `{name}.log`)"
            if failed
            else f"no `{name}.json` in `{ctx.link('.')}/`"
        )
        return [f"### {mod.TITLE}", "", f"Not measured: {why}.", ""]
    text = mod.report_section(d[name], ctx).rstrip("\n").split("\n")
    if failed:
        text[1:1] = [
            "",
            f"**Its last run {status}** (see `{name}.log`): the figures below are those of "
            f"`{name}.json`, which may be from an earlier run.",
        ]
    return [*text, ""]


def _failed_part(d: dict) -> list[str]:
    runs = md.get(d, "suite", "runs", default={})
    failed = {n: r for n, r in runs.items() if r["status"] != "ok"}
    if not failed:
        return []
    return [
        "### Benchmarks that did not finish",
        "",
        *[f"- {n}: {r['status']} (see `{n}.log`)" for n, r in failed.items()],
        "",
    ]


# ------------------------------------------------------------------------------ write


def _header(folders: Sequence[Path]) -> list[str]:
    sources = ", ".join(f"`{md.relpath(f, common.ROOT)}/`" for f in folders)
    return [
        "# jaxcurv benchmarks",
        "",
        METHOD,
        "",
        "Generated by `python -m benchmarks.run` (`make bench`; `--quick` for a few-minute "
        f"run) from the JSON files in {sources}. Do not edit by hand: every number below is "
        "read from those files.",
        "",
    ]


def write_report(target: Path, folders: Sequence[Path], *, draw: bool = True) -> Path:
    """Write the report for the results ``folders`` (one per backend) to ``target``.

    The plots are drawn into the folders beside their JSON; ``draw=False`` links the ones
    already there instead.
    """
    target = Path(target)
    per_backend = {}
    for f in folders:
        d = load(f)
        if any(n in d for n in BENCHMARKS):
            per_backend[Path(f).name] = (Path(f), d)
    lines = _header([f for f, _ in per_backend.values()])
    if not per_backend:
        lines += ["No results yet: run `python -m benchmarks.run`.", ""]
        target.write_text("\n".join(lines) + "\n")
        return target
    lines += ["## Summary", "", *summary_table({b: d for b, (_, d) in per_backend.items()}), ""]
    for backend, (folder, d) in per_backend.items():
        ctx = md.Context(backend, folder, target.parent, draw)
        lines += [f"## {backend}", "", *env_lines(d, backend), ""]
        lines += targets_part(d)
        for name in BENCHMARKS:
            lines += section(name, d, ctx)
        lines += _failed_part(d)
    target.write_text("\n".join(lines) + "\n")
    return target


def full_run_dirs(root: Path = common.DEFAULT_OUT) -> list[Path]:
    """Every full-run results folder under ``root`` (``cpu``, ``gpu``, ...), CPU first."""
    dirs = [d for d in Path(root).iterdir() if d.is_dir() and not d.name.endswith("-quick")]
    return sorted(dirs, key=lambda d: (not d.name.startswith("cpu"), d.name))


def main() -> None:
    """Rebuild the root ``BENCHMARKS.md`` from every full-run results folder."""
    dirs = full_run_dirs()
    print(f"wrote {write_report(common.ROOT / 'BENCHMARKS.md', dirs)}")


if __name__ == "__main__":
    main()
