"""The training loop, checkpoints and bit-identical resume."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv.config import load_config
from jaxcurv.train import (
    CheckpointError,
    RunExistsError,
    build_model,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    save_checkpoint,
    train,
)
from tests._cli_fixtures import (
    ADAM,
    TINY_MODEL,
    TINY_NUM_PARAMETERS,
    assert_png,
    assert_trees_identical,
    copy_run,
    tiny_config,
    trained_run,
    without_time,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return trained_run(tmp_path_factory)


@pytest.mark.parametrize("optimizer", ["hessian_free", "lbfgs"])
def test_resume_is_bit_identical(tmp_path, tiny_run, optimizer):
    if optimizer == "hessian_free":
        cfg, straight = tiny_run  # the same config, trained straight through once
    else:
        cfg = tiny_config(tmp_path, [f"optimizer.name={optimizer}"])
        straight = train(cfg, tmp_path / "straight", plots=False)
    first = train(cfg, tmp_path / "split", stop_after=2, plots=False)
    assert first.metrics[-1]["step"] == 2
    assert latest_checkpoint(tmp_path / "split").name == "step_00000002.npz"
    resumed = train(cfg, tmp_path / "split", resume=True, plots=False)

    assert_trees_identical(straight.params, resumed.params)
    assert_trees_identical(straight.state, resumed.state)
    assert without_time(straight.metrics) == without_time(resumed.metrics)
    assert [r["step"] for r in resumed.metrics] == [0, 1, 2, 3, 4]
    a = np.load(straight.run_dir / "checkpoints" / "step_00000004.npz")
    b = np.load(tmp_path / "split" / "checkpoints" / "step_00000004.npz")
    for name in a.files:
        if name != "__meta__":
            np.testing.assert_array_equal(a[name], b[name])
    # It trained: the test loss went down.
    assert straight.metrics[-1]["test_loss"] < straight.metrics[0]["test_loss"]


def test_run_folder_outputs_parse(tiny_run):
    cfg, res = tiny_run
    run = res.run_dir
    assert (run / ".jaxcurv-run").exists()
    assert load_config(run / "config.toml") == cfg
    metrics = read_metrics(run / "metrics.jsonl")
    assert metrics == res.metrics
    hf = [r for r in metrics if r["step"] > 0]
    assert {"loss", "damping", "rho", "cg_steps", "rejected", "alpha", "time"} <= set(hf[0])
    assert all(isinstance(r["cg_steps"], int) and r["cg_steps"] >= 1 for r in hf)
    assert [r["step"] for r in metrics if "test_loss" in r] == [0, 2, 4]
    times = [r["time"] for r in hf]
    assert times == sorted(times)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["optimizer"] == "hessian_free"
    assert summary["final_test_loss"] == metrics[-1]["test_loss"]
    assert summary["num_parameters"] == TINY_NUM_PARAMETERS == 16 * 3 + 3 + 3 * 16 + 16
    assert res.files["loss_plot"] == "loss_vs_time.png"
    for name in ("loss_vs_time.png", "damping.png"):
        assert_png(run / name)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_00000002.npz",
        "step_00000004.npz",
    ]


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_optax_baselines_train(tmp_path, name):
    overrides = ADAM if name == "adam" else ["optimizer.name=sgd", "optimizer.learning_rate=0.5"]
    cfg = tiny_config(tmp_path, [*overrides, "run.steps=10"])
    res = train(cfg, tmp_path / name, plots=False)
    assert res.metrics[-1]["test_loss"] < res.metrics[0]["test_loss"]
    assert "damping" not in res.metrics[-1]
    assert not (tmp_path / name / "loss_vs_time.png").exists()


def test_equal_settings_share_one_model(tmp_path):
    # Everything compiled for a model is cached on it: equal settings must give the
    # very same object, or each run would compile its steps again.
    a = build_model(tiny_config(tmp_path))
    b = build_model(tiny_config(tmp_path, ["optimizer.name=sgd", "run.steps=7"]))
    c = build_model(tiny_config(tmp_path, ["model.sizes=16,2"]))
    assert a is b and a is not c
    assert a.name.startswith(TINY_MODEL) and c.name.startswith("autoencoder 16-2-16")


def test_checkpoint_from_another_model_is_refused(tmp_path, tiny_run):
    run = copy_run(tiny_run[1].run_dir, tmp_path / "run")
    other = tiny_config(tmp_path, ["model.sizes=16,2"])
    with pytest.raises(CheckpointError) as e:
        train(other, run, resume=True)
    msg = str(e.value)
    assert f"{TINY_MODEL} " in msg and "autoencoder 16-2-16" in msg
    assert "config.toml" in msg

    adam = tiny_config(tmp_path, ADAM)
    with pytest.raises(CheckpointError, match="optimizer state differ"):
        train(adam, run, resume=True)

    damped = tiny_config(tmp_path, ["optimizer.damping=5"])
    with pytest.raises(CheckpointError, match=r"optimizer.damping: 1.0 -> 5.0"):
        train(damped, run, resume=True)


def test_load_checkpoint_errors(tmp_path):
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    path = save_checkpoint(tmp_path / "c.npz", params, (), step=3, model_name="m")
    ck = load_checkpoint(path, params, (), model_name="m")
    assert ck.step == 3
    assert_trees_identical(ck.params, params)
    with pytest.raises(CheckpointError, match="written for model 'm'.*parameters differ"):
        load_checkpoint(path, {"w": jnp.ones((2, 4)), "b": jnp.zeros(4)}, (), model_name="m2")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz", params, ())
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a jaxcurv checkpoint"):
        load_checkpoint(tmp_path / "junk.npz", params, ())


def test_resume_without_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoints"):
        train(cfg, tmp_path / "empty", resume=True)


def test_prepare_run_dir_protects_existing_runs(tmp_path):
    run = prepare_run_dir(tmp_path / "a" / "b")
    assert run.is_dir() and (run / ".jaxcurv-run").exists()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunExistsError, match="--overwrite"):
        prepare_run_dir(run)
    assert prepare_run_dir(run, resume=True) == run
    assert (run / "metrics.jsonl").exists()
    prepare_run_dir(run, overwrite=True)
    assert not (run / "metrics.jsonl").exists()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not written by jaxcurv"):
        prepare_run_dir(foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(FileExistsError, match="is a file"):
        prepare_run_dir(foreign / "thesis.tex")
