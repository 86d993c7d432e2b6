"""The README's "With Flax" and "With Equinox" scripts, run as written, so they stay true.

Each section's Python block is extracted from README.md and executed in a fresh
namespace; then its results are checked against what the text says they are.
"""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np
import pytest

from tests._client_checks import dense_oracles, fast_jit

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _script(heading: str) -> str:
    """The first ```python block of the README section under ``## heading``."""
    text = README.read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python block under '## {heading}'"
    return match.group(1)


def _run(heading: str) -> dict:
    namespace = {"__name__": "__readme__"}
    # The README is written for the default float32: run it so, whatever conftest set.
    with jax.enable_x64(False):
        exec(compile(_script(heading), f"README.md ## {heading}", "exec"), namespace)
    return namespace


def _check_fit(ns: dict) -> None:
    # y = sin(x) on [-2, 2] has mean square 1/2 - sin(8)/16 = 0.44; 20 updates fit it to
    # below 0.05 (measured: 0.01 with dropout's noise, 1e-5 without).
    assert float(ns["loss"]) < 0.05
    assert int(ns["state"].count) == 20


def test_with_flax_script_runs():
    pytest.importorskip("flax")
    ns = _run("With Flax")
    _check_fit(ns)
    top = np.asarray(ns["G"].to_dense())
    exact = np.linalg.eigvalsh(top.astype(np.float64))[-3:]
    printed = np.asarray(ns["jaxcurv"].eigenvalues(ns["G"], 3).eigenvalues)
    # float32 products of a matrix of norm ~1: 1e-4 relative is far above the rounding.
    np.testing.assert_allclose(printed, exact, rtol=1e-4, atol=1e-4 * np.max(np.abs(exact)))
    assert np.all(exact >= -1e-5 * np.max(exact))  # Gauss-Newton: PSD


def test_with_equinox_script_runs():
    pytest.importorskip("equinox")
    ns = _run("With Equinox")
    _check_fit(ns)
    assert type(ns["mlp"]).__name__ == "MLP"  # rebuilt from the trained arrays
    # What it prints: the top Hessian eigenvalues of the trained eqx.partition parameters,
    # against numpy on the dense jax.hessian (tests/_client_checks.dense_oracles). The
    # whole set of curvature tools on eqx.partition parameters is tests/test_equinox.py's.
    model, loss = ns["objective"].bind(x=ns["x"], y=ns["y"])
    H, _ = fast_jit(lambda p: dense_oracles(model, loss, p))(ns["params"])  # one compile
    exact = np.linalg.eigvalsh(np.asarray(H, np.float64))[-3:]
    printed = np.asarray(ns["jaxcurv"].eigenvalues(ns["H"], 3).eigenvalues)
    # float32 products of a matrix of norm ~1: 1e-4 relative is far above the rounding.
    np.testing.assert_allclose(printed, exact, rtol=1e-4, atol=1e-4 * np.max(np.abs(exact)))
