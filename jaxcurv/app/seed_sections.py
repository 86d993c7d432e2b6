"""The seed notes' sections of ``jaxcurv demo``, each computed by the library.

:func:`seed_section`: the table of derivative kinds and shapes
(:func:`jaxcurv.derivative_table`) and the worked Jacobian of
:math:`f(x, y) = [x^2 + y, xy]` at :math:`(2, 3)` and Hessian of :math:`x^2 + 3xy + y^2`;
:func:`critical_point_section`: critical points classified by their Hessian's
eigenvalues; :func:`saddle_section`: why saddles stall gradient descent;
:func:`backprop_section`: backpropagation as a chain of vector-Jacobian products, checked
against ``jax.grad``. Each returns JSON-ready numbers; :mod:`jaxcurv.app.demo` prints and
reports them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxcurv

__all__ = [
    "CRITICAL_POINTS",
    "backprop_section",
    "critical_point_section",
    "derivative_examples",
    "saddle_section",
    "seed_section",
]


def _seed_jacobian_fun(p):
    x, y = p[0], p[1]
    return jnp.stack([x**2 + y, x * y])


def _seed_loss(p):
    x, y = p[0], p[1]
    return x**2 + 3 * x * y + y**2


def derivative_examples() -> list[tuple[str, Callable, tuple]]:
    """The functions behind the seed's table: one per row kind."""
    w = jnp.arange(12.0).reshape(3, 4) / 10
    return [
        ("sin(x)", jnp.sin, (jnp.asarray(1.0),)),
        ("sum(x**2), x in R^3", lambda x: jnp.sum(x**2), (jnp.ones(3),)),
        ("[x^2 + y, xy]", _seed_jacobian_fun, (jnp.array([2.0, 3.0]),)),
        ("W @ x, W 3x4", lambda x: w @ x, (jnp.ones(4),)),
        ("x^2 + 3xy + y^2", _seed_loss, (jnp.array([2.0, 3.0]),)),
    ]


def seed_section() -> dict:
    """The table of derivative kinds and the two worked examples, computed."""
    examples = derivative_examples()
    table = jaxcurv.derivative_table(examples)
    kinds = []
    for label, fun, args in examples:
        d = jaxcurv.describe(fun, *args)
        kinds.append({"function": label, "kind": d.kind, "shape": list(d.shape)})
        if d.hessian is not None:
            kinds.append({"function": label, "kind": "hessian", "shape": list(d.hessian.shape)})
    point = jnp.array([2.0, 3.0])
    jac = jaxcurv.jacobian(_seed_jacobian_fun)(point)
    grad = jaxcurv.gradient(_seed_loss)(point)
    hess = jaxcurv.hessian(_seed_loss)(point)
    return {
        "table": table,
        "kinds": kinds,
        "dtype": str(jac.dtype),
        "jacobian": {
            "function": "f(x, y) = [x^2 + y, xy]",
            "at": [2.0, 3.0],
            "value": np.asarray(jac).tolist(),
        },
        "gradient": {
            "function": "x^2 + 3xy + y^2",
            "at": [2.0, 3.0],
            "value": np.asarray(grad).tolist(),
        },
        "hessian": {
            "function": "x^2 + 3xy + y^2",
            "at": [2.0, 3.0],
            "value": np.asarray(hess).tolist(),
        },
    }


# ------------------------------------------------------------------- critical points


def _rosenbrock(p):
    return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2


CRITICAL_POINTS: list[tuple[str, Callable, tuple[float, float]]] = [
    ("x^2 + y^2", lambda p: p[0] ** 2 + p[1] ** 2, (0.0, 0.0)),
    ("-(x^2 + y^2)", lambda p: -(p[0] ** 2) - p[1] ** 2, (0.0, 0.0)),
    ("x^2 + 3xy + y^2 (the seed)", _seed_loss, (0.0, 0.0)),
    ("x^4 + y^2", lambda p: p[0] ** 4 + p[1] ** 2, (0.0, 0.0)),
    ("Rosenbrock", _rosenbrock, (1.0, 1.0)),
]


def critical_point_section() -> list[dict]:
    """Each function of :data:`CRITICAL_POINTS` classified at its critical point."""
    rows = []
    for label, fun, at in CRITICAL_POINTS:
        cp = jaxcurv.classify_critical_point(fun, jnp.asarray(at, jnp.float64 if _x64() else None))
        rows.append(
            {
                "function": label,
                "at": list(at),
                "kind": cp.kind,
                "eigenvalues": np.round(np.asarray(cp.eigenvalues, np.float64), 6).tolist(),
                "gradient_norm": float(cp.gradient_norm),
                "reason": cp.reason,
                "method": cp.method,
                "dtype": str(np.asarray(cp.eigenvalues).dtype),
            }
        )
    return rows


def _x64() -> bool:
    return bool(jax.config.read("jax_enable_x64"))


@jax.jit
def _gradient_descent(x0, lr, saddle):
    # Plain gradient descent on the seed's saddle (or on a bowl), 400 steps in one scan.
    fun = lambda p: jnp.where(saddle, _seed_loss(p), p[0] ** 2 + p[1] ** 2)
    grad = jaxcurv.gradient(fun)

    def body(x, _):
        g = grad(x)
        return x - lr * g, (x, jnp.linalg.norm(g), fun(x))

    _, (xs, gnorms, values) = jax.lax.scan(body, x0, None, length=400)
    return xs, gnorms, values


def saddle_section() -> dict:
    r"""Gradient descent started next to the seed's saddle versus next to a minimum.

    At the saddle of :math:`x^2 + 3xy + y^2` the Hessian has eigenvalue 5 along
    :math:`(1, 1)/\sqrt2` and -1 along :math:`(1, -1)/\sqrt2`. From a start on the stable
    direction with a :math:`10^{-6}` nudge along the unstable one, each step with learning
    rate 0.1 halves the stable component and multiplies the escaping one by only 1.1: the
    gradient is tiny for a long stretch (a plateau) before the loss falls away. The same
    start next to the minimum of :math:`x^2 + y^2` simply converges.
    """
    lr = 0.1
    up = np.array([1.0, 1.0]) / math.sqrt(2)
    down = np.array([1.0, -1.0]) / math.sqrt(2)
    x0 = jnp.asarray(up + 1e-6 * down)
    xs, gnorms, values = (np.asarray(a) for a in _gradient_descent(x0, lr, True))
    b_xs, b_gnorms, _ = (np.asarray(a) for a in _gradient_descent(x0, lr, False))
    # Escaped: the component along the descending eigenvector has grown to 1.
    along = np.abs(xs @ down)
    stalled = int(np.sum(gnorms < 1e-3))
    escape = int(np.argmax(along >= 1.0)) if np.any(along >= 1.0) else None
    b_norms = np.linalg.norm(b_xs, axis=1)
    converged = int(np.argmax(b_norms <= 1e-6)) if np.any(b_norms <= 1e-6) else None
    cp = jaxcurv.classify_critical_point(_seed_loss, jnp.zeros(2, x0.dtype))
    return {
        "learning_rate": lr,
        "start": np.asarray(x0).tolist(),
        "hessian_eigenvalues": np.round(np.asarray(cp.eigenvalues, np.float64), 6).tolist(),
        "escape_direction": np.round(down, 4).tolist(),
        "saddle_steps_with_small_gradient": stalled,
        "saddle_steps_to_escape": escape,
        "bowl_steps_to_converge": converged,
        "num_steps_run": int(xs.shape[0]),
        "trace": {
            "saddle_grad_norm": gnorms.tolist(),
            "saddle_loss": values.tolist(),
            "bowl_grad_norm": b_gnorms.tolist(),
        },
    }


# --------------------------------------------------------------------------- backprop


def backprop_section() -> dict:
    """A 3-layer tanh network's gradient as a chain of VJPs, compared with ``jax.grad``."""
    # Host-side random numbers: the example needs no compiled random-number generator.
    rng = np.random.default_rng(0)
    sizes = [(5, 8), (8, 8), (8, 3)]
    params = [
        {"w": jnp.asarray(rng.normal(size=s) / math.sqrt(s[0])), "b": jnp.zeros(s[1])}
        for s in sizes
    ]
    x = jnp.asarray(rng.normal(size=(4, 5)))
    layer = lambda p, h: jnp.tanh(h @ p["w"] + p["b"])
    loss_fn = lambda y: 0.5 * jnp.sum(y**2)
    res = jax.jit(lambda ps, x: jaxcurv.backprop([layer] * 3, ps, x, loss_fn))(params, x)

    def direct(ps):
        h = x
        for p in ps:
            h = layer(p, h)
        return loss_fn(h)

    ref = jax.jit(jax.grad(direct))(params)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(res.param_grads), jax.tree.leaves(ref), strict=True)
    )
    return {
        "layers": [f"tanh({a}->{b})" for a, b in sizes],
        "loss": float(res.loss),
        "cotangent_shapes": [list(np.shape(c)) for c in res.cotangents],
        "max_abs_difference_vs_jax_grad": diff,
        "dtype": str(x.dtype),
    }
