"""The curvature tools on a real client's tiny model, against dense ``jax.hessian`` oracles.

Shared by ``test_flax.py`` and ``test_equinox.py``: each gives ``model(params) -> outputs``
and ``loss(outputs) -> scalar`` with the batch bound (``ModelAndLoss.bind``) and float64
parameters, a few dozen of them.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jaxcurv

EPS64 = np.finfo(np.float64).eps

# On these tiny models a jitted program runs in milliseconds and compiles in seconds, most
# of them in XLA's backend optimisation (LLVM), which only makes the run faster: off, the
# files' compiles take about half the CPU time. The arithmetic is the same operations
# (rounding may differ by ulps, far inside every tolerance here). Older JAX without
# `jax.jit(compiler_options=)` compiles as usual.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_HAS_OPTIONS = "compiler_options" in inspect.signature(jax.jit).parameters


def fast_jit(fn):
    """``jax.jit(fn)``, compiled with XLA's backend optimisation off (see above)."""
    return jax.jit(fn, compiler_options=_FAST_COMPILE) if _HAS_OPTIONS else jax.jit(fn)


def dense_oracles(model, loss, params):
    """``(H, G)``: the Hessian of ``loss . model`` by ``jax.hessian`` on the flat parameters,
    and the Gauss-Newton ``J^T H_loss J`` from a dense ``jax.jacfwd`` Jacobian."""
    flat, unravel = ravel_pytree(params)
    H = jax.hessian(lambda v: loss(model(unravel(v))))(flat)
    out = model(params)
    J = jax.jacfwd(lambda v: jnp.ravel(model(unravel(v))))(flat)
    H_loss = jax.hessian(lambda o: loss(o.reshape(out.shape)))(jnp.ravel(out))
    return H, J.T @ H_loss @ J


def _tools(model, loss, params, key):
    """What the curvature tools return, all in one jitted program (one compile)."""
    value = lambda p: loss(model(p))
    results = []
    for op in (jaxcurv.hessian_operator(value, params), jaxcurv.ggn_operator(model, loss, params)):
        top = jaxcurv.eigenvalues(op, 3)
        trace = jaxcurv.hutchinson_trace(op, key, 200)
        results.append((op.to_dense(), top.eigenvalues, trace.estimate, trace.stderr))
    return results


def check_curvature_tools(model, loss, params, key):
    """hessian_operator / ggn_operator / eigenvalues / hutchinson_trace against the oracles."""
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
    # One jitted program for the oracles and the tools: eager, the nested transformations
    # dispatch op by op (seconds), and each tool called alone compiles on its own.
    both = fast_jit(lambda p, k: (dense_oracles(model, loss, p), _tools(model, loss, p, k)))
    (H, G), results = jax.tree.map(np.asarray, both(params, key))
    for (dense_op, top, estimate, stderr), dense in zip(results, (H, G), strict=True):
        exact = np.linalg.eigvalsh(dense)
        scale = np.max(np.abs(exact))
        # Two float64 evaluations of the same second derivatives differ by O(n eps ||H||)
        # (n <= 100 parameters: ~1e-14 ||H||); by Weyl's inequality the eigenvalues move by
        # at most that much. 1e-9 ||H|| leaves four orders of margin.
        np.testing.assert_allclose(dense_op, dense, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(top, exact[-3:], rtol=0, atol=1e-9 * scale)
        # A fixed key, so no flakiness: the Rademacher estimate's error is a mean of 200
        # independent terms; 6 of its standard errors (plus rounding) bound it.
        err = abs(float(estimate) - np.trace(dense))
        assert err <= 6 * float(stderr) + 1e-9 * scale, (err, float(stderr))
    # The Gauss-Newton matrix of a convex loss is PSD (to rounding); the Hessian need not be.
    assert np.linalg.eigvalsh(G)[0] >= -1e-9 * np.max(np.abs(G))
