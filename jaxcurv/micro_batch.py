r"""Curvature of a mean over many examples in the memory of a few: ``micro_batch=``.

A loss that is a mean over :math:`n` examples, :math:`L = \frac1n \sum_i \ell_i`, has
curvature :math:`\nabla^2 L = \sum_c \frac{n_c}{n} \nabla^2 L_c` for any split of the
examples into micro-batches :math:`c` of sizes :math:`n_c` with means :math:`L_c`; the
same holds for the Gauss-Newton and Fisher matrices. A micro-batched operator applies that
sum with a ``lax.scan`` over the micro-batches: each product recomputes one micro-batch's
forward pass and product, adds it with its weight :math:`n_c/n` and frees it, so its peak
memory is that of one micro-batch, whatever :math:`n`. Each micro-batch is read in place
from the data as given (a ``lax.dynamic_slice`` in the scan's body): no second copy of the
data is made, under ``jit`` or outside it. (The unbatched operators instead
keep the whole batch's linearization, which costs memory proportional to :math:`n` and
saves the forward pass on each product.)

The examples axis is axis 0 of every data array with ``ndim >= 1``; all of them must hold
the same number :math:`n` of examples. 0-d arrays and Python values (flags, sizes) are
shared by every micro-batch. When ``micro_batch`` does not divide :math:`n` the last,
smaller micro-batch is computed apart with its own weight :math:`r/n`: the result is still
the operator on the whole batch (each micro-batch's loss must be a *mean* over its
examples, as the whole batch's is).

The answer equals the whole-batch operator up to the reordering of the sum: at most about
:math:`(n + n_{\text{chunks}})\, \epsilon \sum_i |t_i|` for per-example terms :math:`t_i`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import check_int, common_leading_size
from jaxcurv._compile import compiled_call
from jaxcurv.operators import CurvatureOperator
from jaxcurv.tree import tree_axpy

PyTree = Any

__all__ = ["MicroBatchOperator", "MicroBatches", "micro_batch_operator", "micro_batches"]

_BATCHED, _SHARED, _STATIC = "b", "s", "c"


def _kind(leaf: Any) -> str:
    # As the compile policy: arrays are data, Python values are constants of the computation.
    if isinstance(leaf, jax.Array | np.ndarray | np.generic):
        return _BATCHED if np.ndim(leaf) >= 1 else _SHARED
    return _STATIC


@jax.tree_util.register_pytree_node_class
class MicroBatches:
    """Data read in micro-batches along axis 0: full ones in a scan, then the rest.

    The arrays are kept as given: each micro-batch is a ``lax.dynamic_slice`` of them
    inside the scan's body, so no second copy of the data is ever made (cutting them into
    a stacked ``(num_full, micro_batch, ...)`` array up front would copy all of it).

    Attributes:
      batched: the data arrays with an examples axis, whole.
      num_examples: ``n``, examples in all micro-batches together (static).
      micro_batch: examples per full micro-batch (static).
    """

    def __init__(self, batched, shared, aux):
        self.batched, self.shared = batched, shared
        self._aux = aux
        self.treedef, self.kinds, self.statics, self.num_examples, self.micro_batch = aux

    def tree_flatten(self):
        return (self.batched, self.shared), self._aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, aux)

    @property
    def num_full(self) -> int:
        """Micro-batches of exactly ``micro_batch`` examples (static)."""
        return self.num_examples // self.micro_batch

    @property
    def num_rest(self) -> int:
        """Examples in the smaller last micro-batch, ``0`` when there is none (static)."""
        return self.num_examples - self.num_full * self.micro_batch

    def _assemble(self, batched: list) -> PyTree:
        b, s, c = iter(batched), iter(self.shared), iter(self.statics)
        pick = {_BATCHED: b, _SHARED: s, _STATIC: c}
        return jax.tree.unflatten(self.treedef, [next(pick[k]) for k in self.kinds])

    def _full(self, index: jax.Array) -> PyTree:
        """The data of full micro-batch ``index`` (traced), read in place."""
        m = self.micro_batch
        return self._assemble(
            [jax.lax.dynamic_slice_in_dim(a, index * m, m, axis=0) for a in self.batched]
        )

    def _rest(self) -> PyTree:
        return self._assemble([a[self.num_full * self.micro_batch :] for a in self.batched])

    def weighted_sum(self, fn) -> PyTree:
        """:math:`\\sum_c (n_c / n) f(\\text{data}_c)`, one micro-batch live at a time.

        ``fn(data) -> pytree of floats`` (:math:`f`): data shaped like the original, fewer
        rows. The full micro-batches are added in order, then the rest (weight ``r / n``).
        """
        n, total = self.num_examples, None
        if self.num_full:
            weight = self.micro_batch / n

            def body(acc, index):
                return tree_axpy(weight, fn(self._full(index)), acc), None

            shape = jax.eval_shape(lambda: fn(self._full(jnp.zeros((), jnp.int32))))
            init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
            total, _ = jax.lax.scan(body, init, jnp.arange(self.num_full))
        if self.num_rest:
            last = fn(self._rest())
            weight = self.num_rest / n
            total = (
                jax.tree.map(lambda a: jnp.asarray(weight, a.dtype) * a, last)
                if (total is None)
                else tree_axpy(weight, last, total)
            )
        return total

    def concatenate(self, fn) -> PyTree:
        """``fn(data_c)`` for every micro-batch in order, concatenated along axis 0.

        ``fn`` returns arrays with one row per example of its micro-batch.
        """
        parts = []
        if self.num_full:
            stacked = jax.lax.map(lambda i: fn(self._full(i)), jnp.arange(self.num_full))
            parts.append(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), stacked))
        if self.num_rest:
            parts.append(fn(self._rest()))
        return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def micro_batches(name: str, data: PyTree, micro_batch: Any) -> MicroBatches:
    """Cut ``data`` into micro-batches of ``micro_batch`` examples along axis 0.

    Args:
      name: the calling constructor, for messages.
      data: the data arguments (any pytree); arrays with ``ndim >= 1`` are split.
      micro_batch: a positive int; larger than ``n`` means one micro-batch of ``n``.

    Raises:
      TypeError: ``micro_batch`` not an int.
      ValueError: ``micro_batch < 1``; no data array with an examples axis; data arrays
        with different leading sizes (both named).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.micro_batch import micro_batches
      >>> b = micro_batches("f", {"x": jnp.arange(5.0), "scale": 2.0}, 2)
      >>> b.num_full, b.num_rest
      (2, 1)
      >>> float(b.weighted_sum(lambda d: d["scale"] * jnp.mean(d["x"])))  # 2 * mean(0..4)
      4.0
    """
    micro_batch = check_int(
        f"{name}(micro_batch=...)",
        micro_batch,
        minimum=1,
        fix="It is the number of examples per micro-batch, e.g. micro_batch=256.",
    )
    leaves, treedef = jax.tree.flatten(data)
    kinds = tuple(_kind(a) for a in leaves)

    def mismatch(first, size, where, m):
        return (
            f"`{name}(micro_batch=...)` splits every data array with ndim >= 1 along axis 0, "
            f"so all must hold the same number of examples, but data{where} has leading "
            f"size {m} while data{first} has {size}. Pass constants that are not per-example "
            "by closure, or as 0-d arrays."
        )

    n = common_leading_size([a for a, k in zip(leaves, kinds) if k == _BATCHED], mismatch)
    if n is None or n == 0:
        raise ValueError(
            f"`{name}(micro_batch={micro_batch})` needs data with a leading examples axis, "
            f"but no data array has one (got {jax.tree.structure(data)}). Pass the batch as "
            "the data arguments (arrays of shape (num_examples, ...)), or drop micro_batch."
        )
    # As given (no copy of a JAX array): micro-batches are sliced inside the scan.
    batched = [jnp.asarray(a) for a, k in zip(leaves, kinds) if k == _BATCHED]
    shared = [jnp.asarray(a) for a, k in zip(leaves, kinds) if k == _SHARED]
    statics = tuple(a for a, k in zip(leaves, kinds) if k == _STATIC)
    aux = (treedef, kinds, statics, n, micro_batch)
    return MicroBatches(batched, shared, aux)


@jax.tree_util.register_pytree_node_class
class MicroBatchOperator(CurvatureOperator):
    """A curvature operator summed over micro-batches, one micro-batch in memory at a time.

    ``spec`` (static, hashable, equal for the same user functions) gives the per-micro-batch
    ``product(x, v, fixed, data)`` and ``value_and_grad(x, fixed, data)``; ``fixed`` holds
    what ``wrt=`` leaves out. Products go through the compile policy (never a bare
    ``jax.jit`` keyed on the user's functions), so a function that reads a changed global
    is traced again.

    Attributes:
      x, value, grad: as for every ``CurvatureOperator`` (mean over all examples).
      batches: the :class:`MicroBatches`.
    """

    _compile_by_jaxpr = True

    def __init__(self, spec, x, value, grad, fixed, batches):
        self.spec, self.x, self.value, self.grad = spec, x, value, grad
        self.fixed, self.batches = fixed, batches

    def tree_flatten(self):
        return (self.x, self.value, self.grad, self.fixed, self.batches), self.spec

    @classmethod
    def tree_unflatten(cls, spec, children):
        return cls(spec, *children)

    def _mv(self, v):
        return self.batches.weighted_sum(lambda d: self.spec.product(self.x, v, self.fixed, d))

    @property
    def outputs(self):
        # Keeping every example's outputs would cost memory in proportion to the number of
        # examples, which is what micro-batching avoids; say so rather than a bare
        # AttributeError (still an AttributeError, so `hasattr` stays False).
        raise AttributeError(
            "A micro-batched operator keeps no model outputs: they would take memory in "
            "proportion to the number of examples. Compute them yourself, one micro-batch "
            "at a time (e.g. `jax.lax.map(lambda x: model_fn(params, x), batches)`), or "
            "build the operator without `micro_batch=` to get `op.outputs`."
        )

    def __repr__(self) -> str:
        b = self.batches
        return (
            f"MicroBatchOperator(size={self.size}, dtype={self.dtype}, "
            f"num_examples={b.num_examples}, micro_batch={b.micro_batch}, "
            f"num_micro_batches={math.ceil(b.num_examples / b.micro_batch)})"
        )


def micro_batch_operator(
    name: str, spec: Any, x: PyTree, fixed: PyTree, data: PyTree, micro_batch: Any
) -> MicroBatchOperator:
    """Build the micro-batched operator of ``spec`` at ``x``: value and gradient computed
    once (a scan over the micro-batches), products on demand.

    Args:
      name: the public constructor, for messages.
      spec: see :class:`MicroBatchOperator`.
      x: the point (the selected sub-tree under ``wrt=``).
      fixed: the leaves held fixed (``None`` without ``wrt=``).
      data: the data arguments, split by :func:`micro_batches`.
      micro_batch: examples per micro-batch.
    """
    batches = micro_batches(name, data, micro_batch)
    value, grad = compiled_call(
        lambda x, fixed, b: b.weighted_sum(lambda d: spec.value_and_grad(x, fixed, d)),
        x,
        fixed,
        batches,
    )
    return MicroBatchOperator(spec, x, value, grad, fixed, batches)
