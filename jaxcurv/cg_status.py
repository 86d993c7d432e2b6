"""How a CG solve ended: :class:`CGStatus` (with messages that say what to try) and
:class:`CGInfo`; re-exported by ``jaxcurv.cg``."""

from __future__ import annotations

import enum
import fractions
import math
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any

__all__ = ["CGInfo", "CGStatus", "cg_record_steps", "cg_status_message"]


class _Message:
    """``CGStatus.X.message`` is X's text; ``CGStatus.message(code)`` looks a code up."""

    def __get__(self, member, owner=None):
        if member is None:
            return cg_status_message
        return _MESSAGES[member]


class CGStatus(enum.IntEnum):
    """Why :func:`cg` stopped.

    ``CGStatus.NONFINITE.message``, ``CGStatus.message(3)`` and ``info.message`` say what
    happened and what to try.
    """

    CONVERGED = 0
    MAX_STEPS = 1
    NEGATIVE_CURVATURE = 2
    NONFINITE = 3
    PROGRESS_STALLED = 4

    message = _Message()


_MESSAGES = {
    CGStatus.CONVERGED: (
        "CG converged: the residual norm fell to max(tol * ||b||, atol) or below."
    ),
    CGStatus.MAX_STEPS: (
        "CG stopped after `maxiter` steps before reaching the tolerance. Try a larger "
        "`maxiter`, a preconditioner `M` (e.g. the inverse diagonal), more `damping`, or a "
        "looser `tol`/`atol`."
    ),
    CGStatus.NEGATIVE_CURVATURE: (
        "CG met a direction p with p^T (A + damping I) p <= 0 (numerically), so the matrix "
        "is not positive definite there; it returned the last iterate before that "
        "direction (x0 + M r0 if it happened at the first step, a descent direction of the "
        "quadratic model). For a Hessian, raise `damping` or use the positive semi-definite "
        "Gauss-Newton matrix (`jaxcurv.ggn_operator`)."
    ),
    CGStatus.NONFINITE: (
        "CG met a NaN or inf (in a product, a step or the preconditioner) and returned the "
        "last finite iterate. Check `A`, `b` and `M` for non-finite values, rescale the "
        "problem, add `damping`, or compute in float64."
    ),
    CGStatus.PROGRESS_STALLED: (
        "CG stopped by Martens' relative-progress rule: over the last k steps the quadratic "
        "model improved by less than a fraction k * martens_eps of its value. This is the "
        "intended exit inside Hessian-free optimization; lower `martens_eps` to run longer."
    ),
}


def cg_status_message(status: Any) -> str:
    """The message of a status code (an int, a ``CGStatus`` or a concrete scalar array).

    Host-side only: under ``jax.jit`` the status is a tracer; return it and read the
    message outside.
    """
    if isinstance(status, jax.core.Tracer):
        raise TypeError(
            "`cg_status_message(status)` needs a concrete status, got a tracer; return "
            "`info` from the jitted function and read `info.message` outside it."
        )
    arr = np.asarray(status)
    if arr.shape != ():
        raise ValueError(
            f"`cg_status_message(status)` takes one status, got shape {arr.shape}; for a "
            "batch use `[cg_status_message(s) for s in np.ravel(info.status)]`."
        )
    try:
        return CGStatus(int(arr)).message
    except ValueError:
        raise ValueError(
            f"`cg_status_message(status)` got {int(arr)}, which is not a CGStatus value "
            f"({', '.join(f'{s.name}={int(s)}' for s in CGStatus)})."
        ) from None


class CGInfo(NamedTuple):
    """Diagnostics of a :func:`cg` solve. Scalars are 0-d arrays (batched under vmap)."""

    num_steps: jax.Array  # int32 (): CG updates applied to reach the returned x
    residual_norm: jax.Array  # (): ||b - (A + damping I) x|| (recurrence residual)
    status: jax.Array  # int32 (): a CGStatus value
    quadratic_value: jax.Array  # (): phi(x) = x^T (A + damping I) x / 2 - b^T x
    curvature: jax.Array  # (): p^T (A + damping I) p of the last direction; 0 if none
    # int32 (): products with A spent: one per step, plus one for r0 = b - A x0 when x0 is
    # given (a step that stops the run still spent its product).
    num_matvecs: jax.Array | None = None
    iterates: PyTree | None = None  # record_iterates: leaves stacked (R, *leaf.shape)
    iterate_steps: jax.Array | None = None  # int32 (R,): step of each slot, -1 = empty
    iterate_values: jax.Array | None = None  # (R,): quadratic model phi at each slot's iterate

    @property
    def converged(self) -> jax.Array:
        """Boolean array: the residual tolerance was met."""
        return self.status == CGStatus.CONVERGED

    @property
    def message(self) -> str:
        """What happened and what to try (host-side; see :func:`cg_status_message`)."""
        return cg_status_message(self.status)


def cg_record_steps(maxiter: int) -> tuple[int, ...]:
    """The steps ``ceil(5 * 1.3**j) <= maxiter`` whose iterates ``record_iterates`` keeps.

    Computed in exact rational arithmetic (no float rounding at the ceiling). The iterate
    buffer has one more slot, for the returned iterate.
    """
    steps, j = [], 0
    while True:
        s = math.ceil(fractions.Fraction(5) * fractions.Fraction(13, 10) ** j)
        if s > maxiter:
            return tuple(steps)
        steps.append(s)
        j += 1
