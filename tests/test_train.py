"""The training loop, checkpoints, bit-identical resume and the landscape analysis."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv import models
from jaxcurv.config import load_config
from jaxcurv.train import (
    CheckpointError,
    RunExistsError,
    analyze_landscape,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    read_metrics,
    save_checkpoint,
    train,
)

# Kept identical to tests/test_cli.py's, so the compiled steps are shared within a session.
TINY = """
[run]
steps = 4
log_every = 1
eval_every = 2
checkpoint_every = 2
progress = false

[data]
kind = "curves"
size = 8
num_train = 96
num_test = 32
batch_size = 32

[model]
kind = "autoencoder"
sizes = [64, 12, 3]

[optimizer]
name = "hessian_free"
damping = 1.0
cg_maxiter = 10
curvature_fraction = 1.0

[landscape]
num_examples = 64
top_k = 3
bottom_k = 2
num_lanczos = 12
trace_samples = 6
density_probes = 2
slice_points = 5
"""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_config(tmp_path, overrides=()):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return load_config(path, list(overrides))


def assert_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def _without_time(metrics):
    return [{k: v for k, v in r.items() if k != "time"} for r in metrics]


def _assert_trees_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("optimizer", ["hessian_free", "lbfgs"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    cfg = tiny_config(tmp_path, [f"optimizer.name={optimizer}", "optimizer.learning_rate=1.0"])
    straight = train(cfg, tmp_path / "straight")
    first = train(cfg, tmp_path / "split", stop_after=2)
    assert first.metrics[-1]["step"] == 2
    assert latest_checkpoint(tmp_path / "split").name == "step_00000002.npz"
    resumed = train(cfg, tmp_path / "split", resume=True)

    _assert_trees_identical(straight.params, resumed.params)
    _assert_trees_identical(straight.state, resumed.state)
    assert _without_time(straight.metrics) == _without_time(resumed.metrics)
    assert [r["step"] for r in resumed.metrics] == [0, 1, 2, 3, 4]
    a = np.load(tmp_path / "straight" / "checkpoints" / "step_00000004.npz")
    b = np.load(tmp_path / "split" / "checkpoints" / "step_00000004.npz")
    for name in a.files:
        if name != "__meta__":
            np.testing.assert_array_equal(a[name], b[name])
    # It trained: the test loss went down.
    assert straight.metrics[-1]["test_loss"] < straight.metrics[0]["test_loss"]


def test_run_folder_outputs_parse(tmp_path):
    cfg = tiny_config(tmp_path)
    res = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
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
    assert summary["num_parameters"] == 64 * 12 + 12 + 12 * 3 + 3 + 3 * 12 + 12 + 12 * 64 + 64
    for name in ("loss_vs_time.png", "damping.png"):
        assert_png(run / name)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_00000002.npz",
        "step_00000004.npz",
    ]


@pytest.mark.parametrize("name, lr", [("adam", 0.02), ("sgd", 0.5)])
def test_optax_baselines_train(tmp_path, name, lr):
    cfg = tiny_config(
        tmp_path,
        [f"optimizer.name={name}", f"optimizer.learning_rate={lr}", "run.steps=10"],
    )
    res = train(cfg, tmp_path / name, plots=False)
    assert res.metrics[-1]["test_loss"] < res.metrics[0]["test_loss"]
    assert "damping" not in res.metrics[-1]


def test_checkpoint_from_another_model_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    train(cfg, tmp_path / "run", stop_after=2, plots=False)
    other = tiny_config(tmp_path, ["model.sizes=64,10,3"])
    with pytest.raises(CheckpointError) as e:
        train(other, tmp_path / "run", resume=True)
    msg = str(e.value)
    assert "autoencoder 64-12-3-12-64" in msg and "autoencoder 64-10-3-10-64" in msg
    assert "config.toml" in msg

    adam = tiny_config(tmp_path, ["optimizer.name=adam"])
    with pytest.raises(CheckpointError, match="optimizer state differ"):
        train(adam, tmp_path / "run", resume=True)

    damped = tiny_config(tmp_path, ["optimizer.damping=5"])
    with pytest.raises(CheckpointError, match=r"optimizer.damping: 1.0 -> 5.0"):
        train(damped, tmp_path / "run", resume=True)


def test_load_checkpoint_errors(tmp_path):
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    path = save_checkpoint(tmp_path / "c.npz", params, (), step=3, model_name="m")
    ck = load_checkpoint(path, params, (), model_name="m")
    assert ck.step == 3
    _assert_trees_identical(ck.params, params)
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


def test_analyze_landscape_matches_dense_hessian():
    cfg = load_config(
        None,
        [
            "data.kind=regression",
            "model.kind=mlp",
            "model.sizes=2,6,1",
            "model.activation=tanh",
            "model.init=glorot",
            "model.dtype=float64",
            "landscape.top_k=3",
            "landscape.bottom_k=2",
            "landscape.num_lanczos=25",
            "landscape.trace_samples=50",
            "landscape.slice_points=3",
            "landscape.slice_radius=1e-3",
        ],
    )
    m = models.mlp((2, 6, 1), activation="tanh", dtype=jnp.float64)
    params = m.init(jax.random.key(5))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 2)), rng.normal(size=(40, 1))
    res = analyze_landscape(m, params, x, y, cfg)  # files and plots: see test_cli.py

    # Oracle: the dense Hessian from jax.hessian over the flattened parameters, numpy eigh.
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    f = lambda v: m.loss(m.apply(unravel(v), x), y)
    h = np.asarray(jax.hessian(f)(flat))
    eig = np.linalg.eigvalsh(h)
    assert res["num_parameters"] == 25
    np.testing.assert_allclose(res["top_eigenvalues"], eig[::-1][:3], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res["bottom_eigenvalues"], eig[:2], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res["loss"], float(f(flat)), rtol=1e-12)
    g = np.asarray(jax.grad(f)(flat))
    np.testing.assert_allclose(res["gradient_norm"], np.linalg.norm(g), rtol=1e-10)
    tr = res["hutchinson_trace"]
    assert abs(tr["estimate"] - np.trace(h)) <= 5 * tr["stderr"] + 1e-9
    assert res["critical_point"]["kind"] == "not critical"
    # The 1-D slice along the top eigenvector has curvature lambda_max (second difference).
    s = res["slice_1d"]["loss"]
    r = 1e-3
    np.testing.assert_allclose((s[0] - 2 * s[1] + s[2]) / r**2, eig[-1], rtol=1e-3)
    np.testing.assert_allclose(s[1], res["loss"], rtol=1e-12)
    s2 = np.asarray(res["slice_2d"]["loss"])
    assert s2.shape == (3, 3)
    np.testing.assert_allclose(s2[1, 1], res["loss"], rtol=1e-12)
    # Along the second eigenvector the curvature is the second-largest eigenvalue.
    np.testing.assert_allclose((s2[1, 0] - 2 * s2[1, 1] + s2[1, 2]) / r**2, eig[-2], rtol=1e-3)
