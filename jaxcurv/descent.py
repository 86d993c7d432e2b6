r"""The descent of a Hessian-free step: the model's curvature, and CG on the damped model.

A truncated-Newton step minimizes the local quadratic model

.. math:: \phi(p) = g^\top p + \tfrac12 p^\top (B + \lambda I) p

approximately, by conjugate gradient on curvature-vector products, never forming ``B``
(Martens 2010; Nocedal & Wright Ch. 7). This module builds ``B`` at the current point
(:func:`curvature_operator`: Gauss-Newton or Hessian, on a sub-batch if asked) and runs the
solve (:func:`damped_newton_direction`). What is done with the direction -- backtracking,
the line search, the damping -- is in :mod:`jaxcurv.line_search` and :mod:`jaxcurv.damping`.

References:
  J. Martens. "Deep learning via Hessian-free optimization." ICML 2010.
  J. Nocedal and S. J. Wright. "Numerical Optimization", 2nd ed., Springer 2006, Ch. 7.
  N. N. Schraudolph. "Fast curvature matrix-vector products for second-order gradient
  descent." Neural Computation 14(7), 2002.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv.cg import CGInfo, cg
from jaxcurv.eigensolvers import eigenvalues
from jaxcurv.kfac import kfac_preconditioner
from jaxcurv.model_and_loss import ModelAndLoss, batch_size, take_batch
from jaxcurv.preconditioner import martens_diagonal, martens_preconditioner
from jaxcurv.products import CurvatureOperator, ggn_operator, hessian_operator
from jaxcurv.spectral_preconditioner import spectral_preconditioner
from jaxcurv.tree import tree_all_finite, tree_scale, tree_vdot

PyTree = Any

__all__ = [
    "cg_preconditioner",
    "curvature_operator",
    "curvature_sub_batch",
    "damped_newton_direction",
    "refresh_spectral_pairs",
]

# The top eigenpairs of a spectral preconditioner need not be accurate (approximate pairs
# cost CG steps, never correctness): eigsh's relative residual test at 1e-3, and a budget
# of products that bounds a refresh even where the top of the spectrum is clustered.
_PAIR_TOL = 1e-3
_PAIR_PRODUCTS = lambda rank: 10 * rank + 40  # noqa: E731


def curvature_operator(
    value_fn: Callable[..., jax.Array],
    params: PyTree,
    extra_args: dict[str, Any],
    *,
    curvature: str = "ggn",
    fraction: float | None = None,
) -> CurvatureOperator:
    """The curvature ``B`` of the quadratic model at ``params``, linearized once for CG.

    Args:
      value_fn: the objective, returning the scalar loss; a :class:`~jaxcurv.ModelAndLoss`
        for ``curvature="ggn"`` (there, with aux or not: curvature is of the outputs and
        the loss alone).
      params: the point.
      extra_args: the batch, as keywords of ``value_fn``.
      curvature: ``"ggn"`` (Gauss-Newton ``J^T H_loss J``, positive semi-definite) or
        ``"hessian"``.
      fraction: in ``(0, 1]``: the curvature of the first ``ceil(fraction * n)`` examples
        of the ``n`` in the batch (Martens' curvature sub-batch; every array extra
        argument with ``ndim >= 1`` is a batch along axis 0); ``None``: the whole batch.

    Returns:
      A :class:`~jaxcurv.CurvatureOperator` (``op(v)``, ``op.to_dense()``).

    Raises:
      TypeError: ``curvature="ggn"`` with a ``value_fn`` that is no ``ModelAndLoss``.
      ValueError: a ``fraction`` with no batched extra argument to take it of, or batched
        extras of different leading sizes.

    Example (a least-squares fit: ``B = X^T X / n`` on the first half of the rows):
      >>> import jax.numpy as jnp
      >>> from jaxcurv import ModelAndLoss
      >>> from jaxcurv.descent import curvature_operator
      >>> obj = ModelAndLoss(lambda w, x: x @ w, lambda o, y: 0.5 * jnp.mean((o - y) ** 2))
      >>> x = jnp.array([[1.0, 0.0], [0.0, 2.0], [5.0, 5.0], [5.0, 5.0]])
      >>> op = curvature_operator(obj, jnp.zeros(2), {"x": x, "y": jnp.zeros(4)}, fraction=0.5)
      >>> op.to_dense()
      Array([[0.5, 0. ],
             [0. , 2. ]], dtype=float32)

    References:
      Schraudolph, "Fast curvature matrix-vector products for second-order gradient
      descent", Neural Computation, 2002. Martens, "Deep learning via Hessian-free
      optimization", ICML 2010, §4.3 (the sub-batch).
    """
    curv_args = curvature_sub_batch(extra_args, fraction)
    if curvature == "ggn":
        if not isinstance(value_fn, ModelAndLoss):
            raise TypeError(
                "`curvature_operator(curvature='ggn')` needs the model and the loss apart, "
                f"got {type(value_fn).__name__}. Pass `ModelAndLoss(model_fn, loss_fn)`."
            )
        # The objective's own routing (explicit keys, aux dropped), not a fresh one's.
        return ggn_operator(*value_fn.without_aux().bind(**curv_args), params)
    return hessian_operator(lambda p: value_fn(p, **curv_args), params)


def curvature_sub_batch(extra_args: dict[str, Any], fraction: float | None) -> dict[str, Any]:
    """The first ``ceil(fraction * n)`` examples of the batch (``None``: all of it).

    Martens' curvature sub-batch: every array extra argument with ``ndim >= 1`` is a batch
    along axis 0 and gives its leading rows; scalars are kept.

    Raises:
      ValueError: a ``fraction`` with no batched extra argument to take it of, or batched
        extras of different leading sizes.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.descent import curvature_sub_batch
      >>> curvature_sub_batch({"x": jnp.arange(8.0), "scale": 2.0}, 0.3)
      {'scale': 2.0, 'x': Array([0., 1., 2.], dtype=float32)}
    """
    if fraction is None:
        return extra_args
    n = batch_size(extra_args, "curvature_fraction")
    if n is None:
        raise ValueError(
            "`hessian_free(curvature_fraction=...)` needs batched extra arguments "
            "(arrays with a leading batch axis) to take a sub-batch of, got none. "
            "Pass the batch as keywords of `update`, or set `curvature_fraction=None`."
        )
    return take_batch(extra_args, max(1, math.ceil(fraction * n)))


def cg_preconditioner(
    choice: str | Callable | None,
    value_fn: Callable[..., jax.Array],
    params: PyTree,
    extra_args: dict[str, Any],
    damping: jax.typing.ArrayLike,
    *,
    exponent: float = 0.75,
    chunk_size: int = 32,
    key: jax.Array | None = None,
    pairs: tuple[jax.Array, PyTree] | None = None,
) -> Callable[[PyTree], PyTree] | None:
    r"""The preconditioner ``M`` of the CG solve at ``params`` (``None``: none).

    Args:
      choice: ``None``; ``"martens"``, Martens' diagonal
        :math:`(\mathrm{mean}_i\, g_i^2 + \lambda)^{\mathrm{exponent}}` from per-example
        gradients (:func:`jaxcurv.preconditioner.martens_diagonal`); ``"kfac"``, the
        K-FAC preconditioner of the damped Gauss-Newton system with Martens & Grosse's
        Monte-Carlo output factor (:func:`jaxcurv.kfac_preconditioner`, ``kind="mc"``, one
        label sample per example; needs a :class:`~jaxcurv.ModelAndLoss`); ``"spectral"``,
        :func:`jaxcurv.spectral_preconditioner` of ``pairs`` (see
        :func:`refresh_spectral_pairs`); or a callable
        ``(params, damping, **extra_args) -> M``, ``M`` symmetric positive definite on
        pytrees like ``params``. (The empirical-Fisher factor was measured 10-80x further
        from the Gauss-Newton layer blocks than the sampled one, ``benchmarks/kfac_cg.py``.)
      value_fn: the objective.
      params: the point.
      extra_args: the batch, as keywords of ``value_fn``.
      damping: :math:`\lambda`, the damping of the solve.
      exponent: Martens' exponent.
      chunk_size: per-example gradients computed this many at a time (Martens, and
        K-FAC's vectorised backward passes).
      key: the PRNG key of K-FAC's sampled labels (``None``: ``jax.random.key(0)``). It
        changes the preconditioner, so the CG path, not the system CG solves.
      pairs: ``(eigenvalues, eigenvectors)`` of the curvature, for ``"spectral"``.

    Returns:
      ``M: r -> M r``, or ``None`` for ``choice=None``.

    Raises:
      TypeError: ``"kfac"`` with a ``value_fn`` that is no ``ModelAndLoss``.

    Example (a callable: ``M = I / (1 + lambda)``):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.descent import cg_preconditioner
      >>> build = lambda params, damping, **batch: (lambda r: r / (1 + damping))
      >>> M = cg_preconditioner(build, lambda w: jnp.sum(w**2), jnp.ones(2), {}, 1.0)
      >>> M(jnp.array([2.0, 4.0]))
      Array([1., 2.], dtype=float32)
    """
    if choice is None:
        return None
    if callable(choice):
        return choice(params, damping, **extra_args)
    if choice == "spectral":
        return spectral_preconditioner(pairs, damping=damping)
    if choice == "martens":
        diag = martens_diagonal(
            value_fn, params, extra_args, damping, exponent=exponent, chunk_size=chunk_size
        )
        return martens_preconditioner(diag)
    if not isinstance(value_fn, ModelAndLoss):
        raise TypeError(
            "`hessian_free(preconditioner='kfac')` needs the model and the loss apart (its "
            f"factors are of the model's dense layers), got a plain `value_fn` "
            f"({type(value_fn).__name__}). Pass `value_fn=ModelAndLoss(model_fn, loss_fn)`, "
            "or use `preconditioner='martens'`."
        )
    return kfac_preconditioner(
        value_fn,
        params,
        damping=damping,
        kind="mc",
        key=jax.random.key(0) if key is None else key,
        chunk_size=chunk_size,
        **extra_args,
    )


def damped_newton_direction(
    op: Any,
    g: PyTree,
    damping: jax.typing.ArrayLike,
    *,
    x0: PyTree | None = None,
    M: Callable[[PyTree], PyTree] | None = None,
    stop: str = "martens",
    tol: float = 1e-5,
    maxiter: int = 250,
    martens_eps: float = 5e-4,
    record_iterates: bool = False,
) -> tuple[PyTree, CGInfo]:
    r"""CG on :math:`(B + \lambda I)\, p = -g`: the minimizer of the damped model, truncated.

    Args:
      op: ``B``, an operator or a callable on pytrees like ``g``.
      g: the gradient (or the incoming updates of an ``optax`` chain).
      damping: :math:`\lambda \ge 0`; its dtype is the working precision of the tolerance.
      x0: the warm start (Martens: a decayed copy of the last solution); ``None``: zero.
      M: a preconditioner ``r -> M^{-1} r`` (:mod:`jaxcurv.preconditioner`).
      stop: ``"martens"`` (relative progress of :math:`\phi`, Martens §4.4, with ``tol``
        still active), ``"residual"`` (:math:`\|r\| \le \mathrm{tol}\,\|g\|`) or
        ``"forcing"``: the inexact-Newton forcing sequence :math:`\|r\| \le
        \max(\min(1/2, \sqrt{\|g\|}), \mathrm{tol})\,\|g\|` (Nocedal & Wright Alg. 7.1).
      tol: the relative residual tolerance.
      maxiter: the step cap.
      martens_eps: the tolerance of the relative-progress stop.
      record_iterates: keep the iterates at steps ``ceil(5 * 1.3^j)`` for backtracking.

    Returns:
      ``(p, info)`` from :func:`jaxcurv.cg`.

    Example (:math:`B = \mathrm{diag}(1, 3)`, :math:`\lambda = 1`: :math:`p = -g / (B + 1)`):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.descent import damped_newton_direction
      >>> B = jnp.diag(jnp.array([1.0, 3.0]))
      >>> p, info = damped_newton_direction(B, jnp.array([2.0, 4.0]), 1.0, stop="residual")
      >>> [round(float(v), 5) for v in p], int(info.num_steps)
      ([-1.0, -1.0], 2)

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.4-4.6.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, Alg. 7.1.
    """
    b = tree_scale(g, -1.0)
    if stop == "forcing":
        # Inexact Newton (Nocedal & Wright Alg. 7.1): ||r|| <= min(1/2, sqrt||g||) ||g||,
        # loose far from a minimum, tightening as the gradient vanishes (superlinear).
        forcing = jnp.minimum(0.5, jnp.sqrt(jnp.sqrt(tree_vdot(g, g).real)))
        tol = jnp.maximum(forcing, tol).astype(jnp.asarray(damping).dtype)
    return cg(
        op,
        b,
        x0,
        tol=tol,
        maxiter=maxiter,
        M=M,
        damping=damping,
        stop_rule="martens" if stop == "martens" else "residual",
        record_iterates=record_iterates,
        martens_eps=martens_eps,
    )


def refresh_spectral_pairs(
    op: Any, pairs: tuple[jax.Array, PyTree], count: jax.typing.ArrayLike, every: int
) -> tuple[jax.Array, PyTree]:
    r"""The top eigenpairs of ``op`` at every ``every``-th update (``count % every == 0``),
    else ``pairs`` unchanged: what ``hessian_free(preconditioner="spectral")`` carries.

    A refresh is :func:`jaxcurv.eigenvalues` (``which="largest"``, relative residual
    1e-3, at most ``10 k + 40`` products, ``k`` the number of pairs), keyed by ``count``.
    Negative eigenvalues (a Hessian) are clipped to 0, which leaves their directions
    alone; a refresh that meets a non-finite value returns zero pairs, with which the
    preconditioner is the identity, so one bad batch never poisons the pairs.

    Args:
      op: the curvature operator of this update.
      pairs: the pairs held, ``((k,) eigenvalues, eigenvectors with a leading k axis)``.
      count: the update's index (may be traced).
      every: refresh period, a positive int.

    Returns:
      ``(eigenvalues, eigenvectors)``, the dtypes and shapes of ``pairs``.

    Example (``diag(1, 2, 3, 4)``, the top two pairs at update 0):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.descent import refresh_spectral_pairs
      >>> held = (jnp.zeros(2), jnp.zeros((2, 4)))
      >>> vals, vecs = refresh_spectral_pairs(jnp.diag(jnp.arange(1.0, 5.0)), held, 0, 10)
      >>> [round(float(v), 4) for v in vals]
      [3.0, 4.0]
    """
    vals, vecs = pairs
    rank = vals.shape[0]

    def fresh(_):
        eig = eigenvalues(
            op,
            rank,
            which="largest",
            tol=_PAIR_TOL,
            maxiter=_PAIR_PRODUCTS(rank),
            key=jax.random.fold_in(jax.random.key(1), count),
            return_eigenvectors=True,
        )
        ok = jnp.all(jnp.isfinite(eig.eigenvalues)) & tree_all_finite(eig.eigenvectors)
        new_vals = jnp.where(ok, jnp.maximum(eig.eigenvalues, 0), 0).astype(vals.dtype)
        new_vecs = jax.tree.map(
            lambda n, o: jnp.where(ok, n, 0).astype(o.dtype), eig.eigenvectors, vecs
        )
        return new_vals, new_vecs

    return jax.lax.cond(jnp.asarray(count) % every == 0, fresh, lambda _: (vals, vecs), None)
