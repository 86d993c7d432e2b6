r"""The reduction ratio of a step and the Levenberg-Marquardt rule it drives.

A Hessian-free step trusts a quadratic model of the loss. The *reduction ratio*

.. math:: \rho = \frac{f(\theta + s) - f(\theta)}{m(s)}, \qquad
   m(s) = g^\top s + \tfrac12 s^\top B s,

compares the change the step made with the change the *undamped* model predicted
(Nocedal & Wright §4.1; Martens 2010 §4.1). Near 1 the model is good and the damping
:math:`\lambda` that keeps steps short can fall; small or negative, the model overshot and
:math:`\lambda` must rise (Levenberg-Marquardt; Martens' constants 1/4, 3/4, 3/2, 2/3).

:func:`nielsen_damping` is the smoother rule of Nielsen (1999) that
:func:`jaxcurv.least_squares` uses: it moves :math:`\lambda` continuously with
:math:`\rho` and, after consecutive rejections, raises it by 2, 4, 8, ... (so a run of bad
steps is left in a few trials, not dozens).

References:
  J. Martens. "Deep learning via Hessian-free optimization." ICML 2010, §4.1.
  J. Nocedal and S. J. Wright. "Numerical Optimization", 2nd ed., Springer 2006, §4.1.
  H. B. Nielsen. "Damping parameter in Marquardt's method." Report IMM-REP-1999-05,
  Technical University of Denmark, 1999. K. Madsen, H. B. Nielsen and O. Tingleff.
  "Methods for non-linear least squares problems", 2nd ed., DTU 2004, §3.2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "DAMPING_DECREASE",
    "DAMPING_INCREASE",
    "MAX_DAMPING",
    "MIN_DAMPING",
    "RHO_HIGH",
    "RHO_LOW",
    "levenberg_marquardt_damping",
    "nielsen_damping",
    "reduction_ratio",
]

# Martens' constants (2010, §4.1), the one source of the defaults: `hessian_free` takes its
# own from here.
DAMPING_INCREASE = 1.5
DAMPING_DECREASE = 2.0 / 3.0
RHO_LOW = 0.25
RHO_HIGH = 0.75
MIN_DAMPING = 1e-8
MAX_DAMPING = 1e10


def reduction_ratio(
    f0: jax.typing.ArrayLike,
    f_new: jax.typing.ArrayLike,
    model_value: jax.typing.ArrayLike,
    g_dot: jax.typing.ArrayLike,
    sq_norm: jax.typing.ArrayLike,
    damping: jax.typing.ArrayLike,
    lr: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    r"""``rho`` of the step ``s = lr p`` against the undamped quadratic model.

    CG already knows the damped model at its iterate,
    :math:`\phi(p) = g^\top p + \tfrac12 p^\top (B + \lambda I) p`, so the curvature term
    costs no product: :math:`\tfrac12 p^\top B p = \phi(p) - g^\top p - \tfrac\lambda2
    \|p\|^2`, and :math:`m(\eta p) = \eta\, g^\top p + \eta^2\, \tfrac12 p^\top B p`.

    Args:
      f0: the loss at :math:`\theta`.
      f_new: the loss at :math:`\theta + \eta p`.
      model_value: :math:`\phi(p)`, CG's damped quadratic at ``p``
        (``info.quadratic_value`` or ``info.iterate_values[j]``).
      g_dot: :math:`g^\top p`.
      sq_norm: :math:`\|p\|^2`.
      damping: the :math:`\lambda` CG solved with.
      lr: :math:`\eta`, the scale of the step taken.

    Returns:
      :math:`\rho`, a scalar; NaN when the model predicts no decrease (:math:`m \ge 0`),
      which the damping rule reads as a bad step.

    Example (:math:`f = 2 x^2` from :math:`x = 1`, :math:`p = -1`, :math:`\lambda = 0`: the
    model is exact, so :math:`\rho = 1`; :math:`\phi(p) = -4 + 2 = -2`):
      >>> from jaxcurv.damping import reduction_ratio
      >>> float(reduction_ratio(2.0, 0.0, -2.0, -4.0, 1.0, 0.0))
      1.0

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.1.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, §4.1.
    """
    f0, f_new, model_value, g_dot, sq_norm, damping, lr = map(
        jnp.asarray, (f0, f_new, model_value, g_dot, sq_norm, damping, lr)
    )
    half_curv = model_value - g_dot - 0.5 * damping * sq_norm
    predicted = lr * g_dot + lr * lr * half_curv
    return jnp.where(predicted < 0, (f_new - f0) / predicted, jnp.nan)


def levenberg_marquardt_damping(
    damping: jax.typing.ArrayLike,
    rho: jax.typing.ArrayLike,
    accepted: jax.typing.ArrayLike = True,
    *,
    increase: float = DAMPING_INCREASE,
    decrease: float = DAMPING_DECREASE,
    rho_low: float = RHO_LOW,
    rho_high: float = RHO_HIGH,
    min_damping: float = MIN_DAMPING,
    max_damping: float = MAX_DAMPING,
    informative: jax.typing.ArrayLike = True,
) -> jax.Array:
    r"""The damping for the next step, from the reduction ratio of this one.

    .. math:: \lambda \leftarrow \begin{cases}
       \lambda \cdot \text{increase} & \rho < \rho_\text{low}
       \text{ (or } \rho \text{ not finite, or the step rejected)} \\
       \lambda \cdot \text{decrease} & \rho > \rho_\text{high} \\
       \lambda & \text{otherwise,} \end{cases}

    then clipped to ``[min_damping, max_damping]``. A step that was not even tried
    (``informative=False``: its learning rate was unusable) says nothing about the model,
    and leaves :math:`\lambda` as it was (still clipped).

    Args:
      damping: the current :math:`\lambda`, a float scalar (its dtype is kept).
      rho: the reduction ratio (:func:`reduction_ratio`).
      accepted: whether the step was taken; a rejected step always raises the damping.
      increase, decrease: the factors (``> 1`` and in ``(0, 1)``).
      rho_low, rho_high: the thresholds.
      min_damping, max_damping: the bounds.
      informative: whether the step was judged at all.

    Returns:
      The new :math:`\lambda`, with ``damping``'s dtype.

    Example (one value per branch; Martens' ``decrease`` is 2/3, 1/2 prints shorter):
      >>> from jaxcurv.damping import levenberg_marquardt_damping
      >>> [float(levenberg_marquardt_damping(1.0, r, decrease=0.5)) for r in (0.1, 0.5, 0.9)]
      [1.5, 1.0, 0.5]

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.1.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006, Alg. 4.1.
    """
    lam, rho = jnp.asarray(damping), jnp.asarray(rho)
    bad = ~(rho >= rho_low)  # also true for a non-finite rho
    new = jnp.where(bad, lam * increase, jnp.where(rho > rho_high, lam * decrease, lam))
    new = jnp.where(accepted, new, lam * increase)
    new = jnp.where(informative, new, lam)
    return jnp.clip(new, min_damping, max_damping).astype(lam.dtype)


def nielsen_damping(
    damping: jax.typing.ArrayLike,
    nu: jax.typing.ArrayLike,
    rho: jax.typing.ArrayLike,
    accepted: jax.typing.ArrayLike,
    *,
    min_damping: jax.typing.ArrayLike = MIN_DAMPING,
    max_damping: jax.typing.ArrayLike = MAX_DAMPING,
) -> tuple[jax.Array, jax.Array]:
    r"""Nielsen's damping rule: ``(lambda, nu)`` for the next step.

    .. math:: \text{accepted:}\quad \lambda \leftarrow \lambda
       \max\bigl(\tfrac13,\ 1 - (2\rho - 1)^3\bigr),\ \nu \leftarrow 2; \qquad
       \text{rejected:}\quad \lambda \leftarrow \nu \lambda,\ \nu \leftarrow 2 \nu,

    then ``lambda`` clipped to ``[min_damping, max_damping]`` (and ``nu`` kept below
    1e30, where ``lambda`` is at its ceiling anyway). A very good step
    (:math:`\rho \to 1`) divides :math:`\lambda` by 3, a poor accepted one
    (:math:`\rho \to 0`) at most doubles it, and :math:`\rho = 1/2` leaves it.

    Args:
      damping: the current :math:`\lambda`, a float scalar (its dtype is kept).
      nu: the current growth factor (2 after an accepted step).
      rho: the reduction ratio of the step (:func:`reduction_ratio`); ignored when rejected.
      accepted: whether the step was taken.
      min_damping, max_damping: the bounds on :math:`\lambda`.

    Returns:
      ``(lambda, nu)``, with ``damping``'s dtype.

    Example (a perfect step divides by 3; two rejections multiply by 2, then by 4):
      >>> from jaxcurv.damping import nielsen_damping
      >>> lam, nu = nielsen_damping(3.0, 2.0, 1.0, True)
      >>> float(lam), float(nu)
      (1.0, 2.0)
      >>> lam, nu = nielsen_damping(lam, nu, 0.0, False)
      >>> lam, nu = nielsen_damping(lam, nu, 0.0, False)
      >>> float(lam), float(nu)
      (8.0, 8.0)

    References:
      Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05, DTU, 1999.
      Madsen, Nielsen & Tingleff, "Methods for non-linear least squares problems", 2004,
      eq. (3.16).
    """
    lam = jnp.asarray(damping)
    nu, rho = jnp.asarray(nu, lam.dtype), jnp.asarray(rho, lam.dtype)
    good = lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
    new_lam = jnp.where(accepted, good, lam * nu)
    new_nu = jnp.where(accepted, 2.0, jnp.minimum(2.0 * nu, 1e30))
    new_lam = jnp.clip(new_lam, min_damping, max_damping)
    return new_lam.astype(lam.dtype), new_nu.astype(lam.dtype)
