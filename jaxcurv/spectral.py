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
* ``spectral_density`` -- the whole eigenvalue density by stochastic Lanczos quadrature;
* ``classify_critical_point`` -- the seed's rule: at a point where the gradient vanishes,
  the signs of the Hessian's eigenvalues say minimum, maximum or saddle.

``A`` is given as a ``jaxcurv`` operator (``hessian_operator``, ``ggn_operator``: they know
their domain), a dense symmetric matrix, or a bare callable on pytrees together with
``example=``, a pytree shaped like the vectors it acts on. Vectors stay pytrees throughout:
a Krylov basis of ``m`` vectors is a pytree whose leaves have a leading axis of length
``m``. Every loop is a ``lax`` loop, each routine compiles once per configuration (pass the
same callable, or an operator, to reuse the compiled code), and randomness comes only from
the explicit ``key``.

Two rules hold for every routine. A dense matrix must be symmetric up to rounding (else a
``ValueError`` says by how much it is not; ``_check_symmetric_matrix``), and a float16 or
bfloat16 domain is computed in float32 -- vectors, inner products and the small
eigenproblems; the operator's own products stay in its dtype, a dense matrix is cast
exactly -- with float32 results, as ``numpy.linalg.eigvalsh`` does for float16. No
result reports ``converged`` with a NaN or inf in it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcurv._compile import compiled_call
from jaxcurv.derivatives import _check_real_inputs
from jaxcurv.products import CurvatureOperator, as_matvec, hessian_operator
from jaxcurv.tree import (
    tree_all_finite,
    tree_check_like,
    tree_norm,
    tree_scale,
    tree_size,
    tree_sub,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)

PyTree = Any

__all__ = [
    "CriticalPoint",
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
]

_WHICH = ("largest", "smallest", "both")
_EIG_METHODS = ("auto", "thick-restart", "lanczos")
_TRACE_METHODS = ("hutchinson", "hutch++")
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- results


class EigenResult(NamedTuple):
    """Extreme eigenpairs of a symmetric operator.

    Attributes:
      eigenvalues: ``(k,)`` (``(2k,)`` for ``which="both"``), sorted ascending.
      eigenvectors: ``None`` unless requested; else a pytree like the domain whose leaves
        carry a leading axis of the same length: ``eigenvectors[j]`` (leafwise) belongs to
        ``eigenvalues[j]``. Unit norm, mutually orthogonal.
      residual_norms: ``||A v_j - lambda_j v_j||`` per eigenpair, the convergence
        diagnostic. For Lanczos it is the classical ``|beta_m s_{m j}|`` (no extra
        products), which equals the true residual of the Ritz pair up to rounding, about
        ``eps * ||A||`` (full reorthogonalization keeps it so); for the dense path it is
        computed from the matrix. An eigenvalue with residual ``r`` is within ``r`` of a
        true eigenvalue.
      num_matvecs: products with ``A`` spent (``N`` to form a matrix-free operator densely,
        ``0`` for a dense matrix given as ``A``).
      converged: scalar bool, every pair met ``residual_norms <= tol * max(|lambda|,
        eps^(2/3) ||T||)``; on the dense path (``eigh`` is backward stable), true unless a
        NaN or inf is in the matrix. Never true when an eigenvalue or residual is not
        finite. Thick restart stops there; when it ran out of ``num_iters`` first (or met a
        NaN) this is false and the pairs are the best so far.
      num_restarts: thick restarts performed (``0`` for one pass of Lanczos and dense).
    """

    eigenvalues: jax.Array
    eigenvectors: PyTree | None
    residual_norms: jax.Array
    num_matvecs: jax.Array
    converged: jax.Array
    num_restarts: jax.Array


class PowerIterationResult(NamedTuple):
    """The eigenvalue of largest magnitude.

    Attributes:
      eigenvalue: scalar, signed (the Rayleigh quotient of ``eigenvector``).
      eigenvector: unit pytree like the domain.
      residual_norm: ``||A v - lambda v||``.
      num_matvecs: products with ``A`` spent (scalar int).
      converged: ``residual_norm <= tol * |eigenvalue|`` was reached within ``num_iters``
        (or ``A v = 0``), with both finite. False when the two extreme eigenvalues have
        nearly equal magnitude (``+-lambda``): power iteration cannot separate them; use
        ``eigenvalues(..., which="both")``. A NaN or inf stops the iteration, unconverged.
    """

    eigenvalue: jax.Array
    eigenvector: PyTree
    residual_norm: jax.Array
    num_matvecs: jax.Array
    converged: jax.Array


class TraceEstimate(NamedTuple):
    """A randomized trace estimate.

    Attributes:
      estimate: scalar estimate of ``tr(A)``.
      stderr: its estimated standard error (the sample standard deviation of the random
        part over the square root of its number of probes); ``~68%`` of estimates fall
        within one ``stderr`` of the truth.
      num_matvecs: products with ``A`` spent (scalar int).
    """

    estimate: jax.Array
    stderr: jax.Array
    num_matvecs: jax.Array


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


class CriticalPoint(NamedTuple):
    """What kind of point ``x`` is, and the evidence.

    Attributes:
      kind: ``"minimum"``, ``"maximum"``, ``"saddle"``, ``"degenerate"`` or
        ``"not critical"``.
      eigenvalues: the Hessian eigenvalues used, ascending: all ``N`` on the dense path,
        the ``k`` smallest and ``k`` largest on the Lanczos path.
      gradient_norm: ``||grad f(x)||``.
      value: ``f(x)``.
      num_positive, num_negative, num_zero: eigenvalue counts by sign, with "zero" meaning
        ``|lambda| <= eig_tol * max|lambda|``. Exact on the dense path; on the Lanczos path
        known only when every eigenvalue has one sign (else ``None``).
      method: ``"dense"`` or ``"lanczos"``.
      reason: a sentence saying why ``kind`` was chosen.
    """

    kind: str
    eigenvalues: jax.Array
    gradient_norm: jax.Array
    value: jax.Array
    num_positive: int | None
    num_negative: int | None
    num_zero: int | None
    method: str
    reason: str


# ----------------------------------------------------------------------------- checks


def _check_int(name: str, value: Any, *, low: int, high: int | None = None, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}: {value!r}.")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"`{name}` must be {bounds}, got {value}. {fix}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


def _check_key(name: str, key: Any) -> jax.Array:
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.shape(key) == ():
            return key
    elif dtype == jnp.uint32 and jnp.shape(key) == (2,):
        return key
    raise TypeError(
        f"`{name}(key=...)` must be a single JAX PRNG key such as `jax.random.key(0)`, "
        f"got {type(key).__name__}{'' if dtype is None else ' of dtype ' + str(dtype)}"
        f"{'' if dtype is None else ' and shape ' + str(jnp.shape(key))}."
    )


# An n x n dense matrix counts as symmetric when max|A - A^T| is at most
# max(_SYM_PER_ROW * n, _SYM_FLOOR) epsilons of max|A|, and never above _SYM_CAP of it
# (derivation in `_symmetry_tolerance`).
_SYM_PER_ROW, _SYM_FLOOR, _SYM_CAP = 2, 32, 0.1
_EIG_FIX = (
    "If the asymmetry is rounding or noise, pass its symmetric part `(A + A.T) / 2`; for a "
    "non-symmetric matrix use `numpy.linalg.eig`, which does not assume symmetry."
)


@jax.jit
def _asymmetry(A: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``max |A - A^T|`` and ``max |A|`` over finite entries, in at least float32."""
    A = A.astype(_working_dtype(A.dtype))
    finite = jnp.isfinite(A)
    diff = jnp.where(finite & finite.T, jnp.abs(A - A.T), 0)
    return jnp.max(diff), jnp.max(jnp.where(finite, jnp.abs(A), 0))


def _symmetry_tolerance(n: int, dtype: Any) -> float:
    r"""Largest ``max|A - A^T| / max|A|`` that rounding explains for an ``n x n`` matrix.

    An entry formed as a sum of ``n`` products -- a Gram or Gauss-Newton matrix
    :math:`J^\top J`, a Hessian by automatic differentiation -- errs by at most
    :math:`\gamma_n \approx n u` (``u = eps / 2``) times the sum of its terms' magnitudes
    (Higham, "Accuracy and Stability of Numerical Algorithms", 2002, section 3.1), and for
    a Gram matrix that sum is at most :math:`\sqrt{A_{ii} A_{jj}} \le \max|A|`
    (Cauchy-Schwarz). So two mirrored entries differ by at most :math:`2\gamma_n \max|A|
    \approx n\,\epsilon \max|A|`; the tolerance is twice that, at least ``32 eps`` (small
    matrices from longer computations) and at most ``0.1`` (where ``n eps`` is no longer
    small, in bfloat16, no rounding is taken to excuse an asymmetry of 10%).
    """
    eps = float(jnp.finfo(dtype).eps)
    return min(max(_SYM_PER_ROW * n, _SYM_FLOOR) * eps, _SYM_CAP)


def _check_symmetric_matrix(name: str, A: Any, *, fix: str) -> None:
    """Raise a ``ValueError`` when a concrete dense ``A`` is not symmetric beyond rounding.

    The one symmetry check of every solver that assumes a symmetric matrix (``eigenvalues``,
    ``power_iteration``, ``hutchinson_*``, ``spectral_density``, ``cg``); the tolerance is
    ``_symmetry_tolerance``. A matrix traced by the caller's ``jit`` or ``vmap`` cannot be
    inspected and is not checked. Non-finite entries are left to the solver, which reports
    them (``converged=False``, ``NONFINITE``) rather than calling them asymmetric.
    """
    if isinstance(A, jax.core.Tracer) or not isinstance(A, (jax.Array, np.ndarray)):
        return
    if A.ndim != 2 or A.shape[0] != A.shape[1] or not jnp.issubdtype(A.dtype, jnp.floating):
        return  # as_matvec says what is wrong with the shape or the dtype
    # Evaluated now even inside the compile policy's trace, where `A` is a constant.
    with jax.ensure_compile_time_eval():
        diff, size = (float(v) for v in _asymmetry(jnp.asarray(A)))
    tol = _symmetry_tolerance(A.shape[0], A.dtype)
    if diff > tol * size:
        raise ValueError(
            f"`{name}`: the dense matrix `A` is not symmetric: max|A - A^T| / max|A| = "
            f"{diff:.3g} / {size:.3g} = {diff / size:.3g}, more than rounding explains (at "
            f"most {tol:.2g} for a {A.shape[0]} x {A.shape[0]} {A.dtype} matrix). {fix}"
        )


# ---------------------------------------------------------------- low precision


def _is_low_precision(dtype: Any) -> bool:
    """float16 and bfloat16: no ``eigh`` for them, and float16 overflows at 65504."""
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _working_dtype(dtype: Any) -> Any:
    """The dtype the arithmetic runs in: float32 for float16/bfloat16, else ``dtype``."""
    return jnp.dtype(jnp.float32) if _is_low_precision(dtype) else jnp.dtype(dtype)


def _to_working(tree: PyTree) -> PyTree:
    """``tree`` with float16/bfloat16 leaves cast to float32 (exactly); others unchanged."""
    return jax.tree.map(lambda a: jnp.asarray(a, _working_dtype(jnp.result_type(a))), tree)


def _has_low_precision(*trees: PyTree) -> bool:
    return any(_is_low_precision(jnp.result_type(a)) for t in trees for a in jax.tree.leaves(t))


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    return jax.tree.map(lambda t, lk: jnp.asarray(t).astype(jnp.result_type(lk)), tree, like)


def _scaled_product(fn: Callable, v: PyTree, in_like: PyTree, out_like: PyTree) -> PyTree:
    """``fn(v)`` with ``v`` rounded to ``in_like``'s dtypes and the result cast to ``out_like``'s.

    For a float16/bfloat16 ``fn``: ``v`` is first divided by its largest magnitude and the
    product multiplied back in the working precision -- exact by linearity -- so that
    neither a small vector (a late CG direction, a unit vector of a large space) drops
    below float16's smallest normal number, 6.1e-5, where precision is lost, nor a large
    one overflows at 65504.
    """
    mags = [jnp.max(jnp.abs(a)) for a in jax.tree.leaves(v) if jnp.size(a)]
    if not mags:
        return _cast_like(fn(_cast_like(v, in_like)), out_like)
    s = functools.reduce(jnp.maximum, mags)
    s = jnp.where((s > 0) & jnp.isfinite(s), s, jnp.ones_like(s))
    w = fn(_cast_like(tree_scale(v, 1.0 / s), in_like))
    return tree_scale(_cast_like(w, out_like), s)


def _working_matvec(matvec: Callable, example: PyTree) -> tuple[Callable, PyTree]:
    """``(matvec, example)`` that compute in float32 when the domain is float16/bfloat16.

    The products still run in the domain's dtype (all a float16 operator can do); the
    vectors, inner products and small eigenproblems around them run in float32.
    """
    if not _has_low_precision(example):
        return matvec, example
    work = _to_working(example)
    return (lambda v: _scaled_product(matvec, v, example, work)), work


def _domain(name: str, A: Any, example: PyTree | None) -> tuple[Any, PyTree, int, Any]:
    """Validate ``A`` eagerly; return it (ready for ``_run``), its domain, size and dtype.

    A dense matrix is checked for symmetry (``_check_symmetric_matrix``) and a float16 or
    bfloat16 one is cast to float32, which holds it exactly, so its products are exact too.
    The returned dtype is the domain's own, before any such cast.
    """
    if isinstance(A, np.ndarray):
        A = jnp.asarray(A)
    if isinstance(A, jax.Array):
        _check_symmetric_matrix(f"{name}(A)", A, fix=_EIG_FIX)
    _, example = as_matvec(A, example)
    leaves = jax.tree.leaves(example)
    if not leaves:
        raise ValueError(f"`{name}`: the domain of `A` has no arrays, got example={example!r}.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(example):
        if not hasattr(leaf, "dtype"):
            where = jax.tree_util.keystr(path) or "<root>"
            raise TypeError(
                f"`{name}(example=...)` must be a pytree of arrays shaped like the vectors `A` "
                f"acts on, but the leaf at {where} is not an array: {type(leaf).__name__} "
                f"{leaf!r}. Pass the arrays only, e.g. `example=params` without settings or "
                "functions."
            )
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` needs a real floating-point domain, but `A`'s vectors have dtype "
            f"{dtype}. Cast `example` (or the matrix) to float32 or float64."
        )
    if isinstance(A, jax.Array) and _is_low_precision(A.dtype):
        A = A.astype(jnp.float32)
        example = _to_working(example)
    return A, example, tree_size(example), dtype


# ------------------------------------------------------------------ jit dispatch of `A`


def _run(impl: Callable, A: Any, example: PyTree | None, *args: Any, **config: Any) -> Any:
    """Call ``impl(A, matvec, example, *args, **config)`` under the compile policy.

    Operators and matrices are pytrees, so they are arguments of the compiled code; a bare
    callable is traced with the rest, its closed-over arrays hoisted into arguments. Either
    way a new operator, matrix or closure of the same computation reuses the compiled code,
    and under the user's own ``jit`` the call is simply inlined (``jaxcurv._compile``).
    """
    if isinstance(A, np.ndarray):
        A = jnp.asarray(A)

    def call(dynamic_A, example, args):
        A_ = A if dynamic_A is None else dynamic_A
        matvec, example = as_matvec(A_, example)
        return impl(A_, matvec, example, *args, **config)

    if isinstance(A, (CurvatureOperator, jax.Array)):
        return compiled_call(call, A, example, args)
    return compiled_call(lambda example, args: call(None, example, args), example, args)


# ------------------------------------------------------------ stacked-pytree algebra


def _real_dtype(example: PyTree):
    return jnp.result_type(*jax.tree.leaves(example))


def _basis_dot(V: PyTree, w: PyTree) -> jax.Array:
    """``V^T w``: inner products of every stacked vector of ``V`` with ``w``, shape ``(m,)``."""
    parts = jax.tree.leaves(
        jax.tree.map(
            lambda Vl, wl: jnp.tensordot(Vl, wl, axes=jnp.ndim(wl), precision=_HIGHEST), V, w
        )
    )
    return functools.reduce(jnp.add, parts)


def _basis_combine(c: jax.Array, V: PyTree) -> PyTree:
    """``V c``: the combination ``sum_j c_j V[j]``, a pytree like one vector."""
    return jax.tree.map(
        lambda Vl: jnp.tensordot(c.astype(Vl.dtype), Vl, axes=1, precision=_HIGHEST), V
    )


def _basis_get(V: PyTree, i: jax.Array) -> PyTree:
    return jax.tree.map(lambda Vl: Vl[i], V)


def _basis_set(V: PyTree, i: jax.Array, v: PyTree) -> PyTree:
    # Index m (one past the end) is dropped on purpose: the last step has no next vector.
    return jax.tree.map(lambda Vl, vl: Vl.at[i].set(vl.astype(Vl.dtype), mode="drop"), V, v)


def _orthogonalize(V: PyTree, w: PyTree) -> PyTree:
    """Project ``w`` off the span of ``V``'s (orthonormal or zero) rows, twice.

    Classical Gram-Schmidt applied twice keeps ``w`` orthogonal to working precision
    ("twice is enough", Giraud et al. 2005); once is not, and the lost orthogonality is
    what creates the ghost eigenvalues of plain Lanczos.
    """
    # A two-trip loop rather than two copies: the products compile once (per leaf).
    return jax.lax.fori_loop(0, 2, lambda _, u: tree_sub(u, _basis_combine(_basis_dot(V, u), V)), w)


def _unflatten_like(flat: jax.Array, like: PyTree) -> PyTree:
    """Split a flat vector into a pytree with ``like``'s structure, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        size = math.prod(jnp.shape(leaf))
        out.append(flat[start : start + size].reshape(jnp.shape(leaf)).astype(leaf.dtype))
        start += size
    return jax.tree.unflatten(treedef, out)


def _random_like(key: jax.Array, like: PyTree, kind: str = "normal") -> tuple[PyTree, jax.Array]:
    """A random pytree like ``like`` and the flat vector it was cut from.

    One draw for the whole tree rather than one per leaf: the random-number generator is
    the most expensive part of these loops to compile, and one instance compiles once.
    """
    n, dtype = tree_size(like), _real_dtype(like)
    if kind == "normal":
        flat = jax.random.normal(key, (n,), dtype)
    else:
        flat = jax.random.rademacher(key, (n,), dtype)
    return _unflatten_like(flat, like), flat


def _normalize(v: PyTree) -> tuple[PyTree, jax.Array]:
    nrm = tree_norm(v)
    return tree_scale(v, 1.0 / jnp.where(nrm > 0, nrm, 1.0)), nrm


def _matvec_checked(matvec: Callable, example: PyTree) -> tuple[Callable, PyTree]:
    """Check once, at trace time, that ``A v`` is shaped like ``v``; cast it to ``v``'s dtypes.

    Returns ``(matvec, example)`` in the working precision (``_working_matvec``): for a
    float16/bfloat16 domain both are float32, and so is everything computed from them.
    """
    out = jax.eval_shape(matvec, example)
    tree_check_like("A(v)", out, example, "example")

    def mv(v):
        return jax.tree.map(lambda o, e: o.astype(e.dtype), matvec(v), example)

    return _working_matvec(mv, example)


# --------------------------------------------------------------------------- Lanczos


# A second Gram-Schmidt pass is needed only when a pass cancels most of the vector
# (Daniel, Gragg, Kaufman and Stewart 1976): then the rounding left along the basis is
# large relative to what remains.
_DGKS = 0.7071067811865476


def _masked_pass(V: PyTree, mask: jax.Array, u: PyTree) -> tuple[PyTree, jax.Array]:
    """One classical Gram-Schmidt pass of ``u`` against the rows of ``V`` where ``mask``."""
    h = _basis_dot(V, u) * mask
    return tree_sub(u, _basis_combine(h, V)), h


def _extend(matvec, V, T, j0, anorm, seed, shift, like):
    """Lanczos steps ``j0, ..., m - 1`` that extend the orthonormal rows ``V[:j0 + 1]``.

    ``V`` has ``m + 1`` rows and ``T`` is ``m x m``: on entry ``T[:j0, :j0 + 1]`` holds the
    projection of ``A`` on the first rows (zero for a fresh start; after a thick restart,
    the Ritz values and their couplings to row ``j0``); on exit ``T`` is the whole
    projection ``V[:m] A V[:m]^T`` and ``V[m]`` the next Lanczos vector, so that ``A
    V[:m]^T = V[:m]^T T + beta V[m] e_m^T``. Rows past the current step may hold stale
    vectors: they are masked out.

    Full reorthogonalization, at half the usual memory traffic: each step subtracts
    ``alpha v_j + beta v_{j-1}`` (the three-term recurrence), then projects what is left
    off every row so far with classical Gram-Schmidt -- once, and a second time only when
    that pass cancelled more than ``1 - 1/sqrt(2)`` of the vector (the DGKS criterion).
    After the recurrence only rounding is left along the older rows, so one pass is the
    rule; the second runs right after a thick restart, where the new vector couples to
    every kept Ritz vector, and near breakdown. Orthogonality to working precision is what
    keeps ghost eigenvalues (Paige 1972) away.

    When the Krylov space is exhausted (``beta`` at the rounding level of ``||A v||``: the
    start lies in an invariant subspace, e.g. a spectrum with few distinct eigenvalues) the
    step takes instead a fresh direction orthogonal to the basis and records ``beta = 0``:
    ``T`` becomes block diagonal and its eigenvalues stay genuine eigenvalues of ``A`` --
    repeated ones appear with their true multiplicity instead of being lost or duplicated.
    The fresh directions are cyclic shifts of the flat random vector ``seed`` (shift
    ``shift + j + 1`` at step ``j``): the shifts of a random vector are linearly
    independent almost surely (a random circulant matrix is invertible), and shifting
    avoids compiling a random-number generator into the loop body.

    Returns ``(V, T, anorm, beta, fresh)``: ``beta`` as computed at the last step (it
    bounds the Ritz residuals even when a fresh direction replaced it) and whether ``V[m]``
    is such a fresh direction rather than the residual's.
    """
    m = T.shape[0]
    dtype = T.dtype
    tol_factor = 4.0 * jnp.finfo(dtype).eps
    rows = jnp.arange(m + 1)

    def step(j, carry):
        V, T, anorm, _, _ = carry
        v = _basis_get(V, j)
        w = matvec(v)
        anorm = jnp.maximum(anorm, tree_norm(w).astype(dtype))
        alpha = tree_vdot(v, w).astype(dtype)
        jp = jnp.maximum(j - 1, 0)
        b_prev = jnp.where(j > j0, T[j, jp], jnp.zeros((), dtype))
        w = jax.tree.map(
            lambda wl, vl, pl: wl - alpha.astype(wl.dtype) * vl - b_prev.astype(wl.dtype) * pl,
            w,
            v,
            _basis_get(V, jp),
        )
        mask = (rows <= j).astype(dtype)
        fresh = _unflatten_like(jnp.roll(seed, shift + j + 1), like)

        # One pass per trip; `phase` 0 works on `A v`, phase 1 (after a breakdown) on the
        # fresh direction, which always gets two passes. One loop, one compiled pass.
        def trip(s):
            u, n_in, count, phase, h, beta, _ = s
            u, hh = _masked_pass(V, mask, u)
            nrm = tree_norm(u).astype(dtype)
            h = h + jnp.where(phase == 0, hh, jnp.zeros_like(hh))
            count = count + 1
            again0 = (phase == 0) & (count < 2) & (nrm < _DGKS * n_in)
            end0 = (phase == 0) & ~again0
            beta = jnp.where(end0, nrm, beta)
            breakdown = end0 & (nrm <= tol_factor * anorm)
            again1 = (phase == 1) & (count < 2)
            u = tree_where(breakdown, fresh, u)
            count = jnp.where(breakdown, jnp.zeros_like(count), count)
            phase = jnp.where(breakdown, jnp.ones_like(phase), phase)
            return u, nrm, count, phase, h, beta, ~(again0 | breakdown | again1)

        zero = jnp.zeros((), dtype)
        i0 = jnp.zeros((), jnp.int32)
        h0 = jnp.zeros((m + 1,), dtype)
        init = (w, tree_norm(w).astype(dtype), i0, i0, h0, zero, jnp.asarray(False))
        u, _, _, phase, h, beta, _ = jax.lax.while_loop(lambda s: ~s[-1], trip, init)
        broke = phase == 1
        coupling = jnp.where(broke, zero, beta)
        T = T.at[j, j].set(alpha + h[j])
        T = T.at[j, j + 1].set(coupling, mode="drop").at[j + 1, j].set(coupling, mode="drop")
        # Row j + 1 <= m always exists: an in-place update, no bounds select.
        V = jax.tree.map(
            lambda Vl, ul: jax.lax.dynamic_update_index_in_dim(Vl, ul.astype(Vl.dtype), j + 1, 0),
            V,
            _normalize(u)[0],
        )
        return V, T, anorm, beta, broke

    zero = jnp.zeros((), dtype)
    V, T, anorm, beta, fresh = jax.lax.fori_loop(
        j0, m, step, (V, T, anorm, zero, jnp.asarray(False))
    )
    return V, T, anorm, beta, fresh


def _lanczos(matvec: Callable, v0: PyTree, m: int, seed: jax.Array):
    """``m`` Lanczos steps with full reorthogonalization from the unit vector ``v0``.

    Returns ``(alphas, betas, V)``: the diagonal ``(m,)`` and off-diagonal ``(m,)`` of the
    tridiagonal ``T`` (``betas[m-1]`` is the coupling to the next, unstored vector, used
    for residual bounds) and the orthonormal basis ``V`` (leaves ``(m, *leaf.shape)``), so
    that ``A V^T = V^T T + betas[m-1] v_m e_m^T``. One pass of ``_extend``; see there for
    the reorthogonalization and for what happens when the Krylov space is exhausted.
    """
    dtype = _real_dtype(v0)
    V = jax.tree.map(lambda x: jnp.zeros((m + 1, *jnp.shape(x)), x.dtype).at[0].set(x), v0)
    T = jnp.zeros((m, m), dtype)
    zero = jnp.zeros((), dtype)
    V, T, _, beta, _ = _extend(matvec, V, T, 0, zero, seed, 0, v0)
    betas = jnp.concatenate([jnp.diagonal(T, 1), beta[None]])
    return jnp.diagonal(T), betas, jax.tree.map(lambda Vl: Vl[:m], V)


def _tridiagonal_eigh(alphas: jax.Array, betas: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of the ``m x m`` tridiagonal ``T`` (tiny; dense ``eigh``)."""
    off = betas[:-1]
    T = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigh(T)


def _select(values: jax.Array, k: int, which: str) -> jax.Array:
    """Indices of the wanted entries of an ascending ``values``; ascending themselves."""
    n = values.shape[0]
    if which == "smallest":
        return jnp.arange(k)
    if which == "largest":
        return jnp.arange(n - k, n)
    return jnp.concatenate([jnp.arange(k), jnp.arange(n - k, n)])


# ------------------------------------------------------------- thick-restart Lanczos


def _candidates(m: int, want: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Ritz vectors a restart may keep, as indices into the ``m`` ascending Ritz values.

    Returns ``(cand, rank, end)``: the wanted ones first (the ``lo`` smallest ascending,
    then the ``hi`` largest descending), then the neighbours a restart may add, at most
    half of the free room at each wanted end; ``rank`` numbers each end's extras from the
    wanted ones inwards (``-1`` for wanted ones) and ``end`` says which end (0 bottom, 1
    top).
    """
    lo, hi = want
    half = max(m - 1 - lo - hi, 0) // 2
    nb, nt = (half if lo else 0), (half if hi else 0)
    cand = np.concatenate(
        [
            np.arange(lo),
            np.arange(m - 1, m - 1 - hi, -1),
            np.arange(lo, lo + nb),
            np.arange(m - 1 - hi, m - 1 - hi - nt, -1),
        ]
    ).astype(int)
    rank = np.concatenate([-np.ones(lo + hi), np.arange(nb), np.arange(nt)])
    end = np.concatenate([np.zeros(lo), np.ones(hi), np.zeros(nb), np.ones(nt)])
    return cand, rank, end


def _restart_order(ok, rank, end, want):
    """Order of the candidates for a restart, and how many to keep (ARPACK's rule).

    ARPACK (``dsaup2``) keeps the ``nev`` wanted Ritz vectors plus one more for each wanted
    pair that has converged, up to half of the free room: converged pairs no longer need the
    restart polynomial, while neighbours kept are deflated from it. The extras go to the
    ends in proportion to their unconverged wanted pairs (plus one): the slow end gets the
    help, as in ARPACK's ``which="BE"``, which favours the top.
    """
    lo, hi = want
    nw = lo + hi
    nconv = jnp.sum(ok[:nw])
    weight = jnp.stack([1 + lo - jnp.sum(ok[:lo]), 1 + hi - jnp.sum(ok[lo:nw]) + 0.5])
    priority = jnp.where(rank < 0, -1.0, (rank + 0.5) / weight[end.astype(int)])
    order = jnp.argsort(priority, stable=True)
    extras = (rank.size - nw) // (2 if lo and hi else 1)
    return order, nw + jnp.minimum(nconv, extras)


def _thick_restart(matvec, v0, seed, *, m, want, tol, max_matvecs, single):
    """Thick-restart Lanczos (Wu and Simon 2000) with a basis of ``m`` vectors.

    ``want = (lo, hi)`` eigenvalues are wanted from the bottom and the top of the spectrum.
    A cycle extends the basis to ``m`` vectors, diagonalizes the small projected matrix
    ``T``, and stops when every wanted Ritz pair has ``|beta s_{mj}| <= tol * max(|theta_j|,
    eps^(2/3) max|theta|)`` or the next cycle would exceed ``max_matvecs`` products;
    otherwise it restarts from ``p`` kept Ritz vectors (the wanted ones and some next to
    them) plus the residual direction ``V[m]``, with ``T`` the arrowhead ``[[diag(theta),
    beta s], [beta s^T, .]]``.

    Returns ``(theta, vectors, residuals, num_matvecs, converged, num_restarts)`` for the
    wanted pairs, ascending; ``vectors`` stacked like ``V``.
    """
    dtype = _real_dtype(v0)
    eps23 = float(np.finfo(np.dtype(dtype)).eps) ** (2.0 / 3.0)
    nw = want[0] + want[1]
    cand, rank, end = _candidates(m, want)
    # The wanted pairs, ascending, among the candidates.
    out = np.concatenate([np.arange(want[0]), np.arange(nw - 1, want[0] - 1, -1)]).astype(int)
    rows = jnp.arange(cand.size)
    p_max = min(nw + (cand.size - nw) // (2 if want[0] and want[1] else 1), m)

    V = jax.tree.map(lambda x: jnp.zeros((m + 1, *jnp.shape(x)), x.dtype).at[0].set(x), v0)
    T = jnp.zeros((m, m), dtype)
    zero = jnp.zeros((), dtype)
    i0 = jnp.zeros((), jnp.int32)

    def cycle(c):
        V, T, j0, nmv, cycles, anorm = c[:6]
        V, T, anorm, beta, fresh = _extend(matvec, V, T, j0, anorm, seed, nmv, v0)
        nmv = nmv + (m - j0)
        theta, S = jnp.linalg.eigh(T)
        floor = eps23 * jnp.max(jnp.abs(theta))
        res = jnp.abs(beta * S[m - 1, cand])
        ok = res <= tol * jnp.maximum(jnp.abs(theta[cand]), floor)
        # A NaN or inf from a product reaches T: no restart can repair it, so stop at once,
        # and never call it converged (a NaN residual fails `ok`, an inf theta need not).
        finite = jnp.all(jnp.isfinite(T)) & jnp.isfinite(beta)
        converged = jnp.all(ok[:nw]) & finite
        order, p = _restart_order(ok, rank, end, want)
        idx = jnp.asarray(cand)[order]
        theta_c, S_c, res = theta[idx], S[:, idx], res[order]
        s_last = S_c[m - 1]
        p = p.astype(jnp.int32)
        done = converged | (nmv + (m - p) > max_matvecs) | single | ~finite
        # Thick restart: the kept Ritz vectors V[:m]^T S in rows < p, the residual direction
        # V[m] in row p, zeros up to row p_max; rows past it are stale and stay masked. One
        # product with a small matrix, written over the leading rows: XLA would copy the
        # whole basis for a dynamic row update.
        r, c = jnp.arange(p_max + 1)[:, None], jnp.arange(m + 1)[None]
        C = jnp.where(r < p, jnp.pad(S_c.T[:p_max], ((0, 1), (0, 1))), ((r == p) & (c == m)))
        V = jax.tree.map(
            lambda Vl: Vl.at[: p_max + 1].set(
                jnp.tensordot(C.astype(Vl.dtype), Vl, axes=1, precision=_HIGHEST)
            ),
            V,
        )
        keep = rows < p
        coupling = jnp.where(keep & ~fresh, beta * s_last, zero)
        T = jnp.zeros((m, m), dtype).at[rows, rows].set(jnp.where(keep, theta_c, zero))
        T = T.at[rows, p].set(coupling).at[p, rows].set(coupling)
        return (
            V, T, p, nmv, cycles + 1, anorm, theta_c[out], res[out], converged, done,
        )  # fmt: skip

    init = (
        V, T, i0, i0, i0, zero,
        jnp.zeros((nw,), dtype), jnp.zeros((nw,), dtype), jnp.asarray(False), jnp.asarray(False),
    )  # fmt: skip
    V, _, _, nmv, cycles, _, theta, res, converged, _ = jax.lax.while_loop(
        lambda c: ~c[-1], cycle, init
    )
    vectors = jax.tree.map(lambda Vl: Vl[out], V)
    return theta, vectors, res, nmv, converged, cycles - 1


def _all_finite(*arrays: jax.Array) -> jax.Array:
    """Scalar bool: no NaN or inf anywhere -- the precondition of every ``converged``."""
    return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(a)) for a in arrays])


def _dense_matrix(A: Any, matvec: Callable, example: PyTree) -> jax.Array:
    """``A`` as an ``N x N`` matrix over ``ravel_pytree(example)`` order."""
    if isinstance(A, CurvatureOperator):
        return A.to_dense()
    if isinstance(A, jax.Array):
        return A
    flat, unravel = ravel_pytree(example)
    n = flat.size

    def column(i):
        return ravel_pytree(matvec(unravel(jax.nn.one_hot(i, n, dtype=flat.dtype))))[0]

    return jax.lax.map(column, jnp.arange(n), batch_size=min(n, 64)).T


def _eigenvalues_impl(A, matvec, example, key, tol, budget, *, k, which, dense, vectors, method,
                      m):  # fmt: skip
    n = tree_size(example)
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)
    if dense:
        H = _dense_matrix(A, matvec, example).astype(dtype)
        H = 0.5 * (H + H.T)
        evals, evecs = jnp.linalg.eigh(H)
        idx = _select(evals, k, which)
        lam, U = evals[idx], evecs[:, idx]
        res = jnp.linalg.norm(H @ U - U * lam, axis=0)
        _, unravel = ravel_pytree(example)
        vecs = jax.vmap(unravel)(U.T) if vectors else None
        spent = 0 if isinstance(A, jax.Array) else n
        none = jnp.zeros((), jnp.int32)
        # eigh is backward stable, so only a non-finite matrix makes the answer wrong.
        finite = _all_finite(H, lam, res)
        return EigenResult(lam, vecs, res, none + spent, finite, none)

    r, seed = _random_like(key, example)
    v0, _ = _normalize(r)
    if method == "thick-restart":
        want = {"largest": (0, k), "smallest": (k, 0), "both": (k, k)}[which]
        lam, vecs, res, spent, converged, restarts = _thick_restart(
            matvec,
            v0,
            seed,
            m=m,
            want=want,
            tol=tol,
            max_matvecs=budget,
            single=m >= n,
        )
        return EigenResult(lam, vecs if vectors else None, res, spent, converged, restarts)

    alphas, betas, V = _lanczos(matvec, v0, m, seed)
    theta, S = _tridiagonal_eigh(alphas, betas)
    idx = _select(theta, k, which)
    lam, S_sel = theta[idx], S[:, idx]
    res = jnp.abs(betas[-1] * S_sel[-1])
    floor = float(np.finfo(np.dtype(dtype)).eps) ** (2.0 / 3.0) * jnp.max(jnp.abs(theta))
    converged = jnp.all(res <= tol * jnp.maximum(jnp.abs(lam), floor)) & _all_finite(theta, res)
    vecs = None
    if vectors:
        vecs = jax.tree.map(
            lambda Vl: jnp.tensordot(S_sel.T.astype(Vl.dtype), Vl, axes=1, precision=_HIGHEST),
            V,
        )
    none = jnp.zeros((), jnp.int32)
    return EigenResult(lam, vecs, res, none + m, converged, none)


def eigenvalues(
    A: Any,
    k: int,
    *,
    which: str = "largest",
    key: jax.Array | None = None,
    num_iters: int | None = None,
    example: PyTree | None = None,
    return_eigenvectors: bool = False,
    dense_threshold: int = 256,
    method: str = "auto",
    tol: float | None = None,
    max_basis: int | None = None,
) -> EigenResult:
    r"""Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization.

    Lanczos builds an orthonormal basis :math:`V` of the Krylov space
    :math:`\{v_0, A v_0, \dots, A^{m-1} v_0\}` in which :math:`A` is the tridiagonal
    :math:`T = V^\top A V`; the extreme eigenvalues of :math:`T` (Ritz values) converge to
    those of :math:`A` after far fewer than :math:`N` products. Each new vector is
    re-orthogonalized against the whole basis, which prevents the loss of orthogonality
    that makes plain Lanczos report converged eigenvalues several times ("ghosts").

    Two ways to run it (``method``):

    * ``"thick-restart"`` (what ``"auto"`` picks unless ``num_iters`` is given without
      ``max_basis``): the basis has a fixed size of ``max_basis`` vectors. When it is
      full, the small projected matrix is diagonalized, the wanted Ritz vectors and a few
      next to them are kept and the rest dropped, and the Krylov space grows again from
      there (Wu and Simon 2000; the same iteration as ARPACK's implicitly restarted
      Lanczos, behind ``scipy``'s ``eigsh``).
      It stops when every wanted pair has a residual estimate :math:`|\beta_m s_{mj}| \le`
      ``tol`` :math:`\cdot |\theta_j|` (``eigsh``'s test) or after ``num_iters`` products.
      Memory is ``max_basis + 1`` vectors and reorthogonalization costs :math:`O(m N)` per
      product with a small ``m``, so it is the method of choice for large ``N`` and for
      high accuracy. A Krylov space holds every restarted subspace built from as many
      products, so it needs somewhat more products than one long pass would (1.2-1.6x in
      the tests) but a basis several times smaller, and each product costs far less.
    * ``"lanczos"`` (what ``"auto"`` picks when ``num_iters`` is given without
      ``max_basis``): one pass of exactly ``num_iters`` steps, keeping all of them;
      :math:`O(m N)` memory and :math:`O(m^2 N)` reorthogonalization in total. Cheapest for
      a low accuracy with a small ``m``; spectral_density uses it.

    When ``N <= dense_threshold`` the matrix is formed (``op.to_dense()`` for an operator,
    ``N`` products for a callable) and diagonalized exactly instead.

    A float16 or bfloat16 domain is computed in float32 and the results (eigenvalues,
    residuals, eigenvectors) are float32: a dense matrix is cast to float32 exactly, so
    its eigenvalues are float32-accurate; an operator's or callable's products still run
    in its dtype and carry its rounding, about ``eps(dtype) ||A||``, which the reported
    residuals (from the recurrences) do not see -- the default ``tol`` stays above it.

    Args:
      A: a ``jaxcurv`` operator (``hessian_operator``, ``ggn_operator``), a dense symmetric
        ``N x N`` matrix, or a callable ``v -> A v`` on pytrees (with ``example``).
      k: how many eigenvalues (from each end for ``which="both"``).
      which: ``"largest"`` or ``"smallest"`` (algebraic, not by magnitude), or ``"both"``:
        the ``k`` smallest and the ``k`` largest.
      key: PRNG key for the starting vector; ``None`` uses ``jax.random.key(0)``.
      num_iters: products with ``A``. For ``"lanczos"``, the number of steps ``m``, between
        the number ``k'`` of wanted eigenvalues and ``N``; default ``min(N, max(3 k', k' +
        40))``. For ``"thick-restart"``, the most products to spend (at least ``k'``); the
        run stops after the last whole restart cycle that fits; default ``100 *
        max_basis``.
      example: pytree shaped like the domain; required when ``A`` is a bare callable.
      return_eigenvectors: also return the eigenvectors (Ritz vectors), stacked pytrees.
      dense_threshold: use a dense ``eigh`` when ``N`` is at most this. ``0`` forces
        Lanczos.
      method: ``"auto"`` (the default), ``"thick-restart"`` or ``"lanczos"`` (see above).
      tol: relative residual at which a Ritz pair counts as converged:
        :math:`\|A v - \theta v\| \le \mathrm{tol} \cdot \max(|\theta|,
        \epsilon^{2/3} \|T\|)` (the floor keeps eigenvalues near zero reachable). Stops
        ``"thick-restart"``; for ``"lanczos"`` it only sets ``converged``. Default ``1e-8``
        for float64 and ``1e-5`` for float32 (``eigsh(tol=1e-4)`` leaves some residuals
        near ``4e-5``; ``1e-5`` is at least as accurate), ``sqrt(eps)`` for the products of
        a float16/bfloat16 operator (``1e-5`` for such a dense matrix: exact in float32).
      max_basis: ``"thick-restart"``'s basis size ``m`` (more than ``k'``; clipped to
        ``N``); default ``max(2 k' + 1, 20)``, as ``eigsh``'s ``ncv``. Larger means fewer
        restarts and more work and memory per product.

    Returns:
      An ``EigenResult``: ``eigenvalues`` ascending, optional ``eigenvectors``,
      ``residual_norms`` (how converged each pair is), ``num_matvecs``, ``converged`` and
      ``num_restarts``.

    Raises:
      ValueError: bad ``which`` or ``method``, ``k``, ``num_iters``, ``max_basis`` or
        ``tol`` out of range, bare callable without ``example``, a dense ``A`` that is not
        symmetric beyond rounding (checked when ``A`` is concrete, not under the caller's
        ``jit``). TypeError: non-integer ``k``/``num_iters``/``max_basis``, a bad ``key``,
        an integer domain.

    Example (the seed's Hessian of :math:`x^2 + 3xy + y^2`, eigenvalues -1 and 5):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> H = jnp.array([[2.0, 3.0], [3.0, 2.0]])
      >>> jaxcurv.eigenvalues(H, 1, which="both").eigenvalues.round(4).tolist()
      [-1.0, 5.0]
      >>> d = jnp.linspace(0.0, 1.0, 300).at[-2:].set(jnp.array([5.0, 10.0]))
      >>> r = jaxcurv.eigenvalues(jnp.diag(d), 2)  # thick restart: N = 300 > dense_threshold
      >>> r.eigenvalues.round(4).tolist(), bool(r.converged), int(r.num_matvecs) <= 40
      ([5.0, 10.0], True, True)

    References:
      Lanczos, "An iteration method for the solution of the eigenvalue problem of linear
      differential and integral operators", J. Res. Nat. Bur. Standards 1950.
      Paige, "Computational variants of the Lanczos method for the eigenproblem", IMA J.
      Appl. Math. 1972 (loss of orthogonality and ghost eigenvalues).
      Wu and Simon, "Thick-restart Lanczos method for large symmetric eigenvalue
      problems", SIAM J. Matrix Anal. Appl. 22(2), 2000.
      Lehoucq, Sorensen and Yang, "ARPACK Users' Guide", SIAM 1998 (implicit restarts,
      the convergence test).
      Golub and Van Loan, "Matrix Computations", 4th ed., section 10.3 (full
      reorthogonalization).
    """
    which = _check_choice("eigenvalues(which=...)", which, _WHICH)
    method = _check_choice("eigenvalues(method=...)", method, _EIG_METHODS)
    A, example, n, dtype = _domain("eigenvalues", A, example)
    per_side = n // 2 if which == "both" else n
    k = _check_int(
        "eigenvalues(k=...)",
        k,
        low=1,
        high=per_side,
        fix=f"The operator has size N={n}"
        + (" and which='both' takes k from each end." if which == "both" else "."),
    )
    wanted = 2 * k if which == "both" else k
    if method == "auto":
        method = "lanczos" if num_iters is not None and max_basis is None else "thick-restart"
    if tol is None:
        # From the precision of the products: a float16/bfloat16 operator's are rounded to
        # its dtype, so residuals below ~eps(dtype) ||A|| are not real even though the
        # recurrences report them; a dense float16/bfloat16 matrix is exact in float32.
        finfo = jnp.finfo(_real_dtype(example) if isinstance(A, jax.Array) else dtype)
        tol = {64: 1e-8, 32: 1e-5}.get(finfo.bits, float(np.sqrt(finfo.eps)))
    if not tol >= 0:
        raise ValueError(
            f"`eigenvalues(tol=...)` must be a non-negative relative residual, got {tol!r}."
        )
    if method == "lanczos":
        if max_basis is not None:
            raise ValueError(
                f"`eigenvalues(max_basis=...)` applies to method='thick-restart' only, got "
                f"max_basis={max_basis!r} with method='lanczos' (num_iters given). Drop it, or "
                "pass method='thick-restart' (num_iters then caps the products)."
            )
        if num_iters is None:
            num_iters = min(n, max(3 * wanted, wanted + 40))
        m = _check_int(
            "eigenvalues(num_iters=...)",
            num_iters,
            low=wanted,
            high=n,
            fix=f"Lanczos needs at least as many steps as eigenvalues wanted ({wanted}) and "
            f"at most the operator size N={n}.",
        )
        budget = m
    else:
        if max_basis is None:
            max_basis = max(2 * wanted + 1, 20)
        max_basis = _check_int(
            "eigenvalues(max_basis=...)",
            max_basis,
            low=min(wanted + 1, n),
            fix=f"The basis must hold the {wanted} wanted Ritz vectors and room to grow.",
        )
        if num_iters is None:
            num_iters = 100 * min(max_basis, n)
        budget = _check_int(
            "eigenvalues(num_iters=...)",
            num_iters,
            low=wanted,
            fix=f"Spend at least as many products as eigenvalues wanted ({wanted}).",
        )
        m = min(max_basis, n, budget)
    dense_threshold = _check_int(
        "eigenvalues(dense_threshold=...)", dense_threshold, low=0, fix="Use 0 to force Lanczos."
    )
    key = jax.random.key(0) if key is None else _check_key("eigenvalues", key)
    # The tolerance and the budget are traced: changing them does not compile again.
    return _run(
        _eigenvalues_impl,
        A,
        example,
        key,
        jnp.asarray(tol, _working_dtype(dtype)),
        jnp.asarray(budget, jnp.int32),
        k=k,
        which=which,
        dense=n <= dense_threshold,
        vectors=bool(return_eigenvectors),
        method=method,
        m=m,
    )


# ------------------------------------------------------------------- power iteration


def _power_impl(A, matvec, example, key, *, num_iters, tol):
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)
    v, _ = _normalize(_random_like(key, example)[0])

    def step(v):
        w = matvec(v)
        lam = tree_vdot(v, w).astype(dtype)
        res = tree_norm(tree_sub(w, tree_scale(v, lam))).astype(dtype)
        return w, lam, res

    def cond(state):
        i, _, _, _, _, stop = state
        return (i < num_iters) & ~stop

    def body(state):
        i, v = state[:2]
        w, lam, res = step(v)
        finite = jnp.isfinite(lam) & jnp.isfinite(res)
        # A v = 0 (a zero operator) is an exact eigenpair too: stop there. A NaN or inf
        # never converges, and no further product can repair it: stop there as well.
        converged = finite & ((res <= tol * jnp.abs(lam)) | (tree_norm(w) == 0))
        stop = converged | ~finite
        v_next = jax.tree.map(lambda a, b: jnp.where(stop, a, b), v, _normalize(w)[0])
        return i + 1, v_next, lam, res, converged, stop

    zero, no = jnp.zeros((), dtype), jnp.asarray(False)
    init = (jnp.asarray(0), v, zero, jnp.full((), jnp.inf, dtype), no, no)
    i, v, lam, res, converged, _ = jax.lax.while_loop(cond, body, init)
    return PowerIterationResult(lam, v, res, i, converged)


def power_iteration(
    A: Any,
    *,
    key: jax.Array,
    num_iters: int = 1000,
    tol: float = 1e-4,
    example: PyTree | None = None,
) -> PowerIterationResult:
    r"""The eigenvalue of largest magnitude by power iteration.

    Repeats :math:`v \leftarrow A v / \|A v\|` and stops when the Rayleigh quotient
    :math:`\lambda = v^\top A v` has a small relative residual,
    :math:`\|A v - \lambda v\| \le \mathrm{tol}\, |\lambda|` (the eigenvalue itself is then
    accurate to about :math:`\mathrm{tol}^2 |\lambda|` relative to the spectral gap). It
    keeps a single vector, so it is the cheapest estimate of :math:`\|A\|_2` (e.g. the
    sharpness of a loss), but converges at the rate :math:`|\lambda_2 / \lambda_1|`; for
    several eigenvalues or close ones use ``eigenvalues``.

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the starting vector.
      num_iters: the most products with ``A``.
      tol: relative residual at which to stop.
      example: pytree shaped like the domain; required for a bare callable.

    Returns:
      A ``PowerIterationResult`` (``eigenvalue``, ``eigenvector``, ``residual_norm``,
      ``num_matvecs``, ``converged``); float32 for a float16/bfloat16 domain.

    Raises:
      ValueError: ``num_iters < 1``, ``tol < 0``, a non-symmetric dense ``A``. TypeError: a
        bad ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> H = jnp.array([[2.0, 3.0], [3.0, 2.0]])
      >>> r = jaxcurv.power_iteration(H, key=jax.random.key(0))
      >>> round(float(r.eigenvalue), 4), bool(r.converged)
      (5.0, True)

    References:
      Golub and Van Loan, "Matrix Computations", 4th ed., section 7.3.1.
    """
    num_iters = _check_int(
        "power_iteration(num_iters=...)", num_iters, low=1, fix="Pass a positive count."
    )
    if not tol >= 0:
        raise ValueError(f"`power_iteration(tol=...)` must be non-negative, got {tol!r}.")
    key = _check_key("power_iteration", key)
    A, example, _, _ = _domain("power_iteration", A, example)
    return _run(_power_impl, A, example, key, num_iters=num_iters, tol=float(tol))


# ------------------------------------------------------------------------ Hutchinson


def _probe_keys(key: jax.Array, num: int) -> jax.Array:
    return jax.random.split(key, num)


def _mean_and_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    num = samples.shape[0]
    mean = jnp.mean(samples)
    if num < 2:
        return mean, jnp.full((), jnp.inf, samples.dtype)
    return mean, jnp.std(samples, ddof=1) / math.sqrt(num)


def _orthonormal_columns(Y: PyTree, num: int) -> PyTree:
    """An orthonormal basis of the span of the stacked vectors ``Y`` (rank-revealing).

    Gram-Schmidt with reorthogonalization, one vector at a time; a vector that is
    (numerically) in the span of the previous ones becomes zero, so a low-rank ``A S``
    yields fewer basis vectors instead of amplified noise.
    """
    dtype = _real_dtype(Y)
    eps = jnp.finfo(dtype).eps

    def body(j, Q):
        y = _basis_get(Y, j)
        q = _orthogonalize(Q, y)
        q, nrm = _normalize(q)
        keep = nrm > 100 * eps * math.sqrt(num) * tree_norm(y)
        q = jax.tree.map(lambda a: jnp.where(keep, a, jnp.zeros_like(a)), q)
        return _basis_set(Q, j, q)

    return jax.lax.fori_loop(0, num, body, tree_zeros_like(Y))


def _hutchinson_impl(A, matvec, example, key, *, num_samples, method):
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)

    def quad(z):
        return tree_vdot(z, matvec(z)).astype(dtype)

    if method == "hutchinson":
        samples = jax.lax.map(
            lambda kk: quad(_random_like(kk, example, "rademacher")[0]),
            _probe_keys(key, num_samples),
        )
        est, err = _mean_and_stderr(samples)
        return TraceEstimate(est, err, jnp.asarray(num_samples))

    # Hutch++: the top of the spectrum is captured exactly by tr(Q^T A Q) on a sketched
    # basis Q of range(A S); Hutchinson only handles the deflated remainder, whose
    # Frobenius norm -- and hence variance -- is much smaller when A has decaying spectrum.
    r = num_samples // 3
    g = num_samples - 2 * r
    k_s, k_g = jax.random.split(key)
    S = jax.vmap(lambda kk: _random_like(kk, example, "rademacher")[0])(_probe_keys(k_s, r))
    AS = jax.lax.map(matvec, S)
    Q = _orthonormal_columns(AS, r)
    exact = jnp.sum(jax.lax.map(quad, Q))

    def deflated(kk):
        z = _random_like(kk, example, "rademacher")[0]
        z = tree_sub(z, _basis_combine(_basis_dot(Q, z), Q))
        return quad(z)

    samples = jax.lax.map(deflated, _probe_keys(k_g, g))
    est, err = _mean_and_stderr(samples)
    return TraceEstimate(exact + est, err, jnp.asarray(2 * r + g))


def hutchinson_trace(
    A: Any,
    key: jax.Array,
    num_samples: int,
    *,
    example: PyTree | None = None,
    method: str = "hutchinson",
) -> TraceEstimate:
    r"""Randomized estimate of :math:`\mathrm{tr}(A)` from products with ``A``.

    ``"hutchinson"``: :math:`\mathrm{tr}(A) \approx \frac1s \sum_i z_i^\top A z_i` with
    Rademacher probes :math:`z_i \in \{\pm 1\}^N`; unbiased, with variance
    :math:`2 (\|A\|_F^2 - \sum_i A_{ii}^2) / s`. ``"hutch++"`` spends a third of the
    products sketching the dominant range :math:`Q` of :math:`A`, takes
    :math:`\mathrm{tr}(Q^\top A Q)` exactly and runs Hutchinson only on the deflated
    :math:`(I - QQ^\top) A (I - QQ^\top)`: also unbiased, and for a matrix with a few
    dominant eigenvalues (Hessians of networks) its error falls as :math:`1/s` instead of
    :math:`1/\sqrt{s}`.

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the probes.
      num_samples: products with ``A`` to spend (for ``"hutch++"`` at least 3, split as
        ``s//3`` sketch, ``s//3`` exact part and the rest for the remainder).
      example: pytree shaped like the domain; required for a bare callable.
      method: ``"hutchinson"`` or ``"hutch++"``.

    Returns:
      A ``TraceEstimate`` (``estimate``, ``stderr``, ``num_matvecs``). ``stderr`` is ``inf``
      when fewer than two random probes were used. Float32 for a float16/bfloat16 domain
      (where a float16 ``z^T A z`` would overflow at 65504); NaN if ``A`` has a NaN.

    Raises:
      ValueError: bad ``method`` or ``num_samples``, a non-symmetric dense ``A`` (pass
        ``(A + A.T) / 2``: same trace). TypeError: a bad ``key``.

    Example (the trace of ``diag(1, ..., 100)`` is 5050):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.arange(1.0, 101.0))
      >>> float(jaxcurv.hutchinson_trace(D, jax.random.key(0), 10).estimate)  # exact: diagonal
      5050.0

    References:
      Hutchinson, "A stochastic estimator of the trace of the influence matrix for
      Laplacian smoothing splines", Commun. Stat. Simul. Comput. 1989.
      Meyer, Musco, Musco and Woodruff, "Hutch++: Optimal stochastic trace estimation",
      SOSA 2021.
    """
    method = _check_choice("hutchinson_trace(method=...)", method, _TRACE_METHODS)
    key = _check_key("hutchinson_trace", key)
    low = 3 if method == "hutch++" else 1
    num_samples = _check_int(
        "hutchinson_trace(num_samples=...)",
        num_samples,
        low=low,
        fix=(
            "Hutch++ splits its products in three parts: pass at least 3."
            if low == 3
            else "Pass a positive count; the error falls as 1/sqrt(num_samples)."
        ),
    )
    A, example, _, _ = _domain("hutchinson_trace", A, example)
    return _run(_hutchinson_impl, A, example, key, num_samples=num_samples, method=method)


def _diagonal_impl(A, matvec, example, key, *, num_samples):
    matvec, example = _matvec_checked(matvec, example)

    def body(acc, kk):
        z = _random_like(kk, example, "rademacher")[0]
        return jax.tree.map(lambda a, zl, azl: a + zl * azl, acc, z, matvec(z)), None

    total, _ = jax.lax.scan(body, tree_zeros_like(example), _probe_keys(key, num_samples))
    return tree_scale(total, 1.0 / num_samples)


def hutchinson_diagonal(
    A: Any, key: jax.Array, num_samples: int, *, example: PyTree | None = None
) -> PyTree:
    r"""Randomized estimate of :math:`\mathrm{diag}(A)` as a pytree like the domain.

    :math:`\mathrm{diag}(A) \approx \frac1s \sum_i z_i \odot A z_i` with Rademacher probes:
    unbiased, since :math:`E[z_i z_j] = \delta_{ij}`; entry :math:`i` has variance
    :math:`\sum_{j \ne i} A_{ij}^2 / s`, so the estimate is sharp for diagonally dominant
    matrices (e.g. as an optimizer's preconditioner).

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the probes.
      num_samples: products with ``A``.
      example: pytree shaped like the domain; required for a bare callable.

    Returns:
      A pytree with the structure, shapes and dtypes of the domain (float32 for a
      float16/bfloat16 domain: the sum of probes runs in float32).

    Raises:
      ValueError: ``num_samples < 1``, a non-symmetric dense ``A`` (pass ``(A + A.T) / 2``:
        same diagonal). TypeError: a bad ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
      >>> jaxcurv.hutchinson_diagonal(D, jax.random.key(0), 4).tolist()  # exact: diagonal
      [1.0, 2.0, 3.0]

    References:
      Bekas, Kokiopoulou and Saad, "An estimator for the diagonal of a matrix", Appl.
      Numer. Math. 2007.
    """
    key = _check_key("hutchinson_diagonal", key)
    num_samples = _check_int(
        "hutchinson_diagonal(num_samples=...)", num_samples, low=1, fix="Pass a positive count."
    )
    A, example, _, _ = _domain("hutchinson_diagonal", A, example)
    return _run(_diagonal_impl, A, example, key, num_samples=num_samples)


# ------------------------------------------------------------- spectral density (SLQ)


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
    key = _check_key("spectral_density", key)
    A, example, n, dtype = _domain("spectral_density", A, example)
    num_probes = _check_int(
        "spectral_density(num_probes=...)", num_probes, low=1, fix="Pass a positive count."
    )
    if num_lanczos is None:
        num_lanczos = min(n, 64)
    num_lanczos = _check_int(
        "spectral_density(num_lanczos=...)",
        num_lanczos,
        low=1,
        high=n,
        fix=f"A Krylov space has at most N={n} dimensions.",
    )
    num_grid = _check_int(
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


# ------------------------------------------------------------- critical points


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _gradient_bound(grad_tol: float, grad_atol: float, curvature: float, x_norm: float) -> float:
    r"""The largest gradient norm that counts as zero: ``grad_tol ||H|| max(1, ||x||)`` or more.

    Offset-invariant on purpose: adding a constant to ``f`` changes neither ``grad f`` nor
    the Hessian, so it must not change the verdict (scaling by :math:`|f(x)|` did). Near a
    critical point :math:`x^*`, :math:`\nabla f(x) \approx H (x - x^*)`, so
    :math:`\|\nabla f\| \le` ``grad_tol`` :math:`\|H\|_2 \max(1, \|x\|)` says that ``x``
    is within about ``grad_tol`` of :math:`x^*` relative to its own size (absolute below
    1), measured along the stiffest direction. It scales with ``f`` and is in the units of
    the gradient; ``grad_atol`` is an absolute floor for a Hessian that vanishes.
    """
    return max(grad_atol, grad_tol * curvature * max(1.0, x_norm))


def _nonfinite_reason(x_finite: bool, value: float, gradient_norm: float, lam: np.ndarray) -> str:
    """Why no second-order test applies, or ``""``: the first non-finite quantity."""
    if not x_finite:
        return "x has NaN or infinite entries"
    if not math.isfinite(value):
        return f"f(x) = {value} is not finite"
    if not math.isfinite(gradient_norm):
        return f"the gradient norm is {gradient_norm}"
    if not np.all(np.isfinite(lam)):
        return "the Hessian has NaN or infinite eigenvalues"
    return ""


def _curvature_kind(lam: np.ndarray, zero_tol: float) -> tuple[str, str, int, int, int]:
    """The seed's rule on eigenvalue signs: ``(kind, why, n_pos, n_neg, n_zero)``."""
    pos, neg = lam > zero_tol, lam < -zero_tol
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    n_zero = lam.size - n_pos - n_neg
    if n_pos and n_neg:
        return (
            "saddle",
            "eigenvalues of both signs: f curves up along some directions and down along "
            "others, a saddle",
            n_pos, n_neg, n_zero,
        )  # fmt: skip
    if n_zero:
        return (
            "degenerate",
            "some eigenvalues are zero within tolerance and the rest have one sign: the "
            "second-order test is inconclusive, a degenerate point",
            n_pos, n_neg, n_zero,
        )  # fmt: skip
    if n_pos:
        return (
            "minimum",
            "all eigenvalues positive: f curves up in every direction, a local minimum",
            n_pos, n_neg, n_zero,
        )  # fmt: skip
    return (
        "maximum",
        "all eigenvalues negative: f curves down in every direction, a local maximum",
        n_pos, n_neg, n_zero,
    )  # fmt: skip


def classify_critical_point(
    fun: Callable,
    x: PyTree,
    *args: Any,
    grad_tol: float | None = None,
    grad_atol: float = 0.0,
    eig_tol: float | None = None,
    k: int = 3,
    key: jax.Array | None = None,
    num_iters: int | None = None,
    dense_threshold: int = 1024,
) -> CriticalPoint:
    r"""Classify ``x`` as a minimum, maximum, saddle or degenerate point of ``fun``.

    The seed's rule. Where the gradient vanishes, the second-order Taylor expansion
    :math:`f(x + d) \approx f(x) + \frac12 d^\top H d` is decided by the eigenvalues of
    the Hessian :math:`H`: all positive, ``f`` curves up in every direction (a local
    minimum); all negative, it curves down in every direction (a local maximum); both
    signs, up along some directions and down along others (a saddle). Eigenvalues near zero
    without both signs leave the second-order test inconclusive ("degenerate": higher
    derivatives decide, as for :math:`x^4 + y^2` at the origin).

    Why saddles matter: in high dimensions a critical point is a minimum only if *all*
    :math:`N` eigenvalues are positive, and for the loss of a neural network with millions
    of parameters critical points with mixed signs vastly outnumber minima, especially at
    high loss (Dauphin et al. 2014). Near a saddle the gradient is small in every
    direction, so gradient descent slows to a crawl along the few directions of negative
    curvature that lead down -- which is why training plateaus, and why the most negative
    eigenvalue is worth measuring.

    This is a diagnostic that returns Python values (``kind`` is a string), so call it
    outside ``jax.jit``; the eigenvalue computations inside it are compiled.

    The gradient counts as zero when

    .. math:: \|\nabla f(x)\| \le \max(\mathrm{grad\_atol},\ \mathrm{grad\_tol} \cdot
       \|H\|_2 \cdot \max(1, \|x\|)),

    with :math:`\|H\|_2 = \max_i |\lambda_i|`; otherwise the point is ``"not critical"``
    (the eigenvalues are still reported). Since :math:`\nabla f(x) \approx H (x - x^*)`
    near a critical point :math:`x^*`, this says ``x`` is within about ``grad_tol`` of one,
    relative to its size; adding a constant to ``f`` changes neither side, so a large
    offset never makes a point look critical. An eigenvalue counts as zero when
    :math:`|\lambda| \le` ``eig_tol`` :math:`\cdot \max_i |\lambda_i|`. A NaN or inf in
    ``x``, ``f(x)``, the gradient or the Hessian makes the point ``"not critical"``: no
    second-order test applies, and the ``reason`` says which was not finite.

    For ``N <= dense_threshold`` every eigenvalue is computed (dense ``eigvalsh``); above,
    Lanczos on ``hessian_operator`` computes the ``k`` smallest and ``k`` largest, which is
    all the rule needs -- the smallest decides "all positive", the largest "all negative"
    -- so it runs on networks with millions of parameters. Ritz values lie inside the
    spectrum, so a saddle found this way is certain; a "minimum" is as reliable as the
    convergence of the smallest eigenvalue (the ``reason`` quotes the largest Ritz
    residual).

    A float16 or bfloat16 ``x``: ``f`` and its derivatives run in that dtype, the
    eigenvalues and the gradient norm are computed and returned in float32 (``eigh`` has no
    float16 kernels, and a float16 sum of squares overflows at 65504).

    Args:
      fun: scalar function ``f(x, *args)``.
      x: the point, a pytree of real float arrays.
      *args: further arguments of ``fun`` (data), held fixed.
      grad_tol: relative gradient tolerance (see above); default ``sqrt(eps)`` of ``x``'s
        dtype.
      grad_atol: absolute gradient tolerance, in the units of the gradient; default 0.
      eig_tol: relative eigenvalue tolerance; default ``sqrt(eps)``.
      k: eigenvalues from each end on the Lanczos path.
      key: PRNG key for Lanczos; ``None`` uses ``jax.random.key(0)``.
      num_iters: ``None`` runs thick-restart Lanczos until the Ritz residuals meet
        ``eigenvalues``' default ``tol``; an int runs one pass of that many Lanczos steps
        (see ``eigenvalues``).
      dense_threshold: largest ``N`` for which the Hessian is formed and fully diagonalized.

    Returns:
      A ``CriticalPoint`` with ``kind``, ``eigenvalues``, ``gradient_norm``, ``value``, the
      sign counts, ``method`` and a human-readable ``reason``.

    Raises:
      ValueError: non-scalar ``fun``, an ``x`` without arrays, negative tolerances, ``k``
        out of range. TypeError: integer or non-array leaves in ``x``.

    Example (the seed's :math:`x^2 + 3xy + y^2`: Hessian eigenvalues 5 and -1 at 0):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> cp = jaxcurv.classify_critical_point(f, jnp.zeros(2))
      >>> cp.kind, cp.eigenvalues.round(4).tolist()
      ('saddle', [-1.0, 5.0])
      >>> g = lambda p: jnp.sum((p - 1.0) ** 2) + 1e6  # an offset does not make 0 critical
      >>> jaxcurv.classify_critical_point(g, jnp.zeros(3)).kind
      'not critical'

    References:
      Dauphin, Pascanu, Gulcehre, Cho, Ganguli and Bengio, "Identifying and attacking the
      saddle point problem in high-dimensional non-convex optimization", NeurIPS 2014.
      Nocedal and Wright, "Numerical Optimization", 2nd ed., theorems 2.3-2.4 (second-order
      conditions).
    """
    _check_real_inputs("classify_critical_point", x, "point `x`")
    op = hessian_operator(fun, x, *args)
    n, dtype = op.size, op.dtype
    default_tol = float(np.sqrt(np.finfo(dtype).eps))
    grad_tol = default_tol if grad_tol is None else grad_tol
    eig_tol = default_tol if eig_tol is None else eig_tol
    default = "Pass a non-negative tolerance, or None for the default."
    for name, tol, fix in (
        ("grad_tol", grad_tol, default),
        ("grad_atol", grad_atol, "Pass 0 to rely on `grad_tol` alone."),
        ("eig_tol", eig_tol, default),
    ):
        if not tol >= 0:
            raise ValueError(
                f"`classify_critical_point({name}=...)` must be >= 0, got {tol!r}. {fix}"
            )

    dense_threshold = _check_int(
        "classify_critical_point(dense_threshold=...)",
        dense_threshold,
        low=0,
        fix="Use 0 to force Lanczos.",
    )
    dense = n <= dense_threshold
    if not dense:
        k = _check_int(
            "classify_critical_point(k=...)",
            k,
            low=1,
            high=n // 2,
            fix=f"Lanczos takes k eigenvalues from each end of a spectrum of N={n}.",
        )

    value = op.value
    gradient_norm = tree_norm(_to_working(op.grad))
    if dense:
        evals = jnp.linalg.eigvalsh(_symmetric_dense(op))
        method, residual_text = "dense", ""
    else:
        found = eigenvalues(op, k, which="both", key=key, num_iters=num_iters, dense_threshold=0)
        evals = found.eigenvalues
        method = "lanczos"
        residual_text = f", largest Ritz residual {_fmt(float(jnp.max(found.residual_norms)))}"

    lam = np.asarray(evals, dtype=np.float64)
    g, f = float(gradient_norm), float(value)
    nonfinite = _nonfinite_reason(bool(tree_all_finite(x)), f, g, lam)
    scale = float(np.max(np.abs(lam))) if lam.size else 0.0
    zero_tol = eig_tol * scale
    curvature, why, n_pos, n_neg, n_zero = _curvature_kind(lam, zero_tol)
    grad_bound = _gradient_bound(grad_tol, grad_atol, scale, float(tree_norm(_to_working(x))))

    if nonfinite:
        n_pos = n_neg = n_zero = None
    elif not dense:
        # Only the extremes are known: counts are exact only when one sign covers them all.
        if curvature == "minimum":
            n_pos, n_neg, n_zero = n, 0, 0
        elif curvature == "maximum":
            n_pos, n_neg, n_zero = 0, n, 0
        else:
            n_pos = n_neg = n_zero = None

    grad_text = f"gradient norm {_fmt(g)}"
    eig_text = (
        f"Hessian eigenvalues in [{_fmt(lam[0])}, {_fmt(lam[-1])}] ({method}, N={n}"
        f"{residual_text}; zero means |lambda| <= {_fmt(zero_tol)})"
    )
    if nonfinite:
        kind = "not critical"
        reason = (
            f"{nonfinite}, so no second-order test applies and x is not classified; "
            f"{grad_text}, f(x) = {_fmt(f)}; {eig_text}."
        )
    elif g <= grad_bound:
        kind = curvature
        reason = f"{grad_text} <= {_fmt(grad_bound)}, so x is critical; {eig_text}: {why}."
    else:
        kind = "not critical"
        reason = (
            f"{grad_text} > {_fmt(grad_bound)} (max(grad_atol, grad_tol * max|lambda| * "
            f"max(1, ||x||))), so x is not a critical point; {eig_text}; locally the "
            f"curvature alone would say {curvature}."
        )
    return CriticalPoint(
        kind=kind,
        eigenvalues=evals,
        gradient_norm=gradient_norm,
        value=value,
        num_positive=n_pos,
        num_negative=n_neg,
        num_zero=n_zero,
        method=method,
        reason=reason,
    )


@jax.jit
def _symmetric_dense(op: CurvatureOperator) -> jax.Array:
    # float32 for a float16/bfloat16 operator: eigvalsh has no kernels below it.
    H = op.to_dense()
    H = H.astype(_working_dtype(H.dtype))
    return 0.5 * (H + H.T)
