"""CG's loop as init / step / finish over a fixed problem, and its implicit derivative.

Private to ``jaxcurv.cg`` (shared so that tests can drive single steps): ``_run`` is one
solve, ``_implicit_solve`` the same solve differentiated through
``jax.lax.custom_linear_solve`` instead of through the loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv.cg_status import CGInfo, CGStatus
from jaxcurv.tree import (
    tree_all_finite,
    tree_axpy,
    tree_vdot,
    tree_zeros_like,
)

PyTree = Any

# Internal "still iterating" status; never returned.
_RUNNING = -1


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
    num_matvecs: jax.Array  # int32: products with A spent so far


def _run(problem: _Problem, rhs: PyTree, x0: PyTree | None, x_finite: jax.Array):
    """One CG solve of ``(A + damping I) x = rhs``: init, steps until a stop, finish.

    ``x`` comes back in the working precision, ``info`` complete.
    """
    thresh2 = jnp.maximum(problem.tol2 * _vdot_real(rhs, rhs), problem.atol2)
    problem = problem._replace(thresh2=thresh2)
    state = _init(problem, rhs, x0, x_finite)
    state = jax.lax.while_loop(
        lambda s: s.status == _RUNNING, functools.partial(_step, problem), state
    )
    return _finish(problem, state)


def _implicit_solve(problem: _Problem, bw: PyTree, x0: PyTree | None, x_finite: jax.Array):
    r"""``_run`` on ``bw``, differentiated implicitly instead of through the loop.

    ``jax.lax.custom_linear_solve`` takes the derivative of the exact solution
    :math:`x = (A + \lambda I)^{-1} b`: :math:`dx = (A + \lambda I)^{-1} (db - dA\, x -
    d\lambda\, x)`, ``dA`` through whatever ``A`` (and ``damping``) close over. Reverse
    mode solves the cotangent system with the same matrix (it is symmetric) by
    ``_adjoint``; forward mode solves each tangent by this same call. Nothing of ``M`` or
    ``x0`` is differentiated (the exact solution depends on neither), nor ``info``.
    Without differentiation only the primal solve runs.
    """

    def primal(_, rhs):
        return _run(problem, rhs, x0, x_finite)

    def adjoint(_, rhs):
        # From zero and to the same tolerances, without Martens' truncation rule: the
        # gradient is only as good as this solve. It keeps the primal's recorded-iterate
        # buffers so that both return the same structure (vmap of grad needs it).
        return _run(problem._replace(martens_eps=None), rhs, None, jnp.asarray(True))

    return jax.lax.custom_linear_solve(
        problem.apply_a, bw, primal, adjoint, symmetric=True, has_aux=True
    )


class _Problem(NamedTuple):
    """What every CG step reads besides the state; fixed for one solve (not a pytree leaf)."""

    apply_a: Callable[[PyTree], PyTree]  # v -> (A + damping I) v, working precision
    apply_m: Callable[[PyTree], PyTree]  # r -> M r; the identity without `M`
    preconditioned: bool  # `M` given: r^T M r is not r^T r
    out_like: PyTree | None  # float16/bfloat16 `b`: the iterate must survive a cast to it
    thresh2: jax.Array | None  # (): max(tol^2 ||rhs||^2, atol^2), set per solve by `_run`
    tiny: jax.Array  # (): relative curvature below which p^T A p is rounding noise
    maxiter: int
    martens_eps: jax.Array | None  # (): Martens' progress fraction (martens rule only)
    rec_steps: np.ndarray | None  # int32 (R - 1,): steps to record (record_iterates only)
    tol2: jax.Array | None = None  # (): tol^2, from which `_run` sets thresh2
    atol2: jax.Array | None = None  # (): atol^2


def _init(problem: _Problem, bw: PyTree, x0: PyTree | None, x_finite: jax.Array) -> _State:
    """The state before the first step: residual ``r0 = b - A x0``, direction ``p0 = M r0``.

    ``bw`` is ``b`` in the working precision and ``x0`` (``None``: zeros) is already cast
    to it and finite; ``x_finite`` says whether the caller's ``x0`` was.
    """
    real = problem.tiny.dtype
    spent = jnp.zeros((), jnp.int32)
    if x0 is None:
        x, r = tree_zeros_like(bw), bw
        phi0 = jnp.zeros((), real)
    else:
        spent = spent + 1
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
        num_matvecs=spent,
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
        num_matvecs=s.num_matvecs + 1,
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
    """``(x, CGInfo)`` from the final state: ``x`` in the working precision, the recorded
    iterates (in ``b``'s dtypes) completed by the final one."""
    iterates = iterate_steps = iterate_values = None
    if problem.rec_steps is not None:
        rec_steps, n_rec = problem.rec_steps, problem.rec_steps.size + 1
        iterates = jax.tree.map(lambda buf, leaf: buf.at[n_rec - 1].set(leaf), s.rec, s.x)
        if problem.out_like is not None:
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
        num_matvecs=s.num_matvecs,
        iterates=iterates,
        iterate_steps=iterate_steps,
        iterate_values=iterate_values,
    )
    return s.x, info
