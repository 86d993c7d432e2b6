"""Independent oracles shared by the tests: float64 finite differences and random data."""

from __future__ import annotations

import contextlib

import jax
import numpy as np


def fd_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite-difference gradient of a scalar numpy function, in float64."""
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def fd_jacobian(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite-difference Jacobian (outputs flattened x inputs flattened), float64."""
    x = np.asarray(x, dtype=np.float64)
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        cols.append((np.ravel(f(x + e)) - np.ravel(f(x - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


def fd_hessian(f, x: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Central second differences of a scalar function, float64, symmetrized."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei = np.zeros(n)
            ej = np.zeros(n)
            ei[i] = eps
            ej[j] = eps
            h[i, j] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (
                4 * eps * eps
            )
    return 0.5 * (h + h.T)


def random_symmetric(rng: np.random.Generator, eigenvalues) -> np.ndarray:
    """A dense symmetric matrix with the given spectrum (random orthogonal basis)."""
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    q, _ = np.linalg.qr(rng.standard_normal((eigenvalues.size, eigenvalues.size)))
    return (q * eigenvalues) @ q.T


def plain_lanczos_ritz(A: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """Textbook Lanczos without reorthogonalization (the thing that makes ghosts)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(A.shape[0]).astype(A.dtype)
    v /= np.linalg.norm(v)
    v_prev, beta, alphas, betas = np.zeros_like(v), 0.0, [], []
    for _ in range(m):
        w = A @ v - beta * v_prev
        alpha = w @ v
        w = w - alpha * v
        beta = np.linalg.norm(w)
        alphas.append(alpha)
        betas.append(beta)
        v_prev, v = v, w / beta
    T = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    return np.linalg.eigvalsh(T.astype(np.float64))


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Counts XLA backend compilations inside the block (``jax.monitoring`` events)."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == _COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
