"""The ``jaxcurv landscape`` command: a trained run or a checkpoint, analyzed and reported.

The numbers themselves are checked against a finite-difference oracle in
``tests/test_landscape.py``; here, the run folder, the files and the errors.
"""

import json

import jax
import numpy as np
import pytest

from jaxcurv.app.checkpoints import CheckpointError
from jaxcurv.app.landscape_report import landscape
from jaxcurv.app.run_folder import RunExistsError
from jaxcurv.app.training_step import build_model
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
        assert_png(out / name)
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
