"""Hutchinson's estimators driven from the host: the trace (and Hutch++) and the diagonal.

The ``loop="host"`` paths of ``hutchinson_trace`` and ``hutchinson_diagonal``: Rademacher
probes drawn from NumPy, applied a block at a time by the product compiled once
(``jaxcurv._host_product``), the sums taken in float64.
"""

from __future__ import annotations

import math

import numpy as np

from jaxcurv._host_product import HostProduct, one_blas_thread, to_device

__all__ = ["host_diagonal", "host_trace"]


def _mean_and_stderr(samples: np.ndarray) -> tuple[float, float]:
    if samples.size < 2:
        return float(np.mean(samples)), math.inf
    return float(np.mean(samples)), float(np.std(samples, ddof=1) / math.sqrt(samples.size))


def _images(prod: HostProduct, Z: np.ndarray) -> np.ndarray:
    """``A z`` for every row of ``Z``, one block product per ``prod.rows`` rows."""
    starts = np.cumsum([0, *prod.chunks(Z.shape[0])])
    parts = [prod.block(Z[a:b]) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return np.concatenate(parts) if parts else np.zeros((0, prod.size))


def _quadratic_forms(prod: HostProduct, Z: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", Z, _images(prod, Z))


@one_blas_thread()
def host_trace(prod: HostProduct, rng, *, num_samples: int, method: str):
    """Hutchinson (or Hutch++) on the host: ``(estimate, stderr, num_matvecs)``.

    Hutch++ splits the products as the device path does: ``s // 3`` sketch probes, the
    exact trace on an orthonormal basis of their images (columns whose pivoted-QR weight is
    at the rounding level dropped), the rest Hutchinson on the deflated remainder. Probes
    are drawn a block at a time (the same stream as one by one) and applied in blocks of
    ``prod.rows``.
    """
    n, dt = prod.size, prod.dtype

    def rademacher(k):
        return rng.choice((-1.0, 1.0), (k, n))

    if method == "hutchinson":
        parts = [_quadratic_forms(prod, rademacher(k)) for k in prod.chunks(num_samples)]
        samples = np.concatenate(parts)
        est, err = _mean_and_stderr(samples)
        return to_device(est, dt), to_device(err, dt), to_device(num_samples, np.int32)
    r = num_samples // 3
    g = num_samples - 2 * r
    AS = _images(prod, np.concatenate([rademacher(k) for k in prod.chunks(r)]))
    Q, R = np.linalg.qr(AS.T)
    diag = np.abs(np.diag(R))
    Q = Q[:, diag > 100 * np.finfo(dt).eps * math.sqrt(r) * max(np.max(diag), 1e-300)]
    exact = float(np.sum(_quadratic_forms(prod, Q.T)))
    spent = r + Q.shape[1] + g  # the dropped columns cost no product here
    samples = []
    for k in prod.chunks(g):
        Z = rademacher(k)
        Z -= (Z @ Q) @ Q.T
        samples.append(_quadratic_forms(prod, Z))
    est, err = _mean_and_stderr(np.concatenate(samples))
    return to_device(exact + est, dt), to_device(err, dt), to_device(spent, np.int32)


@one_blas_thread()
def host_diagonal(prod: HostProduct, rng, *, num_samples: int):
    """Hutchinson's diagonal estimate on the host: ``(estimate, stderr, num_matvecs)``.

    ``estimate`` and ``stderr`` are pytrees like the domain, in its working dtype. Each
    block of ``z * A z`` is reduced to its mean and sum of squared deviations, merged
    into the running ones by Chan, Golub and LeVeque's update (float64): no cancellation,
    and exactly zero deviation where every probe agrees (a diagonal ``A``).
    """
    n = prod.size
    count, mean, m2 = 0, np.zeros(n), np.zeros(n)
    for k in prod.chunks(num_samples):
        Z = rng.choice((-1.0, 1.0), (k, n))
        X = Z * prod.block(Z)
        b_mean = X.mean(axis=0)
        b_m2 = np.sum((X - b_mean) ** 2, axis=0)
        delta, total = b_mean - mean, count + k
        mean = mean + delta * (k / total)
        m2 = m2 + b_m2 + delta**2 * (count * k / total)
        count = total
    if num_samples < 2:
        stderr = np.full(n, np.inf)
    else:
        stderr = np.sqrt(m2 / (num_samples * (num_samples - 1)))
    return (
        prod.unflatten(mean),
        prod.unflatten(stderr),
        to_device(num_samples, np.int32),
    )
