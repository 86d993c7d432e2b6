"""The eigenvalue density, and traces of matrix functions, by stochastic Lanczos quadrature."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import (
    check_bounded_int,
    check_callable,
    check_key,
    check_option,
    check_positive,
    deprecated_keywords,
    renamed_keyword,
)
from jaxcurv._compile import compiled_call
from jaxcurv._dispatch import LOOPS, _domain, _on_host, _run
from jaxcurv._host_lanczos import host_quadrature
from jaxcurv._lanczos import (
    _lanczos,
    _matvec_checked,
    _mean_and_stderr,
    _normalize,
    _probe_keys,
    _random_like,
    _tridiagonal_eigh,
)
from jaxcurv._precision import _working_dtype
from jaxcurv.trace_estimators import TraceEstimate
from jaxcurv.tree import tree_size

PyTree = Any

__all__ = ["SpectralDensity", "default_sigma", "spectral_density", "trace_function"]


# Papyan (2020, app. D.2; after Lin, Saad and Yang 2016, sec. 3.2): m Gauss nodes on
# [-1, 1] sit about h = 2 / (m - 1) apart, and a bump of width h / sqrt(8 ln kappa) has
# fallen to 1/kappa of its peak half-way to the next node, so neighbouring bumps merge
# into a smooth curve without blurring it further; kappa = 3. The spectrum is mapped to
# [-1, 1] with a 5% margin on each side: in eigenvalue units that is 1.1 (hi - lo) / 2
# per unit, hence the 1.1 below. This is what curvlinops' `lanczos_approximate_spectrum`
# uses by default; Wasserstein-1 to the exact spectrum in benchmarks/spectral_accuracy.py.
_KAPPA = 3.0
_MARGIN = 0.05


def default_sigma(nodes: jax.Array) -> jax.Array:
    r"""The default smoothing width for SLQ nodes of ``m`` Lanczos steps each.

    :math:`\sigma = (1 + 2 \cdot 0.05)\, (\theta_{\max} - \theta_{\min}) / ((m - 1)
    \sqrt{8 \ln 3})` (Papyan 2020, app. D.2, after Lin, Saad and Yang 2016): the mean
    spacing of ``m`` Gauss nodes over the spread of all nodes, with 5% margins, divided
    by :math:`\sqrt{8 \ln \kappa}`, :math:`\kappa = 3`, so a bump has fallen to a third
    of its peak half-way to the next node. 0.59% of the spread at 64 steps, 1.2% at 32.
    When every node is equal the spread is replaced by their magnitude (tiny if zero).

    Args:
      nodes: ``(num_samples, m)`` Ritz values, as ``SpectralDensity.nodes``.

    Returns:
      A scalar of ``nodes``' dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.density import default_sigma
      >>> round(float(default_sigma(jnp.linspace(0.0, 1.0, 64)[None])), 5)
      0.00589
    """
    return _sigma(jnp.asarray(nodes), jnp)


def _sigma(nodes, xp):
    """``default_sigma`` in the array module ``xp`` (``jnp``, or ``np`` on the host)."""
    m = nodes.shape[-1]
    lo, hi = xp.min(nodes), xp.max(nodes)
    width = hi - lo
    scale = xp.maximum(xp.maximum(xp.abs(lo), xp.abs(hi)), xp.finfo(nodes.dtype).tiny)
    factor = (1 + 2 * _MARGIN) / (max(m - 1, 1) * math.sqrt(8 * math.log(_KAPPA)))
    return factor * xp.where(width > 0, width, scale)


def _smooth_impl(nodes, weights, sigma, grid, *, num_grid, xp=jnp):
    """The Gaussian-smoothed density on ``grid`` (default: nodes +- 5 sigma), in ``xp``."""
    dtype = nodes.dtype
    sig = _sigma(nodes, xp) if sigma is None else xp.asarray(sigma, dtype)
    if grid is None:
        lo, hi = xp.min(nodes), xp.max(nodes)
        grid = xp.linspace(lo - 5 * sig, hi + 5 * sig, num_grid, dtype=dtype)
    diff = (grid[:, None, None] - nodes[None]) / sig
    kernel = xp.exp(-0.5 * diff**2) / (sig * math.sqrt(2 * math.pi))
    density = xp.sum(kernel * weights[None], axis=(1, 2)) / nodes.shape[0]
    return grid, density, sig


def _check_grid(name: str, grid: Any, dtype) -> jax.Array | None:
    if grid is None:
        return None
    grid = jnp.asarray(grid, dtype)
    if grid.ndim != 1:
        raise ValueError(
            f"`{name}(grid=...)` must be 1-D, got shape {grid.shape}. Pass the eigenvalue "
            "positions as one vector, e.g. jnp.linspace(lo, hi, 512)."
        )
    return grid


def _smoothed(name, nodes, weights, spent, *, sigma, grid, num_grid, host=False):
    """A ``SpectralDensity`` from the quadrature: compiled apart from the Lanczos runs, with
    ``sigma`` and ``grid`` as arguments, so a new width or grid never compiles again.

    ``host=True`` (``loop="host"``) smooths in NumPy instead, in float64 on the nodes and
    weights as returned: a one-off answer need not wait for the smoothing's compile.
    """
    if sigma is not None:
        check_positive(f"{name}(sigma=...)", sigma)
        sigma = float(sigma) if host else jnp.asarray(float(sigma), nodes.dtype)
    grid = _check_grid(name, grid, nodes.dtype)
    if host:
        dtype = nodes.dtype
        out = _smooth_impl(
            np.asarray(nodes, np.float64),
            np.asarray(weights, np.float64),
            sigma,
            None if grid is None else np.asarray(grid, np.float64),
            num_grid=num_grid,
            xp=np,
        )
        out = [jax.device_put(np.asarray(a, dtype)) for a in out]
    else:
        out = compiled_call(
            lambda n, w, s, g: _smooth_impl(n, w, s, g, num_grid=num_grid),
            nodes, weights, sigma, grid,
        )  # fmt: skip
    return SpectralDensity(out[0], out[1], nodes, weights, out[2], spent)


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

    def smooth(
        self,
        sigma: float | None = None,
        *,
        grid: jax.typing.ArrayLike | None = None,
        num_grid: int | None = None,
    ) -> SpectralDensity:
        """The same quadrature smoothed with another width or on another grid.

        Only ``nodes`` and ``weights`` are used: no product with ``A``, and the Lanczos
        runs are not compiled again (the smoothing is a small program of its own, with
        ``sigma`` and ``grid`` as arguments: a new width compiles nothing).

        Args:
          sigma: Gaussian width in eigenvalue units; default ``default_sigma(nodes)``.
          grid: 1-D points; default ``num_grid`` points over the nodes +- 5 ``sigma``.
          num_grid: grid size when ``grid`` is not given; default the current grid's.

        Returns:
          A ``SpectralDensity`` with the same ``nodes``, ``weights`` and ``num_matvecs``.

        Example:
          >>> import jax, jax.numpy as jnp
          >>> import jaxcurv
          >>> d = jaxcurv.spectral_density(jnp.diag(jnp.arange(1.0, 51.0)), jax.random.key(0))
          >>> wide = d.smooth(sigma=2.0)
          >>> float(wide.sigma), bool(jnp.all(wide.nodes == d.nodes))
          (2.0, True)
        """
        num_grid = self.grid.shape[0] if num_grid is None else num_grid
        num_grid = check_bounded_int(
            "SpectralDensity.smooth(num_grid=...)", num_grid, low=2, fix="Pass at least two points."
        )
        return _smoothed(
            "SpectralDensity.smooth",
            jnp.asarray(self.nodes),
            jnp.asarray(self.weights),
            self.num_matvecs,
            sigma=sigma,
            grid=grid,
            num_grid=num_grid,
        )


def _quadrature(matvec, example, key, num_samples, m):
    """``(nodes, weights)``, each ``(num_samples, m)``: one Lanczos Gauss rule per probe."""

    def probe(kk):
        z, seed = _random_like(kk, example, "rademacher")
        alphas, betas, _ = _lanczos(matvec, _normalize(z)[0], m, seed)
        theta, S = _tridiagonal_eigh(alphas, betas)
        return theta, S[0] ** 2

    return jax.lax.map(probe, _probe_keys(key, num_samples))


def _slq_impl(A, matvec, example, key, *, num_samples, m):
    matvec, example = _matvec_checked(matvec, example)
    return _quadrature(matvec, example, key, num_samples, m)


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
    loop: str = "device",
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
      sigma: Gaussian smoothing width in eigenvalue units; default ``default_sigma(nodes)``,
        Papyan's (2020) width for ``num_steps`` nodes: ``1.1 * spread / ((num_steps - 1) *
        sqrt(8 ln 3))``, 0.59% of the spread of the nodes at 64 steps. The smoothing runs
        apart from the Lanczos runs: ``d.smooth(sigma=..., grid=...)`` re-smooths a result
        without products, and a new ``sigma`` here compiles nothing new either.
      example: pytree shaped like the domain; required for a bare callable.
      loop: where the Krylov loop runs. ``"device"`` (the default) compiles the whole run
        into one program: fastest per call, one compile per configuration. ``"host"``
        compiles only the product with ``A`` and runs the recursion in NumPy (bases in
        the domain's precision, at least float32, as on the device; the small
        eigenproblems in float64; ``jaxcurv._host_lanczos``; the probes in lockstep,
        one compiled product on a block of them per step): for a one-off analysis,
        the first answer in a fraction of the compile time. Same method, options and
        result; the probes come from NumPy seeded by ``key``, so the estimate is another
        draw of the same estimator, not the same number. Under a caller's
        ``jit``/``vmap``/``grad`` it runs the device loop.
      num_probes: deprecated spelling of ``num_samples`` (``DeprecationWarning``).
      num_lanczos: deprecated spelling of ``num_steps`` (``DeprecationWarning``).

    Returns:
      A ``SpectralDensity`` (``grid``, ``density``, ``nodes``, ``weights``, ``sigma``,
      ``num_matvecs``; ``.smooth(sigma=..., grid=...)`` re-smooths it at no cost),
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
    grid = _check_grid("spectral_density", grid, _working_dtype(dtype))
    if sigma is not None:
        check_positive("spectral_density(sigma=...)", sigma)
    loop = check_option("spectral_density(loop=...)", loop, LOOPS)
    host = _on_host(loop, A, example, key, block=(num_samples, (num_steps + 1) * n * 8))
    if host is not None:
        nodes, weights = host_quadrature(*host, num_samples=num_samples, m=num_steps)
    else:
        nodes, weights = _run(_slq_impl, A, example, key, num_samples=num_samples, m=num_steps)
    spent = jax.device_put(np.int32(num_samples * num_steps))  # no program, unlike jnp's
    return _smoothed("spectral_density", nodes, weights, spent, sigma=sigma, grid=grid,
                     num_grid=num_grid, host=host is not None)  # fmt: skip


def _rule_trace(nodes, weights, f, n, spent):
    """``TraceEstimate`` of ``tr f(A)`` from the Gauss rules ``(nodes, weights)``."""
    values = jnp.asarray(f(nodes)).astype(nodes.dtype)
    # A node of zero weight (after a Lanczos breakdown) contributes nothing, even where
    # f is infinite there.
    terms = jnp.where(weights > 0, weights * values, 0)
    estimate, stderr = _mean_and_stderr(n * jnp.sum(terms, axis=1))
    return TraceEstimate(estimate, stderr, jnp.asarray(spent, jnp.int32))


def _trace_impl(A, matvec, example, key, *, f, num_samples, m):
    matvec, example = _matvec_checked(matvec, example)
    nodes, weights = _quadrature(matvec, example, key, num_samples, m)
    return _rule_trace(nodes, weights, f, tree_size(example), num_samples * m)


def trace_function(
    A: Any,
    key: jax.Array,
    f: Callable[[jax.Array], jax.Array],
    *,
    num_samples: int = 10,
    num_steps: int | None = None,
    example: PyTree | None = None,
    loop: str = "device",
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
      loop: where the Krylov loop runs. ``"device"`` (the default) compiles the whole run
        into one program: fastest per call, one compile per configuration. ``"host"``
        compiles only the product with ``A`` and runs the recursion in NumPy (bases in
        the domain's precision, at least float32, as on the device; the small
        eigenproblems in float64; ``jaxcurv._host_lanczos``; the probes in lockstep,
        one compiled product on a block of them per step): for a one-off analysis,
        the first answer in a fraction of the compile time. Same method, options and
        result; the probes come from NumPy seeded by ``key``, so the estimate is another
        draw of the same estimator, not the same number. Under a caller's
        ``jit``/``vmap``/``grad`` it runs the device loop.

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
    loop = check_option("trace_function(loop=...)", loop, LOOPS)
    host = _on_host(loop, A, example, key, block=(num_samples, (num_steps + 1) * n * 8))
    if host is None:
        return _run(_trace_impl, A, example, key, f=f, num_samples=num_samples, m=num_steps)
    nodes, weights = host_quadrature(*host, num_samples=num_samples, m=num_steps)
    spent = num_samples * num_steps
    # The rules' post-processing, `f` included, as one small program (the compile policy).
    return compiled_call(lambda t, w: _rule_trace(t, w, f, n, spent), nodes, weights)
