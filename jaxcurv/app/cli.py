"""The ``jaxcurv`` command: ``demo``, ``train``, ``landscape`` and ``config``.

This module only parses arguments and configs and calls the application
(:mod:`jaxcurv.app.demo`, :mod:`jaxcurv.app.loop`, :mod:`jaxcurv.app.landscape_report`);
no numerical code lives here. User errors -- a bad config key or value, an existing run,
a checkpoint from another model or a damaged one, a missing optional dependency -- end
with a one-line message and exit status 2, never a traceback. Ctrl-C ends with a line
that says exactly what was saved and how to go on, and exit status 130.

The benchmark suite is not a subcommand: it lives in the source checkout, not in the
installed package, and runs from there with ``make bench`` or ``python -m benchmarks.run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pathlib
import shlex
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

from jaxcurv import __version__

__all__ = ["main"]

_EPILOG_CONFIG = """\
Configs are TOML files with tables [run], [data], [model], [optimizer], [landscape], [demo];
`jaxcurv config` lists every key with its default and meaning. Any key can be overridden:
--set optimizer.damping=10 --set model.sizes=784,400,6
"""

_EPILOG_MAIN = """\
Run `jaxcurv COMMAND --help` for a command's options. Benchmarks run from a source
checkout: `make bench`, or `python -m benchmarks.run` (see BENCHMARKS.md).
"""


_CACHE_ENV = "JAXCURV_COMPILE_CACHE"
_CACHE_OFF = ("", "0", "off", "no", "false")
# Every program is kept, however fast it compiled: a first answer is made of many small
# programs (10-30 ms each on a 2-core CPU) beside the large ones (0.2-2 s).
_CACHE_MIN_COMPILE_S = 0.0
# Least recently used entries go beyond this, where JAX can evict (its default: no
# limit). A program of the reference models takes 0.1-5 MB.
_CACHE_MAX_BYTES = 2 << 30


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(base, "jaxcurv", "xla")


def compile_cache_dir(args, *, program: bool) -> str | None:
    """Where this run keeps compiled programs, or ``None`` for no persistent cache.

    ``--no-compile-cache`` wins, then ``--compile-cache DIR``, then ``$JAXCURV_COMPILE_CACHE``
    (a folder, or one of ``off``/``0``/``no``/``false``/empty to turn it off), then the
    default folder -- the latter two only when ``program`` (the ``jaxcurv`` program itself,
    not ``main([...])`` called from Python, which leaves the process's JAX settings alone
    unless asked).
    """
    if getattr(args, "no_compile_cache", False):
        return None
    if getattr(args, "compile_cache", None):
        return os.path.expanduser(args.compile_cache)
    if not program or not hasattr(args, "no_compile_cache"):
        return None
    env = os.environ.get(_CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in _CACHE_OFF else os.path.expanduser(env)
    return os.path.expanduser(_default_cache_dir())


def _configure_compile_cache(args, *, program: bool) -> None:
    """Turn JAX's persistent compilation cache on (into ``compile_cache_dir``) or off."""
    import jax

    path = compile_cache_dir(args, program=program)
    if path is None:
        if getattr(args, "no_compile_cache", False):
            jax.config.update("jax_enable_compilation_cache", False)
        return
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None:
        # JAX evicts entries only with `filelock`; without it a size limit breaks the cache.
        jax.config.update("jax_compilation_cache_max_size", _CACHE_MAX_BYTES)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _run_command(
    sub,
    name: str,
    *,
    help: str,
    description: str,
    config_help: str,
    out_default: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand that runs a config (demo, train, landscape), with the options they share."""
    p = sub.add_parser(
        name,
        help=help,
        description=_wrap(description),
        epilog=_EPILOG_CONFIG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help=config_help)
    p.add_argument(
        "--out",
        metavar="DIR",
        default=out_default,
        help="output folder (created if missing)"
        + (f"; default {out_default}" if out_default else "; default runs/<command>-<config>"),
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous run in --out (only folders jaxcurv wrote are deleted)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one config value, parsed by its type (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="keep compiled XLA programs in DIR, so the next run skips their compilation "
        f"(default ${_CACHE_ENV} or {_default_cache_dir()}; on by default when run as the "
        "`jaxcurv` program)",
    )
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="neither read nor write the persistent compilation cache",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcurv",
        description=_wrap(
            "First and second derivatives at scale on JAX: the seed demo, "
            "Hessian-free training, and loss-landscape analysis."
        ),
        epilog=_EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jaxcurv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _run_command(
        sub,
        "demo",
        help="the seed notes end to end, with a Hessian-free training run",
        description="The seed, computed: derivative kinds and shapes, the worked Jacobian "
        "and Hessian, critical points and saddles, backprop as a chain of VJPs, a short "
        "Hessian-free vs Adam run on CURVES-like images, and the trained model's Hessian "
        "spectrum. Prints a report and writes report.md, report.json and PNG plots. It "
        "took about two minutes on a 2-core CPU machine.",
        config_help="TOML applied over the built-in demo settings (configs/demo.toml spells "
        "them out)",
        out_default="runs/demo",
    )

    p = _run_command(
        sub,
        "train",
        help="train a reference model with hessian_free or an optax baseline",
        description="Train the model of a config with Hessian-free (Martens 2010) or an optax "
        "baseline (adam, sgd, lbfgs). Writes config.toml, metrics.jsonl (one JSON object per "
        "logged step: step, time, step_time, loss_before -- the training batch loss at the "
        "parameters before the step -- test_loss after the step, and Hessian-free's damping, "
        "rho, cg_steps), summary.json, checkpoints/step_*.npz and PNG plots of loss vs time "
        "and of damping / CG steps / rho (plots need the cli extra). Ctrl-C stops after the "
        "current step and checkpoints it; `jaxcurv train --resume --out RUN` continues "
        "bit-identically, with the run's own config.",
        config_help="TOML config file; with --resume, default the run's own config.toml",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest readable checkpoint (its config is "
        "read from the run folder; --set run.steps=N trains further)",
    )

    p = _run_command(
        sub,
        "landscape",
        help="Hessian eigenvalues, critical-point kind, trace, density and loss slices",
        description="Curvature of the training loss at a trained model: gradient norm, "
        "top-k and bottom-k Hessian eigenvalues (Lanczos), critical-point kind, Hutchinson "
        "trace, spectral density (stochastic Lanczos quadrature) and 1-D / 2-D loss slices "
        "along the top eigenvectors. Analyzes --checkpoint, or trains per --config first "
        "(run.steps = 0 analyzes the initialization). Writes landscape.json and PNG plots.",
        config_help="TOML config file ([landscape] options)",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a checkpoint .npz or a run folder of `jaxcurv train` (its latest checkpoint)",
    )

    p = sub.add_parser(
        "config",
        help="list every config key with its type, default and meaning",
        description="List the config tables and keys that --config files and --set accept.",
    )
    p.add_argument("section", nargs="?", help="only this table, e.g. optimizer")
    return parser


def _default_out(command: str, config: str | None) -> str:
    stem = pathlib.Path(config).stem if config else "default"
    return os.path.join("runs", f"{command}-{stem}")


def _progress(args) -> bool | None:
    return False if args.no_progress else None


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _cmd_demo(args) -> int:
    from jaxcurv.app.demo import demo_config, run_demo

    cfg = demo_config(args.config, args.overrides)
    run_demo(cfg, args.out, overwrite=args.overwrite, progress=_progress(args))
    return 0


def _train_config(args):
    """The config of a train run: --config, or with --resume the run's own config.toml;
    then the --set overrides."""
    from jaxcurv.app.config import load_config

    if args.config is not None:
        return load_config(args.config, args.overrides)
    if not args.resume:
        raise _UsageError("train needs --config FILE (or --resume --out RUN to continue a run).")
    if args.out is None:
        raise _UsageError("--resume without --config needs --out RUN, the run to continue.")
    saved = pathlib.Path(args.out) / "config.toml"
    if not saved.is_file():
        raise _UsageError(
            f"--resume: {args.out} holds no jaxcurv run to continue (it has no config.toml). "
            f"Check --out, or start a run with --config FILE."
        )
    return load_config(saved, args.overrides)


def _resume_hint(out) -> str:
    return f"jaxcurv train --resume --out {shlex.quote(str(out))}"


def _interrupted(e, out) -> str:
    """What a stopped run has on disk, and the command that continues it."""
    if e.saved:
        return (
            f"interrupted after step {e.step} of {e.total}; checkpoint saved: {e.checkpoint}. "
            f"Continue with: {_resume_hint(out)}"
        )
    if e.checkpoint is not None:
        return (
            f"interrupted before step {e.step + 1} of {e.total}; nothing new to save, the "
            f"latest checkpoint is {e.checkpoint}. Continue with: {_resume_hint(out)}"
        )
    return (
        f"interrupted before the first step; no checkpoint was written. Start it again "
        f"with: {_resume_hint(out)}"
    )


def _cmd_train(args) -> int:
    from jaxcurv.app.loop import TrainingInterrupted, train

    if args.resume and args.overwrite:
        raise _UsageError("--resume and --overwrite contradict each other; pass one of them.")
    cfg = _train_config(args)
    out = args.out or _default_out("train", args.config)
    args.run_dir = out  # for the message if a second Ctrl-C cuts the run short
    try:
        res = train(
            cfg, out, resume=args.resume, overwrite=args.overwrite, progress=_progress(args)
        )
    except TrainingInterrupted as e:
        print(f"jaxcurv train: {_interrupted(e, out)}", file=sys.stderr)
        return 130
    done = res.metrics[-1]["step"] if res.metrics else res.start
    if args.resume and res.start >= cfg.run.steps:
        print(
            f"{res.run_dir} is already at step {res.start} (run.steps = {cfg.run.steps}): "
            f"nothing to train. Add --set run.steps=N with a larger N to train further."
        )
        return 0
    last = next((r for r in reversed(res.metrics) if r.get("test_loss") is not None), {})
    head = f"resumed at step {res.start}, trained to step {done}" if res.start else ""
    head = head or f"trained {done} steps"
    print(f"{head}; test loss {_fmt(last.get('test_loss'))}; outputs in {res.run_dir}")
    return 0


def _cmd_landscape(args) -> int:
    from jaxcurv.app.config import load_config
    from jaxcurv.app.landscape_report import landscape
    from jaxcurv.app.plots import require_plotting

    if args.config is None and args.checkpoint is None:
        raise _UsageError("landscape needs --config FILE or --checkpoint PATH (or both).")
    require_plotting("`jaxcurv landscape`")
    cfg = load_config(args.config, args.overrides)
    source = args.config or args.checkpoint
    out = args.out or _default_out("landscape", source)
    res = landscape(
        cfg, out, checkpoint=args.checkpoint, overwrite=args.overwrite, progress=_progress(args)
    )
    pairs = res["eigenpairs"]

    def shown(rows):
        return ", ".join(
            f"{r['eigenvalue']:.4g}{'' if r['converged'] else ' (NOT converged)'}" for r in rows
        )

    print(f"loss {res['loss']:.4g}, gradient norm {res['gradient_norm']:.3g}")
    print(f"top eigenvalues: {shown(pairs['top'])}")
    print(f"bottom eigenvalues: {shown(pairs['bottom'])}")
    worst = max(res["top_residuals"] + res["bottom_residuals"])
    print(f"  ({pairs['method']}; largest residual {worst:.2g}; {pairs['convergence_test']})")
    print(
        f"trace ~ {res['hutchinson_trace']['estimate']:.4g} "
        f"+- {res['hutchinson_trace']['stderr']:.2g}; {res['critical_point']['kind']}"
    )
    print(f"outputs in {out}")
    return 0


def _cmd_config(args) -> int:
    from jaxcurv.app.config import SECTIONS, describe_keys

    if args.section is not None and args.section not in SECTIONS:
        raise _UsageError(f"unknown table {args.section!r}; tables: {', '.join(SECTIONS)}.")
    print(describe_keys(args.section))
    return 0


class _UsageError(Exception):
    pass


_COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "landscape": _cmd_landscape,
    "config": _cmd_config,
}


def _os_error(e: OSError) -> str:
    # FileExistsError of a run folder carries its own sentence; the rest read like
    # "Permission denied: runs/x".
    if e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e)


def _cut_short(args) -> str:
    """What is on disk after a second Ctrl-C (or one before training began)."""
    run_dir = getattr(args, "run_dir", None)
    if run_dir is None:
        return "interrupted; it stopped before finishing and its outputs are incomplete."
    from jaxcurv.app.checkpoints import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None:
        return (
            f"interrupted; no checkpoint was written. Start it again with: {_resume_hint(run_dir)}"
        )
    return (
        f"interrupted; nothing more was saved, the latest checkpoint is {latest}. Continue "
        f"with: {_resume_hint(run_dir)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcurv`` console script.

    Args:
      argv: the arguments after ``jaxcurv``; ``None`` reads ``sys.argv`` (the program,
        which also turns the persistent compilation cache on by default: see
        ``compile_cache_dir``).

    Returns:
      The exit status: 0 when done, 2 after a user error (one line on stderr, no
      traceback), 130 after Ctrl-C (one line saying what is saved and how to go on).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_compile_cache(args, program=argv is None)
    code = _run(args)
    if code == 130 and argv is None:
        # The program ends here: a further Ctrl-C must not turn the exit just announced
        # into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def _run(args) -> int:
    from jaxcurv.app.checkpoints import CheckpointError
    from jaxcurv.app.config import ConfigError
    from jaxcurv.app.extras import MissingExtraError
    from jaxcurv.app.interrupt import stop_on_interrupt
    from jaxcurv.app.loop import TrainingInterrupted

    # For train, from here on Ctrl-C asks training to stop after its current step (one
    # pressed before training starts stops it before the first); the other commands also
    # compute outside the training loop, where only a KeyboardInterrupt stops them.
    guard = contextlib.nullcontext()
    if args.command == "train":
        guard = stop_on_interrupt(on_repeat=lambda: _quit_now(args))
    try:
        with guard:
            return _COMMANDS[args.command](args)
    except (_UsageError, ConfigError, CheckpointError, MissingExtraError) as e:
        print(f"jaxcurv {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"jaxcurv {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # from the training inside demo or landscape
        print(f"\njaxcurv {args.command}: interrupted ({e}).", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        _quit_now(args)


def _quit_now(args) -> NoReturn:
    """Say what is on disk and end the process at once (a second Ctrl-C, or any Ctrl-C
    outside the training loop)."""
    # Raw writes: this may run inside a signal handler, interrupting a buffered write.
    os.write(2, f"\njaxcurv {args.command}: {_cut_short(args)}\n".encode())
    with contextlib.suppress(RuntimeError, ValueError, OSError):
        sys.stdout.flush()
    # The interrupt may have come inside JAX, with compilation threads still running;
    # interpreter teardown then crashes (a segfault, jax 0.10). Everything jaxcurv
    # saved is already fsynced, so leave without tearing down.
    os._exit(130)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
