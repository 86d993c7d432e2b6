r"""Per-block curvature: trace and top eigenvalues of every layer's diagonal block.

``block_curvature`` answers PyHessian #9/#10 and hessian-eigenthings #19 (per-layer trace
and eigenvalues) in one call. For each block :math:`b` of parameters (a layer, or any group
of leaves) it reports the trace and the top eigenvalues of the diagonal block
:math:`H_{bb}` of the curvature matrix (Hessian, Gauss-Newton or Fisher: whatever the
operator factory builds).

**Traces share their probes.** One set of Rademacher probes :math:`z` over the whole tree
and one full product :math:`H z` per probe give every block's trace at once:

.. math:: \mathbb{E}\, z_b^\top (H z)_b = \sum_c \mathbb{E}\, z_b^\top H_{bc} z_c
          = \mathrm{tr}(H_{bb}),

since :math:`\mathbb{E}\, z_c z_b^\top = 0` for :math:`c \ne b`. The estimator is unbiased;
its variance is that of Hutchinson on :math:`H_{bb}` plus :math:`\sum_{c \ne b} \|H_{bc}
\|_F^2` from the coupling to the other blocks. For :math:`B` blocks it costs :math:`1/B`
of the products of probing each block apart, so for the same work it has :math:`B` times
the probes, which wins unless the coupling outweighs :math:`(B - 1)` times the block's own
Frobenius norm -- rare between the layers of a network. The reported ``stderr`` is the
sample standard error of the per-probe values, so it includes the coupling's variance.

**Eigenvalues cannot share**: the top eigenvalues of :math:`H_{bb}` come from Lanczos on
the block operator (``wrt=`` the block), one block at a time, so only one block's operator
is in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import check_callable, check_int, check_key
from jaxcurv._compile import compiled_call
from jaxcurv._lanczos import _probe_keys, _random_like
from jaxcurv.eigensolvers import EigenResult, eigenvalues
from jaxcurv.operators import CurvatureOperator
from jaxcurv.selection import selection
from jaxcurv.trace_estimators import TraceEstimate
from jaxcurv.tree import tree_size

PyTree = Any

__all__ = ["BlockCurvature", "block_curvature", "default_blocks"]


class BlockCurvature(NamedTuple):
    """The curvature of one block of parameters.

    Attributes:
      trace: ``TraceEstimate`` of :math:`\\mathrm{tr}(H_{bb})` (shared probes: module
        docstring); ``num_matvecs`` counts the full products, shared by all blocks.
      eigenvalues: ``EigenResult`` of the top ``k`` eigenvalues of :math:`H_{bb}` (ascending,
        with residual norms and ``converged``); ``None`` when ``k=0``.
      size: the number of parameters in the block (static int).
    """

    trace: TraceEstimate
    eigenvalues: EigenResult | None
    size: int


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def default_blocks(params: PyTree) -> dict[str, Callable]:
    """One block per top-level entry of ``params``; a Flax ``{"params": {...}}`` tree is
    opened one level, so its blocks are the layers (``"Dense_0"``). Works for dicts,
    tuples, lists and Equinox modules (their fields); entries without arrays are skipped.

    Returns:
      ``{name: wrt}`` with each ``wrt`` a ``(key_path, leaf) -> bool`` selector.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.blocks import default_blocks
      >>> sorted(default_blocks({"params": {"Dense_0": {"kernel": jnp.ones(2)},
      ...                                   "Dense_1": {"kernel": jnp.ones(1)}}}))
      ['Dense_0', 'Dense_1']
    """
    prefix: tuple = ()
    node = params
    if isinstance(node, dict) and list(node) == ["params"]:
        prefix, node = (jax.tree_util.DictKey("params"),), node["params"]
    children, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda t: t is not node)
    blocks = {}
    for path, child in children:
        if not jax.tree.leaves(child):
            continue
        full = prefix + tuple(path)
        blocks[_key_name(path[-1])] = lambda p, leaf, full=full: tuple(p[: len(full)]) == full
    return blocks


def _block_samples(op, flags, key, num_samples):
    """``(num_samples, B)``: :math:`z_b^\\top (H z)_b` for every probe and block."""
    fl = jnp.asarray(np.asarray(flags, dtype=np.float64))

    def one(kk):
        z = _random_like(kk, op.x, "rademacher")[0]
        hz = op.mv(z)
        per_leaf = jnp.stack(
            [
                jnp.vdot(a, b).astype(fl.dtype)
                for a, b in zip(jax.tree.leaves(z), jax.tree.leaves(hz))
            ]
        )
        return fl @ per_leaf

    return jax.lax.map(one, _probe_keys(key, num_samples))


def _trace(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = samples.shape[0]
    if s < 2:
        return samples.mean(), jnp.asarray(jnp.inf, samples.dtype)
    return samples.mean(), samples.std(ddof=1) / np.sqrt(s)


def block_curvature(
    build: Callable[[Any], CurvatureOperator],
    params: PyTree,
    blocks: dict[str, Any] | None = None,
    *,
    key: jax.Array,
    k: int = 5,
    num_samples: int = 100,
    eigenvalues_options: dict | None = None,
) -> dict[str, BlockCurvature]:
    r"""Trace and top-``k`` eigenvalues of the curvature's diagonal block for every block.

    Args:
      build: ``wrt -> operator``: builds the curvature operator restricted to ``wrt``
        (``None`` for the whole tree), e.g. ``lambda wrt: jaxcurv.ggn_operator(model_fn,
        loss_fn, params, wrt=wrt, micro_batch=256, **batch)``.
      params: the parameters the operators act on (names the blocks).
      blocks: ``{name: wrt}`` (each ``wrt`` as the constructors take it: a bool prefix
        tree or a ``(key_path, leaf) -> bool`` callable; blocks may overlap); default
        :func:`default_blocks` (each top-level entry, or each layer of a Flax tree).
      key: PRNG key; split into the trace probes and the eigen-solver's start vectors.
      k: top eigenvalues per block (fewer for a smaller block); ``0`` skips them.
      num_samples: Rademacher probes, each one product with the whole operator, shared by
        all blocks.
      eigenvalues_options: further keywords for :func:`jaxcurv.eigenvalues` (``tol``,
        ``dense_threshold``, ...).

    Returns:
      ``{name: BlockCurvature(trace, eigenvalues, size)}`` in the order of ``blocks``.

    Raises:
      TypeError: ``build`` not callable or not returning an operator; a bad ``key``,
        ``k`` or ``num_samples``. ValueError: a block that selects nothing or is no prefix.

    Example (a separable quadratic, blocks ``a`` and ``b``: traces 3 and 30 exactly, since
    a diagonal matrix's Hutchinson samples do not vary):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> params = {"a": jnp.ones(2), "b": jnp.ones(3)}
      >>> f = lambda p: jnp.sum(jnp.array([1.0, 2.0]) * p["a"] ** 2) / 2 + 5 * jnp.sum(p["b"] ** 2)
      >>> out = jaxcurv.block_curvature(lambda wrt: jaxcurv.hessian_operator(f, params, wrt=wrt),
      ...                               params, key=jax.random.key(0), k=1, num_samples=4)
      >>> {name: float(r.trace.estimate) for name, r in out.items()}
      {'a': 3.0, 'b': 30.0}
      >>> out["b"].eigenvalues.eigenvalues.tolist(), out["b"].size
      ([10.0], 3)
    """
    check_callable("block_curvature(build)", build)
    key = check_key("block_curvature", key)
    k = check_int("block_curvature(k=...)", k, minimum=0)
    num_samples = check_int("block_curvature(num_samples=...)", num_samples, minimum=1)
    blocks = default_blocks(params) if blocks is None else dict(blocks)
    selections = {
        name: selection(f"block_curvature(blocks[{name!r}])", wrt, params)
        for name, wrt in blocks.items()
    }
    full = build(None)
    if not isinstance(full, CurvatureOperator):
        raise TypeError(
            "`block_curvature(build)` must return a jaxcurv operator for `wrt`, e.g. "
            f"`lambda wrt: jaxcurv.ggn_operator(..., wrt=wrt)`, got {type(full).__name__}."
        )
    flags = [s.flags for s in selections.values()]
    k_trace, k_eig = jax.random.split(key)
    samples = compiled_call(
        lambda op, kk: _block_samples(op, flags, kk, num_samples), full, k_trace
    )
    del full
    out = {}
    leaf_sizes = [tree_size(leaf) for leaf in jax.tree.leaves(params)]
    for j, (name, sel) in enumerate(selections.items()):
        est, err = _trace(samples[:, j])
        size = sum(n for n, f in zip(leaf_sizes, sel.flags) if f)
        eig = None
        if k:
            eig = eigenvalues(
                build(blocks[name]),
                min(k, size),
                key=jax.random.fold_in(k_eig, j),
                **(eigenvalues_options or {}),
            )
        out[name] = BlockCurvature(TraceEstimate(est, err, jnp.asarray(num_samples)), eig, size)
    return out
