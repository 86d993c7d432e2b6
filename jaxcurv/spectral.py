r"""Spectra of curvature operators: Lanczos, power iteration, Hutchinson, SLQ, critical points.

Every routine here sees a symmetric matrix only through products ``v -> A v``, so it works
on Hessians and Gauss-Newton matrices of networks with millions of parameters, where the
matrix itself would never fit in memory:

* ``eigenvalues`` -- a few extreme eigenvalues (and eigenvectors) by thick-restart Lanczos
  (a small basis, restarted until the residuals meet ``tol``) or one pass of Lanczos, both
  with full reorthogonalization, or by a dense ``eigh`` when the problem is small;
* ``power_iteration`` -- the eigenvalue of largest magnitude, with the fewest vectors kept;
* ``hutchinson_trace`` / ``hutchinson_diagonal`` -- unbiased randomized estimates of the
  trace and the diagonal, and Hutch++ for a lower-variance trace;
* ``spectral_density`` -- the whole eigenvalue density by stochastic Lanczos quadrature,
  and ``trace_function`` -- :math:`\mathrm{tr} f(A)` (log-determinant, ``tr(A^2)``) from
  the same quadrature;
* ``classify_critical_point`` -- the seed's rule: at a point where the gradient vanishes,
  the signs of the Hessian's eigenvalues say minimum, maximum or saddle.

``A`` is given as a ``jaxcurv`` operator (``hessian_operator``, ``ggn_operator``: they know
their domain), a dense symmetric matrix, or a bare callable on pytrees together with
``example=``, a pytree shaped like the vectors it acts on. Vectors stay pytrees throughout:
a Krylov basis of ``m`` vectors is a pytree whose leaves have a leading axis of length
``m``. Every loop is a ``lax`` loop, each routine compiles once per configuration (pass the
same callable, or an operator, to reuse the compiled code), and randomness comes only from
the explicit ``key``.

The routines live in flat modules named after what they compute -- ``eigensolvers``,
``trace_estimators``, ``density``, ``critical_points`` -- over the shared Krylov machinery
of ``_lanczos``; this module re-exports them. Two rules hold for every routine. A dense
matrix must be symmetric up to rounding (else a ``ValueError`` says by how much it is not;
``_symmetry.check_symmetric_matrix``), and a float16 or bfloat16 domain is computed in
float32 -- vectors, inner products and the small eigenproblems; the operator's own products
stay in its dtype, a dense matrix is cast exactly -- with float32 results, as
``numpy.linalg.eigvalsh`` does for float16. No result reports ``converged`` with a NaN
or inf in it.
"""

from jaxcurv.critical_points import CriticalPoint as CriticalPoint
from jaxcurv.critical_points import classify_critical_point as classify_critical_point
from jaxcurv.density import SpectralDensity as SpectralDensity
from jaxcurv.density import spectral_density as spectral_density
from jaxcurv.density import trace_function as trace_function
from jaxcurv.eigensolvers import EigenResult as EigenResult
from jaxcurv.eigensolvers import PowerIterationResult as PowerIterationResult
from jaxcurv.eigensolvers import eigenvalues as eigenvalues
from jaxcurv.eigensolvers import power_iteration as power_iteration
from jaxcurv.trace_estimators import DiagonalEstimate as DiagonalEstimate
from jaxcurv.trace_estimators import TraceEstimate as TraceEstimate
from jaxcurv.trace_estimators import hutchinson_diagonal as hutchinson_diagonal
from jaxcurv.trace_estimators import hutchinson_trace as hutchinson_trace

__all__ = [
    "CriticalPoint",
    "DiagonalEstimate",
    "EigenResult",
    "PowerIterationResult",
    "SpectralDensity",
    "TraceEstimate",
    "classify_critical_point",
    "eigenvalues",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "power_iteration",
    "spectral_density",
    "trace_function",
]
