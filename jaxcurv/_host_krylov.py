"""Krylov loops driven from the host: only the product with ``A`` is compiled.

The default (``loop="device"``) compiles a whole Krylov run -- products, reorthogonalization,
restarts, the small eigen-solves -- into one XLA program: fastest per call, but its first
call waits for that compile (~2 s for thick-restart Lanczos on the project's 2-core CPU,
against ~0.2 s for the product alone). For a one-off analysis, ``loop="host"`` compiles
only the product ``v -> A v`` on one flat vector -- or, for the routines that run many
independent probes (SLQ, Hutchinson), its ``vmap`` over a block of probes run in
lockstep: one call per step of the block, not per probe -- (:func:`host_product`, once
per computation under the compile policy) and runs the recursion in NumPy, in float64: the
Gram-Schmidt passes over an ``m x N`` basis and the ``m x m`` eigen-solves are cheap next
to a product, and the Rayleigh-Ritz values come out slightly more accurate than in the
domain's precision.

The recursions mirror the device ones (``_lanczos``): Lanczos with full
reorthogonalization (classical Gram-Schmidt, a second pass by the DGKS criterion), a fresh
random direction where the Krylov space is exhausted (its coupling recorded as zero), and
Wu and Simon's thick restart, keeping the wanted Ritz vectors and half of the free room
next to them. ``T`` is the projection ``V^T A V`` from the Gram-Schmidt coefficients, so a
restarted basis needs no special arrowhead bookkeeping. The random vectors come from NumPy
seeded by the key's bits: a converged answer agrees with the device path's to ``tol``, not
bit for bit.

Everything here needs concrete values: the public routines fall back to the device loop
under a caller's ``jit``/``vmap``/``grad`` (when :func:`host_product` returns ``None``),
and the vectors are gathered into host memory (one process; ``(m + 1) N`` float64 for the
basis -- in the products' dtype for SLQ -- per probe of a block).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._compile import compiled_function, is_traced
from jaxcurv._precision import _working_dtype
from jaxcurv.products import CurvatureOperator, as_matvec

PyTree = Any

__all__ = [
    "block_rows",
    "host_diagonal",
    "host_eigenvalues",
    "host_product",
    "host_quadrature",
    "host_rng",
    "host_trace",
]

_DGKS = 1.0 / math.sqrt(2.0)


# The most memory one block of lockstep probes may hold (`HostProduct.rows`): their host
# state (an SLQ probe's (m + 1) x N float64 basis) plus, on the device, the block and its
# image and one copy of the operator's arrays per row -- the stand-in for the vmapped
# product's per-row intermediates: a linearization's tangent pass makes one tangent-sized
# copy of the activations it stores. 10 SLQ probes of 64 steps on 25k parameters are
# ~150 MB, one block; at ~400k parameters they are one probe per block, as before.
_BLOCK_BYTES = 256 * 2**20


class HostProduct:
    """``A`` as a map of flat NumPy vectors, and the domain's layout to go back to pytrees.

    ``rows`` is ``None`` for the product on one vector (``prod(v)``), else the rows of
    the one compiled block product (``prod.block(V)``, ``V`` of at most ``rows`` rows,
    zero-padded to ``rows``, so that every block runs the same program).
    """

    def __init__(self, call: Callable, example: PyTree, dtype: Any, rows: int | None = None):
        self._call, self.rows = call, rows
        self.leaves, self.treedef = jax.tree.flatten(example)
        self.shapes = [tuple(np.shape(leaf)) for leaf in self.leaves]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)
        self.dtype = np.dtype(dtype)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        if self.rows is not None:
            return self.block(np.asarray(v)[None])[0]
        return np.array(self._call(np.asarray(v, self.dtype)), np.float64)  # a writable copy

    def block(self, V: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
        """``A`` applied to each row of ``V`` (``(k, N)``), as a ``(k, N)`` array of ``dtype``."""
        k = V.shape[0]
        if self.rows is None:
            return np.stack([self(v) for v in V]).astype(dtype) if k else np.zeros((0, self.size))
        if k > self.rows:
            raise ValueError(f"a block of {k} rows where the product takes {self.rows}")
        padded = np.zeros((self.rows, self.size), self.dtype)
        padded[:k] = V
        return np.array(self._call(padded), dtype)[:k]

    def chunks(self, num: int) -> list[int]:
        """Row counts of the blocks that cover ``num`` vectors."""
        step = self.rows or 1
        return [min(step, num - i) for i in range(0, num, step)]

    def unflatten(self, rows: np.ndarray) -> PyTree:
        """Vectors ``rows`` (``(..., N)``) as a pytree whose leaves lead with ``...``."""
        rows = np.asarray(rows)
        out, start = [], 0
        for leaf, shape, size in zip(self.leaves, self.shapes, self.sizes, strict=True):
            part = rows[..., start : start + size].reshape((*rows.shape[:-1], *shape))
            out.append(_to_device(part, _working_dtype(leaf.dtype)))
            start += size
        return jax.tree.unflatten(self.treedef, out)


def _to_device(x: Any, dtype: Any) -> jax.Array:
    # `jax.device_put` of a NumPy array compiles nothing; `jnp.asarray` compiles a copy.
    return jax.device_put(np.asarray(x, dtype))


def _split(v: jax.Array, leaves: list) -> list:
    """The flat vector ``v`` cut into arrays shaped (and typed) like ``leaves``."""
    out, start = [], 0
    for leaf in leaves:
        size = math.prod(np.shape(leaf))
        out.append(v[start : start + size].reshape(np.shape(leaf)).astype(leaf.dtype))
        start += size
    return out


def block_rows(num: int, host_row_bytes: int, size: int, itemsize: int, op_bytes: int) -> int:
    """Rows per block for ``num`` lockstep vectors, balanced so the blocks are near equal.

    The largest ``k <= num`` with ``k * (host_row_bytes + 2 N itemsize + op_bytes) <=
    _BLOCK_BYTES`` (at least 1), then ``ceil(num / ceil(num / k))``: 10 vectors capped at
    8 run as two blocks of 5, not 8 and 2 padded to 8.
    """
    per_row = host_row_bytes + 2 * size * itemsize + op_bytes
    k = max(1, min(num, _BLOCK_BYTES // max(per_row, 1)))
    return -(-num // -(-num // k))


def host_product(
    A: Any, example: PyTree | None, checked: Callable, block: tuple[int, int] | None = None
) -> HostProduct | None:
    """``A`` applied to flat vectors (``ravel_pytree`` order), compiled once; or ``None``.

    ``checked(matvec, example) -> (matvec, example)`` is the routines' own shape check and
    working-precision wrapper (``_lanczos._matvec_checked``), applied inside the trace. An
    operator or matrix is an argument of the compiled product, a bare callable's arrays are
    hoisted (``jaxcurv._compile``), so a new operator of the same computation compiles
    nothing. ``None`` when something is traced (the caller then runs its device loop).

    ``block=(num, host_row_bytes)`` compiles instead the product on a ``(k, N)`` block,
    ``vmap`` of the one above (what ``A`` holds stays unbatched, so its matrix-vector
    products become matrix-matrix ones), ``k = block_rows(num, host_row_bytes, ...)``
    with the operator's (or matrix's) own bytes; a bare callable's arrays are not counted.
    Only the product the routine uses is compiled.
    """
    if isinstance(A, np.ndarray):
        A = jnp.asarray(A)
    if isinstance(A, CurvatureOperator):
        A = A._for_host()
    _, example = as_matvec(A, example)
    leaves, treedef = jax.tree.flatten(example)
    dtype = _working_dtype(jnp.result_type(*leaves))
    if is_traced(leaves):
        return None

    def product(A_, v):
        matvec, ex = checked(*as_matvec(A_, example))
        out = matvec(jax.tree.unflatten(treedef, _split(v, jax.tree.leaves(ex))))
        return jnp.concatenate([jnp.ravel(o).astype(dtype) for o in jax.tree.leaves(out)])

    n = sum(math.prod(np.shape(leaf)) for leaf in leaves)
    held = isinstance(A, CurvatureOperator | jax.Array)
    rows, fn, v0 = None, product, np.zeros(n, dtype)
    if block is not None:
        # A matrix's vmapped product is a matrix product: no per-row copy of it.
        op_bytes = sum(np.size(a) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(A)
                       ) if isinstance(A, CurvatureOperator) else 0  # fmt: skip
        rows = block_rows(block[0], block[1], n, np.dtype(dtype).itemsize, op_bytes)
        v0 = np.zeros((rows, n), dtype)

        def fn(A_, V):
            return jax.vmap(lambda v: product(A_, v))(V)

    if held:
        if is_traced(A):
            return None
        call = compiled_function(fn, A, v0)
        run = None if call is None else (lambda v: call(A, v))
    else:
        call = compiled_function(lambda v: fn(A, v), v0)
        run = call
    if run is None:
        return None
    return HostProduct(run, example, dtype, rows)


def host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by the bits of a JAX key (typed or legacy uint32)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        # The key's bits as stored (no program to compile), else through `key_data`.
        base = getattr(key, "_base_array", None)
        key = jax.random.key_data(key) if base is None else base
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


# ------------------------------------------------------------- BLAS threads


@functools.cache
def _openblas_thread_controls() -> tuple:
    """``(get, set)`` pairs of every OpenBLAS loaded in this process (NumPy's, SciPy's).

    Found as ``threadpoolctl`` finds them: the loaded shared objects named in
    ``/proc/self/maps`` (Linux; elsewhere none are found and nothing is changed).
    """
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return ()
    controls = []
    for path in sorted(p for p in paths if p.startswith("/")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    controls.append((get, put))
                    break
            else:
                continue
            break
    return tuple(controls)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """OpenBLAS on one thread for the block, as it was afterwards.

    Right after an XLA execution the CPU's cores are held by XLA's spinning worker
    threads; a threaded OpenBLAS call then waits for its own workers: measured on the
    project's 2-core machine, a 25k-entry dot product took 17 ms instead of 4 us and a
    64 x 64 ``eigh`` 96 ms instead of ~1 ms. The host loops' BLAS calls are small, so one
    thread is all they need.
    """
    controls = _openblas_thread_controls()
    before = [get() for get, _ in controls]
    for _, put in controls:
        put(1)
    try:
        yield
    finally:
        for (_, put), n in zip(controls, before, strict=True):
            put(n)


# ------------------------------------------------------------------------ Lanczos


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


@_one_blas_thread()
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
        p = keep.size
        if converged or single or not finite or spent + (m - p) > max_matvecs:
            break
        # Restart from the kept Ritz vectors and the residual direction V[m].
        V[:p] = S[:, keep].T @ V[:m]
        V[p] = V[m]
        T[:] = 0.0
        T[np.arange(p), np.arange(p)] = theta[keep]
        j0, restarts = p, restarts + 1
    X = S[:, idx].T @ V[:m]
    if method == "lanczos":
        res = np.maximum(estimate, (math.sqrt(n) + math.sqrt(m)) * eps * np.max(np.abs(theta)))
    else:
        W = np.stack([prod(x) for x in X]) if nw else np.zeros_like(X)
        spent += nw
        lam = np.einsum("ij,ij->i", X, W) / np.einsum("ij,ij->i", X, X)
        res = np.linalg.norm(W - lam[:, None] * X, axis=1)
        order = np.argsort(lam, kind="stable")
        lam, res, X = lam[order], res[order], X[order]
        converged = converged and bool(np.all(np.isfinite(lam)) and np.all(np.isfinite(res)))
    dt = prod.dtype
    return (
        _to_device(lam, dt),
        prod.unflatten(X) if vectors else None,
        _to_device(res, dt),
        _to_device(spent, np.int32),
        _to_device(converged, bool),
        _to_device(restarts, np.int32),
    )


@_one_blas_thread()
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
    return _to_device(nodes, prod.dtype), _to_device(weights, prod.dtype)


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


@_one_blas_thread()
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
        return _to_device(est, dt), _to_device(err, dt), _to_device(num_samples, np.int32)
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
    return _to_device(exact + est, dt), _to_device(err, dt), _to_device(spent, np.int32)


@_one_blas_thread()
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
        _to_device(num_samples, np.int32),
    )
