"""One config value: the key that declares it, and how it is read, checked and written.

A key is a dataclass field made by :func:`setting` (or :func:`count`), whose metadata holds
its plain-text meaning and the values it accepts (``choices``, ``low`` / ``high``,
``low_open``); :func:`convert` turns what a TOML file or ``--set`` gave into the key's
declared type, :func:`check_range` checks it against that metadata, and
:func:`toml_value` writes it back. Every failure is a :class:`ConfigError` that names the
key, the value received and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import warnings
from collections.abc import Iterable
from typing import Any

__all__ = [
    "RENAMED_KEYS",
    "ConfigError",
    "check_range",
    "convert",
    "count",
    "current_key",
    "parse_value",
    "setting",
    "suggest",
    "toml_value",
    "type_name",
]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


#: Keys renamed when the library's budgets took one family of names (``num_steps``,
#: ``num_samples``): configs and saved runs that spell them the old way still load, with
#: a ``FutureWarning`` (shown by default) that gives the new name.
RENAMED_KEYS: dict[tuple[str, str], str] = {
    ("landscape", "num_lanczos"): "num_steps",
    ("landscape", "trace_samples"): "trace_num_samples",
    ("landscape", "density_probes"): "density_num_samples",
}


def current_key(section: str, key: str, source: str) -> str:
    """``key`` of ``[section]``, or the key it was renamed to (with a warning)."""
    new = RENAMED_KEYS.get((section, key))
    if new is None:
        return key
    warnings.warn(
        f"`{section}.{key}` (in {source}) is now called `{section}.{new}`; the old name is "
        f"read for one more release. Rename it.",
        FutureWarning,
        stacklevel=4,
    )
    return new


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """A config key, as a dataclass field: its default, its plain-text meaning (``jaxcurv
    config`` prints it) and the values it accepts (read by :func:`check_range`)."""
    meta = {"choices": choices, "low": low, "high": high, "low_open": low_open, "help": help}
    return dataclasses.field(default=default, metadata=meta)


def count(default: int, help: str, *, low: int = 1) -> Any:
    """An integer setting that counts something: at least ``low``, which is 1 unless 0
    means "none" / "off" or the count needs more."""
    return setting(default, low=low, help=help)


def suggest(name: str, valid: Iterable[str], prefix: str = "") -> str:
    """`` Did you mean `{prefix}{closest}`?`` for the valid name closest to a typo, or
    ``""`` if none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean `{prefix}{close[0]}`?" if close else ""


def type_name(tp: Any) -> str:
    """A key's declared type in words, as messages and ``jaxcurv config`` show it."""
    if tp == tuple[int, ...]:
        return "a list of integers"
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
    }.get(tp, str(tp))


def convert(where: str, tp: Any, value: Any, source: str) -> Any:
    """``value`` as type ``tp``, or a ConfigError naming ``where``."""

    def bad(extra: str = "") -> ConfigError:
        return ConfigError(
            f"`{where}` must be {type_name(tp)}, got {value!r} ({type(value).__name__}) "
            f"in {source}.{extra}"
        )

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad(" Write `true` or `false` (lower case, no quotes).")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad(" Write a whole number such as `100`.")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = float(value)
            if math.isfinite(value):
                return value
        raise bad(" Write a finite number such as `1.0` or `1e-3`.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad(' Quote it, e.g. `"adam"`.')
    if tp == tuple[int, ...]:
        if isinstance(value, list | tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return tuple(value)
        raise bad(" Write a list such as `[784, 400, 6]`.")
    raise TypeError(f"internal: unsupported config type {tp!r} for {where}")  # pragma: no cover


def check_range(where: str, field: dataclasses.Field, value: Any, source: str) -> None:
    """Check a converted ``value`` against the choices and bounds of its :func:`setting`.

    Raises:
      ConfigError: it is out of range; the message names ``where`` and ``source``.
    """
    meta = field.metadata
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"`{where}` must be one of {', '.join(repr(c) for c in choices)}, got {value!r} in "
            f"{source}.{suggest(str(value), [str(c) for c in choices])}"
        )
    low, high = meta.get("low"), meta.get("high")
    if low is not None:
        ok = value > low if meta.get("low_open") else value >= low
        if not ok:
            op = ">" if meta.get("low_open") else ">="
            raise ConfigError(f"`{where}` must be {op} {low}, got {value!r} in {source}.")
    if high is not None and value > high:
        raise ConfigError(f"`{where}` must be <= {high}, got {value!r} in {source}.")
    if isinstance(value, tuple):
        if not value or any(v <= 0 for v in value):
            raise ConfigError(
                f"`{where}` must be a non-empty list of positive integers, got {list(value)} "
                f"in {source}."
            )


def parse_value(raw: str, tp: Any) -> Any:
    """The value of ``--set section.key=raw`` for a key of type ``tp``, before
    :func:`convert`: strings need no quotes, integer lists may be ``784,400,6``, anything
    else is read as a TOML value (and left as the raw string if it is not one)."""
    if tp is str:
        return raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    if tp == tuple[int, ...] and not raw.startswith("["):
        try:
            return [int(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            return raw
    return _parse_toml_value(raw)


def _parse_toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def toml_value(v: Any) -> str:
    """``v`` (a bool, number, string or list of them) spelt as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")  # pragma: no cover
