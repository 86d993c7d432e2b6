"""Time to first answer (issue 17 item 6): host-driven Krylov loops and the compile cache.

``loop="host"`` compiles only the product with ``A`` and runs the recursion in NumPy
(``jaxcurv._host_lanczos``); its answers are checked against ``numpy.linalg.eigvalsh`` of
the dense matrix, against the device loop, and against closed forms (the trace of a
diagonal matrix, Hutch++ on a low-rank one). The number of programs a first call
compiles is pinned. The command line's persistent compilation cache is checked in a
subprocess, into a temporary folder, so this test process's JAX settings stay as they are.
"""

from __future__ import annotations

import inspect
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from jaxcurv._dispatch import _on_host
from jaxcurv._host_lanczos import host_eigenvalues, host_quadrature
from jaxcurv.app.cli import compile_cache_dir
from tests.helpers import count_compiles, random_symmetric

_SPECTRUM = np.concatenate([np.linspace(-2.0, 1.0, 36), [2.5, 3.0, 4.0, 6.0]])  # N = 40


def _matrix() -> np.ndarray:
    return random_symmetric(np.random.default_rng(0), _SPECTRUM)


def _loss(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)


def _net(n_in: int = 5, seed: int = 1):
    rng = np.random.default_rng(seed)
    params = {
        "w": jnp.asarray(rng.standard_normal((n_in, 3))),
        "b": jnp.asarray(rng.normal(size=3)),
    }
    return params, jnp.asarray(rng.standard_normal((11, n_in)))


def _host(A, key=0):
    return _on_host("host", A, None, jax.random.key(key))


@pytest.mark.parametrize(("want", "m", "device"), [((0, 3), 12, False), ((3, 3), 16, True)])
def test_host_thick_restart_finds_the_dense_eigenvalues(want, m, device):
    A = jnp.asarray(_matrix())
    prod, rng = _host(A)
    lam, _, res, spent, converged, restarts = host_eigenvalues(
        prod, rng, m=m, want=want, tol=1e-10, max_matvecs=4000, vectors=False
    )
    exact = np.linalg.eigvalsh(_matrix())
    idx = np.r_[0 : want[0], 40 - want[1] : 40]
    assert bool(converged) and int(restarts) > 0 and int(spent) <= 4000
    # A Ritz value with residual r is within r of an eigenvalue (symmetric A); the
    # reported residual is the recurrence's, equal to the true one up to ~eps ||A||, and
    # float64 rounding of the products adds ~1e-14 ||A||: 1e-12 ||A|| is the margin.
    assert np.all(np.abs(np.asarray(lam) - exact[idx]) <= np.asarray(res) + 1e-12 * 6.0)
    if device:  # the same pairs as the default (device) loop, both ends at once
        dev = jaxcurv.eigenvalues(A, 3, which="both", dense_threshold=0, tol=1e-10)
        # Each within its residual (<= tol |lambda| = 6e-10) of the truth.
        np.testing.assert_allclose(lam, dev.eigenvalues, atol=2e-9)


def test_host_eigenvectors_belong_to_their_eigenvalues():
    params, x = _net()
    op = jaxcurv.hessian_operator(_loss, params, x)
    H = np.asarray(op.to_dense())
    prod, rng = _host(op)
    lam, vecs, res, *_ = host_eigenvalues(
        prod, rng, m=18, want=(2, 0), tol=1e-10, max_matvecs=2000, vectors=True
    )
    assert jax.tree.structure(vecs) == jax.tree.structure(params)
    V = np.concatenate([np.asarray(vecs["b"]), np.asarray(vecs["w"]).reshape(2, -1)], axis=1)
    # ravel_pytree order is b then w; ||H v - lambda v|| is the residual, float64 rounding.
    scale = np.max(np.abs(np.linalg.eigvalsh(H)))
    for j in range(2):
        r = np.linalg.norm(H @ V[j] - lam[j] * V[j])
        assert r <= float(res[j]) + 1e-10 * scale
        np.testing.assert_allclose(np.linalg.norm(V[j]), 1.0, rtol=1e-12)
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(H)[:2], atol=1e-9 * scale)


def test_host_krylov_exhaustion_keeps_multiplicities():
    # Three distinct eigenvalues: a Krylov space from one start has dimension 3, then a
    # fresh direction is taken; a whole pass of N steps is then the exact spectrum.
    d = np.repeat([1.0, 2.0, 5.0], [4, 3, 3])
    prod, rng = _host(jnp.diag(jnp.asarray(d)))
    lam, *_ = host_eigenvalues(prod, rng, m=10, want=(5, 5), tol=1e-10, max_matvecs=10,
                               vectors=False)  # fmt: skip
    np.testing.assert_allclose(lam, d, atol=1e-12)  # float64 rounding of a diagonal


def test_host_quadrature_weights_and_nodes():
    d = np.arange(1.0, 21.0)
    prod, rng = _host(jnp.diag(jnp.asarray(d)))
    nodes, weights = host_quadrature(prod, rng, num_samples=3, m=20)
    np.testing.assert_allclose(np.sum(weights, axis=1), 1.0, rtol=1e-12)
    # A full pass on distinct eigenvalues: the nodes are the eigenvalues, and each rule
    # reproduces v^T A v = tr(A) / N exactly for a Rademacher probe of a diagonal A.
    np.testing.assert_allclose(nodes, np.broadcast_to(d, (3, 20)), atol=1e-10)
    np.testing.assert_allclose(np.sum(weights * nodes, axis=1), d.mean(), rtol=1e-12)


def test_host_trace_is_exact_where_the_estimator_is():
    d = jnp.diag(jnp.arange(1.0, 41.0))
    est = jaxcurv.hutchinson_trace(d, jax.random.key(0), 5, loop="host")
    assert float(est.estimate) == pytest.approx(820.0, rel=1e-13)  # z_i^2 = 1: exact
    assert int(est.num_matvecs) == 5
    # Hutch++ on a rank-4 matrix: the sketch spans its range, the remainder is zero.
    u = np.linalg.qr(np.random.default_rng(2).standard_normal((40, 4)))[0]
    low = jnp.asarray((u * np.array([3.0, 2.0, 1.0, 0.5])) @ u.T)
    pp = jaxcurv.hutchinson_trace(low, jax.random.key(1), 15, method="hutch++", loop="host")
    assert float(pp.estimate) == pytest.approx(6.5, abs=1e-10)


def test_host_trace_agrees_with_the_device_estimator_in_distribution():
    A = jnp.asarray(_matrix())
    est = jaxcurv.hutchinson_trace(A, jax.random.key(0), 400, loop="host")
    # Unbiased with the stated standard error: 5 stderr is a 1-in-10^6 miss.
    assert abs(float(est.estimate) - float(np.sum(_SPECTRUM))) <= 5 * float(est.stderr)
    assert float(est.stderr) > 0
    again = jaxcurv.hutchinson_trace(A, jax.random.key(0), 400, loop="host")
    assert float(again.estimate) == float(est.estimate)  # the key decides the probes


def test_host_loop_under_jit_runs_the_device_loop():
    key = jax.random.key(0)
    f = jax.jit(lambda a: jaxcurv.hutchinson_trace(a, key, 3, loop="host"))
    est = f(jnp.diag(jnp.arange(1.0, 8.0)))  # traced: no host loop, the device one inlined
    assert float(est.estimate) == pytest.approx(28.0, rel=1e-14)  # exact for a diagonal


def test_first_call_program_counts():
    # A computation no other test compiles (n_in = 9): the first host-loop call compiles
    # one program, the product it uses -- on a block of probes for Hutchinson, on one
    # vector for Lanczos, never both for one routine; a new key, operator or batch of it
    # compiles nothing.
    params, x = _net(n_in=9)
    op = jaxcurv.hessian_operator(_loss, params, x)
    with count_compiles() as host:
        jaxcurv.hutchinson_trace(op, jax.random.key(0), 10, loop="host")
    assert host[0] == 1
    with count_compiles() as host:
        prod, rng = _host(op, key=1)
        host_eigenvalues(prod, rng, m=8, want=(0, 2), tol=1e-6, max_matvecs=80, vectors=True)
    assert host[0] == 1
    params2, x2 = _net(n_in=9, seed=5)
    op2 = jaxcurv.hessian_operator(_loss, params2, x2)
    with count_compiles() as again:
        jaxcurv.hutchinson_trace(op2, jax.random.key(3), 10, loop="host")
    assert again[0] == 0
    # The device loop: the whole estimate is one program.
    with count_compiles() as device:
        jaxcurv.hutchinson_trace(op, jax.random.key(0), 10)
    assert device[0] == 1


def _args(**kw):
    return types.SimpleNamespace(**{"no_compile_cache": False, "compile_cache": None, **kw})


def test_compile_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("JAXCURV_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir(_args(), program=True) == str(tmp_path / "jaxcurv" / "xla")
    assert compile_cache_dir(_args(), program=False) is None  # main([...]) from Python
    assert compile_cache_dir(_args(compile_cache=str(tmp_path)), program=False) == str(tmp_path)
    assert compile_cache_dir(_args(compile_cache="x", no_compile_cache=True), program=True) is None
    monkeypatch.setenv("JAXCURV_COMPILE_CACHE", "off")
    assert compile_cache_dir(_args(), program=True) is None
    monkeypatch.setenv("JAXCURV_COMPILE_CACHE", str(tmp_path / "env"))
    assert compile_cache_dir(_args(), program=True) == str(tmp_path / "env")


def test_cli_compile_cache_writes_only_where_told(tmp_path, monkeypatch):
    from jax._src import compilation_cache

    from jaxcurv.app.cli import _configure_compile_cache, build_parser

    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
             "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes",
             "jax_compilation_cache_max_size")  # fmt: skip
    saved = {name: getattr(jax.config, name) for name in names}
    off, on = tmp_path / "off", tmp_path / "on"
    off.mkdir()
    x = jnp.ones((7, 13))
    try:
        # JAX's own setting names a folder; --no-compile-cache must still keep it empty.
        jax.config.update("jax_compilation_cache_dir", str(off))
        compilation_cache.reset_cache()
        _configure_compile_cache(build_parser().parse_args(["landscape", "--no-compile-cache"]),
                                 program=True)  # fmt: skip
        jax.jit(lambda t: jnp.sin(t) @ t.T)(x).block_until_ready()
        assert os.listdir(off) == []
        compilation_cache.reset_cache()
        args = build_parser().parse_args(["train", "--compile-cache", str(on)])
        _configure_compile_cache(args, program=False)
        jax.jit(lambda t: jnp.cos(t) @ t.T)(x).block_until_ready()
        assert len(os.listdir(on)) >= 1  # the program just compiled was written
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def _takes_loop(fn) -> bool:
    return "loop" in inspect.signature(fn).parameters


@pytest.mark.skipif(
    not (_takes_loop(jaxcurv.eigenvalues) and _takes_loop(jaxcurv.spectral_density)),
    reason="eigenvalues / spectral_density do not take loop= yet",
)
def test_public_host_loops_of_eigenvalues_and_density():
    A = jnp.asarray(_matrix())
    exact = np.linalg.eigvalsh(_matrix())
    top = jaxcurv.eigenvalues(A, 3, which="both", dense_threshold=0, tol=1e-10, loop="host")
    assert bool(top.converged)
    # Within the measured residuals of the dense eigenvalues (plus float64 rounding).
    got, res = np.asarray(top.eigenvalues), np.asarray(top.residual_norms)
    assert np.all(np.abs(got - exact[[0, 1, 2, -3, -2, -1]]) <= res + 1e-12 * 6.0)
    d = jaxcurv.spectral_density(A, jax.random.key(0), num_samples=2, num_steps=40, loop="host")
    # A full pass: the nodes are the eigenvalues (distinct), the weights sum to one.
    np.testing.assert_allclose(d.nodes, np.broadcast_to(exact, (2, 40)), atol=1e-10)
    np.testing.assert_allclose(np.sum(d.weights, axis=1), 1.0, rtol=1e-12)
