r"""A Kronecker-factored (K-FAC) preconditioner for CG on the damped Gauss-Newton system.

For a dense layer :math:`s = W^\top a\,(+\,b)` with ``W`` of shape ``(d_in, d_out)``, the
Gauss-Newton block of ``vec(W)`` (row-major) is :math:`\frac1n\sum_i a_i a_i^\top \otimes
J_i^\top H_i J_i`, with :math:`J_i` the Jacobian of example :math:`i`'s outputs in
:math:`s_i` and :math:`H_i` the Hessian of its loss in its outputs. K-FAC (Martens &
Grosse 2015) replaces the mean of Kronecker products by the Kronecker product of means,

.. math:: B_W \approx A \otimes G, \qquad A = \tfrac1R \textstyle\sum_r a_r a_r^\top, \quad
   G = \tfrac1n \textstyle\sum_i J_i^\top H_i J_i,

(``a`` with a 1 appended when the layer has a bias, which is folded into ``W``; ``r`` runs
over the rows of the layer's input, examples times positions), and preconditions CG with

.. math:: M V = (A + \pi\sqrt\lambda\, I)^{-1}\, V\, (G + \tfrac{\sqrt\lambda}\pi I)^{-1},
   \qquad \pi = \sqrt{\frac{\mathrm{tr}(A)/\dim A}{\mathrm{tr}(G)/\dim G}}

(``damping_mode="pi"``, Tikhonov "π-damping", Martens & Grosse §6.3), or with the exact
inverse :math:`(A \otimes G + \lambda I)^{-1}` from the factors' eigendecompositions
(``damping_mode="eigen"``). Dense layers are found without tagging, in the model's jaxpr
(``jaxcurv._layer_tags``); every other leaf gets the diagonal :math:`1 / (\frac1n\sum_i
g_i^2 + \lambda)` of the damped empirical Fisher, from per-example gradients
(:func:`jaxcurv.preconditioner.mean_squared_example_grads`).

The factor :math:`G` (``kind=``):

* ``"exact"`` (default): exactly :math:`\frac1n\sum_i J_i^\top H_i J_i` for any loss, as
  :math:`\sum_k (J^\top e_k)(J^\top H e_k)^\top` over the output coordinates :math:`e_k`
  of an example (:math:`\sum_k e_k (H e_k)^\top = H`): two backward passes through the
  network per output coordinate, no square root of :math:`H`. Deterministic; costs
  :math:`2 d_\text{out}` backward passes (fine for 10 classes, heavy for 784 pixels).
* ``"mc"``: Martens & Grosse's estimate: gradients of the loss at labels sampled from the
  model's predictive distribution (``likelihood`` ``"gaussian"`` for squared error,
  ``"bernoulli"`` for logistic cross-entropy, ``"categorical"`` for softmax
  cross-entropy), whose expected outer product is :math:`H_i`; ``num_samples`` backward
  passes; needs ``key``.
* ``"empirical"``: gradients of the per-example losses at the given labels (the empirical
  Fisher; one backward pass; not the Gauss-Newton matrix away from a fit; Kunstner et al.
  2019).

References:
  J. Martens and R. Grosse. "Optimizing neural networks with Kronecker-factored
  approximate curvature." ICML 2015 (§3: the factors, §5: sampled targets, §6.3: damping).
  R. Grosse and J. Martens. "A Kronecker-factored approximate Fisher matrix for
  convolution layers." ICML 2016.
  R. Eschenhagen et al. "Kronecker-factored approximate curvature for modern neural
  network architectures." NeurIPS 2023 (K-FAC-expand for layers applied at many positions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import (
    check_callable,
    check_choice,
    check_int,
    check_key,
    check_positive,
    check_real_inputs,
    describe_value,
)
from jaxcurv._compile import compiled_call, is_traced
from jaxcurv._kfac_factors import (
    LIKELIHOODS,
    detect_likelihood,
    g_factors,
    input_factor,
    misfit_error,
    misfit_tol,
)
from jaxcurv._layer_tags import find_dense_sites, tapped_call
from jaxcurv.model_and_loss import ModelAndLoss
from jaxcurv.preconditioner import mean_squared_example_grads

PyTree = Any

__all__ = ["KFACLayer", "KFACPreconditioner", "kfac_preconditioner"]

_KINDS = ("exact", "mc", "empirical")
_DAMPING_MODES = ("pi", "eigen")
_NAME = "kfac_preconditioner"


class KFACLayer(NamedTuple):
    """One dense layer K-FAC found: its leaves' key paths (``jax.tree_util.keystr``)."""

    weight: str  # the weight matrix, e.g. "[0]['w']"
    bias: str | None  # the bias folded into it, or None
    shape: tuple[int, int]  # the weight's shape


# ------------------------------------------------------------------- the preconditioner


class _Block(NamedTuple):
    """Static layout of one dense layer among the parameter leaves."""

    weight: int
    bias: int | None
    transposed: bool  # W is (d_out, d_in): its block is G (x) A


@jax.tree_util.register_pytree_node_class
class KFACPreconditioner:
    r"""``M: V -> M V``, SPD, for :func:`jaxcurv.cg` (``M=``); a pytree (passes ``jit``).

    Attributes:
      layers: the dense layers found, a tuple of :class:`KFACLayer`.
      input_factors: :math:`A` per layer, ``(d_in [+1], d_in [+1])``.
      output_factors: :math:`G` per layer, ``(d_out, d_out)``.
      diagonal: for every leaf outside a dense layer, the damped diagonal
        :math:`\frac1n\sum_i g_i^2 + \lambda` it is divided by; ``None`` for dense leaves.
    """

    def __init__(self, factors, eig, diagonal, damping, *, treedef, blocks, layers):
        self.input_factors, self.output_factors = factors
        self._eig = eig  # per layer (Q_A, Q_G, divisor (d_in', d_out)) or (A_inv, G_inv, None)
        self._diagonal, self.damping = diagonal, damping
        self._treedef, self._blocks, self.layers = treedef, blocks, layers

    def tree_flatten(self):
        children = (
            (self.input_factors, self.output_factors),
            self._eig,
            self._diagonal,
            self.damping,
        )
        return children, (self._treedef, self._blocks, self.layers)

    @classmethod
    def tree_unflatten(cls, aux, children):
        treedef, blocks, layers = aux
        return cls(*children, treedef=treedef, blocks=blocks, layers=layers)

    @property
    def diagonal(self) -> PyTree:
        return jax.tree.unflatten(self._treedef, list(self._diagonal))

    def __call__(self, v: PyTree) -> PyTree:
        leaves = self._treedef.flatten_up_to(v)
        out = [
            x if d is None else x / d.astype(x.dtype)
            for x, d in zip(leaves, self._diagonal, strict=True)
        ]
        for block, (qa, qg, div) in zip(self._blocks, self._eig, strict=True):
            w = leaves[block.weight]
            m = w.T if block.transposed else w
            if block.bias is not None:
                m = jnp.concatenate([m, leaves[block.bias][None]], axis=0)
            m = m.astype(qa.dtype)
            if div is None:  # pi damping: qa, qg are the damped factors' inverses
                m = qa @ m @ qg
            else:  # (A (x) G + lambda I)^{-1} vec(m) = Q_A [(Q_A^T m Q_G) / div] Q_G^T
                m = qa @ ((qa.T @ m @ qg) / div) @ qg.T
            if block.bias is not None:
                out[block.bias] = m[-1].astype(leaves[block.bias].dtype)
                m = m[:-1]
            out[block.weight] = (m.T if block.transposed else m).astype(w.dtype)
        return jax.tree.unflatten(self._treedef, out)


def _inverse_parts(a, g, damping, mode):
    """``(Q_A, Q_G, divisor)`` of the damped Kronecker block's inverse (``"eigen"``), or
    ``(A_inv, G_inv, None)``, the damped factors' inverses (``"pi"``).

    Eigenvalues are clipped at 0: the factors are PSD in exact arithmetic, and a rounding
    error below zero must not make the preconditioner indefinite.
    """
    ea, qa = jnp.linalg.eigh(a)
    eg, qg = jnp.linalg.eigh(g)
    ea, eg = jnp.maximum(ea, 0), jnp.maximum(eg, 0)
    lam = jnp.asarray(damping, a.dtype)
    if mode == "eigen":
        return qa, qg, jnp.outer(ea, eg) + lam
    mean_a, mean_g = jnp.mean(ea), jnp.mean(eg)
    # A dead layer (zero A or G) has no scale to balance: pi = 1 there.
    ok = (mean_a > 0) & (mean_g > 0)
    pi = jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a / jnp.where(ok, mean_g, 1), 1)), 1)
    root = jnp.sqrt(lam)
    # The inverses themselves: two products per application instead of four.
    a_inv = (qa / (ea + pi * root)) @ qa.T
    g_inv = (qg / (eg + root / pi)) @ qg.T
    return (a_inv + a_inv.T) / 2, (g_inv + g_inv.T) / 2, None


# ---------------------------------------------------------------------------- building


class _Spec(NamedTuple):
    """The static options of one construction."""

    kind: str
    likelihood: str | None
    num_samples: int
    chunk_size: int
    damping_mode: str


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def _trace_model(plain, leaves, treedef, m_kw):
    """``(closed jaxpr, its array arguments, output tree)``; Python data stay constants."""
    kw_leaves, kw_tree = jax.tree.flatten(m_kw)
    dynamic = [x for x in kw_leaves if _is_array(x)]

    def model(leaves, dynamic):
        it = iter(dynamic)
        kw = jax.tree.unflatten(kw_tree, [next(it) if _is_array(x) else x for x in kw_leaves])
        return plain.model_fn(jax.tree.unflatten(treedef, leaves), **kw)

    closed, out_shape = jax.make_jaxpr(model, return_shape=True)(leaves, dynamic)
    return closed, [*leaves, *dynamic], jax.tree.structure(out_shape)


def _no_dense_layer(paths) -> ValueError:
    return ValueError(
        f"`{_NAME}` found no dense layer in `model_fn`: no `dot_general` (`x @ w`) whose "
        "one operand is a 2-D parameter leaf used nowhere else (parameter leaves: "
        f"{', '.join(paths[:6])}{', ...' if len(paths) > 6 else ''}). K-FAC needs dense "
        "layers applied outside `lax.scan`; for other models use Martens' diagonal, "
        "`jaxcurv.preconditioner.martens_preconditioner`."
    )


def _blocks(sites, paths, shapes):
    blocks = tuple(_Block(s.weight, s.bias, s.w_contract == 1) for s in sites)
    layers = tuple(
        KFACLayer(paths[s.weight], None if s.bias is None else paths[s.bias], shapes[s.weight])
        for s in sites
    )
    return blocks, layers


def _other_diagonal(plain, leaves, treedef, data, others, damping, chunk):
    """``1/n sum_i g_i^2 + lambda`` on the leaves outside dense layers (None elsewhere)."""
    diag = [None] * len(leaves)
    if not others:
        return diag

    def fn(sub, **kw):
        merged = list(leaves)
        for i, x in zip(others, sub, strict=True):
            merged[i] = x
        return plain(jax.tree.unflatten(treedef, merged), **kw)

    sq = mean_squared_example_grads(fn, [leaves[i] for i in others], data, chunk)
    for i, s in zip(others, sq, strict=True):
        diag[i] = s + jnp.asarray(damping, s.dtype)
    return diag


def _build(plain, spec, params, data, damping, key):
    """``(preconditioner, misfit)`` at ``params`` on the batch ``data``."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [jax.tree_util.keystr(p) for p, _ in with_paths]
    leaves = [x for _, x in with_paths]
    m_kw, l_kw = plain.split_kwargs(data)
    closed, args, out_tree = _trace_model(plain, leaves, treedef, m_kw)
    sites = find_dense_sites(closed, len(leaves))
    if not sites:
        raise _no_dense_layer(paths)
    eps0 = [jnp.zeros(s.out_shape, s.out_dtype) for s in sites]
    active = [s.index for s in sites]
    out, pullback, xs = jax.vjp(
        lambda eps: tapped_call(closed, len(leaves), args, active, eps), eps0, has_aux=True
    )
    if any(jnp.ndim(o) < 1 or o.shape[0] != out[0].shape[0] for o in out):
        raise ValueError(
            f"`{_NAME}` needs `model_fn` to return arrays with the examples along axis 0, got "
            f"shapes {[jnp.shape(o) for o in out]}."
        )

    def loss_of_out(o):
        loss = plain.loss_fn(jax.tree.unflatten(out_tree, o), **l_kw)
        if jnp.shape(loss) != ():
            raise ValueError(
                f"`{_NAME}(loss_fn)` must return a scalar, got {describe_value(loss)}."
            )
        return loss

    a_factors = [input_factor(x, s) for x, s in zip(xs, sites, strict=True)]
    g_mats, misfit = g_factors(
        spec.kind,
        pullback,
        sites,
        out,
        loss_of_out,
        key,
        spec.num_samples,
        spec.likelihood,
        spec.chunk_size,
    )
    dense = {s.weight for s in sites} | {s.bias for s in sites if s.bias is not None}
    others = [i for i in range(len(leaves)) if i not in dense]
    diag = _other_diagonal(plain, leaves, treedef, data, others, damping, spec.chunk_size)
    eig = tuple(
        _inverse_parts(a, g, damping, spec.damping_mode)
        for a, g in zip(a_factors, g_mats, strict=True)
    )
    blocks, layers = _blocks(sites, paths, [tuple(jnp.shape(x)) for x in leaves])
    factors = (tuple(a_factors), tuple(g_mats))
    precond = KFACPreconditioner(
        factors,
        eig,
        tuple(diag),
        jnp.asarray(damping),
        treedef=treedef,
        blocks=blocks,
        layers=layers,
    )
    return precond, misfit


def _check_options(kind, likelihood, damping_mode, num_samples, chunk_size, damping, key):
    check_choice(f"{_NAME}(kind=...)", kind, _KINDS)
    check_choice(f"{_NAME}(damping_mode=...)", damping_mode, _DAMPING_MODES)
    if likelihood is not None:
        check_choice(f"{_NAME}(likelihood=...)", likelihood, LIKELIHOODS)
    num_samples = check_int(f"{_NAME}(num_samples=...)", num_samples, minimum=1)
    chunk_size = check_int(f"{_NAME}(chunk_size=...)", chunk_size, minimum=1)
    if not is_traced(damping):
        check_positive(
            f"{_NAME}(damping=...)",
            damping,
            finite=True,
            fix="The K-FAC factors are singular without damping; pass the damping of the "
            "CG solve, e.g. `damping=1e-3`.",
        )
    if kind == "mc":
        if key is None:
            raise TypeError(
                f"`{_NAME}(kind='mc')` samples labels, so it needs `key=`, e.g. "
                "`key=jax.random.key(0)`; or use the deterministic kind='exact'."
            )
        key = check_key(_NAME, key)
    return num_samples, chunk_size, key


_UNSET = object()


def kfac_preconditioner(
    model_fn: Callable | ModelAndLoss,
    loss_fn: Callable | PyTree,
    params: PyTree = _UNSET,
    *,
    damping: jax.typing.ArrayLike,
    kind: str = "exact",
    key: jax.Array | None = None,
    num_samples: int = 1,
    likelihood: str | None = None,
    damping_mode: str = "pi",
    chunk_size: int = 8,
    **data: Any,
) -> KFACPreconditioner:
    r"""The K-FAC preconditioner of the damped Gauss-Newton system at ``params``.

    ``M`` approximates :math:`(B + \lambda I)^{-1}`, :math:`B` the Gauss-Newton matrix of
    ``loss_fn(model_fn(params, ...), ...)`` on this batch, block-diagonally: one Kronecker
    block per dense layer found in ``model_fn``'s jaxpr (module docstring), a diagonal for
    every other leaf. It is symmetric positive definite, so ``jaxcurv.cg(B, b, M=M,
    damping=lambda)`` converges to the same solution as without it, in fewer steps when
    the approximation is good. Factors and their eigendecompositions are computed once
    here; each application costs four small matrix products per layer.

    Called as ``kfac_preconditioner(model_fn, loss_fn, params, damping=..., **data)`` or
    ``kfac_preconditioner(objective, params, damping=..., **data)`` with a
    :class:`~jaxcurv.ModelAndLoss` (its routing; auxiliary outputs dropped). At top level
    the construction compiles once per configuration (``jaxcurv._compile``); inside the
    user's ``jax.jit`` it is inlined, and the result passes through ``jit`` as a pytree.

    Args:
      model_fn: ``model_fn(params, **kw) -> outputs``, examples along axis 0; examples
        must not interact (no batch statistics).
      loss_fn: ``loss_fn(outputs, **kw) -> scalar``, a mean over examples, convex in the
        outputs (or, with a :class:`~jaxcurv.ModelAndLoss` first, the params).
      params: the point, a pytree of float arrays.
      damping: :math:`\lambda > 0`, the Tikhonov damping of the CG system (may be traced).
      kind: how :math:`G` is computed: ``"exact"``, ``"mc"`` or ``"empirical"`` (module
        docstring).
      key: PRNG key for ``kind="mc"`` (required there, ignored otherwise).
      num_samples: sampled labels per example for ``"mc"``.
      likelihood: ``"gaussian"``, ``"bernoulli"``, ``"categorical"`` or ``None``, for
        ``"mc"``: told from the loss's output Hessian (outside ``jit`` a loss of no
        supported family is a ``ValueError``; under ``jit`` the best-fitting family is
        picked from traced values, and a loss of none falls back to the empirical factor).
      damping_mode: ``"pi"`` (factored Tikhonov damping with Martens & Grosse's
        :math:`\pi`) or ``"eigen"`` (the exact inverse of :math:`A \otimes G + \lambda I`).
      chunk_size: backward passes (output coordinates or samples) vectorised at a time,
        and per-example gradients at a time for the diagonal part.
      **data: the batch, keywords routed as :class:`~jaxcurv.ModelAndLoss` routes them.

    Returns:
      A :class:`KFACPreconditioner`: ``M(v)`` on pytrees like ``params``; ``M.layers``,
      ``M.input_factors``, ``M.output_factors``, ``M.diagonal``.

    Raises:
      TypeError: non-callable functions; non-float params; ``kind="mc"`` without a key;
        a non-int ``num_samples`` / ``chunk_size``; a keyword neither function accepts.
      ValueError: ``damping`` not positive and finite; an unknown option; no dense layer in
        ``model_fn``; outputs without a leading examples axis; for ``"mc"``, a loss of no
        supported likelihood.

    Example (one dense layer, squared error: :math:`B = A \otimes G` exactly, so with
    ``damping_mode="eigen"`` ``M`` is the inverse of the damped system and CG takes one
    step):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> x = jax.random.normal(jax.random.key(0), (20, 3))
      >>> y = jnp.zeros((20, 2))
      >>> model = lambda p, x: x @ p["w"] + p["b"]
      >>> loss = lambda f, y: 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))
      >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
      >>> M = jaxcurv.kfac_preconditioner(model, loss, params, damping=0.1,
      ...                                 damping_mode="eigen", x=x, y=y)
      >>> M.layers
      (KFACLayer(weight="['w']", bias="['b']", shape=(3, 2)),)
      >>> B = jaxcurv.ggn_operator(lambda p: model(p, x), lambda f: loss(f, y), params)
      >>> b = jax.tree.map(jnp.ones_like, params)
      >>> _, info = jaxcurv.cg(B, b, M=M, damping=0.1, tol=1e-5)
      >>> int(info.num_steps)
      1

    References:
      Martens & Grosse, "Optimizing neural networks with Kronecker-factored approximate
      curvature", ICML 2015, §3, §5, §6.3.
    """
    if isinstance(model_fn, ModelAndLoss):
        if params is not _UNSET:
            raise TypeError(
                f"`{_NAME}(objective, params, ...)` takes a ModelAndLoss and the params; got a "
                "third positional argument. Pass the data as keywords."
            )
        plain, params = model_fn.without_aux(), loss_fn
    else:
        for arg, fn in (("model_fn", model_fn), ("loss_fn", loss_fn)):
            check_callable(f"{_NAME}({arg})", fn)
        if params is _UNSET:
            raise TypeError(f"`{_NAME}(model_fn, loss_fn, params, ...)` needs `params`.")
        plain = ModelAndLoss(model_fn, loss_fn)
    check_real_inputs(_NAME, params, "`params`")
    num_samples, chunk_size, key = _check_options(
        kind, likelihood, damping_mode, num_samples, chunk_size, damping, key
    )
    plain.split_kwargs(data)  # unknown keywords: a TypeError now, not inside the trace
    if kind == "mc" and likelihood is None and not is_traced((params, data)):
        likelihood = detect_likelihood(plain, params, data)  # a clear error outside jit
    spec = _Spec(kind, likelihood, num_samples, chunk_size, damping_mode)
    damping = jnp.asarray(damping, jnp.result_type(*jax.tree.leaves(params)))
    precond, misfit = compiled_call(
        lambda p, d, lam, k: _build(plain, spec, p, d, lam, k), params, data, damping, key
    )
    if kind == "mc" and not is_traced(misfit) and float(misfit) > misfit_tol(misfit.dtype):
        raise misfit_error({likelihood: float(misfit)})
    return precond
