"""The `jaxcurv` command end to end on tiny configs: files exist, parse, and errors are clear."""

import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxcurv
from jaxcurv.app.cli import main
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

ROOT = pathlib.Path(__file__).resolve().parent.parent

# A float printed with all its digits, like 36.496334075927734.
RAW_FLOAT = re.compile(r"\d\.\d{7,}")


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


@pytest.mark.parametrize("command", ["demo", "train", "landscape", "config"])
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
        assert "--resume" in out and "metrics.jsonl" in out and "loss_before" in out
    if command == "demo":
        assert "about a minute" not in out.lower()  # it took 111 s on two cores
    if command == "landscape":
        assert "--checkpoint" in out and "eigenvalues" in out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "train", "landscape", "config"):
        assert command in out
    # The benchmarks live in the source checkout, not in the installed package: the help
    # says where to run them from instead of offering a subcommand.
    assert "python -m benchmarks.run" in out and "make bench" in out
    with pytest.raises(SystemExit) as e:
        main(["bench"])
    assert e.value.code == 2


def test_train_end_to_end(cli_run):
    code, out, printed = cli_run
    assert code == 0
    assert "trained 4 steps; test loss" in printed and str(out) in printed
    assert not RAW_FLOAT.search(printed), printed
    for name in ("config.toml", "metrics.jsonl", "summary.json"):
        assert (out / name).exists()
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(r["loss_before"]) for r in metrics[1:])
    assert not any("loss" in r for r in metrics)  # the name says when it was measured
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
    # N = 115 is below landscape.dense_threshold: the whole Hessian is diagonalized once,
    # the classification reads that spectrum, and its ends are the eigenvalues reported.
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
    assert not RAW_FLOAT.search(printed), RAW_FLOAT.findall(printed)
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


def test_config_command_and_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcurv.app.cli", "config", "optimizer"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "damping = 1.0" in proc.stdout and "cg_maxiter" in proc.stdout
    assert main(["config", "nope"]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxcurv {jaxcurv.__version__}"


def test_config_command_prints_plain_text_with_every_key_described(capsys):
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    for markup in ("``", ":mod:", ":func:", "`"):
        assert markup not in text, markup
    keys = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(keys) > 50
    for line in keys:
        # "  key = default  (type)  meaning"
        parts = line.strip().split("  ")
        assert len(parts) >= 3 and parts[-1].strip(), line
    assert "baseline_steps = 600" in text  # the demo's own default, as configs/demo.toml


def test_resume_reads_the_runs_own_config(cli_run, tmp_path, capsys):
    out = copy_run(cli_run[1], tmp_path / "run")
    # No --config: the run's config.toml, with --set on top of it.
    args = ["train", "--resume", "--out", str(out), "--no-progress"]
    assert main([*args, "--set", "run.steps=6"]) == 0
    assert "resumed at step 4, trained to step 6" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5, 6]
    assert (out / "checkpoints" / "step_00000006.npz").exists()
    # Done already: it says so, and trains nothing.
    assert main(args) == 0
    assert "nothing to train" in capsys.readouterr().out

    assert main(["train", "--resume", "--no-progress"]) == 2
    assert "needs --out RUN" in capsys.readouterr().err
    assert main(["train", "--out", str(out)]) == 2
    assert "train needs --config FILE" in capsys.readouterr().err
    assert main([*args[:2], "--out", str(tmp_path / "none")]) == 2
    assert "holds no jaxcurv run" in capsys.readouterr().err


def test_resume_skips_a_damaged_checkpoint(cli_run, tiny, tmp_path, capsys):
    out = copy_run(cli_run[1], tmp_path / "run")
    latest = out / "checkpoints" / "step_00000004.npz"
    good = latest.read_bytes()
    latest.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if str(latest) in line]
    assert "damaged" in line and "BadZipFile" in line
    # It went on from step 2 and wrote the very same step-4 checkpoint again.
    a, b = np.load(cli_run[1] / "checkpoints" / "step_00000004.npz"), np.load(latest)
    for name in a.files:
        if name != "__meta__":
            np.testing.assert_array_equal(a[name], b[name])
    assert without_time(read_jsonl(out / "metrics.jsonl")) == without_time(
        read_jsonl(cli_run[1] / "metrics.jsonl")
    )

    for path in (out / "checkpoints").iterdir():
        path.write_bytes(b"garbage")
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "every checkpoint in it is damaged" in err and "Traceback" not in err


def test_out_folder_jaxcurv_did_not_write(tiny, tmp_path, capsys):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    base = ["train", "--config", tiny, "--out", str(foreign), "--no-progress"]
    messages = []
    for extra in ([], ["--overwrite"], ["--resume"]):
        assert main([*base, *extra]) == 2
        messages.append(capsys.readouterr().err)
    # One message, whatever the flags, and it does not send the user to --overwrite.
    assert messages[0] == messages[1] == messages[2]
    assert "was not written by jaxcurv" in messages[0] and "Choose another --out" in messages[0]
    assert "Pass --overwrite" not in messages[0]
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]


def test_without_the_cli_extra(cli_run, tiny, tmp_path, monkeypatch, capsys):
    # As if installed without [cli]: importing matplotlib or tqdm fails.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    out = tmp_path / "run"
    args = ["train", "--config", tiny, "--out", str(out), "--set", "run.progress=true"]
    assert main(args) == 0
    err = capsys.readouterr().err
    [note] = [line for line in err.splitlines() if "not installed" in line]
    assert "matplotlib, tqdm" in note and "pip install 'jaxcurv[cli]'" in note
    assert (out / "checkpoints" / "step_00000004.npz").exists()
    assert not list(out.glob("*.png"))
    # The demo and the landscape draw plots: they say so before doing anything.
    for command in (
        ["demo", "--config", tiny, "--out", str(tmp_path / "demo")],
        ["landscape", "--checkpoint", str(cli_run[1]), "--out", str(tmp_path / "land")],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "needs matplotlib" in err and "pip install 'jaxcurv[cli]'" in err
        assert not pathlib.Path(command[-1]).exists()


# The console script, except that a shell which runs the suite in the background may
# have made its children ignore SIGINT: Python's own handler is put back first.
_LAUNCH = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from jaxcurv.app.cli import main; sys.exit(main())"
)


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "JAX_ENABLE_X64": "1"}  # as conftest.py, so runs resume here
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("moment", ["start-up", "training", "twice"])
def test_ctrl_c_in_a_real_process(moment, tiny, tmp_path):
    """SIGINT to `jaxcurv train`: no crash, no traceback, a true claim, and a working hint."""
    out = tmp_path / "run"
    args = ["train", "--config", tiny, "--out", str(out), "--no-progress"]
    if moment in ("start-up", "twice"):
        # Interrupted as soon as the run folder is set up: while the step compiles. Twice:
        # the second Ctrl-C quits at once, from inside the compiler.
        args += ["--set", "run.steps=6", "--set", "run.eval_every=3"]
        proc = _start(args)
        _wait_for(out / "config.toml", proc)
    else:
        # Interrupted after its first checkpoint, well before the end.
        args += [*(f"--set={o}" for o in ADAM), "--set", "run.steps=1000000"]
        args += ["--set", "run.checkpoint_every=20"]
        proc = _start(args)
        _wait_for(out / "checkpoints" / "step_00000020.npz", proc)
    proc.send_signal(signal.SIGINT)
    if moment == "twice":
        time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)  # not -11: no segfault
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    [claim] = [line for line in err.splitlines() if line.startswith("jaxcurv train: ")]
    checkpoints = sorted((out / "checkpoints").glob("step_*.npz"))
    saved = re.search(r"checkpoint saved: (\S+)\.", claim) or re.search(
        r"the latest checkpoint is (\S+)\.", claim
    )
    if saved:
        assert pathlib.Path(saved.group(1)) == checkpoints[-1]
        step = int(re.search(r"step_(\d+)", saved.group(1)).group(1))
        assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")][-1] >= step
    else:
        assert "no checkpoint was written" in claim and not checkpoints
        step = 0
    if moment == "training":
        m = re.search(r"interrupted after step (\d+) of 1000000", claim)
        assert m and int(m.group(1)) == step >= 20, claim

    # The hint continues the run with its own settings, --set ones included.
    hint = re.search(r"(?:Continue with|Start it again with): (jaxcurv train .*)$", claim)
    assert hint, claim
    argv = shlex.split(hint.group(1))[1:]
    if moment == "training":
        argv += ["--set", f"run.steps={step + 3}"]  # not the million steps asked for
    assert main([*argv, "--no-progress"]) == 0
    total = step + 3 if moment == "training" else 6
    assert read_jsonl(out / "metrics.jsonl")[-1]["step"] == total
    assert (out / "checkpoints" / f"step_{total:08d}.npz").exists()
