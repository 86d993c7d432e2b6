"""One process of the multi-process test (``tests/test_multiprocess.py``); also its oracle.

Run as ``python -m tests._multiprocess_worker PROCESS_ID NUM_PROCESSES PORT OUT.npz``: the
process joins JAX's own multi-process runtime on a localhost coordinator, loads *its*
slice of the batch (as a data loader on each host would), lays the global batch over every
device of every process with :func:`jaxcurv.sharding.shard_batch`, and runs the library's
functions on it. Process 0 writes the results; :func:`compute` on one device is the oracle.
"""

from __future__ import annotations

import os
import sys

BATCH, D_IN, HIDDEN, D_OUT = 64, 6, 8, 3
DEVICES_PER_PROCESS = 2


def problem():
    """Parameters, inputs, targets and a tangent, in float64, the same in every process."""
    import jax
    import jax.numpy as jnp

    k = jax.random.split(jax.random.key(42), 5)
    params = {
        "w1": jax.random.normal(k[0], (D_IN, HIDDEN), jnp.float64) / D_IN**0.5,
        "b1": 0.1 * jax.random.normal(k[1], (HIDDEN,), jnp.float64),
        "w2": jax.random.normal(k[2], (HIDDEN, D_OUT), jnp.float64) / HIDDEN**0.5,
    }
    x = jax.random.normal(k[3], (BATCH, D_IN), jnp.float64)
    y = jnp.sin(x[:, :D_OUT]) + 0.1 * jax.random.normal(k[4], (BATCH, D_OUT), jnp.float64)
    v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), params)
    return params, x, y, v


def model_fn(p, x):
    import jax.numpy as jnp

    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def loss_fn(out, y):
    import jax.numpy as jnp

    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def objective(p, x, y):
    return loss_fn(model_fn(p, x), y)


def compute(params, x, y, v, num_updates=3):
    """Every quantity the test compares, as a flat dict of numpy arrays."""
    import jax
    import numpy as np
    import optax

    import jaxcurv

    @jax.jit
    def curvature(params, x, y, v):
        op = jaxcurv.hessian_operator(objective, params, x, y)
        top = jaxcurv.eigenvalues(op, 2, key=jax.random.key(1))
        trace = jaxcurv.hutchinson_trace(op, jax.random.key(2), 8)
        # Micro-batches of 16 of the 64 examples: each spans both processes' shards.
        mb = jaxcurv.hessian_operator(objective, params, x, y, micro_batch=16)
        hv = jaxcurv.hvp(objective, params, v, x, y)
        return hv, op @ v, mb @ v, top.eigenvalues, trace.estimate

    opt = jaxcurv.hessian_free(damping=1.0, cg_maxiter=10)  # Gauss-Newton curvature
    value_fn = jaxcurv.ModelAndLoss(model_fn, loss_fn)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(value_fn)(params, x=x, y=y)
        updates, state = opt.update(grads, state, params, value_fn=value_fn, value=loss, x=x, y=y)
        return optax.apply_updates(params, updates), state

    hv, opv, mbv, top, trace = curvature(params, x, y, v)
    state = opt.init(params)
    losses = []
    for _ in range(num_updates):
        params, state = step(params, state, x, y)
        losses.append(state.new_loss)
    out = {"top": top, "trace": trace, "losses": np.stack([_host(a) for a in losses])}
    for name in params:
        out[f"hvp_{name}"], out[f"op_{name}"], out[f"mb_{name}"] = hv[name], opv[name], mbv[name]
        out[f"params_{name}"] = params[name]
    return {k: _host(a) for k, a in out.items()}


def _host(a):
    """A fully replicated global array as numpy (any process holds all of it)."""
    import numpy as np

    if hasattr(a, "is_fully_replicated") and not a.is_fully_replicated:
        raise AssertionError(f"expected a replicated result, got sharding {a.sharding}")
    return np.asarray(a.addressable_shards[0].data) if hasattr(a, "addressable_shards") else a


def main(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}"
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    from jaxcurv.sharding import data_parallel_mesh, replicate, shard_batch

    assert jax.process_count() == num_processes
    mesh = data_parallel_mesh()  # every device of every process
    params, x, y, v = problem()
    rows = slice(process_id * BATCH // num_processes, (process_id + 1) * BATCH // num_processes)
    xs, ys = shard_batch((np.asarray(x)[rows], np.asarray(y)[rows]), mesh)
    assert xs.shape == x.shape and not xs.is_fully_addressable  # shards on other processes
    result = compute(replicate(params, mesh), xs, ys, replicate(v, mesh))
    if process_id == 0:
        tmp = out_path + ".tmp.npz"
        np.savez(tmp, num_devices=jax.device_count(), **result)
        os.replace(tmp, out_path)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
