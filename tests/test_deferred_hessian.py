"""The deferred ``hessian_operator``: built without computing anything, linearized once
where it is used (alone when used directly, inside a routine's program, per product on a
host loop).

Oracles: ``jax.hessian`` of a small tanh net in float64 (the dense matrix), ``jax.grad``
and the loss itself; where the linearization happens is read off the traced program (a
``while`` body that re-ran the forward pass would hold a ``tanh``), and what compiles is
counted with ``jax.monitoring``.
"""

from __future__ import annotations

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from tests.helpers import count_compiles


def _loss(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


def _net(seed: int = 0, n: int = 7):
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    return params, jnp.asarray(rng.standard_normal((n, 4)))


def _dense(params, x) -> np.ndarray:
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return np.asarray(jax.hessian(lambda f: _loss(unravel(f), x))(flat))


def _flat(tree) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def _while_bodies(jaxpr) -> list:
    """Every ``while`` body in ``jaxpr``, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            found.append(eqn.params["body_jaxpr"].jaxpr)
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found.extend(_while_bodies(inner))
    return found


def test_build_computes_nothing_and_first_use_matches_the_dense_hessian():
    params, x = _net()
    with count_compiles() as built:
        op = jaxcurv.hessian_operator(_loss, params, x)
    assert built[0] == 0
    v = jax.tree.map(jnp.ones_like, params)
    H = _dense(params, x)
    # float64 AD against float64 AD: equal to rounding, a few eps * ||H|| * sqrt(N).
    tol = 1e-12 * max(1.0, np.abs(H).max())
    np.testing.assert_allclose(_flat(op(v)), H @ _flat(v), atol=tol)
    np.testing.assert_allclose(np.asarray(op.to_dense()), H, atol=tol)
    np.testing.assert_allclose(float(op.value), float(_loss(params, x)), rtol=1e-14)
    np.testing.assert_allclose(_flat(op.grad), _flat(jax.grad(_loss)(params, x)), atol=1e-14)
    # The linearization is kept: further direct use compiles nothing.
    with count_compiles() as again:
        op(jax.tree.map(jnp.zeros_like, params)), op.value, op.grad
    assert again[0] == 0


def test_a_host_loop_first_answer_is_one_program_build_included():
    params, x = _net(n=9)
    key = jax.random.key(0)  # (making a key compiles a program of its own)
    with count_compiles() as first:
        op = jaxcurv.hessian_operator(_loss, params, x)
        est = jaxcurv.hutchinson_trace(op, key, 64, loop="host")
    assert first[0] == 1
    exact = np.trace(_dense(params, x))
    # 64 Rademacher probes (Hutch++ or plain): within 6 reported standard errors.
    assert abs(float(est.estimate) - exact) <= 6 * float(est.stderr) + 1e-10


@pytest.mark.parametrize("routine", ["cg", "eigenvalues"])
def test_a_device_loop_linearizes_once_outside_its_loop(routine):
    params, x = _net(n=5 + len(routine))  # a shape of its own: nothing compiled before
    b = jax.tree.map(jnp.ones_like, params)
    key = jax.random.key(0)  # (making a key compiles a program of its own)

    def run(p, x):
        op = jaxcurv.hessian_operator(_loss, p, x)
        if routine == "cg":
            return jaxcurv.cg(op, b, damping=1.0)[0]
        return jaxcurv.eigenvalues(op, 1, dense_threshold=0, key=key).eigenvalues

    jaxpr = jax.make_jaxpr(run)(params, x).jaxpr
    bodies = _while_bodies(jaxpr)
    assert bodies, "the routine runs a while loop"
    # The forward pass (tanh) runs once, before the loop; the loop applies only the linear
    # part (products with the stored tanh' and tanh'' factors).
    assert "tanh" in str(jaxpr)
    assert all("tanh" not in str(body) for body in bodies)
    # At top level: building and running is one program (it was two before the deferral).
    # A first run on other shapes compiles the once-per-process scalar conversions.
    run(*_net(seed=4, n=40))
    with count_compiles() as one:
        run(params, x)
    assert one[0] == 1


def test_closures_built_per_batch_share_structure_and_compiled_code():
    params, _ = _net()
    v = jax.tree.map(jnp.ones_like, params)
    ops = []
    for seed in (1, 2):
        batch = _net(seed=seed)[1]
        ops.append(jaxcurv.hessian_operator(lambda p, batch=batch: _loss(p, batch), params))
    assert jax.tree.structure(ops[0]) == jax.tree.structure(ops[1])
    ops[0](v)
    with count_compiles() as second:
        out = ops[1](v)
    assert second[0] == 0
    H = _dense(params, _net(seed=2)[1])
    np.testing.assert_allclose(_flat(out), H @ _flat(v), atol=1e-12 * np.abs(H).max())


def test_a_linearized_operator_passed_to_jit_keeps_its_linearization():
    params, x = _net()
    v = jax.tree.map(jnp.ones_like, params)
    fresh = jaxcurv.hessian_operator(_loss, params, x)
    used = jaxcurv.hessian_operator(_loss, params, x)
    used.grad  # linearized here
    apply = lambda o, w: o(w)  # noqa: E731
    # A fresh operator linearizes inside the program (the forward pass is in it); a used
    # one brings its linearization along as arrays, so the program is the linear part.
    assert "tanh" in str(jax.make_jaxpr(apply)(fresh, v))
    assert "tanh" not in str(jax.make_jaxpr(apply)(used, v))
    H = _dense(params, x)
    for op in (fresh, used):
        np.testing.assert_allclose(
            _flat(jax.jit(apply)(op, v)), H @ _flat(v), atol=1e-12 * np.abs(H).max()
        )


def test_gradient_through_an_operator_built_under_grad():
    # d/dc of the top eigenvalue of diag(c_i * 2): Hellmann-Feynman gives e_top (closed form).
    c = jnp.array([1.0, 3.0, 2.0])

    def top(c):
        op = jaxcurv.hessian_operator(lambda p: jnp.sum(c * p**2), jnp.zeros(3))
        return jaxcurv.eigenvalues(op, 1, which="largest").eigenvalues[0]

    np.testing.assert_allclose(float(top(c)), 6.0, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.grad(top)(c)), [0.0, 2.0, 0.0], atol=1e-10)
