"""Typed run configuration, read from TOML with the standard library's ``tomllib``.

A config file has up to six tables -- ``[run]``, ``[data]``, ``[model]``,
``[optimizer]``, ``[landscape]`` and ``[demo]`` (:data:`SECTIONS`) -- each a frozen
dataclass below, every key optional (the defaults are the dataclass defaults). Anything
the file says is checked before any work starts: an unknown table or key, a value of the
wrong type or outside its range is a :class:`ConfigError` that names the key, the value
received and the fix (and suggests the closest valid key for a typo; the checks of one
value are in :mod:`jaxcurv.app.config_values`). Any value can be overridden from
the command line with ``--set section.key=value``, parsed by the key's declared type.

Example:
  >>> cfg = load_config(None, overrides=["optimizer.damping=10", "run.steps=5"])
  >>> cfg.optimizer.damping, cfg.run.steps
  (10.0, 5)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from jaxcurv.app.config_consistency import check_consistency
from jaxcurv.app.config_values import (
    RENAMED_KEYS,
    ConfigError,
    check_range,
    convert,
    count,
    current_key,
    parse_value,
    setting,
    suggest,
    toml_value,
    type_name,
)
from jaxcurv.landscape import DENSE_THRESHOLD

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DemoConfig",
    "LandscapeConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RENAMED_KEYS",
    "RunConfig",
    "SECTIONS",
    "config_from_dict",
    "config_to_dict",
    "config_to_toml",
    "describe_keys",
    "load_config",
]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """``[run]``: how long to train and what to record."""

    seed: int = setting(0, "PRNG seed of the parameter initialization")
    steps: int = count(50, "optimizer steps in total", low=0)
    log_every: int = count(1, "write a metrics line every this many steps")
    eval_every: int = count(10, "evaluate the test loss every this many steps")
    checkpoint_every: int = count(
        0, "save params and optimizer state every this many steps (0: at the end)", low=0
    )
    progress: bool = setting(True, "show a progress bar (needs tqdm, in the cli extra)")
    sharpness_every: int = count(
        0,
        "record the top curvature eigenvalue (sharpness) and the trace every this many steps, "
        "at the parameters after the step on its batch (0: off, costs nothing)",
        low=0,
    )
    sharpness_curvature: str = setting(
        "hessian",
        "the matrix the sharpness is measured on: the Hessian, or the Gauss-Newton matrix",
        choices=("hessian", "ggn"),
    )
    sharpness_maxiter: int = count(
        200, "most curvature products per top-eigenvalue estimate (thick-restart Lanczos)", low=2
    )
    sharpness_num_samples: int = count(
        10, "Hutchinson probes per trace estimate of the sharpness record", low=2
    )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``[data]``: the embedded dataset (generated from a seed, never downloaded)."""

    kind: str = setting(
        "curves",
        "which dataset: CURVES-like images, or a small regression or classification set",
        choices=("curves", "regression", "classification"),
    )
    num_train: int = count(2000, "training examples")
    num_test: int = count(500, "test examples")
    batch_size: int = count(0, "examples per step (0: the whole training set)", low=0)
    seed: int = setting(0, "seed of the data generator and of the batch shuffling")
    size: int = count(28, "curves: image side in pixels", low=2)
    num_control_points: int = count(3, "curves: points each curve runs through", low=2)
    in_dim: int = count(2, "regression / classification: input dimension")
    out_dim: int = count(1, "regression: target dimension")
    num_classes: int = count(3, "classification: number of classes", low=2)
    noise: float = setting(0.05, "regression: target noise standard deviation", low=0.0)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``[model]``: a reference model of :mod:`jaxcurv.app.models`."""

    kind: str = setting(
        "autoencoder",
        "a deep autoencoder (mirrored encoder and decoder) or a plain MLP",
        choices=("autoencoder", "mlp"),
    )
    sizes: tuple[int, ...] = setting(
        (784, 400, 200, 100, 50, 25, 6),
        "autoencoder: encoder widths, input to code (the decoder mirrors them); "
        "mlp: all layer widths, input first",
    )
    activation: str = setting(
        "logistic",
        "nonlinearity of the hidden layers",
        choices=("logistic", "tanh", "relu", "softplus"),
    )
    loss: str = setting(
        "auto",
        "mlp only; auto: softmax_cross_entropy for classification, else mse",
        choices=("auto", "mse", "softmax_cross_entropy", "sigmoid_cross_entropy"),
    )
    init: str = setting(
        "sparse",
        "weight initialization: sparse (Martens 2010: 15 nonzero weights into each unit) or glorot",
        choices=("sparse", "glorot"),
    )
    dtype: str = setting(
        "float32", "floating-point type of parameters and data", choices=("float32", "float64")
    )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """``[optimizer]``: ``hessian_free`` (Martens 2010) or an optax baseline."""

    name: str = setting(
        "hessian_free",
        "the optimizer: Hessian-free, or an optax baseline",
        choices=("hessian_free", "adam", "sgd", "lbfgs"),
    )
    learning_rate: float = setting(
        1.0,
        "step size; hessian_free scales its step by it (keep 1 for Martens' algorithm)",
        low=0.0,
        low_open=True,
    )
    # hessian_free
    curvature: str = setting(
        "ggn",
        "hessian_free: curvature matrix, Gauss-Newton (ggn, positive semi-definite) or Hessian",
        choices=("ggn", "hessian"),
    )
    damping: float = setting(1.0, "hessian_free: initial damping lambda", low=0.0)
    adapt_damping: bool = setting(
        True, "hessian_free: adapt damping by the reduction ratio rho (Levenberg-Marquardt)"
    )
    cg_maxiter: int = count(250, "hessian_free: most conjugate-gradient steps per update")
    cg_tol: float = setting(1e-5, "hessian_free: tolerance of the CG stopping rule", low=0.0)
    cg_stop: str = setting(
        "martens",
        "hessian_free: CG stopping rule: relative progress of the quadratic (martens), "
        "residual norm, or an inexact-Newton forcing sequence",
        choices=("martens", "residual", "forcing"),
    )
    cg_backtracking: bool = setting(
        True, "hessian_free: step back to an earlier CG iterate when it has a lower loss"
    )
    line_search: bool = setting(
        True, "hessian_free: backtracking (Armijo) line search along the CG direction"
    )
    preconditioner: str = setting(
        "none",
        "hessian_free: CG preconditioner: none, or Martens' diagonal from squared gradients",
        choices=("none", "martens"),
    )
    curvature_fraction: float = setting(
        1.0,
        "hessian_free: share of the batch used for curvature products",
        low=0.0,
        high=1.0,
        low_open=True,
    )
    # optax baselines
    momentum: float = setting(0.0, "sgd: momentum (0: plain SGD)", low=0.0, high=1.0)
    b1: float = setting(0.9, "adam: first-moment decay", low=0.0, high=1.0)
    b2: float = setting(0.999, "adam: second-moment decay", low=0.0, high=1.0)


@dataclasses.dataclass(frozen=True)
class LandscapeConfig:
    """``[landscape]``: curvature diagnostics of the loss at the trained parameters."""

    checkpoint: str = setting(
        "", "analyze this checkpoint (file or run folder) instead of training first"
    )
    num_examples: int = count(500, "training examples the loss is measured on")
    top_k: int = count(5, "largest Hessian eigenvalues to report")
    bottom_k: int = count(5, "smallest Hessian eigenvalues to report")
    maxiter: int = count(
        1000,
        "most Hessian-vector products the eigenvalues may spend; thick-restart Lanczos stops "
        "earlier once every reported pair has converged",
        low=2,
    )
    tol: float = setting(
        0.0,
        "relative residual of a converged eigenpair (0: the library default, 1e-5 for "
        "float32 and 1e-8 for float64)",
        low=0.0,
    )
    num_steps: int = count(40, "Lanczos steps per probe of the spectral density", low=2)
    trace_num_samples: int = count(30, "Hutchinson probes for the trace", low=2)
    density_num_samples: int = count(4, "probes of stochastic Lanczos quadrature")
    slice_points: int = count(21, "grid points per axis of the loss slices", low=3)
    slice_radius: float = setting(
        1.0, "half-width of the loss slices, in units of the directions", low=0.0, low_open=True
    )
    slice_directions: str = setting(
        "eigenvectors",
        "directions of the loss slices: the top two Hessian eigenvectors, or two random "
        "filter-normalized directions (Li et al. 2018)",
        choices=("eigenvectors", "random"),
    )
    interpolation_points: int = count(
        41,
        "points of the loss on the line from the initialization to the analyzed parameters "
        "(Goodfellow et al. 2015; 0: none)",
        low=0,
    )
    layer_trace_num_samples: int = count(
        30,
        "Hutchinson probes of the per-layer traces, each one Hessian-vector product shared "
        "by every layer (jaxcurv.block_curvature; 0: no per-layer table, 1: no standard error)",
        low=0,
    )
    layer_top_k: int = count(
        3,
        "largest eigenvalues of each layer's diagonal Hessian block, with residuals (0: "
        "per-layer traces only)",
        low=0,
    )
    dense_threshold: int = count(
        DENSE_THRESHOLD,
        "form the Hessian and diagonalize it exactly up to this many parameters (0: Lanczos)",
        low=0,
    )
    seed: int = setting(0, "PRNG seed of the random probes")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """``[demo]``: the Hessian-free vs baseline race and the spectrum in ``jaxcurv demo``."""

    # The demo's defaults live here alone; configs/demo.toml repeats them (a test checks).
    baseline: str = setting(
        "adam", "the optax optimizer Hessian-free races", choices=("adam", "sgd", "lbfgs")
    )
    baseline_learning_rate: float = setting(
        0.01, "the baseline's learning rate", low=0.0, low_open=True
    )
    baseline_steps: int = count(600, "the baseline's steps")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole configuration file: one dataclass per table."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    landscape: LandscapeConfig = dataclasses.field(default_factory=LandscapeConfig)
    demo: DemoConfig = dataclasses.field(default_factory=DemoConfig)


#: What each table is for, in plain text (``jaxcurv config`` prints it).
_SECTION_HELP: dict[str, str] = {
    "run": "how long to train and what to record",
    "data": "the embedded dataset (generated from a seed, never downloaded)",
    "model": "a reference model: deep autoencoder or MLP",
    "optimizer": "hessian_free (Martens 2010) or an optax baseline",
    "landscape": "curvature diagnostics of the loss at the trained parameters",
    "demo": "the Hessian-free vs baseline race of the jaxcurv demo command",
}

#: The tables of a config file, in order, and the dataclass each one is read into.
SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "landscape": LandscapeConfig,
    "demo": DemoConfig,
}

# Tables that configs written by earlier versions hold (every run's config.toml and
# checkpoint metadata had a `[bench]` table) and that nothing reads any more: skipped when
# read back, so that those runs still resume and load.
_RETIRED_SECTIONS = frozenset({"bench"})


def _section_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build_section(name: str, cls: type, table: Any, source: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"`{name}` must be a table (`[{name}]` followed by `key = value` lines), got "
            f"{table!r} in {source}."
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types_ = _section_types(cls)
    values = {}
    for key, value in table.items():
        key = current_key(name, key, source)
        if key in values:
            raise ConfigError(
                f"`{name}.{key}` is given twice in {source}, once under its old name. Keep "
                f"only `{name}.{key}`."
            )
        if key not in fields:
            raise ConfigError(
                f"Unknown key `{name}.{key}` in {source}.{suggest(key, fields, name + '.')} "
                f"Valid keys of "
                f"[{name}]: {', '.join(fields)}."
            )
        where = f"{name}.{key}"
        converted = convert(where, types_[key], value, source)
        check_range(where, fields[key], converted, source)
        values[key] = converted
    return cls(**values)


def _parse_override(text: str, cfg_types: dict[str, dict[str, Any]]) -> tuple[str, str, Any]:
    source = f"--set {text}"
    if "=" not in text:
        raise ConfigError(
            f"`--set {text}` is not of the form `section.key=value`; for example "
            f"`--set optimizer.damping=10`."
        )
    path, raw = text.split("=", 1)
    path, raw = path.strip(), raw.strip()
    if "." not in path:
        raise ConfigError(
            f"`--set {text}` needs a dotted key `section.key`, got `{path}`; for example "
            f"`--set run.steps=100`. Sections: {', '.join(SECTIONS)}."
        )
    section, key = path.split(".", 1)
    key = current_key(section, key, f"`{source}`")
    if section not in SECTIONS:
        raise ConfigError(
            f"Unknown section `{section}` in `{source}`.{suggest(section, SECTIONS)} "
            f"Sections: {', '.join(SECTIONS)}."
        )
    types_ = cfg_types[section]
    if key not in types_:
        raise ConfigError(
            f"Unknown key `{section}.{key}` in `{source}`.{suggest(key, types_, section + '.')} "
            f"Valid keys "
            f"of [{section}]: {', '.join(types_)}."
        )
    return section, key, parse_value(raw, types_[key])


def load_config(
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    *,
    base: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read a TOML config, apply ``section.key=value`` overrides, and check everything.

    Args:
      path: a ``.toml`` file, or ``None`` for the defaults (plus ``base``).
      overrides: ``"section.key=value"`` strings, applied in order after the file; the value
        is parsed by the key's type (strings need no quotes, lists may be ``784,400,6``).
      base: tables applied before the file (a program's own defaults, e.g. the demo's).

    Returns:
      A :class:`Config`.

    Raises:
      ConfigError: a missing or unparsable file, an unknown table or key, a value of the
        wrong type or out of range, or tables that contradict each other; the message
        names the key, the value and the fix.
    """
    tables: dict[str, dict[str, Any]] = {}
    for name, table in (base or {}).items():
        tables.setdefault(name, {}).update(table)
    source = "the defaults"
    if path is not None:
        source = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(
                f"Config file {source} does not exist. Pass an existing file to `--config` "
                f"(examples are in the repository's configs/ folder)."
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source} is not valid TOML: {e}.") from None
        for name, table in raw.items():
            if name in _RETIRED_SECTIONS:
                continue
            _check_table_name(name, source)
            if not isinstance(table, Mapping):
                raise ConfigError(
                    f"`{name}` must be a table (`[{name}]` then `key = value` lines), got "
                    f"`{name} = {table!r}` at the top of {source}."
                )
            tables.setdefault(name, {}).update(table)

    sections = {
        name: _build_section(name, cls, tables.get(name, {}), source)
        for name, cls in SECTIONS.items()
    }
    cfg_types = {name: _section_types(cls) for name, cls in SECTIONS.items()}
    overrides = list(overrides)
    for text in overrides:
        section, key, value = _parse_override(text, cfg_types)
        where = f"--set {text}"
        field = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[key]
        converted = convert(f"{section}.{key}", cfg_types[section][key], value, f"`{where}`")
        check_range(f"{section}.{key}", field, converted, f"`{where}`")
        sections[section] = dataclasses.replace(sections[section], **{key: converted})
    cfg = Config(**sections)
    check_consistency(cfg, source if not overrides else f"{source} with --set overrides")
    return cfg


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The config as plain tables (tuples become lists), for JSON and TOML output."""
    out = dataclasses.asdict(cfg)
    for table in out.values():
        for k, v in table.items():
            if isinstance(v, tuple):
                table[k] = list(v)
    return out


def config_to_toml(cfg: Config) -> str:
    """The config as TOML text that :func:`load_config` reads back to an equal config."""
    lines = []
    for name, table in config_to_dict(cfg).items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _check_table_name(name: str, source: str) -> None:
    """A table of the config (a file's or a saved run's) must be one of ``SECTIONS``."""
    if name not in SECTIONS:
        raise ConfigError(
            f"Unknown table `[{name}]` in {source}.{suggest(name, SECTIONS)} Valid "
            f"tables: {', '.join(f'[{s}]' for s in SECTIONS)}."
        )


def config_from_dict(tables: Mapping[str, Mapping[str, Any]], source: str) -> Config:
    """A config from plain tables (e.g. a run's saved ``config.json``), fully checked."""
    sections = {}
    for name, table in tables.items():
        if name in _RETIRED_SECTIONS:
            continue
        _check_table_name(name, source)
        sections[name] = _build_section(name, SECTIONS[name], table, source)
    cfg = Config(**sections)
    check_consistency(cfg, source)
    return cfg


def describe_keys(section: str | None = None) -> str:
    """The config keys as plain text: per table, each key's default, type and meaning.

    Args:
      section: only this table (e.g. ``"optimizer"``); ``None`` lists them all.

    Returns:
      One line per table and per key, e.g. ``  damping = 1.0  (a number)  hessian_free:
      initial damping lambda``.
    """
    lines = []
    for name, cls in SECTIONS.items():
        if section is not None and name != section:
            continue
        lines.append(f"[{name}]  {_SECTION_HELP[name]}")
        types_ = _section_types(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            extra = f.metadata.get("help", "")
            choices = f.metadata.get("choices")
            if choices:
                extra = (extra + "; " if extra else "") + "one of " + ", ".join(map(str, choices))
            shown = toml_value(list(default) if isinstance(default, tuple) else default)
            kind = type_name(types_[f.name])
            lines.append(f"  {f.name} = {shown}  ({kind}){'  ' + extra if extra else ''}")
    return "\n".join(lines)
