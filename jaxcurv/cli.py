"""The ``jaxcurv`` command: ``demo``, ``train``, ``landscape``, ``bench`` and ``config``.

This module only parses arguments and configs and calls the library (:mod:`jaxcurv.demo`,
:mod:`jaxcurv.train`, :mod:`jaxcurv.landscape`); no numerical code lives here. User errors
-- a bad config key or value, an existing run, a checkpoint from another model -- end with
a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
import textwrap
from collections.abc import Sequence

__all__ = ["main"]

_EPILOG_CONFIG = """\
Configs are TOML files with tables [run], [data], [model], [optimizer], [landscape], [demo],
[bench]; `jaxcurv config` lists every key with its default and meaning. Any key can be
overridden: --set optimizer.damping=10 --set model.sizes=784,400,6
"""


def _wrap(text: str) -> str:
    return textwrap.fill(text, 88)


def _run_command(
    sub,
    name: str,
    *,
    help: str,
    description: str,
    config_help: str,
    config_required: bool = False,
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
    p.add_argument("--config", metavar="FILE", required=config_required, help=config_help)
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
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxcurv",
        description="First and second derivatives at scale on JAX: the seed demo, "
        "Hessian-free training, and loss-landscape analysis.",
        epilog="Run `jaxcurv COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _run_command(
        sub,
        "demo",
        help="the seed notes end to end, with a Hessian-free training run",
        description="The seed, computed: derivative kinds and shapes, the worked Jacobian "
        "and Hessian, critical points and saddles, backprop as a chain of VJPs, a short "
        "Hessian-free vs Adam run on CURVES-like images, and the trained model's Hessian "
        "spectrum. Prints a report and writes report.md, report.json and PNG plots. About "
        "a minute on two CPU cores.",
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
        "logged step), summary.json, checkpoints/step_*.npz and PNG plots of loss vs time "
        "and of damping / CG steps / rho. Interrupt with Ctrl-C and continue bit-identically "
        "with --resume.",
        config_help="TOML config file",
        config_required=True,
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest checkpoint (run.steps may be raised)",
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
        "bench",
        help="run the benchmark suite (from a source checkout)",
        description="Run the benchmark suite, like `python -m benchmarks.run`. The "
        "benchmarks/ folder is part of the source checkout, not of the installed package: "
        "run this from the repository root.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default="configs/bench.toml",
        help="benchmark config; default configs/bench.toml",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    p.add_argument("--out", metavar="DIR", help="results folder (default from the config)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated subset of the benchmarks")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a [bench.settings] value, e.g. --set products.repeats=5 (repeatable)",
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


def _cmd_demo(args) -> int:
    from jaxcurv.demo import demo_config, run_demo

    cfg = demo_config(args.config, args.overrides)
    run_demo(cfg, args.out, overwrite=args.overwrite, progress=_progress(args))
    return 0


def _cmd_train(args) -> int:
    from jaxcurv.config import load_config
    from jaxcurv.train import train

    cfg = load_config(args.config, args.overrides)
    out = args.out or _default_out("train", args.config)
    if args.resume and args.overwrite:
        raise _UsageError("--resume and --overwrite contradict each other; pass one of them.")
    try:
        res = train(
            cfg, out, resume=args.resume, overwrite=args.overwrite, progress=_progress(args)
        )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; checkpoint saved. Continue with: jaxcurv train --config "
            f"{args.config} --out {out} --resume",
            file=sys.stderr,
        )
        return 130
    last = next((r for r in reversed(res.metrics) if r.get("test_loss") is not None), {})
    print(
        f"trained {res.metrics[-1]['step']} steps; test loss {last.get('test_loss')}; "
        f"outputs in {res.run_dir}"
    )
    return 0


def _cmd_landscape(args) -> int:
    from jaxcurv.config import load_config
    from jaxcurv.landscape import landscape

    if args.config is None and args.checkpoint is None:
        raise _UsageError("landscape needs --config FILE or --checkpoint PATH (or both).")
    cfg = load_config(args.config, args.overrides)
    source = args.config or args.checkpoint
    out = args.out or _default_out("landscape", source)
    res = landscape(
        cfg, out, checkpoint=args.checkpoint, overwrite=args.overwrite, progress=_progress(args)
    )
    top = ", ".join(f"{v:.4g}" for v in res["top_eigenvalues"])
    bottom = ", ".join(f"{v:.4g}" for v in res["bottom_eigenvalues"])
    print(f"loss {res['loss']:.4g}, gradient norm {res['gradient_norm']:.3g}")
    print(f"top eigenvalues: {top}")
    print(f"bottom eigenvalues: {bottom}")
    print(
        f"trace ~ {res['hutchinson_trace']['estimate']:.4g} "
        f"+- {res['hutchinson_trace']['stderr']:.2g}; {res['critical_point']['kind']}"
    )
    print(f"outputs in {out}")
    return 0


def _cmd_bench(args) -> int:
    # benchmarks/ lives in the source checkout, next to configs/, not in the installed
    # package: run it from the repository root, as `python -m benchmarks.run` would.
    root = pathlib.Path.cwd()
    if not (root / "benchmarks" / "run.py").is_file():
        raise _UsageError(
            "`jaxcurv bench` runs benchmarks/run.py from a source checkout, and there is none "
            f"under {root}. Run it from the repository root (or use `make bench`)."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module("benchmarks.run")
    argv = ["--config", args.config]
    if args.quick:
        argv.append("--quick")
    if args.out:
        argv += ["--out", args.out]
    if args.only:
        argv += ["--only", args.only]
    for text in args.overrides:
        argv += ["--set", text]
    return int(module.main(argv) or 0)


def _cmd_config(args) -> int:
    from jaxcurv.config import _SECTIONS, describe_keys

    if args.section is not None and args.section not in _SECTIONS:
        raise _UsageError(f"unknown table {args.section!r}; tables: {', '.join(_SECTIONS)}.")
    print(describe_keys(args.section))
    return 0


class _UsageError(Exception):
    pass


_COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "landscape": _cmd_landscape,
    "bench": _cmd_bench,
    "config": _cmd_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcurv`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from jaxcurv.config import ConfigError
    from jaxcurv.train import CheckpointError

    try:
        return _COMMANDS[args.command](args)
    except (_UsageError, ConfigError, CheckpointError, FileExistsError) as e:
        print(f"jaxcurv {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
