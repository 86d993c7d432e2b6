"""Parameters sharded over the devices (FSDP / ZeRO-3) on 8 forced CPU devices.

The parameters are split with :func:`jaxcurv.sharding.shard_params` over the same mesh
axis as the batch. Two properties:

* the results equal those with replicated parameters on the same mesh, and keep the
  parameters' sharding (so the CG iterates, the Lanczos basis and the optimizer state are
  sharded too, and memory per device shrinks with the device count);
* the compiled programs never all-gather the whole parameter vector: FSDP gathers one
  leaf at a time where the model uses it, so no all-gather in the HLO may have a
  dimension as long as the parameter count (a raveled parameter vector would).

Tolerance: the sharded and replicated programs reduce in other orders; as in
``test_multidevice.py`` (Higham's reordering bound, ~3e-14 relative for these sums in
float64, amplified by the damped solves) RTOL = 1e-9 keeps a margin of ~3e4.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcurv
from jaxcurv.sharding import data_parallel_mesh, fsdp_spec, replicate, shard_batch, shard_params

pytestmark = pytest.mark.multidevice

if jax.device_count() < 8:
    pytest.skip("needs 8 devices (`make test` forces them)", allow_module_level=True)

RTOL = 1e-9
BATCH, D_IN, HIDDEN, D_OUT = 32, 16, 64, 8


def model_fn(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def loss_fn(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def objective(p, x, y):
    return loss_fn(model_fn(p, x), y)


def _problem():
    k = jax.random.split(jax.random.key(7), 5)
    params = {
        "w1": jax.random.normal(k[0], (D_IN, HIDDEN), jnp.float64) / D_IN**0.5,
        "b1": 0.1 * jax.random.normal(k[1], (HIDDEN,), jnp.float64),
        "w2": jax.random.normal(k[2], (HIDDEN, D_OUT), jnp.float64) / HIDDEN**0.5,
        "b2": jnp.full((D_OUT,), 0.05, jnp.float64),
    }
    x = jax.random.normal(k[3], (BATCH, D_IN), jnp.float64)
    y = jnp.sin(x[:, :D_OUT]) + 0.1 * jax.random.normal(k[4], (BATCH, D_OUT), jnp.float64)
    return params, x, y


def _calls():
    """name -> f(params, x, y): every library entry point the test compiles."""
    opt = jaxcurv.hessian_free(damping=1.0, cg_maxiter=8)
    value_fn = jaxcurv.ModelAndLoss(model_fn, loss_fn)

    def hf_steps(p, x, y):
        state = opt.init(p)
        for _ in range(2):
            loss, g = jax.value_and_grad(value_fn)(p, x=x, y=y)
            u, state = opt.update(g, state, p, value_fn=value_fn, value=loss, x=x, y=y)
            p = optax.apply_updates(p, u)
        return p, state.cg_init, state.new_loss

    v_of = lambda p: jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size)).reshape(a.shape), p)
    return {
        "hvp": lambda p, x, y: jaxcurv.hvp(objective, p, v_of(p), x, y),
        "ggn": lambda p, x, y: jaxcurv.ggn_operator(model_fn, loss_fn, p, x=x, y=y) @ v_of(p),
        "cg": lambda p, x, y: jaxcurv.cg(
            jaxcurv.ggn_operator(model_fn, loss_fn, p, x=x, y=y), v_of(p), damping=0.1, maxiter=20
        )[0],
        "eigenvalues": lambda p, x, y: jaxcurv.eigenvalues(
            jaxcurv.hessian_operator(objective, p, x, y), 2, return_eigenvectors=True
        )[:2],
        "hutchinson": lambda p, x, y: (
            jaxcurv.hutchinson_trace(
                jaxcurv.hessian_operator(objective, p, x, y), jax.random.key(3), 4
            ).estimate
        ),
        "hessian_free": hf_steps,
    }


CALLS = tuple(_calls())


@pytest.fixture(scope="module")
def layouts():
    params, x, y = _problem()
    mesh = data_parallel_mesh()
    x, y = shard_batch((x, y), mesh)
    return mesh, (shard_params(params, mesh), x, y), (replicate(params, mesh), x, y)


def test_shard_params_splits_each_leaf_along_its_largest_divisible_dimension(layouts):
    mesh, (params, _, _), _ = layouts
    assert params["w1"].sharding.spec == fsdp_spec((D_IN, HIDDEN), "batch", 8)
    assert params["w1"].sharding.spec[1] == "batch"  # 64 > 16, both divisible by 8
    for leaf in jax.tree.leaves(params):
        shard = leaf.addressable_shards[0].data
        assert shard.size == leaf.size // 8  # every leaf here has a dimension 8 divides


def test_fsdp_spec_replicates_what_no_dimension_of_divides():
    assert fsdp_spec((5, 3), "batch", 8) == jax.sharding.PartitionSpec()


@pytest.fixture(scope="module")
def compiled(layouts):
    """name -> (compiled on sharded params, its HLO text): one compile per entry point."""
    _, sharded, _ = layouts
    out = {}
    for name, fn in _calls().items():
        exe = jax.jit(fn).lower(*sharded).compile()
        out[name] = exe, exe.as_text()
    return out


@pytest.mark.parametrize("name", CALLS)
def test_sharded_parameters_give_the_replicated_results(layouts, compiled, name):
    _, sharded, replicated = layouts
    out, ref = compiled[name][0](*sharded), jax.jit(_calls()[name])(*replicated)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        scale = float(np.max(np.abs(b))) if np.size(b) else 0.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=RTOL * scale)


# XLA may replicate a leaf whose shards would hold a handful of numbers (the 8-entry bias
# here); the weight matrices are what fills memory, and those must stay split.
LARGE = 512


@pytest.mark.parametrize("name", ["hvp", "ggn", "cg", "hessian_free"])
def test_large_results_shaped_like_params_stay_sharded(layouts, compiled, name):
    _, sharded, _ = layouts
    params = sharded[0]
    out = compiled[name][0](*sharded)
    out = out[0] if name == "hessian_free" else out
    for a, p in zip(jax.tree.leaves(out), jax.tree.leaves(params)):
        if p.size >= LARGE:
            assert a.addressable_shards[0].data.size == p.size // 8, (name, a.sharding)


@pytest.mark.parametrize("name", CALLS)
def test_no_all_gather_of_the_whole_parameter_vector(layouts, compiled, name):
    _, sharded, _ = layouts
    n = sum(leaf.size for leaf in jax.tree.leaves(sharded[0]))
    hlo = compiled[name][1]
    shapes = re.findall(r"= \w+\[([\d,]*)\][^\n]*? all-gather(?:-start)?\(", hlo)
    shapes = [tuple(int(d) for d in s.split(",") if d) for s in shapes]
    assert shapes, "no all-gather at all: the parameters were not sharded"
    assert max(leaf.size for leaf in jax.tree.leaves(sharded[0])) < n  # the check can tell
    too_long = [s for s in shapes if s and max(s) >= n]
    assert not too_long, f"{name} all-gathers {too_long}, as long as all {n} parameters"
