"""Keeps the benchmark machinery from rotting: a tiny problem through the whole pipeline.

Nothing here times anything or asserts speed; it checks that the shared method runs, that
its correctness gate rejects disagreeing candidates, that the FLOP floors are the ones
the issues state, and that results turn into a report.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import pytest

from benchmarks import common, products, report


def test_flop_floors_of_the_reference_mlp():
    # The issues' numbers for 784-1000-1000-1000-10: hvp ~2.8x, Hessian ~1.8x, GGN ~1.26x.
    fl = common.mlp_floors([784, 1000, 1000, 1000, 10], 256)
    assert fl["hvp"] == pytest.approx((9 * 2794 - 5 * 784) / (3 * 2794 - 784))
    assert round(fl["hvp"], 1) == 2.8
    assert round(fl["hessian_apply"], 1) == 1.8
    assert round(fl["ggn_apply"], 2) == 1.26


def test_interleaved_checks_before_timing():
    calls = []

    def check(res):
        calls.append(sorted(res))
        common.check_close([], "a == b", res["a"], res["b"], 1e-6)

    t = common.interleaved(
        {"a": lambda: jnp.ones(3), "b": lambda: jnp.ones(3)},
        repeats=2,
        warmup=0,
        check=check,
        log=None,
    )
    assert calls == [["a", "b"]]
    assert {n: len(v.times) for n, v in t.items()} == {"a": 2, "b": 2}
    with pytest.raises(AssertionError, match="do not compute the same numbers"):
        common.interleaved(
            {"a": lambda: jnp.ones(3), "b": lambda: jnp.zeros(3)},
            repeats=1,
            warmup=0,
            check=check,
            log=None,
        )


def test_settings_layering_and_unknown_keys():
    s = common.resolve("products", products.DEFAULTS, {"products": {"batch": 8}}, quick=False)
    assert s["batch"] == 8 and s["repeats"] == common.COMMON_DEFAULTS["full"]["repeats"]
    q = common.resolve("products", products.DEFAULTS, {"quick": {"repeats": 2}}, quick=True)
    assert q["repeats"] == 2
    with pytest.raises(ValueError, match="Unknown setting"):
        common.resolve("products", products.DEFAULTS, {"products": {"bacth": 8}}, quick=False)


def test_tiny_products_run_to_report(tmp_path):
    s = {
        **products.DEFAULTS["quick"],
        "sizes": [6, 8, 3],
        "batch": 4,
        "repeats": 1,
        "warmup": 0,
        "seed": 0,
    }
    payload = {"mlp": products.mlp_products(s)}
    assert all(c["ok"] for c in payload["mlp"]["checks"])
    out = tmp_path / "cpu"
    out.mkdir()
    common.write_result(out, "products", s, True, payload)
    doc = json.loads((out / "products.json").read_text())
    assert doc["environment"]["backend"] == "cpu"
    md = report.write_report(tmp_path / "BENCHMARKS.md", [out]).read_text()
    assert "## Summary" in md and "`hvp` / one `jax.grad`" in md
