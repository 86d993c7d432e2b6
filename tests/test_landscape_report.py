"""The ``jaxcurv landscape`` command: a trained run or a checkpoint, analyzed and reported.

The numbers themselves are checked against a finite-difference oracle in
``tests/test_landscape.py``; here, the run folder, the files and the errors.
"""

import copy
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv.app.checkpoints import CheckpointError
from jaxcurv.app.landscape_report import landscape
from jaxcurv.app.landscape_text import render_landscape
from jaxcurv.app.layer_report import layers_figure
from jaxcurv.app.plots import pyplot
from jaxcurv.app.run_folder import RunExistsError, save_figure
from jaxcurv.app.training_step import build_data, build_model
from tests._cli_fixtures import TINY_MODEL, assert_png, tiny_config


@pytest.mark.parametrize("steps, directions", [(0, "random"), (2, "eigenvectors")])
def test_landscape_command_trains_first_or_analyzes_the_initialization(tmp_path, steps, directions):
    cfg = tiny_config(tmp_path, [f"run.steps={steps}", f"landscape.slice_directions={directions}"])
    out = tmp_path / "land"
    res = landscape(cfg, out, progress=False)
    assert res["source"] == {"trained_steps": steps}
    assert res["model"].startswith(TINY_MODEL) and res["num_examples"] == 32
    saved = json.loads((out / "landscape.json").read_text())
    assert saved["top_eigenvalues"] == res["top_eigenvalues"]
    assert saved["files"] == {
        "density_plot": "spectral_density.png",
        "slice_1d_plot": "slice_1d.png",
        "slice_2d_plot": "slice_2d.png",
        "interpolation_plot": "interpolation.png",
        "layers_plot": "layers.png",
        "report": "landscape.md",
    }
    # Every reported eigenvalue carries its residual and converged flag, in both tables.
    pairs = saved["eigenpairs"]
    for end in ("top", "bottom"):
        rows = pairs[end]
        assert [r["eigenvalue"] for r in rows] == saved[f"{end}_eigenvalues"]
        assert [r["residual"] for r in rows] == saved[f"{end}_residuals"]
        assert [r["converged"] for r in rows] == saved[f"{end}_converged"]
    assert pairs["all_converged"] == all(saved["top_converged"] + saved["bottom_converged"])
    assert saved["spectral_density"]["sigma"] > 0 and saved["spectral_density"]["num_steps"]
    # The line from the initialization ends at the analyzed point: its loss is the loss.
    line = saved["interpolation"]
    at_end = min(range(len(line["t"])), key=lambda i: abs(line["t"][i] - 1.0))
    assert line["loss"][at_end] == pytest.approx(saved["loss"], rel=1e-5)
    for name in saved["files"].values():
        if name.endswith(".png"):
            assert_png(out / name)
    _check_layers_against_the_dense_hessian(cfg, saved, steps)
    _check_the_report_text(saved, (out / "landscape.md").read_text(), tmp_path)
    assert (out / "train" / "metrics.jsonl").exists() == (steps > 0)
    assert saved["slice_directions"] == directions
    if directions == "random":
        # Filter-normalized (Li et al. 2018): every filter of a weight matrix has its norm
        # and biases get none, so |d| is the norm of the weight matrices alone.
        params = build_model(cfg).init(jax.random.key(cfg.run.seed))
        weights = [np.asarray(a) for a in jax.tree.leaves(params) if np.ndim(a) >= 2]
        norm = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in weights))
        assert saved["slice_1d"]["direction_norm"] == pytest.approx(norm, rel=1e-5)
    assert (out / "config.toml").exists()
    # An existing analysis is kept unless overwrite is asked for.
    with pytest.raises(RunExistsError, match="--overwrite"):
        landscape(cfg, out)


def test_landscape_command_checkpoint_errors(tmp_path):
    cfg = tiny_config(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        landscape(cfg, tmp_path / "a", checkpoint=tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        landscape(cfg, tmp_path / "b", checkpoint=tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a jaxcurv checkpoint"):
        landscape(cfg, tmp_path / "c", checkpoint=tmp_path / "junk.npz")


def _check_layers_against_the_dense_hessian(cfg, saved, steps):
    """Per-layer traces and top eigenvalues against the dense float64 Hessian's blocks."""
    lay = saved["layers"]
    assert [r["label"] for r in lay["layers"]] == [
        "layer 1 (w 16x3, b 3)",
        "layer 2 (w 3x16, b 16)",
    ]
    assert lay["num_samples"] == 30 and [r["size"] for r in lay["layers"]] == [51, 64]
    if steps:  # the oracle needs the parameters; at the initialization they are the seed's
        return
    model = build_model(cfg)
    params = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(cfg.run.seed))
    )
    train_set, _ = build_data(cfg)
    x, y = (jnp.asarray(a[:32], jnp.float64) for a in (train_set.inputs, train_set.targets))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = np.asarray(
        jax.jit(jax.hessian(lambda f: model.loss(model.apply(unravel(f), x), y)))(flat)
    )
    # ravel_pytree order: layer 1's b (3) and w (48), then layer 2's b (16) and w (48).
    blocks = [slice(0, 51), slice(51, 115)]
    for row, idx in zip(lay["layers"], blocks, strict=True):
        block = dense[idx, idx]
        exact = np.trace(block)
        # Hutchinson is unbiased and its stderr is estimated from 30 probes: 5 standard
        # errors is a miss with probability < 1e-4 even with the estimated stderr's spread.
        assert abs(row["trace"]["estimate"] - exact) <= 5 * row["trace"]["stderr"], (row, exact)
        top = np.linalg.eigvalsh(block)[::-1][:3]
        got = [p["eigenvalue"] for p in row["eigenpairs"]["top"]]
        # float32 products (the app's model dtype) against float64: eigh of a float32 matrix
        # is good to ~ N eps32 max|lambda| = 64 * 1.2e-7 ~ 1e-5 relative; 1e-4 leaves margin.
        np.testing.assert_allclose(got, top, rtol=0, atol=1e-4 * max(abs(top)))
        assert row["eigenpairs"]["method"] == "dense" and row["eigenpairs"]["all_converged"]


def _check_the_report_text(saved, text, tmp_path):
    """Every number of the report says how it was obtained; unconverged pairs are flagged."""
    for phrase in (
        "Rademacher probes",
        "one standard error",
        f"sigma = {saved['spectral_density']['sigma']:.3g}",
        f"{saved['spectral_density']['num_samples']} random probes x",
        "compiling",
        "running",
        "points over t in",
        "Per-layer curvature",
        "dense: the 115 x 115 Hessian formed from 115 Hessian-vector products",
        "The dense spectrum gives the exact trace",
        f"{saved['hutchinson_trace']['estimate']:.4g} +- {saved['hutchinson_trace']['stderr']:.2g}",
        f"{len(saved['slice_1d']['t'])} points over t in [-1, 1]",
    ):
        assert phrase in text, phrase
    for row in saved["layers"]["layers"]:
        assert f"| {row['label']} | {row['size']} |" in text
    assert "NOT" not in text or not saved["eigenpairs"]["all_converged"]
    # The same report with unconverged pairs says so, in the text and the layer plot.
    bad = copy.deepcopy(saved)
    bad["eigenpairs"]["top"][0]["converged"] = False
    bad["layers"]["layers"][1]["eigenpairs"]["top"][2]["converged"] = False
    words = "\n".join(render_landscape(bad))
    assert "did NOT converge" in words and "| largest 1 |" in words
    assert re.search(r"\| layer 2 .*\*\*NO\*\*: 3 \|", words), words
    plt = pyplot()
    fig = layers_figure(plt, bad)
    save_figure(fig, tmp_path / "bad_layers.png")
    plt.close(fig)
    assert_png(tmp_path / "bad_layers.png")
