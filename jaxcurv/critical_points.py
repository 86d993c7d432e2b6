"""Minimum, maximum or saddle: the signs of the Hessian's eigenvalues at a critical point."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import (
    check_bounded_int,
    check_key,
    check_non_negative,
    check_option,
    check_real_inputs,
    deprecated_keywords,
    renamed_keyword,
)
from jaxcurv._dispatch import DENSE_THRESHOLD
from jaxcurv._precision import _to_working, _working_dtype
from jaxcurv.eigensolvers import eigenvalues
from jaxcurv.products import CurvatureOperator, hessian_operator
from jaxcurv.tree import (
    tree_all_finite,
    tree_norm,
)

PyTree = Any

__all__ = ["CriticalPoint", "classify_critical_point", "critical_point_of_spectrum"]


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
      num_matvecs: Hessian-vector products spent on the eigenvalues (``N`` to form the
        Hessian on the dense path); the gradient and value come with the linearization.
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
    num_matvecs: jax.Array | None = None


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


@deprecated_keywords(num_iters="maxiter")
def classify_critical_point(
    fun: Callable,
    x: PyTree,
    *args: Any,
    grad_tol: float | None = None,
    grad_atol: float = 0.0,
    eig_tol: float | None = None,
    k: int = 3,
    key: jax.Array | None = None,
    maxiter: int | None = None,
    method: str = "auto",
    dense_threshold: int = DENSE_THRESHOLD,
    num_iters: int | None = None,
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
      key: PRNG key for Lanczos's start vector; ``None`` uses ``jax.random.key(0)``.
      maxiter: the Lanczos budget, as ``eigenvalues(maxiter=...)``: the most products for
        thick restart, the steps of the one pass for ``method="lanczos"``.
      method: the Lanczos path's eigen-solver, as ``eigenvalues(method=...)``: ``"auto"``
        (thick restart until the Ritz residuals meet ``eigenvalues``' default ``tol``),
        ``"thick-restart"`` or ``"lanczos"`` (one pass of ``maxiter`` steps).
      dense_threshold: largest ``N`` for which the Hessian is formed and fully
        diagonalized; default ``DENSE_THRESHOLD`` (512), shared by every function.
      num_iters: deprecated (``DeprecationWarning``): ``num_iters=m`` is
        ``method="lanczos", maxiter=m`` with ``method="auto"``, else ``maxiter=m``.

    Returns:
      A ``CriticalPoint`` with ``kind``, ``eigenvalues``, ``gradient_norm``, ``value``, the
      sign counts, ``method``, a human-readable ``reason`` and ``num_matvecs``.

    Raises:
      ValueError: non-scalar ``fun``, an ``x`` without arrays, negative tolerances, ``k``
        or ``dense_threshold`` out of range, an unknown ``method``. TypeError: integer or
        non-array leaves in ``x``, non-integer counts, non-number tolerances, a bad
        ``key``, both ``maxiter`` and ``num_iters``.

    Example (the seed's :math:`x^2 + 3xy + y^2`: Hessian eigenvalues 5 and -1 at 0):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> cp = jaxcurv.classify_critical_point(f, jnp.zeros(2))
      >>> cp.kind, cp.eigenvalues.round(4).tolist(), int(cp.num_matvecs)  # dense: N products
      ('saddle', [-1.0, 5.0], 2)
      >>> g = lambda p: jnp.sum((p - 1.0) ** 2) + 1e6  # an offset does not make 0 critical
      >>> jaxcurv.classify_critical_point(g, jnp.zeros(3)).kind
      'not critical'

    References:
      Dauphin, Pascanu, Gulcehre, Cho, Ganguli and Bengio, "Identifying and attacking the
      saddle point problem in high-dimensional non-convex optimization", NeurIPS 2014.
      Nocedal and Wright, "Numerical Optimization", 2nd ed., theorems 2.3-2.4 (second-order
      conditions).
    """
    check_real_inputs("classify_critical_point", x, "point `x`")
    method = check_option(
        "classify_critical_point(method=...)", method, ("auto", "thick-restart", "lanczos")
    )
    new = "maxiter"
    if num_iters is not None and method == "auto":
        method, new = "lanczos", "method='lanczos', maxiter"  # what num_iters= chose alone
    maxiter = renamed_keyword("classify_critical_point", "num_iters", num_iters, new, maxiter)
    if key is not None:
        key = check_key("classify_critical_point", key)
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
        check_non_negative(f"classify_critical_point({name}=...)", tol, requirement=">= 0", fix=fix)

    dense_threshold = check_bounded_int(
        "classify_critical_point(dense_threshold=...)",
        dense_threshold,
        low=0,
        fix="Use 0 to force Lanczos.",
    )
    dense = n <= dense_threshold
    if not dense:
        k = check_bounded_int(
            "classify_critical_point(k=...)",
            k,
            low=1,
            high=n // 2,
            fix=f"Lanczos takes k eigenvalues from each end of a spectrum of N={n}.",
        )

    if dense:
        evals = jnp.linalg.eigvalsh(_symmetric_dense(op))
        method, residual_text = "dense", ""
        num_matvecs = jnp.asarray(n, jnp.int32)  # to_dense: one product per column
    else:
        found = eigenvalues(
            op, k, which="both", key=key, maxiter=maxiter, method=method, dense_threshold=0
        )
        evals, num_matvecs = found.eigenvalues, found.num_matvecs
        method = "lanczos"
        residual_text = f", largest Ritz residual {_fmt(float(jnp.max(found.residual_norms)))}"

    return critical_point_of_spectrum(
        op, x, evals, method=method, num_matvecs=num_matvecs, residual_text=residual_text,
        grad_tol=grad_tol, grad_atol=grad_atol, eig_tol=eig_tol,
    )  # fmt: skip


def critical_point_of_spectrum(
    op: CurvatureOperator,
    x: PyTree,
    evals: jax.Array,
    *,
    method: str,
    num_matvecs: jax.Array,
    residual_text: str = "",
    grad_tol: float | None = None,
    grad_atol: float = 0.0,
    eig_tol: float | None = None,
) -> CriticalPoint:
    """:func:`classify_critical_point`'s rule on eigenvalues already at hand.

    The one place the rule lives: ``classify_critical_point`` calls it on the spectrum it
    computes, ``analyze_landscape`` on the one it reports, so the two never disagree.

    Args:
      op: the Hessian operator at ``x`` (its ``value``, ``grad``, ``size``, ``dtype``).
      x: the point, for the gradient test's scale ``max(1, ||x||)``.
      evals: ascending eigenvalues: all ``N`` (``method="dense"``: exact sign counts) or
        both ends (``method="lanczos"``: counts known only when one sign covers them).
      method: ``"dense"`` or ``"lanczos"``.
      num_matvecs: the products the eigenvalues cost, reported as they are.
      residual_text: evidence appended to the eigenvalue range (e.g. the Ritz residual).
      grad_tol, grad_atol, eig_tol: as in :func:`classify_critical_point` (``None``:
        ``sqrt(eps)`` of the operator's dtype).

    Returns:
      A :class:`CriticalPoint`.

    Example (the seed's Hessian, eigenvalues -1 and 5, at its critical point):
      >>> import jax.numpy as jnp, jaxcurv
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> op = jaxcurv.hessian_operator(f, jnp.zeros(2))
      >>> critical_point_of_spectrum(op, jnp.zeros(2), jnp.array([-1.0, 5.0]), method="dense",
      ...                            num_matvecs=jnp.asarray(2)).kind
      'saddle'
    """
    n, value = op.size, op.value
    default_tol = float(np.sqrt(np.finfo(op.dtype).eps))
    grad_tol = default_tol if grad_tol is None else grad_tol
    eig_tol = default_tol if eig_tol is None else eig_tol
    dense = method == "dense"
    gradient_norm = tree_norm(_to_working(op.grad))
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
        num_matvecs=num_matvecs,
    )


@jax.jit
def _symmetric_dense(op: CurvatureOperator) -> jax.Array:
    # float32 for a float16/bfloat16 operator: eigvalsh has no kernels below it.
    H = op.to_dense()
    H = H.astype(_working_dtype(H.dtype))
    return 0.5 * (H + H.T)
