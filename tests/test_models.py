"""Reference models: Martens' autoencoder layout, sparse init, forward pass and losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv.app import models


def _np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_curves_autoencoder_layout():
    m = models.deep_autoencoder()
    assert m.sizes == (784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784)
    # Logistic hidden units, linear code layer (the 6th), linear output (logits).
    assert m.activations[5] == "linear" and m.activations[-1] == "linear"
    assert [i for i, a in enumerate(m.activations) if a != "logistic"] == [5, 11]
    p = jax.eval_shape(m.init, jax.random.key(0))
    assert [layer["w"].shape for layer in p] == list(zip(m.sizes[:-1], m.sizes[1:], strict=True))
    assert [layer["b"].shape for layer in p] == [(s,) for s in m.sizes[1:]]


def test_sparse_init_has_exactly_15_incoming_weights_per_unit():
    p = models.init_mlp(jax.random.key(1), (784, 400, 25, 6, 25), init="sparse")
    weights = []
    for layer in p:
        w = np.asarray(layer["w"])
        fan_in = w.shape[0]
        np.testing.assert_array_equal((w != 0).sum(axis=0), min(15, fan_in))
        np.testing.assert_array_equal(np.asarray(layer["b"]), 0.0)
        weights.append(w[w != 0])
    # The nonzero weights are N(0, 1): ~6.5k draws, so mean and std are tight.
    nz = np.concatenate(weights)
    assert abs(nz.mean()) < 0.05 and abs(nz.std() - 1.0) < 0.05
    # Units choose different inputs (not one shared pattern).
    masks = np.asarray(p[0]["w"] != 0)
    assert len({tuple(np.flatnonzero(masks[:, j])) for j in range(masks.shape[1])}) > 390
    # Every input position is used about equally often (uniform choice).
    counts = masks.sum(axis=1)
    assert counts.mean() == pytest.approx(400 * 15 / 784)


def test_init_deterministic_and_dtype():
    a = models.init_mlp(jax.random.key(3), (10, 20, 5), init="sparse", dtype=jnp.float64)
    b = models.init_mlp(jax.random.key(3), (10, 20, 5), init="sparse", dtype=jnp.float64)
    c = models.init_mlp(jax.random.key(4), (10, 20, 5), init="sparse", dtype=jnp.float64)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == jnp.float64
    assert not np.array_equal(a[0]["w"], c[0]["w"])


def test_glorot_init_bounds():
    p = models.init_mlp(jax.random.key(0), (30, 50), init="glorot")
    limit = np.sqrt(6.0 / 80)
    w = np.asarray(p[0]["w"])
    assert np.all(np.abs(w) <= limit) and np.abs(w).max() > 0.9 * limit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_matches_numpy(dtype):
    m = models.deep_autoencoder((12, 7, 3), dtype=dtype)
    rng = np.random.default_rng(0)
    # Dense random weights (the initializations have their own tests) exercise every
    # input of every unit.
    p = [
        {
            "w": jnp.asarray(rng.normal(size=(a, b)), dtype),
            "b": jnp.asarray(rng.normal(size=b), dtype),
        }
        for a, b in zip(m.sizes[:-1], m.sizes[1:], strict=True)
    ]
    x = rng.uniform(size=(5, 12)).astype(dtype)
    out = np.asarray(m.apply(p, x))
    h = x.astype(np.float64)
    for layer, act in zip(p, m.activations, strict=True):
        h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        h = _np_sigmoid(h) if act == "logistic" else h
    assert out.dtype == dtype
    np.testing.assert_allclose(out, h, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)
    # An unbatched input works too.
    np.testing.assert_allclose(np.asarray(m.apply(p, x[0])), out[0], rtol=1e-6)


def test_sigmoid_cross_entropy_matches_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 9)) * 3
    t = rng.uniform(size=(6, 9))  # grey targets, as for CURVES
    s = _np_sigmoid(z)
    want = np.mean(np.sum(-(t * np.log(s) + (1 - t) * np.log(1 - s)), axis=1))
    np.testing.assert_allclose(float(models.sigmoid_cross_entropy(z, t)), want, rtol=1e-12)
    # Stable at saturated logits where the naive formula would give inf.
    big = models.sigmoid_cross_entropy(jnp.array([[800.0, -800.0]]), jnp.array([[1.0, 0.0]]))
    assert float(big) == pytest.approx(0.0, abs=1e-12)


def test_softmax_cross_entropy_and_mse_match_numpy():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(7, 4))
    y = rng.integers(0, 4, size=7)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    np.testing.assert_allclose(
        float(models.softmax_cross_entropy(z, y)), -np.mean(logp[np.arange(7), y]), rtol=1e-12
    )
    o, t = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    np.testing.assert_allclose(
        float(models.mean_squared_error(o, t)), 0.5 * np.mean(np.sum((o - t) ** 2, 1)), rtol=1e-12
    )


def test_model_and_loss_apart_compose_to_the_objective():
    m = models.mlp((3, 8, 2), activation="tanh", loss="mse")
    p = m.init(jax.random.key(0))
    x = jnp.ones((4, 3))
    y = jnp.zeros((4, 2))
    out = m.apply(p, x)
    assert out.shape == (4, 2)
    np.testing.assert_allclose(m.loss(out, y), 0.5 * jnp.mean(jnp.sum(out**2, -1)))
    assert "mlp 3-8-2" in m.name


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.mlp((3,)), "sizes"),
        (lambda: models.mlp((3, 0, 2)), "sizes"),
        (lambda: models.mlp((3, 2), activation="gelu"), "activation"),
        (lambda: models.mlp((3, 2), loss="hinge"), "loss"),
        (lambda: models.deep_autoencoder((8, 2), init="zeros"), "init"),
        (lambda: models.init_mlp(jax.random.key(0), (3, 2), num_nonzero=0), "num_nonzero"),
        (lambda: models.sigmoid_cross_entropy(jnp.ones((2, 3)), jnp.ones((2, 4))), "targets"),
        (lambda: models.softmax_cross_entropy(jnp.ones((2, 3)), jnp.ones((3,))), "labels"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
