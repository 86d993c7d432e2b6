"""The ``jaxcurv landscape`` command: a trained run or a checkpoint, analyzed and reported.

The numbers themselves are checked against a finite-difference oracle in
``tests/test_landscape.py``; here, the run folder, the files and the errors.
"""

import json

import pytest

from jaxcurv.app.checkpoints import CheckpointError
from jaxcurv.app.landscape_report import landscape
from jaxcurv.app.run_folder import RunExistsError
from tests._cli_fixtures import TINY_MODEL, assert_png, tiny_config


@pytest.mark.parametrize("steps", [0, 2])
def test_landscape_command_trains_first_or_analyzes_the_initialization(tmp_path, steps):
    cfg = tiny_config(tmp_path, [f"run.steps={steps}"])
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
    }
    for name in saved["files"].values():
        assert_png(out / name)
    assert (out / "train" / "metrics.jsonl").exists() == (steps > 0)
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
