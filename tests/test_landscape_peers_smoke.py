"""Smoke test of ``benchmarks.landscape_peers``: the jaxcurv worker on a tiny MLP against
its dense Hessian, the shared vector layout, and the estimate arithmetic and report.

No PyTorch needed and nothing timed: the peers' workers need the optional peers venv.
"""

from __future__ import annotations

import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcurv
from benchmarks import common
from benchmarks import landscape_peers as lp
from benchmarks import landscape_pipe as pipe
from benchmarks import landscape_workers as lw
from benchmarks import markdown as md
from benchmarks import targets as tg

SIZES = [5, 4, 3]  # N = 5*4 + 4 + 4*3 + 3 = 39 parameters


def _unflatten(z):
    """The shared layout (per layer: (in, out) weight row-major, then bias) in jnp."""
    out, i = [], 0
    for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
        w = z[i : i + a * b].reshape(a, b)
        i += a * b
        out.append({"w": w, "b": z[i : i + b]})
        i += b
    return out


def test_layouts_round_trip_and_torch_orientation():
    rng = np.random.default_rng(0)
    layers = [
        (rng.normal(size=(5, 4)), rng.normal(size=4)),
        (rng.normal(size=(4, 3)), rng.normal(size=3)),
    ]
    flat = pipe.flat_from_layers(layers)
    # Oracle: the layout spelled out by hand.
    want = np.concatenate([layers[0][0].ravel(), layers[0][1], layers[1][0].ravel(), layers[1][1]])
    np.testing.assert_array_equal(flat, want)
    back = pipe.layers_from_flat(flat, SIZES, np.float64)
    for (w, b), (w2, b2) in zip(layers, back, strict=True):
        np.testing.assert_array_equal(w, w2)
        np.testing.assert_array_equal(b, b2)
    torch_arrays = pipe.torch_order(layers)  # nn.Linear keeps (out, in) weights
    assert [a.shape for a in torch_arrays] == [(4, 5), (4,), (3, 4), (3,)]
    np.testing.assert_array_equal(
        pipe.flat_from_layers(pipe.layers_from_torch_order(torch_arrays)), flat
    )
    with pytest.raises(ValueError, match="not an MLP"):
        pipe.layers_from_flat(flat[:-1], SIZES)


def test_jaxcurv_worker_against_the_dense_hessian(tmp_path):
    n, rng = 16, np.random.default_rng(0)
    num = sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:], strict=True))
    params = (0.5 * rng.normal(size=num)).astype(np.float32)
    x = rng.normal(size=(n, SIZES[0])).astype(np.float32)
    # The file benchmarks.landscape_peers.write_data writes (it is not called: JAX's random
    # numbers would cost compiles; the workers only read the file).
    y = rng.integers(0, SIZES[-1], n)
    np.savez(tmp_path / "data.npz", sizes=np.asarray(SIZES), params=params, v=params, x=x, y=y)
    worker = lw.JaxcurvWorker(tmp_path, n, micro_batch=8)
    d = np.load(tmp_path / "data.npz")
    # The oracle in float64 (conftest turns x64 on), from the same float32 weights and data.
    x, y = jnp.asarray(d["x"], jnp.float64), jnp.asarray(d["y"])
    z0 = jnp.asarray(d["params"], jnp.float64)
    H = np.asarray(jax.jit(jax.hessian(lambda z: common.mlp_loss(_unflatten(z), x, y)))(z0))
    evals, evecs = np.linalg.eigh(H)
    scale = np.max(np.abs(evals))
    # float32 products and eigh of a float32 matrix: errors ~ N eps32 ||H|| ~ 5e-6 ||H||.
    tol = 1e-4 * scale

    # jaxcurv.eigenvalues itself is tested elsewhere (and costs a compile): here it returns
    # the dense answer, so what is under test is the worker's glue -- taking the stacked
    # eigenvectors apart, the residual products, the saved layout.
    k = 2
    stacked = [pipe.layers_from_flat(evecs[:, -k + j], SIZES) for j in range(k)]
    tree = [
        {"w": jnp.stack([v[i][0] for v in stacked]), "b": jnp.stack([v[i][1] for v in stacked])}
        for i in range(len(SIZES) - 1)
    ]
    zero = jnp.zeros((), jnp.int32)
    answer = jaxcurv.EigenResult(jnp.asarray(evals[-k:]), tree, jnp.zeros(k), zero, True, zero)
    worker.jaxcurv = types.SimpleNamespace(eigenvalues=lambda *a, **kw: answer)
    eig = worker.eig(k=k, tol=1e-5, save="ev.npy")
    np.testing.assert_allclose(eig["eigenvalues"], evals[-k:])
    # A wrong layout or a mixed-up vector would leave residuals of the order of ||H||.
    assert max(eig["residuals"]) <= tol
    saved = np.load(tmp_path / "ev.npy")
    np.testing.assert_allclose(saved, evecs[:, -k:].T, atol=1e-7)  # float32 copies
    cross = worker.residuals_of("ev.npy", evals[-k:].tolist())["residuals"]
    np.testing.assert_allclose(cross, eig["residuals"], rtol=1e-6, atol=1e-9)


def _doc():
    """A hand-made result: per-product 2 s (jaxcurv) and 5 s (peer) on all examples."""
    lib = {
        "jaxcurv": {"t": 2.0, "red": 0.5, "n": 10, "meas": 6.0},
        "curvlinops": {"t": 5.0, "red": 1.0, "n": 10, "meas": 10.0},
    }
    timing = ("median_s", "min_s", "max_s", "cpu_median_s")
    products = {
        k: {**dict.fromkeys(timing, v["t"]), "build_s": 1.0, "peak_above_data_bytes": 2**20}
        for k, v in lib.items()
    }
    report = {}
    for k, v in lib.items():
        part = {"num_matvecs": v["n"], "s": v["meas"]}
        report[k] = {
            "product": {"median_s": v["red"], "peak_above_data_bytes": 2**20},
            "eig": {**part, "eigenvalues": [1.0, 2.0], "residuals": [1e-6, 2e-6]},
            "trace": {**part, "estimate": 10.0, "stderr": 1.0},
            "density": {**part, "mean_eigenvalue": 0.1},
        }
    settings = {**lp.DEFAULTS["quick"], "seed": 0}
    doc = {
        "settings": settings,
        "products": {"num_examples": 100, "libraries": products, "checks": []},
        "report": {"num_examples": 10, "libraries": report},
        "available": {"jaxcurv": True, "curvlinops": True, "pyhessian": False},
        "omp_wait_policy": "PASSIVE",
    }
    doc["estimates"] = lp.estimates(doc)
    doc["accuracy"] = lp.accuracy(report)
    return doc


def test_estimates_targets_and_report():
    doc = _doc()
    e = doc["estimates"]["jaxcurv"]["eig"]
    # 10 products x 2 s; overhead = 6 s measured - 10 x 0.5 s.
    assert (
        e["estimate_s"] == 20.0 and e["overhead_s"] == 1.0 and e["estimate_with_overhead_s"] == 21.0
    )
    assert doc["estimates"]["curvlinops"]["total"]["estimate_s"] == 150.0
    assert doc["accuracy"]["curvlinops"]["trace_z_vs_jaxcurv"] == 0.0
    checked = {c.name.split(" (")[0]: c for c in tg.evaluate(lp.TARGETS, doc, lp.NAME)}
    speed = next(c for name, c in checked.items() if "curvlinops" in name)
    assert speed.value == pytest.approx(2.5) and speed.met  # 150 s / 60 s
    text = lp.report_section(doc, md.Context("cpu", Path("."), Path(".")))
    assert lp.TITLE in text and "pyhessian" in text and "2.50x" in text
