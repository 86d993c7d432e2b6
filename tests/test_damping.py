"""The reduction ratio and the Levenberg-Marquardt damping rule, against hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv.damping import levenberg_marquardt_damping, reduction_ratio

EPS64 = np.finfo(np.float64).eps
MARGIN = 10.0

# ------------------------------------------------------------------------ the damping rule


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "rho, expected",
    [
        # rho < 1/4 (and anything not >= 1/4): lambda * 3/2.
        (0.1, 0.3 * 1.5),
        (-2.0, 0.3 * 1.5),
        (float("nan"), 0.3 * 1.5),
        (float("-inf"), 0.3 * 1.5),
        # 1/4 <= rho <= 3/4, both ends included: lambda kept.
        (0.25, 0.3),
        (0.5, 0.3),
        (0.75, 0.3),
        # rho > 3/4: lambda * 2/3.
        (0.9, 0.3 * 2 / 3),
        (5.0, 0.3 * 2 / 3),
    ],
)
def test_the_three_branches(rho, expected, dtype, jit):
    rule = jax.jit(levenberg_marquardt_damping) if jit else levenberg_marquardt_damping
    lam = jnp.asarray(0.3, dtype)
    got = rule(lam, jnp.asarray(rho, dtype), jnp.asarray(True))
    assert got.dtype == dtype
    # One multiplication by a factor rounded to the dtype: two roundings of `expected`.
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(float(got), expected, rtol=MARGIN * 2 * eps)


def test_a_rejected_step_raises_the_damping_whatever_rho():
    for rho in (0.1, 0.5, 0.9):
        got = levenberg_marquardt_damping(jnp.asarray(2.0), jnp.asarray(rho), jnp.asarray(False))
        assert float(got) == 3.0  # 2 * 1.5, exact in binary


def test_an_uninformative_step_keeps_the_damping():
    for rho, accepted in ((0.1, True), (0.9, True), (0.5, False)):
        got = levenberg_marquardt_damping(
            jnp.asarray(2.0), jnp.asarray(rho), jnp.asarray(accepted), informative=False
        )
        assert float(got) == 2.0


def test_the_bounds_are_kept_and_the_constants_are_the_callers():
    lam = jnp.asarray(1.0)
    up = levenberg_marquardt_damping(lam, jnp.asarray(0.0), max_damping=1.2)
    down = levenberg_marquardt_damping(lam, jnp.asarray(1.0), min_damping=0.9)
    assert float(up) == 1.2 and float(down) == 0.9
    # Other constants: rho = 0.5 is "bad" below rho_low = 0.6 and x4 raises it.
    got = levenberg_marquardt_damping(lam, jnp.asarray(0.5), increase=4.0, rho_low=0.6)
    assert float(got) == 4.0
    got = levenberg_marquardt_damping(lam, jnp.asarray(0.5), decrease=0.25, rho_high=0.4)
    assert float(got) == 0.25
    # The clip applies even to an unchanged damping (an initial value below the floor).
    got = levenberg_marquardt_damping(jnp.asarray(1e-12), jnp.asarray(0.5), informative=False)
    assert float(got) == 1e-8


# ---------------------------------------------------------------------- the reduction ratio


def test_reduction_ratio_of_a_quartic_by_hand():
    # f = x^4 at x = 1: g = 4, B = f'' = 12. Along p = -1/2 with lambda = 0:
    # phi(p) = g p + B p^2 / 2 = -2 + 3/2 = -1/2 = m(p); f(1/2) - f(1) = 1/16 - 1 = -15/16.
    rho = reduction_ratio(1.0, 1 / 16, -0.5, -2.0, 0.25, 0.0)
    assert float(rho) == 15 / 8  # every operation exact in binary
    # The damping CG solved with is taken back out: phi of the damped model at lambda = 2
    # is -1/2 + 2 * (1/4) / 2 = -1/4, and rho is unchanged.
    assert float(reduction_ratio(1.0, 1 / 16, -0.25, -2.0, 0.25, 2.0)) == 15 / 8
    # With a rate: s = p / 2, m(s) = -1 + 3/8 = -5/8; f(3/4) - f(1) = 81/256 - 1 = -175/256.
    rho = reduction_ratio(1.0, 81 / 256, -0.5, -2.0, 0.25, 0.0, 0.5)
    np.testing.assert_allclose(float(rho), (175 / 256) / (5 / 8), rtol=MARGIN * 4 * EPS64)


def test_reduction_ratio_is_nan_when_the_model_predicts_no_decrease():
    # Uphill p = +1/2: m(p) = 2 + 3/2 > 0.
    assert np.isnan(float(reduction_ratio(1.0, 81 / 16, 3.5, 2.0, 0.25, 0.0)))
    # A zero step predicts nothing: no ratio either.
    assert np.isnan(float(reduction_ratio(1.0, 1.0, 0.0, 0.0, 0.0, 1.0)))


@pytest.mark.parametrize("lr", [1.0, 0.3])
def test_reduction_ratio_is_one_on_a_quadratic(lr):
    # f(t) = g^T t + t^T B t / 2 is its own model: rho = 1 up to rounding, for any p.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    B, g, lam = a @ a.T + np.eye(4), rng.standard_normal(4), 0.7
    p = -np.linalg.solve(B + lam * np.eye(4), g)  # the damped Newton step: m(p) < 0
    f = lambda t: g @ t + 0.5 * t @ B @ t
    phi = g @ p + 0.5 * p @ (B + lam * np.eye(4)) @ p
    rho = reduction_ratio(0.0, f(lr * p), phi, g @ p, p @ p, lam, lr)
    # Both sides are sums of O(16) terms of size <= scale: 100 eps of it, over |m|.
    scale = np.abs(g) @ np.abs(p) + np.abs(p) @ np.abs(B) @ np.abs(p) + lam * p @ p
    np.testing.assert_allclose(float(rho), 1.0, atol=MARGIN * 100 * EPS64 * scale / abs(f(lr * p)))


def test_hessian_free_takes_its_damping_defaults_from_the_rule():
    """One source of Martens' constants: the rule's defaults are the optimizer's."""
    import inspect

    import jaxcurv

    hf = inspect.signature(jaxcurv.hessian_free).parameters
    rule = inspect.signature(levenberg_marquardt_damping).parameters
    names = {"damping_increase": "increase", "damping_decrease": "decrease"}
    for option in (
        "damping_increase",
        "damping_decrease",
        "rho_low",
        "rho_high",
        "min_damping",
        "max_damping",
    ):
        assert hf[option].default == rule[names.get(option, option)].default, option
