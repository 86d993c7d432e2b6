"""The eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_bounded_int, check_key
from jaxcurv._dispatch import _domain, _run
from jaxcurv._lanczos import (
    _lanczos,
    _matvec_checked,
    _normalize,
    _probe_keys,
    _random_like,
    _real_dtype,
    _tridiagonal_eigh,
)
from jaxcurv._precision import _working_dtype

PyTree = Any

__all__ = ["SpectralDensity", "spectral_density"]


class SpectralDensity(NamedTuple):
    """A stochastic Lanczos quadrature estimate of the eigenvalue density.

    Attributes:
      grid: ``(num_grid,)`` eigenvalue positions.
      density: ``(num_grid,)`` Gaussian-smoothed density on ``grid``; integrates to one
        when the grid covers the spectrum (the default grid does).
      nodes: ``(num_probes, num_lanczos)`` Ritz values of each probe's Lanczos run.
      weights: ``(num_probes, num_lanczos)`` quadrature weights; each row sums to one, and
        ``mean_p sum_j weights[p, j] * g(nodes[p, j])`` estimates ``tr(g(A)) / N``.
      sigma: the smoothing width used (eigenvalue units).
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array
    sigma: jax.Array


def _slq_impl(A, matvec, example, key, grid, *, num_probes, m, num_grid, sigma):
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)

    def probe(kk):
        z, seed = _random_like(kk, example, "rademacher")
        alphas, betas, _ = _lanczos(matvec, _normalize(z)[0], m, seed)
        theta, S = _tridiagonal_eigh(alphas, betas)
        return theta, S[0] ** 2

    nodes, weights = jax.lax.map(probe, _probe_keys(key, num_probes))
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
    density = jnp.sum(kernel * weights[None], axis=(1, 2)) / num_probes
    return SpectralDensity(grid, density, nodes, weights, sig)


def spectral_density(
    A: Any,
    key: jax.Array,
    *,
    num_probes: int = 10,
    num_lanczos: int | None = None,
    grid: jax.typing.ArrayLike | None = None,
    num_grid: int = 512,
    sigma: float | None = None,
    example: PyTree | None = None,
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
      num_probes: independent probes (each one Lanczos run of ``num_lanczos`` products).
      num_lanczos: Lanczos steps per probe; default ``min(N, 64)``.
      grid: 1-D points at which to evaluate the density; default ``num_grid`` points
        covering all nodes plus five ``sigma`` on each side.
      num_grid: grid size when ``grid`` is not given.
      sigma: Gaussian smoothing width in eigenvalue units; default 1% of the spread of the
        nodes.
      example: pytree shaped like the domain; required for a bare callable.

    Returns:
      A ``SpectralDensity`` (``grid``, ``density``, ``nodes``, ``weights``, ``sigma``),
      float32 for a float16/bfloat16 domain. A NaN or inf in ``A`` shows as NaN nodes and
      density, never as a finite-looking one.

    Raises:
      ValueError: non-positive counts, ``num_lanczos > N``, a non-1-D ``grid``, ``sigma <=
      0``, a non-symmetric dense ``A``. TypeError: a bad ``key``.

    Example (the quadrature reproduces the mean eigenvalue, ``tr(A) / N``, exactly):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.arange(1.0, 101.0))
      >>> d = jaxcurv.spectral_density(D, jax.random.key(0), num_probes=4, num_lanczos=20)
      >>> round(float(jnp.mean(jnp.sum(d.weights * d.nodes, axis=1))), 2)
      50.5

    References:
      Ubaru, Chen and Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos
      quadrature", SIAM J. Matrix Anal. Appl. 2017.
      Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via
      Hessian eigenvalue density", ICML 2019.
    """
    key = check_key("spectral_density", key)
    A, example, n, dtype = _domain("spectral_density", A, example)
    num_probes = check_bounded_int(
        "spectral_density(num_probes=...)", num_probes, low=1, fix="Pass a positive count."
    )
    if num_lanczos is None:
        num_lanczos = min(n, 64)
    num_lanczos = check_bounded_int(
        "spectral_density(num_lanczos=...)",
        num_lanczos,
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
        if not sigma > 0:
            raise ValueError(f"`spectral_density(sigma=...)` must be positive, got {sigma!r}.")
        sigma = float(sigma)
    return _run(
        _slq_impl,
        A,
        example,
        key,
        grid,
        num_probes=num_probes,
        m=num_lanczos,
        num_grid=num_grid,
        sigma=sigma,
    )
