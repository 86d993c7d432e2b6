"""The training loop behind ``jaxcurv train``: steps, metrics, checkpoints and plots.

:func:`train` trains a reference model of :mod:`jaxcurv.app.models` on an embedded
dataset of :mod:`jaxcurv.app.data` with :func:`jaxcurv.hessian_free` or an optax baseline
(``adam``, ``sgd``, ``lbfgs``), one jitted step per iteration
(:mod:`jaxcurv.app.training_step`). It writes, into its run folder
(:mod:`jaxcurv.app.run_folder`): ``config.toml`` (the resolved config, first of all, so
that ``--resume`` can always read it), ``metrics.jsonl`` (one JSON object per logged step,
:mod:`jaxcurv.app.metrics`), ``summary.json`` (final losses, optimizer and compile time,
device), ``checkpoints/step_XXXXXXXX.npz`` (parameters and optimizer state,
:mod:`jaxcurv.app.checkpoints`) and PNG plots (:mod:`jaxcurv.app.plots`). Every file but
the appended ``metrics.jsonl`` is written atomically.

A run resumed from a checkpoint continues bit-identically (:mod:`jaxcurv.app.resume`).
Ctrl-C stops it cleanly after the current step and checkpoints that step
(:class:`TrainingInterrupted`, :mod:`jaxcurv.app.interrupt`).

Plots need matplotlib and the progress bar needs tqdm (the ``cli`` extra); both are imported
only when used, and a run without them trains fully and says what it left out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv.app import data as data_lib
from jaxcurv.app import models as models_lib
from jaxcurv.app.checkpoints import checkpoint_path, latest_checkpoint, save_checkpoint
from jaxcurv.app.config import Config, config_to_dict
from jaxcurv.app.extras import INSTALL_CLI, installed
from jaxcurv.app.interrupt import stop_on_interrupt, to_stderr
from jaxcurv.app.metrics import host_scalar, json_float, read_metrics
from jaxcurv.app.plots import plot_sharpness, plot_training, stability_threshold
from jaxcurv.app.resume import open_run, starting_point
from jaxcurv.app.run_folder import write_json
from jaxcurv.app.training_step import build_data, compiled_parts, compiled_sharpness

PyTree = Any

__all__ = ["TrainResult", "TrainingInterrupted", "train"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train` between steps; what is on disk is said exactly.

    Attributes:
      run_dir: the run folder.
      step: optimizer steps completed when it stopped.
      total: the steps the run was asked for.
      checkpoint: the newest checkpoint on disk (where ``--resume`` continues from), or
        ``None`` if there is none yet.
      saved: whether this call wrote ``checkpoint`` on the way out.
    """

    def __init__(
        self,
        run_dir: pathlib.Path,
        step: int,
        total: int,
        checkpoint: pathlib.Path | None,
        saved: bool,
    ):
        self.run_dir, self.step, self.total = run_dir, step, total
        self.checkpoint, self.saved = checkpoint, saved
        if checkpoint is None:
            what = "no checkpoint exists yet"
        else:
            what = f"{'saved' if saved else 'the latest checkpoint is'} {checkpoint}"
        super().__init__(f"stopped after step {step} of {total}; {what}")


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      params: the final parameters.
      state: the final optimizer state.
      metrics: every logged metrics record of the run (including ones before a resume).
      model: the :class:`jaxcurv.app.models.Model` trained.
      run_dir: the run folder.
      files: names of the files written into it, by role.
      start: the step this call started from (0, or the checkpoint it resumed from).
    """

    params: PyTree
    state: PyTree
    metrics: list[dict]
    model: models_lib.Model
    run_dir: pathlib.Path
    files: dict[str, str]
    start: int = 0


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    plots: bool = True,
    stop_after: int | None = None,
    echo: Callable[[str], None] | None = to_stderr,
) -> TrainResult:
    """Train the configured model, logging metrics, checkpointing and plotting.

    Ctrl-C (SIGINT, when this runs in the main thread under Python's default handler)
    stops the loop after the current step, checkpoints that step and raises
    :class:`TrainingInterrupted`; a second Ctrl-C interrupts at once with a plain
    ``KeyboardInterrupt`` and saves nothing more.

    Args:
      cfg: the configuration (see :mod:`jaxcurv.app.config`).
      run_dir: the run folder; created if missing. See
        :func:`jaxcurv.app.run_folder.prepare_run_dir`.
      resume: continue from the newest readable checkpoint in ``run_dir`` up to
        ``cfg.run.steps`` (damaged ones are skipped with a note); a run that stopped before
        its first checkpoint starts again from step 0.
      overwrite: replace an existing run in ``run_dir``.
      progress: show a tqdm progress bar; ``None`` uses ``cfg.run.progress``.
      plots: write the PNG plots at the end (skipped, with a note, without matplotlib).
      stop_after: stop (with a checkpoint) after this many steps in total, as if
        interrupted; ``None`` runs to ``cfg.run.steps``.
      echo: called with each one-line note (a damaged checkpoint skipped, a missing
        optional dependency, Ctrl-C received); ``None`` silences them. Default: stderr.

    Returns:
      A :class:`TrainResult`.

    Raises:
      RunExistsError: ``run_dir`` holds a run and neither ``resume`` nor ``overwrite``.
      FileExistsError: ``run_dir`` is a file, or a folder with files jaxcurv did not write.
      CheckpointError: ``resume`` with nothing to resume, a checkpoint from another
        model/optimizer or config, or only damaged checkpoints.
      TrainingInterrupted: Ctrl-C; it says which step is checkpointed.
    """
    say = echo or (lambda _: None)
    with stop_on_interrupt(say) as stop:
        return _train(cfg, run_dir, resume, overwrite, progress, plots, stop_after, say, stop)


def _train(cfg, run_dir, resume, overwrite, progress, plots, stop_after, say, stop):
    run_dir = open_run(cfg, pathlib.Path(run_dir), resume, overwrite)
    model, opt, step_fn, eval_fn = compiled_parts(cfg.model, cfg.optimizer, cfg.data.kind)
    measure = _sharpness_measure(cfg)
    data = _device_data(cfg)
    params, state, start, elapsed = starting_point(cfg, run_dir, model, opt, resume, say)
    total = cfg.run.steps if stop_after is None else min(cfg.run.steps, stop_after)
    show_bar = (cfg.run.progress if progress is None else progress) and start < total
    missing = _missing_extras(plots, show_bar)
    if missing:
        say(
            f"note: {', '.join(missing)} not installed: training without "
            f"{' or '.join(_EXTRA_ROLE[m] for m in missing)}; {INSTALL_CLI} adds them."
        )

    def save(params, state, step, elapsed):
        save_checkpoint(
            checkpoint_path(run_dir, step),
            params,
            state,
            step=step,
            elapsed=elapsed,
            model_name=model.name,
            optimizer_name=cfg.optimizer.name,
            config=config_to_dict(cfg),
        )

    wall0 = time.perf_counter()
    compile_time = 0.0
    if start < total and not stop.requested:
        # Compiled ahead of the loop so that the timings in the metrics are optimizer time
        # only; the compile time is reported apart, in summary.json.
        t0 = time.perf_counter()
        step_fn = step_fn.lower(params, state, *data.batch(start)).compile()
        compile_time = time.perf_counter() - t0
    if stop.requested:
        raise TrainingInterrupted(
            run_dir, start, cfg.run.steps, latest_checkpoint(run_dir), saved=False
        )
    bar = _progress_bar(cfg, start, show_bar and "tqdm" not in missing)
    try:
        params, state, done, elapsed = _run_steps(
            cfg,
            step_fn,
            eval_fn,
            data,
            (params, state, start, elapsed),
            total=total,
            metrics_path=run_dir / "metrics.jsonl",
            bar=bar,
            save=save,
            stop=stop,
            measure=measure,
        )
    finally:
        if bar is not None:
            bar.close()
    if stop.requested and done < total:
        saved = done > start
        if saved and not checkpoint_path(run_dir, done).exists():
            save(params, state, done, elapsed)
        raise TrainingInterrupted(run_dir, done, cfg.run.steps, latest_checkpoint(run_dir), saved)
    if latest_checkpoint(run_dir) is None:
        save(params, state, done, elapsed)

    metrics = read_metrics(run_dir / "metrics.jsonl")
    times = {
        "optimizer_time_s": elapsed,
        "compile_time_s": compile_time,
        "wall_time_s": time.perf_counter() - wall0,
    }
    summary = _summary(cfg, model, params, metrics, done, times)
    write_json(run_dir / "summary.json", summary)
    files = {"config": "config.toml", "metrics": "metrics.jsonl", "summary": "summary.json"}
    if plots and "matplotlib" not in missing:
        title = f"{model.name}, {cfg.optimizer.name}"
        files.update(plot_training(metrics, run_dir, title=title))
        if measure is not None:
            line = summary["sharpness"]
            files.update(
                plot_sharpness(
                    metrics, run_dir, threshold=line["threshold"], note=line["note"], title=title
                )
            )
    return TrainResult(params, state, metrics, model, run_dir, files, start)


def _sharpness_measure(cfg: Config) -> Callable | None:
    """The compiled sharpness measurement, or ``None`` when ``run.sharpness_every`` is 0
    (then nothing is built, compiled or run)."""
    r = cfg.run
    if not r.sharpness_every:
        return None
    return compiled_sharpness(
        cfg.model, cfg.data.kind, r.sharpness_curvature, r.sharpness_maxiter,
        r.sharpness_num_samples,
    )  # fmt: skip


def _sharpness_record(cfg, measure, params, inputs, targets, step) -> dict:
    """The sharpness fields of step ``step``'s record (at ``params``, after the step, on
    its batch), or ``{}`` when none is due. Their time is not optimizer time."""
    if measure is None or step % cfg.run.sharpness_every:
        return {}
    t0 = time.perf_counter()
    # A key per step, a pure function of the seed and the step: a resumed run records
    # what a straight run records.
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.run.seed), 17), step)
    out = {k: host_scalar(v) for k, v in measure(params, inputs, targets, key).items()}
    out["sharpness_curvature"] = cfg.run.sharpness_curvature
    out["sharpness_time"] = time.perf_counter() - t0
    return out


def _run_steps(
    cfg, step_fn, eval_fn, data, carry, *, total, metrics_path, bar, save, stop, measure=None
):
    """Steps from ``carry = (params, state, step, elapsed)`` up to ``total``, logging and
    checkpointing as configured; returns the new carry. Stops early on a stop request."""
    params, state, start, elapsed = carry
    done = start
    with open(metrics_path, "a" if start else "w") as log:
        if start == 0:
            test_loss = json_float(eval_fn(params, data.test_x, data.test_y))
            record = {"step": 0, "time": 0.0, "test_loss": test_loss}
            record.update(_sharpness_record(cfg, measure, params, *data.batch(0), 0))
            log.write(json.dumps(record) + "\n")
        for step in range(start, total):
            if stop.requested:
                break
            inputs, targets = data.batch(step)
            t0 = time.perf_counter()
            params, state, loss, info = step_fn(params, state, inputs, targets)
            loss = jax.block_until_ready(loss)
            step_time = time.perf_counter() - t0
            elapsed += step_time
            done = step + 1
            # Which steps get a line depends on the step alone (not on where this call
            # stops), so an interrupted-and-resumed run logs what a straight run logs.
            last = done == cfg.run.steps
            sharpness = _sharpness_record(cfg, measure, params, inputs, targets, done)
            if done % cfg.run.log_every == 0 or done % cfg.run.eval_every == 0 or last or sharpness:
                record = {
                    "step": done,
                    "time": elapsed,
                    "step_time": step_time,
                    "loss_before": json_float(loss),
                }
                record.update({k: host_scalar(v) for k, v in info.items()})
                if done % cfg.run.eval_every == 0 or last:
                    record["test_loss"] = json_float(eval_fn(params, data.test_x, data.test_y))
                record.update(sharpness)
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(_postfix(loss, info), refresh=False)
            every = cfg.run.checkpoint_every
            if (every and done % every == 0) or done == total:
                save(params, state, done, elapsed)
    return params, state, done, elapsed


class _Data(NamedTuple):
    """The arrays one run reads: ``batch(step)`` is that step's minibatch."""

    batch: Callable[[int], tuple[jax.Array, jax.Array]]
    test_x: jax.Array
    test_y: jax.Array


def _device_data(cfg: Config) -> _Data:
    train_set, test_set = build_data(cfg)
    full_x, full_y = jnp.asarray(train_set.inputs), jnp.asarray(train_set.targets)
    size = cfg.data.batch_size or len(train_set)

    def batch(step):
        if size == len(train_set):
            return full_x, full_y
        idx = data_lib.batch_indices(len(train_set), size, step, seed=cfg.data.seed)
        return jnp.asarray(train_set.inputs[idx]), jnp.asarray(train_set.targets[idx])

    return _Data(batch, jnp.asarray(test_set.inputs), jnp.asarray(test_set.targets))


_EXTRA_ROLE = {"matplotlib": "plots", "tqdm": "progress bar"}


def _missing_extras(plots: bool, bar: bool) -> list[str]:
    wanted = [("matplotlib", plots), ("tqdm", bar)]
    return [name for name, want in wanted if want and not installed(name)]


def _summary(cfg, model, params, metrics, done, times) -> dict:
    def last(key):
        return next((r[key] for r in reversed(metrics) if r.get(key) is not None), None)

    out = {
        "model": model.name,
        "optimizer": cfg.optimizer.name,
        "num_parameters": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        "steps": done,
        # The batch loss before the last logged step, as in metrics.jsonl (see
        # jaxcurv.app.metrics); final_test_loss is measured after the last step.
        "last_loss_before": last("loss_before"),
        "final_test_loss": last("test_loss"),
        **times,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
    }
    if cfg.run.sharpness_every:
        o = cfg.optimizer
        threshold, note = stability_threshold(o.name, o.learning_rate, o.momentum)
        out["sharpness"] = {
            "every": cfg.run.sharpness_every,
            "curvature": cfg.run.sharpness_curvature,
            "measured": "top eigenvalue (thick-restart Lanczos) and Hutchinson trace, at the "
            "parameters after the step, on that step's batch",
            "threshold": threshold,
            "note": note,
        }
    return out


def _postfix(loss, info) -> dict:
    out = {"loss": f"{float(loss):.4g}"}
    if "damping" in info:
        out["damping"] = f"{float(info['damping']):.3g}"
        out["cg"] = int(info["cg_steps"])
        out["rho"] = f"{float(info['rho']):.2f}"
    return out


def _progress_bar(cfg: Config, start: int, progress: bool | None):
    show = cfg.run.progress if progress is None else progress
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the cli extra
        return None
    return tqdm(
        total=cfg.run.steps, initial=start, desc=cfg.optimizer.name, unit="step", dynamic_ncols=True
    )
