"""``check_determinism``: reports run-to-run differences, and only real ones.

Non-determinism is injected with known size (a host callback that changes a factor on each
call, a global read at trace time), so the reported differences have an exact oracle.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from jaxcurv.determinism import DeterminismReport, check_determinism
from jaxcurv.hessian_free import ModelAndLoss

MARGIN = 10.0  # every tolerance below is a stated bound times this


def _params(kind, dtype):
    w = jnp.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(3, 2)
    b = jnp.asarray([0.1, -0.2], dtype)
    return {"w": w, "b": b} if kind == "dict" else (w, b)


def _unpack(p):
    return (p["w"], p["b"]) if isinstance(p, dict) else p


def _loss(p, x):
    w, b = _unpack(p)
    return jnp.mean(jnp.tanh(x @ w + b) ** 2)


def _x(dtype):
    return jnp.cos(jnp.arange(12, dtype=dtype)).reshape(4, 3)


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_deterministic_function_is_reported_bit_identical(kind, dtype):
    report = check_determinism(_loss, _params(kind, dtype), _x(dtype), num_repeats=3)
    assert isinstance(report, DeterminismReport)
    assert report.deterministic
    assert report.num_repeats == 3
    assert report.quantities == ("loss", "gradient", "hvp")
    assert all(report.max_abs_diff[q] == 0.0 for q in report.quantities)
    assert all(report.max_rel_diff[q] == 0.0 for q in report.quantities)
    assert all(report.all_finite.values())
    assert report.summary.startswith("deterministic: 3 runs compared bit for bit")
    assert str(report) == report.summary


def test_model_and_loss_also_checks_the_gauss_newton_product():
    objective = ModelAndLoss(
        lambda p, x: jnp.tanh(x @ p["w"] + p["b"]), lambda o, y: jnp.mean((o - y) ** 2)
    )
    x = _x(jnp.float64)
    report = check_determinism(
        objective, _params("dict", jnp.float64), extra_args={"x": x, "y": jnp.zeros((4, 2))}
    )
    assert report.quantities == ("loss", "gradient", "hvp", "ggn_vp")
    assert report.deterministic, report.summary


def _noisy_loss(eps, values):
    """``(1 + eps * c) * loss`` with ``c`` the next of ``values`` on each host call."""
    it = iter(values)

    def factor():
        return np.asarray(next(it), np.float64)

    def value_fn(p, x):
        c = io_callback(factor, jax.ShapeDtypeStruct((), jnp.float64))
        return (1.0 + eps * c) * _loss(p, x)

    return value_fn


def test_runtime_differences_are_detected_with_their_size():
    eps = 1e-9
    # Every call sees factor 1 + eps * c; each run calls it the same number of times, so
    # run k differs from run 0 by exactly k * calls_per_run * eps relative.
    counter = iter(range(10**6))
    fn = _noisy_loss(eps, counter)
    p, x = _params("dict", jnp.float64), _x(jnp.float64)
    report = check_determinism(fn, p, x, num_repeats=3)
    assert not report.deterministic
    calls_per_run = (next(counter) - 0) // 3  # calls made so far, over three runs
    expected = 2 * calls_per_run * eps  # the largest offset: run 2 against run 0
    # How far the measured offset may sit from `expected`: the factor 1 + eps c_0 of the
    # first run divides it (relative error <= eps * 3 calls_per_run), and each float64
    # quantity carries its rounding u |q| (u = 2^-53), which is u / expected relative to an
    # offset of expected |q|: together ~1e-8 here; rtol 1e-3 is far outside that and still
    # far inside the gap to any other count of calls (a relative step of 1/calls_per_run).
    u = np.finfo(np.float64).eps / 2
    rtol = 1e-3
    assert MARGIN * (3 * calls_per_run * eps + 2 * u / expected) < rtol < 1 / (2 * calls_per_run)
    for q in report.quantities:
        np.testing.assert_allclose(report.max_rel_diff[q], expected, rtol=rtol)
    exact_loss = float(_loss(p, x))
    np.testing.assert_allclose(report.max_abs_diff["loss"], expected * exact_loss, rtol=rtol)
    assert "NOT deterministic" in report.summary
    assert "--xla_gpu_deterministic_ops=true" in report.summary


def test_tolerances_accept_differences_below_them():
    # The runs differ by 1e-9 per call of the callback, a few calls per run: ~1e-8
    # relative, a hundred times below the rtol given, and far above float64 rounding.
    fn = _noisy_loss(1e-9, iter(range(10**6)))
    report = check_determinism(fn, _params("dict", jnp.float64), _x(jnp.float64), rtol=1e-6)
    assert report.deterministic, report.summary
    assert 0 < report.max_rel_diff["loss"] < 1e-6
    assert "within atol=0, rtol=1e-06" in report.summary


def test_nan_in_one_run_only_is_an_unbounded_difference():
    fn = _noisy_loss(1.0, iter([0.0, 0.0, np.nan, np.nan] + [0.0] * 100))
    report = check_determinism(fn, _params("tuple", jnp.float64), _x(jnp.float64))
    assert not report.deterministic
    assert report.max_abs_diff["loss"] == np.inf


def test_nan_in_every_run_is_deterministic_but_flagged():
    def nan_loss(p, x):
        return _loss(p, x) * jnp.nan

    report = check_determinism(nan_loss, _params("dict", jnp.float32), _x(jnp.float32))
    assert report.deterministic
    assert report.all_finite == {"loss": False, "gradient": False, "hvp": False}
    assert "(non-finite values)" in report.summary


def test_retrace_catches_trace_time_state():
    seen = []

    def leaky(p, x):
        # A Python global read while tracing: fixed in one executable, new on each trace.
        seen.append(None)
        return (1.0 + 1e-3 * len(seen)) * _loss(p, x)

    p, x = _params("dict", jnp.float64), _x(jnp.float64)
    assert check_determinism(leaky, p, x).deterministic
    report = check_determinism(leaky, p, x, retrace=True)
    assert not report.deterministic
    # Each retrace adds at least one append, so runs differ by a factor of at least
    # (1 + 1e-3 (k + 1)) / (1 + 1e-3 k) ~ 1 + 1e-3 for k traces so far (< 100 here).
    assert report.max_rel_diff["loss"] > 1e-3 / (1 + 1e-3 * len(seen)) * 0.5


@pytest.mark.parametrize(
    "params, where",
    [
        ({"w": jnp.ones(2), "act": "tanh"}, r"\['act'\]"),
        ({"w": jnp.ones(2), "activation": jnp.tanh}, r"\['activation'\]"),
    ],
    ids=["string-leaf", "function-leaf"],
)
def test_configuration_in_params_is_refused_with_its_path(params, where):
    # Issue 11: a string leaf gave "data type 'tanh' not understood", naming nothing.
    def loss(p):
        return jnp.sum(p["w"] ** 2)

    with pytest.raises(TypeError, match=where) as info:
        check_determinism(loss, params)
    assert "`check_determinism`" in str(info.value)
    assert "eqx.partition" in str(info.value)


def test_direction_comes_from_the_key_only():
    # Same key, same report; the check itself draws no other randomness.
    p, x = _params("dict", jnp.float32), _x(jnp.float32)
    a = check_determinism(_loss, p, x, key=jax.random.key(7))
    b = check_determinism(_loss, p, x, key=jax.random.key(7))
    assert a == b
