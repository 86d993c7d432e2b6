r"""The factors of :mod:`jaxcurv.kfac`: sampled output gradients, the loss family, A and G.

Split from :mod:`jaxcurv.kfac` (which holds the preconditioner and its construction); the
names without an underscore are that module's, the rest are this one's own. The formulas
are in :mod:`jaxcurv.kfac`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import describe_value
from jaxcurv._compile import compiled_call, is_traced
from jaxcurv._layer_tags import DenseSite

__all__ = [
    "LIKELIHOODS",
    "detect_likelihood",
    "g_factors",
    "input_factor",
    "misfit_error",
    "misfit_tol",
    "sample_gradient",
]

LIKELIHOODS = ("gaussian", "bernoulli", "categorical")
_NAME = "kfac_preconditioner"


# ----------------------------------------------------------------- sampled output factors


def _unit_hessian(likelihood: str, out: jax.Array, u: jax.Array) -> jax.Array:
    """The unit negative log-likelihood's Hessian in the outputs applied to ``u``."""
    if likelihood == "gaussian":
        return u
    if likelihood == "bernoulli":
        p = jax.nn.sigmoid(out)
        return p * (1 - p) * u
    p = jax.nn.softmax(out, axis=-1)
    return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)


def sample_gradient(likelihood: str, out: jax.Array, key: jax.Array) -> jax.Array:
    """The unit NLL's gradient in the outputs at labels drawn from the predictive (its
    sign flipped, which the outer product does not see): ``E[s s^T]`` is the Hessian."""
    if likelihood == "gaussian":
        return jax.random.normal(key, out.shape, out.dtype)
    if likelihood == "bernoulli":
        p = jax.nn.sigmoid(out)
        return p - jax.random.bernoulli(key, p).astype(out.dtype)
    labels = jax.random.categorical(key, out)
    return jax.nn.softmax(out, axis=-1) - jax.nn.one_hot(labels, out.shape[-1], dtype=out.dtype)


def _scale_and_misfit(likelihood: str, out: jax.Array, loss_hvp: Callable) -> tuple:
    """``(r, misfit)``: the loss's output Hessian is ``r`` times the unit NLL's, to
    ``misfit`` (relative), measured on one fixed random probe."""
    u = jax.random.normal(jax.random.key(0), out.shape, out.dtype)
    h_loss, h_unit = loss_hvp(u), _unit_hessian(likelihood, out, u)
    r = jnp.vdot(u, h_loss) / jnp.vdot(u, h_unit)
    misfit = jnp.linalg.norm(h_loss - r * h_unit) / jnp.linalg.norm(h_loss)
    return r, misfit


# ------------------------------------------------------------------------- the factors


def _rows(x: jax.Array, axis: int) -> jax.Array:
    """``x`` with ``axis`` moved last and every other axis flattened into rows."""
    x = jnp.moveaxis(x, axis, -1)
    return x.reshape(-1, x.shape[-1])


def input_factor(x: jax.Array, site: DenseSite) -> jax.Array:
    a = _rows(x, site.x_contract)
    if site.bias is not None:
        a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)
    return a.T @ a / a.shape[0]


def _sum_over(fn: Callable, num: int, chunk: int) -> Any:
    """``sum_k fn(k)`` over ``k < num``, ``chunk`` at a time (vmap inside a scan)."""
    c = min(chunk, num)
    steps = -(-num // c)
    ks = jnp.arange(steps * c).reshape(steps, c)

    def body(acc, k):
        parts = jax.vmap(fn)(k)
        keep = k < num
        return jax.tree.map(
            lambda s, p: s + jnp.tensordot(keep.astype(p.dtype), p, 1), acc, parts
        ), None

    zero = jax.tree.map(
        lambda s: jnp.zeros(s.shape[1:], s.dtype), jax.eval_shape(jax.vmap(fn), ks[0])
    )
    return jax.lax.scan(body, zero, ks)[0]


def _output_grads(pullback, sites, cot) -> list[jax.Array]:
    """Each site's output gradients for an output cotangent, as rows ``(R, d_out)``."""
    (g,) = pullback(cot)
    return [_rows(gi, s.out_axis) for gi, s in zip(g, sites, strict=True)]


def _exact_g(pullback, sites, out, loss_hvp, chunk):
    """``sum_k (J^T e_k)^T (J^T H e_k)`` over the per-example output coordinates."""
    sizes = [math.prod(o.shape[1:]) for o in out]
    offsets = np.cumsum([0, *sizes])

    def basis(k):
        return [
            jnp.broadcast_to((jnp.arange(s) + off == k).reshape(o.shape[1:]), o.shape).astype(
                o.dtype
            )
            for o, s, off in zip(out, sizes, offsets, strict=False)
        ]

    def term(k):
        e = basis(k)
        ge = _output_grads(pullback, sites, e)
        gh = _output_grads(pullback, sites, loss_hvp(e))
        return [a.T @ b for a, b in zip(ge, gh, strict=True)]

    gs = _sum_over(term, int(offsets[-1]), chunk)
    return [(g + g.T) / 2 for g in gs]


def _sampled_g(pullback, sites, out, cotangent, num, chunk):
    def term(k):
        return [g.T @ g for g in _output_grads(pullback, sites, cotangent(k))]

    return _sum_over(term, num, chunk)


def g_factors(kind, pullback, sites, out, loss_of_out, key, num_samples, likelihood, chunk):
    """``(G factors, misfit)``: ``misfit`` says how well ``likelihood`` fits (``mc``)."""
    grad_out, loss_hvp = jax.linearize(jax.grad(loss_of_out), out)
    n = out[0].shape[0]
    if kind == "exact":
        return _exact_g(pullback, sites, out, loss_hvp, chunk), jnp.zeros(())
    if kind == "empirical":
        # The per-example loss gradient is n times the mean loss's gradient in its row:
        # G = (1/n) sum_i (J^T n g_i)(...)^T = sum_i (J^T sqrt(n) g_i)(...)^T.
        cot = [jnp.sqrt(jnp.asarray(n, g.dtype)) * g for g in grad_out]
        return _sampled_g(pullback, sites, out, lambda k: cot, 1, chunk), jnp.zeros(())
    if likelihood is None:  # under jit: the family is chosen from traced values
        return _chosen_family_g(pullback, sites, out, grad_out, loss_hvp, key, num_samples, chunk)
    r, misfit = _scale_and_misfit(likelihood, out[0], lambda u: loss_hvp([u])[0])

    def cotangent(k):
        s = sample_gradient(likelihood, out[0], jax.random.fold_in(key, k))
        return [jnp.sqrt(r / num_samples).astype(s.dtype) * s]

    return _sampled_g(pullback, sites, out, cotangent, num_samples, chunk), misfit


def _chosen_family_g(pullback, sites, out, grad_out, loss_hvp, key, num_samples, chunk):
    """``mc`` factors for the best-fitting family, picked by ``lax.switch`` on traced
    misfits (one probe each, as :func:`detect_likelihood`); where no family fits within
    :func:`misfit_tol` the empirical factor instead (the loss's own gradients), so the
    result is always a PSD factor of the right scale, never NaN. ``misfit`` is the chosen
    family's (``inf`` for the fallback)."""
    o = out[0]
    fits = [_scale_and_misfit(c, o, lambda u: loss_hvp([u])[0]) for c in LIKELIHOODS]
    tol = misfit_tol(o.dtype)
    score = jnp.stack([jnp.where((r > 0) & (m <= tol), m, jnp.inf) for r, m in fits])
    best = jnp.argmin(score)
    ok = jnp.isfinite(score[best])
    n = jnp.asarray(o.shape[0], o.dtype)
    empirical = jnp.sqrt(n / num_samples) * grad_out[0]  # num_samples copies: G as below

    def cotangent(k):
        sub = jax.random.fold_in(key, k)
        draws = [
            jnp.sqrt(jnp.maximum(r, 0) / num_samples).astype(o.dtype) * sample_gradient(c, o, sub)
            for c, (r, _) in zip(LIKELIHOODS, fits, strict=True)
        ]
        return [jnp.where(ok, jax.lax.switch(best, [lambda d=d: d for d in draws]), empirical)]

    misfit = jnp.where(ok, score[best], jnp.inf)
    return _sampled_g(pullback, sites, out, cotangent, num_samples, chunk), misfit


def misfit_tol(dtype) -> float:
    # The probe's misfit of a matching family is rounding: a few eps times the entries'
    # spread; sqrt(eps) (3e-4 in float32) leaves room, and no other family comes near it.
    return 10 * float(np.sqrt(np.finfo(np.dtype(dtype)).eps))


def detect_likelihood(plain, params, data) -> str:
    """The family whose unit NLL Hessian the loss's output Hessian is a multiple of."""

    def misfits(params, data):
        m_kw, l_kw = plain.split_kwargs(data)
        out = plain.model_fn(params, **m_kw)
        if not isinstance(out, jax.Array) or out.ndim < 1:
            raise ValueError(
                f"`{_NAME}(kind='mc')` samples labels for the model's outputs, so `model_fn` "
                f"must return one array with the examples along axis 0, got {describe_value(out)}."
            )
        hvp = jax.linearize(jax.grad(lambda o: plain.loss_fn(o, **l_kw)), out)[1]
        return {c: _scale_and_misfit(c, out, hvp) for c in LIKELIHOODS}

    found = compiled_call(misfits, params, data)
    if is_traced(found):
        raise ValueError(
            f"`{_NAME}(kind='mc')` under `jit` cannot tell the loss family from its values: "
            f"pass likelihood= one of {LIKELIHOODS}."
        )
    for family, (r, misfit) in found.items():
        if float(misfit) <= misfit_tol(misfit.dtype) and float(r) > 0:
            return family
    raise misfit_error({c: float(m) for c, (_, m) in found.items()})


def misfit_error(misfits: dict) -> ValueError:
    shown = ", ".join(f"{c}: {m:.2g}" for c, m in misfits.items())
    return ValueError(
        f"`{_NAME}(kind='mc')`: the loss's Hessian in the model outputs is no positive "
        f"multiple of a supported likelihood's (relative misfit {shown}), so labels sampled "
        "from the model's predictive would not give this loss's Gauss-Newton matrix. "
        "kind='mc' supports squared error ('gaussian'), logistic cross-entropy "
        "('bernoulli') and softmax cross-entropy ('categorical'), as means over examples; "
        "for other losses use kind='exact'."
    )
