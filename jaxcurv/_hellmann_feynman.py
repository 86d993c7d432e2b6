"""Hellmann-Feynman derivatives of eigenvalues: ``d lambda = v^T dA v`` as a ``custom_jvp``.

Shared by ``eigensolvers`` and ``power_method``: the value is the eigenvalue as computed,
its derivative the Rayleigh quotient's of the returned unit eigenvector held fixed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from jaxcurv._lanczos import _matvec_checked
from jaxcurv.products import as_matvec
from jaxcurv.tree import tree_vdot

PyTree = Any


def _hellmann_feynman(A: Any, example: PyTree, lam: jax.Array, vectors: PyTree) -> jax.Array:
    r"""``lam``, with the derivative of simple eigenvalues: :math:`d\lambda_j = v_j^\top
    dA\, v_j` (Hellmann-Feynman), through whatever ``A`` holds or closes over.

    The value is ``lam`` itself; the derivative, asked for or not, is that of the Rayleigh
    quotients of the unit eigenvectors held fixed. Only differentiation evaluates it (a
    ``custom_jvp`` rule: one product each, and its transpose in reverse mode), so under a
    plain ``jit`` or ``vmap`` nothing is added. Exact for the first derivative of a simple
    eigenvalue; a second derivative would also need the eigenvectors' motion.
    """
    matvec, example = as_matvec(A, example)
    matvec, example = _matvec_checked(matvec, example)
    converted, consts = jax.closure_convert(matvec, example)
    return _rayleigh_derivative(converted, lam, jax.lax.stop_gradient(vectors), *consts)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _rayleigh_derivative(matvec: Callable, lam: jax.Array, vectors: PyTree, *consts):
    return lam


@_rayleigh_derivative.defjvp
def _rayleigh_derivative_jvp(matvec, primals, tangents):
    lam, vectors, *consts = primals
    dconsts = tangents[2:]

    def quotients(consts):
        return jax.lax.map(lambda v: tree_vdot(v, matvec(v, *consts)), vectors)

    _, dq = jax.jvp(quotients, (consts,), (list(dconsts),))
    return lam, dq.astype(lam.dtype)
