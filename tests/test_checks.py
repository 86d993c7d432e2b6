"""``jaxcurv._checks``: one rule for ``TypeError`` vs ``ValueError``, and messages that say so.

The rule: ``TypeError`` when the kind of a value is wrong, ``ValueError`` when the kind is
right but the value is not allowed. Each case names the call, the exception, and the exact
message (name, what was received, the fix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from jaxcurv import _checks
from jaxcurv.app import data as data_lib
from jaxcurv.app import models as models_lib

CASES = [
    # ---------------------------------------------------------------- the helpers
    (
        lambda: _checks.check_int("f(n=...)", 2.0, minimum=1),
        TypeError,
        "`f(n=...)` must be an int >= 1, got float: 2.0.",
    ),
    (
        lambda: _checks.check_int("f(n=...)", True),
        TypeError,
        "`f(n=...)` must be an int, got bool: True.",
    ),
    (
        lambda: _checks.check_int("f(n=...)", 0, minimum=1, requirement="a positive int"),
        ValueError,
        "`f(n=...)` must be a positive int, got 0.",
    ),
    (
        lambda: _checks.check_int("f(n=...)", np.int64(-3), minimum=0, fix="Count from 0."),
        ValueError,
        "`f(n=...)` must be >= 0, got -3. Count from 0.",
    ),
    (
        lambda: _checks.check_real("f(t=...)", "1e-3"),
        TypeError,
        "`f(t=...)` must be a real number, got str: '1e-3'.",
    ),
    (
        lambda: _checks.check_real("f(t=...)", jnp.ones(2, jnp.float32)),
        TypeError,
        "`f(t=...)` must be a real number, got ArrayImpl: Array([1., 1.], dtype=float32).",
    ),
    (
        lambda: _checks.check_positive("f(t=...)", float("nan")),
        ValueError,
        "`f(t=...)` must be positive, got nan.",
    ),
    (
        lambda: _checks.check_non_negative("f(t=...)", float("inf"), finite=True),
        ValueError,
        "`f(t=...)` must be non-negative and finite, got inf.",
    ),
    (
        lambda: _checks.check_in_interval("f(t=...)", 1.0, "(0, 1)"),
        ValueError,
        "`f(t=...)` must be in (0, 1), got 1.0.",
    ),
    (
        lambda: _checks.check_in_interval("f(t=...)", 0.5, "[1, inf)"),
        ValueError,
        "`f(t=...)` must be at least 1, got 0.5.",
    ),
    (
        lambda: _checks.check_choice("f(mode=...)", "Fwd", ("fwd", "rev")),
        ValueError,
        "`f(mode=...)` must be one of ('fwd', 'rev'), got 'Fwd'.",
    ),
    (
        lambda: _checks.check_choice("f(mode=...)", 1, ("fwd", None)),
        TypeError,
        "`f(mode=...)` must be one of ('fwd', None), got int: 1.",
    ),
    (
        lambda: _checks.check_callable("f(fun)", [1]),
        TypeError,
        "`f(fun)` must be callable, got list: [1].",
    ),
    (
        lambda: _checks.check_instance("f(mesh)", {}, tuple, "a tuple", fix="Pass (1, 2)."),
        TypeError,
        "`f(mesh)` must be a tuple, got dict: {}. Pass (1, 2).",
    ),
    # ---------------------------------------------------------------- through the API
    # A count of the wrong kind is a TypeError everywhere, as in `cg(maxiter=2.5)`.
    (
        lambda: jaxcurv.hessian_free(cg_maxiter=2.5),
        TypeError,
        "`hessian_free(cg_maxiter=...)` must be an int >= 1, got float: 2.5.",
    ),
    (
        lambda: jaxcurv.hessian_free(cg_maxiter=0),
        ValueError,
        "`hessian_free(cg_maxiter=...)` must be a positive int, got 0.",
    ),
    (
        lambda: jaxcurv.hessian_free(line_search_maxiter=-1),
        ValueError,
        "`hessian_free(line_search_maxiter=...)` must be a non-negative int, got -1.",
    ),
    (
        lambda: jaxcurv.hessian_free(damping="1e-3"),
        TypeError,
        "`hessian_free(damping=...)` must be a real number, got str: '1e-3'.",
    ),
    (
        lambda: jaxcurv.hessian_free(damping_increase=0.9),
        ValueError,
        "`hessian_free(damping_increase=...)` must be greater than 1, got 0.9.",
    ),
    (
        lambda: jaxcurv.hessian_free(curvature_fraction=1.5),
        ValueError,
        "`hessian_free(curvature_fraction=...)` must be in (0, 1], got 1.5. Pass None for "
        "curvature on the whole batch.",
    ),
    (
        lambda: jaxcurv.hessian_free(rho_low=0.8),
        ValueError,
        "`hessian_free(rho_low=...)` must be non-negative and below `rho_high`, got (0.8, 0.75).",
    ),
    (
        lambda: jaxcurv.hessian_free(curvature=None),
        TypeError,
        "`hessian_free(curvature=...)` must be one of ('ggn', 'hessian'), got NoneType: None.",
    ),
    (
        lambda: jaxcurv.hessian(lambda x: x @ x, chunk_size=2.0),
        TypeError,
        "`hessian(chunk_size=...)` must be an int >= 1, got float: 2.0.",
    ),
    (
        lambda: jaxcurv.check_determinism(lambda p: p @ p, jnp.ones(2), num_repeats=2.0),
        TypeError,
        "`check_determinism(num_repeats=...)` must be an int >= 2, got float: 2.0.",
    ),
    (
        lambda: jaxcurv.check_determinism(lambda p: p @ p, jnp.ones(2), atol="0"),
        TypeError,
        "`check_determinism(atol=...)` must be a real number, got str: '0'. Use 0 to require "
        "bitwise equality.",
    ),
    (
        lambda: jaxcurv.loss_slices(
            lambda p: p @ p, jnp.ones(2), directions=jnp.ones(2), num_points=3.0
        ),
        TypeError,
        "`loss_slices(num_points=...)` must be an int >= 2, got float: 3.0. A slice "
        "needs both of its ends.",
    ),
    (
        lambda: data_lib.curves(num=2.0),
        TypeError,
        "`curves(num=...)` must be an int >= 1, got float: 2.0.",
    ),
    (
        lambda: models_lib.mlp((2, 1), loss="hinge"),
        ValueError,
        "`mlp(loss=...)` must be one of ('sigmoid_cross_entropy', 'softmax_cross_entropy', "
        "'mse'), got 'hinge'.",
    ),
]


@pytest.mark.parametrize("call, error, message", CASES)
def test_the_rule_and_the_message(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message
    # TypeError and ValueError are never subclasses of one another: the rule can fail.
    assert not isinstance(info.value, ({TypeError: ValueError, ValueError: TypeError}[error]))


def test_numpy_ints_are_ints_and_come_back_as_python_ints():
    got = _checks.check_int("f(n=...)", np.int32(3), minimum=1)
    assert got == 3 and type(got) is int


def test_real_numbers_include_zero_d_arrays_and_exclude_bools():
    for v in (1, 1.5, np.float32(2.0), jnp.asarray(3.0), np.asarray(4)):
        assert _checks.is_real_scalar(v)
    for v in (True, np.bool_(False), "1", jnp.ones(2), 1j, None):
        assert not _checks.is_real_scalar(v)


def test_common_leading_size_skips_scalars_and_names_the_mismatch():
    say = lambda a, n, b, m: f"{a}:{n} {b}:{m}"
    tree = {"k": jax.random.key(0), "s": 1.0, "x": np.zeros((3, 2)), "y": np.zeros(3)}
    assert _checks.common_leading_size(tree, say) == 3
    with pytest.raises(ValueError, match=r"^\['x'\]:3 \['z'\]:4$"):
        _checks.common_leading_size({**tree, "z": np.zeros(4)}, say)


def test_long_values_are_shortened_in_messages():
    with pytest.raises(TypeError) as info:
        _checks.check_callable("f(fun)", "x" * 1000)
    assert len(str(info.value)) < 120
