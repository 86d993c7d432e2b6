"""The conventions of docs/conventions.md, checked on every public name where a machine can.

Signatures are read with ``inspect.signature`` over ``jaxcurv.__all__``, so a new public
function is checked the day it is exported. Functions that do not follow a rule yet are
listed in an explicit allow-list beside the rule, with the reason; the list only shrinks.
The behavioural half (old spellings warn and give the same result, both spellings at
once are refused, the TypeError/ValueError rule) runs on tiny instances.
"""

from __future__ import annotations

import inspect
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from jaxcurv._dispatch import DENSE_THRESHOLD

# Spellings replaced by the one budget family (docs/conventions.md, rule 2).
OLD_BUDGET_NAMES = {
    "num_iters": "maxiter",
    "num_probes": "num_samples",
    "num_lanczos": "num_steps",
    "trace_samples": "trace_num_samples",
    "density_probes": "density_num_samples",
    "line_search_max_steps": "line_search_maxiter",
}

# Rule 1. The answer is a random estimate: `key` is required (no default), and where
# DESIGN.md's contract writes it positionally, at that position.
KEY_REQUIRED_AT = {
    "hutchinson_trace": 1,
    "hutchinson_diagonal": 1,
    "spectral_density": 1,
    "trace_function": 1,
    "random_direction": 0,
    "analyze_landscape": None,  # keyword-only, required
    "block_curvature": None,  # keyword-only, required
}
# The key only picks a solver's start vector (or a test direction): keyword, default None
# meaning jax.random.key(0).
KEY_OPTIONAL = {"eigenvalues", "power_iteration", "classify_critical_point", "check_determinism"}
# Required only in one mode (kind="mc"); the function says so when it is missing.
KEY_CONDITIONAL = {"fisher_operator", "kfac_preconditioner"}

# Result NamedTuples that are not estimates or solver results, so report no products.
NOT_ESTIMATES = {
    "BackpropResult": "the forward and backward values of one backprop, no operator products",
    "BlockCurvature": "per-block summaries; its estimates are TraceEstimate/EigenResult fields",
    "HessianFreeState": "optimizer state; its CG diagnostics are a CGInfo",
    "KFACLayer": "a description of one layer (key paths and shape), no numbers",
    "LossSlices": "loss values on a grid, no operator products",
}

# Deprecated spellings not yet marked with `jaxcurv._checks.deprecated_keywords` by their
# owners (they do accept the new spelling and warn on the old one). Empty: keep it so.
UNMARKED_DEPRECATIONS: set[tuple[str, str]] = set()


_A = jnp.asarray(np.diag(np.linspace(1.0, 3.0, 12)) + 0.05)  # symmetric, N = 12
_KEY = jax.random.key(3)
_F = lambda p: jnp.sum((p - 0.5) ** 2 * jnp.arange(1.0, 13.0)) + 0.1 * p[0] * p[1]


def _public_functions():
    for name in jaxcurv.__all__:
        obj = getattr(jaxcurv, name)
        if inspect.isfunction(obj):
            yield name, obj, inspect.signature(obj)


def _result_tuples():
    for name in jaxcurv.__all__:
        obj = getattr(jaxcurv, name)
        if inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
            yield name, obj


def test_every_estimate_and_solver_result_reports_num_matvecs():
    missing = [
        name
        for name, cls in _result_tuples()
        if name not in NOT_ESTIMATES and "num_matvecs" not in cls._fields
    ]
    assert not missing, f"result NamedTuples without `num_matvecs`: {missing}"
    stale = set(NOT_ESTIMATES) - {name for name, _ in _result_tuples()}
    assert not stale, f"NOT_ESTIMATES names no longer exported: {stale}"


def test_old_budget_spellings_only_as_marked_deprecated_keywords():
    bad = []
    for name, fn, sig in _public_functions():
        marked = getattr(fn, "__deprecated_keywords__", {})
        for old in OLD_BUDGET_NAMES.keys() & sig.parameters.keys():
            p = sig.parameters[old]
            deprecated = p.kind is p.KEYWORD_ONLY and p.default is None
            if (name, old) in UNMARKED_DEPRECATIONS and deprecated:
                continue
            if not (deprecated and old in marked):
                bad.append(f"{name}({old}=)")
        for old, new in marked.items():
            # A marked spelling is replaced by a parameter that exists (the decorator also
            # checks this when the module is imported).
            assert new in sig.parameters, f"{name}: {old} -> {new}, which it does not take"
    assert not bad, f"old budget spellings that are not marked deprecated keywords: {bad}"
    still = {
        (name, old)
        for name, _, sig in _public_functions()
        for old in OLD_BUDGET_NAMES
        if old in sig.parameters
    }
    assert UNMARKED_DEPRECATIONS <= still, "drop entries that no longer apply"


@pytest.mark.parametrize(
    "new, old", [("num_steps", "num_lanczos"), ("trace_num_samples", "trace_samples"),
                 ("density_num_samples", "density_probes")],
)  # fmt: skip
def test_both_spellings_are_refused_even_at_the_default_value(new, old):
    # The new keyword given at its documented default value (40, 30, 4) is still given: a
    # default compared by identity would let the small cached int through.
    value = {"num_steps": 40, "trace_num_samples": 30, "density_num_samples": 4}[new]
    with pytest.raises(TypeError, match=f"both `{new}=` and its deprecated spelling `{old}=`"):
        jaxcurv.analyze_landscape(_F, jnp.zeros(12), key=_KEY, **{new: value, old: value})


def test_every_dense_threshold_default_is_the_one_constant():
    seen = {}
    for name, _, sig in _public_functions():
        if "dense_threshold" in sig.parameters:
            seen[name] = sig.parameters["dense_threshold"].default
    assert {"eigenvalues", "classify_critical_point", "analyze_landscape"} <= seen.keys()
    assert all(d == DENSE_THRESHOLD for d in seen.values()), seen


def test_key_placement_follows_rule_1():
    classified = KEY_REQUIRED_AT.keys() | KEY_OPTIONAL | KEY_CONDITIONAL
    for name, _, sig in _public_functions():
        if "key" not in sig.parameters:
            assert name not in classified, f"{name} lost its `key`"
            continue
        assert name in classified, f"{name} takes `key`: classify it under rule 1"
        p = sig.parameters["key"]
        if name in KEY_REQUIRED_AT:
            assert p.default is p.empty, f"{name}: a random estimate needs a required key"
            at = KEY_REQUIRED_AT[name]
            if at is not None:
                assert list(sig.parameters).index("key") == at, name
                assert p.kind is p.POSITIONAL_OR_KEYWORD, name
        else:
            assert p.kind is p.KEYWORD_ONLY and p.default is None, name


def test_typed_and_legacy_keys_agree():
    # jax.random.key(0) and the legacy jax.random.PRNGKey(0) carry the same bits, and
    # key=None is documented as jax.random.key(0). (maxiter=7: the configuration of the
    # power_iteration rename below, compiled once.)
    typed = jaxcurv.power_iteration(_A, key=jax.random.key(0), maxiter=7).eigenvalue
    legacy = jaxcurv.power_iteration(_A, key=jax.random.PRNGKey(0), maxiter=7).eigenvalue
    default = jaxcurv.power_iteration(_A, maxiter=7).eigenvalue
    np.testing.assert_array_equal(typed, legacy)
    np.testing.assert_array_equal(typed, default)


# ------------------------------------------------- deprecated spellings: warn, same answer

# (call with the old spelling, call with the new one, the old keyword, its new name)
_RENAMES = {
    "eigenvalues-num_iters-alone": (
        # Alone it chose one Lanczos pass: the same as method="lanczos", maxiter=m.
        lambda: jaxcurv.eigenvalues(_A, 2, dense_threshold=0, num_iters=8).eigenvalues,
        lambda: (
            jaxcurv.eigenvalues(_A, 2, dense_threshold=0, method="lanczos", maxiter=8).eigenvalues
        ),
        "num_iters",
        "maxiter",
    ),
    "eigenvalues-num_iters-with-method": (
        lambda: (
            jaxcurv.eigenvalues(_A, 2, dense_threshold=0, method="lanczos", num_iters=8).eigenvalues
        ),
        lambda: (
            jaxcurv.eigenvalues(_A, 2, dense_threshold=0, method="lanczos", maxiter=8).eigenvalues
        ),
        "num_iters",
        "maxiter",
    ),
    "power_iteration-num_iters": (
        lambda: jaxcurv.power_iteration(_A, num_iters=7).eigenvalue,
        lambda: jaxcurv.power_iteration(_A, maxiter=7).eigenvalue,
        "num_iters",
        "maxiter",
    ),
    "spectral_density-num_probes": (
        lambda: jaxcurv.spectral_density(_A, _KEY, num_probes=3, num_steps=4).nodes,
        lambda: jaxcurv.spectral_density(_A, _KEY, num_samples=3, num_steps=4).nodes,
        "num_probes",
        "num_samples",
    ),
    "spectral_density-num_lanczos": (
        lambda: jaxcurv.spectral_density(_A, _KEY, num_samples=3, num_lanczos=4).nodes,
        lambda: jaxcurv.spectral_density(_A, _KEY, num_samples=3, num_steps=4).nodes,
        "num_lanczos",
        "num_steps",
    ),
}


@pytest.mark.parametrize("case", sorted(_RENAMES))
def test_old_spelling_warns_and_gives_the_same_result(case):
    old_call, new_call, old, new = _RENAMES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        expected = new_call()  # the new spelling does not warn
    with pytest.warns(DeprecationWarning, match=rf"{old}=.*deprecated.*{new}") as record:
        got = old_call()
    # Attributed to the caller (this file), so Python's default filters show it to users.
    assert record[0].filename == __file__
    np.testing.assert_array_equal(got, expected)


def test_classify_num_iters_runs_what_it_ran(monkeypatch):
    # classify_critical_point hands its budget to eigenvalues; the deprecated num_iters=m
    # must hand over what it always meant, one Lanczos pass of m steps, and warn.
    seen = []

    def record(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("method", "maxiter")})
        raise _Stop

    monkeypatch.setattr("jaxcurv.critical_points.eigenvalues", record)
    x = jnp.zeros(12)
    with pytest.warns(DeprecationWarning, match=r"num_iters=.*deprecated.*maxiter"):
        with pytest.raises(_Stop):
            jaxcurv.classify_critical_point(_F, x, dense_threshold=0, k=2, num_iters=8)
    with pytest.raises(_Stop):
        jaxcurv.classify_critical_point(_F, x, dense_threshold=0, k=2, method="lanczos", maxiter=8)
    with pytest.warns(DeprecationWarning):
        with pytest.raises(_Stop):
            jaxcurv.classify_critical_point(
                _F, x, dense_threshold=0, k=2, method="thick-restart", num_iters=8
            )
    assert seen == [
        {"method": "lanczos", "maxiter": 8},
        {"method": "lanczos", "maxiter": 8},
        {"method": "thick-restart", "maxiter": 8},
    ]


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "call",
    [
        lambda: jaxcurv.eigenvalues(_A, 1, maxiter=5, num_iters=5),
        lambda: jaxcurv.power_iteration(_A, maxiter=5, num_iters=5),
        lambda: jaxcurv.classify_critical_point(_F, jnp.zeros(12), maxiter=5, num_iters=5),
        lambda: jaxcurv.spectral_density(_A, _KEY, num_samples=10, num_probes=10),
        lambda: jaxcurv.spectral_density(_A, _KEY, num_steps=4, num_lanczos=4),
    ],
    ids=["eigenvalues", "power_iteration", "classify", "density-samples", "density-steps"],
)
def test_both_spellings_at_once_is_a_type_error(call):
    with pytest.raises(TypeError, match="deprecated spelling"):
        call()


# ------------------------------------------- rule 7: kind wrong TypeError, value ValueError

_COUNTS = {
    "cg(maxiter=...)": lambda v: jaxcurv.cg(_A, jnp.ones(12), maxiter=v),
    "eigenvalues(k=...)": lambda v: jaxcurv.eigenvalues(_A, v),
    "eigenvalues(maxiter=...)": lambda v: jaxcurv.eigenvalues(_A, 1, maxiter=v),
    "eigenvalues(max_basis=...)": lambda v: jaxcurv.eigenvalues(_A, 1, max_basis=v),
    "eigenvalues(dense_threshold=...)": lambda v: jaxcurv.eigenvalues(_A, 1, dense_threshold=v),
    "power_iteration(maxiter=...)": lambda v: jaxcurv.power_iteration(_A, maxiter=v),
    "hutchinson_trace(num_samples=...)": lambda v: jaxcurv.hutchinson_trace(_A, _KEY, v),
    "hutchinson_diagonal(num_samples=...)": lambda v: jaxcurv.hutchinson_diagonal(_A, _KEY, v),
    "spectral_density(num_samples=...)": lambda v: jaxcurv.spectral_density(
        _A, _KEY, num_samples=v
    ),
    "spectral_density(num_steps=...)": lambda v: jaxcurv.spectral_density(_A, _KEY, num_steps=v),
    "spectral_density(num_grid=...)": lambda v: jaxcurv.spectral_density(_A, _KEY, num_grid=v),
    "trace_function(num_samples=...)": lambda v: jaxcurv.trace_function(
        _A, _KEY, jnp.log, num_samples=v
    ),
    "trace_function(num_steps=...)": lambda v: jaxcurv.trace_function(
        _A, _KEY, jnp.log, num_steps=v
    ),
    "classify_critical_point(dense_threshold=...)": lambda v: jaxcurv.classify_critical_point(
        _F, jnp.zeros(12), dense_threshold=v
    ),
    "classify_critical_point(k=...)": lambda v: jaxcurv.classify_critical_point(
        _F, jnp.zeros(12), dense_threshold=0, k=v
    ),
    "check_determinism(num_repeats=...)": lambda v: jaxcurv.check_determinism(
        _F, jnp.zeros(12), num_repeats=v
    ),
}


@pytest.mark.parametrize("name", sorted(_COUNTS))
def test_counts_follow_the_type_error_value_error_rule(name):
    call = _COUNTS[name]
    for wrong_kind in (2.5, "3", True):
        with pytest.raises(TypeError, match=re.escape(f"`{name}`")):
            call(wrong_kind)
    with pytest.raises(ValueError, match=r"got -1"):
        call(-1)
