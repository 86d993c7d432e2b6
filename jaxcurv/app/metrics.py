"""A run's ``metrics.jsonl``: one JSON object per logged step, appended as training goes.

A record has ``step`` (optimizer steps done), ``time`` (seconds spent in optimizer steps
so far, compilation excluded), ``step_time`` (seconds of this step), ``loss_before`` (the
loss on this step's training batch at the parameters *before* the step: the value the
step's gradient was taken at, computed for free), ``test_loss`` (on the test set at the
parameters *after* the step, every ``run.eval_every`` steps, at step 0 and at the end)
and, for Hessian-free, ``damping``, ``rho``, ``cg_steps``, ``alpha`` and ``rejected`` of
the step. With ``run.sharpness_every = N``, every ``N`` steps (and at step 0) a record
also has ``sharpness`` (the top eigenvalue of the Hessian or Gauss-Newton matrix, named by
``sharpness_curvature``, at the parameters *after* the step on its batch), its
``sharpness_residual`` and ``sharpness_converged``, ``curvature_trace`` and
``curvature_trace_stderr`` (Hutchinson), ``curvature_matvecs`` and ``sharpness_time``
(seconds, not counted in ``time``). Non-finite numbers are written as ``null``, which JSON
can spell.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np

from jaxcurv.app.run_folder import write_text

__all__ = ["host_scalar", "json_float", "read_metrics", "truncate_metrics"]


def json_float(x) -> float | None:
    """``x`` as a Python float, or ``None`` (JSON's ``null``) if it is NaN or infinite."""
    x = float(x)
    return x if math.isfinite(x) else None


def host_scalar(v) -> bool | int | float | None:
    """A scalar array as the Python bool, int or float (:func:`json_float`) it holds."""
    v = np.asarray(v)
    if v.dtype == bool:
        return bool(v)
    if np.issubdtype(v.dtype, np.integer):
        return int(v)
    return json_float(v)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The JSON lines of a ``metrics.jsonl`` as a list of dicts.

    A last line cut short (the process died while appending it) is left out; any other
    line that is not JSON raises ``ValueError`` naming the file and the line.
    """
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise ValueError(f"{path}, line {i + 1}, is not JSON: {e}.") from None
    return records


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Drop the records after ``step`` (a resume rewinds to its checkpoint), atomically.

    Raises:
      ValueError: a line before the last is not JSON (see :func:`read_metrics`).
    """
    path = pathlib.Path(path)
    if not path.exists():
        return
    keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
