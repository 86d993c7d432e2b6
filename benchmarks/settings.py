"""Benchmark settings: the shared command-line options, ``[bench]`` TOML tables, layering.

Every benchmark reads its settings the same way (:func:`resolve`): its own defaults, then
``[bench.settings]`` (``repeats`` / ``warmup`` / ``seed`` for all), then its own table,
then ``--set KEY=VALUE`` overrides.

>>> expand({"a.b": 1, "c": {"d.e": 2}})
{'a': {'b': 1}, 'c': {'d': {'e': 2}}}
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def add_common_args(p: argparse.ArgumentParser, example_key: str) -> None:
    """The options every benchmark entry point shares (each script and `benchmarks.run`)."""
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    p.add_argument("--out", default=None, help="results root (default benchmarks/results)")
    p.add_argument("--config", default=None, help="TOML file with a [bench] table")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a setting, e.g. `--set {example_key}.repeats=5` (TOML value)",
    )


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def expand(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict from a mix of nested tables and dotted keys (``--set`` style)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        value = expand(value) if isinstance(value, Mapping) else value
        if isinstance(value, dict):
            sub = out
            for part in key.split("."):
                sub = sub.setdefault(part, {})
            sub.update(value)
        else:
            _set_dotted(out, key, value)
    return out


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def load_settings(
    config: str | os.PathLike | None, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``([bench] table, settings)`` from a TOML file plus ``key=value`` overrides."""
    bench: dict[str, Any] = {}
    if config is not None:
        with open(config, "rb") as fh:
            bench = dict(tomllib.load(fh).get("bench", {}))
    settings = expand(bench.pop("settings", {}))
    for text in overrides:
        if "=" not in text:
            raise ValueError(f"`--set {text}` must be KEY=VALUE, e.g. `--set products.repeats=5`.")
        key, raw = text.split("=", 1)
        key = key.strip().removeprefix("bench.settings.")
        _set_dotted(settings, key, _toml_value(raw.strip()))
    return bench, settings


# Keys every benchmark understands, at the top of [bench.settings] or in its own table.
COMMON_DEFAULTS = {
    "full": {"repeats": 25, "warmup": 3, "seed": 0},
    "quick": {"repeats": 7, "warmup": 1, "seed": 0},
}


def resolve(
    name: str,
    defaults: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    quick: bool,
    backend: str = "cpu",
) -> dict[str, Any]:
    """A benchmark's settings: its defaults, then ``[bench.settings]``, then its own table.

    ``[bench.settings.<name>]`` applies to full runs and ``[bench.settings.<name>.quick]``
    to ``--quick`` runs; likewise ``repeats`` / ``warmup`` / ``seed`` at the top level and
    under ``[bench.settings.quick]``. On a backend other than ``"cpu"`` the benchmark's
    ``defaults["accelerator"][mode]``, where it has one, replaces some of its defaults
    (problems sized for a GPU) before the tables apply.

    >>> d = {"full": {"batch": 8}, "quick": {"batch": 2}, "accelerator": {"full": {"batch": 64}}}
    >>> resolve("x", d, {}, False, "gpu")["batch"], resolve("x", d, {}, False)["batch"]
    (64, 8)
    """
    mode = "quick" if quick else "full"
    out = {**COMMON_DEFAULTS[mode], **defaults[mode]}
    if backend != "cpu":
        sized = dict(defaults.get("accelerator", {}).get(mode, {}))
        unknown = sorted(set(sized) - set(out))
        if unknown:
            raise ValueError(f"`{name}` accelerator defaults {unknown} are not settings of it.")
        out.update(sized)
    top = {k: v for k, v in settings.items() if k in COMMON_DEFAULTS["full"]}
    if quick:
        top.update(
            {k: v for k, v in settings.get("quick", {}).items() if k in COMMON_DEFAULTS["full"]}
        )
    own = dict(settings.get(name, {}))
    own_quick = own.pop("quick", {})
    layered = {**top, **(own_quick if quick else own)}
    unknown = sorted(set(layered) - set(out))
    if unknown:
        raise ValueError(
            f"Unknown setting(s) {unknown} for benchmark `{name}`; valid keys: "
            f"{sorted(out)}. Fix [bench.settings.{name}] in the config or the --set override."
        )
    for key, value in layered.items():
        if isinstance(out[key], tuple | list) and isinstance(value, list):
            value = type(out[key])(value) if isinstance(out[key], tuple) else value
        out[key] = value
    return out


def peers_python() -> Path:
    """The interpreter of the peers' environment, for peers run in a process of their own.

    ``$JAXCURV_PEERS_PYTHON`` if set, else ``.venv-peers/bin/python`` (``make bench-peers``
    builds it) when present, else this interpreter: a peer missing there is reported as
    not installed.
    """
    if os.environ.get("JAXCURV_PEERS_PYTHON"):
        return Path(os.environ["JAXCURV_PEERS_PYTHON"])
    venv = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"
    return venv if venv.exists() else Path(sys.executable)
