"""The Krylov machinery: stacked-pytree basis algebra, random probes, Lanczos, thick restart.

A basis of ``m`` vectors is a pytree whose leaves carry a leading axis of length ``m``;
Lanczos keeps it with full reorthogonalization (a second Gram-Schmidt pass when one
cancels most of the vector). Shared by ``eigensolvers``, ``trace_estimators`` and
``density``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._precision import _working_matvec
from jaxcurv.tree import (
    tree_check_like,
    tree_norm,
    tree_scale,
    tree_sub,
    tree_vdot,
    tree_where,
)

PyTree = Any


_HIGHEST = jax.lax.Precision.HIGHEST


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


def _leaf_index(shape: tuple[int, ...], offset: int = 0) -> jax.Array:
    """uint32 row-major index of every entry of an array of ``shape``, plus ``offset``.

    Built from per-dimension iotas, so a sharded leaf computes its own entries' indices.
    """
    idx = jnp.full(shape, offset, jnp.uint32)
    stride = 1
    for d in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride)
        stride *= shape[d]
    return idx


def _mix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection in which every output bit depends on
    every input bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _normal_from_bits(h: jax.Array, dtype: Any) -> jax.Array:
    """Standard normal entries from uint32 hashes ``h``, by the inverse CDF of 23 bits.

    ``u = (k + 1/2) 2^-23`` for the top 23 bits ``k`` lies in (0, 1) exactly in float32
    (23 bits and a half fit its 24-bit significand); with 24 bits the largest ``k`` rounded
    to ``u = 1`` and ``erf_inv(1) = inf``: one entry in 2^24, so most 3M-entry trees held
    an infinity. Computed in at least float32 for the same reason (bfloat16 keeps 8 bits).
    """
    work = jnp.promote_types(dtype, jnp.float32)
    u = ((h >> 9).astype(work) + 0.5) * (2.0**-23)
    return (math.sqrt(2.0) * jax.lax.erf_inv(2.0 * u - 1.0)).astype(dtype)


def _random_like(key: jax.Array, like: PyTree, kind: str = "normal") -> tuple[PyTree, PyTree]:
    """A random pytree like ``like``, and the seed its fresh directions come from (itself).

    Entry by entry where each leaf lives: one threefry draw gives two 32-bit seeds per leaf
    and each entry is a hash of its index within the leaf and those seeds (Rademacher from
    the top bit, normal by the inverse CDF of 23 bits). So parameters sharded FSDP-style
    are never gathered into one vector as long as all of them (a flat draw cut into leaves
    was), and compiling stays cheap: one threefry per tree, where one per leaf took ~10x
    longer to compile than the whole flat draw on a 50-leaf tree.
    """
    leaves, treedef = jax.tree.flatten(like)
    dtype = _real_dtype(like)
    seeds = jax.random.bits(key, (max(len(leaves), 1), 2), jnp.uint32)
    out = []
    for i, leaf in enumerate(leaves):
        h = _mix32(_mix32(_leaf_index(jnp.shape(leaf)) ^ seeds[i, 0]) + seeds[i, 1])
        if kind == "normal":
            z = _normal_from_bits(h, dtype)
        else:
            z = jnp.where((h >> 31) == 1, 1.0, -1.0).astype(dtype)
        out.append(z.astype(leaf.dtype))
    tree = jax.tree.unflatten(treedef, out)
    return tree, tree


def _fresh_direction(seed: PyTree, step: jax.Array) -> PyTree:
    """A new direction for step ``step``, entry by entry: ``seed`` times a hashed uniform.

    Each entry is ``seed[e] * (u(e, step) - 1/2)`` with ``u`` a hash of the entry's global
    index and the step, so directions of different steps are independent pseudo-random
    vectors (linearly independent of any basis almost surely). Elementwise on iotas of
    each leaf's shape: no random-number generator compiled into the loop body, and nothing
    gathered across the devices a sharded leaf lives on.
    """
    salt = jnp.asarray(step).astype(jnp.uint32) * jnp.uint32(0x9E3779B9)
    out, offset = [], 0
    for leaf in jax.tree.leaves(seed):
        h = _mix32(_mix32(_leaf_index(jnp.shape(leaf), offset) ^ salt) + salt)
        u = (h >> 8).astype(leaf.dtype) * (2.0**-24) - 0.5
        out.append(leaf * u)
        offset += math.prod(jnp.shape(leaf))
    return jax.tree.unflatten(jax.tree.structure(seed), out)


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


def _extend(matvec, V, T, j0, anorm, seed, shift):
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
    The fresh direction of step ``j`` is ``_fresh_direction(seed, shift + j + 1)``, the
    random pytree ``seed`` times an elementwise hash of the entry and the step: independent
    of the basis almost surely, with no random-number generator in the loop body and no
    flat vector (a sharded leaf stays where it lives).

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
        fresh = _fresh_direction(seed, shift + j + 1)

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
    V, T, _, beta, _ = _extend(matvec, V, T, 0, zero, seed, 0)
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
    # A basis no larger than the wanted pairs leaves no room to grow after a restart: the
    # next cycle would take no step, see no residual (beta = 0) and call wrong Ritz values
    # converged. One cycle is all such a basis can do.
    single = single or m <= nw
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
        V, T, anorm, beta, fresh = _extend(matvec, V, T, j0, anorm, seed, nmv)
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


def _probe_keys(key: jax.Array, num: int) -> jax.Array:
    return jax.random.split(key, num)


def _mean_and_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mean of i.i.d. samples and its standard error (``inf`` below two samples)."""
    num = samples.shape[0]
    mean = jnp.mean(samples)
    if num < 2:
        return mean, jnp.full((), jnp.inf, samples.dtype)
    return mean, jnp.std(samples, ddof=1) / math.sqrt(num)
