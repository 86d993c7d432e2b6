r"""Curvature over a dataset that does not fit device memory: ``streaming_operator``.

``micro_batch=`` bounds the memory of the *products*, but the data still live on the
device. When they do not fit, each product must stream the batches from the host:
:math:`A v = \sum_b \frac{n_b}{N} A_b v`, with :math:`A_b` the curvature (Hessian, GGN or
Fisher) of the mean loss on batch :math:`b` of :math:`n_b` examples and :math:`N = \sum_b
n_b`. That is the mean loss's curvature over the whole dataset (PyHessian's
``dataloader=`` mode, curvlinops' operators over a data loader).

:func:`streaming_operator` builds that operator from a function that makes the operator of
one batch and a source of batches. Its product is a host loop (one batch moved to the
device, its operator built and applied, the result accumulated, the batch freed), wrapped
in ``jax.pure_callback``, so the operator is an ordinary ``CurvatureOperator``:
``eigenvalues``, ``hutchinson_trace``, ``spectral_density`` and ``cg`` run on it unchanged
(their loops call back to the host once per product), and so do ``to_dense()`` and
``diagonal()`` for small models. Each batch's operator is built through the compile policy,
so batches of one shape compile once. A ragged last batch (another shape) compiles once
more.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import check_callable, common_leading_size
from jaxcurv.operators import CurvatureOperator
from jaxcurv.tree import tree_axpy, tree_check_like, tree_scale

PyTree = Any

__all__ = ["StreamingOperator", "streaming_operator"]

_serial = itertools.count()


def _num_examples(batch: PyTree) -> int | None:
    def mismatch(first, size, where, m):
        return (
            f"`streaming_operator`: a batch must hold the same number of examples in every "
            f"array (axis 0), but batch{where} has {m} while batch{first} has {size}."
        )

    return common_leading_size(batch, mismatch)


class _Stream:
    """The host side: builds each batch's operator and sums the weighted products.

    Its ``repr`` is unique per stream: a ``pure_callback``'s jaxpr shows its callback's
    ``repr`` (addresses masked), and the compile policy keys compiled code on that text.
    """

    def __init__(self, build: Callable, batches: Any):
        self.build, self.batches, self.serial = build, batches, next(_serial)

    def __repr__(self) -> str:
        return f"jaxcurv.streaming._Stream(serial={self.serial})"

    def __iter__(self):
        return iter(self.batches() if callable(self.batches) else self.batches)

    def mean(self, per_batch: Callable[[CurvatureOperator], PyTree]) -> PyTree:
        """:math:`\\sum_b n_b f(A_b) / \\sum_b n_b` over one pass through the batches."""
        total, count = None, 0
        for batch in self:
            n = _num_examples(batch) or 1
            out = per_batch(self.build(batch))
            total = tree_scale(out, n) if total is None else tree_axpy(n, out, total)
            count += n
        if total is None:
            raise ValueError("`streaming_operator(batches=...)` yielded no batch.")
        return tree_scale(total, 1.0 / count)

    def product(self, v: PyTree) -> PyTree:
        # Called by `pure_callback` with host (numpy) arrays; returns host arrays.
        return jax.tree.map(np.asarray, self.mean(lambda op: op(jax.tree.map(jnp.asarray, v))))


@jax.tree_util.register_pytree_node_class
class StreamingOperator(CurvatureOperator):
    """The curvature of a dataset streamed batch by batch from the host.

    Attributes:
      x: the point (the first batch's operator's ``x``).
      value, grad: the mean loss and its gradient over the whole dataset (one pass).
    """

    def __init__(self, stream: _Stream, x: PyTree, value: jax.Array, grad: PyTree):
        self._stream, self.x, self.value, self.grad = stream, x, value, grad

    def tree_flatten(self):
        return (self.x, self.value, self.grad), self._stream

    @classmethod
    def tree_unflatten(cls, stream, children):
        return cls(stream, *children)

    def _mv(self, v):
        shapes = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), self.x
        )
        # "sequential": under vmap (`to_dense` builds columns in chunks) one pass per column.
        return jax.pure_callback(self._stream.product, shapes, v, vmap_method="sequential")

    def __repr__(self) -> str:
        return f"StreamingOperator(size={self.size}, dtype={self.dtype})"


def streaming_operator(
    build: Callable[[Any], CurvatureOperator], batches: Iterable | Callable[[], Iterable]
) -> StreamingOperator:
    """The curvature of the mean loss over all ``batches``, streamed from the host.

    Args:
      build: ``batch -> operator`` for one batch, e.g. ``lambda b: jaxcurv.ggn_operator(
        model_fn, loss_fn, params, **b)`` or ``lambda b: jaxcurv.hessian_operator(loss,
        params, *b, micro_batch=256)``; every batch's operator must act on the same space.
        Its loss must be a mean over the batch's examples.
      batches: the dataset, passed through once per product: a re-iterable collection
        (a list of host batches, a ``tf.data``/``grain`` dataset) or a function returning a
        fresh iterator (``lambda: loader.epoch()``). Each batch is weighted by its number of
        examples (axis 0 of its arrays; 1 if it has none). A one-shot iterator is refused.

    Returns:
      A :class:`StreamingOperator`. Its ``value`` and ``grad`` cost one pass at
      construction; each product costs one pass.

    Raises:
      TypeError: ``build`` not callable, ``batches`` a one-shot iterator or not iterable,
        ``build`` returning no ``CurvatureOperator``.
      ValueError: no batch; batches whose operators act on different spaces.

    Example (two batches of a least-squares loss: the Hessian of the mean over all four
    examples is :math:`2 X^\\top X / 4`):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> X = jnp.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [1.0, -1.0]])
      >>> loss = lambda w, x: jnp.mean((x @ w) ** 2)
      >>> op = jaxcurv.streaming_operator(lambda x: jaxcurv.hessian_operator(loss, jnp.ones(2), x),
      ...                                 [X[:2], X[2:]])
      >>> op.to_dense()
      Array([[1.5, 0. ],
             [0. , 3. ]], dtype=float32)
    """
    check_callable("streaming_operator(build)", build)
    one_shot = not hasattr(batches, "__iter__") or iter(batches) is batches
    if not callable(batches) and one_shot:
        raise TypeError(
            "`streaming_operator(batches=...)` is passed through once per product, so it "
            f"must be re-iterable (a list, a dataset) or a function returning a fresh "
            f"iterator, got {type(batches).__name__}. Wrap a generator: "
            "`batches=lambda: make_batches()`."
        )
    stream = _Stream(build, batches)
    first = None

    def value_and_grad(op):
        nonlocal first
        if not isinstance(op, CurvatureOperator):
            raise TypeError(
                "`streaming_operator(build)` must return a jaxcurv operator "
                f"(hessian_operator, ggn_operator, fisher_operator), got {type(op).__name__}."
            )
        if first is None:
            first = op.x
        tree_check_like("the operator's x for each batch", op.x, first, "the first batch's x")
        return op.value, op.grad

    value, grad = stream.mean(value_and_grad)
    return StreamingOperator(stream, first, value, grad)
