r"""Directions to draw a loss along: random, and scaled like the parameters (Li et al. 2018).

A loss surface drawn along a plain Gaussian direction says little: a network whose
weights are all twice as large, with the next layer's halved, computes the same function
but looks twice as flat along the same direction. Li et al. (2018) remove that scale
invariance with *filter normalization*: each filter of the random direction (an output
unit of a dense layer, an output channel of a convolution) is rescaled to the norm of the
same filter of the parameters,

.. math:: d_{i,j} \leftarrow \frac{d_{i,j}}{\|d_{i,j}\|} \, \|\theta_{i,j}\|,

so that moving ``t`` along ``d`` changes every filter by the same fraction ``t`` of its own
size. :func:`random_direction` builds such a direction, like ``params`` leaf for leaf, for
:func:`jaxcurv.loss_slices` and :func:`jaxcurv.analyze_landscape`. The other direction
people draw a loss along is the one between two parameter vectors (an initialization and a
solution, two checkpoints): :func:`linear_interpolation` (Goodfellow et al. 2015).

References:
  Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural nets",
  NeurIPS 2018, section 4 (filter normalization; bias and BatchNorm directions set to 0).
  Goodfellow, Vinyals and Saxe, "Qualitatively characterizing neural network optimization
  problems", ICLR 2015 (the loss on the line between two parameter vectors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv._checks import (
    check_int,
    check_key,
    check_non_negative,
    check_option,
    check_real_inputs,
)
from jaxcurv.landscape import LossSlices, loss_slices
from jaxcurv.tree import tree_check_like, tree_random_normal, tree_sub

PyTree = Any

__all__ = ["linear_interpolation", "random_direction"]

_NORMALIZATIONS = ("filter", "layer", None)


def _filter_scaled(d: jax.Array, theta: jax.Array, axis: int) -> jax.Array:
    """``d`` with each slice along ``axis`` rescaled to the norm of ``theta``'s slice."""
    others = tuple(a for a in range(d.ndim) if a != axis % d.ndim)
    d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=others, keepdims=True))
    t_norm = jnp.sqrt(jnp.sum(jnp.square(theta), axis=others, keepdims=True))
    # A Gaussian filter has norm 0 with probability 0; the guard keeps an empty or
    # underflowing one at 0 instead of NaN.
    return d * jnp.where(d_norm > 0, t_norm / jnp.where(d_norm > 0, d_norm, 1), 0)


def _layer_scaled(d: jax.Array, theta: jax.Array) -> jax.Array:
    return _filter_scaled(d.reshape(1, -1), theta.reshape(1, -1), 0).reshape(d.shape)


def random_direction(
    key: jax.Array,
    params: PyTree,
    normalization: str | None = "filter",
    *,
    filter_axis: int = -1,
    zero_biases: bool = True,
) -> PyTree:
    r"""A random direction shaped like ``params``, scaled filter by filter like them.

    Each leaf starts as independent standard normal entries (one key per leaf, split from
    ``key``) and is then scaled by ``normalization``:

    - ``"filter"`` (Li et al. 2018): a leaf of two or more axes is a stack of filters
      along ``filter_axis``; each filter of the direction gets the Frobenius norm of the
      same filter of ``params``. The default ``-1`` is the output axis of JAX's layouts
      (Flax/Haiku ``Dense`` kernels ``(in, out)``, ``Conv`` kernels ``(h, w, in, out)``, the
      reference models of ``jaxcurv.app``); pass ``filter_axis=0`` for PyTorch's
      ``(out, in, ...)``.
    - ``"layer"``: each leaf as a whole gets the norm of the same leaf of ``params``.
    - ``None``: the Gaussian direction itself.

    With ``"filter"`` or ``"layer"``, leaves of fewer than two axes (biases, BatchNorm
    scales and offsets) get a zero direction when ``zero_biases`` (Li et al.'s choice: a
    bias has no filter to scale it by, and a unit-norm random bias dwarfs the biases a
    network learns); with ``zero_biases=False`` they are scaled as one filter, like
    ``"layer"``. A filter of ``params`` that is all zero gets a zero direction.

    Args:
      key: PRNG key (typed or legacy ``uint32[2]``); the direction is a function of it.
      params: the parameters, a pytree of real floating-point arrays.
      normalization: ``"filter"``, ``"layer"`` or ``None``.
      filter_axis: the axis of a weight leaf that indexes its filters (output units).
      zero_biases: zero direction for leaves of fewer than two axes (see above).

    Returns:
      A pytree of the structure, shapes and dtypes of ``params``.

    Raises:
      TypeError: a bad ``key``, a non-array, integer or complex leaf in ``params``, a
        non-integer ``filter_axis``. ValueError: an unknown ``normalization``, an empty
        ``params``, a ``filter_axis`` out of range for a weight leaf.

    Example (each output unit -- column -- of the direction has its weights' norm):
      >>> import jax, jax.numpy as jnp
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]]), "b": jnp.ones(2)}
      >>> d = random_direction(jax.random.key(0), params)
      >>> jnp.linalg.norm(d["w"], axis=0).round(4).tolist(), d["b"].tolist()
      ([5.0, 1.0], [0.0, 0.0])

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural
      nets", NeurIPS 2018.
    """
    key = check_key("random_direction", key)
    check_option("random_direction(normalization=...)", normalization, _NORMALIZATIONS)
    if not isinstance(filter_axis, int) or isinstance(filter_axis, bool):
        raise TypeError(
            f"`random_direction(filter_axis=...)` must be an int (the axis of a weight leaf "
            f"that indexes its filters), got {type(filter_axis).__name__} {filter_axis!r}. "
            "Pass -1 for JAX's (in, out) layouts, 0 for PyTorch's (out, in)."
        )
    check_real_inputs("random_direction", params, "parameters `params`")
    direction = tree_random_normal(key, params)
    if normalization is None:
        return direction

    def scale(d, theta):
        theta = jnp.asarray(theta)
        if d.ndim >= 2 and not -d.ndim <= filter_axis < d.ndim:
            raise ValueError(
                f"`random_direction(filter_axis=...)` is {filter_axis}, but a leaf of "
                f"`params` has shape {d.shape}. Pass an axis every weight leaf has, e.g. -1."
            )
        if d.ndim < 2:
            return jnp.zeros_like(d) if zero_biases else _layer_scaled(d, theta)
        if normalization == "layer":
            return _layer_scaled(d, theta)
        return _filter_scaled(d, theta, filter_axis)

    return jax.tree.map(scale, direction, params)


def linear_interpolation(
    fun: Callable,
    start: PyTree,
    end: PyTree,
    *args: Any,
    num_points: int = 41,
    margin: float = 0.5,
) -> LossSlices:
    r"""The loss on the line through ``start`` and ``end``: :math:`f((1 - t) x_0 + t x_1)`.

    Goodfellow et al. (2015) draw it between a network's initialization and its trained
    parameters (or two checkpoints, or two solutions): a monotone curve says the two are
    joined by a straight path without a barrier. ``t = 0`` is ``start``, ``t = 1`` is
    ``end``, and the line runs ``margin`` beyond each. It is
    ``loss_slices(fun, start, *args, directions=end - start, offsets=t)``, so the
    result also holds the quadratic model at ``start`` along the line.

    Args:
      fun: scalar loss ``f(x, *args)``.
      start, end: two points, pytrees of the same structure and shapes.
      *args: further arguments of ``fun`` (data), held fixed.
      num_points: offsets ``t``, evenly spaced in ``[-margin, 1 + margin]``.
      margin: how far the line runs past the two points, in units of their distance.

    Returns:
      :class:`LossSlices` with ``along_2d=None``.

    Raises:
      ValueError: ``num_points < 2``, a negative ``margin``, ``end`` unlike ``start``.

    Example (:math:`f = \|x\|^2` from 0 to 1: :math:`t^2`):
      >>> import jax.numpy as jnp
      >>> s = linear_interpolation(lambda p: jnp.sum(p**2), jnp.zeros(1), jnp.ones(1),
      ...                          num_points=3, margin=0.0)
      >>> s.t.tolist(), s.along_1d.tolist()
      ([0.0, 0.5, 1.0], [0.0, 0.25, 1.0])

    References:
      Goodfellow, Vinyals and Saxe, "Qualitatively characterizing neural network
      optimization problems", ICLR 2015.
    """
    num_points = check_int(
        "linear_interpolation(num_points=...)", num_points, minimum=2, fix="A line has two ends."
    )
    check_non_negative(
        "linear_interpolation(margin=...)",
        margin,
        fix="It is how far the line runs past the two points (0: from start to end only).",
    )
    check_real_inputs("linear_interpolation", start, "point `start`")
    tree_check_like("linear_interpolation(end)", end, start, "start")
    dtype = jnp.result_type(*jax.tree.leaves(start))
    t = jnp.linspace(-margin, 1.0 + margin, num_points, dtype=dtype)
    return loss_slices(fun, start, *args, directions=tree_sub(end, start), offsets=t)
