r"""Fisher information operators: empirical and Monte-Carlo (``fisher_operator``).

For a loss that is a mean over examples, :math:`L = \frac1n \sum_i \ell_i(f_i)` with
:math:`f_i` the model's outputs for example :math:`i` and per-example gradients
:math:`g_i = \nabla_\theta \ell_i = J_i^\top s_i`, :math:`s_i = \nabla_{f_i} \ell_i`:

* the **empirical Fisher** :math:`F = \frac1n \sum_i g_i g_i^\top` (the mean convention,
  as curvlinops' ``EFLinearOperator`` for a mean-reduced loss, so that it sits on the same
  scale as the Hessian and the Gauss-Newton matrix of :math:`L`);
* the **Monte-Carlo Fisher** :math:`F = \frac1{nS} \sum_i \sum_{s=1}^S \hat g_{is}
  \hat g_{is}^\top`, with :math:`\hat g_{is}` the gradient at labels
  :math:`\hat y_{is}` drawn from the model's predictive distribution. For softmax
  cross-entropy (``likelihood="categorical"``) and squared error (``"gaussian"``)
  :math:`\mathbb{E}\,\hat s \hat s^\top = \nabla^2_f \ell`, so its expectation is the
  generalised Gauss-Newton matrix (the type-2 Fisher; Martens 2020, section 9), and it
  converges to it as :math:`1/\sqrt{S}`.

Both are :math:`J^\top M J` with :math:`M` block-diagonal over examples and positive
semi-definite, so products never form a :math:`g_i`: :math:`F v = J^\top
\big(\tfrac1n \sum_i s_i (s_i^\top (J v)_i)\big)`, one linearized forward pass and one
transposed pass, as the Gauss-Newton product. Examples are the leading axis of the model
outputs (and of every data array), and must not interact (no batch statistics across
examples), exactly as for per-example gradients.

How the sampled labels are scaled: the loss may be any positive multiple of the mean
negative log-likelihood (``jnp.mean((f - y) ** 2)`` is :math:`2/d` times the unit-variance
Gaussian's, a mean over tokens :math:`1/T` times the categorical one's). The operator
measures that multiple from the loss itself, as the ratio of :math:`u^\top \nabla^2_f L\,
u` to the likelihood's :math:`u^\top \nabla^2_f \mathrm{NLL}\, u` on a fixed random
output-space probe :math:`u`, and checks (outside ``jit``) that the two Hessians are
proportional: a loss of another family is a ``ValueError``, not a silently wrong Fisher.
With ``likelihood=None`` it tries both families and takes the one that fits.

References:
  Martens, "New insights and perspectives on the natural gradient method", JMLR 2020.
  Kunstner, Hennig and Balles, "Limitations of the empirical Fisher approximation for
  natural gradient descent", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import check_callable, check_choice, check_int, check_key, check_real_inputs
from jaxcurv._compile import compiled_call, is_traced
from jaxcurv.losses import softmax_hessian_vp
from jaxcurv.micro_batch import micro_batch_operator, micro_batches
from jaxcurv.model_and_loss import ModelAndLoss, take_batch
from jaxcurv.operators import CurvatureOperator
from jaxcurv.selection import Selection, restrict

PyTree = Any

__all__ = ["FisherOperator", "fisher_operator"]

_KINDS = ("empirical", "mc")
_LIKELIHOODS = ("categorical", "gaussian")


# ------------------------------------------------------------- output-space parts of M


def _per_example_dot(a: PyTree, u: PyTree) -> jax.Array:
    """``<a_i, u_i>`` for every example ``i`` (axis 0), summed over leaves: shape ``(n,)``."""
    dots = [
        jnp.sum(x * y, axis=tuple(range(1, x.ndim)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(u))
    ]
    return sum(dots[1:], dots[0])


def _apply_factor(factors: PyTree, weight: jax.Array, u: PyTree) -> PyTree:
    """:math:`M u = w \\sum_s a_s \\odot \\langle a_s, u\\rangle_i`; ``factors`` lead with ``s``."""
    coeffs = jax.vmap(_per_example_dot, in_axes=(0, None))(factors, u)  # (S, n)

    def leaf(a):
        c = coeffs.reshape(coeffs.shape + (1,) * (a.ndim - 2)).astype(a.dtype)
        return jnp.asarray(weight, a.dtype) * jnp.sum(a * c, axis=0)

    return jax.tree.map(leaf, factors)


def _likelihood_hessian(likelihood: str, out: jax.Array, u: jax.Array) -> jax.Array:
    """The unit negative log-likelihood's Hessian in the outputs, applied to ``u``.

    Softmax cross-entropy's is :math:`\\mathrm{diag}(p) - p p^\\top` per position, applied in
    closed form by :func:`jaxcurv.losses.softmax_hessian_vp` (never a ``C x C`` matrix);
    the unit-variance Gaussian's is the identity.
    """
    if likelihood == "gaussian":
        return u
    return softmax_hessian_vp(out, u)  # the one closed form, shared with the GGN


def _draw(likelihood: str, out: jax.Array, keys: jax.Array, num_samples: int) -> jax.Array:
    """Per-example draws ``(n, S, ...)`` from the predictive, one key per example: class
    labels (categorical) or standard normal noise (Gaussian). Drawn once, at construction:
    products then hold no random-number generation (the slowest part to compile)."""

    def one(key, f):
        if likelihood == "gaussian":
            return jax.random.normal(key, (num_samples, *f.shape), f.dtype)
        return jax.random.categorical(key, f, shape=(num_samples, *f.shape[:-1]))

    return jax.vmap(one)(keys, out)


def _sampled_factors(likelihood: str, out: jax.Array, draws: jax.Array) -> jax.Array:
    """The unit NLL's output gradients at the drawn labels, ``(S, n, ...)`` (signs aside)."""
    if likelihood == "gaussian":
        return jnp.swapaxes(draws, 0, 1)  # f - y_hat = -noise for y_hat ~ N(f, I)
    p = jax.nn.softmax(out, axis=-1)[:, None]
    return jnp.swapaxes(jax.nn.one_hot(draws, out.shape[-1], dtype=out.dtype) - p, 0, 1)


def _loss_hvp(loss_of_out: Callable, out: PyTree, u: PyTree) -> PyTree:
    return jax.jvp(jax.grad(loss_of_out), (out,), (u,))[1]


def _scale_and_misfit(likelihood, loss_of_out, out):
    """``(ratio, misfit)``: :math:`\\nabla^2 L \\approx` ratio :math:`\\cdot` the unit NLL's."""
    # A fixed, generic probe (never constant along the class axis, the softmax Hessian's
    # null space); deterministic, and without a random-number generator to compile.
    u = jnp.cos(2.399963 * jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)
    h_loss = _loss_hvp(loss_of_out, out, u)
    h_lik = _likelihood_hessian(likelihood, out, u)
    ratio = jnp.vdot(u, h_loss) / jnp.vdot(u, h_lik)
    misfit = jnp.linalg.norm(h_loss - ratio * h_lik) / jnp.linalg.norm(h_loss)
    return ratio, misfit


# ----------------------------------------------------------------------- the operator


@jax.tree_util.register_pytree_node_class
class FisherOperator(CurvatureOperator):
    """:math:`J^\\top M J`: :math:`J` linearized once, :math:`M` stored as output factors."""

    def __init__(self, x, value, grad, jvp, factors, weight):
        self.x, self.value, self.grad = x, value, grad
        self._jvp, self.factors, self.weight = jvp, factors, weight

    def tree_flatten(self):
        return (self.x, self.value, self.grad, self._jvp, self.factors, self.weight), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def _mv(self, v):
        m = _apply_factor(self.factors, self.weight, self._jvp(v))
        (res,) = jax.linear_transpose(self._jvp, self.x)(m)
        return res


def _check_scalar(loss):
    if getattr(loss, "shape", None) != ():
        raise ValueError(
            "`fisher_operator(loss_fn)` needs a scalar loss (a mean over examples), but it "
            f"returned shape {getattr(loss, 'shape', type(loss).__name__)}."
        )


@dataclasses.dataclass(frozen=True)
class _Fisher:
    """The static part of a Fisher: the user's functions and the options (hashable)."""

    model_fn: Callable
    loss_fn: Callable
    sel: Selection | None
    kind: str
    likelihood: str | None
    num_samples: int

    def parts(self, x, fixed, data):
        """``(value, grad, jvp, factors, weight)`` on one batch; ``fixed = (rest, scale)``,
        ``scale`` the multiple of the mean NLL that the loss is (``mc`` only)."""
        rest, scale = fixed
        (m_kw, l_kw), draws = data
        model = self.model_fn if self.sel is None else self.sel.on_selected(self.model_fn, rest)
        out, jvp = jax.linearize(lambda p: model(p, **m_kw), x)

        def loss_of_out(o):
            loss = self.loss_fn(o, **l_kw)
            _check_scalar(loss)
            return loss

        value, g_out = jax.value_and_grad(loss_of_out)(out)
        (grad,) = jax.linear_transpose(jvp, x)(g_out)
        n = jax.tree.leaves(out)[0].shape[0]
        if self.kind == "empirical":
            # s_i = grad of the one-example loss = n * (grad of the mean at row i).
            factors = jax.tree.map(lambda g: (n * g)[None], g_out)
            weight = jnp.asarray(1.0 / n)
        else:
            factors = _sampled_factors(self.likelihood, out, draws)
            weight = scale / (n * self.num_samples)
        return value, grad, jvp, factors, weight

    # The micro-batch protocol of `jaxcurv.micro_batch.MicroBatchOperator`.
    def product(self, x, v, fixed, data):
        _, _, jvp, factors, weight = self.parts(x, fixed, data)
        (res,) = jax.linear_transpose(jvp, x)(_apply_factor(factors, weight, jvp(v)))
        return res

    def value_and_grad(self, x, fixed, data):
        return self.parts(x, fixed, data)[:2]


# ------------------------------------------------------------------ the constructor


def _nll_scale(name, model_fn, loss_fn, sel, likelihood, x, rest, m_kw, l_kw):
    """``(likelihood, scale)``: which family the loss is, and its multiple of the mean NLL."""
    model = model_fn if sel is None else sel.on_selected(model_fn, rest)

    def fits(x, rest, m_kw, l_kw):
        out = model(x, **m_kw)
        if not isinstance(out, jax.Array) or out.ndim < 1:
            raise ValueError(
                f"`{name}(kind='mc')` samples labels for the model's outputs, so `model_fn` "
                f"must return one array with the examples along axis 0, got "
                f"{jax.tree.map(lambda a: getattr(a, 'shape', a), out)}."
            )
        candidates = _LIKELIHOODS if likelihood is None else (likelihood,)
        found = {c: _scale_and_misfit(c, lambda o: loss_fn(o, **l_kw), out) for c in candidates}
        return {c: (ratio * out.shape[0], misfit) for c, (ratio, misfit) in found.items()}

    found = compiled_call(fits, x, rest, m_kw, l_kw)
    if is_traced(found):
        if likelihood is None:
            raise ValueError(
                f"`{name}(kind='mc')` under `jit` cannot tell the loss family from the loss's "
                "values: pass likelihood='categorical' (softmax cross-entropy) or 'gaussian' "
                "(squared error)."
            )
        return likelihood, found[likelihood][0]
    tol = 10 * float(np.sqrt(np.finfo(np.dtype(jnp.result_type(found[next(iter(found))][0]))).eps))
    for family, (scale, misfit) in found.items():
        if float(misfit) <= tol and float(scale) > 0:
            return family, scale
    wanted = "either family" if likelihood is None else f"likelihood={likelihood!r}"
    misfits = ", ".join(f"{c}: {float(m):.2g}" for c, (_, m) in found.items())
    raise ValueError(
        f"`{name}(kind='mc')`: the loss's Hessian in the model outputs is no positive multiple "
        f"of {wanted}'s negative log-likelihood (relative misfit {misfits}; tolerance {tol:.1g}), "
        "so labels sampled from the model's predictive would not give this loss's Fisher. "
        "`kind='mc'` supports softmax cross-entropy of logits ('categorical') and squared "
        "error ('gaussian'), as means over examples; for other losses use kind='empirical' "
        "or `jaxcurv.ggn_operator`."
    )


def _draws(model_fn, sel, likelihood, x, rest, m_kw, key, num_samples, micro_batch):
    """All examples' draws, computed one micro-batch at a time when ``micro_batch`` is set."""
    model = model_fn if sel is None else sel.on_selected(model_fn, rest)
    n = jax.eval_shape(lambda x: model(x, **m_kw), x).shape[0]
    batches = micro_batches("fisher_operator", (m_kw, jax.random.split(key, n)), micro_batch or n)

    def draw(x, rest, batches):
        model = model_fn if sel is None else sel.on_selected(model_fn, rest)
        return batches.concatenate(lambda d: _draw(likelihood, model(x, **d[0]), d[1], num_samples))

    return compiled_call(draw, x, rest, batches)


def fisher_operator(
    model_fn: Callable,
    loss_fn: Callable,
    params: PyTree,
    *,
    kind: str = "empirical",
    key: jax.Array | None = None,
    num_samples: int = 1,
    likelihood: str | None = None,
    micro_batch: int | None = None,
    wrt: Any = None,
    **data: Any,
) -> CurvatureOperator:
    r"""The Fisher information of a model and a mean loss, as a PSD linear operator.

    ``kind="empirical"``: :math:`F = \frac1n \sum_i g_i g_i^\top` over the per-example
    gradients :math:`g_i` of the one-example losses (labels as given). ``kind="mc"``:
    :math:`F = \frac1{nS} \sum_{i,s} \hat g_{is} \hat g_{is}^\top` at labels drawn from the
    model's predictive (categorical for softmax cross-entropy, Gaussian for squared error),
    whose expectation is the Gauss-Newton matrix. Products cost about one Gauss-Newton
    product and never form a per-example gradient (module docstring).

    Args:
      model_fn: ``model_fn(params, **kw) -> outputs``, examples along axis 0 of the outputs
        (one array for ``"mc"``, logits last for ``"categorical"``).
      loss_fn: ``loss_fn(outputs, **kw) -> scalar``, a mean over examples of per-example
        losses that depend on their own outputs only.
      params: the point.
      kind: ``"empirical"`` or ``"mc"``.
      key: PRNG key for the sampled labels; required for ``"mc"`` (ignored otherwise).
        One key per example is split from it, so the draws do not depend on
        ``micro_batch``.
      num_samples: labels drawn per example for ``"mc"`` (ignored otherwise); the
        estimate's error falls as :math:`1/\sqrt{n \cdot \mathrm{num\_samples}}`.
      likelihood: ``"categorical"``, ``"gaussian"`` or ``None`` (tell from ``loss_fn``; see
        the module docstring); ``"mc"`` only.
      micro_batch: examples per micro-batch, as for ``ggn_operator``.
      wrt: which leaves of ``params`` to differentiate, as for ``ggn_operator``.
      **data: the batch, as keywords routed by name as :class:`~jaxcurv.ModelAndLoss`
        routes them.

    Returns:
      A ``FisherOperator`` (``MicroBatchOperator`` with ``micro_batch``): ``op(v)``,
      ``to_dense()``, ``diagonal()``, ``value``, ``grad``.

    Raises:
      TypeError: ``kind="mc"`` without a key, or a bad key; non-callable functions; a
        non-int ``num_samples``; a keyword neither function accepts.
      ValueError: an unknown ``kind`` or ``likelihood``; ``num_samples < 1``; a loss that
        is no softmax cross-entropy or squared error for ``"mc"``; bad ``wrt`` or
        ``micro_batch`` (as ``ggn_operator``).

    Example (a linear model under squared error: every Fisher is :math:`X^\top X / n`
    in expectation; the empirical one uses the residuals instead):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> X, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, -1.0])
      >>> model, loss = lambda w, x: x @ w, lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
      >>> jaxcurv.fisher_operator(model, loss, jnp.zeros(2), x=X, y=y).to_dense()
      Array([[0.5, 0. ],
             [0. , 2. ]], dtype=float32)
      >>> op = jaxcurv.fisher_operator(model, loss, jnp.zeros(2), kind="mc",
      ...                              key=jax.random.key(0), num_samples=20000, x=X, y=y)
      >>> op.to_dense().round(1)  # -> X^T X / n = diag(0.5, 2)
      Array([[0.5, 0. ],
             [0. , 2. ]], dtype=float32)

    References:
      Martens 2020 (section 9: the Fisher and the GGN); Kunstner et al. 2019 (the
      empirical Fisher); Schraudolph 2002.
    """
    for arg, fn in (("model_fn", model_fn), ("loss_fn", loss_fn)):
        check_callable(f"fisher_operator({arg})", fn)
    check_real_inputs("fisher_operator", params, "`params`")
    check_choice("fisher_operator(kind=...)", kind, _KINDS)
    if likelihood is not None:
        check_choice("fisher_operator(likelihood=...)", likelihood, _LIKELIHOODS)
    num_samples = check_int("fisher_operator(num_samples=...)", num_samples, minimum=1)
    m_kw, l_kw = ModelAndLoss(model_fn, loss_fn).split_kwargs(data)
    sel, x, rest = restrict("fisher_operator", wrt, params, "params")
    draws, scale = None, jnp.zeros(())
    if kind == "mc":
        if key is None:
            raise TypeError(
                "`fisher_operator(kind='mc')` samples labels, so it needs `key=`, e.g. "
                "`key=jax.random.key(0)`; a new key gives a new sample of the Fisher."
            )
        key = check_key("fisher_operator", key)
        head = (m_kw, l_kw) if micro_batch is None else take_batch((m_kw, l_kw), micro_batch)
        likelihood, scale = _nll_scale(
            "fisher_operator", model_fn, loss_fn, sel, likelihood, x, rest, *head
        )
        draws = _draws(model_fn, sel, likelihood, x, rest, m_kw, key, num_samples, micro_batch)
    spec = _Fisher(model_fn, loss_fn, sel, kind, likelihood if kind == "mc" else None, num_samples)
    fixed, batch = (rest, scale), ((m_kw, l_kw), draws)
    if micro_batch is not None:
        return micro_batch_operator("fisher_operator", spec, x, fixed, batch, micro_batch)
    return compiled_call(
        lambda x, fixed, batch: FisherOperator(x, *spec.parts(x, fixed, batch)), x, fixed, batch
    )
