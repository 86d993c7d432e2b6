"""How :func:`jaxcurv.least_squares` ended: :class:`LeastSquaresStatus` and
:class:`LeastSquaresResult`; re-exported by ``jaxcurv.least_squares``."""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

import jax

PyTree = Any

__all__ = ["LeastSquaresResult", "LeastSquaresStatus"]


class _Message:
    """``LeastSquaresStatus.X.message`` is X's text; ``LeastSquaresStatus.message(code)``
    looks a code up."""

    def __get__(self, member, owner=None):
        if member is None:
            return lambda code: _MESSAGES[LeastSquaresStatus(int(code))]
        return _MESSAGES[member]


class LeastSquaresStatus(enum.IntEnum):
    """Why :func:`jaxcurv.least_squares` stopped; ``FTOL``, ``XTOL`` and ``GTOL`` are
    convergence, the others are not.

    Example:
      >>> from jaxcurv.least_squares_status import LeastSquaresStatus
      >>> LeastSquaresStatus.message(3)[:14]
      'not converged:'
    """

    FTOL = 0
    XTOL = 1
    GTOL = 2
    MAXITER = 3
    NONFINITE = 4
    STALLED = 5

    message = _Message()


_MESSAGES = {
    LeastSquaresStatus.FTOL: "converged (ftol): the actual and predicted relative "
    "reductions of the sum of squares are at most `ftol`.",
    LeastSquaresStatus.XTOL: "converged (xtol): the last step is at most `xtol` times the "
    "scaled norm of the parameters.",
    LeastSquaresStatus.GTOL: "converged (gtol): the residual is orthogonal to the "
    "Jacobian's columns to `gtol` (or zero).",
    LeastSquaresStatus.MAXITER: "not converged: `maxiter` steps were tried. Raise `maxiter`, "
    "or loosen `ftol`/`xtol`/`gtol`.",
    LeastSquaresStatus.NONFINITE: "not converged: the residual or its gradient is not "
    "finite at the returned parameters, so no step can be computed. Start elsewhere, or "
    "guard the residual (e.g. clip the argument of a log or sqrt).",
    LeastSquaresStatus.STALLED: "not converged: the damping reached `max_damping` and the "
    "step was still rejected; no step lowers the sum of squares in floating point. The "
    "point may be a minimum to working precision, or the problem badly scaled.",
}


class LeastSquaresResult(NamedTuple):
    """What :func:`jaxcurv.least_squares` returns: arrays only, so it passes through ``jit``.

    ``result.message`` says why it stopped; ``result.reason`` is the status's name in
    lower case (``"ftol"``, ``"maxiter"``, ...). Both need a concrete ``status``.
    """

    params: PyTree  # the last accepted point (the start if none was)
    value: jax.Array  # 0.5 * ||r||^2 at `params` (scipy's `cost`)
    residuals: PyTree  # r(params)
    gradient_norm: jax.Array  # max_j |(J^T r)_j| / (D_j ||r||) at the last linearization
    num_steps: jax.Array  # int32: steps tried (accepted or rejected), <= maxiter
    num_accepted: jax.Array  # int32: steps taken
    num_fev: jax.Array  # int32: residual evaluations (the start and every trial point)
    num_jev: jax.Array  # int32: linearizations (one per accepted point, plus the start)
    num_matvecs: jax.Array  # int32: products J^T J v in CG (one JVP and one VJP each)
    num_jvps: jax.Array  # int32: Jacobian-vector products forming columns of J
    damping: jax.Array  # the last lambda (relative to D^2)
    status: jax.Array  # int32 LeastSquaresStatus
    converged: jax.Array  # bool: status is FTOL, XTOL or GTOL
    dense: jax.Array  # bool: the damped systems were solved with the formed Jacobian

    @property
    def message(self) -> str:
        return LeastSquaresStatus.message(self.status)

    @property
    def reason(self) -> str:
        return LeastSquaresStatus(int(self.status)).name.lower()
