"""The `jaxcurv` command end to end on tiny configs: files exist, parse, and errors are clear."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxcurv.cli import main

# Kept identical to tests/test_train.py's, so the compiled steps are shared within a session.
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

DEMO = (
    TINY
    + """
[demo]
baseline = "adam"
baseline_learning_rate = 0.01
baseline_steps = 6
"""
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


def assert_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def _without_time(metrics):
    return [{k: v for k, v in r.items() if k != "time"} for r in metrics]


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("command", ["demo", "train", "landscape", "bench", "config"])
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"jaxcurv {command}" in out
    if command in ("demo", "train", "landscape"):
        for flag in ("--out", "--overwrite", "--set", "--config"):
            assert flag in out
    if command == "train":
        assert "--resume" in out and "metrics.jsonl" in out
    if command == "landscape":
        assert "--checkpoint" in out and "eigenvalues" in out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "train", "landscape", "bench", "config"):
        assert command in out


def test_train_end_to_end_and_overwrite_protection(tiny, tmp_path, capsys):
    out = tmp_path / "runs" / "a"  # a missing folder (and parent) is created
    assert main(["train", "--config", tiny, "--out", str(out), "--no-progress"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        assert (out / name).exists()
    metrics = _read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in metrics[1:])
    json.loads((out / "summary.json").read_text())
    assert_png(out / "loss_vs_time.png")
    assert_png(out / "damping.png")
    assert (out / "checkpoints" / "step_00000004.npz").exists()

    # An existing run is not overwritten without --overwrite ...
    assert main(["train", "--config", tiny, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err
    assert _read_jsonl(out / "metrics.jsonl") == metrics
    # ... and is with it.
    args = ["train", "--config", tiny, "--out", str(out), "--no-progress", "--overwrite"]
    assert main([*args, "--set", "run.steps=2"]) == 0
    assert [r["step"] for r in _read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]


def test_train_resume_is_bit_identical(tiny, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "split"
    common = ["train", "--config", tiny, "--no-progress", "--set", "optimizer.name=adam"]
    assert main([*common, "--out", str(a)]) == 0
    assert main([*common, "--out", str(b), "--set", "run.steps=2"]) == 0
    assert main([*common, "--out", str(b), "--resume"]) == 0
    za = np.load(a / "checkpoints" / "step_00000004.npz")
    zb = np.load(b / "checkpoints" / "step_00000004.npz")
    assert za.files == zb.files
    for name in za.files:
        if name != "__meta__":
            np.testing.assert_array_equal(za[name], zb[name])
    ma, mb = _read_jsonl(a / "metrics.jsonl"), _read_jsonl(b / "metrics.jsonl")
    assert _without_time(ma) == _without_time(mb)


def test_bad_config_errors_name_key_and_fix(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("damping = 1.0", "dampng = 1.0"))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "optimizer.dampng" in err and "Did you mean `optimizer.damping`" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing is created before the config is good

    code = main(["train", "--config", tiny, "--set", "optimizer.damping=lots"])
    assert code == 2
    assert "`optimizer.damping` must be a number, got 'lots'" in capsys.readouterr().err

    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_checkpoint_from_another_model_cli(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", tiny, "--out", str(out), "--no-progress"]) == 0
    args = ["train", "--config", tiny, "--out", str(out), "--resume", "--no-progress"]
    assert main([*args, "--set", "model.sizes=64,10,3"]) == 2
    err = capsys.readouterr().err
    assert "was written for model 'autoencoder 64-12-3-12-64" in err
    assert "autoencoder 64-10-3-10-64" in err


def test_landscape_on_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", tiny, "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "land"
    assert main(["landscape", "--checkpoint", str(run), "--config", tiny, "--out", str(out)]) == 0
    assert "top eigenvalues" in capsys.readouterr().out
    res = json.loads((out / "landscape.json").read_text())
    assert res["source"]["step"] == 4 and res["model"].startswith("autoencoder 64-12-3")
    assert len(res["top_eigenvalues"]) == 3 and len(res["bottom_eigenvalues"]) == 2
    assert res["top_eigenvalues"] == sorted(res["top_eigenvalues"], reverse=True)
    assert res["bottom_eigenvalues"][0] <= res["top_eigenvalues"][-1]
    assert res["critical_point"]["kind"] in ("minimum", "saddle", "degenerate", "not critical")
    assert np.isfinite(res["hutchinson_trace"]["estimate"])
    assert len(res["slice_1d"]["loss"]) == 5 and np.shape(res["slice_2d"]["loss"]) == (5, 5)
    for name in ("spectral_density.png", "slice_1d.png", "slice_2d.png"):
        assert_png(out / name)


def test_landscape_needs_a_source(capsys):
    assert main(["landscape"]) == 2
    assert "--config FILE or --checkpoint PATH" in capsys.readouterr().err


def test_landscape_bad_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    assert main(["landscape", "--checkpoint", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "not a jaxcurv checkpoint" in capsys.readouterr().err


def test_demo_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "demo.toml"
    cfg.write_text(DEMO)
    out = tmp_path / "demo"
    args = ["demo", "--config", str(cfg), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    for text in (printed, report):
        assert "[[4, 1], [3, 2]]" in text  # the seed's Jacobian of [x^2 + y, xy] at (2, 3)
        assert "[[2, 3], [3, 2]]" in text  # the seed's Hessian of x^2 + 3xy + y^2
        assert "saddle" in text
    assert "| [x^2 + y, xy] | vector | vector | jacobian | 2 x 2 |" in report
    assert "| x^2 + 3xy + y^2 | vector | scalar | hessian | 2 x 2 |" in report
    assert "| sin(x) | scalar | scalar | derivative | 1 x 1 |" in report
    assert "| W @ x, W 3x4 | vector | vector | jacobian | 3 x 4 |" in report

    r = json.loads((out / "report.json").read_text())
    np.testing.assert_array_equal(r["seed"]["jacobian"]["value"], [[4, 1], [3, 2]])
    np.testing.assert_array_equal(r["seed"]["hessian"]["value"], [[2, 3], [3, 2]])
    np.testing.assert_array_equal(r["seed"]["gradient"]["value"], [13, 12])  # [2x+3y, 3x+2y]
    kinds = {row["function"]: row for row in r["critical_points"]}
    seed = kinds["x^2 + 3xy + y^2 (the seed)"]
    assert seed["kind"] == "saddle"
    np.testing.assert_allclose(seed["eigenvalues"], [-1.0, 5.0], atol=1e-6)
    assert [row["kind"] for row in r["critical_points"]] == [
        "minimum",
        "maximum",
        "saddle",
        "degenerate",
        "minimum",
    ]
    # Rosenbrock at (1, 1): H = [[802, -400], [-400, 200]], eigenvalues 501 -+ sqrt(30101*4)/2.
    np.testing.assert_allclose(
        kinds["Rosenbrock"]["eigenvalues"], np.linalg.eigvalsh([[802, -400], [-400, 200]]), 1e-5
    )
    sd = r["saddle"]
    # Gradient descent at rate 0.1: the escaping component grows 1.1x per step from 1e-6,
    # so |x| >= 1 takes about log(1e6) / log(1.1) ~ 145 steps; the bowl contracts 0.8x.
    assert 140 <= sd["saddle_steps_to_escape"] <= 150
    assert sd["bowl_steps_to_converge"] == int(np.ceil(np.log(1e-6) / np.log(0.8)))
    assert sd["saddle_steps_with_small_gradient"] > 30
    assert r["backprop"]["max_abs_difference_vs_jax_grad"] < 1e-6
    t = r["training"]
    assert t["hessian_free"]["steps"] == 4 and t["adam"]["steps"] == 6
    assert t["hessian_free"]["final_test_loss"] < t["initial_test_loss"]
    sp = r["spectrum"]
    assert len(sp["top_eigenvalues"]) == 3 and sp["top_eigenvalues"][0] > 0
    for name in ("hf_vs_baseline.png", "spectral_density.png", "slice_1d.png", "slice_2d.png"):
        assert_png(out / name)
    assert_png(out / "hessian_free" / "loss_vs_time.png")

    # A second demo into the same folder needs --overwrite (the Makefile passes it).
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_bench_outside_a_checkout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_config_command_and_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcurv.cli", "config", "optimizer"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "damping = 1.0" in proc.stdout and "cg_maxiter" in proc.stdout
    assert main(["config", "nope"]) == 2


def test_bench_passes_its_options_to_the_suite(tmp_path, monkeypatch):
    import types

    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "run.py").write_text("")
    monkeypatch.chdir(tmp_path)
    calls = []
    fake = types.ModuleType("benchmarks.run")
    fake.main = lambda argv: calls.append(argv)
    monkeypatch.setitem(sys.modules, "benchmarks.run", fake)
    args = ["bench", "--quick", "--out", "o", "--only", "products", "--set", "products.repeats=3"]
    assert main(args) == 0
    assert calls == [
        [
            "--config",
            "configs/bench.toml",
            "--quick",
            "--out",
            "o",
            "--only",
            "products",
            "--set",
            "products.repeats=3",
        ]
    ]
