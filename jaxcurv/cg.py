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

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._cg_loop import _coarsest_eps, _implicit_solve, _like, _Problem, _run
from jaxcurv._checks import check_int
from jaxcurv._compile import compiled_call, is_traced
from jaxcurv._precision import _has_low_precision, _is_low_precision, _scaled_product, _to_working
from jaxcurv._symmetry import check_symmetric_matrix
from jaxcurv.cg_status import CGInfo, CGStatus, cg_record_steps, cg_status_message
from jaxcurv.products import CurvatureOperator, as_matvec
from jaxcurv.tree import (
    tree_all_finite,
    tree_axpy,
    tree_check_like,
    tree_size,
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


def _is_concrete(v: Any) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _check_args(tol, atol, maxiter, stop_rule, martens_eps, size) -> int:
    if stop_rule not in _STOP_RULES:
        raise ValueError(f"`cg(stop_rule=...)` must be one of {_STOP_RULES}, got {stop_rule!r}.")
    if maxiter is None:
        maxiter = 10 * max(size, 1)
    maxiter = check_int(
        "cg(maxiter=...)",
        maxiter,
        minimum=1,
        requirement="positive",
        fix="`maxiter` must be a positive Python int: it sizes the loop's buffers, so it is "
        "static.",
    )
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

    Differentiable: ``jax.grad``, ``jax.jvp`` and ``jax.vmap`` of them see the derivative
    of the exact solution, :math:`dx = (A + \lambda I)^{-1} (db - dA\, x - d\lambda\,
    x)`, by implicit differentiation (``jax.lax.custom_linear_solve``), with respect to
    ``b``, ``damping`` and whatever ``A`` holds or closes over (a dense matrix, ``lambda v:
    A(theta) @ v``, an operator built from parameters). Reverse mode solves the cotangent
    system by CG with the same ``A``, ``damping``, ``M``, ``tol``, ``atol`` and ``maxiter``,
    from zero and without Martens' rule; forward mode solves each tangent by this same
    call. ``x0``, ``M`` and ``info`` (``iterates`` included) carry no derivative. It is the
    derivative of the solution only where ``info.converged`` on a positive-definite system;
    a truncated or negative-curvature exit gets the exact solution's formula at its ``x``,
    and the cotangent solve's own diagnostics are not reported. A top-level call on
    concrete values, where nothing can be differentiated, runs the plain loop.

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
      ``(x, info)``: ``x`` a pytree like ``b``; ``info`` a :class:`CGInfo`, with
      ``info.num_matvecs`` the products with ``A`` spent (one per step, plus one for
      ``b - A x0`` when ``x0`` is given). With
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
    # Implicit differentiation only where a derivative can be asked for: a traced value
    # among the arguments or in what A or M close over. A top-level call on concrete
    # values runs the plain loop, whose jaxpr (the compile cache's key) is 4x shorter.
    options["differentiable"] = (
        is_traced((b, x0, tol, atol, damping, martens_eps))
        or _closes_over_tracers(A, b)
        or _closes_over_tracers(M, b)
    )
    # `A` and `M` are closed over: their concrete arrays become hoisted constants, so
    # checks that need values (symmetry) still see them and no closure keys the cache.
    # `b` and `x0` are arguments, so under the user's jit the call is inlined at once.
    return compiled_call(lambda b, x0: _cg_impl(A, b, x0, M=M, **options), b, x0)


def _closes_over_tracers(f: Any, b: PyTree) -> bool:
    """Whether the operator or preconditioner ``f`` holds or reads a traced value."""
    if f is None or isinstance(f, np.ndarray):
        return False
    if isinstance(f, jax.Array):
        return is_traced(f)
    if isinstance(f, CurvatureOperator):
        f, b = f.mv, f.x
    try:
        return is_traced(jax.make_jaxpr(f)(b).consts)
    except Exception:  # a wrong `A` or `M`: `_cg_impl` says what is wrong with it
        return False


def _cg_impl(
    A: Any,
    b: PyTree,
    x0: PyTree | None = None,
    *,
    differentiable: bool = True,
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

    rec_steps = np.asarray(cg_record_steps(maxiter), np.int32)
    problem = _Problem(
        apply_a=apply_a,
        apply_m=apply_m,
        preconditioned=precond is not None,
        out_like=b if low else None,
        tol2=jnp.asarray(tol, real) ** 2,
        atol2=jnp.asarray(atol, real) ** 2,
        thresh2=None,
        # Curvature below the rounding of the products is noise: the coarsest precision of
        # the products (A's domain) and of the iteration sets the threshold.
        tiny=jnp.asarray(_coarsest_eps(domain, bw), real),
        maxiter=maxiter,
        martens_eps=jnp.asarray(martens_eps, real) if martens else None,
        rec_steps=rec_steps if record_iterates else None,
    )
    if differentiable:
        x, info = _implicit_solve(problem, bw, x0, x_finite)
    else:
        x, info = _run(problem, bw, x0, x_finite)
    return (_like(x, b) if low else x), info
