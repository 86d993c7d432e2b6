"""Data-parallel and model-parallel curvature on 8 devices.

Runs in its own process (``make test`` sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and selects ``-m multidevice``), so
the 8 "devices" are CPU partitions of this host. Every sharded result is compared with the
same computation on one device (the oracle), within ``RTOL`` relative in float64 (see there
why), and must keep the parameters' sharding. The two layouts:

* ``data``: mesh ``(8,)`` named ``batch``; batch split along it, parameters replicated;
* ``model``: mesh ``(4, 2)`` named ``(batch, model)``; batch split along ``batch``,
  hidden units split along ``model`` (``w1`` by columns, ``b1``, ``w2`` by rows).

The sharded calls run inside ``jax.jit``: any host round-trip in the library (``float(x)``,
``np.asarray(x)``, a Python ``if`` on an array) would then fail at trace time. (A transfer
guard would not do on CPU, where device-to-host copies are zero-copy and unguarded.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxcurv
import jaxcurv.spectral as spectral
import jaxcurv.tree
from jaxcurv.cg import cg
from jaxcurv.determinism import check_determinism
from jaxcurv.hessian_free import ModelAndLoss, hessian_free
from jaxcurv.sharding import data_parallel_mesh, replicate, shard_batch

# The same float64 problem (see RTOL) as the multi-process test, which is its oracle too.
from tests._multiprocess_worker import BATCH, D_IN, HIDDEN, loss_fn, model_fn, objective, problem

pytestmark = pytest.mark.multidevice

if jax.device_count() < 8:
    pytest.skip(
        "needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8 "
        "(`make test` does)",
        allow_module_level=True,
    )


# The sharded and the one-device programs compute the same sums in other orders (over the
# 64 examples of the batch, and over the hidden units in the "model" layout). Reordering a
# sum of n terms changes it by at most 2 gamma_n times the sum of |terms| (Higham,
# "Accuracy and Stability of Numerical Algorithms", 2002, §4.2): 2 * 64 * 2.2e-16 ~ 3e-14
# in float64, amplified by cancellation in the sums and by the solves (damped, so
# well-conditioned). RTOL leaves a margin of about 3e4 over that and is still a million
# times below what a real sharding bug changes (a lost or doubled shard is 1/8 of the
# batch). In float32 the same bound is ~1e-5 before any amplification: a tolerance there
# would have to be fitted to what one machine printed, and the noise could flip a CG stop
# or an Armijo test and send the two runs down different paths.
RTOL = 1e-9
LAYOUTS = ("data", "model")
# Canonical specs (no trailing None): jit's cache tells P("model", None) from the P("model")
# XLA hands back, and would compile the step again on its second call.
PARAM_SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model")}


@pytest.fixture(scope="module")
def single():
    """The problem on one device: the oracle every sharded result is compared with."""
    params, x, y, v = problem()
    dev = jax.devices()[0]
    return jax.device_put((params, x, y, v), dev)


@pytest.fixture(scope="module", params=LAYOUTS)
def sharded(request):
    params, x, y, v = problem()
    if request.param == "data":
        mesh = data_parallel_mesh()
        params, v = replicate(params, mesh), replicate(v, mesh)
    else:
        mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("batch", "model"))
        put = lambda t: {
            name: jax.device_put(a, NamedSharding(mesh, PARAM_SPECS[name])) for name, a in t.items()
        }
        params, v = put(params), put(v)
    x, y = shard_batch((x, y), mesh)
    return request.param, mesh, (params, x, y, v)


def _rel(a, b):
    """Normwise relative difference over the whole tree, in float64 on the host."""
    a = np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in jax.tree.leaves(a)])
    b = np.concatenate([np.ravel(np.asarray(t, np.float64)) for t in jax.tree.leaves(b)])
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _assert_close(a, b, rtol=RTOL):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    rel = _rel(a, b)
    assert rel <= rtol, f"sharded result differs from one device by {rel:.2e} relative"


def _assert_sharded_like(out, like, leading=0):
    """Every leaf of ``out`` lives on the mesh and is sharded like the matching ``like``."""
    for path, o, p in zip(
        jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(out), jax.tree.leaves(like)
    ):
        where = jax.tree_util.keystr(path[0])
        assert isinstance(o, jax.Array), where
        assert len(o.sharding.device_set) == 8, f"{where} left the mesh: {o.sharding}"
        if leading:
            spec = P(*((None,) * leading), *p.sharding.spec)
            expected = NamedSharding(p.sharding.mesh, spec)
        else:
            expected = p.sharding
        assert o.sharding.is_equivalent_to(expected, o.ndim), (
            f"{where}: output sharding {o.sharding} is not the parameters' {p.sharding}"
        )


def test_inputs_are_laid_out_as_intended(sharded):
    layout, mesh, (params, x, y, v) = sharded
    assert x.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), 2)
    assert len(x.addressable_shards) == 8
    assert x.addressable_shards[0].data.shape[0] == BATCH // mesh.shape["batch"]
    if layout == "data":
        assert params["w1"].sharding.is_fully_replicated
    else:
        assert params["w1"].addressable_shards[0].data.shape == (D_IN, HIDDEN // 2)


def test_hvp(reference, sharded):
    _, _, (params, x, y, v) = sharded
    out = jax.jit(lambda p, v, x, y: jaxcurv.hvp(objective, p, v, x, y))(params, v, x, y)
    _assert_sharded_like(out, params)
    r = reference
    _assert_close(out, jaxcurv.hvp(objective, r.params, r.v, r.x, r.y))


def test_ggn_vp(reference, sharded):
    _, _, (params, x, y, v) = sharded

    @jax.jit
    def sharded_ggn_vp(params, v, x, y):
        return jaxcurv.ggn_vp(lambda p: model_fn(p, x), lambda o: loss_fn(o, y), params, v)

    out = sharded_ggn_vp(params, v, x, y)
    _assert_sharded_like(out, params)
    r = reference
    ref = jaxcurv.ggn_vp(lambda p: model_fn(p, r.x), lambda o: loss_fn(o, r.y), r.params, r.v)
    _assert_close(out, ref)


def _operators(params, x, y):
    hess = jaxcurv.hessian_operator(objective, params, x, y)
    ggn = jaxcurv.ggn_operator(lambda p: model_fn(p, x), lambda o: loss_fn(o, y), params)
    return hess, ggn


CG_OPTIONS = {"maxiter": 15, "damping": 0.5}


class _Reference:
    """Single-device results, computed once and shared by both layouts."""

    def __init__(self, single):
        self.params, self.x, self.y, self.v = single

    @functools.cached_property
    def ops(self):
        return _operators(self.params, self.x, self.y)

    @functools.cached_property
    def cg(self):
        ggn = self.ops[1]
        return cg(ggn, ggn.grad, **CG_OPTIONS)

    @functools.cached_property
    def hessian_eigenvalues(self):
        return np.linalg.eigvalsh(np.asarray(self.ops[0].to_dense(), np.float64))

    @functools.cached_property
    def ggn_dense(self):
        return np.asarray(self.ops[1].to_dense(), np.float64)

    @functools.cached_property
    def hessian_free(self):
        return _hf_run(self.params, self.x, self.y)[0]


@pytest.fixture(scope="module")
def reference(single):
    return _Reference(single)


def test_operators(reference, sharded):
    _, _, (params, x, y, v) = sharded
    # Operators pass through jit as pytrees: build them in one call, apply them in another.
    ops = jax.jit(_operators)(params, x, y)
    outs = jax.jit(lambda ops, v: [op(v) for op in ops])(ops, v)
    for op, out, ref in zip(ops, outs, reference.ops):
        _assert_sharded_like(out, params)
        _assert_sharded_like(op.grad, params)
        _assert_close(out, ref(reference.v))
        _assert_close(op.grad, ref.grad)
        _assert_close(op.value, ref.value)


def test_operator_diagonal(reference, sharded):
    _, _, (params, x, y, _) = sharded
    hess, _ = _operators(params, x, y)
    diag = hess.diagonal()
    exact = np.diag(np.asarray(reference.ops[0].to_dense(), np.float64))
    _assert_close(ravel_pytree(jax.device_get(diag))[0], exact)
    _assert_sharded_like(diag, params)


def test_cg(reference, sharded):
    _, _, (params, x, y, _) = sharded

    @jax.jit
    def solve(params, x, y):
        _, ggn = _operators(params, x, y)
        return cg(ggn, ggn.grad, **CG_OPTIONS)

    sol, info = solve(params, x, y)
    ref, ref_info = reference.cg
    _assert_sharded_like(sol, params)
    _assert_close(sol, ref)
    assert int(info.status) == int(ref_info.status)
    assert int(info.num_steps) == int(ref_info.num_steps)
    # The solution really solves the damped system (oracle: numpy on the dense GGN), as
    # well as k CG steps can: from x0 = 0, ||x_k - x*|| <= 2 sqrt(kappa) q^k ||x*|| with
    # q = (sqrt(kappa) - 1) / (sqrt(kappa) + 1) (the A-norm bound, Saad 2003, Thm 6.29,
    # turned into the 2-norm). If CG stopped on its residual test instead (tol 1e-5, the
    # default), ||x_k - x*|| <= ||r|| / lambda_min <= 1e-5 ||b|| / lambda_min. Rounding adds
    # n kappa eps ||x*||.
    dense = reference.ggn_dense + CG_OPTIONS["damping"] * np.eye(reference.ggn_dense.shape[0])
    rhs = np.asarray(ravel_pytree(reference.ops[1].grad)[0], np.float64)
    exact = np.linalg.solve(dense, rhs)
    got = np.asarray(ravel_pytree(jax.device_get(sol))[0], np.float64)
    lam = np.linalg.eigvalsh(dense)
    kappa, k = lam[-1] / lam[0], int(info.num_steps)
    q = (np.sqrt(kappa) - 1) / (np.sqrt(kappa) + 1)
    bound = 2 * np.sqrt(kappa) * q**k * np.linalg.norm(exact)
    if k < CG_OPTIONS["maxiter"]:
        bound = min(bound, 1e-5 * np.linalg.norm(rhs) / lam[0])
    bound += len(exact) * kappa * np.finfo(np.float64).eps * np.linalg.norm(exact)
    assert np.linalg.norm(got - exact) <= bound


def test_spectral(reference, sharded):
    layout, _, (params, x, y, _) = sharded
    key = jax.random.key(3)
    n = jaxcurv.tree.tree_size(params)

    @jax.jit
    def analyse(params, x, y, key):
        hess, ggn = _operators(params, x, y)
        # num_iters = N: Lanczos (forced by dense_threshold=0) is then exact, so numpy is
        # the oracle for one device and for the mesh alike.
        eig = spectral.eigenvalues(
            hess,
            3,
            which="both",
            key=key,
            method="lanczos",
            maxiter=n,
            dense_threshold=0,
            return_eigenvectors=True,
        )
        # Hutchinson estimates depend on the probes: the oracle is the same key on one
        # device. One estimator per layout keeps the compile time of this file bounded.
        if layout == "data":
            est = spectral.hutchinson_trace(ggn, key, 8).estimate
        else:
            est = spectral.hutchinson_diagonal(ggn, key, 8).estimate
        return eig, est

    eig, est = analyse(params, x, y, key)
    ref_ggn = reference.ops[1]
    exact = reference.hessian_eigenvalues
    np.testing.assert_allclose(
        eig.eigenvalues,
        np.concatenate([exact[:3], exact[-3:]]),
        rtol=0,
        atol=RTOL * np.abs(exact).max(),
    )
    _assert_sharded_like(eig.eigenvectors, params, leading=1)
    if layout == "data":
        _assert_close(est, spectral.hutchinson_trace(ref_ggn, key, 8).estimate)
    else:
        _assert_sharded_like(est, params)
        _assert_close(est, spectral.hutchinson_diagonal(ref_ggn, key, 8).estimate)


def _hf_run(params, x, y, num_steps=3):
    value_fn = ModelAndLoss(model_fn, loss_fn)
    opt = hessian_free(damping=1.0, cg_maxiter=10)
    state = opt.init(params)  # placed on the params' mesh by init itself

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(value_fn)(params, x=x, y=y)
        updates, state = opt.update(grads, state, params, value_fn=value_fn, value=loss, x=x, y=y)
        return optax.apply_updates(params, updates), state

    trajectory = []
    for _ in range(num_steps):
        params, state = step(params, state, x, y)
        trajectory.append((params, state))
    return trajectory, step._cache_size()


def test_hessian_free_takes_identical_steps(reference, sharded):
    _, _, (params, x, y, _) = sharded
    run, num_compiles = _hf_run(params, x, y)
    ref = reference.hessian_free
    assert num_compiles == 1, "the sharded step compiled again on a later call"
    for (p, s), (p_ref, s_ref) in zip(run, ref):
        _assert_sharded_like(p, params)
        _assert_sharded_like(s.cg_init, params)
        _assert_close(p, p_ref)
        assert int(s.cg_steps) == int(s_ref.cg_steps)
        assert bool(s.rejected) == bool(s_ref.rejected)
        np.testing.assert_allclose(s.damping, s_ref.damping, rtol=RTOL)
        np.testing.assert_allclose(s.new_loss, s_ref.new_loss, rtol=RTOL)
    # The steps did something: the loss went down on the single-device run.
    assert float(ref[-1][1].new_loss) < float(ref[0][1].loss)


def test_check_determinism_on_the_mesh(sharded):
    _, _, (params, x, y, _) = sharded
    report = check_determinism(objective, params, x, y)
    assert report.deterministic, report.summary
    assert report.quantities == ("loss", "gradient", "hvp")


def test_shard_batch_rejects_leaves_with_different_leading_sizes():
    # Issue 11: each leaf was split on its own, so an 8-row x with 16-row y was sharded
    # without complaint, pairing examples with the wrong targets.
    mesh = data_parallel_mesh()
    batch = {"x": jnp.zeros((8, 2)), "y": {"labels": jnp.zeros(16)}, "scale": 2.0}
    with pytest.raises(ValueError, match=r"leaf \['x'\] has leading size 8") as info:
        shard_batch(batch, mesh)
    assert "leaf ['y']['labels'] has 16" in str(info.value)
    # Scalars are replicated, not split, so they take no part in the check.
    ok = shard_batch({"x": jnp.zeros((8, 2)), "y": jnp.zeros(8), "scale": jnp.asarray(2.0)}, mesh)
    assert ok["x"].shape == (8, 2) and ok["scale"].sharding.is_fully_replicated


def test_shard_batch_rejects_a_batch_the_devices_do_not_divide():
    mesh = data_parallel_mesh()
    with pytest.raises(ValueError, match=r"`shard_batch\(batch\)` leaf .* leading size 10.*pad"):
        shard_batch({"x": jnp.zeros((10, 2))}, mesh)
