"""The training loop, checkpoints and bit-identical resume."""

import json
import signal
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcurv.app import data as data_lib
from jaxcurv.app.checkpoints import (
    CheckpointError,
    DamagedCheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from jaxcurv.app.config import load_config
from jaxcurv.app.extras import MissingExtraError
from jaxcurv.app.loop import TrainingInterrupted, train
from jaxcurv.app.metrics import read_metrics
from jaxcurv.app.plots import require_plotting
from jaxcurv.app.run_folder import RunExistsError, atomic_write, prepare_run_dir, write_json
from jaxcurv.app.training_step import build_data, build_model
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
    assert {"loss_before", "damping", "rho", "cg_steps", "rejected", "alpha", "time"} <= set(hf[0])
    assert all(r["step_time"] > 0 for r in hf)
    assert all(isinstance(r["cg_steps"], int) and r["cg_steps"] >= 1 for r in hf)
    assert [r["step"] for r in metrics if "test_loss" in r] == [0, 2, 4]
    times = [r["time"] for r in hf]
    assert times == sorted(times)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["optimizer"] == "hessian_free"
    assert summary["final_test_loss"] == metrics[-1]["test_loss"]
    assert summary["last_loss_before"] == metrics[-1]["loss_before"]
    assert "final_loss" not in summary  # it is the loss before the last step, not after
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


def test_a_checkpoint_from_before_value_and_grad_loads(tmp_path):
    """HessianFreeState gained trailing ``value``/``grad`` fields (None unless
    store_grad=True), then ``spectral_pairs`` (None unless preconditioner="spectral"): a
    checkpoint written with the 15-field state still loads."""
    import collections

    import jax

    from jaxcurv import hessian_free

    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}
    new = hessian_free().init(params)
    new = new._replace(count=jnp.asarray(7, new.count.dtype), damping=jnp.asarray(0.25))
    # The state class as it was: same name, the fields before value and grad.
    fields = type(new)._fields
    Old = collections.namedtuple("HessianFreeState", fields[: fields.index("value")])
    old = Old(*new[: len(Old._fields)])
    assert str(jax.tree.structure(old)) != str(jax.tree.structure(new))  # what was refused
    path = save_checkpoint(tmp_path / "old.npz", params, old, step=7, optimizer_name="hf")
    ck = load_checkpoint(path, params, new, optimizer_name="hf")
    assert type(ck.state) is type(new) and ck.state.value is None and ck.state.grad is None
    assert ck.state.spectral_pairs is None
    assert_trees_identical(ck.state, new)
    assert_trees_identical(ck.params, params)
    # Only trailing None fields may be missing: with store_grad=True they hold leaves.
    stored = hessian_free(store_grad=True).init(params)
    with pytest.raises(CheckpointError, match="optimizer state differ"):
        load_checkpoint(path, params, stored, optimizer_name="hf")
    # A state short of a field that holds a leaf (num_nonfinite) is still refused.
    Shorter = collections.namedtuple("HessianFreeState", Old._fields[:-1])
    other = save_checkpoint(tmp_path / "short.npz", params, Shorter(*old[:-1]), step=7)
    with pytest.raises(CheckpointError, match="optimizer state differ"):
        load_checkpoint(other, params, new)


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
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(FileExistsError, match="not written by jaxcurv") as e:
            prepare_run_dir(foreign, **flags)
        assert "Choose another --out" in str(e.value) and "Pass --overwrite" not in str(e.value)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(FileExistsError, match="is a file"):
        prepare_run_dir(foreign / "thesis.tex")


def test_loss_before_is_the_loss_at_the_parameters_before_the_step(tmp_path, tiny_run):
    cfg, res = tiny_run
    # The checkpoint of step 2 holds the parameters that step 3 starts from.
    ck = load_checkpoint(
        res.run_dir / "checkpoints" / "step_00000002.npz",
        res.params,
        res.state,
        model_name=res.model.name,
        optimizer_name="hessian_free",
    )
    train_set, _ = build_data(cfg)
    idx = data_lib.batch_indices(len(train_set), cfg.data.batch_size, 2, seed=cfg.data.seed)
    x, y = train_set.inputs[idx], train_set.targets[idx]
    expected = float(res.model.loss(res.model.apply(ck.params, x), y))
    [step3] = [r for r in res.metrics if r["step"] == 3]
    np.testing.assert_allclose(step3["loss_before"], expected, rtol=1e-6)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"a": 1.0, "b": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.0, "b": None}

    def half_then_fail(f):
        f.write('{"a": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert json.loads(path.read_text()) == {"a": 1.0, "b": None}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left


def test_checkpoint_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    params = {"w": jnp.ones((2, 3))}
    path = save_checkpoint(tmp_path / "step_1.npz", params, (), step=1)
    before = path.read_bytes()

    def torn(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", torn)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"w": jnp.zeros((2, 3))}, (), step=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["step_1.npz"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad member"])
def test_damaged_checkpoint_is_one_error_naming_the_file(tmp_path, damage):
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}
    path = save_checkpoint(tmp_path / "step_1.npz", params, (), step=1, model_name="m")
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"\x00garbage" * 10
    elif damage == "empty":
        data = b""
    else:  # a flipped byte inside an array: only its CRC says so, when it is read
        at = data.index(np.asarray(params["w"]).tobytes()) + 3
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    path.write_bytes(data)
    with pytest.raises(DamagedCheckpointError) as e:
        load_checkpoint(path, params, (), model_name="m")
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "allow_pickle" not in msg
    assert isinstance(e.value, CheckpointError) and e.value.path == path


def test_resume_falls_back_to_the_last_good_checkpoint(tmp_path, tiny_run):
    cfg, straight = tiny_run
    run = copy_run(straight.run_dir, tmp_path / "run")
    latest = run / "checkpoints" / "step_00000004.npz"
    latest.write_bytes(latest.read_bytes()[:100])
    notes = []
    resumed = train(cfg, run, resume=True, plots=False, echo=notes.append)
    assert resumed.start == 2
    [note] = notes
    assert str(latest) in note and "damaged" in note
    assert_trees_identical(straight.params, resumed.params)
    assert without_time(straight.metrics) == without_time(resumed.metrics)

    for path in (run / "checkpoints").iterdir():
        path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="every checkpoint in it is damaged"):
        train(cfg, run, resume=True, plots=False, echo=None)


def test_resume_before_the_first_checkpoint_starts_from_zero(tmp_path, tiny_run):
    cfg, straight = tiny_run
    run = tmp_path / "run"
    # What a run interrupted while compiling leaves: its folder and config, no checkpoint.
    prepare_run_dir(run)
    (run / "config.toml").write_text((straight.run_dir / "config.toml").read_text())
    notes = []
    resumed = train(cfg, run, resume=True, plots=False, echo=notes.append)
    assert resumed.start == 0 and "starting from step 0" in notes[0]
    assert_trees_identical(straight.params, resumed.params)


@pytest.fixture(autouse=True)
def _keep_sigint_handler():
    """Each test leaves SIGINT's handler as it found it (`_sigint_at_step` replaces it)."""
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def _sigint_at_step(monkeypatch, step: int, times: int = 1):
    """Ctrl-C, as the terminal sends it, ``times`` times while the minibatch of ``step`` is
    drawn (the first one at compile time, for step 0)."""
    # A runner started without a terminal (CI, `make` in the background) inherits an
    # ignored SIGINT; a user's terminal gives Python's default handler, so install it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real = data_lib.batch_indices

    def batch_indices(num, batch, at, *, seed=0):
        if at == step:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return real(num, batch, at, seed=seed)

    monkeypatch.setattr(data_lib, "batch_indices", batch_indices)


def test_ctrl_c_stops_after_the_step_and_checkpoints_it(tmp_path, tiny_run, monkeypatch):
    cfg, straight = tiny_run
    _sigint_at_step(monkeypatch, 1)
    notes = []
    with pytest.raises(TrainingInterrupted) as e:
        train(cfg, tmp_path / "run", plots=False, echo=notes.append)
    # The second step was under way: it finished, and was checkpointed.
    assert e.value.step == 2 and e.value.saved and e.value.total == 4
    assert e.value.checkpoint == tmp_path / "run" / "checkpoints" / "step_00000002.npz"
    assert e.value.checkpoint.exists() and "Ctrl-C" in notes[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    monkeypatch.undo()
    resumed = train(cfg, tmp_path / "run", resume=True, plots=False)
    assert_trees_identical(straight.params, resumed.params)
    assert without_time(straight.metrics) == without_time(resumed.metrics)


def test_second_ctrl_c_interrupts_at_once(tmp_path, tiny_run, monkeypatch):
    cfg, _ = tiny_run
    _sigint_at_step(monkeypatch, 1, times=2)
    with pytest.raises(KeyboardInterrupt) as e:
        train(cfg, tmp_path / "run", plots=False, echo=None)
    assert not isinstance(e.value, TrainingInterrupted)  # it claims nothing ...
    assert latest_checkpoint(tmp_path / "run") is None  # ... and saved nothing
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_read_metrics_leaves_out_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(path)


def test_resume_with_a_damaged_metrics_file_says_which_line(tmp_path, tiny_run):
    cfg, straight = tiny_run
    run = copy_run(straight.run_dir, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join([lines[0], "garbage\n", *lines[1:]]))
    with pytest.raises(CheckpointError, match=r"metrics.jsonl, line 2, is not JSON"):
        train(cfg, run, resume=True, plots=False)


def test_train_without_matplotlib_skips_plots_with_a_note(tmp_path, tiny_run, monkeypatch):
    cfg, _ = tiny_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    notes = []
    res = train(cfg, tmp_path / "run", echo=notes.append)
    assert "loss_plot" not in res.files and not list((tmp_path / "run").glob("*.png"))
    assert any("matplotlib" in n and "jaxcurv[cli]" in n for n in notes)
    with pytest.raises(MissingExtraError, match=r"pip install 'jaxcurv\[cli\]'"):
        require_plotting("`jaxcurv demo`")
