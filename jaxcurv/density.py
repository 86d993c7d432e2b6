"""The eigenvalue density, and traces of matrix functions, by stochastic Lanczos quadrature."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import (
    check_bounded_int,
    check_callable,
    check_key,
    check_positive,
    deprecated_keywords,
    renamed_keyword,
)
from jaxcurv._dispatch import _domain, _run
from jaxcurv._lanczos import (
    _lanczos,
    _matvec_checked,
    _mean_and_stderr,
    _normalize,
    _probe_keys,
    _random_like,
    _real_dtype,
    _tridiagonal_eigh,
)
from jaxcurv._precision import _working_dtype
from jaxcurv.trace_estimators import TraceEstimate
from jaxcurv.tree import tree_size

PyTree = Any

__all__ = ["SpectralDensity", "spectral_density", "trace_function"]


class SpectralDensity(NamedTuple):
    """A stochastic Lanczos quadrature estimate of the eigenvalue density.

    Attributes:
      grid: ``(num_grid,)`` eigenvalue positions.
      density: ``(num_grid,)`` Gaussian-smoothed density on ``grid``; integrates to one
        when the grid covers the spectrum (the default grid does).
      nodes: ``(num_samples, num_steps)`` Ritz values of each probe's Lanczos run.
      weights: ``(num_samples, num_steps)`` quadrature weights; each row sums to one, and
        ``mean_p sum_j weights[p, j] * g(nodes[p, j])`` estimates ``tr(g(A)) / N``.
      sigma: the smoothing width used (eigenvalue units).
      num_matvecs: products with ``A`` spent, ``num_samples * num_steps`` (scalar int).
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array
    sigma: jax.Array
    num_matvecs: jax.Array | None = None


def _quadrature(matvec, example, key, num_samples, m):
    """``(nodes, weights)``, each ``(num_samples, m)``: one Lanczos Gauss rule per probe."""

    def probe(kk):
        z, seed = _random_like(kk, example, "rademacher")
        alphas, betas, _ = _lanczos(matvec, _normalize(z)[0], m, seed)
        theta, S = _tridiagonal_eigh(alphas, betas)
        return theta, S[0] ** 2

    return jax.lax.map(probe, _probe_keys(key, num_samples))


def _slq_impl(A, matvec, example, key, grid, *, num_samples, m, num_grid, sigma):
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)
    nodes, weights = _quadrature(matvec, example, key, num_samples, m)
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    if sigma is None:
        width = hi - lo
        scale = jnp.maximum(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), jnp.finfo(dtype).tiny)
        sig = jnp.where(width > 0, 0.01 * width, 0.01 * scale)
    else:
        sig = jnp.asarray(sigma, dtype)
    if grid is None:
        grid = jnp.linspace(lo - 5 * sig, hi + 5 * sig, num_grid, dtype=dtype)
    diff = (grid[:, None, None] - nodes[None]) / sig
    kernel = jnp.exp(-0.5 * diff**2) / (sig * math.sqrt(2 * math.pi))
    density = jnp.sum(kernel * weights[None], axis=(1, 2)) / num_samples
    spent = jnp.asarray(num_samples * m, jnp.int32)
    return SpectralDensity(grid, density, nodes, weights, sig, spent)


@deprecated_keywords(num_probes="num_samples", num_lanczos="num_steps")
def spectral_density(
    A: Any,
    key: jax.Array,
    *,
    num_samples: int | None = None,
    num_steps: int | None = None,
    grid: jax.typing.ArrayLike | None = None,
    num_grid: int = 512,
    sigma: float | None = None,
    example: PyTree | None = None,
    num_probes: int | None = None,
    num_lanczos: int | None = None,
) -> SpectralDensity:
    r"""Eigenvalue density of ``A`` by stochastic Lanczos quadrature (SLQ).

    For a unit Rademacher probe :math:`v`, ``m`` Lanczos steps give the ``m``-point Gauss
    quadrature of the spectral measure :math:`\mu_v = \sum_i (v^\top u_i)^2
    \delta_{\lambda_i}`: nodes :math:`\theta_j` (Ritz values) and weights
    :math:`\tau_j = (e_1^\top s_j)^2`, exact for polynomials up to degree :math:`2m-1`.
    Averaged over probes, :math:`\mu_v` is an unbiased estimate of the eigenvalue density
    :math:`\frac1N \sum_i \delta_{\lambda_i}`; convolving with a Gaussian of width
    ``sigma`` gives a smooth density that integrates to one.

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the probes.
      num_samples: independent probes (each one Lanczos run of ``num_steps`` products);
        default 10.
      num_steps: Lanczos steps per probe (a fixed number); default ``min(N, 64)``.
      grid: 1-D points at which to evaluate the density; default ``num_grid`` points
        covering all nodes plus five ``sigma`` on each side.
      num_grid: grid size when ``grid`` is not given.
      sigma: Gaussian smoothing width in eigenvalue units; default 1% of the spread of the
        nodes.
      example: pytree shaped like the domain; required for a bare callable.
      num_probes: deprecated spelling of ``num_samples`` (``DeprecationWarning``).
      num_lanczos: deprecated spelling of ``num_steps`` (``DeprecationWarning``).

    Returns:
      A ``SpectralDensity`` (``grid``, ``density``, ``nodes``, ``weights``, ``sigma``,
      ``num_matvecs``),
      float32 for a float16/bfloat16 domain. A NaN or inf in ``A`` shows as NaN nodes and
      density, never as a finite-looking one.

    Raises:
      ValueError: non-positive counts, ``num_steps > N``, a non-1-D ``grid``, ``sigma <=
      0``, a non-symmetric dense ``A``. TypeError: a bad ``key``, non-integer counts, a
      non-number ``sigma``, a keyword given in both its new and its deprecated spelling.

    Example (the quadrature reproduces the mean eigenvalue, ``tr(A) / N``, exactly):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.arange(1.0, 101.0))
      >>> d = jaxcurv.spectral_density(D, jax.random.key(0), num_samples=4, num_steps=20)
      >>> round(float(jnp.mean(jnp.sum(d.weights * d.nodes, axis=1))), 2)
      50.5

    References:
      Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
      quadrature", SIAM J. Matrix Anal. Appl. 2017.
      Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via
      Hessian eigenvalue density", ICML 2019.
    """
    f = "spectral_density"
    num_samples = renamed_keyword(f, "num_probes", num_probes, "num_samples", num_samples)
    num_samples = 10 if num_samples is None else num_samples
    num_steps = renamed_keyword(f, "num_lanczos", num_lanczos, "num_steps", num_steps)
    key = check_key("spectral_density", key)
    A, example, n, dtype = _domain("spectral_density", A, example)
    num_samples = check_bounded_int(
        "spectral_density(num_samples=...)", num_samples, low=1, fix="Pass a positive count."
    )
    if num_steps is None:
        num_steps = min(n, 64)
    num_steps = check_bounded_int(
        "spectral_density(num_steps=...)",
        num_steps,
        low=1,
        high=n,
        fix=f"A Krylov space has at most N={n} dimensions.",
    )
    num_grid = check_bounded_int(
        "spectral_density(num_grid=...)", num_grid, low=2, fix="Pass at least two points."
    )
    if grid is not None:
        grid = jnp.asarray(grid, _working_dtype(dtype))
        if grid.ndim != 1:
            raise ValueError(f"`spectral_density(grid=...)` must be 1-D, got shape {grid.shape}.")
    if sigma is not None:
        check_positive("spectral_density(sigma=...)", sigma)
        sigma = float(sigma)
    return _run(
        _slq_impl,
        A,
        example,
        key,
        grid,
        num_samples=num_samples,
        m=num_steps,
        num_grid=num_grid,
        sigma=sigma,
    )


def _trace_impl(A, matvec, example, key, *, f, num_samples, m):
    matvec, example = _matvec_checked(matvec, example)
    nodes, weights = _quadrature(matvec, example, key, num_samples, m)
    values = jnp.asarray(f(nodes)).astype(nodes.dtype)
    # A node of zero weight (after a Lanczos breakdown) contributes nothing, even where
    # f is infinite there.
    terms = jnp.where(weights > 0, weights * values, 0)
    samples = tree_size(example) * jnp.sum(terms, axis=1)
    estimate, stderr = _mean_and_stderr(samples)
    return TraceEstimate(estimate, stderr, jnp.asarray(num_samples * m, jnp.int32))


def trace_function(
    A: Any,
    key: jax.Array,
    f: Callable[[jax.Array], jax.Array],
    *,
    num_samples: int = 10,
    num_steps: int | None = None,
    example: PyTree | None = None,
) -> TraceEstimate:
    r"""Randomized estimate of :math:`\mathrm{tr} f(A)` by stochastic Lanczos quadrature.

    Each Rademacher probe :math:`z` gives ``num_steps`` Lanczos nodes :math:`\theta_j` and
    weights :math:`\tau_j` (as in ``spectral_density``), and :math:`N \sum_j \tau_j
    f(\theta_j)` is the Gauss quadrature of :math:`z^\top f(A) z` (:math:`\|z\|^2 = N`);
    the estimate is the mean over probes. ``f = jnp.log`` gives :math:`\log\det A` of an
    SPD ``A``, ``f = lambda t: t**2`` gives :math:`\mathrm{tr}(A^2) = \|A\|_F^2`.

    Error against :math:`\mathrm{tr} f(A)`, two parts. The Hutchinson part, unbiased, with
    variance :math:`2 (\|f(A)\|_F^2 - \sum_i f(A)_{ii}^2) / s` for ``s`` probes: the
    returned ``stderr`` estimates it. The quadrature part: an ``m``-node Gauss rule
    integrates polynomials of degree :math:`\le 2m - 1` exactly and its nodes lie in
    :math:`[\lambda_{\min}, \lambda_{\max}]`, so per probe it is at most :math:`2 N
    E_{2m-1}(f)`, :math:`E_d` the best uniform error of a degree-``d`` polynomial on that
    interval; for ``f`` analytic inside the Bernstein ellipse :math:`E_\rho` of the interval
    with :math:`|f| \le M` there, :math:`E_d \le 2 M \rho^{-d} / (\rho - 1)` (Trefethen,
    "Approximation Theory and Approximation Practice", thm. 8.2). For ``log`` on an SPD
    matrix of condition number :math:`\kappa`, :math:`\rho` is just below
    :math:`(\sqrt\kappa + 1) / (\sqrt\kappa - 1)` (Ubaru, Chen and Saad 2017, sec. 4):
    with a moderate :math:`\kappa` a few dozen steps leave only the Hutchinson part. A
    polynomial ``f`` of degree :math:`\le 2m - 1` has no quadrature error at all.

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the probes.
      f: the function, applied elementwise to an array of nodes (``jnp.log``, ``jnp.exp``,
        ``lambda t: t ** 2``); real and finite on the spectrum.
      num_samples: probes (each one Lanczos run of ``num_steps`` products); default 10.
      num_steps: Lanczos steps per probe; default ``min(N, 64)``.
      example: pytree shaped like the domain; required for a bare callable.

    Returns:
      A ``TraceEstimate`` (``estimate``, ``stderr``, ``num_matvecs = num_samples *
      num_steps``); ``stderr`` is ``inf`` for one probe. NaN where ``f`` is NaN at a node
      (``log`` of a matrix that is not positive definite).

    Raises:
      ValueError: non-positive counts, ``num_steps > N``, a non-symmetric dense ``A``.
      TypeError: ``f`` not callable, non-integer counts, a bad ``key``.

    Example (:math:`\log\det` and :math:`\mathrm{tr}(A^2)` of ``diag(1, ..., 50)``;
    exact for a diagonal matrix, whose probes all see the same spectrum):
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.arange(1.0, 51.0))
      >>> logdet = jaxcurv.trace_function(D, jax.random.key(0), jnp.log, num_steps=50)
      >>> bool(np.isclose(logdet.estimate, np.sum(np.log(np.arange(1, 51))), rtol=1e-5))
      True
      >>> sq = jaxcurv.trace_function(D, jax.random.key(0), lambda t: t**2, num_steps=2)
      >>> round(float(sq.estimate)), int(sq.num_matvecs)
      (42925, 20)

    References:
      Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
      quadrature", SIAM J. Matrix Anal. Appl. 2017.
      Golub and Meurant, "Matrices, Moments and Quadrature with Applications", 2010.
    """
    check_callable("trace_function(f)", f, fix="Pass an elementwise function, e.g. jnp.log.")
    key = check_key("trace_function", key)
    A, example, n, _ = _domain("trace_function", A, example)
    num_samples = check_bounded_int(
        "trace_function(num_samples=...)", num_samples, low=1, fix="Pass a positive count."
    )
    num_steps = min(n, 64) if num_steps is None else num_steps
    num_steps = check_bounded_int(
        "trace_function(num_steps=...)",
        num_steps,
        low=1,
        high=n,
        fix=f"A Krylov space has at most N={n} dimensions.",
    )
    return _run(_trace_impl, A, example, key, f=f, num_samples=num_samples, m=num_steps)
