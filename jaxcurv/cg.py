r"""Truncated, preconditioned conjugate gradient over pytrees, with diagnostics.

``cg(A, b)`` minimises the quadratic model

.. math:: \phi(x) = \tfrac12 x^\top (A + \lambda I) x - b^\top x,

i.e. solves :math:`(A + \lambda I) x = b` for symmetric positive-definite ``A``, using only
products ``v -> A v`` on pytrees. It is the inner solver of Hessian-free optimization
(Martens 2010), so it is built for matrices that are *not* known to be positive definite
(Hessians far from a minimum): a direction of non-positive curvature ends the iteration
with a usable answer instead of NaN, as in truncated Newton / Steihaug CG.

Differences from ``jax.scipy.sparse.linalg.cg`` (same argument names and tolerance rule):

* ``info`` is a :class:`CGInfo`, never ``None``: steps taken, residual norm, a
  :class:`CGStatus` whose members carry a message that says what to try, the value of the
  quadratic model and the last curvature ``p^T (A + lambda I) p``.
* Non-positive curvature stops with ``NEGATIVE_CURVATURE``; non-finite products stop with
  ``NONFINITE``; both return the last good (finite) iterate.
* ``damping`` solves with ``A + damping * I`` without wrapping ``A`` by hand.
* ``stop_rule="martens"`` adds Martens' relative-progress rule on :math:`\phi`.
* ``record_iterates=True`` keeps the iterates at steps ``ceil(5 * 1.3**j)`` in a fixed-size
  buffer for Hessian-free CG backtracking.
"""

from __future__ import annotations

import enum
import fractions
import functools
import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._compile import compiled_call
from jaxcurv._precision import _has_low_precision, _is_low_precision, _scaled_product, _to_working
from jaxcurv._symmetry import check_symmetric_matrix
from jaxcurv.products import CurvatureOperator, as_matvec
from jaxcurv.tree import (
    tree_all_finite,
    tree_axpy,
    tree_check_like,
    tree_size,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)

PyTree = Any

__all__ = [
    "CGInfo",
    "CGStatus",
    "cg",
    "cg_record_steps",
    "cg_status_message",
]

_STOP_RULES = ("residual", "martens")
_SYMMETRIC_FIX = (
    "CG needs a symmetric positive-definite matrix. If the asymmetry is rounding or noise, "
    "pass its symmetric part `(A + A.T) / 2`; for a non-symmetric system use "
    "`jnp.linalg.solve` or `jax.scipy.sparse.linalg.gmres`."
)
# Internal "still iterating" status; never returned.
_RUNNING = -1


class _Message:
    """``CGStatus.X.message`` is X's text; ``CGStatus.message(code)`` looks a code up."""

    def __get__(self, member, owner=None):
        if member is None:
            return cg_status_message
        return _MESSAGES[member]


class CGStatus(enum.IntEnum):
    """Why :func:`cg` stopped.

    ``CGStatus.NONFINITE.message``, ``CGStatus.message(3)`` and ``info.message`` say what
    happened and what to try.
    """

    CONVERGED = 0
    MAX_STEPS = 1
    NEGATIVE_CURVATURE = 2
    NONFINITE = 3
    PROGRESS_STALLED = 4

    message = _Message()


_MESSAGES = {
    CGStatus.CONVERGED: (
        "CG converged: the residual norm fell to max(tol * ||b||, atol) or below."
    ),
    CGStatus.MAX_STEPS: (
        "CG stopped after `maxiter` steps before reaching the tolerance. Try a larger "
        "`maxiter`, a preconditioner `M` (e.g. the inverse diagonal), more `damping`, or a "
        "looser `tol`/`atol`."
    ),
    CGStatus.NEGATIVE_CURVATURE: (
        "CG met a direction p with p^T (A + damping I) p <= 0 (numerically), so the matrix "
        "is not positive definite there; it returned the last iterate before that "
        "direction (x0 + M r0 if it happened at the first step, a descent direction of the "
        "quadratic model). For a Hessian, raise `damping` or use the positive semi-definite "
        "Gauss-Newton matrix (`jaxcurv.ggn_operator`)."
    ),
    CGStatus.NONFINITE: (
        "CG met a NaN or inf (in a product, a step or the preconditioner) and returned the "
        "last finite iterate. Check `A`, `b` and `M` for non-finite values, rescale the "
        "problem, add `damping`, or compute in float64."
    ),
    CGStatus.PROGRESS_STALLED: (
        "CG stopped by Martens' relative-progress rule: over the last k steps the quadratic "
        "model improved by less than a fraction k * martens_eps of its value. This is the "
        "intended exit inside Hessian-free optimization; lower `martens_eps` to run longer."
    ),
}


def cg_status_message(status: Any) -> str:
    """The message of a status code (an int, a ``CGStatus`` or a concrete scalar array).

    Host-side only: under ``jax.jit`` the status is a tracer; return it and read the
    message outside.
    """
    if isinstance(status, jax.core.Tracer):
        raise TypeError(
            "`cg_status_message(status)` needs a concrete status, got a tracer; return "
            "`info` from the jitted function and read `info.message` outside it."
        )
    arr = np.asarray(status)
    if arr.shape != ():
        raise ValueError(
            f"`cg_status_message(status)` takes one status, got shape {arr.shape}; for a "
            "batch use `[cg_status_message(s) for s in np.ravel(info.status)]`."
        )
    try:
        return CGStatus(int(arr)).message
    except ValueError:
        raise ValueError(
            f"`cg_status_message(status)` got {int(arr)}, which is not a CGStatus value "
            f"({', '.join(f'{s.name}={int(s)}' for s in CGStatus)})."
        ) from None


class CGInfo(NamedTuple):
    """Diagnostics of a :func:`cg` solve. Scalars are 0-d arrays (batched under vmap)."""

    num_steps: jax.Array  # int32 (): CG updates applied to reach the returned x
    residual_norm: jax.Array  # (): ||b - (A + damping I) x|| (recurrence residual)
    status: jax.Array  # int32 (): a CGStatus value
    quadratic_value: jax.Array  # (): phi(x) = x^T (A + damping I) x / 2 - b^T x
    curvature: jax.Array  # (): p^T (A + damping I) p of the last direction; 0 if none
    iterates: PyTree | None = None  # record_iterates: leaves stacked (R, *leaf.shape)
    iterate_steps: jax.Array | None = None  # int32 (R,): step of each slot, -1 = empty
    iterate_values: jax.Array | None = None  # (R,): quadratic model phi at each slot's iterate

    @property
    def converged(self) -> jax.Array:
        """Boolean array: the residual tolerance was met."""
        return self.status == CGStatus.CONVERGED

    @property
    def message(self) -> str:
        """What happened and what to try (host-side; see :func:`cg_status_message`)."""
        return cg_status_message(self.status)


def cg_record_steps(maxiter: int) -> tuple[int, ...]:
    """The steps ``ceil(5 * 1.3**j) <= maxiter`` whose iterates ``record_iterates`` keeps.

    Computed in exact rational arithmetic (no float rounding at the ceiling). The iterate
    buffer has one more slot, for the returned iterate.
    """
    steps, j = [], 0
    while True:
        s = math.ceil(fractions.Fraction(5) * fractions.Fraction(13, 10) ** j)
        if s > maxiter:
            return tuple(steps)
        steps.append(s)
        j += 1


def _is_concrete(v: Any) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _check_args(tol, atol, maxiter, stop_rule, martens_eps, size) -> int:
    if stop_rule not in _STOP_RULES:
        raise ValueError(f"`cg(stop_rule=...)` must be one of {_STOP_RULES}, got {stop_rule!r}.")
    if maxiter is None:
        maxiter = 10 * max(size, 1)
    if isinstance(maxiter, bool):
        raise TypeError(f"`cg(maxiter=...)` must be a positive int, got {maxiter!r}.")
    try:
        maxiter = operator.index(maxiter)
    except TypeError:
        raise TypeError(
            f"`cg(maxiter=...)` must be a positive Python int (it sizes the loop's "
            f"buffers, so it is static), got {type(maxiter).__name__}: {maxiter!r}."
        ) from None
    if maxiter <= 0:
        raise ValueError(f"`cg(maxiter=...)` must be positive, got {maxiter}.")
    for name, value in (("tol", tol), ("atol", atol)):
        if _is_concrete(value) and not np.all(np.asarray(value) >= 0):
            raise ValueError(
                f"`cg({name}=...)` must be a non-negative number, got {value!r}. Use "
                f"{name}=0 to disable this criterion."
            )
    if _is_concrete(martens_eps) and not np.all(np.asarray(martens_eps) > 0):
        raise ValueError(
            f"`cg(martens_eps=...)` must be positive, got {martens_eps!r}; Martens (2010) "
            "uses 5e-4."
        )
    return maxiter


def _check_floating(b: PyTree) -> None:
    leaves = jax.tree.leaves(b)
    if not leaves:
        raise ValueError("`cg(b)` must contain at least one array, got an empty pytree.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(b):
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            where = jax.tree_util.keystr(path) or "<root>"
            raise TypeError(
                f"`cg(b)` leaf {where} has dtype {dtype}; CG needs floating-point values. "
                f"Cast it, e.g. `b.astype(jnp.float32)`."
            )


def _like(tree: PyTree, like: PyTree) -> PyTree:
    """Cast ``tree``'s leaves to ``like``'s dtypes so the loop carry keeps its types."""
    return jax.tree.map(lambda t, lk: jnp.asarray(t).astype(jnp.result_type(lk)), tree, like)


def _coarsest_eps(*trees: PyTree) -> float:
    """The largest machine epsilon among the leaves' dtypes (their real parts)."""
    return max(
        float(jnp.finfo(jnp.result_type(leaf)).eps) for t in trees for leaf in jax.tree.leaves(t)
    )


def _vdot_real(a: PyTree, b: PyTree) -> jax.Array:
    return jnp.real(tree_vdot(a, b))


def _preconditioner(M: Any, b: PyTree) -> tuple[Callable[[PyTree], PyTree] | None, bool]:
    """``(r -> M r, dense)``: a dense ``M`` is cast to at least float32 (exactly)."""
    if M is None:
        return None, False
    if isinstance(M, (jax.Array, np.ndarray)):
        n = tree_size(b)
        if M.shape != (n, n) or not isinstance(b, (jax.Array, np.ndarray)):
            raise ValueError(
                f"A dense `cg(M=...)` must be an {n} x {n} matrix acting on a 1-D `b`, got "
                f"shape {M.shape} for `b` of shape {jax.tree.map(jnp.shape, b)}. Pass a "
                "callable `r -> M r` on pytrees instead."
            )
        mat = jnp.asarray(M)
        if _is_low_precision(mat.dtype):
            mat = mat.astype(jnp.float32)
        return (lambda r: mat @ r), True
    if callable(M):
        return M, False
    raise TypeError(
        f"`cg(M=...)` must be None, a callable `r -> M r` or a square matrix, got "
        f"{type(M).__name__}."
    )


class _State(NamedTuple):
    i: jax.Array  # int32: CG updates applied so far
    x: PyTree
    r: PyTree  # recurrence residual b - (A + damping I) x
    p: PyTree  # search direction
    rz: jax.Array  # r^T M r
    rr: jax.Array  # r^T r
    pmp: jax.Array  # p^T M^{-1} p (p^T p without a preconditioner)
    status: jax.Array  # int32, _RUNNING while iterating
    curvature: jax.Array
    max_rayleigh: jax.Array  # largest p^T A p / p^T M^{-1} p seen
    phi: jax.Array  # quadratic model at x
    phi_hist: jax.Array | None  # ring buffer of past phi (martens rule only)
    rec: PyTree | None  # recorded iterates (record_iterates only)
    rec_phi: jax.Array | None  # phi at the recorded iterates (record_iterates only)


def cg(
    A: Any,
    b: PyTree,
    x0: PyTree | None = None,
    *,
    tol: jax.typing.ArrayLike = 1e-5,
    atol: jax.typing.ArrayLike = 0.0,
    maxiter: int | None = None,
    M: Any = None,
    damping: jax.typing.ArrayLike = 0.0,
    stop_rule: str = "residual",
    record_iterates: bool = False,
    martens_eps: jax.typing.ArrayLike = 5e-4,
) -> tuple[PyTree, CGInfo]:
    r"""Solve :math:`(A + \lambda I) x = b` by (truncated, preconditioned) conjugate gradient.

    Equivalently, minimise :math:`\phi(x) = \tfrac12 x^\top (A + \lambda I) x - b^\top x`
    over the Krylov space. Stops at the first of: :math:`\|r\| \le \max(\mathrm{tol}\,
    \|b\|, \mathrm{atol})` (``CONVERGED``, as in ``jax.scipy.sparse.linalg.cg``), a direction
    with :math:`p^\top (A + \lambda I) p \le 0` (``NEGATIVE_CURVATURE``; also when it is
    numerically zero: below machine epsilon times :math:`p^\top M^{-1} p` times the largest
    Rayleigh quotient seen), a non-finite value (``NONFINITE``), Martens' progress rule
    (``PROGRESS_STALLED``, with ``stop_rule="martens"``), or ``maxiter`` steps
    (``MAX_STEPS``). Each step costs one product with ``A`` (plus one with ``M``);
    ``info.residual_norm`` and ``info.quadratic_value`` come from the CG recurrences, so
    they cost no extra product and agree with the directly computed values to rounding.

    At a negative-curvature exit the returned ``x`` is the last iterate before the bad
    direction; if that happens at the very first step (so there is no CG iterate yet) it is
    ``x0 + p0`` with ``p0 = M r0`` (``M b`` when ``x0`` is None): the steepest-descent
    direction of :math:`\phi` (preconditioned), along which :math:`\phi` decreases without
    bound: the truncated-Newton convention (Nocedal & Wright, Alg. 7.1), so a caller always
    gets a descent direction. With a singular positive semi-definite ``A`` and ``b`` outside
    its range, :math:`\phi` is unbounded below too, and the exit is the same. At a
    ``NONFINITE`` exit ``x`` is the last finite iterate (zeros if ``x0`` itself is not
    finite); nothing non-finite is returned in ``x``.

    Unlike ``jax.scipy.sparse.linalg.cg``: ``info`` is never None; non-positive curvature
    and non-finite values stop the loop instead of producing NaN; ``damping``,
    ``stop_rule="martens"`` and ``record_iterates`` are extra. Everything runs in one
    ``lax.while_loop``; ``maxiter``, ``stop_rule`` and ``record_iterates`` are static, the
    other numbers may be traced, and ``A`` may be a ``CurvatureOperator`` passed through
    ``jax.jit`` as an argument. At top level ``cg`` compiles once per computation
    (``jaxcurv._compile``): a new right-hand side, operator or closure of the same shapes
    reuses the executable; inside the user's ``jax.jit`` it is inlined.

    float16 and bfloat16: ``x``, the residual, the directions and every inner product are
    kept in float32 (in float16 :math:`b^\top b` alone overflows once :math:`\|b\| >
    256`, and 11-bit inner products lose conjugacy); products with ``A`` and ``M`` still
    run in their own dtype, on a direction scaled to a largest entry of one (so it neither
    underflows nor overflows float16's range) and scaled back in float32; a dense
    float16/bfloat16 matrix is cast to float32, exactly. ``x`` (and ``info.iterates``)
    come back in ``b``'s dtypes, the ``info`` scalars in float32. An iterate that would
    overflow ``b``'s dtype stops the run with ``NONFINITE``. The accuracy is that of the
    products: with a float16 operator expect a relative error of about ``cond(A)`` times
    float16's ``eps``, whatever ``tol``.

    Args:
      A: a ``CurvatureOperator`` (``jaxcurv.hessian_operator`` / ``ggn_operator``), a
        dense symmetric ``(n, n)`` matrix (then ``b`` is a vector of shape ``(n,)``), or a
        callable ``v -> A v`` on pytrees shaped like ``b``. Assumed symmetric; a concrete
        dense matrix is checked (to rounding; see ``jaxcurv._symmetry.check_symmetric_matrix``).
      b: right-hand side, a pytree of floating arrays.
      x0: initial guess like ``b``; zeros when None (which saves one product).
      tol: relative tolerance on the residual norm.
      atol: absolute tolerance on the residual norm.
      maxiter: the most CG steps (static int); default ``10 * size(b)``.
      M: preconditioner ``r -> M r`` approximating :math:`(A + \lambda I)^{-1}`, symmetric
        positive definite; a callable on pytrees or a dense matrix. The tolerance applies
        to the unpreconditioned residual, as in ``jax.scipy``.
      damping: :math:`\lambda`, added to the diagonal (Tikhonov / Levenberg-Marquardt).
      stop_rule: ``"residual"`` (tolerances only) or ``"martens"``: also stop at step
        ``i`` when ``i > k``, :math:`\phi_i < 0` and :math:`(\phi_i - \phi_{i-k}) / \phi_i
        < k\,\epsilon` with ``k = max(10, ceil(0.1 i))`` (Martens 2010, §4.4).
      record_iterates: keep the iterates at steps :func:`cg_record_steps` ``(maxiter)``
        plus the returned one (Martens 2010, §4.6, CG backtracking).
      martens_eps: :math:`\epsilon` of the Martens rule.

    Returns:
      ``(x, info)``: ``x`` a pytree like ``b``; ``info`` a :class:`CGInfo`. With
      ``record_iterates=True``, ``info.iterates`` stacks ``R = len(cg_record_steps(maxiter))
      + 1`` iterates per leaf (shape ``(R, *leaf.shape)``; the last slot is the returned
      ``x``), ``info.iterate_steps`` gives each slot's step, ``-1`` for slots past the
      end of the run (which hold zeros), and ``info.iterate_values`` the quadratic model
      :math:`\phi` at each slot's iterate (from the recurrence, like
      ``info.quadratic_value``; 0 for empty slots).

    Raises:
      ValueError: bad ``maxiter`` / ``tol`` / ``atol`` / ``martens_eps`` / ``stop_rule``;
        ``x0``, ``b`` or ``A``'s output not matching ``A``'s domain; a dense ``A`` that is
        not symmetric beyond rounding.
      TypeError: integer ``b``; ``maxiter`` not an int; ``A`` or ``M`` of the wrong kind.

    Example:
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> x, info = jaxcurv.cg(A, jnp.array([1.0, 2.0]))
      >>> x
      Array([0.09090909, 0.6363636 ], dtype=float32)
      >>> int(info.num_steps), info.message[:13]
      (2, 'CG converged:')

    References:
      Hestenes & Stiefel 1952, "Methods of conjugate gradients for solving linear
      systems". Steihaug 1983, "The conjugate gradient method and trust regions in large
      scale optimization"; Nocedal & Wright 2006, *Numerical Optimization*, Alg. 5.3
      (preconditioned CG), 7.1 (line-search Newton-CG) and 7.2 (CG-Steihaug). Martens
      2010, "Deep learning via Hessian-free optimization", §4.4 (termination), §4.6
      (CG backtracking).
    """
    options = dict(
        tol=tol,
        atol=atol,
        maxiter=maxiter,
        damping=damping,
        stop_rule=stop_rule,
        record_iterates=record_iterates,
        martens_eps=martens_eps,
    )
    # `A` and `M` are closed over: their concrete arrays become hoisted constants, so
    # checks that need values (symmetry) still see them and no closure keys the cache.
    # `b` and `x0` are arguments, so under the user's jit the call is inlined at once.
    return compiled_call(lambda b, x0: _cg_impl(A, b, x0, M=M, **options), b, x0)


def _cg_impl(
    A: Any,
    b: PyTree,
    x0: PyTree | None = None,
    *,
    tol: jax.typing.ArrayLike = 1e-5,
    atol: jax.typing.ArrayLike = 0.0,
    maxiter: int | None = None,
    M: Any = None,
    damping: jax.typing.ArrayLike = 0.0,
    stop_rule: str = "residual",
    record_iterates: bool = False,
    martens_eps: jax.typing.ArrayLike = 5e-4,
) -> tuple[PyTree, CGInfo]:
    """The body of :func:`cg` (see there); traced by the compile policy."""
    if isinstance(A, (jax.Array, np.ndarray)) and A.ndim == 2:
        if not isinstance(b, (jax.Array, np.ndarray)) or jnp.shape(b) != A.shape[:1]:
            raise ValueError(
                f"`cg(b)` must be a vector of shape ({A.shape[0]},) for a dense `A` of shape "
                f"{A.shape}, got {jax.tree.map(jnp.shape, b)}. For pytree right-hand sides "
                "pass `A` as a callable `v -> A v` or a jaxcurv operator."
            )
    # An operator's own domain (op.x) fixes the dtypes its products run in.
    matvec, domain = as_matvec(A, example=None if isinstance(A, CurvatureOperator) else b)
    check_symmetric_matrix("cg(A)", A, fix=_SYMMETRIC_FIX)
    tree_check_like("b", b, domain, "A's domain")
    _check_floating(b)
    maxiter = _check_args(tol, atol, maxiter, stop_rule, martens_eps, tree_size(b))
    record_iterates = bool(record_iterates)
    martens = stop_rule == "martens"
    precond, dense_m = _preconditioner(M, b)

    # float16/bfloat16: the iteration runs in float32 (`bw`, b's working copy), products in
    # the operator's own dtype through `_scaled_product`; in float16 b^T b alone overflows
    # once ||b|| > 256, and its 11-bit inner products cannot keep directions conjugate.
    low = _has_low_precision(b, domain)
    bw = _to_working(b) if low else b
    if low and isinstance(A, (jax.Array, np.ndarray)) and A.ndim == 2:
        # A dense float16/bfloat16 matrix is exact in float32: its products can be too.
        matvec, domain = as_matvec(_to_working(jnp.asarray(A)), example=bw)
    leaves = jax.tree.leaves(bw)
    # Scalars (step lengths, norms) live in the real type of the promoted leaf dtype.
    real = jnp.finfo(jnp.result_type(*leaves)).dtype
    lam = jnp.asarray(damping, real)
    use_damping = not (_is_concrete(damping) and np.all(np.asarray(damping) == 0))

    def product(v):
        av = matvec(v)
        tree_check_like("A(v)", av, b, "b")
        return av

    def preconditioned(r):
        z = precond(r)
        tree_check_like("M(r)", z, b, "b")
        return z

    def apply_a(v):
        if low:
            av = _scaled_product(product, v, domain, bw)
        else:
            av = _like(product(_like(v, domain)), b)
        return tree_axpy(lam, v, av) if use_damping else av

    def apply_m(r):
        if precond is None:
            return r
        if low:
            return _scaled_product(preconditioned, r, bw if dense_m else b, bw)
        return _like(preconditioned(r), b)

    if x0 is None:
        x_finite = jnp.asarray(True)
    else:
        tree_check_like("x0", x0, b, "b")
        x0 = _like(x0, bw)
        x_finite = tree_all_finite(x0)
        # A non-finite start is reported, and zeros are returned in its place.
        x0 = tree_where(x_finite, x0, tree_zeros_like(bw))

    bb = _vdot_real(bw, bw)
    rec_steps = np.asarray(cg_record_steps(maxiter), np.int32)
    problem = _Problem(
        apply_a=apply_a,
        apply_m=apply_m,
        preconditioned=precond is not None,
        out_like=b if low else None,
        thresh2=jnp.maximum(jnp.asarray(tol, real) ** 2 * bb, jnp.asarray(atol, real) ** 2),
        # Curvature below the rounding of the products is noise: the coarsest precision of
        # the products (A's domain) and of the iteration sets the threshold.
        tiny=jnp.asarray(_coarsest_eps(domain, bw), real),
        maxiter=maxiter,
        martens_eps=jnp.asarray(martens_eps, real) if martens else None,
        rec_steps=rec_steps if record_iterates else None,
    )
    state = _init(problem, bw, x0, x_finite)
    state = jax.lax.while_loop(
        lambda s: s.status == _RUNNING, functools.partial(_step, problem), state
    )
    return _finish(problem, state)


class _Problem(NamedTuple):
    """What every CG step reads besides the state; fixed for one solve (not a pytree leaf)."""

    apply_a: Callable[[PyTree], PyTree]  # v -> (A + damping I) v, working precision
    apply_m: Callable[[PyTree], PyTree]  # r -> M r; the identity without `M`
    preconditioned: bool  # `M` given: r^T M r is not r^T r
    out_like: PyTree | None  # float16/bfloat16 `b`: the iterate must survive a cast to it
    thresh2: jax.Array  # (): max(tol^2 ||b||^2, atol^2), the squared residual target
    tiny: jax.Array  # (): relative curvature below which p^T A p is rounding noise
    maxiter: int
    martens_eps: jax.Array | None  # (): Martens' progress fraction (martens rule only)
    rec_steps: np.ndarray | None  # int32 (R - 1,): steps to record (record_iterates only)


def _init(problem: _Problem, bw: PyTree, x0: PyTree | None, x_finite: jax.Array) -> _State:
    """The state before the first step: residual ``r0 = b - A x0``, direction ``p0 = M r0``.

    ``bw`` is ``b`` in the working precision and ``x0`` (``None``: zeros) is already cast
    to it and finite; ``x_finite`` says whether the caller's ``x0`` was.
    """
    real = problem.tiny.dtype
    if x0 is None:
        x, r = tree_zeros_like(bw), bw
        phi0 = jnp.zeros((), real)
    else:
        x = x0
        r = jax.tree.map(jnp.subtract, bw, problem.apply_a(x))
        # phi(x0) = -x0^T (r0 + b) / 2 with r0 = b - A x0 from a real product.
        phi0 = -0.5 * _vdot_real(x, jax.tree.map(jnp.add, r, bw))
    z = problem.apply_m(r)
    rr = _vdot_real(r, r)
    rz = _vdot_real(r, z) if problem.preconditioned else rr
    finite0 = x_finite & jnp.isfinite(rr) & jnp.isfinite(rz)
    status0 = jnp.where(
        ~finite0, CGStatus.NONFINITE, jnp.where(rr <= problem.thresh2, CGStatus.CONVERGED, _RUNNING)
    ).astype(jnp.int32)

    phi_hist = None
    if problem.martens_eps is not None:
        hist_len = max(10, math.ceil(0.1 * problem.maxiter)) + 1  # holds phi_{i-k}, ..., phi_i
        phi_hist = jnp.zeros((hist_len,), real).at[0].set(phi0)
    rec = rec_phi = None
    if problem.rec_steps is not None:
        n_rec = problem.rec_steps.size + 1
        rec = jax.tree.map(lambda leaf: jnp.zeros((n_rec, *jnp.shape(leaf)), leaf.dtype), bw)
        rec_phi = jnp.zeros((n_rec,), real)
    return _State(
        i=jnp.zeros((), jnp.int32),
        x=x,
        r=r,
        p=z,
        rz=rz,
        rr=rr,
        pmp=rz,
        status=status0,
        curvature=jnp.zeros((), real),
        max_rayleigh=jnp.zeros((), real),
        phi=phi0,
        phi_hist=phi_hist,
        rec=rec,
        rec_phi=rec_phi,
    )


def _step(problem: _Problem, s: _State) -> _State:
    """One Hestenes-Stiefel update ``x += alpha p``, ``r -= alpha A p``, ``p = M r + beta p``,
    and the stop tests, in order: non-finite, negative curvature, converged, stalled
    (Martens), ``maxiter``. A step that would leave ``x`` non-finite, or (after the first)
    meets negative curvature, keeps ``x``; ``s.status`` leaves ``_RUNNING`` to stop."""
    ap = problem.apply_a(s.p)
    pap = _vdot_real(s.p, ap)
    first = s.i == 0
    # Numerically zero curvature counts as non-positive: below eps times the largest
    # Rayleigh quotient seen so far (a lower bound on ||M^{1/2} A M^{1/2}||), the sign
    # of p^T A p is rounding noise, and a singular PSD matrix would otherwise take a
    # huge step along its null space instead of stopping.
    max_rayleigh = jnp.maximum(s.max_rayleigh, pap / s.pmp)
    neg = pap <= problem.tiny * s.pmp * max_rayleigh
    alpha = s.rz / jnp.where(neg, 1, pap)
    # At a first-step negative-curvature exit take x0 + p0 (a descent direction).
    step = jnp.where(neg, jnp.where(first, 1, 0), alpha)
    # Scale by a zero step rather than select whole trees: p is finite whenever the
    # loop runs (every quantity below is checked), so x + 0 * p == x exactly.
    r_new = tree_axpy(-step, ap, s.r)
    z_new = problem.apply_m(r_new)
    rr_new = _vdot_real(r_new, r_new)
    rz_new = _vdot_real(r_new, z_new) if problem.preconditioned else rr_new
    beta = rz_new / s.rz
    # phi(x + t p) = phi(x) - t r^T p + t^2 p^T A p / 2, and r^T p = r^T z in CG: the
    # model value comes free of products (as accurate as -x^T (r + b) / 2 would be).
    phi_step = s.phi + step * (0.5 * step * pap - s.rz)
    good = (
        jnp.isfinite(pap)
        & jnp.isfinite(step)
        & jnp.isfinite(rr_new)
        & jnp.isfinite(rz_new)
        & jnp.isfinite(beta)
        & jnp.isfinite(phi_step)
    )
    if problem.out_like is not None:
        # The iterate must survive the cast back to b's dtype (float16 ends at 65504).
        good = good & tree_all_finite(_like(tree_axpy(step, s.p, s.x), problem.out_like))
    moved = good & (~neg | first)
    x_new = tree_axpy(jnp.where(moved, step, 0), s.p, s.x)
    i_new = s.i + moved.astype(jnp.int32)
    phi_new = jnp.where(moved, phi_step, s.phi)
    hist, stalled = s.phi_hist, jnp.asarray(False)
    if problem.martens_eps is not None:
        hist_len = s.phi_hist.shape[0]
        k = jnp.maximum(10, (i_new + 9) // 10)
        phi_old = s.phi_hist[(i_new - k) % hist_len]
        progress = (phi_new - phi_old) / phi_new
        stalled = (i_new > k) & (phi_new < 0) & (progress < k * problem.martens_eps)
        hist = s.phi_hist.at[i_new % hist_len].set(phi_new)  # unmoved: rewrites phi_i

    status = jnp.select(
        [~good, neg, rr_new <= problem.thresh2, stalled, i_new >= problem.maxiter],
        [
            CGStatus.NONFINITE,
            CGStatus.NEGATIVE_CURVATURE,
            CGStatus.CONVERGED,
            CGStatus.PROGRESS_STALLED,
            CGStatus.MAX_STEPS,
        ],
        _RUNNING,
    ).astype(jnp.int32)
    rec, rec_phi = _record(problem, s, x_new, phi_new, i_new, moved & ~neg)

    # Order x's update before p's: both read p, and with p_new free to come first XLA
    # keeps p alive by copying it every step (one more pass over N). Reading one entry
    # of each x_new leaf into beta (times zero: x_new is finite) makes p_new depend on
    # x_new, so p_new can take p's buffer in place.
    tie = [jnp.ravel(leaf)[0] for leaf in jax.tree.leaves(x_new) if jnp.size(leaf)]
    beta_tied = beta + 0 * sum(jnp.real(t).astype(beta.dtype) for t in tie)
    return _State(
        i=i_new,
        x=x_new,
        r=r_new,
        p=tree_axpy(beta_tied, s.p, z_new),
        rz=rz_new,
        rr=jnp.where(moved, rr_new, s.rr),
        # p^T M^{-1} p by recurrence (r_{i+1} is orthogonal to p_i): no extra product.
        pmp=rz_new + beta**2 * s.pmp,
        status=status,
        curvature=pap,
        max_rayleigh=max_rayleigh,
        phi=phi_new,
        phi_hist=hist,
        rec=rec,
        rec_phi=rec_phi,
    )


def _record(problem, s, x_new, phi_new, i_new, advanced):
    """``(rec, rec_phi)`` with ``x_new`` written to its slot when ``i_new`` is recorded."""
    if problem.rec_steps is None or not problem.rec_steps.size:
        return s.rec, s.rec_phi
    hit = jnp.asarray(problem.rec_steps) == i_new
    slot = jnp.argmax(hit)

    def write(bufs):
        return jax.tree.map(
            lambda buf, leaf: jax.lax.dynamic_update_index_in_dim(buf, leaf, slot, 0),
            bufs,
            x_new,
        )

    # Only at recorded steps (a few in a hundred): an unconditional write of x_new
    # is one more pass over N per step, ~20% of a step on a cheap operator. The
    # conditional updates the buffer in place.
    record = advanced & hit.any()
    rec = jax.lax.cond(record, write, lambda bufs: bufs, s.rec)
    rec_phi = jnp.where(record, s.rec_phi.at[slot].set(phi_new), s.rec_phi)
    return rec, rec_phi


def _finish(problem: _Problem, s: _State) -> tuple[PyTree, CGInfo]:
    """``(x, CGInfo)`` from the final state: ``x`` back in ``b``'s dtypes, the recorded
    iterates completed by the final one."""
    low = problem.out_like is not None
    iterates = iterate_steps = iterate_values = None
    if problem.rec_steps is not None:
        rec_steps, n_rec = problem.rec_steps, problem.rec_steps.size + 1
        iterates = jax.tree.map(lambda buf, leaf: buf.at[n_rec - 1].set(leaf), s.rec, s.x)
        if low:
            iterates = _like(iterates, problem.out_like)
        iterate_steps = jnp.concatenate(
            [jnp.where(jnp.asarray(rec_steps) <= s.i, rec_steps, -1), s.i[None]]
        ).astype(jnp.int32)
        iterate_values = s.rec_phi.at[n_rec - 1].set(s.phi)
    info = CGInfo(
        num_steps=s.i,
        residual_norm=jnp.sqrt(s.rr),
        status=s.status,
        quadratic_value=s.phi,
        curvature=s.curvature,
        iterates=iterates,
        iterate_steps=iterate_steps,
        iterate_values=iterate_values,
    )
    return (_like(s.x, problem.out_like) if low else s.x), info
