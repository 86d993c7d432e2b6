"""K-FAC preconditioner (jaxcurv.kfac): factors, SPD, exactness, PCG, errors.

Oracles: factors from explicit per-example activations, Jacobians and loss Hessians
(``jax.jacobian`` / ``jax.hessian`` example by example); the dense Gauss-Newton matrix from
``jaxcurv.ggn_operator(...).to_dense()``; ``numpy.linalg.solve`` on the damped system.
All in float64 (x64 is on in conftest), n = 26 parameters.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxcurv
from jaxcurv._kfac_factors import sample_gradient
from tests._client_checks import dense_oracles, fast_jit

N = 6  # examples
EPS = float(np.finfo(np.float64).eps)


@jax.jit
def _dense_t(h, w):
    # A jitted helper with W stored (d_out, d_in): the jaxpr walk must look inside the
    # call and see the transposed layout.
    return jax.lax.dot_general(h, w, (((1,), (1,)), ((), ())))


def model(p, x):
    h = jnp.tanh(x @ p["w0"] + p["b0"])
    return (_dense_t(h, p["w1"]) + p["b1"]) * p["s"]


def mse(f, y):
    return 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))


def softmax_ce(f, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(f) * y, axis=-1))


def _setup(seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    params = {
        "w0": jax.random.normal(k[0], (3, 4)),
        "b0": 0.1 * jax.random.normal(k[1], (4,)),
        "w1": jax.random.normal(k[2], (2, 4)),  # (d_out, d_in)
        "b1": 0.1 * jax.random.normal(k[3], (2,)),
        "s": jnp.asarray(1.3),  # no dense leaf: the diagonal part
    }
    x = jax.random.normal(k[4], (N, 3))
    y = jax.nn.softmax(jax.random.normal(k[5], (N, 2)))
    return params, x, y


LAM = 1e-2  # the damping of every test that shares the fixture below


@pytest.fixture(scope="module")
def ce():
    """The MLP under softmax cross-entropy and its (exact, pi-damped) K-FAC preconditioner."""
    params, x, y = _setup()
    M = jaxcurv.kfac_preconditioner(model, softmax_ce, params, damping=LAM, x=x, y=y)
    return params, x, y, M


def _dense(fn, like):
    """The matrix of a linear map on pytrees like ``like``, in ravel_pytree order."""
    flat, unravel = ravel_pytree(like)
    cols = [ravel_pytree(fn(unravel(e)))[0] for e in np.eye(flat.size)]
    return np.stack(cols, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _hand_g(f_of_s, loss, kind, s, params, y):
    """(1/N) sum_i J_i^T H_i J_i, example by example (H_i: outer gradient for empirical)."""
    f = jax.vmap(f_of_s, in_axes=(0, None))(s, params)
    J = jax.vmap(jax.jacobian(f_of_s), in_axes=(0, None))(s, params)  # (N, out, d_out)

    def one(f_i, y_i):  # example i's loss alone
        return loss(f_i[None], y_i[None])

    if kind == "exact":
        H = jax.vmap(jax.hessian(one))(f, y)
    else:
        g = jax.vmap(jax.grad(one))(f, y)
        H = jnp.einsum("ni,nj->nij", g, g)
    return jnp.einsum("nai,nab,nbj->ij", J, H, J) / N


def _hand_factors(params, x, y, loss, kind):
    """A and G per layer from explicit per-example quantities."""
    a0 = np.asarray(x)
    s0 = x @ params["w0"] + params["b0"]
    a1 = np.asarray(jnp.tanh(s0))

    def out_from_s0(s, p):
        return (_dense_t(jnp.tanh(s)[None], p["w1"])[0] + p["b1"]) * p["s"]

    def out_from_s1(s, p):
        return (s + p["b1"]) * p["s"]

    s1 = _dense_t(jnp.asarray(a1), params["w1"])
    factors = []
    for a, s, f_of_s in ((a0, s0, out_from_s0), (a1, s1, out_from_s1)):
        a_aug = np.concatenate([a, np.ones((N, 1))], axis=1)
        A = a_aug.T @ a_aug / N
        G = np.asarray(_hand_g(f_of_s, loss, kind, s, params, y))
        factors.append((A, G))
    return factors


@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_factors_match_a_hand_computation(ce, kind):
    params, x, y, M = ce
    loss = softmax_ce if kind == "exact" else mse
    if kind != "exact":
        M = jaxcurv.kfac_preconditioner(model, loss, params, damping=LAM, kind=kind, x=x, y=y)
    assert [(layer.weight, layer.bias) for layer in M.layers] == [
        ("['w0']", "['b0']"),
        ("['w1']", "['b1']"),
    ]
    for (A, G), A_k, G_k in zip(
        _hand_factors(params, x, y, loss, kind), M.input_factors, M.output_factors, strict=True
    ):
        # Sums of N*d products of O(1) numbers in float64: rounding ~1e-15 relative; 1e-10
        # leaves a wide margin and still catches any scale or ordering mistake.
        np.testing.assert_allclose(A_k, A, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(G_k, G, rtol=1e-10, atol=1e-12)


def test_non_dense_leaves_get_the_damped_empirical_fisher_diagonal():
    params, x, y = _setup()
    lam = 0.1
    M = jaxcurv.kfac_preconditioner(model, mse, params, damping=lam, x=x, y=y)
    per_example = [
        jax.grad(lambda p, i=i: mse(model(p, x[i : i + 1]), y[i : i + 1]))(params)["s"]
        for i in range(N)
    ]
    expected = np.mean(np.square(per_example)) + lam
    np.testing.assert_allclose(M.diagonal["s"], expected, rtol=1e-12)
    assert M.diagonal["w0"] is None


def _hand_mc_g1(params, x, key, S):
    """The second layer's sampled G, (1/(N S)) sum_{i,s} J_i^T s s^T J_i, with `sample_
    gradient`'s categorical draws (softmax cross-entropy as a mean over N examples: its
    output Hessian is 1/N times the categorical one). The layer's output is
    ``(s1 + b1) * p["s"]``, so its Jacobian in s1 is ``p["s"] I`` exactly."""
    draw = lambda p, k: sample_gradient("categorical", model(p, x), k)
    smps = fast_jit(lambda p: [draw(p, jax.random.fold_in(key, k)) for k in range(S)])(params)
    G = 0
    for smp in smps:
        g = float(params["s"]) * np.asarray(smp)
        G = G + g.T @ g / (N * S)
    return G


def test_hessian_free_kfac_preconditioner_is_the_mc_kind():
    """``cg_preconditioner("kfac")`` (what ``hessian_free(preconditioner="kfac")`` builds,
    keyed by ``fold_in(key(0), count)``) has Martens & Grosse's sampled factors: A the
    activations' second moment, G the hand-computed sampled outer product at its key.
    (That M is the inverse of the pi-damped blocks of its factors, and that it leaves the
    damped system's solution unchanged, is tested above and below for the class.)"""
    from jaxcurv.descent import cg_preconditioner

    params, x, y = _setup()
    objective = jaxcurv.ModelAndLoss(model, softmax_ce)
    key = jax.random.fold_in(jax.random.key(0), 4)  # as hessian_free keys update 4
    M = fast_jit(lambda p: cg_preconditioner("kfac", objective, p, {"x": x, "y": y}, LAM, key=key))(
        params
    )
    # The same sums as the hand oracle, fused differently: rounding ~1e-15; 1e-10 margin.
    np.testing.assert_allclose(M.output_factors[1], _hand_mc_g1(params, x, key, 1), rtol=1e-10)
    a = np.c_[np.asarray(x), np.ones(N)]  # layer 0's input, the bias folded in
    np.testing.assert_allclose(M.input_factors[0], a.T @ a / N, rtol=1e-10, atol=1e-12)


def test_mc_factor_is_the_sampled_gradients_outer_product():
    params, x, y = _setup()
    key, S = jax.random.key(3), 3
    M = jaxcurv.kfac_preconditioner(
        model,
        softmax_ce,
        params,
        damping=0.1,
        kind="mc",
        key=key,
        num_samples=S,
        x=x,
        y=y,
        likelihood="categorical",
    )
    G = _hand_mc_g1(params, x, key, S)
    np.testing.assert_allclose(M.output_factors[1], G, rtol=1e-8, atol=1e-12)
    # Under jit without `likelihood`, the family is picked from traced misfits: the same
    # samples, the same factors (to rounding: the same arithmetic, fused differently).
    build = fast_jit(
        lambda p: jaxcurv.kfac_preconditioner(
            model, softmax_ce, p, damping=0.1, kind="mc", key=key, num_samples=S, x=x, y=y
        )
    )
    for got, want in zip(build(params).output_factors, M.output_factors, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["exact-pi", "empirical-eigen"])
def test_M_is_symmetric_positive_definite(ce, kind):
    params, x, y, M = ce
    if kind != "exact-pi":
        M = jaxcurv.kfac_preconditioner(
            model,
            softmax_ce,
            params,
            damping=LAM,
            kind="empirical",
            damping_mode="eigen",
            x=x,
            y=y,
        )
    Md = _dense(M, params)
    scale = np.abs(Md).max()
    # Symmetric to rounding: each entry is a sum of ~d^2 products through orthogonal Q's.
    np.testing.assert_allclose(Md, Md.T, atol=1e3 * EPS * scale)
    assert np.linalg.eigvalsh((Md + Md.T) / 2).min() > 0


def _single_layer():
    k = jax.random.split(jax.random.key(1), 3)
    params = {"w": jax.random.normal(k[0], (3, 2)), "b": jax.random.normal(k[1], (2,))}
    x = jax.random.normal(k[2], (N, 3))
    y = jnp.zeros((N, 2))
    return (lambda p, x: x @ p["w"] + p["b"]), params, x, y


def _stack(tree):
    """The layer's coordinates [W; b], row-major: the ones A (x) G acts in."""
    return jnp.concatenate([tree["w"], tree["b"][None]], axis=0).ravel()


def test_single_linear_layer_with_mse_is_inverted_exactly():
    lin, params, x, y = _single_layer()
    lam = 0.1
    B = np.asarray(
        jaxcurv.ggn_operator(lambda p: lin(p, x), lambda f: mse(f, y), params).to_dense()
    )
    n = B.shape[0]
    D = B + lam * np.eye(n)
    # Eigen damping: M = (A (x) G + lam I)^{-1} and A (x) G is this GGN.
    M = jaxcurv.kfac_preconditioner(lin, mse, params, damping=lam, damping_mode="eigen", x=x, y=y)
    err = np.abs(_dense(M, params) @ D - np.eye(n)).max()
    # Backward-stable eigh + matmuls: error <= c n cond(D) eps; c = 10 is the margin.
    assert err <= 10 * n * np.linalg.cond(D) * EPS
    # Pi damping: M^{-1} = (A + pi sqrt(lam) I) (x) (G + sqrt(lam)/pi I) = D + the cross
    # terms sqrt(lam) (pi I (x) G + A (x) I / pi), known in closed form.
    M = jaxcurv.kfac_preconditioner(lin, mse, params, damping=lam, x=x, y=y)
    A, G = np.asarray(M.input_factors[0]), np.asarray(M.output_factors[0])
    pi = np.sqrt((np.trace(A) / 4) / (np.trace(G) / 2))
    perm = _to_stacked(params)
    cross = np.sqrt(lam) * (pi * np.kron(np.eye(4), G) + np.kron(A, np.eye(2)) / pi)
    expected = D + perm.T @ cross @ perm
    got = np.linalg.inv(_dense(M, params))
    assert (
        np.abs(got - expected).max()
        <= 10 * n * np.linalg.cond(expected) * EPS * np.abs(expected).max()
    )


def _layer_coords(params):
    """Per layer, ravel_pytree indices of its combined [W; b] in the (d_in+1, d_out)
    row-major order A (x) G acts in (w1 is stored (d_out, d_in): transposed)."""
    flat, unravel = ravel_pytree(params)
    idx = jax.tree.map(np.asarray, unravel(jnp.arange(flat.size, dtype=flat.dtype)))
    idx = jax.tree.map(lambda t: t.astype(int), idx)
    return [
        np.vstack([idx["w0"], idx["b0"][None]]).ravel(),
        np.vstack([idx["w1"].T, idx["b1"][None]]).ravel(),
    ], idx["s"].ravel()


def test_M_is_the_inverse_of_the_pi_damped_kronecker_blocks(ce):
    """Oracle: hand-computed A, G per layer -> the pi-damped Kronecker block, inverted by
    numpy, placed block-diagonally; the non-dense leaf gets 1 / (its diagonal). (The eigen
    mode's inverse is checked exactly in the single-layer test below.)"""
    params, x, y, M = ce
    mode = "pi"
    flat, unravel = ravel_pytree(params)
    P = flat.size
    expected = np.zeros((P, P))
    coords, other = _layer_coords(params)
    for (A, G), ix in zip(_hand_factors(params, x, y, softmax_ce, "exact"), coords, strict=True):
        if mode == "eigen":
            block = np.kron(A, G) + LAM * np.eye(ix.size)
        else:  # Martens & Grosse 6.3, pi from the traces per dimension
            pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
            r = np.sqrt(LAM)
            block = np.kron(A + pi * r * np.eye(A.shape[0]), G + r / pi * np.eye(G.shape[0]))
        expected[np.ix_(ix, ix)] = np.linalg.inv(block)
    expected[other, other] = 1 / np.asarray(M.diagonal["s"]).ravel()
    got = np.asarray(fast_jit(jax.vmap(lambda e: ravel_pytree(M(unravel(e)))[0]))(jnp.eye(P))).T
    # Inverse of an SPD block of condition c: relative error <= c * (rounding of the
    # factors and eigh, ~1e3 eps); the bound below has c from the oracle and a 10x margin.
    cond = np.linalg.cond(np.linalg.inv(expected))
    np.testing.assert_allclose(got, expected, atol=1e4 * cond * EPS * np.abs(expected).max())


def _to_stacked(like):
    """The permutation matrix from ravel_pytree order to stacked [W; b] order."""
    flat, unravel = ravel_pytree(like)
    return np.stack([np.asarray(_stack(unravel(e))) for e in np.eye(flat.size)], axis=1)


def test_pcg_solves_the_same_damped_system(ce):
    params, x, y, M = ce
    lam, tol = LAM, 1e-10
    B = jaxcurv.ggn_operator(lambda p: model(p, x), lambda f: softmax_ce(f, y), params)
    Bd = np.asarray(B.to_dense())
    b = jax.tree.map(lambda t: jnp.cos(jnp.arange(t.size, dtype=t.dtype)).reshape(t.shape), params)
    flat_b, unravel = ravel_pytree(b)
    D = Bd + lam * np.eye(Bd.shape[0])
    exact = np.linalg.solve(D, np.asarray(flat_b))
    # Forward error of a solve stopped at ||r|| <= tol ||b||: ||x - x*|| / ||x*|| <= cond
    # tol; a factor 10 covers the recurrence residual's drift from the true one.
    bound = 10 * np.linalg.cond(D) * tol
    # Both solves in one program: one compile.
    solve = fast_jit(
        lambda b, M: [jaxcurv.cg(B, b, tol=tol, damping=lam, M=m, maxiter=500) for m in (None, M)]
    )
    for sol, info in solve(b, M):
        assert bool(info.converged)
        err = np.linalg.norm(ravel_pytree(sol)[0] - exact) / np.linalg.norm(exact)
        assert err <= bound


def test_under_jit_and_as_a_jit_argument():
    params, x, y = _setup()
    M = jaxcurv.kfac_preconditioner(model, mse, params, damping=0.1, x=x, y=y)
    build = jax.jit(
        lambda p, lam: jaxcurv.kfac_preconditioner(model, mse, p, damping=lam, x=x, y=y)
    )
    Mj = build(params, 0.1)
    v = jax.tree.map(jnp.ones_like, params)
    apply = jax.jit(lambda M, v: M(v))
    for got in (Mj(v), apply(M, v)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), got, M(v))
    # A ModelAndLoss is taken too, with its routing.
    Mo = jaxcurv.kfac_preconditioner(
        jaxcurv.ModelAndLoss(model, mse), params, damping=0.1, x=x, y=y
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), Mo(v), M(v))


def test_a_shared_weight_is_no_dense_layer():
    params, x, y = _setup()

    def tied(p, x):  # w0 used twice: no Kronecker block for it, the diagonal instead
        h = jnp.tanh(x @ p["w0"] + p["b0"])
        return (_dense_t(h, p["w1"]) + p["b1"]) * p["s"] + jnp.sum(p["w0"])

    M = jaxcurv.kfac_preconditioner(tied, mse, params, damping=0.1, x=x, y=y)
    assert [layer.weight for layer in M.layers] == ["['w1']"]
    assert M.diagonal["w0"] is not None and M.diagonal["b0"] is not None


def test_errors():
    params, x, y = _setup()
    elementwise = lambda p, x: x[:, :2] * p["b1"]
    with pytest.raises(ValueError, match="found no dense layer"):
        jaxcurv.kfac_preconditioner(elementwise, mse, params, damping=0.1, x=x, y=y)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(
            ValueError, match=r"kfac_preconditioner\(damping=...\)` must be positive"
        ):
            jaxcurv.kfac_preconditioner(model, mse, params, damping=bad, x=x, y=y)
    with pytest.raises(TypeError, match=r"damping=...\)` must be a real number"):
        jaxcurv.kfac_preconditioner(model, mse, params, damping="1e-3", x=x, y=y)
    with pytest.raises(ValueError, match=r"kind=...\)` must be one of"):
        jaxcurv.kfac_preconditioner(model, mse, params, damping=0.1, kind="fisher", x=x, y=y)
    with pytest.raises(TypeError, match="needs `key=`"):
        jaxcurv.kfac_preconditioner(model, mse, params, damping=0.1, kind="mc", x=x, y=y)
    quartic = lambda f, y: jnp.mean(jnp.sum((f - y) ** 4, axis=-1))
    with pytest.raises(ValueError, match="no positive multiple"):
        jaxcurv.kfac_preconditioner(
            model, quartic, params, damping=0.1, kind="mc", key=jax.random.key(0), x=x, y=y
        )
    with pytest.raises(TypeError, match="num_samples"):
        jaxcurv.kfac_preconditioner(model, mse, params, damping=0.1, num_samples=1.0, x=x, y=y)


def test_hessian_free_with_kfac_solves_the_same_damped_system():
    """``hessian_free(preconditioner="kfac")`` and a callable builder change the CG path,
    not the system: the direction is ``-(G + lambda I)^{-1} g`` as without them."""
    params, x, y = _setup()
    objective = jaxcurv.ModelAndLoss(model, softmax_ce)
    lam, tol = LAM, 1e-10
    traced = []

    def build(p, damping, x, y):  # the callable form, cheapest SPD: M = I / (1 + lambda)
        traced.append(sorted(p))
        return lambda r: jax.tree.map(lambda t: t / (1 + damping), r)

    options = dict(damping=lam, adapt_damping=False, cg_stop="residual", cg_tol=tol)
    options.update(cg_decay=0.0, cg_maxiter=500, cg_backtracking=False, line_search=False)

    # One program for both solves and the dense oracle, one compile. The unpreconditioned
    # solve is not run: both are held to the exact solution, closer than to each other.
    @fast_jit
    def directions(params):
        g = jax.grad(objective)(params, x=x, y=y)
        out = []
        for pre in ("kfac", build):
            opt = jaxcurv.hessian_free(preconditioner=pre, **options)
            _, state = opt.update(g, opt.init(params), params, value_fn=objective, x=x, y=y)
            out.append((state.cg_init, state.cg_status, state.rejected))
        _, G = dense_oracles(lambda p: model(p, x), lambda f: softmax_ce(f, y), params)
        return g, G, out

    g, G, out = directions(params)
    assert traced == [sorted(params)]  # the builder ran, once, inside the update
    D = np.asarray(G) + lam * np.eye(G.shape[0])
    exact = np.linalg.solve(D, -np.asarray(ravel_pytree(g)[0]))
    # Forward error of a solve stopped at ||r|| <= tol ||g||: ||p - p*|| / ||p*|| <= cond
    # tol; a factor 10 covers the recurrence residual's drift from the true one.
    bound = 10 * np.linalg.cond(D) * tol
    for p, status, rejected in out:
        assert int(status) == jaxcurv.CGStatus.CONVERGED and not bool(rejected)
        err = np.linalg.norm(ravel_pytree(p)[0] - exact) / np.linalg.norm(exact)
        assert err <= bound, (err, bound)


def test_hessian_free_kfac_needs_a_model_and_loss_and_positive_damping():
    w = jnp.ones((2, 2))
    opt = jaxcurv.hessian_free(curvature="hessian", preconditioner="kfac")
    with pytest.raises(TypeError, match=r"preconditioner='kfac'\)` needs the model and the"):
        opt.update(w, opt.init(w), w, value_fn=lambda w: jnp.sum(w**2))
    with pytest.raises(ValueError, match=r"hessian_free\(damping=...\)` must be positive"):
        jaxcurv.hessian_free(preconditioner="kfac", damping=0.0)
    with pytest.raises(ValueError, match=r"min_damping=...\)` must be positive"):
        jaxcurv.hessian_free(preconditioner="kfac", min_damping=0.0)
    jaxcurv.hessian_free(preconditioner="kfac", min_damping=0.0, adapt_damping=False)
    with pytest.raises(ValueError, match=r"Or pass a callable `\(params, damping"):
        jaxcurv.hessian_free(preconditioner="k-fac")
