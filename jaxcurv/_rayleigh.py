"""Accurate inner products for Rayleigh quotients: float64, or compensated float32.

Private to the eigensolvers (public names so ``eigensolvers`` may import them): the
refinement of :func:`jaxcurv.eigenvalues` sums ``v^T A v`` and ``||A v - lambda v||``
here, more accurately than the float32 arithmetic of the products themselves.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any

# ----------------------------------------------------- the final Rayleigh quotients
#
# The Ritz values of a float32 run are eigenvalues of a T whose entries are float32 dot
# products over N entries, so they are off by about sqrt(N) eps ||A|| even when the Ritz
# vectors are accurate to much better (measured: 1e-7..1.5e-6 on a 484-parameter MLP
# Hessian whose vectors give 4e-8). One more product per pair, w = A v, gives the
# Rayleigh quotient v^T w / v^T v, whose error is residual^2 / gap (Kato-Temple) plus the
# product's own rounding projected on v -- provided the two dot products are summed more
# accurately than float32: in float64 where JAX has it (the products of two float32
# numbers are exact in float64), else by compensated summation (below). The same w gives
# the residual ||w - lambda v|| from an explicit product, which the recurrence's
# |beta s_mj| cannot see below the rounding level (and reports as exactly 0 where eigh's
# deflation zeroes s_mj).


def split(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a = hi + lo`` exactly, ``hi`` the top 12 of float32's 24 significand bits.

    By masking bits, not Veltkamp's ``4097 a`` trick, so an FMA the compiler may form
    cannot break it; then ``hi * hi``, ``hi * lo`` and ``lo * lo`` are exact in float32.
    """
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    hi = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), a.dtype)
    return hi, a - hi


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``a + b = s + e`` exactly (Knuth's TwoSum; additions only)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def compensated_sum(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over the last axis as ``(s, c)``: pairwise, every addition's error kept.

    ``s + c`` is the sum to about ``eps |sum| + log2(n) eps^2 sum |x|`` (a float64-like
    accuracy from float32 operations; Ogita, Rump and Oishi 2005, pairwise).
    """
    n = x.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - n)])
    c = jnp.zeros_like(x)
    while x.shape[-1] > 1:
        x, c = (a.reshape(*a.shape[:-1], -1, 2) for a in (x, c))
        x, e = two_sum(x[..., 0], x[..., 1])
        c = c[..., 0] + c[..., 1] + e
    return x[..., 0], c[..., 0]


def wide(dtype) -> bool:
    """Whether to accumulate in float64 (on where JAX has it) rather than compensated."""
    return bool(jax.config.read("jax_enable_x64")) or jnp.finfo(dtype).bits >= 64


def rows(V: PyTree) -> list[jax.Array]:
    """The leaves of a stacked pytree as ``(k, n_leaf)`` matrices."""
    return [jnp.reshape(Vl, (Vl.shape[0], -1)) for Vl in jax.tree.leaves(V)]


def dots(V: PyTree, W: PyTree, dtype) -> jax.Array:
    """``v_j^T w_j`` per stacked pair, accurately summed, in float64 when ``wide``."""
    if wide(dtype):  # leaf by leaf, no reshape: a sharded leaf stays where it lives
        parts = [
            jnp.sum(v.astype(jnp.float64) * w.astype(jnp.float64), axis=tuple(range(1, v.ndim)))
            for v, w in zip(jax.tree.leaves(V), jax.tree.leaves(W), strict=True)
        ]
        return functools.reduce(jnp.add, parts)
    s_tot = c_tot = None
    for v, w in zip(rows(V), rows(W), strict=True):
        (vh, vl), (wh, wl) = split(v), split(w)
        s, c = compensated_sum(vh * wh)  # exact products
        c = c + jnp.sum(vh * wl + vl * wh + vl * wl, axis=1)  # ~2^-12 of the sum: float32 will do
        if s_tot is None:
            s_tot, c_tot = s, c
        else:
            s_tot, e = two_sum(s_tot, s)
            c_tot = c_tot + c + e
    return s_tot + c_tot


def residual_norms(V: PyTree, W: PyTree, lam: jax.Array, dtype) -> jax.Array:
    """``||w_j - lam_j v_j||`` with each entry's difference good to a few eps of itself."""
    sq = []
    for v, w in zip(jax.tree.leaves(V), jax.tree.leaves(W), strict=True):
        lam_ = jnp.reshape(lam, (-1,) + (1,) * (v.ndim - 1))
        if wide(dtype):
            r = w.astype(jnp.float64) - lam_.astype(jnp.float64) * v.astype(jnp.float64)
        else:
            (lh, ll), (vh, vl) = split(lam_), split(v)
            r = (w - lh * vh) - (lh * vl + ll * vh + ll * vl)  # lh * vh exact
        sq.append(jnp.sum(r * r, axis=tuple(range(1, v.ndim))))
    return jnp.sqrt(functools.reduce(jnp.add, sq)).astype(dtype)


def rayleigh_refine(matvec, vecs: PyTree, dtype) -> tuple[jax.Array, jax.Array, PyTree]:
    """``(eigenvalues, residual norms, W = A V)`` of stacked vectors: one product each."""
    W = jax.lax.map(matvec, vecs)
    lam = (dots(vecs, W, dtype) / dots(vecs, vecs, dtype)).astype(dtype)
    return lam, residual_norms(vecs, W, lam, dtype), W
