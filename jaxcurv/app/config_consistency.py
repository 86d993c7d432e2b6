"""The checks across tables of a config: what one table's settings require of another's."""

from __future__ import annotations

from jaxcurv.app.config_values import ConfigError

__all__ = ["check_consistency"]


def check_consistency(cfg, source: str) -> None:
    """Settings of different tables that must agree (a model that fits its data, a batch
    no larger than the training set); ``source`` names where they came from.

    Raises:
      ConfigError: they do not; the message names both keys and the fix.
    """
    m, d = cfg.model, cfg.data
    if d.kind == "curves":
        pixels = d.size * d.size
        if m.sizes[0] != pixels:
            raise ConfigError(
                f"`model.sizes` starts with {m.sizes[0]} inputs but `data.size` = {d.size} "
                f"gives {d.size}x{d.size} = {pixels} pixels ({source}). Make the first entry "
                f"of `model.sizes` {pixels}, or change `data.size`."
            )
    elif m.kind == "mlp" and m.sizes[0] != d.in_dim:
        raise ConfigError(
            f"`model.sizes` starts with {m.sizes[0]} inputs but `data.in_dim` = {d.in_dim} "
            f"({source}). Make them equal."
        )
    if m.kind == "mlp":
        want = {"regression": d.out_dim, "classification": d.num_classes}.get(d.kind)
        if d.kind == "curves":
            want = d.size * d.size
        if m.sizes[-1] != want:
            what = {"regression": "data.out_dim", "classification": "data.num_classes"}.get(
                d.kind, "data.size^2"
            )
            raise ConfigError(
                f"`model.sizes` ends with {m.sizes[-1]} outputs but `{what}` needs {want} "
                f"({source}). Make the last entry of `model.sizes` {want}."
            )
        if d.kind == "classification" and m.loss not in ("auto", "softmax_cross_entropy"):
            raise ConfigError(
                f"`model.loss` = {m.loss!r} does not fit integer class labels "
                f"(`data.kind` = 'classification') in {source}. Use 'softmax_cross_entropy' "
                f"or 'auto'."
            )
    if m.kind == "autoencoder" and d.kind != "curves":
        raise ConfigError(
            f"`model.kind` = 'autoencoder' reconstructs images, but `data.kind` = {d.kind!r} "
            f'({source}). Use `data.kind = "curves"` or `model.kind = "mlp"`.'
        )
    if m.kind == "autoencoder" and len(m.sizes) < 2:
        raise ConfigError(
            f"`model.sizes` for an autoencoder needs the input width and at least the code "
            f"width, got {list(m.sizes)} in {source}."
        )
    if cfg.landscape.interpolation_points == 1:
        raise ConfigError(
            f"`landscape.interpolation_points` = 1 in {source}: a line needs two points or "
            f"more. Use 0 to leave the interpolation out, or e.g. 41."
        )
    if d.batch_size > d.num_train:
        raise ConfigError(
            f"`data.batch_size` = {d.batch_size} exceeds `data.num_train` = {d.num_train} in "
            f"{source}. Lower it, or 0 for the whole training set."
        )
