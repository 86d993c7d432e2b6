"""Bad input across the public API: the exception type, and a message that helps.

Every case asserts the exception's type, that the message names the argument it is about,
and that it says how to fix it (a phrase chosen per case, below). The same table renders
``docs/bad_input.md`` (the README's bad-input table), and a test checks that the file
shows each message exactly as raised. After changing a message, regenerate it with

    .venv/bin/python -m tests.test_bad_input > docs/bad_input.md
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxcurv
from jaxcurv import config as config_lib
from jaxcurv import data as data_lib
from jaxcurv import models as models_lib
from jaxcurv import train as train_lib
from jaxcurv.sharding import data_parallel_mesh, shard_batch

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "bad_input.md"
TMP = "RUN"  # stands for the temporary folder in the rendered messages


class Case(NamedTuple):
    api: str  # the public entry point, as the table shows it
    bad: str  # what is wrong, in words
    call: Callable[[pathlib.Path], object]  # makes the bad call; gets a scratch folder
    error: type[Exception]
    names: tuple[str, ...]  # the argument(s) the message must name
    fix: str  # the phrase of the message that says what to do


def _sq(x):
    return jnp.sum(x**2)


def _tree_loss(p):
    return jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)


_P = {"a": jnp.ones(2), "b": jnp.ones(3)}


def _hf_update(opt, value_fn, grads=None, **extra):
    params = {"w": jnp.ones(2)}
    grads = {"w": jnp.ones(2)} if grads is None else grads
    return opt.update(grads, opt.init(params), params, value_fn=value_fn, **extra)


def _model_and_loss():
    return jaxcurv.ModelAndLoss(lambda p, x: x @ p["w"], lambda o, y: jnp.mean((o - y) ** 2))


def _write(tmp: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = tmp / name
    path.write_text(text)
    return path


def _checkpoint_from_other_model(tmp: pathlib.Path):
    small, large = models_lib.mlp((2, 4, 1)), models_lib.mlp((2, 8, 1))
    opt = optax.sgd(0.1)
    p_small = small.init(jax.random.key(0))
    path = train_lib.save_checkpoint(
        tmp / "step_1.npz",
        p_small,
        opt.init(p_small),
        step=1,
        model_name=small.name,
        optimizer_name="sgd",
    )
    p_large = large.init(jax.random.key(0))
    return train_lib.load_checkpoint(
        path, p_large, opt.init(p_large), model_name=large.name, optimizer_name="sgd"
    )


def _under_jit(x):
    return jax.jit(lambda w: jaxcurv.check_determinism(_sq, w).deterministic)(x)


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ derivatives
    "gradient-nonscalar": Case(
        "`gradient(f)(x)`",
        "`f` returns a vector",
        lambda tmp: jaxcurv.gradient(lambda x: 2 * x)(jnp.ones(3)),
        ValueError,
        ("`gradient`", "shape (3,)"),
        "Reduce it (e.g. `jnp.sum` or `jnp.mean`)",
    ),
    "hessian-integer": Case(
        "`hessian(f)(x)`",
        "integer `x`",
        lambda tmp: jaxcurv.hessian(_sq)(jnp.arange(3)),
        TypeError,
        ("`hessian`", "int"),
        "Convert it first",
    ),
    "jacobian-mode": Case(
        "`jacobian(f, mode=...)`",
        "unknown mode",
        lambda tmp: jaxcurv.jacobian(_sq, mode="forward"),
        ValueError,
        ("`jacobian(mode=...)`", "'forward'"),
        "Use 'auto'",
    ),
    "gradient-argnums": Case(
        "`gradient(f, argnums=...)`",
        "`argnums` past the arguments",
        lambda tmp: jaxcurv.gradient(_sq, argnums=2)(jnp.ones(2)),
        ValueError,
        ("`gradient(argnums=2)`",),
        "Pass argnums between 0 and 0",
    ),
    "hessian-too-big": Case(
        "`hessian(f)(x)`",
        "dense result over `max_bytes`",
        lambda tmp: jaxcurv.hessian(_sq, max_bytes=10_000)(jnp.ones(100, jnp.float32)),
        ValueError,
        ("`max_bytes=10,000`", "100 x 100"),
        "Use `jaxcurv.hvp(fun, x, v)`",
    ),
    "derivative-vector": Case(
        "`derivative(f)(x)`",
        "vector `x`",
        lambda tmp: jaxcurv.derivative(jnp.sin)(jnp.ones(2)),
        ValueError,
        ("`derivative`", "shape (2,)"),
        "Use `jaxcurv.gradient`",
    ),
    # --------------------------------------------------------------------- products
    "hvp-tree": Case(
        "`hvp(f, x, v)`",
        "`v` with another tree than `x`",
        lambda tmp: jaxcurv.hvp(_tree_loss, _P, {"a": jnp.ones(2)}),
        ValueError,
        ("`v`", "`x`"),
        "jax.tree.map(jnp.zeros_like, x)",
    ),
    "hvp-shape": Case(
        "`hvp(f, x, v)`",
        "a leaf of `v` with the wrong shape",
        lambda tmp: jaxcurv.hvp(_tree_loss, _P, {"a": jnp.ones(2), "b": jnp.ones(4)}),
        ValueError,
        ("`v` leaf ['b']", "(4,)", "(3,)"),
        "every leaf of `v` must match",
    ),
    "hvp-dtype": Case(
        "`hvp(f, x, v)`",
        "`v` of another dtype",
        lambda tmp: jaxcurv.hvp(_sq, jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float64)),
        TypeError,
        ("`v` leaf", "float64", "float32"),
        "Cast the tangent",
    ),
    "ggn-nonscalar-loss": Case(
        "`ggn_vp(model_fn, loss_fn, params, v)`",
        "`loss_fn` not scalar",
        lambda tmp: jaxcurv.ggn_vp(lambda w: 2 * w, lambda o: o**2, jnp.ones(2), jnp.ones(2)),
        ValueError,
        ("`ggn_vp(loss_fn)`", "shape (2,)"),
        "Reduce the output",
    ),
    "operator-not-callable": Case(
        "`hessian_operator(fun, x)`",
        "`fun` not callable",
        lambda tmp: jaxcurv.hessian_operator(3, jnp.ones(2)),
        TypeError,
        ("`hessian_operator(fun)`", "int"),
        "must be callable",
    ),
    # --------------------------------------------------------------------------- cg
    "cg-maxiter-negative": Case(
        "`cg(A, b, maxiter=...)`",
        "negative `maxiter`",
        lambda tmp: jaxcurv.cg(jnp.eye(2), jnp.ones(2), maxiter=-1),
        ValueError,
        ("`cg(maxiter=...)`", "-1"),
        "must be positive",
    ),
    "cg-maxiter-float": Case(
        "`cg(A, b, maxiter=...)`",
        "non-integer `maxiter`",
        lambda tmp: jaxcurv.cg(jnp.eye(2), jnp.ones(2), maxiter=2.5),
        TypeError,
        ("`cg(maxiter=...)`", "2.5"),
        "must be a positive Python int",
    ),
    "cg-integer-b": Case(
        "`cg(A, b)`",
        "integer `b`",
        lambda tmp: jaxcurv.cg(lambda v: v, jnp.arange(3)),
        TypeError,
        ("`cg(b)`", "int"),
        "Cast it",
    ),
    "cg-tol": Case(
        "`cg(A, b, tol=...)`",
        "negative tolerance",
        lambda tmp: jaxcurv.cg(jnp.eye(2), jnp.ones(2), tol=-1e-3),
        ValueError,
        ("`cg(tol=...)`", "-0.001"),
        "Use tol=0 to disable",
    ),
    "cg-x0-tree": Case(
        "`cg(A, b, x0)`",
        "`x0` with another tree than `b`",
        lambda tmp: jaxcurv.cg(lambda v: v, _P, {"a": jnp.ones(2)}),
        ValueError,
        ("`x0`", "`b`"),
        "jax.tree.map(jnp.zeros_like, b)",
    ),
    "cg-matrix-shape": Case(
        "`cg(A, b)`",
        "non-square dense `A`",
        lambda tmp: jaxcurv.cg(jnp.ones((2, 3)), jnp.ones(2)),
        ValueError,
        ("`A`", "(2, 3)"),
        "Pass a callable with `example=`",
    ),
    # --------------------------------------------------------------------- spectral
    "eigenvalues-which": Case(
        "`eigenvalues(A, k, which=...)`",
        "unknown `which`",
        lambda tmp: jaxcurv.eigenvalues(jnp.eye(3), 1, which="middle"),
        ValueError,
        ("`eigenvalues(which=...)`", "'middle'"),
        "must be one of",
    ),
    "eigenvalues-k": Case(
        "`eigenvalues(A, k)`",
        "`k` larger than the operator",
        lambda tmp: jaxcurv.eigenvalues(jnp.eye(3), 5),
        ValueError,
        ("`eigenvalues(k=...)`", "5"),
        "The operator has size N=3",
    ),
    "eigenvalues-no-example": Case(
        "`eigenvalues(A, k)`",
        "bare callable `A` without `example`",
        lambda tmp: jaxcurv.eigenvalues(lambda v: v, 1),
        ValueError,
        ("`A`", "`example=`"),
        "pass `example=`",
    ),
    "eigenvalues-key": Case(
        "`eigenvalues(A, k, key=...)`",
        "an int seed as `key`",
        lambda tmp: jaxcurv.eigenvalues(jnp.eye(3), 1, key=0),
        TypeError,
        ("`eigenvalues(key=...)`", "int"),
        "such as `jax.random.key(0)`",
    ),
    "hutchinson-num-samples": Case(
        "`hutchinson_trace(A, key, num_samples)`",
        "negative `num_samples`",
        lambda tmp: jaxcurv.hutchinson_trace(jnp.eye(3), jax.random.key(0), -5),
        ValueError,
        ("`hutchinson_trace(num_samples=...)`", "-5"),
        "Pass",
    ),
    # ---------------------------------------------------------------- hessian_free
    "hf-no-value-fn": Case(
        "`hessian_free().update`",
        "no `value_fn`",
        lambda tmp: _hf_update(jaxcurv.hessian_free(curvature="hessian"), None),
        TypeError,
        ("`hessian_free(...).update`", "objective"),
        "call `opt.update(grads,",
    ),
    "hf-ggn-plain-fn": Case(
        "`hessian_free(curvature='ggn').update`",
        "a plain loss as `value_fn`",
        lambda tmp: _hf_update(jaxcurv.hessian_free(), lambda p: jnp.sum(p["w"] ** 2)),
        TypeError,
        ("`hessian_free(curvature='ggn')`", "`value_fn`"),
        "Pass `value_fn=ModelAndLoss(model_fn, loss_fn)`",
    ),
    "hf-unknown-extra-arg": Case(
        "`hessian_free().update`",
        "a keyword `value_fn` does not take",
        lambda tmp: _hf_update(
            jaxcurv.hessian_free(curvature="hessian"),
            lambda p: jnp.sum(p["w"] ** 2),
            batch=jnp.ones(2),
        ),
        TypeError,
        ("['batch']", "`value_fn`"),
        "Add them to `value_fn`'s signature",
    ),
    "hf-model-and-loss-extra-arg": Case(
        "`ModelAndLoss(model_fn, loss_fn)`",
        "a keyword neither function takes",
        lambda tmp: _model_and_loss()({"w": jnp.ones(2)}, x=jnp.eye(2), y=jnp.ones(2), z=1),
        TypeError,
        ("['z']", "`model_fn`", "`loss_fn`"),
        "Add them to one of the two",
    ),
    "hf-negative-damping": Case(
        "`hessian_free(damping=...)`",
        "negative damping",
        lambda tmp: jaxcurv.hessian_free(damping=-1.0),
        ValueError,
        ("`hessian_free(damping=...)`", "-1.0"),
        "must be non-negative",
    ),
    "hf-grads-tree": Case(
        "`hessian_free().update`",
        "gradients shaped unlike `params`",
        lambda tmp: _hf_update(
            jaxcurv.hessian_free(curvature="hessian"),
            lambda p: jnp.sum(p["w"] ** 2),
            grads={"v": jnp.ones(2)},
        ),
        ValueError,
        ("`updates`", "`params`"),
        "jax.tree.map(jnp.zeros_like, params)",
    ),
    "hf-nonscalar-loss": Case(
        "`hessian_free().update`",
        "`value_fn` returns a vector",
        lambda tmp: _hf_update(jaxcurv.hessian_free(curvature="hessian"), lambda p: p["w"]),
        ValueError,
        ("`value_fn`", "shape (2,)"),
        "Reduce it",
    ),
    # ------------------------------------------------------- determinism, sharding
    "determinism-repeats": Case(
        "`check_determinism(value_fn, params)`",
        "`num_repeats=1`",
        lambda tmp: jaxcurv.check_determinism(_sq, jnp.ones(2), num_repeats=1),
        ValueError,
        ("`check_determinism(num_repeats=...)`", "got 1"),
        "must be at least 2",
    ),
    "determinism-under-jit": Case(
        "`check_determinism(value_fn, params)`",
        "called inside `jax.jit`",
        lambda tmp: _under_jit(jnp.ones(2)),
        TypeError,
        ("`check_determinism`", "`params` is traced"),
        "Call it outside",
    ),
    "shard-batch-indivisible": Case(
        "`sharding.shard_batch(batch, mesh)`",
        "batch size the devices do not divide",
        lambda tmp: shard_batch(
            {"x": jnp.ones(3)}, data_parallel_mesh(devices=[jax.devices()[0]] * 2)
        ),
        ValueError,
        ("`shard_batch(batch)`", "['x']", "size 3"),
        "Drop the last 1 example",
    ),
    # ------------------------------------------------- models, data, configs, runs
    "mlp-activation": Case(
        "`models.mlp(sizes, activation=...)`",
        "unknown activation",
        lambda tmp: models_lib.mlp((2, 3, 1), activation="gelu"),
        ValueError,
        ("`mlp(activation=...)`", "'gelu'"),
        "must be one of",
    ),
    "curves-num": Case(
        "`data.curves(num=...)`",
        "non-positive count",
        lambda tmp: data_lib.curves(num=0),
        ValueError,
        ("`curves(num=...)`", "got 0"),
        "must be a positive integer",
    ),
    "config-unknown-key": Case(
        "`config.load_config(path)`",
        "a misspelt key",
        lambda tmp: config_lib.load_config(_write(tmp, "c.toml", "[optimizer]\ndampin = 3\n")),
        config_lib.ConfigError,
        ("dampin", "[optimizer]"),
        "damping",
    ),
    "config-unknown-table": Case(
        "`config.load_config(path)`",
        "an unknown table",
        lambda tmp: config_lib.load_config(_write(tmp, "c.toml", "[optimiser]\ndamping = 3\n")),
        config_lib.ConfigError,
        ("optimiser",),
        "optimizer",
    ),
    "config-bad-override": Case(
        "`jaxcurv train --set`",
        "a value of the wrong type",
        lambda tmp: config_lib.load_config(None, ["optimizer.damping=lots"]),
        config_lib.ConfigError,
        ("optimizer.damping", "lots"),
        "Write a finite number",
    ),
    "checkpoint-other-model": Case(
        "`train.load_checkpoint` / `jaxcurv train --resume`",
        "a checkpoint of another model",
        _checkpoint_from_other_model,
        train_lib.CheckpointError,
        ("mlp 2-4-1", "mlp 2-8-1"),
        "Resume with the config",
    ),
    # --- derivatives and input trees (issue 11) ---
    # --- spectral, critical points and cg (issue 11) ---
    # --- hessian_free, sharding, determinism (issue 11) ---
    # --- command line, config, checkpoints (issue 11) ---
    # --- compile policy (issue 11) ---
}


def _message(case: Case, tmp: pathlib.Path) -> str:
    with pytest.raises(case.error) as info:
        case.call(tmp)
    return str(info.value).replace(str(tmp), TMP)


# Messages that still lack a fix, reported to the module's owner. Strict: once fixed, the
# case passes and this entry must go.
KNOWN_POOR = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN_POOR[n]))
        if n in KNOWN_POOR
        else n
        for n in sorted(CASES)
    ],
)
def test_bad_input_raises_a_helpful_error(name, tmp_path):
    case = CASES[name]
    message = _message(case, tmp_path)
    for arg in case.names:
        assert arg in message, f"{name}: message does not name {arg!r}: {message}"
    assert case.fix in message, f"{name}: message lacks the fix {case.fix!r}: {message}"


def test_there_are_at_least_fifteen_kinds_across_the_api():
    assert len(CASES) >= 15
    assert len({c.api.split("(")[0].split(".")[0] for c in CASES.values()}) >= 10


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(tmp: pathlib.Path) -> str:
    """The Markdown table of every case, with the message each one raises."""
    lines = [
        "| API | bad input | exception | message |",
        "| --- | --- | --- | --- |",
    ]
    for case in CASES.values():
        message = _message(case, tmp)
        lines.append(
            f"| {_cell(case.api)} | {_cell(case.bad)} | `{case.error.__name__}` | "
            f"{_cell(message)} |"
        )
    return "\n".join(lines)


_HEADER = """\
# Bad input and the errors it gives

Mistakes in a call are caught when the call is made (or traced), before any computation,
with a `TypeError` or `ValueError` (`ConfigError` and `CheckpointError` are `ValueError`s)
whose message names the argument, shows what was received and says how to fix it.
Numerical trouble at run time (negative curvature, NaN losses, CG breakdown) is not an
exception: it is reported in the returned `info` or optimizer state.

Each row is checked by `tests/test_bad_input.py`; `RUN` stands for the run folder.

"""


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_docs_table_shows_the_messages_exactly(tmp_path):
    assert DOC.exists(), "regenerate: python -m tests.test_bad_input > docs/bad_input.md"
    expected = _table_rows(render_table(tmp_path))
    actual = _table_rows(DOC.read_text())
    missing = [row for row in expected if row not in actual]
    assert not missing, (
        "docs/bad_input.md is out of date (python -m tests.test_bad_input > "
        f"docs/bad_input.md); first stale row: {missing[0]}"
    )
    assert len(actual) == len(expected)


def _main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = render_table(pathlib.Path(tmp))
    print(_HEADER + table)


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # as in tests/conftest.py
    _main()
