"""Lanczos driven from the host: thick-restart eigenpairs and stochastic Lanczos quadrature.

The ``loop="host"`` recursions of ``eigenvalues`` and ``spectral_density`` /
``trace_function``, in NumPy around the product compiled once
(``jaxcurv._host_product``).

The recursions mirror the device ones (``_lanczos``): Lanczos with full
reorthogonalization (classical Gram-Schmidt, a second pass by the DGKS criterion), a fresh
random direction where the Krylov space is exhausted (its coupling recorded as zero), and
Wu and Simon's thick restart, keeping the wanted Ritz vectors and half of the free room
next to them. ``T`` is the projection ``V^T A V`` from the Gram-Schmidt coefficients, so a
restarted basis needs no special arrowhead bookkeeping. The random vectors come from NumPy
seeded by the key's bits: a converged answer agrees with the device path's to ``tol``, not
bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from jaxcurv._host_product import HostProduct, one_blas_thread, to_device

__all__ = ["host_eigenvalues", "host_quadrature"]

_DGKS = 1.0 / math.sqrt(2.0)


def _step(V, T, j, w, m, rng, anorm, eps):
    """Lanczos step ``j`` from ``w = A v_j`` (overwritten); returns ``(beta, anorm)``.

    ``T[:j + 1, j]`` gets the Gram-Schmidt coefficients of ``A v_j`` (its projection on the
    basis), ``T[j + 1, j]`` the norm of what is left, whose direction is row ``j + 1``.
    """
    basis = V[: j + 1]
    n_in = float(np.linalg.norm(w))
    anorm = max(anorm, n_in)
    h = basis @ w
    w -= basis.T @ h
    nrm = float(np.linalg.norm(w))
    if nrm < _DGKS * n_in:
        h2 = basis @ w
        w -= basis.T @ h2
        h += h2
        nrm = float(np.linalg.norm(w))
    T[: j + 1, j] = h
    T[j, : j + 1] = h
    beta, coupling = nrm, nrm
    if nrm <= 4.0 * eps * anorm:
        # The Krylov space is exhausted: go on along a fresh direction, uncoupled.
        w = rng.standard_normal(w.size)
        for _ in range(2):
            w -= basis.T @ (basis @ w)
        nrm, coupling = float(np.linalg.norm(w)), 0.0
    V[j + 1] = w / nrm if nrm > 0 else 0.0  # 0: the basis spans everything
    if j + 1 < m:
        T[j + 1, j] = T[j, j + 1] = coupling
    return beta, anorm


def _extend(mv, V, T, j0, m, rng, anorm, eps):
    """Lanczos steps ``j0 .. m-1`` on rows ``V[:j0 + 1]`` (``_step``); ``(beta, anorm)``."""
    beta = 0.0
    for j in range(j0, m):
        beta, anorm = _step(V, T, j, mv(V[j]), m, rng, anorm, eps)
    return beta, anorm


def _wanted(m: int, lo: int, hi: int, extra: int) -> np.ndarray:
    """Indices (into ``m`` ascending Ritz values) of the wanted pairs and ``extra`` more
    next to them, split between the wanted ends."""
    ends = (lo > 0) + (hi > 0)
    e_lo = extra // ends if lo else 0
    e_hi = extra - e_lo if hi else 0
    keep = list(range(lo + e_lo)) + list(range(m - hi - e_hi, m))
    return np.unique(np.asarray(keep, int))


def _restart(V, T, theta, S, keep) -> int:
    """Restart from the kept Ritz vectors and the residual direction ``V[m]``; the new ``j0``.

    Rows ``V[:p]`` become the ``p`` kept Ritz vectors, ``V[p]`` the residual direction, and
    ``T`` their projection: the kept Ritz values on its diagonal, zero elsewhere.
    """
    p, m = keep.size, T.shape[0]
    V[:p] = S[:, keep].T @ V[:m]
    V[p] = V[m]
    T[:] = 0.0
    T[np.arange(p), np.arange(p)] = theta[keep]
    return p


def _measured(prod: HostProduct, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Rayleigh quotients of the rows of ``X`` and their residuals ``||A x - lambda x||``
    measured, from one more product per row (float64 sums): ``(lam, res, X)``, ascending."""
    W = np.stack([prod(x) for x in X]) if len(X) else np.zeros_like(X)
    lam = np.einsum("ij,ij->i", X, W) / np.einsum("ij,ij->i", X, X)
    res = np.linalg.norm(W - lam[:, None] * X, axis=1)
    order = np.argsort(lam, kind="stable")
    return lam[order], res[order], X[order]


@one_blas_thread()
def host_eigenvalues(prod: HostProduct, rng, *, m, want, tol, max_matvecs, vectors,
                     method="thick-restart"):  # fmt: skip
    """Thick-restart Lanczos on the host; the fields of an ``EigenResult``.

    ``want = (lo, hi)`` pairs from the bottom and the top, a basis of ``m`` rows; stops when
    every wanted pair has ``|beta s_mj| <= tol * max(|theta_j|, eps^(2/3) max|theta|)`` or
    the next cycle would spend more than ``max_matvecs`` products; ``method="lanczos"``,
    ``m >= N`` or a basis no larger than the wanted pairs is one pass. The start is a
    normal vector from ``rng``. As on the device: for thick restart the returned values are
    the Rayleigh quotients of the Ritz vectors and the residuals ``||A v - lambda v||``
    measured, from one more product per pair (float64 sums here); for ``"lanczos"`` the Ritz
    values and ``|beta s_mj|`` floored at the recurrences' rounding, ``(sqrt(N) + sqrt(m))
    eps max|theta|``. Returns ``(eigenvalues, eigenvectors, residual_norms, num_matvecs,
    converged, num_restarts)``, ascending, as device arrays.
    """
    lo, hi = want
    nw, n = lo + hi, prod.size
    eps = float(np.finfo(prod.dtype).eps)
    single = method == "lanczos" or m >= n or m <= nw
    V = np.zeros((m + 1, n))
    v0 = rng.standard_normal(n)
    V[0] = v0 / np.linalg.norm(v0)
    T = np.zeros((m, m))
    j0, restarts, anorm, spent = 0, 0, 0.0, 0
    idx = np.concatenate([np.arange(lo), np.arange(m - hi, m)]).astype(int)
    while True:
        beta, anorm = _extend(prod, V, T, j0, m, rng, anorm, eps)
        spent += m - j0
        theta, S = np.linalg.eigh(0.5 * (T + T.T))
        lam, estimate = theta[idx], np.abs(beta * S[m - 1, idx])
        floor = eps ** (2.0 / 3.0) * np.max(np.abs(theta))
        finite = bool(np.all(np.isfinite(T)) and np.isfinite(beta))
        converged = finite and bool(np.all(estimate <= tol * np.maximum(np.abs(lam), floor)))
        keep = _wanted(m, lo, hi, max(m - 1 - nw, 0) // 2)
        if converged or single or not finite or spent + (m - keep.size) > max_matvecs:
            break
        j0, restarts = _restart(V, T, theta, S, keep), restarts + 1
    X = S[:, idx].T @ V[:m]
    if method == "lanczos":
        res = np.maximum(estimate, (math.sqrt(n) + math.sqrt(m)) * eps * np.max(np.abs(theta)))
    else:
        lam, res, X = _measured(prod, X)
        spent += nw
        converged = converged and bool(np.all(np.isfinite(lam)) and np.all(np.isfinite(res)))
    dt = prod.dtype
    return (
        to_device(lam, dt),
        prod.unflatten(X) if vectors else None,
        to_device(res, dt),
        to_device(spent, np.int32),
        to_device(converged, bool),
        to_device(restarts, np.int32),
    )


@one_blas_thread()
def host_quadrature(prod: HostProduct, rng, *, num_samples: int, m: int):
    """Stochastic Lanczos quadrature on the host: ``(nodes, weights)``, each
    ``(num_samples, m)``, one ``m``-point Gauss rule per Rademacher probe (rows of weights
    sum to one), as device arrays in the working dtype.

    The probes run in lockstep, ``prod.rows`` at a time: step ``j`` of every probe of a
    block is one block product, then each probe's own Gram-Schmidt pass. A block's start
    vectors are drawn together, which is the same stream as drawing them one by one; only
    a fresh direction after an exhausted Krylov space is drawn in another order.

    Unlike the eigen-solver's, the bases are kept in the products' own precision (float32
    for a float32 domain, as on the device): the Gram-Schmidt passes over ``num_samples``
    bases of ``(m + 1) x N`` are memory-bound, and float64 copies of float32 products
    doubled their cost (0.55 s of a 1.3 s call at 10 x 64 steps on 25k parameters) for
    nodes that are only as accurate as the products. ``T`` and its ``eigh`` stay float64.
    """
    n, dt = prod.size, prod.dtype
    eps = float(np.finfo(dt).eps)
    nodes, weights = np.zeros((num_samples, m)), np.zeros((num_samples, m))
    start = 0
    for k in prod.chunks(num_samples):
        V = np.zeros((k, m + 1, n), dt)
        V[:, 0] = rng.choice((-1.0, 1.0), (k, n)) / math.sqrt(n)
        T, anorm = np.zeros((k, m, m)), [0.0] * k
        for j in range(m):
            W = prod.block(V[:, j], dt)
            for i in range(k):
                _, anorm[i] = _step(V[i], T[i], j, W[i], m, rng, anorm[i], eps)
        theta, S = np.linalg.eigh(0.5 * (T + T.transpose(0, 2, 1)))
        nodes[start : start + k], weights[start : start + k] = theta, S[:, 0, :] ** 2
        start += k
    return to_device(nodes, prod.dtype), to_device(weights, prod.dtype)
