"""What the command, training and landscape tests share: one tiny config, one trained run.

Every test of those modules that trains uses :data:`TINY` (with at most ``--set``
overrides), so each jitted step, evaluation and landscape computation compiles once per
test session: :func:`jaxcurv.app.training_step.build_model` returns the same model for
equal settings, and everything compiled for it is cached on it. :func:`trained_run` trains
it once per session for the tests that only read a finished run.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import numpy as np

from jaxcurv.app.config import load_config

#: A 16-3-16 autoencoder on 4x4 curves: 115 parameters, a couple of layers to compile,
#: 48 training images in batches of 16, four Hessian-free steps, checkpoints at 2 and 4.
TINY = """
[run]
steps = 4
log_every = 1
eval_every = 2
checkpoint_every = 2
progress = false

[data]
kind = "curves"
size = 4
num_train = 48
num_test = 16
batch_size = 16

[model]
kind = "autoencoder"
sizes = [16, 3]

[optimizer]
name = "hessian_free"
damping = 1.0
cg_maxiter = 10
curvature_fraction = 1.0

[landscape]
num_examples = 32
top_k = 3
bottom_k = 2
num_steps = 12
trace_num_samples = 6
density_num_samples = 2
slice_points = 5

[demo]
baseline = "adam"
baseline_learning_rate = 0.01
baseline_steps = 6
"""

#: The model name TINY trains, and its parameter count (16*3 + 3 + 3*16 + 16).
TINY_MODEL = "autoencoder 16-3-16"
TINY_NUM_PARAMETERS = 115

#: The optax baseline's settings wherever a test trains one: the demo's race, the CLI
#: resume and the baselines test then share one compiled Adam step.
ADAM = ["optimizer.name=adam", "optimizer.learning_rate=0.01"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_tiny(folder: pathlib.Path, text: str = TINY, name: str = "tiny.toml") -> str:
    """Write a config file into ``folder`` and return its path as a string."""
    path = pathlib.Path(folder) / name
    path.write_text(text)
    return str(path)


def tiny_config(folder: pathlib.Path, overrides=()):
    """:data:`TINY` loaded as a :class:`jaxcurv.app.config.Config`, with ``--set`` overrides."""
    return load_config(write_tiny(folder), list(overrides))


def assert_png(path: pathlib.Path) -> None:
    """``path`` is a PNG image that decodes to a picture of a sensible size."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50, (path, img.shape)


def read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def without_time(metrics: list[dict]) -> list[dict]:
    """Metrics records without their wall-clock fields, the one thing a rerun may change."""
    return [{k: v for k, v in r.items() if k not in ("time", "step_time")} for r in metrics]


def assert_trees_identical(a, b) -> None:
    """Same structure, dtypes and bits in every leaf."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


_RUNS: dict[str, object] = {}


def trained_run(tmp_path_factory):
    """``(cfg, result)``: :data:`TINY` trained once per session by :func:`jaxcurv.app.loop.train`.

    Read it, never write into ``result.run_dir``: copy it (:func:`copy_run`) first.
    """
    if "tiny" not in _RUNS:
        from jaxcurv.app.loop import train

        folder = tmp_path_factory.mktemp("tiny-run")
        cfg = tiny_config(folder)
        _RUNS["tiny"] = (cfg, train(cfg, folder / "run"))
    return _RUNS["tiny"]


def copy_run(run_dir: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """A private copy of a finished run folder, for tests that resume or overwrite it."""
    shutil.copytree(run_dir, dest)
    return dest
