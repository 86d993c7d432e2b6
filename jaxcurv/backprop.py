r"""Backpropagation as a chain of vector-Jacobian products (the seed's first application).

For a network :math:`y = f_n(\dots f_2(f_1(x)))` with loss :math:`L(y)`, the chain rule
gives :math:`\nabla_x L = J_1^\top J_2^\top \cdots J_n^\top \nabla_y L`. No Jacobian
:math:`J_i` is ever formed: each layer only applies its transpose to a vector, which is
exactly what ``jax.vjp`` returns. This module spells that out layer by layer so the chain
is visible; ``jax.grad`` does the same thing in one call, and the tests check they agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

__all__ = ["BackpropResult", "backprop"]


class BackpropResult(NamedTuple):
    """What one forward and one backward pass produce.

    Attributes:
      loss: the scalar loss :math:`L(y)`.
      param_grads: a list, one gradient pytree per layer, like ``params``.
      input_grad: :math:`\\nabla_x L`, shaped like the input.
      cotangents: :math:`\\nabla_{h_i} L` at every layer boundary, from the output
        (:math:`\\nabla_y L`) back to the input; ``len(layers) + 1`` entries.
    """

    loss: jax.Array
    param_grads: list
    input_grad: PyTree
    cotangents: list


def backprop(
    layers: Sequence[Callable],
    params: Sequence[PyTree],
    x: PyTree,
    loss_fn: Callable,
) -> BackpropResult:
    r"""Gradient of ``loss_fn(f_n(... f_1(x)))`` by applying each :math:`J_i^\top` in turn.

    Args:
      layers: ``layer_i(params_i, h) -> h_next``, applied in order.
      params: one parameter pytree per layer (``None`` or ``()`` for parameter-free layers).
      x: the network input.
      loss_fn: ``loss_fn(y) -> scalar`` on the last layer's output.

    Returns:
      A ``BackpropResult`` with the loss, per-layer parameter gradients, the input
      gradient and the cotangent at each layer boundary.

    Raises:
      ValueError: when ``layers`` and ``params`` differ in length, or the loss is not scalar.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> layer = lambda w, h: jnp.tanh(w * h)
      >>> res = jaxcurv.backprop([layer, layer], [2.0, 3.0], 0.5, lambda y: y**2)
      >>> bool(jnp.allclose(res.input_grad, jax.grad(
      ...     lambda x: layer(3.0, layer(2.0, x)) ** 2)(0.5)))
      True
    """
    if len(layers) != len(params):
        raise ValueError(
            f"`backprop` needs one params entry per layer: got {len(layers)} layers and "
            f"{len(params)} params. Pass `None` for layers without parameters."
        )
    h = x
    pullbacks = []
    for layer, p in zip(layers, params):
        h, pullback = jax.vjp(layer, p, h)
        pullbacks.append(pullback)
    loss, loss_pullback = jax.vjp(loss_fn, h)
    if jnp.shape(loss) != ():
        raise ValueError(f"`backprop(loss_fn)` must return a scalar, got shape {jnp.shape(loss)}.")
    (g,) = loss_pullback(jnp.ones_like(loss))
    cotangents = [g]
    grads = []
    for pullback in reversed(pullbacks):
        # g <- J_i^T g: the only thing any layer contributes to backpropagation.
        gp, g = pullback(g)
        grads.append(gp)
        cotangents.append(g)
    return BackpropResult(loss, grads[::-1], g, cotangents)
