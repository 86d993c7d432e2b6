"""The eigenvalue of largest magnitude by power iteration (re-exported by ``eigensolvers``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import (
    check_bounded_int,
    check_key,
    check_non_negative,
    deprecated_keywords,
    renamed_keyword,
)
from jaxcurv._dispatch import _domain, _hold_fixed, _run
from jaxcurv._hellmann_feynman import _hellmann_feynman
from jaxcurv._lanczos import _matvec_checked, _normalize, _random_like, _real_dtype
from jaxcurv.tree import tree_norm, tree_scale, tree_sub, tree_vdot

PyTree = Any

__all__ = ["PowerIterationResult", "power_iteration"]


class PowerIterationResult(NamedTuple):
    """The eigenvalue of largest magnitude.

    Attributes:
      eigenvalue: scalar, signed (the Rayleigh quotient of ``eigenvector``).
      eigenvector: unit pytree like the domain.
      residual_norm: ``||A v - lambda v||``.
      num_matvecs: products with ``A`` spent (scalar int).
      converged: ``residual_norm <= tol * |eigenvalue|`` was reached within ``maxiter``
        (or ``A v = 0``), with both finite. False when the two extreme eigenvalues have
        nearly equal magnitude (``+-lambda``): power iteration cannot separate them; use
        ``eigenvalues(..., which="both")``. A NaN or inf stops the iteration, unconverged.
    """

    eigenvalue: jax.Array
    eigenvector: PyTree
    residual_norm: jax.Array
    num_matvecs: jax.Array
    converged: jax.Array


def _power_impl(A, matvec, example, key, *, maxiter, tol):
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)
    v, _ = _normalize(_random_like(key, example)[0])

    def step(v):
        w = matvec(v)
        lam = tree_vdot(v, w).astype(dtype)
        res = tree_norm(tree_sub(w, tree_scale(v, lam))).astype(dtype)
        return w, lam, res

    def cond(state):
        i, _, _, _, _, stop = state
        return (i < maxiter) & ~stop

    def body(state):
        i, v = state[:2]
        w, lam, res = step(v)
        finite = jnp.isfinite(lam) & jnp.isfinite(res)
        # A v = 0 (a zero operator) is an exact eigenpair too: stop there. A NaN or inf
        # never converges, and no further product can repair it: stop there as well.
        converged = finite & ((res <= tol * jnp.abs(lam)) | (tree_norm(w) == 0))
        stop = converged | ~finite
        v_next = jax.tree.map(lambda a, b: jnp.where(stop, a, b), v, _normalize(w)[0])
        return i + 1, v_next, lam, res, converged, stop

    zero, no = jnp.zeros((), dtype), jnp.asarray(False)
    init = (jnp.asarray(0), v, zero, jnp.full((), jnp.inf, dtype), no, no)
    i, v, lam, res, converged, _ = jax.lax.while_loop(cond, body, init)
    return PowerIterationResult(lam, v, res, i, converged)


@deprecated_keywords(num_iters="maxiter")
def power_iteration(
    A: Any,
    *,
    key: jax.Array | None = None,
    maxiter: int | None = None,
    tol: float = 1e-4,
    example: PyTree | None = None,
    num_iters: int | None = None,
) -> PowerIterationResult:
    r"""The eigenvalue of largest magnitude by power iteration.

    Repeats :math:`v \leftarrow A v / \|A v\|` and stops when the Rayleigh quotient
    :math:`\lambda = v^\top A v` has a small relative residual,
    :math:`\|A v - \lambda v\| \le \mathrm{tol}\, |\lambda|` (the eigenvalue itself is then
    accurate to about :math:`\mathrm{tol}^2 |\lambda|` relative to the spectral gap). It
    keeps a single vector, so it is the cheapest estimate of :math:`\|A\|_2` (e.g. the
    sharpness of a loss), but converges at the rate :math:`|\lambda_2 / \lambda_1|`; for
    several eigenvalues or close ones use ``eigenvalues``.
    ``eigenvalue`` is differentiable as ``eigenvalues``' are (:math:`v^\top dA\, v`).

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the starting vector; ``None`` uses ``jax.random.key(0)``.
      maxiter: the most products with ``A``; default 1000.
      tol: relative residual at which to stop.
      example: pytree shaped like the domain; required for a bare callable.
      num_iters: deprecated spelling of ``maxiter`` (``DeprecationWarning``).

    Returns:
      A ``PowerIterationResult`` (``eigenvalue``, ``eigenvector``, ``residual_norm``,
      ``num_matvecs``, ``converged``); float32 for a float16/bfloat16 domain.

    Raises:
      ValueError: ``maxiter < 1``, ``tol < 0``, a non-symmetric dense ``A``. TypeError: a
        non-integer ``maxiter``, a non-number ``tol``, a bad ``key``, both ``maxiter`` and
        ``num_iters``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> H = jnp.array([[2.0, 3.0], [3.0, 2.0]])
      >>> r = jaxcurv.power_iteration(H, key=jax.random.key(0))
      >>> round(float(r.eigenvalue), 4), bool(r.converged)
      (5.0, True)

    References:
      Golub and Van Loan, "Matrix Computations", 4th ed., section 7.3.1.
    """
    maxiter = renamed_keyword("power_iteration", "num_iters", num_iters, "maxiter", maxiter)
    maxiter = 1000 if maxiter is None else maxiter
    maxiter = check_bounded_int(
        "power_iteration(maxiter=...)", maxiter, low=1, fix="Pass a positive count."
    )
    check_non_negative("power_iteration(tol=...)", tol)
    key = jax.random.key(0) if key is None else check_key("power_iteration", key)
    A, example, _, _ = _domain("power_iteration", A, example)
    A_fixed, traced = _hold_fixed(A, example)
    result = _run(_power_impl, A_fixed, example, key, maxiter=maxiter, tol=float(tol))
    if not traced:
        return result
    vector = jax.tree.map(lambda a: a[None], result.eigenvector)
    lam = _hellmann_feynman(A, example, result.eigenvalue[None], vector)[0]
    return result._replace(eigenvalue=lam)
