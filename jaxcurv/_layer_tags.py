"""Find the dense layers of a model in its jaxpr, and run it with those layers tapped.

K-FAC (:mod:`jaxcurv.kfac`) needs, for each dense layer ``s = a W (+ b)``, the layer's
input activations ``a`` and the gradients of the loss in its output ``s``. Instead of
asking the user to tag layers (as kfac-jax's ``register_dense`` does), the model is traced
to a jaxpr once and its ``dot_general`` equations are read: a *dense site* is one whose
operand is a 2-D parameter leaf itself (no batch dimensions, one contracted axis), the
other operand no parameter. A 1-D parameter leaf added to the product along its output
axis (after reshapes / broadcasts, as ``x @ w + b`` traces) is that layer's bias. A leaf
counts only if that use is its only one: a weight shared by two products, or also used
elsewhere (weight decay in the model, tied embeddings), is no dense layer here, and gets
the caller's fallback. Calls of ``jax.jit``-ed functions are followed inside; parameters
that enter any other higher-order primitive (``scan``, ``while``, ``custom_jvp``) are
uses, so layers inside a ``scan`` are not found.

:func:`tapped_call` then evaluates the same jaxpr with an interpreter that records each
valid site's input ``a`` and adds a perturbation to its output, so the gradient in the
perturbations (at zero) is the gradient in the layer's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.extend import core as jex_core

__all__ = ["DenseSite", "find_dense_sites", "tapped_call"]

# Primitives that only move a 1-D leaf's entries along one axis (a bias being broadcast).
_SHAPE_OPS = ("reshape", "broadcast_in_dim", "squeeze", "convert_element_type", "copy")
# Calls of a sub-jaxpr that the interpreter follows inside.
_CALLS = ("jit", "pjit", "closed_call", "core_call")


class DenseSite(NamedTuple):
    """One ``dot_general`` of a parameter matrix ``W`` with activations ``x``."""

    weight: int  # index of W among the parameter leaves
    w_side: int  # W is operand 0 (lhs) or 1 (rhs) of the dot_general
    w_contract: int  # W's contracted axis: 0 when W is (d_in, d_out)
    x_contract: int  # the activations' contracted axis
    out_axis: int  # axis of the product holding d_out
    bias: int | None  # index of the bias leaf added to the product, if any
    index: int  # position among all dot_general sites the walk meets (tapped_call's key)
    out_shape: tuple[int, ...]  # the product's shape
    out_dtype: np.dtype  # and dtype


class _Walk:
    """What one pass over the jaxpr finds or does; ``evaluate=False`` reads shapes only."""

    def __init__(self, num_params, evaluate, active=(), eps=None):
        self.num_params, self.evaluate = num_params, evaluate
        self.active, self.eps = tuple(active), eps
        self.sites: list[DenseSite] = []  # in order of appearance
        self.uses = [0] * num_params
        self.inputs: dict[int, Any] = {}  # site -> its activations x (evaluate only)

    def use(self, provs):
        for p in provs:
            if p is not None and p[0] == "param":
                self.uses[p[1]] += 1


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def _propagate(eqn, prov, out_shape) -> Any:
    """Provenance of a shape op's output: where a 1-D leaf lies now (or None)."""
    if prov is None or prov[0] != "param":
        return None
    _, leaf, axis = prov
    name = eqn.primitive.name
    if name in ("convert_element_type", "copy"):
        return prov
    if axis is None:
        return None
    if name == "broadcast_in_dim":
        return ("param", leaf, eqn.params["broadcast_dimensions"][axis])
    if name == "squeeze":
        return ("param", leaf, axis - sum(d < axis for d in eqn.params["dimensions"]))
    big = [i for i, s in enumerate(out_shape) if s != 1]
    return ("param", leaf, big[0]) if len(big) == 1 else None


def _dense_site(eqn, vals, provs, out) -> DenseSite | None:
    """The site a ``dot_general`` is, if one operand is a 2-D parameter leaf itself."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb or len(lc) != 1:
        return None
    for w_side in (1, 0):
        p, other = provs[w_side], provs[1 - w_side]
        if p is None or p[0] != "param" or len(_shape(vals[w_side])) != 2:
            continue
        if other is not None and other[0] == "param":
            return None
        w_contract, x_contract = (rc[0], lc[0]) if w_side == 1 else (lc[0], rc[0])
        out_ndim = len(_shape(vals[1 - w_side]))  # x's free axes plus W's one
        out_axis = out_ndim - 1 if w_side else 0
        shape, dtype = _shape(out), np.dtype(out.dtype)
        return DenseSite(p[1], w_side, w_contract, x_contract, out_axis, None, -1, shape, dtype)
    return None


def _bias(walk, eqn, vals, provs) -> None:
    """Mark a 1-D leaf added along a site's output axis as that site's bias."""
    for i in (0, 1):
        site, b = provs[i], provs[1 - i]
        if site is None or site[0] != "site" or b is None or b[0] != "param":
            continue
        s = walk.sites[site[1]]
        d_out = _shape(vals[i])[s.out_axis]
        if b[2] == s.out_axis and _shape(vals[1 - i])[s.out_axis] == d_out and s.bias is None:
            walk.sites[site[1]] = s._replace(bias=b[1])


def _walk(jaxpr, consts, args, arg_provs, walk: _Walk):
    env, prov = {}, {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    def read_prov(v):
        return None if isinstance(v, jex_core.Literal) else prov.get(v)

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x, p in zip(jaxpr.invars, args, arg_provs, strict=True):
        env[v], prov[v] = x, p
    for eqn in jaxpr.eqns:
        vals = [read(v) for v in eqn.invars]
        provs = [read_prov(v) for v in eqn.invars]
        name = eqn.primitive.name
        sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if name in _CALLS and sub is not None:
            closed = sub if isinstance(sub, jex_core.ClosedJaxpr) else None
            inner = closed.jaxpr if closed else sub
            outs, out_provs = _walk(inner, closed.consts if closed else (), vals, provs, walk)
        else:
            outs, out_provs = _apply(walk, eqn, vals, provs)
        for v, x, p in zip(eqn.outvars, outs, out_provs, strict=True):
            if not isinstance(v, jex_core.DropVar):
                env[v], prov[v] = x, p
    return [read(v) for v in jaxpr.outvars], [read_prov(v) for v in jaxpr.outvars]


def _bind(walk, eqn, vals):
    if not walk.evaluate:
        return [v.aval for v in eqn.outvars]
    params = eqn.primitive.get_bind_params(eqn.params)
    # Older JAX returns (subfuns, params); newer returns the params alone.
    subfuns, params = params if isinstance(params, tuple) else ((), params)
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *vals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _apply(walk, eqn, vals, provs):
    """One equation: bind it (or read its shapes), tapping dense sites; provenance out."""
    name = eqn.primitive.name
    outs = _bind(walk, eqn, vals)
    if name in _SHAPE_OPS and len(vals) == 1:
        return outs, [_propagate(eqn, provs[0], _shape(outs[0]))]
    walk.use(provs)
    if name == "add":
        _bias(walk, eqn, vals, provs)
    if name != "dot_general":
        return outs, [None] * len(outs)
    site = _dense_site(eqn, vals, provs, outs[0])
    if site is None:
        return outs, [None]
    index = len(walk.sites)
    walk.sites.append(site._replace(index=index))
    if walk.evaluate and index in walk.active:
        walk.inputs[index] = vals[1 - site.w_side]
        outs = [outs[0] + walk.eps[walk.active.index(index)].astype(outs[0].dtype)]
    return outs, [("site", index)]


def _arg_provs(closed, num_params):
    provs = []
    for i, v in enumerate(closed.jaxpr.invars):
        ndim = len(v.aval.shape)
        provs.append(("param", i, 0 if ndim == 1 else None) if i < num_params else None)
    return provs


def find_dense_sites(closed: Any, num_params: int) -> tuple[DenseSite, ...]:
    """Every dense site of ``closed`` (first ``num_params`` inputs: the parameter leaves),
    in order of appearance; a site whose weight (or bias) has another use is dropped
    (``bias=None`` for a bias with another use), and so are both sites of a shared weight.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcurv._layer_tags import find_dense_sites
      >>> f = lambda w, b, x: jnp.tanh(x @ w + b)
      >>> closed = jax.make_jaxpr(f)(jnp.ones((3, 2)), jnp.ones(2), jnp.ones((5, 3)))
      >>> [(s.weight, s.bias, s.out_shape) for s in find_dense_sites(closed, 2)]
      [(0, 1, (5, 2))]
    """
    walk = _Walk(num_params, evaluate=False)
    avals = [v.aval for v in closed.jaxpr.invars]
    _walk(closed.jaxpr, closed.consts, avals, _arg_provs(closed, num_params), walk)
    found = []
    for site in walk.sites:
        if walk.uses[site.weight] != 1:
            continue
        if site.bias is not None and walk.uses[site.bias] != 1:
            site = site._replace(bias=None)
        found.append(site)
    return tuple(found)


def tapped_call(
    closed: Any, num_params: int, args: Sequence[Any], active: Sequence[int], eps: Sequence[Any]
) -> tuple[list[Any], list[Any]]:
    """``(outputs, inputs)``: ``closed(*args)`` with ``eps[j]`` added to the output of the
    site whose ``DenseSite.index`` is ``active[j]``, and ``inputs[j]`` that site's
    activations (its non-weight operand)."""
    walk = _Walk(num_params, evaluate=True, active=active, eps=eps)
    outs, _ = _walk(closed.jaxpr, closed.consts, list(args), _arg_provs(closed, num_params), walk)
    return outs, [walk.inputs[i] for i in active]
