r"""Nonlinear least squares: Levenberg-Marquardt with CG steps, stopping on its own.

:func:`least_squares` minimizes :math:`f(\theta) = \tfrac12 \|r(\theta)\|^2` for a residual
function :math:`r` of a pytree of parameters. Each step solves the scaled, damped
Gauss-Newton system :math:`(J^\top J + \lambda D^2)\, p = -J^\top r` -- by conjugate
gradient (:func:`jaxcurv.cg`) on products :math:`J^\top J v` (one Jacobian-vector and one
vector-Jacobian product of :math:`r`, linearized once per point), the Hessian-free
machinery of :func:`jaxcurv.hessian_free` -- and adds what MINPACK's ``lmder`` (Moré
1978) has and a plain inexact-Newton loop lacks:

* **Marquardt's scaling** :math:`D^2`: the running maximum of the squared column norms of
  :math:`J` (MINPACK's ``mode=1``), exact from ``n`` Jacobian-vector products per
  Jacobian (``scaling="jacobian"``, the default up to 2048 parameters; above,
  ``"identity"``: one scale, the curvature :math:`\|Jg\|^2/\|g\|^2` along the gradient).
  :math:`\lambda` is then dimensionless and its bounds (machine epsilon and its inverse)
  are relative to each parameter's own curvature, and CG is preconditioned by
  :math:`(\mathrm{diag}\, J^\top J + \lambda D^2)^{-1}`, so the parameters' units do not
  matter (Powell's badly scaled problem).
* **A forcing rule relative to the start**: CG to a residual :math:`\le \eta\, \|J^\top
  r\|`, :math:`\eta = \min(0.1, \|D^{-1}g\| / \|D^{-1}g_0\|)`: unit-free, never
  looser than 0.1 (so a solve is never one step, even after rejections), tightening in
  proportion to the gradient (quadratic convergence, Dembo, Eisenstat & Steihaug 1982);
  at most ``cg_maxiter`` (``2 n``) steps.
* **Nielsen's damping rule** (:func:`jaxcurv.damping.nielsen_damping`) and MINPACK's
  acceptance test, reduction ratio above 1e-4.
* **The formed Jacobian when CG cannot**: with ``linear_solver="auto"`` a CG solve that
  ends at its cap switches the rest of the run to the dense solve, when :math:`J` has at
  most 2^24 entries (128 MiB in float64): :math:`J` from ``n`` Jacobian-vector products
  and Cholesky of the scaled system, as MINPACK solves by QR. CG on the normal equations
  needs about :math:`\kappa(J)` steps (MGH's discrete boundary value problem at
  ``n = 1000`` has :math:`\kappa(J) = 3.2 \times 10^5`: 3000 CG steps lower
  :math:`\|r + Jp\|` by 7%).

Stopping rule (MINPACK's, Moré, Garbow & Hillstrom 1980, §2.3), tested on every accepted
step; the first that holds is the ``status``: ``FTOL``, the actual and the predicted
relative reductions of :math:`f` both at most ``ftol`` (the actual at most twice the
predicted); ``XTOL``, :math:`\|Dp\| \le \mathrm{xtol}\, \|D\theta\|`; ``GTOL`` (at each
new point), :math:`\max_j |(J^\top r)_j| / (D_j \|r\|) \le \mathrm{gtol}` or
:math:`r = 0`. Otherwise ``MAXITER`` (``maxiter`` steps tried, accepted or not),
``NONFINITE`` (the residual or gradient at the current point is not finite) or
``STALLED`` (rejected at ``max_damping``). Only the first three are ``converged``. A
trial point with a non-finite residual is a rejected step: the returned parameters are
always the last accepted, finite point.

References:
  J. J. Moré. "The Levenberg-Marquardt algorithm: implementation and theory." Numerical
  Analysis, LNM 630, Springer 1978. J. J. Moré, B. S. Garbow and K. E. Hillstrom. "User
  guide for MINPACK-1." ANL-80-74, 1980. H. B. Nielsen. "Damping parameter in Marquardt's
  method." IMM-REP-1999-05, 1999. R. S. Dembo, S. C. Eisenstat and T. Steihaug. "Inexact
  Newton methods." SIAM J. Numer. Anal. 19(2), 1982.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxcurv._compile import compiled_call
from jaxcurv.cg import CGStatus, cg
from jaxcurv.damping import nielsen_damping, reduction_ratio
from jaxcurv.least_squares_options import Options, check_options, checked_residuals
from jaxcurv.least_squares_status import LeastSquaresResult, LeastSquaresStatus
from jaxcurv.tree import tree_all_finite, tree_axpy, tree_scale, tree_size, tree_vdot, tree_where

PyTree = Any

__all__ = ["LeastSquaresResult", "LeastSquaresStatus", "least_squares"]

_RUNNING = -1  # internal: still iterating; never returned
_ACCEPT = 1e-4  # MINPACK: a step is taken when rho > 1e-4
_AUTO_JACOBIAN_MAX = 2048  # scaling="auto": exact column norms up to this many parameters
_DENSE_MAX_ENTRIES = 2**24  # linear_solver="auto": form J only up to this many entries
_S = LeastSquaresStatus


class _Point(NamedTuple):
    """The outer loop's carry: the accepted point and the counters."""

    x: PyTree
    r: PyTree
    f: jax.Array  # 0.5 ||r||^2
    d2: PyTree  # D^2, like x
    lam: jax.Array
    nu: jax.Array
    gs0: jax.Array  # ||D^-1 g|| at the start (forcing rule); nan until known
    gnorm: jax.Array
    steps: jax.Array
    accepted: jax.Array
    fev: jax.Array
    jev: jax.Array
    matvecs: jax.Array
    jvps: jax.Array
    status: jax.Array
    dense: jax.Array  # bool: solve with the formed Jacobian


class _Trial(NamedTuple):
    """The inner loop's carry: trials at one point until one is accepted or a stop."""

    x: PyTree
    r: PyTree
    f: jax.Array
    lam: jax.Array
    nu: jax.Array
    steps: jax.Array
    fev: jax.Array
    matvecs: jax.Array
    status: jax.Array
    taken: jax.Array  # bool: a step was accepted
    switch: jax.Array  # bool: CG hit its cap; go dense from the next linearization


class _Model(NamedTuple):
    """What every trial at one point reads: the point's linearization and its scaling."""

    x: PyTree
    f: jax.Array
    g: PyTree
    d2: PyTree
    diag: PyTree  # diag(J^T J) for the Jacobi preconditioner
    jtj: Callable
    eta: jax.Array  # CG's relative residual tolerance
    normal: jax.Array | None  # (n, n) D^-1 J^T J D^-1; None when the dense solve is off
    dense: jax.Array  # bool


def _sq(tree: PyTree) -> jax.Array:
    return jnp.real(tree_vdot(tree, tree))


def _wsum(w: PyTree, a: PyTree, b: PyTree) -> jax.Array:
    """``sum(w * a * b)`` over the leaves."""
    return sum(jnp.sum(u * v * z) for u, v, z in zip(*map(jax.tree.leaves, (w, a, b))))


def _jacobian(jvp: Callable, x: PyTree) -> jax.Array:
    """The ``(m, n)`` Jacobian from ``n`` Jacobian-vector products, 64 at a time."""
    flat, unravel = ravel_pytree(x)
    n = flat.shape[0]

    def column(j):
        return ravel_pytree(jvp(unravel(jax.nn.one_hot(j, n, dtype=flat.dtype))))[0]

    return jax.lax.map(column, jnp.arange(n), batch_size=min(n, 64)).T


def _column_norms(jvp: Callable, x: PyTree) -> PyTree:
    """``diag(J^T J)``: ``||J e_j||^2`` for every coordinate, without keeping ``J``."""
    flat, unravel = ravel_pytree(x)
    n = flat.shape[0]
    column = lambda j: _sq(jvp(unravel(jax.nn.one_hot(j, n, dtype=flat.dtype))))
    return unravel(jax.lax.map(column, jnp.arange(n), batch_size=min(n, 64)))


def _scaling(cfg, jvp, x, g, d2_prev, jac, dense):
    """``(D^2, diag(J^T J), jvps spent)``: MINPACK's running maximum, floored above 0."""
    n = tree_size(x)
    if jac is not None:  # dense possible: J is formed when dense, the norms come from it
        unravel = ravel_pytree(x)[1]
        from_jac = lambda: unravel(jnp.sum(jac * jac, axis=0))
        if cfg.scaling == "jacobian":
            diag = _when(dense, from_jac, lambda: _column_norms(jvp, x))
            spent = n
        else:
            diag = _when(dense, from_jac, lambda: _ray_scale(jvp, x, g))
            spent = jnp.where(dense, n, 1)
    elif cfg.scaling == "jacobian":
        diag, spent = _column_norms(jvp, x), n
    else:
        diag, spent = _ray_scale(jvp, x, g), 1
    d2 = jax.tree.map(jnp.maximum, d2_prev, diag)
    top = jnp.max(jnp.stack([jnp.max(a) for a in jax.tree.leaves(d2)]))
    # A zero column (a parameter the residual does not see here) gets a small scale, not
    # 0; all zero (r constant), MINPACK's 1.
    floor = jnp.where(top > 0, jnp.finfo(top.dtype).eps * top, 1.0)
    return jax.tree.map(lambda a: jnp.maximum(a, floor), d2), diag, spent


def _when(pred, if_true: Callable, if_false: Callable):
    """``lax.cond`` on an array predicate; a Python bool picks its branch at trace time."""
    if isinstance(pred, bool):
        return if_true() if pred else if_false()
    return jax.lax.cond(pred, if_true, if_false)


def _ray_scale(jvp, x, g):
    """One scale for every parameter: the curvature ``||J g||^2 / ||g||^2`` along ``g``."""
    gg = _sq(g)
    ray = jnp.where(gg > 0, _sq(jvp(g)) / jnp.where(gg > 0, gg, 1.0), 0.0)
    return jax.tree.map(lambda a: jnp.full_like(a, ray), x)


def _cg_step(cfg, mod, lam):
    """``(p, phi, products, capped)``: preconditioned CG on the damped system."""

    def A(v):  # (J^T J + lam D^2) v
        return tree_axpy(lam, jax.tree.map(jnp.multiply, mod.d2, v), mod.jtj(v))

    def M(v):  # Jacobi: CG in the parameters' own units
        return jax.tree.map(lambda a, dg, dd: a / (dg + lam * dd), v, mod.diag, mod.d2)

    p, info = cg(A, tree_scale(mod.g, -1.0), tol=mod.eta, maxiter=cfg.cg_maxiter, M=M)
    capped = info.status == CGStatus.MAX_STEPS
    return p, info.quadratic_value.astype(lam.dtype), info.num_matvecs, capped


def _dense_step(cfg, mod, lam):
    """The same step from the formed Jacobian: Cholesky of ``S J^T J S + lam I`` with
    ``S = D^-1`` (``mod.normal``, built once per Jacobian); ``phi`` exact."""
    g, unravel = ravel_pytree(mod.g)
    s = 1.0 / jnp.sqrt(ravel_pytree(mod.d2)[0])
    shifted = mod.normal + lam * jnp.eye(g.shape[0], dtype=g.dtype)
    y = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(shifted), -s * g)
    p = s * y  # |Jp|^2 = y^T N y and |Dp|^2 = |y|^2
    phi = g @ p + 0.5 * (y @ (mod.normal @ y) + lam * (y @ y))
    return unravel(p), phi.astype(lam.dtype), jnp.asarray(0, jnp.int32), jnp.asarray(False)


def _status(ftol, xtol, stalled, out_of_steps):
    s = jnp.where(out_of_steps, _S.MAXITER, _RUNNING)
    s = jnp.where(stalled, _S.STALLED, s)
    return jnp.where(ftol, _S.FTOL, jnp.where(xtol, _S.XTOL, s)).astype(jnp.int32)


def _trial(cfg: Options, fn: Callable, mod: _Model, t: _Trial) -> _Trial:
    """One step at ``mod.x`` with damping ``t.lam``: solve, evaluate, judge, test."""
    lam, dtype = t.lam, t.lam.dtype
    if mod.normal is None:
        p, phi, products, capped = _cg_step(cfg, mod, lam)
    elif cfg.linear_solver == "dense":
        p, phi, products, capped = _dense_step(cfg, mod, lam)
    else:
        p, phi, products, capped = jax.lax.cond(
            mod.dense, lambda: _dense_step(cfg, mod, lam), lambda: _cg_step(cfg, mod, lam)
        )
    dp2 = _wsum(mod.d2, p, p)
    x_new = jax.tree.map(jnp.add, mod.x, p)
    r_new = fn(x_new)
    f_new = (0.5 * _sq(r_new)).astype(dtype)
    finite = jnp.isfinite(f_new) & tree_all_finite(x_new)
    g_dot = tree_vdot(mod.g, p).real.astype(dtype)
    rho = reduction_ratio(mod.f, jnp.where(finite, f_new, jnp.inf), phi, g_dot, dp2, lam)
    taken = finite & (rho > _ACCEPT)
    top = cfg.max_damping
    new_lam, new_nu = nielsen_damping(
        lam, t.nu, rho, taken, min_damping=cfg.min_damping, max_damping=top
    )
    # MINPACK's tests, relative to f at the point; the predicted reduction is the
    # undamped model's, -(g^T p + |Jp|^2 / 2) = -(phi - lam |Dp|^2 / 2).
    pred = -(phi - 0.5 * lam * dp2) / mod.f
    actual = (mod.f - f_new) / mod.f
    ftol = taken & (jnp.abs(actual) <= cfg.ftol) & (pred <= cfg.ftol) & (actual <= 2 * pred)
    xtol = taken & (jnp.sqrt(dp2) <= cfg.xtol * jnp.sqrt(_wsum(mod.d2, x_new, x_new)))
    steps = t.steps + 1
    status = _status(ftol, xtol, ~taken & (lam >= top), steps >= cfg.maxiter)
    return _Trial(
        x=tree_where(taken, x_new, t.x),
        r=tree_where(taken, r_new, t.r),
        f=jnp.where(taken, f_new, t.f),
        lam=new_lam,
        nu=new_nu,
        steps=steps,
        fev=t.fev + 1,
        matvecs=t.matvecs + products.astype(jnp.int32),
        status=status,
        taken=taken,
        switch=capped & (cfg.linear_solver == "auto") & (mod.normal is not None),
    )


def _gradient_tests(pt: _Point, g: PyTree, d2: PyTree):
    """``(||D^-1 g||, gtol measure, status)`` at the point."""
    gs = jnp.sqrt(_wsum(jax.tree.map(lambda d: 1.0 / d, d2), g, g))
    rnorm = jnp.sqrt(2.0 * pt.f)
    scaled = [jnp.max(jnp.abs(a) / jnp.sqrt(d)) for a, d in zip(*map(jax.tree.leaves, (g, d2)))]
    gnorm = jnp.where(rnorm > 0, jnp.max(jnp.stack(scaled)) / jnp.where(rnorm > 0, rnorm, 1), 0)
    nonfinite = ~jnp.isfinite(pt.f) | ~tree_all_finite(g)
    return gs, gnorm, nonfinite


def _iteration(cfg: Options, fn: Callable, m: int, pt: _Point) -> _Point:
    """Linearize at the accepted point, test gtol, then trials until one is accepted."""
    r, jvp = jax.linearize(fn, pt.x)
    vjp = jax.linear_transpose(jvp, pt.x)
    (g,) = vjp(r)
    n = tree_size(pt.x)
    dense = True if cfg.linear_solver == "dense" else pt.dense  # static when it can be
    jac = None
    if cfg.linear_solver == "dense" or (
        cfg.linear_solver == "auto" and m * n <= _DENSE_MAX_ENTRIES
    ):
        dtype = ravel_pytree(pt.x)[0].dtype
        jac = _when(dense, lambda: _jacobian(jvp, pt.x), lambda: jnp.zeros((m, n), dtype))
    d2, diag, spent = _scaling(cfg, jvp, pt.x, g, pt.d2, jac, dense)
    normal = None
    if jac is not None:
        js = jac / jnp.sqrt(ravel_pytree(d2)[0])[None, :]
        normal = _when(dense, lambda: js.T @ js, lambda: jnp.zeros((n, n), js.dtype))
    gs, gnorm, nonfinite = _gradient_tests(pt, g, d2)
    gs0 = jnp.where(jnp.isnan(pt.gs0), gs, pt.gs0)
    # Forcing proportional to the scaled gradient, relative to the start so that it is
    # unit-free: quadratic convergence of the inexact steps (Dembo et al. 1982). Measured
    # on MGH's Meyer problem: sqrt of the ratio (Nocedal & Wright's forcing) ends at
    # f = 103.9 after 500 steps; the ratio itself reaches the minimum in 301.
    eta = jnp.minimum(0.1, gs / jnp.where(gs0 > 0, gs0, 1.0)).astype(pt.f.dtype)
    status = jnp.where(gnorm <= cfg.gtol, _S.GTOL, pt.status)
    status = jnp.where(nonfinite, _S.NONFINITE, status).astype(jnp.int32)
    jtj = lambda v: vjp(jvp(v))[0]
    mod = _Model(pt.x, pt.f, g, d2, diag, jtj, eta, normal, pt.dense)
    false = jnp.asarray(False)
    t = _Trial(pt.x, r, pt.f, pt.lam, pt.nu, pt.steps, pt.fev, pt.matvecs, status, false, false)
    t = jax.lax.while_loop(
        lambda t: (t.status == _RUNNING) & ~t.taken & ~t.switch,
        lambda t: _trial(cfg, fn, mod, t),
        t,
    )
    return _Point(
        x=t.x,
        r=t.r,
        f=t.f,
        d2=d2,
        lam=t.lam,
        nu=t.nu,
        gs0=gs0,
        gnorm=gnorm.astype(pt.f.dtype),
        steps=t.steps,
        accepted=pt.accepted + t.taken.astype(jnp.int32),
        fev=t.fev,
        jev=pt.jev + 1,
        matvecs=t.matvecs,
        jvps=pt.jvps + spent,
        status=t.status,
        dense=pt.dense | t.switch,
    )


def _solve(cfg: Options, residual_fn: Callable, params: PyTree, args: tuple):
    dtype = jnp.result_type(*jax.tree.leaves(params))
    fn = checked_residuals(residual_fn, args, dtype)
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.result_type(a)), params)
    r = fn(x)
    m = sum(math.prod(jnp.shape(a)) for a in jax.tree.leaves(r))
    i32 = lambda v: jnp.asarray(v, jnp.int32)
    f = jnp.asarray(0.5 * _sq(r), dtype)
    as_f = lambda v: jnp.asarray(v, dtype)
    zero = i32(0)
    pt = _Point(
        x, r, f, jax.tree.map(jnp.zeros_like, x), as_f(cfg.damping), as_f(2.0), as_f(jnp.nan),
        as_f(jnp.nan), zero, zero, i32(1), zero, zero, zero, i32(_RUNNING),
        jnp.asarray(cfg.linear_solver == "dense"),
    )  # fmt: skip
    pt = jax.lax.while_loop(lambda p: p.status == _RUNNING, lambda p: _iteration(cfg, fn, m, p), pt)
    converged = (pt.status == _S.FTOL) | (pt.status == _S.XTOL) | (pt.status == _S.GTOL)
    return LeastSquaresResult(
        params=pt.x,
        value=pt.f,
        residuals=pt.r,
        gradient_norm=pt.gnorm,
        num_steps=pt.steps,
        num_accepted=pt.accepted,
        num_fev=pt.fev,
        num_jev=pt.jev,
        num_matvecs=pt.matvecs,
        num_jvps=pt.jvps.astype(jnp.int32),
        damping=pt.lam,
        status=pt.status,
        converged=converged,
        dense=pt.dense,
    )


def least_squares(
    residual_fn: Callable[..., PyTree],
    params: PyTree,
    *args: Any,
    maxiter: int = 500,
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    damping: float = 1e-3,
    min_damping: float | None = None,
    max_damping: float | None = None,
    cg_maxiter: int | None = None,
    scaling: str = "auto",
    linear_solver: str = "auto",
) -> LeastSquaresResult:
    r"""Minimize :math:`\tfrac12 \|r(\theta, *args)\|^2` by Levenberg-Marquardt with CG steps.

    The method, its scaling, CG solve and stopping rule are in the module's docstring
    (:mod:`jaxcurv.least_squares`): MINPACK's ``lmder`` with the Gauss-Newton system solved
    by preconditioned, truncated CG on Jacobian products, so :math:`J` is never formed.
    The whole solve is one ``lax.while_loop``: it runs under ``jax.jit`` and ``jax.vmap``,
    and at top level compiles once per computation (``jaxcurv._compile``).

    Args:
      residual_fn: ``residual_fn(params, *args)`` returns the residuals, an array or a
        pytree of arrays of real floating dtype (any shape; all of them are squared and
        summed).
      params: the starting point, a pytree of real floating arrays (never flattened in
        what is returned).
      *args: passed on to ``residual_fn`` (data), held fixed.
      maxiter: the most steps tried, accepted or rejected (each: one CG solve and one
        residual evaluation).
      ftol: converged when the actual and predicted relative reductions of the sum of
        squares are both at most ``ftol`` (0 switches the test off).
      xtol: converged when a step is at most ``xtol`` times the scaled norm of the point.
      gtol: converged when :math:`\max_j |(J^\top r)_j| / (D_j \|r\|) \le` ``gtol``.
      damping: the initial :math:`\lambda`, relative to :math:`D^2` (dimensionless).
      min_damping, max_damping: bounds on :math:`\lambda`, relative to :math:`D^2`;
        ``None``: machine epsilon of the parameters' dtype and its inverse.
      cg_maxiter: CG steps per solve; ``None``: ``2 n`` (at least 10), ``n`` the number
        of parameters (CG is exact in ``n`` steps in exact arithmetic).
      scaling: ``"jacobian"`` (:math:`D^2` = running maximum of the exact squared column
        norms of :math:`J`: ``n`` Jacobian-vector products per Jacobian, counted in
        ``num_jvps``; Jacobi-preconditioned CG), ``"identity"`` (one scale for every
        parameter, :math:`\|Jg\|^2 / \|g\|^2`, one product; no preconditioner) or
        ``"auto"``: ``"jacobian"`` up to 2048 parameters, else ``"identity"``. (The
        dense solve always scales by the column norms of the Jacobian it forms.)
      linear_solver: ``"cg"`` (matrix-free), ``"dense"`` (form :math:`J` from ``n``
        Jacobian-vector products per Jacobian, counted in ``num_jvps``, and solve by
        Cholesky) or ``"auto"``: CG, switching to dense for the rest of the run after
        a CG solve ends at ``cg_maxiter``, if :math:`J` has at most 2^24 entries.

    Returns:
      A :class:`LeastSquaresResult`: ``params``, ``value`` (:math:`\tfrac12 \|r\|^2`,
      scipy's ``cost``), ``residuals``, the counts (``num_steps``, ``num_accepted``,
      ``num_fev``, ``num_jev``, ``num_matvecs``, ``num_jvps``), ``status`` (a
      :class:`LeastSquaresStatus`), ``converged``, ``dense`` (the run ended solving with
      the formed Jacobian), and ``message`` / ``reason``.

    Raises:
      TypeError: ``residual_fn`` not callable or returning non-floating values; a
        non-array or non-floating leaf in ``params``; a count that is not an int; a
        tolerance or damping that is not a real number.
      ValueError: ``params`` with no array leaves; ``maxiter`` or ``cg_maxiter`` < 1; a
        negative or non-finite tolerance; a damping or bound that is not positive and
        finite, or ``min_damping > max_damping``; an unknown ``scaling`` or
        ``linear_solver``.

    Example (Rosenbrock as least squares, from MGH's start (-1.2, 1)):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> def residuals(x):
      ...     return jnp.stack([10.0 * (x["b"] - x["a"] ** 2), 1.0 - x["a"]])
      >>> res = jaxcurv.least_squares(residuals, {"a": -1.2, "b": 1.0})
      >>> bool(res.converged), [round(float(v), 4) for v in res.params.values()]
      (True, [1.0, 1.0])

    References:
      Moré, "The Levenberg-Marquardt algorithm: implementation and theory", 1978.
      Moré, Garbow & Hillstrom, "User guide for MINPACK-1", ANL-80-74, 1980.
      Nielsen, "Damping parameter in Marquardt's method", 1999.
    """
    cfg = check_options(
        residual_fn,
        params,
        Options(
            maxiter,
            ftol,
            xtol,
            gtol,
            damping,
            min_damping,
            max_damping,
            cg_maxiter,
            scaling,
            linear_solver,
        ),  # fmt: skip
    )
    n = tree_size(params)
    if cfg.scaling == "auto":
        cfg = cfg._replace(scaling="jacobian" if n <= _AUTO_JACOBIAN_MAX else "identity")
    if cfg.cg_maxiter is None:
        cfg = cfg._replace(cg_maxiter=max(10, 2 * n))
    # The numbers are arguments of the computation, not constants of it: a new tolerance,
    # damping or budget reuses the compiled solve.
    dtype = jnp.result_type(*jax.tree.leaves(params))
    eps = float(jnp.finfo(dtype).eps)
    nums = dict(
        maxiter=jnp.asarray(cfg.maxiter, jnp.int32),
        **{k: jnp.asarray(getattr(cfg, k), dtype) for k in ("ftol", "xtol", "gtol", "damping")},
        min_damping=jnp.asarray(eps if min_damping is None else min_damping, dtype),
        max_damping=jnp.asarray(1.0 / eps if max_damping is None else max_damping, dtype),
    )
    return compiled_call(
        lambda p, a, k: _solve(cfg._replace(**k), residual_fn, p, a), params, args, nums
    )
