r"""Martens' diagonal preconditioner for the conjugate-gradient solve of a Hessian-free step.

CG on a badly scaled curvature matrix needs many steps; Martens (2010, §4.7) scales it by

.. math:: D = \Big(\tfrac1n \textstyle\sum_i \nabla \ell_i \odot \nabla \ell_i
   + \lambda\Big)^{\xi}, \qquad M^{-1} r = r / D,

the damped diagonal of the empirical Fisher matrix raised to :math:`\xi = 3/4`, with
:math:`\ell_i` the loss on example :math:`i` alone. Martens sums the squared per-example
gradients; the mean keeps the scale of a batch-mean loss, whose gradient is itself a mean.

References:
  J. Martens. "Deep learning via Hessian-free optimization." ICML 2010, §4.7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv.model_and_loss import batch_size, is_batched
from jaxcurv.tree import tree_scale, tree_zeros_like

PyTree = Any

__all__ = [
    "martens_diagonal",
    "martens_preconditioner",
    "mean_squared_example_grads",
]


def mean_squared_example_grads(
    fn: Callable, params: PyTree, extra_args: dict[str, Any], chunk_size: int
) -> PyTree:
    """``(1/n) sum_i grad l_i (.) grad l_i`` with ``l_i = fn`` on example ``i`` alone.

    The per-example gradients come from ``vmap`` over batches of one example, ``chunk_size``
    at a time inside a ``scan``, so memory is ``chunk_size`` gradients, not ``n``. Every
    array extra argument with ``ndim >= 1`` is a batch along axis 0; with none, the whole
    objective is the one "example" and the result is ``g * g``.

    Args:
      fn: ``fn(params, **extra_args) -> scalar``, a mean (or sum) of independent
        per-example terms.
      params: the point, a pytree of float arrays.
      extra_args: the keyword data; scalars reach every example unchanged.
      chunk_size: per-example gradients computed at a time.

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: batched extras of different leading sizes.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.preconditioner import mean_squared_example_grads
      >>> fn = lambda w, x: jnp.mean(x * w)  # example i's gradient is x_i
      >>> mean_squared_example_grads(fn, jnp.ones(()), {"x": jnp.array([1.0, 3.0])}, 8)
      Array(5., dtype=float32)

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.7.
    """
    n = batch_size(extra_args, "preconditioner")
    if n is None:
        # A full-batch objective (no batched extras): one "example", the whole objective.
        g = jax.grad(lambda p: fn(p, **extra_args))(params)
        return jax.tree.map(lambda a: a * a, g)
    c = min(chunk_size, n)
    k = -(-n // c)
    pad = k * c - n
    leaves, treedef = jax.tree.flatten(extra_args)
    batched = [is_batched(x) for x in leaves]

    def chunked(x):
        # Padding repeats a real example (finite values) and gets weight 0.
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape((k, c, 1) + x.shape[1:])

    xs = [chunked(x) for x, b in zip(leaves, batched, strict=True) if b]
    weights = (jnp.arange(k * c) < n).reshape(k, c)

    def grad_one(example_leaves):
        it = iter(example_leaves)
        kw = [next(it) if b else x for x, b in zip(leaves, batched, strict=True)]
        kw = jax.tree.unflatten(treedef, kw)
        return jax.grad(lambda p: fn(p, **kw))(params)

    def body(acc, chunk):
        ex, w = chunk
        gs = jax.vmap(grad_one)(ex)
        acc = jax.tree.map(
            lambda a, gi: a + jnp.tensordot(w.astype(gi.dtype), gi * gi, axes=1), acc, gs
        )
        return acc, None

    acc, _ = jax.lax.scan(body, tree_zeros_like(params), (xs, weights))
    return tree_scale(acc, 1.0 / n)


def martens_diagonal(
    fn: Callable,
    params: PyTree,
    extra_args: dict[str, Any],
    damping: jax.typing.ArrayLike,
    *,
    exponent: float = 0.75,
    chunk_size: int = 32,
) -> PyTree:
    r"""Martens' preconditioning diagonal :math:`D = (\mathrm{mean}_i\, g_i^2 + \lambda)^\xi`.

    Entries that come out zero (``lambda = 0`` and a parameter no example moves) are set to
    1, so that they leave the residual unscaled instead of dividing by zero.

    Args:
      fn: the objective, ``fn(params, **extra_args) -> scalar`` (see
        :func:`mean_squared_example_grads`).
      params: the point.
      extra_args: the keyword data of the batch.
      damping: the Tikhonov damping :math:`\lambda` of the solve.
      exponent: :math:`\xi` (Martens: 3/4).
      chunk_size: per-example gradients computed at a time.

    Returns:
      :math:`D`, a pytree like ``params``.

    Example (:math:`g_i = x_i`: :math:`D = ((1 + 9) / 2 + 11)^{1/2} = 4`):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.preconditioner import martens_diagonal
      >>> fn = lambda w, x: jnp.mean(x * w)
      >>> martens_diagonal(fn, jnp.ones(()), {"x": jnp.array([1.0, 3.0])}, 11.0, exponent=0.5)
      Array(4., dtype=float32)

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.7.
    """
    sq = mean_squared_example_grads(fn, params, extra_args, chunk_size)
    diag = jax.tree.map(lambda s: (s + jnp.asarray(damping, s.dtype)) ** exponent, sq)
    # Guard zero entries (lambda = 0 and a dead parameter): leave them unscaled.
    return jax.tree.map(lambda d: jnp.where(d > 0, d, jnp.ones_like(d)), diag)


def martens_preconditioner(diagonal: PyTree) -> Callable[[PyTree], PyTree]:
    """The preconditioner ``M: r -> r / D`` that :func:`jaxcurv.cg` takes as ``M``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.preconditioner import martens_preconditioner
      >>> martens_preconditioner({"w": jnp.array([2.0, 4.0])})({"w": jnp.ones(2)})
      {'w': Array([0.5 , 0.25], dtype=float32)}

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010, §4.7.
    """
    return lambda r: jax.tree.map(lambda ri, di: ri / di.astype(ri.dtype), r, diagonal)
