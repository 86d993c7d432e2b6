"""Tiny float64 problems shared by the micro-batch, wrt, Fisher, streaming and block tests.

A 3-4-2 tanh MLP (26 parameters) with the data passed as arguments, never closed over, so
one function serves every batch and every split of it into micro-batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def mlp_params(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "l1": {
            "w": jnp.asarray(rng.standard_normal((3, 4))),
            "b": jnp.asarray(rng.standard_normal(4) * 0.1),
        },
        "l2": {
            "w": jnp.asarray(rng.standard_normal((4, 2))),
            "b": jnp.asarray(rng.standard_normal(2) * 0.1),
        },
    }


def mlp_data(n: int = 6, seed: int = 1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, 3))), jnp.asarray(rng.integers(0, 2, n))


def model_fn(p, x):
    return jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] + p["l2"]["b"]


def loss_fn(logits, y):
    """Softmax cross-entropy, a mean over examples."""
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def objective(p, x, y):
    return loss_fn(model_fn(p, x), y)


@jax.jit
def _dense_hessian(p, x, y):
    flat, unravel = ravel_pytree(p)
    return jax.hessian(lambda z: objective(unravel(z), x, y))(flat)


def dense_hessian(p, x, y) -> np.ndarray:
    """The oracle: ``jax.hessian`` of the flattened objective on the whole batch."""
    return np.asarray(_dense_hessian(p, x, y))


@jax.jit
def _per_example_hessians(p, x, y):
    return jax.vmap(lambda xi, yi: _dense_hessian(p, xi[None], yi[None]))(x, y)


def per_example_hessians(p, x, y) -> np.ndarray:
    """``(n, N, N)``: the Hessian of each one-example loss (the summands of the mean)."""
    return np.asarray(_per_example_hessians(p, x, y))


@jax.jit
def _jacobian_and_loss_hessian(p, x, y):
    flat, unravel = ravel_pytree(p)
    out = model_fn(p, x)
    jac = jax.jacobian(lambda z: model_fn(unravel(z), x).ravel())(flat)
    h = jax.hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.ravel())
    return jac, h


def dense_ggn(p, x, y) -> np.ndarray:
    """The oracle: ``J^T H_loss J`` from the dense Jacobian and the loss's dense Hessian."""
    jac, h = map(np.asarray, _jacobian_and_loss_hessian(p, x, y))
    return jac.T @ h @ jac


def leaf_indices(p, flags) -> np.ndarray:
    """Indices into ``ravel_pytree(p)`` of the leaves whose flag is set (tree order)."""
    sizes = [leaf.size for leaf in jax.tree.leaves(p)]
    starts = np.cumsum([0] + sizes[:-1])
    return np.concatenate([np.arange(s, s + n) for s, n, f in zip(starts, sizes, flags) if f])
