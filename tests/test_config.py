"""Typed configs: the shipped files load, and every bad input names the key and the fix."""

import dataclasses
import pathlib
import tomllib

import pytest

from jaxcurv.app import config as config_lib
from jaxcurv.app.config import (
    SECTIONS,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_toml,
    describe_keys,
    load_config,
)
from jaxcurv.app.demo import DEMO_DEFAULTS, demo_config

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def _write(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo", "curves_autoencoder", "landscape"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert isinstance(cfg, Config)


def test_curves_autoencoder_config_is_martens_architecture():
    cfg = load_config(CONFIGS / "curves_autoencoder.toml")
    assert cfg.model.kind == "autoencoder"
    assert cfg.model.sizes == (784, 400, 200, 100, 50, 25, 6)
    assert cfg.model.init == "sparse" and cfg.model.activation == "logistic"
    assert cfg.optimizer.name == "hessian_free" and cfg.optimizer.curvature == "ggn"


def test_demo_toml_spells_out_the_builtin_demo_defaults():
    assert load_config(CONFIGS / "demo.toml") == demo_config()
    assert demo_config().run.steps == DEMO_DEFAULTS["run"]["steps"]
    # Key by key, as written in the file: each value is the built-in one, and [demo] is
    # whole and equal to the config defaults (what `jaxcurv config` shows), not only to
    # what the demo passes over them.
    with open(CONFIGS / "demo.toml", "rb") as f:
        written = tomllib.load(f)
    builtin = config_to_dict(demo_config())
    for table, values in written.items():
        for key, value in values.items():
            assert builtin[table][key] == value, f"{table}.{key}"
    assert written["demo"] == config_to_dict(load_config(None))["demo"]
    assert "demo" not in DEMO_DEFAULTS  # one source of truth: DemoConfig


def test_every_key_has_a_plain_text_description():
    for name, cls in SECTIONS.items():
        assert config_lib._SECTION_HELP[name]
        for field in dataclasses.fields(cls):
            text = field.metadata["help"]
            assert text and "`" not in text and ":mod:" not in text, f"{name}.{field.name}"


def test_a_run_written_with_the_retired_bench_table_still_loads(tmp_path):
    # Before the [bench] table was removed, every run's config.toml and checkpoint
    # metadata carried one; those runs must still resume and load.
    cfg = load_config(None, ["run.steps=7"])
    old = config_to_toml(cfg) + '[bench]\nquick = false\nout = "benchmarks/results"\n'
    assert load_config(_write(tmp_path, old)) == cfg
    tables = {**config_to_dict(cfg), "bench": {"quick": False, "settings": {}}}
    assert config_from_dict(tables, "a checkpoint") == cfg
    assert "bench" not in config_to_dict(cfg) and "[bench]" not in config_to_toml(cfg)
    with pytest.raises(ConfigError, match="Unknown section `bench`"):
        load_config(None, ["bench.quick=true"])


def test_defaults_and_toml_round_trip(tmp_path):
    cfg = load_config(None, ["optimizer.name=adam", "model.sizes=784,100,6", "run.steps=7"])
    again = load_config(_write(tmp_path, config_to_toml(cfg)))
    assert again == cfg
    assert config_from_dict(config_to_dict(cfg), "test") == cfg


def test_overrides_are_parsed_by_type():
    cfg = load_config(
        None,
        [
            "optimizer.damping=10",  # float from an int literal
            "run.steps=3",
            "run.progress=false",
            "optimizer.name=sgd",  # a string without quotes
            'optimizer.cg_stop="residual"',  # or with
            "model.sizes=[784, 50, 6]",
        ],
    )
    assert cfg.optimizer.damping == 10.0 and isinstance(cfg.optimizer.damping, float)
    assert cfg.run.steps == 3 and cfg.run.progress is False
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.cg_stop == "residual"
    assert cfg.model.sizes == (784, 50, 6)


def test_overrides_apply_after_the_file(tmp_path):
    path = _write(tmp_path, "[optimizer]\ndamping = 3.0\n")
    assert load_config(path).optimizer.damping == 3.0
    assert load_config(path, ["optimizer.damping=4"]).optimizer.damping == 4.0


def test_unknown_key_names_it_and_suggests_the_fix(tmp_path):
    path = _write(tmp_path, "[optimizer]\ndampng = 3.0\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "optimizer.dampng" in msg and "Did you mean `optimizer.damping`" in msg
    assert str(path) in msg and "Valid keys" in msg


def test_unknown_table(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown table `\[optimiser\]`.*`optimizer`"):
        load_config(_write(tmp_path, "[optimiser]\ndamping = 1.0\n"))
    with pytest.raises(ConfigError, match="must be a table"):
        load_config(_write(tmp_path, "run = 3\n"))


@pytest.mark.parametrize(
    "text, match",
    [
        ('[optimizer]\ndamping = "lots"\n', r"`optimizer.damping` must be a number, got 'lots'"),
        ("[run]\nsteps = 2.5\n", r"`run.steps` must be an integer, got 2.5"),
        ('[run]\nprogress = "yes"\n', r"`run.progress` must be true or false"),
        ("[model]\nsizes = 784\n", r"`model.sizes` must be a list of integers"),
        ("[run]\nsteps = -1\n", r"`run.steps` must be >= 0, got -1"),
        ("[optimizer]\ncurvature_fraction = 0.0\n", r"curvature_fraction` must be > 0"),
        ("[optimizer]\nmomentum = 1.5\n", r"momentum` must be <= 1"),
        ('[optimizer]\nname = "adamw"\n', r"`optimizer.name` must be one of .*Did you mean `adam`"),
        ("[model]\nsizes = [784, 0, 6]\n", r"positive integers"),
    ],
)
def test_bad_values_name_key_value_and_fix(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    "override, match",
    [
        ("optimizer.damping", "section.key=value"),
        ("steps=3", "dotted key"),
        ("optimiser.damping=1", "Unknown section `optimiser`.*`optimizer`"),
        ("run.stepz=1", "Did you mean `run.steps`"),
        ("optimizer.damping=abc", r"`optimizer.damping` must be a number, got 'abc'.*--set"),
        ("model.sizes=a,b", "list of integers"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.size=16"], r"model.sizes` starts with 784 inputs but `data.size` = 16"),
        (["data.kind=regression"], "autoencoder"),
        (
            ["model.kind=mlp", "data.kind=regression", "model.sizes=3,8,1"],
            r"`data.in_dim` = 2",
        ),
        (
            ["model.kind=mlp", "data.kind=classification", "model.sizes=2,8,5"],
            "data.num_classes",
        ),
        (["data.batch_size=5000"], "exceeds `data.num_train`"),
    ],
)
def test_inconsistent_tables(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[run\nsteps = 1\n"))


def test_config_error_is_a_value_error_and_configs_are_frozen():
    assert issubclass(ConfigError, ValueError)
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.steps = 3


def test_describe_keys_lists_every_key_with_its_default():
    text = describe_keys("optimizer")
    assert "[optimizer]" in text and "damping = 1.0" in text and "hessian_free" in text
    assert "[run]" not in text
    everything = describe_keys()
    assert all(f"[{name}]" in everything for name in SECTIONS)


def test_renamed_landscape_keys_still_load_with_a_warning(tmp_path):
    # Configs and saved runs written before the budget keywords took one family of names.
    old = "[landscape]\nnum_lanczos = 12\ntrace_samples = 6\ndensity_probes = 2\n"
    with pytest.warns(FutureWarning, match="`landscape.num_lanczos`.*`landscape.num_steps`"):
        cfg = load_config(_write(tmp_path, old))
    land = cfg.landscape
    assert (land.num_steps, land.trace_num_samples, land.density_num_samples) == (12, 6, 2)
    with pytest.warns(FutureWarning):
        assert load_config(None, ["landscape.trace_samples=9"]).landscape.trace_num_samples == 9
    both = "[landscape]\nnum_lanczos = 12\nnum_steps = 12\n"
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="given twice"):
        load_config(_write(tmp_path, both))


def test_landscape_and_sharpness_keys_are_the_library_defaults_and_checked():
    import inspect

    import jaxcurv
    from jaxcurv.landscape import DEFAULTS

    library = inspect.signature(jaxcurv.analyze_landscape).parameters
    land = load_config(None).landscape
    for key in ("dense_threshold", "maxiter", "num_steps", "trace_num_samples", "top_k"):
        default = library[key].default
        assert getattr(land, key) == (DEFAULTS[key] if default is None else default), key
    assert land.density_num_samples == DEFAULTS["density_num_samples"]
    assert load_config(None).run.sharpness_every == 0  # off by default
    with pytest.raises(ConfigError, match="interpolation_points"):
        load_config(None, ["landscape.interpolation_points=1"])
    with pytest.raises(ConfigError, match="must be one of 'hessian', 'ggn'"):
        load_config(None, ["run.sharpness_curvature=fisher"])
