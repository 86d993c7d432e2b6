r"""Softmax cross-entropy, and its Hessian in the logits applied in closed form.

For logits :math:`z_t \in \mathbb{R}^V` at each of :math:`T` tokens (every leading axis of
the logits: batch, sequence, ...), :math:`p_t = \mathrm{softmax}(z_t)` and labels
:math:`y_t` (a class, or a distribution), :func:`softmax_cross_entropy` is

.. math:: L = \frac1T \sum_t w_t \Big(s_t \log \textstyle\sum_c e^{z_{tc}} - y_t^\top z_t\Big),
   \qquad s_t = \textstyle\sum_c y_{tc}\ (= 1 \text{ for a class or a distribution}),

with per-token weights :math:`w_t` (1 by default). Its Hessian in the logits is
block-diagonal over tokens,

.. math:: \nabla^2_{z_t} L = \frac{w_t s_t}{T}\big(\mathrm{diag}(p_t) - p_t p_t^\top\big),
   \qquad \big(\mathrm{diag}(p) - p p^\top\big) u = p \odot u - p\,(p^\top u),

so :func:`softmax_hessian_vp` applies it in :math:`O(TV)` work, never forming a
:math:`V \times V` block. Beyond ``2**20`` logits it walks the tokens in chunks
(:func:`default_chunk_size`: at most ``2**20`` logits each, at least 16 of them), writing
each chunk's result over the chunk of ``u`` it read (in place under XLA): beyond ``u``
itself only one chunk's temporaries are live, whatever :math:`T` and :math:`V` and
whatever the backend fuses.

:func:`jaxcurv.ggn_vp` and :func:`jaxcurv.ggn_operator` recognise
``loss_fn=jaxcurv.softmax_cross_entropy`` (the function itself, or a
``functools.partial`` of it binding keywords only) and use this closed form in place of
differentiating the loss twice; :func:`closed_form_hessian` is that lookup. The linearized
operator then stores the logits and one scale per token instead of the loss's
linearization (several ``T x V`` arrays). Any other loss takes the generic path, unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_int, describe_value, is_array

__all__ = [
    "closed_form_hessian",
    "default_chunk_size",
    "softmax_cross_entropy",
    "softmax_cross_entropy_hessian",
    "softmax_hessian_vp",
]

# Logits per chunk of `softmax_hessian_vp`: at most 4 MiB of float32 per chunk temporary
# (a 50k vocabulary: 20 tokens per loop step, steps large enough to keep an accelerator
# busy), and at least `_MIN_CHUNKS` chunks where there are tokens enough, so that the
# three chunk temporaries of a step (the two slices it reads, the block it writes) stay a
# small fraction of one tokens x vocabulary buffer. Logits that fit one chunk are one block
# (a 256 x 10 classifier pays no loop). Measured on XLA:CPU: unchunked, XLA fuses the
# closed form as well, but nothing bounds what another backend materialises.
_CHUNK_ELEMENTS = 2**20
_MIN_CHUNKS = 16


def default_chunk_size(tokens: int, vocab: int) -> int:
    """Tokens per step of :func:`softmax_hessian_vp` (module comment above).

    Example:
      >>> from jaxcurv.losses import default_chunk_size
      >>> [default_chunk_size(t, v) for t, v in [(256, 10), (1024, 4096), (8192, 50257)]]
      [256, 64, 20]
    """
    if tokens * vocab <= _CHUNK_ELEMENTS:
        return max(tokens, 1)
    return max(1, min(_CHUNK_ELEMENTS // max(vocab, 1), tokens // _MIN_CHUNKS))


# ------------------------------------------------------------------------------ checks


def _as_array(name: str, arg: str, value: Any) -> jax.Array:
    if not is_array(value):
        raise TypeError(
            f"`{name}({arg}=...)` must be an array, got {describe_value(value)}. Pass a "
            "jax or numpy array."
        )
    return jnp.asarray(value)


def _check_inputs(name: str, logits: Any, labels: Any, weights: Any) -> tuple:
    """``(logits, labels, weights)`` as arrays; static checks of kinds and shapes."""
    logits = _as_array(name, "logits", logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating) or logits.ndim < 1:
        kind = TypeError if not jnp.issubdtype(logits.dtype, jnp.floating) else ValueError
        raise kind(
            f"`{name}(logits=...)` must be a real floating-point array with the classes on "
            f"its last axis, got {describe_value(logits)}. Pass the model's unnormalised "
            "scores, shape (..., num_classes)."
        )
    labels = _as_array(name, "labels", labels)
    tokens = logits.shape[:-1]
    if jnp.issubdtype(labels.dtype, jnp.integer):
        want, what = tokens, "class indices shaped like the logits without their last axis"
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        want, what = logits.shape, "one-hot rows or probabilities shaped like the logits"
    else:
        raise TypeError(
            f"`{name}(labels=...)` must be integer class indices or floating-point "
            f"probabilities, got {describe_value(labels)}. Cast them, e.g. "
            "`labels.astype(jnp.int32)` for classes."
        )
    if labels.shape != want:
        raise ValueError(
            f"`{name}(labels=...)` must be {what}, shape {want} for logits of shape "
            f"{logits.shape}, got shape {labels.shape}. Every leading axis of the logits "
            "(batch, sequence) is a token axis; the labels must have the same ones."
        )
    if weights is not None:
        weights = _as_array(name, "weights", weights)
        if weights.shape != tokens or not jnp.issubdtype(weights.dtype, jnp.number):
            kind = ValueError if jnp.issubdtype(weights.dtype, jnp.number) else TypeError
            raise kind(
                f"`{name}(weights=...)` must be one real weight per token, shape {tokens} for "
                f"logits of shape {logits.shape}, got {describe_value(weights)}. For a mean "
                "over the unmasked tokens pass `mask / mask.mean()`."
            )
    return logits, labels, weights


# -------------------------------------------------------------------------------- loss


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, weights: Any = None
) -> jax.Array:
    r"""Softmax cross-entropy of ``logits`` against ``labels``, a mean over tokens.

    Every leading axis of ``logits`` is a token axis (batch, sequence); the mean is over all
    of them, so the loss is a mean over examples as ``micro_batch=`` needs. As ``loss_fn``
    of :func:`jaxcurv.ggn_vp` / :func:`jaxcurv.ggn_operator` its Hessian in the logits is
    applied in closed form (module docstring).

    Args:
      logits: ``(..., V)`` real floating-point scores.
      labels: integer classes of shape ``logits.shape[:-1]`` (in ``[0, V)``; others give
        NaN, except at tokens of weight 0), or floating-point one-hot rows / probabilities
        of shape ``logits.shape``.
      weights: optional per-token weights of shape ``logits.shape[:-1]``: the loss is then
        :math:`\frac1T \sum_t w_t \ell_t`, still a mean over tokens (so it micro-batches);
        tokens of weight 0 contribute exactly 0. For a mean over the unmasked tokens only,
        pass ``mask / mask.mean()`` computed once on the whole batch.

    Returns:
      The scalar loss, in the logits' dtype.

    Raises:
      TypeError: non-float logits, labels neither integer nor float, non-numeric weights.
      ValueError: 0-d logits; labels or weights of the wrong shape.

    Example (uniform logits over 4 classes: :math:`\log 4` whatever the label):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> float(jaxcurv.softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))
      1.3862943649291992
    """
    logits, labels, weights = _check_inputs("softmax_cross_entropy", logits, labels, weights)
    lse = jax.nn.logsumexp(logits, axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        picked = jnp.take_along_axis(
            logits, labels[..., None], axis=-1, mode="fill", wrap_negative_indices=False
        )
        per_token = lse - picked[..., 0]
    else:
        labels = labels.astype(logits.dtype)
        per_token = jnp.sum(labels, axis=-1) * lse - jnp.sum(labels * logits, axis=-1)
    if weights is not None:
        weights = weights.astype(logits.dtype)
        per_token = jnp.where(weights == 0, 0, weights * per_token)
    return jnp.mean(per_token)


def _token_scale(logits: jax.Array, labels: jax.Array, weights: Any) -> jax.Array:
    """:math:`w_t s_t / T` per token: each token's multiple of the unit softmax Hessian."""
    tokens = math.prod(logits.shape[:-1])
    scale = jnp.full(logits.shape[:-1], 1.0 / max(tokens, 1), logits.dtype)
    if jnp.issubdtype(labels.dtype, jnp.floating):
        scale = scale * jnp.sum(labels.astype(logits.dtype), axis=-1)
    if weights is not None:
        scale = scale * weights.astype(logits.dtype)
    return scale


# ------------------------------------------------------------------- the closed form


def _block(z: jax.Array, u: jax.Array, s: jax.Array) -> jax.Array:
    """``s_t (p_t * u_t - p_t (p_t . u_t))`` for a chunk of tokens, in at least float32."""
    work = jnp.promote_types(u.dtype, jnp.float32)
    p = jax.nn.softmax(z.astype(work), axis=-1)
    w = u.astype(work)
    pu = jnp.sum(p * w, axis=-1, keepdims=True)
    return (s.astype(work)[:, None] * p * (w - pu)).astype(u.dtype)


def softmax_hessian_vp(
    logits: jax.Array, u: jax.Array, scale: Any = None, *, chunk_size: int | None = None
) -> jax.Array:
    r"""Per token :math:`s_t (\mathrm{diag}(p_t) - p_t p_t^\top) u_t`, chunked over tokens.

    Args:
      logits: ``(..., V)`` logits, :math:`p_t = \mathrm{softmax}(z_t)` along the last axis.
      u: ``(..., V)``, shaped like ``logits``.
      scale: optional :math:`s_t`, broadcastable to ``logits.shape[:-1]`` (default 1).
      chunk_size: tokens per loop step (default :func:`default_chunk_size`: one block up
        to ``2**20`` logits, else at most that many per step and at least 16 steps). Only
        one chunk's temporaries are live at a time; the result overwrites ``u`` chunk by
        chunk, each row processed once.

    Returns:
      An array like ``u``.

    Example (:math:`p = (1/2, 1/2)`: :math:`\mathrm{diag}(p) - p p^\top = \frac14
    [[1, -1], [-1, 1]]`):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.losses import softmax_hessian_vp
      >>> softmax_hessian_vp(jnp.zeros((3, 2)), jnp.array([[1.0, 0], [0, 1], [1, 1]]),
      ...                    chunk_size=2)
      Array([[ 0.25, -0.25],
             [-0.25,  0.25],
             [ 0.  ,  0.  ]], dtype=float32)
    """
    shape = jnp.shape(logits)
    if jnp.shape(u) != shape:
        raise ValueError(
            f"`softmax_hessian_vp(u=...)` must be shaped like the logits {shape}, got "
            f"{jnp.shape(u)}."
        )
    vocab, tokens = shape[-1], math.prod(shape[:-1])
    if tokens == 0 or vocab == 0:
        return u
    if chunk_size is None:
        chunk_size = default_chunk_size(tokens, vocab)
    chunk_size = check_int("softmax_hessian_vp(chunk_size=...)", chunk_size, minimum=1)
    s = jnp.ones((), u.dtype) if scale is None else jnp.asarray(scale, u.dtype)
    s = jnp.broadcast_to(s, shape[:-1]).reshape(tokens)
    z, w = jnp.reshape(logits, (tokens, vocab)), jnp.reshape(u, (tokens, vocab))
    return _chunked(z, w, s, min(chunk_size, tokens)).reshape(shape)


def _chunked(z: jax.Array, w: jax.Array, s: jax.Array, k: int) -> jax.Array:
    tokens = z.shape[0]
    if k == tokens:
        return _block(z, w, s)

    def body(i, w):
        start = i * k
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, k)
        # `w` is the loop's carry: XLA updates it in place, one chunk at a time.
        return jax.lax.dynamic_update_slice_in_dim(w, _block(take(z), take(w), take(s)), start, 0)

    full = tokens // k
    w = jax.lax.fori_loop(0, full, body, w)
    if tokens % k:  # the last, smaller chunk; never a clamped re-read of finished rows
        start = full * k
        w = w.at[start:].set(_block(z[start:], w[start:], s[start:]))
    return w


def _apply_scaled(scale: jax.Array, logits: jax.Array, u: jax.Array) -> jax.Array:
    return softmax_hessian_vp(logits, u, scale)


def softmax_cross_entropy_hessian(
    logits: jax.Array, labels: jax.Array, weights: Any = None
) -> jax.tree_util.Partial:
    r"""The Hessian of :func:`softmax_cross_entropy` in the logits, as a linear map.

    Args:
      logits, labels, weights: as for :func:`softmax_cross_entropy`.

    Returns:
      ``hess(logits, u) -> H u``, a ``jax.tree_util.Partial`` (a pytree holding only one
      scale :math:`w_t s_t / T` per token), applied by :func:`softmax_hessian_vp`.

    Example (one token, uniform over 2 classes; the mean is over that one token):
      >>> import jax.numpy as jnp
      >>> from jaxcurv.losses import softmax_cross_entropy_hessian
      >>> z = jnp.zeros((1, 2))
      >>> softmax_cross_entropy_hessian(z, jnp.array([1]))(z, jnp.array([[1.0, 0.0]]))
      Array([[ 0.25, -0.25]], dtype=float32)
    """
    name = "softmax_cross_entropy"
    logits, labels, weights = _check_inputs(name, logits, labels, weights)
    return jax.tree_util.Partial(_apply_scaled, _token_scale(logits, labels, weights))


# Losses whose Hessian in the outputs jaxcurv applies in closed form, with the builder of
# that Hessian (same arguments as the loss; returns `(outputs, u) -> H u`).
_CLOSED_FORMS = ((softmax_cross_entropy, softmax_cross_entropy_hessian),)


def closed_form_hessian(loss_fn: Callable) -> Callable | None:
    """The closed-form Hessian builder of a loss jaxcurv knows, else ``None``.

    Recognised: the known losses themselves (``jaxcurv.softmax_cross_entropy``) and
    ``functools.partial`` of them binding keywords only. A wrapper (``lambda o, y:
    softmax_cross_entropy(o, y)``) is not recognised and takes the generic path: its
    products are the same to rounding, its linearized operator stores more.

    Example:
      >>> import functools
      >>> import jaxcurv
      >>> from jaxcurv.losses import closed_form_hessian
      >>> closed_form_hessian(jaxcurv.softmax_cross_entropy).__name__
      'softmax_cross_entropy_hessian'
      >>> closed_form_hessian(lambda o, y: jaxcurv.softmax_cross_entropy(o, y)) is None
      True
    """
    keywords = {}
    if isinstance(loss_fn, functools.partial) and not loss_fn.args:
        loss_fn, keywords = loss_fn.func, dict(loss_fn.keywords)
    for known, build in _CLOSED_FORMS:
        if loss_fn is known:
            return functools.partial(build, **keywords) if keywords else build
    return None
