"""Declarative performance targets: each benchmark module lists its own in ``TARGETS``.

A :class:`Target` says what is measured (a function of the benchmark's JSON document),
how it is judged (``op`` against ``limit``), and, beside the measurement code that
produces it, what explains a miss (``why``). The same table records the verdicts in the
JSON when the benchmark runs (:func:`record`) and judges the JSON again when the report
is built (:func:`evaluate`), so a target is defined once.

>>> t = Target("a <= 2x grad", at("ratio"), "<=", 2.0, why=lambda doc, case: " Slow.")
>>> [c.met for c in evaluate([t], {"ratio": 2.5}, "demo")]
[False]
>>> evaluate([t], {"ratio": 2.5}, "demo")[0].note
'- **a <= 2x grad** (demo): measured 2.5 against 2. Slow.'
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from benchmarks import markdown as md

Case = dict[str, Any]
Measure = Callable[[dict, Case], float | None]

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def notes(checked: Sequence[Checked]) -> list[str]:
    """The missed-target bullets, one per explanation: misses that share their ``why``
    (one target judged per case) are one bullet listing each case's measurement.

    >>> miss = lambda name, v: Checked(name, "b", v, 1.0, "<=", False, " Same cause.")
    >>> notes([miss("x at 1", 2.0), miss("x at 2", 3.0)])
    ['- **x at 1** (b): measured 2 against 1; **x at 2** (b): measured 3 against 1. Same cause.']
    """
    groups: dict[str, list[Checked]] = {}
    for c in checked:
        if not c.met:
            groups.setdefault(c.why if c.why else f"\0{id(c)}", []).append(c)
    out = []
    for group in groups.values():
        parts = [
            f"**{c.name}** ({c.benchmark}): measured {c.value:.3g} against {c.limit:g}"
            for c in group
        ]
        out.append(f"- {'; '.join(parts)}.{group[0].why}")
    return out


@dataclasses.dataclass(frozen=True)
class Headline:
    """How a target appears in the report's summary table.

    Attributes:
      label: the row's text; a ``str.format`` template over the case's fields, or a
        function ``(doc, case) -> str``.
      target: the target as the summary states it (``"<= 2.7x"``, ``"lower"``).
      value: ``(doc, case) -> str``; default: the measured value as a ratio (``1.23x``).
      missing: shown instead of the value when the target could not be measured (the
        row is left out when this is ``None``).
    """

    label: str | Callable[[dict, Case], str]
    target: str
    value: Callable[[dict, Case], str] | None = None
    missing: str | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """One performance target of a benchmark.

    Attributes:
      name: the target's text; a ``str.format`` template over the case's fields.
      measured: ``(doc, case) -> value``, ``None`` where the JSON lacks the measurement
        (then the target is not judged).
      op: how ``value`` must compare with ``limit``: ``"<="``, ``"<"``, ``">="``, ``">"``.
      limit: the threshold.
      why: ``(doc, case) -> str``: what the measurements say about a miss (appended to
        "measured X against L."); ``None`` where the numbers speak for themselves.
      cases: ``doc -> [case, ...]`` for a target judged once per problem (one case per
        autoencoder, per Jacobian shape); default: one empty case.
      headline: the target's row in the summary table, if it has one.
    """

    name: str
    measured: Measure
    op: str
    limit: float
    why: Callable[[dict, Case], str] | None = None
    cases: Callable[[dict], Iterable[Case]] | None = None
    headline: Headline | None = None

    def __post_init__(self):
        if self.op not in _OPS:
            raise ValueError(
                f"Target {self.name!r}: op must be one of {list(_OPS)}, got {self.op!r}."
            )


@dataclasses.dataclass(frozen=True)
class Checked:
    """A target judged on one document: its verdict and how the report shows it."""

    name: str
    benchmark: str
    value: float
    limit: float
    op: str
    met: bool
    why: str

    @property
    def note(self) -> str:
        """The missed-target bullet: the numbers, then the measurement's explanation."""
        return (
            f"- **{self.name}** ({self.benchmark}): measured {self.value:.3g} against "
            f"{self.limit:g}.{self.why}"
        )

    def row(self) -> list[str]:
        """The target's row in the report's targets table."""
        return [
            self.name,
            self.benchmark,
            f"{self.value:.3g}",
            f"{self.limit:g}",
            md.mark(self.met),
        ]


def _instances(targets: Sequence[Target], doc: dict) -> list[tuple[Target, Case]]:
    """Every (target, case) pair in report order.

    Consecutive targets that share one ``cases`` function are taken problem by problem
    (all of the first autoencoder's targets, then the second's), others in table order.
    """
    out = []
    for _, group in itertools.groupby(targets, key=lambda t: id(t.cases) if t.cases else id(t)):
        group = list(group)
        cases = list(group[0].cases(doc)) if group[0].cases is not None else [{}]
        out += [(t, case) for case in cases for t in group]
    return out


def evaluate(targets: Sequence[Target], doc: dict, benchmark: str) -> list[Checked]:
    """Judge every target that ``doc`` has the measurement for, in report order."""
    out = []
    for t, case in _instances(targets, doc):
        value = t.measured(doc, case)
        if value is None:
            continue
        value = float(value)
        met = bool(_OPS[t.op](value, t.limit))
        why = t.why(doc, case) if (t.why is not None and not met) else ""
        out.append(Checked(t.name.format(**case), benchmark, value, t.limit, t.op, met, why))
    return out


def record(targets: Sequence[Target], doc: dict) -> list[dict]:
    """The verdicts as the benchmark's JSON stores them (``target, value, limit, op, met``)."""
    return [
        {"target": c.name, "value": c.value, "limit": c.limit, "op": c.op, "met": c.met}
        for c in evaluate(targets, doc, "")
    ]


def headlines(targets: Sequence[Target], doc: dict) -> list[tuple[str, str, str, bool | None]]:
    """``(measure, target, value, met)`` for the summary table, in report order."""
    out = []
    for t, case in _instances(targets, doc):
        h = t.headline
        value = t.measured(doc, case) if h is not None else None
        if h is None or (value is None and h.missing is None):
            continue
        label = h.label(doc, case) if callable(h.label) else h.label.format(**case)
        if value is None:
            out.append((label, h.target, h.missing, None))
            continue
        text = h.value(doc, case) if h.value is not None else md.ratio(float(value))
        out.append((label, h.target, text, bool(_OPS[t.op](float(value), t.limit))))
    return out


# ------------------------------------------------------------- measured-value helpers


def at(*path: Any) -> Measure:
    """``measured`` as the number at ``path`` in the document (``None`` if absent).

    A path element ``"{field}"`` is replaced by the case's ``field``.

    >>> at("jacobian", "{label}", "worst")({"jacobian": {"a": {"worst": 1.5}}}, {"label": "a"})
    1.5
    """

    def measured(doc: dict, case: Case) -> float | None:
        keys = [case[p[1:-1]] if isinstance(p, str) and p[:1] == "{" else p for p in path]
        return md.get(doc, *keys)

    return measured


def row_ratio(*path: Any, name: str, key: str = "ratio") -> Measure:
    """``measured`` as ``key`` of the timing row ``name`` in the rows at ``path``.

    >>> row_ratio("mlp", "rows", name="hvp")({"mlp": {"rows": [{"name": "hvp", "ratio": 2.5}]}}, {})
    2.5
    """

    def measured(doc: dict, case: Case) -> float | None:
        return md.row(md.get(doc, *path, default=[]), name).get(key)

    return measured


def quotient(num: Measure, den: Measure, floor: float = 0.0) -> Measure:
    """``measured`` as ``num / max(den, floor)`` (``None`` if either is missing).

    >>> quotient(at("a"), at("b"))({"a": 3.0, "b": 2.0}, {})
    1.5
    """

    def measured(doc: dict, case: Case) -> float | None:
        a, b = num(doc, case), den(doc, case)
        if a is None or b is None:
            return None
        return a / max(b, floor) if floor else (a / b if b else math.inf)

    return measured
