"""Where a run starts: from scratch, or from its newest readable checkpoint.

A resumed run continues bit-identically: minibatches are a pure function of the step
(:func:`jaxcurv.app.data.batch_indices`), and the restored arrays and the compiled step
are the same as in an uninterrupted run. A damaged checkpoint is skipped with a one-line
note and the run resumes from the newest readable one; a checkpoint written with another
config (anything but a larger ``run.steps``) is refused.
"""

from __future__ import annotations

import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any

import jax

from jaxcurv.app.checkpoints import (
    Checkpoint,
    CheckpointError,
    DamagedCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from jaxcurv.app.config import Config, config_to_dict, config_to_toml
from jaxcurv.app.metrics import truncate_metrics
from jaxcurv.app.run_folder import prepare_run_dir, remove_stale_temporaries, write_text
from jaxcurv.app.training_step import strongly_typed

PyTree = Any

__all__ = ["open_run", "starting_point"]


def open_run(cfg: Config, run_dir: pathlib.Path, resume: bool, overwrite: bool) -> pathlib.Path:
    """The run folder, ready: created (:func:`jaxcurv.app.run_folder.prepare_run_dir`),
    cleared of stale temporary files, and holding ``config.toml`` of a fresh run.

    Raises:
      CheckpointError: ``resume`` with no run to resume in ``run_dir``.
    """
    nothing = (
        f"--resume: {run_dir} has no checkpoints/step_*.npz to resume from. Train without "
        f"--resume first (checkpoints are written every `run.checkpoint_every` steps and at "
        f"the end)."
    )
    if resume and not run_dir.is_dir():
        raise CheckpointError(nothing)
    run_dir = prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    remove_stale_temporaries(run_dir)
    if not resume:
        # Before any work, so that `--resume` can continue however early the run stops.
        write_text(run_dir / "config.toml", config_to_toml(cfg))
    elif latest_checkpoint(run_dir) is None and not (run_dir / "config.toml").is_file():
        raise CheckpointError(nothing)
    return run_dir


def starting_point(cfg, run_dir, model, opt, resume, say) -> tuple[PyTree, PyTree, int, float]:
    """``(params, state, step, elapsed)``: the initialization, or the checkpoint resumed.

    On resume, ``config.toml`` is rewritten with ``cfg`` and ``metrics.jsonl`` cut back to
    the checkpoint's step; ``say`` gets a one-line note per damaged checkpoint skipped.

    Raises:
      CheckpointError: only damaged checkpoints, a config that differs from the one that
        wrote the run, or a damaged ``metrics.jsonl``.
    """
    params = strongly_typed(model.init(jax.random.key(cfg.run.seed)))
    state = strongly_typed(opt.init(params))
    if not resume:
        return params, state, 0, 0.0
    ckpt = _resume_point(run_dir, cfg, model, params, state, say)
    # The config may raise run.steps on resume; the run folder records what it runs.
    write_text(run_dir / "config.toml", config_to_toml(cfg))
    if ckpt is None:
        return params, state, 0, 0.0
    try:
        truncate_metrics(run_dir / "metrics.jsonl", ckpt.step)
    except ValueError as e:
        raise CheckpointError(
            f"Cannot resume {run_dir}: {e} Delete that line, or start again with --overwrite."
        ) from None
    return strongly_typed(ckpt.params), strongly_typed(ckpt.state), ckpt.step, ckpt.elapsed


def _saved_tables(path: pathlib.Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _resume_point(run_dir, cfg, model, params, state, say) -> Checkpoint | None:
    """The newest readable checkpoint of the run (``None``: it has none yet), checked
    against ``cfg``; damaged ones are skipped with a one-line note each."""
    tables = config_to_dict(cfg)
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(
                path, params, state, model_name=model.name, optimizer_name=cfg.optimizer.name
            )
        except DamagedCheckpointError as e:
            say(f"warning: skipping damaged checkpoint {path} ({e.reason}).")
            damaged.append(path.name)
            continue
        _check_same_run(ckpt.meta.get("config", {}), tables, path)
        return ckpt
    if damaged:
        raise CheckpointError(
            f"Cannot resume {run_dir}: every checkpoint in it is damaged "
            f"({', '.join(damaged)}). Start the run again with --overwrite, or in another --out."
        )
    config_path = run_dir / "config.toml"
    _check_same_run(_saved_tables(config_path), tables, config_path)
    say(
        f"note: {run_dir} has no checkpoint yet (the run stopped before its first one); "
        f"starting from step 0."
    )
    return None


def _check_same_run(saved: Mapping, tables: Mapping, path: pathlib.Path) -> None:
    # The step count may grow on resume; everything that shapes the trajectory may not.
    changed = []
    for section in ("data", "model", "optimizer"):
        for key, value in tables.get(section, {}).items():
            old = saved.get(section, {}).get(key, value)
            if old != value:
                changed.append(f"{section}.{key}: {old!r} -> {value!r}")
    old_seed = saved.get("run", {}).get("seed", tables["run"]["seed"])
    if old_seed != tables["run"]["seed"]:
        changed.append(f"run.seed: {old_seed!r} -> {tables['run']['seed']!r}")
    if changed:
        raise CheckpointError(
            f"Cannot resume from {path}: the config differs from the one that wrote it "
            f"({'; '.join(changed)}). Resume with the run's own config.toml (you may raise "
            f"run.steps), or start a fresh run in another --out."
        )
