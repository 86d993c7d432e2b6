r"""A spectral (deflation) preconditioner for CG from eigenpairs of the curvature.

Given eigenpairs :math:`(\theta_i, u_i)_{i \le k}` of a symmetric :math:`B` (orthonormal
:math:`u_i`, e.g. the largest from :func:`jaxcurv.eigenvalues` with
``return_eigenvectors=True``), the limited-memory spectral preconditioner of the damped
system :math:`A = B + \lambda I` is

.. math:: M = I + \sum_{i=1}^k \Big(\frac{\sigma}{\theta_i + \lambda} - 1\Big) u_i u_i^\top,

so :math:`M A u_i = \sigma u_i` on the given pairs and :math:`M A = A` on their orthogonal
complement. With :math:`\sigma` the smallest of the :math:`\theta_i + \lambda` (the
default) the top of the spectrum collapses onto its edge and CG sees the condition number
:math:`(\theta_{k+1} + \lambda) / (\theta_{\min} + \lambda)` instead of :math:`(\theta_1 +
\lambda) / (\theta_{\min} + \lambda)`. It is symmetric positive definite for any
:math:`\sigma > 0` when the :math:`u_i` are orthonormal, so CG converges to the same
solution; approximate eigenpairs (unconverged Ritz pairs, or pairs of a neighbouring
system) cost iterations, never correctness.

It pays where the eigenpairs are reused: many right-hand sides against one operator
(influence functions, a Newton system per test point), or a Hessian-free run whose
curvature changes slowly between updates. Each application costs ``2k`` inner products of
the parameters' size, no product with :math:`B`.

References:
  S. Gratton, A. Sartenaer, J. Tshimanga. "On a class of limited memory preconditioners
  for large scale linear systems with multiple right-hand sides." SIAM J. Optim. 21(3),
  2011 (the spectral LMP, §3).
  Y. Saad, M. Yeung, J. Erhel, F. Guyomarc'h. "A deflated version of the conjugate
  gradient algorithm." SIAM J. Sci. Comput. 21(5), 2000.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_non_negative, check_positive, check_value
from jaxcurv._compile import is_traced

PyTree = Any

__all__ = ["SpectralPreconditioner", "spectral_preconditioner"]

_NAME = "spectral_preconditioner"


@jax.tree_util.register_pytree_node_class
class SpectralPreconditioner:
    r"""``M: r -> r + sum_i c_i (u_i . r) u_i``, SPD, for :func:`jaxcurv.cg` (``M=``).

    A pytree (passes ``jit``); build it with :func:`spectral_preconditioner`.

    Attributes:
      eigenvalues: the :math:`\theta_i`, ``(k,)``.
      eigenvectors: the :math:`u_i`, a pytree like the parameters with a leading ``k``
        axis on every leaf.
      damping: :math:`\lambda`.
      shift: :math:`\sigma`, what every :math:`\theta_i + \lambda` is mapped to.
    """

    def __init__(self, eigenvalues, eigenvectors, damping, shift):
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors
        self.damping, self.shift = damping, shift

    def tree_flatten(self):
        return (self.eigenvalues, self.eigenvectors, self.damping, self.shift), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(*children)

    @property
    def coefficients(self) -> jax.Array:
        r""":math:`c_i = \sigma / (\theta_i + \lambda) - 1`, ``(k,)``."""
        return self.shift / (self.eigenvalues + self.damping) - 1

    def __call__(self, r: PyTree) -> PyTree:
        # One pass over the stacked vectors for the k inner products, one for the update:
        # 2k length-N reductions, summed leafwise in the vectors' dtype.
        dots = sum(
            jnp.tensordot(u, x.astype(u.dtype), axes=x.ndim)
            for u, x in zip(jax.tree.leaves(self.eigenvectors), jax.tree.leaves(r), strict=True)
        )
        w = self.coefficients.astype(dots.dtype) * dots
        return jax.tree.map(
            lambda x, u: x + jnp.tensordot(w, u, axes=1).astype(x.dtype), r, self.eigenvectors
        )


def _pairs(eigenpairs: Any) -> tuple[jax.Array, PyTree]:
    fix = (
        "Pass the result of `jaxcurv.eigenvalues(..., return_eigenvectors=True)` or a pair "
        "`(eigenvalues, eigenvectors)`."
    )
    vals = getattr(eigenpairs, "eigenvalues", None)
    vecs = getattr(eigenpairs, "eigenvectors", None)
    if vals is None and isinstance(eigenpairs, tuple) and len(eigenpairs) == 2:
        vals, vecs = eigenpairs
    if vals is None or vecs is None:
        kind = "an EigenResult without eigenvectors" if vals is not None else "no eigenpairs"
        raise TypeError(f"`{_NAME}(eigenpairs)` needs eigenvectors; got {kind}. {fix}")
    vals = jnp.asarray(vals)
    check_value(
        vals.ndim == 1 and vals.size > 0,
        f"{_NAME}(eigenpairs)",
        vals.shape,
        "a non-empty 1-D array of eigenvalues",
        fix=fix,
    )
    for leaf in jax.tree.leaves(vecs):
        check_value(
            jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[0] == vals.size,
            f"{_NAME}(eigenpairs)",
            jnp.shape(leaf),
            f"eigenvector leaves with a leading axis of {vals.size} (one per eigenvalue)",
            fix=fix,
        )
    return vals, vecs


def spectral_preconditioner(
    eigenpairs: Any, *, damping: jax.typing.ArrayLike, shift: jax.typing.ArrayLike | None = None
) -> SpectralPreconditioner:
    r"""The spectral preconditioner of :math:`B + \lambda I` from eigenpairs of ``B``.

    Args:
      eigenpairs: an :class:`~jaxcurv.EigenResult` with eigenvectors (``eigenvalues(...,
        return_eigenvectors=True)``) or a pair ``(eigenvalues, eigenvectors)``: ``(k,)``
        values and a pytree whose leaves carry a leading ``k`` axis, orthonormal.
      damping: :math:`\lambda \ge 0`, the damping of the CG solve (may be traced).
      shift: :math:`\sigma > 0`; default the smallest :math:`\theta_i + \lambda`.

    Returns:
      A :class:`SpectralPreconditioner`, ``M(r)`` on pytrees like one eigenvector.

    Raises:
      TypeError: no eigenvectors.
      ValueError: eigenvalues not a non-empty 1-D array or eigenvector leaves without a
        matching leading axis; ``damping`` negative or not finite; ``shift`` not positive;
        (concrete values) some :math:`\theta_i + \lambda \le 0`, where the damped system
        is not positive definite and CG does not apply.

    Example (``A = diag(1, ..., 10)``, its top three eigenpairs: ``M`` maps 8, 9, 10 to 8,
    so ``M A`` has the eigenvalues 1, ..., 8 and CG on it ends in at most 8 steps):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> A = jnp.diag(jnp.arange(1.0, 11.0))
      >>> top = jaxcurv.eigenvalues(A, 3, return_eigenvectors=True)
      >>> M = jaxcurv.spectral_preconditioner(top, damping=0.0)
      >>> [round(float(c), 4) for c in M.coefficients]  # 8/8 - 1, 8/9 - 1, 8/10 - 1
      [0.0, -0.1111, -0.2]
      >>> round(float(M(A @ jnp.eye(10)[9])[9]), 4)  # M A u = 8 u on the top eigenvector
      8.0

    With :func:`jaxcurv.hessian_free`, eigenpairs computed once and reused:
    ``hessian_free(preconditioner=lambda p, lam, **kw: spectral_preconditioner(top,
    damping=lam))``.
    """
    vals, vecs = _pairs(eigenpairs)
    dtype = jnp.result_type(*jax.tree.leaves(vecs))
    if not is_traced(damping):
        check_non_negative(
            f"{_NAME}(damping=...)",
            damping,
            finite=True,
            fix="Pass the damping of the CG solve, e.g. `damping=1e-3`.",
        )
    if shift is not None and not is_traced(shift):
        check_positive(f"{_NAME}(shift=...)", shift, finite=True)
    damped = vals.astype(dtype) + jnp.asarray(damping, dtype)
    if not is_traced(damped):
        low = float(jnp.min(damped))
        check_value(
            low > 0,
            f"{_NAME}(eigenpairs)",
            float(f"{low:.3g}"),
            "such that min(eigenvalue + damping) > 0 (CG needs a positive-definite system)",
            fix="Deflate the largest eigenpairs of a positive semi-definite curvature (GGN, "
            "Fisher) or raise `damping`.",
        )
    sigma = jnp.min(damped) if shift is None else jnp.asarray(shift, dtype)
    return SpectralPreconditioner(vals.astype(dtype), vecs, jnp.asarray(damping, dtype), sigma)
