"""The `jaxcurv` command end to end on tiny configs: files exist, parse, and errors are clear."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from jaxcurv.cli import main
from tests._cli_fixtures import (
    ADAM,
    TINY,
    TINY_MODEL,
    assert_png,
    copy_run,
    read_jsonl,
    without_time,
    write_tiny,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def cli_run(tiny, tmp_path_factory):
    """One `jaxcurv train` run of the tiny config, shared by the tests that read it:
    ``(exit status, run folder, what it printed)``."""
    out = tmp_path_factory.mktemp("cli") / "runs" / "a"  # a missing folder (and parent)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "--config", tiny, "--out", str(out), "--no-progress"])
    return code, out, printed.getvalue()


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


def test_train_end_to_end(cli_run):
    code, out, printed = cli_run
    assert code == 0
    assert "trained 4 steps; test loss" in printed and str(out) in printed
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        assert (out / name).exists()
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in metrics[1:])
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    assert_png(out / "loss_vs_time.png")
    assert_png(out / "damping.png")
    assert (out / "checkpoints" / "step_00000004.npz").exists()


def test_existing_run_needs_overwrite(cli_run, tiny, tmp_path, capsys):
    out = copy_run(cli_run[1], tmp_path / "run")
    metrics = read_jsonl(out / "metrics.jsonl")
    # An existing run is not overwritten without --overwrite ...
    assert main(["train", "--config", tiny, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err
    assert read_jsonl(out / "metrics.jsonl") == metrics
    # ... and is with it.
    args = ["train", "--config", tiny, "--out", str(out), "--no-progress", "--overwrite"]
    assert main([*args, "--set", "run.steps=2"]) == 0
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]
    assert not (out / "checkpoints" / "step_00000004.npz").exists()


def test_train_resume_is_bit_identical(tiny, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "split"
    common = ["train", "--config", tiny, "--no-progress", *(f"--set={o}" for o in ADAM)]
    assert main([*common, "--out", str(a)]) == 0
    assert main([*common, "--out", str(b), "--set", "run.steps=2"]) == 0
    assert main([*common, "--out", str(b), "--resume"]) == 0
    za = np.load(a / "checkpoints" / "step_00000004.npz")
    zb = np.load(b / "checkpoints" / "step_00000004.npz")
    assert za.files == zb.files
    for name in za.files:
        if name != "__meta__":
            np.testing.assert_array_equal(za[name], zb[name])
    ma, mb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert without_time(ma) == without_time(mb)
    assert [r["step"] for r in mb] == [0, 1, 2, 3, 4]


def test_bad_config_errors_name_key_and_fix(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("damping = 1.0", "dampng = 1.0"))  # a typo
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


def test_checkpoint_from_another_model_cli(cli_run, tiny, tmp_path, capsys):
    out = copy_run(cli_run[1], tmp_path / "run")
    args = ["train", "--config", tiny, "--out", str(out), "--resume", "--no-progress"]
    assert main([*args, "--set", "model.sizes=16,2"]) == 2
    err = capsys.readouterr().err
    assert f"was written for model '{TINY_MODEL} " in err
    assert "autoencoder 16-2-16" in err


def test_landscape_on_checkpoint(cli_run, tiny, tmp_path, capsys):
    run = cli_run[1]
    out = tmp_path / "land"
    assert main(["landscape", "--checkpoint", str(run), "--config", tiny, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top eigenvalues" in printed and "gradient norm" in printed
    res = json.loads((out / "landscape.json").read_text())
    assert res["source"]["step"] == 4 and res["model"].startswith(TINY_MODEL)
    assert res["num_examples"] == 32 and res["num_parameters"] == 115
    top, bottom = res["top_eigenvalues"], res["bottom_eigenvalues"]
    assert len(top) == 3 and len(bottom) == 2
    assert top == sorted(top, reverse=True) and bottom == sorted(bottom)
    assert bottom[0] <= top[-1]
    # N = 115 is below landscape.dense_threshold: the classification diagonalized the
    # whole Hessian on its own, and its spectrum ends in the eigenvalues reported.
    crit = res["critical_point"]
    assert crit["method"] == "dense" and len(crit["eigenvalues"]) == 115
    np.testing.assert_allclose(top, crit["eigenvalues"][::-1][:3], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bottom, crit["eigenvalues"][:2], rtol=1e-4, atol=1e-6)
    assert crit["kind"] in ("minimum", "saddle", "degenerate", "not critical")
    tr = res["hutchinson_trace"]
    assert tr["num_samples"] == 6
    assert abs(tr["estimate"] - sum(crit["eigenvalues"])) <= 5 * tr["stderr"] + 1e-4
    assert len(res["slice_1d"]["loss"]) == 5 and np.shape(res["slice_2d"]["loss"]) == (5, 5)
    # The middle of each slice is the point itself.
    np.testing.assert_allclose(res["slice_1d"]["loss"][2], res["loss"], rtol=1e-5)
    np.testing.assert_allclose(res["slice_2d"]["loss"][2][2], res["loss"], rtol=1e-5)
    for name in ("spectral_density.png", "slice_1d.png", "slice_2d.png"):
        assert_png(out / name)
    assert (out / "config.toml").exists()


def test_landscape_needs_a_source(capsys):
    assert main(["landscape"]) == 2
    assert "--config FILE or --checkpoint PATH" in capsys.readouterr().err


def test_landscape_bad_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    assert main(["landscape", "--checkpoint", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "not a jaxcurv checkpoint" in capsys.readouterr().err


def test_demo_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--config", tiny, "--out", str(out), "--no-progress"]
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
