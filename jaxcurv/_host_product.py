"""The product with ``A`` compiled once on flat vectors, for Krylov loops run on the host.

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
domain's precision. The loops themselves are in ``jaxcurv._host_lanczos`` (thick-restart
Lanczos, SLQ) and ``jaxcurv._host_hutchinson`` (Hutchinson, Hutch++, the diagonal); this
module holds what they share: the product, its block size, the random generator, and
OpenBLAS held to one thread while a loop runs.

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
    "HostProduct",
    "block_rows",
    "host_product",
    "host_rng",
    "one_blas_thread",
    "to_device",
]


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
            out.append(to_device(part, _working_dtype(leaf.dtype)))
            start += size
        return jax.tree.unflatten(self.treedef, out)


def to_device(x: Any, dtype: Any) -> jax.Array:
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
    rows, fn, v0 = None, product, np.zeros(n, dtype)
    if block is not None:
        rows = _product_rows(A, block, n, dtype)
        v0 = np.zeros((rows, n), dtype)

        def fn(A_, V):
            return jax.vmap(lambda v: product(A_, v))(V)

    run = _compiled_run(fn, A, v0)
    if run is None:
        return None
    return HostProduct(run, example, dtype, rows)


def _product_rows(A: Any, block: tuple[int, int], n: int, dtype: Any) -> int:
    """The rows of ``host_product``'s block product: ``block_rows`` with ``A``'s bytes."""
    # A matrix's vmapped product is a matrix product: no per-row copy of it.
    op_bytes = sum(np.size(a) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(A)
                   ) if isinstance(A, CurvatureOperator) else 0  # fmt: skip
    return block_rows(block[0], block[1], n, np.dtype(dtype).itemsize, op_bytes)


def _compiled_run(fn: Callable, A: Any, v0: np.ndarray) -> Callable | None:
    """``v -> fn(A, v)``, compiled once; ``None`` when ``A`` is traced or the policy declines.

    An operator or matrix is an argument of the compiled program, a bare callable is closed
    over (``compiled_function`` hoists its arrays).
    """
    if isinstance(A, CurvatureOperator | jax.Array):
        if is_traced(A):
            return None
        call = compiled_function(fn, A, v0)
        return None if call is None else (lambda v: call(A, v))
    return compiled_function(lambda v: fn(A, v), v0)


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
def one_blas_thread() -> Iterator[None]:
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
