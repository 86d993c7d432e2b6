"""Flax as a real client: a linen CNN with BatchNorm and dropout, an NNX MLP.

Each is trained by ``hessian_free`` in a jitted optax loop to a stated loss drop, and
given to the curvature tools on a float64 copy, checked against dense ``jax.hessian``
(``tests/_client_checks.py``). Sizes are tiny (58 and 33 parameters) so the file runs in
seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcurv
from tests._client_checks import check_curvature_tools, fast_jit

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")

to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


class CNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> mean pool -> dropout -> Dense: 58 parameters."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(4, (3, 3), padding="VALID")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(2)(x)


def _images():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 6, 6, 1)), jnp.float32)
    # The label says which half of the image is brighter: a CNN can learn it.
    y = jnp.asarray(x[:, :3].mean(axis=(1, 2, 3)) > x[:, 3:].mean(axis=(1, 2, 3)), jnp.int32)
    return x, y


def _cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_linen_cnn_with_batchnorm_and_dropout():
    cnn, (x, y) = CNN(), _images()
    variables = cnn.init(jax.random.key(0), x[:1], train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]

    def model_fn(params, x, batch_stats, key):
        # Train mode: batch statistics, a dropout mask from `key`, new running averages.
        return cnn.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )

    objective = jaxcurv.ModelAndLoss(model_fn, _cross_entropy, model_has_aux=True)
    opt = jaxcurv.hessian_free(damping=1.0)

    @jax.jit
    def step(params, batch_stats, state, key):
        batch = dict(x=x, y=y, batch_stats=batch_stats, key=key)
        (loss, new), grads = jax.value_and_grad(objective, has_aux=True)(params, **batch)
        updates, state = opt.update(grads, state, params, value_fn=objective, value=loss, **batch)
        batch_stats = optax.tree.where(state.rejected, batch_stats, new["batch_stats"])
        return optax.apply_updates(params, updates), batch_stats, state

    def eval_loss(params, batch_stats):  # inference mode: running averages, no dropout
        return float(
            _cross_entropy(
                cnn.apply({"params": params, "batch_stats": batch_stats}, x, train=False), y
            )
        )

    before, state = eval_loss(params, batch_stats), opt.init(params)
    for i in range(20):
        params, batch_stats, state = step(
            params, batch_stats, state, jax.random.fold_in(jax.random.key(1), i)
        )
    after = eval_loss(params, batch_stats)
    # Measured: 0.695 -> 0.32 in 20 updates (x64 on; 0.22 without; 0.42 with XLA's backend
    # optimizations off, which only changes rounding): the inference-mode loss through
    # lagging BatchNorm averages and dropout is a noisy readout, so the bound asks for a
    # clear drop below chance (log 2 = 0.69) that holds with margin over all three: 0.8x.
    assert after < 0.8 * before, (before, after)
    assert step._cache_size() == 1
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((params, batch_stats)))

    # Curvature at the trained point, in float64, with the batch and one mask bound.
    model, loss = objective.bind(
        x=x[:16].astype(jnp.float64), y=y[:16], batch_stats=to64(batch_stats), key=jax.random.key(2)
    )
    check_curvature_tools(model, loss, to64(params), jax.random.key(3))


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(2, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))[:, 0]


def test_nnx_mlp_through_split_and_merge():
    graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
    x = jnp.linspace(-1.0, 1.0, 32).reshape(16, 2)
    y = jnp.sin(2.0 * x[:, 0]) * x[:, 1]

    def model_fn(params, x):
        return nnx.merge(graphdef, params)(x)

    def mse(outputs, y):
        return 0.5 * jnp.mean((outputs - y) ** 2)

    objective = jaxcurv.ModelAndLoss(model_fn, mse)
    opt = jaxcurv.hessian_free(damping=0.1)

    @fast_jit  # the drop asked is 100x below the one measured: no trajectory is that close
    def step(params, state):
        loss, grads = jax.value_and_grad(objective)(params, x, y)  # positional data
        updates, state = opt.update(grads, state, params, value_fn=objective, value=loss, x=x, y=y)
        return optax.apply_updates(params, updates), state

    before, state = float(objective(params, x, y)), opt.init(params)
    for _ in range(15):
        params, state = step(params, state)
    after = float(objective(params, x, y))
    # Measured: a drop by more than 50x; asked: 10x.
    assert after < 0.1 * before, (before, after)
    assert isinstance(params, nnx.State) and step._cache_size() == 1
    check_curvature_tools(*objective.bind(x=x, y=y), to64(params), jax.random.key(0))
