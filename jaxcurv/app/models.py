"""Small reference models in plain JAX: MLPs and the deep autoencoders of Martens (2010).

A model is a :class:`Model`: ``init(key) -> params``, ``apply(params, inputs) -> outputs``
and ``loss(outputs, targets) -> scalar`` kept apart, because Gauss-Newton curvature
(:func:`jaxcurv.ggn_operator`, ``hessian_free(curvature="ggn")``) needs the network and the
loss separately. Parameters are a list with one ``{"w": (fan_in, fan_out), "b": (fan_out,)}``
dict per layer; nothing here flattens them.

Outputs are pre-activation *logits* wherever the loss has a matching canonical link
(logistic outputs with cross-entropy, softmax with cross-entropy): the loss applies the
nonlinearity itself, which keeps it numerically stable and makes the Gauss-Newton matrix
the one Schraudolph (2002) and Martens (2010) use.

References:
  Martens, J. Deep learning via Hessian-free optimization. ICML 2010.
  Schraudolph, N. N. Fast curvature matrix-vector products for second-order gradient
  descent. Neural Computation 14 (2002).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_choice, check_int

__all__ = [
    "ACTIVATIONS",
    "Model",
    "deep_autoencoder",
    "init_mlp",
    "mean_squared_error",
    "mlp",
    "mlp_apply",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
]

Params = list[dict[str, jax.Array]]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "logistic": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
}

_INITS = ("sparse", "glorot")


class Model(NamedTuple):
    """A network and its loss, kept apart.

    Attributes:
      init: ``key -> params``.
      apply: ``(params, inputs) -> outputs``; ``inputs`` is ``(batch, sizes[0])``.
      loss: ``(outputs, targets) -> scalar``, averaged over the batch.
      sizes: layer widths, input first.
      activations: one activation name per layer (the last is usually ``"linear"``).
      name: a short description, also used to check that a checkpoint fits this model.
    """

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    loss: Callable[[jax.Array, jax.Array], jax.Array]
    sizes: tuple[int, ...]
    activations: tuple[str, ...]
    name: str


def sigmoid_cross_entropy(logits: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    r"""Cross-entropy of logistic outputs, summed over features and averaged over the batch.

    .. math:: \ell = -\frac{1}{B}\sum_{b,i} t_{bi}\log\sigma(z_{bi})
              + (1-t_{bi})\log(1-\sigma(z_{bi}))

    computed stably as :math:`\mathrm{softplus}(z) - t z`. Targets may be any value in
    ``[0, 1]`` (grey pixels), as in Martens' autoencoder experiments.

    Args:
      logits: ``(batch, features)`` pre-sigmoid outputs.
      targets: same shape, values in ``[0, 1]``.

    Returns:
      A scalar.

    Example:
      >>> float(sigmoid_cross_entropy(jnp.zeros((2, 3)), jnp.ones((2, 3))))  # 3 log 2
      2.079...
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets, logits.dtype)
    _check_same_shape("sigmoid_cross_entropy", logits, targets)
    per_example = jnp.sum(jax.nn.softplus(logits) - targets * logits, axis=-1)
    return jnp.mean(per_example)


def softmax_cross_entropy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Softmax cross-entropy with integer labels, averaged over the batch.

    Args:
      logits: ``(batch, classes)``.
      labels: ``(batch,)`` integers in ``[0, classes)``.

    Returns:
      A scalar.

    Example:
      >>> float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
      1.386...
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`softmax_cross_entropy` needs `labels` of shape {logits.shape[:-1]} (one integer "
            f"class per row of `logits`), got {labels.shape}."
        )
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1))


def mean_squared_error(outputs: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    r"""Half the squared error, summed over features and averaged over the batch.

    .. math:: \ell = \frac{1}{2B}\sum_{b,i}(y_{bi} - t_{bi})^2

    Example:
      >>> float(mean_squared_error(jnp.ones((2, 2)), jnp.zeros((2, 2))))
      1.0
    """
    outputs = jnp.asarray(outputs)
    targets = jnp.asarray(targets, outputs.dtype)
    _check_same_shape("mean_squared_error", outputs, targets)
    return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


_LOSSES = {
    "sigmoid_cross_entropy": sigmoid_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
    "mse": mean_squared_error,
}


def _check_same_shape(fn: str, outputs: jax.Array, targets: jax.Array) -> None:
    if outputs.shape != targets.shape:
        raise ValueError(
            f"`{fn}` needs `targets` shaped like the outputs {outputs.shape}, got {targets.shape}."
        )


def _check_sizes(fn: str, sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if len(sizes) < 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(
            f"`{fn}(sizes=...)` must be at least two positive integers (input width first), "
            f"got {sizes!r}."
        )
    return sizes


def init_mlp(
    key: jax.Array,
    sizes: Sequence[int],
    *,
    init: str = "glorot",
    num_nonzero: int = 15,
    dtype: Any = jnp.float32,
) -> Params:
    """Initial parameters of a dense network with layer widths ``sizes``.

    ``init="sparse"`` is Martens' (2010) sparse initialization: each unit gets
    ``min(num_nonzero, fan_in)`` nonzero incoming weights drawn from N(0, 1), at input
    positions chosen uniformly without replacement, and a zero bias. It keeps units from
    saturating in deep logistic networks while letting their incoming weights be large.
    ``init="glorot"`` is Glorot-uniform weights and zero biases.

    Args:
      key: a PRNG key.
      sizes: layer widths, input first.
      init: ``"sparse"`` or ``"glorot"``.
      num_nonzero: incoming weights per unit for the sparse scheme (15 in the paper).
      dtype: floating dtype of the parameters.

    Returns:
      A list with one ``{"w": (sizes[i], sizes[i+1]), "b": (sizes[i+1],)}`` per layer.

    Raises:
      ValueError: for bad ``sizes``, an unknown ``init`` or a non-positive ``num_nonzero``.

    Example:
      >>> p = init_mlp(jax.random.key(0), (784, 400, 6), init="sparse")
      >>> [int((layer["w"] != 0).sum(axis=0).max()) for layer in p]
      [15, 15]

    References:
      Martens, J. Deep learning via Hessian-free optimization. ICML 2010, section 5.
    """
    sizes = _check_sizes("init_mlp", sizes)
    check_choice("init_mlp(init=...)", init, _INITS)
    num_nonzero = check_int(
        "init_mlp(num_nonzero=...)", num_nonzero, minimum=1, requirement="a positive integer"
    )
    return _init_mlp(key, sizes, init, num_nonzero, jnp.dtype(dtype))


# Jitted as a whole, with one normal and one uniform draw for the whole network sliced
# into layers: compiling the random-bit generator once instead of once per layer shape
# makes this several times cheaper to compile, which dominates its cost.
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _init_mlp(key, sizes, init, num_nonzero, dtype) -> Params:
    counts = [fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)]
    k_normal, k_uniform = jax.random.split(key)
    normal = jax.random.normal(k_normal, (sum(counts),), dtype)
    uniform = jax.random.uniform(k_uniform, (sum(counts),), dtype)
    params, start = [], 0
    for count, fan_in, fan_out in zip(counts, sizes[:-1], sizes[1:], strict=True):
        # Drawn as (fan_out, fan_in): one row per unit, its incoming weights.
        z = normal[start : start + count].reshape(fan_out, fan_in)
        u = uniform[start : start + count].reshape(fan_out, fan_in)
        start += count
        if init == "sparse":
            if fan_in > num_nonzero:
                # The top-k positions of iid uniforms are a uniformly random k-subset.
                _, idx = jax.lax.top_k(u, num_nonzero)
                rows = jnp.arange(fan_out)[:, None]
                mask = jnp.zeros((fan_out, fan_in), bool).at[rows, idx].set(True)
                z = jnp.where(mask, z, jnp.zeros((), dtype))
            w = z.T
        else:
            limit = (6.0 / (fan_in + fan_out)) ** 0.5
            w = ((2.0 * u - 1.0) * limit).astype(dtype).T
        params.append({"w": w, "b": jnp.zeros((fan_out,), dtype)})
    return params


def mlp_apply(
    params: Params, inputs: jax.typing.ArrayLike, activations: Sequence[str]
) -> jax.Array:
    """Run the dense network: ``x <- act_i(x @ w_i + b_i)`` for each layer in turn.

    Args:
      params: as returned by :func:`init_mlp`.
      inputs: ``(batch, sizes[0])``.
      activations: one name from :data:`ACTIVATIONS` per layer (static).

    Returns:
      ``(batch, sizes[-1])``.
    """
    if len(activations) != len(params):
        raise ValueError(
            f"`mlp_apply` got {len(params)} layers of `params` but {len(activations)} "
            f"`activations`; give one activation per layer."
        )
    x = jnp.asarray(inputs)
    for layer, act in zip(params, activations, strict=True):
        h = x @ layer["w"]
        # Explicit broadcast of the bias over the batch axes (no implicit rank promotion).
        b = jnp.reshape(layer["b"], (1,) * (h.ndim - 1) + layer["b"].shape)
        x = ACTIVATIONS[act](h + b)
    return x


def _check_activation(fn: str, name: str, value: str) -> None:
    check_choice(f"{fn}({name}=...)", value, tuple(ACTIVATIONS))


def _build(sizes, activations, loss, init, dtype, name, num_nonzero=15) -> Model:
    loss_fn = _LOSSES[loss]
    activations = tuple(activations)

    def init_fn(key: jax.Array) -> Params:
        return init_mlp(key, sizes, init=init, num_nonzero=num_nonzero, dtype=dtype)

    def apply_fn(params: Params, inputs: jax.typing.ArrayLike) -> jax.Array:
        return mlp_apply(params, inputs, activations)

    return Model(init_fn, apply_fn, loss_fn, tuple(sizes), activations, name)


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "tanh",
    loss: str = "mse",
    init: str = "glorot",
    dtype: Any = jnp.float32,
) -> Model:
    """A multilayer perceptron with a linear output layer and the named loss.

    Args:
      sizes: layer widths, input first.
      activation: hidden-unit nonlinearity, a key of :data:`ACTIVATIONS`.
      loss: ``"mse"``, ``"softmax_cross_entropy"`` (integer targets) or
        ``"sigmoid_cross_entropy"``; the output layer is linear (logits).
      init: ``"glorot"`` or ``"sparse"``.
      dtype: parameter dtype.

    Returns:
      A :class:`Model`.

    Example:
      >>> m = mlp((2, 8, 1))
      >>> p = m.init(jax.random.key(0))
      >>> m.apply(p, jnp.ones((5, 2))).shape
      (5, 1)
    """
    sizes = _check_sizes("mlp", sizes)
    _check_activation("mlp", "activation", activation)
    check_choice("mlp(loss=...)", loss, tuple(_LOSSES))
    check_choice("mlp(init=...)", init, _INITS)
    acts = (activation,) * (len(sizes) - 2) + ("linear",)
    name = f"mlp {'-'.join(map(str, sizes))} {activation} {loss}"
    return _build(sizes, acts, loss, init, dtype, name)


def deep_autoencoder(
    encoder_sizes: Sequence[int] = (784, 400, 200, 100, 50, 25, 6),
    *,
    activation: str = "logistic",
    init: str = "sparse",
    dtype: Any = jnp.float32,
) -> Model:
    """The deep autoencoder of Hinton & Salakhutdinov (2006) as trained by Martens (2010).

    The encoder has widths ``encoder_sizes`` and the decoder mirrors it (CURVES:
    784-400-200-100-50-25-6-25-50-100-200-400-784). Hidden units are logistic, the code
    layer is linear, and the output layer gives logits for the cross-entropy of logistic
    outputs (:func:`sigmoid_cross_entropy`). Parameters start from Martens' sparse
    initialization.

    Args:
      encoder_sizes: widths from the input to the code layer; the default is Martens'
        CURVES encoder.
      activation: hidden-unit nonlinearity (``"logistic"`` in the paper).
      init: ``"sparse"`` (the paper) or ``"glorot"``.
      dtype: parameter dtype.

    Returns:
      A :class:`Model` whose ``apply`` maps ``(batch, d)`` images to ``(batch, d)`` logits
      and whose ``loss(logits, images)`` is the reconstruction cross-entropy.

    Example:
      >>> m = deep_autoencoder((16, 8, 2))
      >>> m.sizes, m.activations
      ((16, 8, 2, 8, 16), ('logistic', 'linear', 'logistic', 'linear'))

    References:
      Hinton and Salakhutdinov, Science 313 (2006); Martens, ICML 2010, section 6.
    """
    encoder_sizes = _check_sizes("deep_autoencoder", encoder_sizes)
    _check_activation("deep_autoencoder", "activation", activation)
    check_choice("deep_autoencoder(init=...)", init, _INITS)
    sizes = encoder_sizes + encoder_sizes[-2::-1]
    depth = len(encoder_sizes) - 1  # layers in the encoder; the last one feeds the code
    acts = (activation,) * (depth - 1) + ("linear",) + (activation,) * (depth - 1) + ("linear",)
    name = f"autoencoder {'-'.join(map(str, sizes))} {activation} sigmoid_cross_entropy"
    return _build(sizes, acts, "sigmoid_cross_entropy", init, dtype, name)
