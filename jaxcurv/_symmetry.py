"""The one symmetry check of every solver that assumes a symmetric matrix.

``eigenvalues``, ``power_iteration``, ``hutchinson_*``, ``spectral_density`` and ``cg``
call ``check_symmetric_matrix`` on a concrete dense ``A``; the tolerance is what rounding
explains for an ``n x n`` matrix (``_symmetry_tolerance``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._precision import _working_dtype

__all__ = ["check_symmetric_matrix"]


# An n x n dense matrix counts as symmetric when max|A - A^T| is at most
# max(_SYM_PER_ROW * n, _SYM_FLOOR) epsilons of max|A|, and never above _SYM_CAP of it
# (derivation in `_symmetry_tolerance`).
_SYM_PER_ROW, _SYM_FLOOR, _SYM_CAP = 2, 32, 0.1


@jax.jit
def _asymmetry(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``max |A - A^T|`` and ``max |A|`` over finite entries, in at least float32."""
    A = A.astype(_working_dtype(A.dtype))
    finite = jnp.isfinite(A)
    diff = jnp.where(finite & finite.T, jnp.abs(A - A.T), 0)
    return jnp.max(diff), jnp.max(jnp.where(finite, jnp.abs(A), 0))


def _symmetry_tolerance(n: int, dtype: Any) -> float:
    r"""Largest ``max|A - A^T| / max|A|`` that rounding explains for an ``n x n`` matrix.

    An entry formed as a sum of ``n`` products -- a Gram or Gauss-Newton matrix
    :math:`J^\top J`, a Hessian by automatic differentiation -- errs by at most
    :math:`\gamma_n \approx n u` (``u = eps / 2``) times the sum of its terms' magnitudes
    (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, section 3.1), and for
    a Gram matrix that sum is at most :math:`\sqrt{A_{ii} A_{jj}} \le \max|A|`
    (Cauchy-Schwarz). So two mirrored entries differ by at most :math:`2\gamma_n \max|A|
    \approx n\,\epsilon \max|A|`; the tolerance is twice that, at least ``32 eps`` (small
    matrices from longer computations) and at most ``0.1`` (where ``n eps`` is no longer
    small, in bfloat16, no rounding is taken to excuse an asymmetry of 10%).
    """
    eps = float(jnp.finfo(dtype).eps)
    return min(max(_SYM_PER_ROW * n, _SYM_FLOOR) * eps, _SYM_CAP)


def check_symmetric_matrix(name: str, A: Any, *, fix: str) -> None:
    """Raise a ``ValueError`` when a concrete dense ``A`` is not symmetric beyond rounding.

    The one symmetry check of every solver that assumes a symmetric matrix (``eigenvalues``,
    ``power_iteration``, ``hutchinson_*``, ``spectral_density``, ``cg``); the tolerance is
    ``_symmetry_tolerance``. A matrix traced by the caller's ``jit`` or ``vmap`` cannot be
    inspected and is not checked. Non-finite entries are left to the solver, which reports
    them (``converged=False``, ``NONFINITE``) rather than calling them asymmetric.
    """
    if isinstance(A, jax.core.Tracer) or not isinstance(A, (jax.Array, np.ndarray)):
        return
    if A.ndim != 2 or A.shape[0] != A.shape[1] or not jnp.issubdtype(A.dtype, jnp.floating):
        return  # as_matvec says what is wrong with the shape or the dtype
    # Evaluated now even inside the compile policy's trace, where `A` is a constant.
    with jax.ensure_compile_time_eval():
        diff, size = (float(v) for v in _asymmetry(jnp.asarray(A)))
    tol = _symmetry_tolerance(A.shape[0], A.dtype)
    if diff > tol * size:
        raise ValueError(
            f"`{name}`: the dense matrix `A` is not symmetric: max|A - A^T| / max|A| = "
            f"{diff:.3g} / {size:.3g} = {diff / size:.3g}, more than rounding explains (at "
            f"most {tol:.2g} for a {A.shape[0]} x {A.shape[0]} {A.dtype} matrix). {fix}"
        )
