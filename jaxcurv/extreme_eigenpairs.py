"""Both ends of a Hessian's spectrum, each pair flagged converged or not, and the kind of
critical point they say ``x`` is: what :func:`jaxcurv.analyze_landscape` computes once and
reports, and classifies on (with :func:`jaxcurv.critical_points.critical_point_of_spectrum`,
:func:`jaxcurv.classify_critical_point`'s one rule), so the spectrum is never computed twice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv.eigensolvers import EigenResult, eigenvalues

__all__ = ["default_tol", "extreme_eigenpairs", "pair_flags"]


def default_tol(dtype) -> float:
    """:func:`jaxcurv.eigenvalues`' default relative residual for an operator of ``dtype``."""
    # jaxcurv.eigenvalues' default for an operator's products: tight enough that a float32
    # pair is good to about 1e-5 of its size, reachable above the products' rounding.
    finfo = jnp.finfo(dtype)
    return {64: 1e-8, 32: 1e-5}.get(finfo.bits, float(np.sqrt(finfo.eps)))


def extreme_eigenpairs(op, k, key, maxiter, tol, dense) -> tuple[EigenResult, jax.Array]:
    """Both ends of the spectrum and each pair's converged flag.

    Args:
      op: a :class:`jaxcurv.CurvatureOperator` (e.g. :func:`jaxcurv.hessian_operator`).
      k: pairs from each end; all ``N`` when dense or when ``2 k > N``.
      key: PRNG key of Lanczos' start vector.
      maxiter: the most products thick-restart Lanczos spends (at least ``2 k + 1``).
      tol: a pair converged when the solver's test passed for every pair (its stopping
        rule, on the recurrence residuals), or when its measured residual is at most ``tol
        * max(|lambda|, eps^(2/3) max_j |lambda_j|)`` plus the products' rounding, ``4
        sqrt(N) eps(dtype) max_j |lambda_j|``.
      dense: form the matrix and use ``eigh`` (every pair converged unless not finite).

    Returns:
      ``(EigenResult with eigenvectors, (num,) bool flags)``, ascending.

    Example (the seed's Hessian, eigenvalues -1 and 5: a saddle):
      >>> import jax, jax.numpy as jnp, jaxcurv
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> op = jaxcurv.hessian_operator(f, jnp.zeros(2))
      >>> eig, ok = extreme_eigenpairs(op, 1, jax.random.key(0), 10, 1e-5, dense=True)
      >>> eig.eigenvalues.round(4).tolist(), ok.tolist()
      ([-1.0, 5.0], [True, True])
    """
    n = op.size
    both = 2 * k <= n and not dense
    eig = eigenvalues(
        op,
        k if both else n,
        which="both" if both else "largest",
        key=key,
        method="thick-restart",
        tol=tol,
        return_eigenvectors=True,
        dense_threshold=n if dense else 0,
        # One vector more than the wanted pairs: a basis of just that size cannot restart.
        maxiter=max(maxiter, 2 * k + 1 if both else n),
    )
    if dense:  # eigh is backward stable: exact up to rounding unless the matrix is not finite
        return eig, jnp.broadcast_to(eig.converged, eig.eigenvalues.shape)
    dtype = op.dtype if hasattr(op, "dtype") else eig.eigenvalues.dtype
    return eig, pair_flags(eig, tol, n, dtype)


def pair_flags(eig: EigenResult, tol: float, size: int, dtype) -> jax.Array:
    r"""Per-pair converged flags of a Krylov ``eig``: the rule of :func:`extreme_eigenpairs`.

    A pair is converged when the solver's test passed for every pair, or when its measured
    residual is at most ``tol * max(|lambda|, eps^(2/3) max_j |lambda_j|)`` plus the
    products' rounding ``4 sqrt(size) eps(dtype) max_j |lambda_j|``; never when its
    eigenvalue or residual is not finite.

    Args:
      eig: an :class:`~jaxcurv.EigenResult` (``eigenvalues``, ``residual_norms``,
        ``converged``).
      tol: the relative residual the solver was asked for.
      size: ``N``, the operator's dimension.
      dtype: the dtype of the operator's products (their rounding).

    Returns:
      ``(num,)`` bool flags, in the order of ``eig.eigenvalues``.

    Example (float32, N = 100: a residual of 1e-5 on eigenvalue 1e-3 fails the relative
    test, 1e-8, but is below the products' rounding, ~4.8e-5 here; 1e-2 is not):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.eigensolvers import EigenResult
      >>> lam, res = jnp.array([1e-3, 1e-3, 10.0]), jnp.array([1e-5, 1e-2, 1e-5])
      >>> eig = EigenResult(lam, None, res, 0, jnp.bool_(False), 0)
      >>> pair_flags(eig, 1e-5, 100, jnp.float32).tolist()
      [True, False, True]
    """
    lam, res = eig.eigenvalues, eig.residual_norms
    eps = float(np.finfo(np.dtype(dtype)).eps)
    scale = jnp.max(jnp.abs(lam))
    floor = float(np.finfo(np.dtype(lam.dtype)).eps) ** (2.0 / 3.0) * scale
    # The residuals are measured from one product per pair, so they carry the products'
    # rounding, ~sqrt(N) eps ||A|| (Higham and Mary 2019's model; 0.2x that measured on MLP
    # Hessians and random matrices), which the iteration's test does not see: a pair
    # whose residual is within that of the criterion is as converged as the products
    # allow (e.g. a float32 eigenvalue near 0, whose relative criterion no product meets).
    rounding = 4.0 * np.sqrt(size) * eps * scale
    ok = res <= tol * jnp.maximum(jnp.abs(lam), floor) + rounding
    return (ok | eig.converged) & jnp.isfinite(lam) & jnp.isfinite(res)
