"""Formatting shared by every benchmark's report section: numbers, tables, links, plots.

Pure Python (no JAX), so that rendering a report never needs an accelerator. Each
benchmark module renders its own section with these helpers; :mod:`benchmarks.report`
only assembles the sections.

>>> table(["a", "b"], [[1, ratio(1.234)]])
['| a | b |', '| --- | --- |', '| 1 | 1.23x |']
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- numbers


def ratio(v: float | None, nd: int = 2) -> str:
    """``1.23x``, or ``n/a`` for a missing or NaN value.

    >>> ratio(0.5), ratio(None)
    ('0.50x', 'n/a')
    """
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}x"


def ms(s: float | None) -> str:
    """Seconds as milliseconds: three decimals below 10 ms, one above.

    >>> ms(0.0012), ms(0.25)
    ('1.200', '250.0')
    """
    if s is None:
        return "n/a"
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}"


def seconds(s: float | None) -> str:
    """``1.23 s``; ``not reached`` for a time that never came (``None``).

    >>> seconds(0.321), seconds(None)
    ('0.32 s', 'not reached')
    """
    return "not reached" if s is None else f"{s:.2f} s"


def mib(b: float | None) -> str:
    """Bytes as whole MiB.

    >>> mib(3 * 2**20)
    '3 MiB'
    """
    return "n/a" if b is None else f"{b / 2**20:.0f} MiB"


def mark(met: bool | None) -> str:
    """A target's verdict: ``met``, ``**missed**`` or ``n/a``.

    >>> mark(True), mark(False), mark(None)
    ('met', '**missed**', 'n/a')
    """
    return "n/a" if met is None else ("met" if met else "**missed**")


def sizes(layers: Sequence[int]) -> str:
    """Layer sizes as ``784-10``.

    >>> sizes([784, 1000, 10])
    '784-1000-10'
    """
    return "-".join(map(str, layers))


def checks(items: Sequence[dict]) -> str:
    """Correctness checks as ``name (1e-07); ...``.

    >>> checks([{"name": "a == b", "rel_err": 2e-7}])
    'a == b (2e-07)'
    """
    return "; ".join(f"{c['name']} ({c['rel_err']:.0e})" for c in items)


# ----------------------------------------------------------------------- JSON access


def get(d: Any, *path: Any, default: Any = None) -> Any:
    """``d[path[0]][path[1]]...``, or ``default`` where any step is missing.

    >>> get({"a": [1, {"b": 2}]}, "a", 1, "b"), get({}, "a", default=0)
    (2, 0)
    """
    for p in path:
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return default
    return d


def row(rows: Sequence[dict], name: str) -> dict:
    """The timing row called ``name`` (``{}`` if absent).

    >>> row([{"name": "a", "ratio": 1.0}], "a")["ratio"], row([], "a")
    (1.0, {})
    """
    return next((r for r in rows if r["name"] == name), {})


# ---------------------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def timing_table(rows: Sequence[dict], with_floor: bool = True, unit: str = "ms") -> list[str]:
    """The table every timing gets: median, min-max, ratios, FLOP floor, compile time.

    >>> r = {"name": "a", "median_s": 0.02, "min_s": 0.02, "max_s": 0.03, "ratio": 1.0}
    >>> timing_table([r], with_floor=False)[2]
    '| a | 20.0 | 20.0 - 30.0 | 1.00x | n/a | 0.00 |'
    """
    header = ["", f"median {unit}", f"min-max {unit}", "ratio", "ratio of minima"]
    if with_floor:
        header += ["FLOP floor", "HLO FLOP ratio"]
    header += ["compile s"]
    body = []
    for r in rows:
        line = [
            r["name"],
            ms(r["median_s"]),
            f"{ms(r['min_s'])} - {ms(r['max_s'])}",
            ratio(r.get("ratio")),
            ratio(r.get("ratio_min")),
        ]
        if with_floor:
            line += [ratio(r.get("flop_floor")), ratio(r.get("hlo_flop_ratio"))]
        line += [f"{r.get('compile_s', 0.0):.2f}"]
        body.append(line)
    return table(header, body)


# ----------------------------------------------------------------- where things live


def relpath(path: Path | str, start: Path | str) -> str:
    """``path`` relative to ``start``, with forward slashes (for Markdown links)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


@dataclasses.dataclass(frozen=True)
class Context:
    """Where a section is rendered: its backend, its results folder, the report's folder.

    Plots are drawn into ``folder`` (beside the JSON they come from) and linked from the
    report (:meth:`image`); with ``draw=False`` the plots already there are linked as
    they are.
    """

    backend: str
    folder: Path
    report_dir: Path
    draw: bool = True

    def link(self, name: str) -> str:
        """The path of ``folder / name`` as the report links it."""
        return relpath(self.folder / name, self.report_dir)

    def image(self, alt: str, name: str, plot: Callable[..., None], *args: Any) -> str:
        """Draw ``plot(*args, folder / name)`` (unless ``draw`` is off); its Markdown image."""
        if self.draw:
            plot(*args, self.folder / name)
        return f"![{alt}]({self.link(name)})"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
