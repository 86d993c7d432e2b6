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
from jaxcurv.app import checkpoints as checkpoints_lib
from jaxcurv.app import config as config_lib
from jaxcurv.app import data as data_lib
from jaxcurv.app import loop as loop_lib
from jaxcurv.app import models as models_lib
from jaxcurv.app import run_folder as run_folder_lib
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
    path = checkpoints_lib.save_checkpoint(
        tmp / "step_1.npz",
        p_small,
        opt.init(p_small),
        step=1,
        model_name=small.name,
        optimizer_name="sgd",
    )
    p_large = large.init(jax.random.key(0))
    return checkpoints_lib.load_checkpoint(
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
    # ------------------------------------------------------- spectral_preconditioner
    "spectral-preconditioner-no-vectors": Case(
        "`spectral_preconditioner(eigenpairs, damping=...)`",
        "an `EigenResult` without eigenvectors",
        lambda tmp: jaxcurv.spectral_preconditioner(
            jaxcurv.eigenvalues(jnp.diag(jnp.arange(1.0, 4.0)), 2), damping=1e-3
        ),
        TypeError,
        ("`spectral_preconditioner(eigenpairs)`",),
        "return_eigenvectors=True",
    ),
    "spectral-preconditioner-indefinite": Case(
        "`spectral_preconditioner(eigenpairs, damping=...)`",
        "an eigenvalue below `-damping`",
        lambda tmp: jaxcurv.spectral_preconditioner(
            (jnp.array([-2.0, 3.0]), jnp.eye(2)), damping=1.0
        ),
        ValueError,
        ("`spectral_preconditioner(eigenpairs)`", "min(eigenvalue + damping)", "-1.0"),
        "or raise `damping`",
    ),
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
        "`app.models.mlp(sizes, activation=...)`",
        "unknown activation",
        lambda tmp: models_lib.mlp((2, 3, 1), activation="gelu"),
        ValueError,
        ("`mlp(activation=...)`", "'gelu'"),
        "must be one of",
    ),
    "curves-num": Case(
        "`app.data.curves(num=...)`",
        "non-positive count",
        lambda tmp: data_lib.curves(num=0),
        ValueError,
        ("`curves(num=...)`", "got 0"),
        "must be a positive integer",
    ),
    "config-unknown-key": Case(
        "`app.config.load_config(path)`",
        "a misspelt key",
        lambda tmp: config_lib.load_config(_write(tmp, "c.toml", "[optimizer]\ndampin = 3\n")),
        config_lib.ConfigError,
        ("dampin", "[optimizer]"),
        "damping",
    ),
    "config-unknown-table": Case(
        "`app.config.load_config(path)`",
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
        "`app.checkpoints.load_checkpoint` / `jaxcurv train --resume`",
        "a checkpoint of another model",
        _checkpoint_from_other_model,
        checkpoints_lib.CheckpointError,
        ("mlp 2-4-1", "mlp 2-8-1"),
        "Resume with the config",
    ),
    # --- derivatives and input trees (issue 11) ---
    "gradient-string-leaf": Case(
        "`gradient(f)(params)`",
        "a string leaf in the inputs",
        lambda tmp: jaxcurv.gradient(lambda p: jnp.sum(p["w"] ** 2))(
            {"w": jnp.ones(2), "act": "tanh"}
        ),
        TypeError,
        ("`gradient`", "['act']", "'tanh'"),
        "eqx.partition(model, eqx.is_inexact_array)",
    ),
    "gradient-equinox-model": Case(
        "`gradient(f)(model)`",
        "a whole Equinox model (function leaves)",
        lambda tmp: jaxcurv.gradient(lambda m: jnp.sum(m(jnp.ones(2))))(
            __import__("equinox").nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
        ),
        TypeError,
        ("`gradient`", ".activation", "`relu`"),
        "eqx.partition(model, eqx.is_inexact_array)",
    ),
    "jacobian-empty-tree": Case(
        "`jacobian(f)(x)`",
        "an empty dict as `x`",
        lambda tmp: jaxcurv.jacobian(lambda d: jnp.ones(2))({}),
        ValueError,
        ("`jacobian`", "no array leaves", "PyTreeDef({})"),
        "Pass the arrays to differentiate",
    ),
    "hessian-empty-tree": Case(
        "`hessian(f)(x)`",
        "an empty dict as `x`",
        lambda tmp: jaxcurv.hessian(lambda d: 1.0)({}),
        ValueError,
        ("`hessian`", "no array leaves", "PyTreeDef({})"),
        "Pass the arrays to differentiate",
    ),
    "gradient-aux-not-pair": Case(
        "`gradient(f, has_aux=True)(x)`",
        "`f` returns no `(value, aux)` pair",
        lambda tmp: jaxcurv.gradient(lambda x: jnp.sum(x**2), has_aux=True)(jnp.ones(2)),
        TypeError,
        ("`gradient(has_aux=True)`", "an array of shape ()"),
        "Return `(value, aux)`, or drop `has_aux=True`",
    ),
    "gradient-tuple-output": Case(
        "`gradient(f)(x)`",
        "`f` returns a tuple",
        lambda tmp: jaxcurv.gradient(lambda x: (jnp.sum(x), jnp.sum(x**2)))(jnp.ones(2)),
        TypeError,
        ("`gradient`", "a tuple of length 2"),
        "with `has_aux=True`, a pair `(scalar, aux)`",
    ),
    "gradient-repeated-argnums": Case(
        "`gradient(f, argnums=...)`",
        "the same argument twice",
        lambda tmp: jaxcurv.gradient(lambda x, y: jnp.sum(x * y), argnums=(0, 0)),
        ValueError,
        ("`gradient(argnums=(0, 0))`",),
        "Differentiate each argument once, e.g. `argnums=(0,)`",
    ),
    "gradient-bool-argnums": Case(
        "`gradient(f, argnums=...)`",
        "a bool, e.g. `has_aux` by position",
        lambda tmp: jaxcurv.gradient(_sq, True),
        TypeError,
        ("`gradient(argnums=...)`", "True"),
        "Pass `has_aux=...` by keyword",
    ),
    "gradient-keyword-only-call": Case(
        "`gradient(f)(x=...)`",
        "the differentiated argument by keyword",
        lambda tmp: jaxcurv.gradient(_sq)(x=jnp.ones(2)),
        ValueError,
        ("`gradient(argnums=0)`", "called with none"),
        "pass the inputs to differentiate positionally",
    ),
    # --- spectral, critical points and cg (issue 11) ---
    "eigenvalues-not-symmetric": Case(
        "`eigenvalues(A, k)`",
        "a non-symmetric dense `A`",
        lambda tmp: jaxcurv.eigenvalues(jnp.array([[1.0, 10.0], [0.0, 2.0]]), 1, which="both"),
        ValueError,
        ("`eigenvalues(A)`", "max|A - A^T| / max|A| = 10 / 10 = 1"),
        "pass its symmetric part `(A + A.T) / 2`",
    ),
    "spectral-density-not-symmetric": Case(
        "`spectral_density(A, key)`",
        "a non-symmetric dense `A`",
        lambda tmp: jaxcurv.spectral_density(
            jnp.array([[1.0, 10.0], [0.0, 2.0]]), jax.random.key(0), num_steps=2
        ),
        ValueError,
        ("`spectral_density(A)`", "not symmetric"),
        "`(A + A.T) / 2`",
    ),
    "cg-not-symmetric": Case(
        "`cg(A, b)`",
        "a non-symmetric dense `A`",
        lambda tmp: jaxcurv.cg(jnp.array([[1.0, 10.0], [0.0, 2.0]]), jnp.ones(2)),
        ValueError,
        ("`cg(A)`", "max|A - A^T| / max|A|"),
        "`jax.scipy.sparse.linalg.gmres`",
    ),
    "eigenvalues-example-string-leaf": Case(
        "`eigenvalues(A, k, example=...)`",
        "a string leaf in `example`",
        lambda tmp: jaxcurv.eigenvalues(lambda v: v, 1, example={"w": jnp.ones(3), "act": "tanh"}),
        TypeError,
        ("`eigenvalues(example=...)`", "['act']"),
        "Pass the arrays only",
    ),
    "classify-empty-tree": Case(
        "`classify_critical_point(fun, x)`",
        "an empty dict as `x`",
        lambda tmp: jaxcurv.classify_critical_point(lambda p: 0.0, {}),
        ValueError,
        ("`classify_critical_point`", "`x`", "no array leaves"),
        "Pass the arrays to differentiate",
    ),
    "classify-string-leaf": Case(
        "`classify_critical_point(fun, x)`",
        "a string leaf in `x`",
        lambda tmp: jaxcurv.classify_critical_point(
            lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.ones(2), "act": "tanh"}
        ),
        TypeError,
        ("`classify_critical_point`", "['act']"),
        "Keep configuration out of the differentiated arguments",
    ),
    "classify-grad-atol": Case(
        "`classify_critical_point(fun, x, grad_atol=...)`",
        "a negative absolute gradient tolerance",
        lambda tmp: jaxcurv.classify_critical_point(_sq, jnp.ones(2), grad_atol=-1.0),
        ValueError,
        ("`classify_critical_point(grad_atol=...)`", "-1.0"),
        "Pass 0 to rely on `grad_tol` alone",
    ),
    # --- hessian_free, sharding, determinism (issue 11) ---
    "hf-negative-learning-rate": Case(
        "`hessian_free(learning_rate=...)`",
        "a negative learning rate",
        lambda tmp: jaxcurv.hessian_free(learning_rate=-1.0),
        ValueError,
        ("`hessian_free(learning_rate=...)`", "-1.0", "steps uphill"),
        "Pass a positive finite float",
    ),
    "hf-nan-learning-rate": Case(
        "`hessian_free(learning_rate=...)`",
        "a NaN learning rate",
        lambda tmp: jaxcurv.hessian_free(learning_rate=float("nan")),
        ValueError,
        ("`hessian_free(learning_rate=...)`", "nan"),
        "Pass a positive finite float",
    ),
    "hf-string-learning-rate": Case(
        "`hessian_free(learning_rate=...)`",
        "a string as the learning rate",
        lambda tmp: jaxcurv.hessian_free(learning_rate="0.1"),
        TypeError,
        ("`hessian_free(learning_rate=...)`", "str", "'0.1'"),
        "Pass a positive finite float",
    ),
    "hf-negative-schedule": Case(
        "`hessian_free(learning_rate=schedule)`",
        "a schedule negative at count 0",
        lambda tmp: jaxcurv.hessian_free(learning_rate=optax.constant_schedule(-0.1)),
        ValueError,
        ("`hessian_free(learning_rate=...)`", "count 0", "-0.1"),
        "optax schedule of the update count",
    ),
    "hf-init-string-leaf": Case(
        "`hessian_free().init(params)`",
        "a string leaf in `params`",
        lambda tmp: jaxcurv.hessian_free().init({"w": jnp.ones(2), "act": "tanh"}),
        TypeError,
        ("`hessian_free(...).init`", "['act']", "'tanh'"),
        "eqx.partition(model, eqx.is_inexact_array)",
    ),
    "hf-init-equinox-model": Case(
        "`hessian_free().init(params)`",
        "a whole Equinox model (function leaves)",
        lambda tmp: jaxcurv.hessian_free().init(
            __import__("equinox").nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
        ),
        TypeError,
        ("`hessian_free(...).init`", ".activation"),
        "eqx.partition(model, eqx.is_inexact_array)",
    ),
    "determinism-string-leaf": Case(
        "`check_determinism(value_fn, params)`",
        "a string leaf in `params`",
        lambda tmp: jaxcurv.check_determinism(
            lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.ones(2), "act": "tanh"}
        ),
        TypeError,
        ("`check_determinism`", "['act']", "'tanh'"),
        "eqx.partition(model, eqx.is_inexact_array)",
    ),
    "shard-batch-ragged": Case(
        "`sharding.shard_batch(batch, mesh)`",
        "leaves with different leading sizes",
        lambda tmp: shard_batch({"x": jnp.ones((4, 2)), "y": jnp.ones(6)}, data_parallel_mesh()),
        ValueError,
        ("`shard_batch(batch)`", "['x'] has leading size 4", "['y'] has 6"),
        "Give every leaf one row per example",
    ),
    # --- command line, config, checkpoints (issue 11) ---
    "checkpoint-truncated": Case(
        "`app.checkpoints.load_checkpoint` / `jaxcurv train --resume`",
        "a checkpoint cut short (disk full, killed copy)",
        lambda tmp: checkpoints_lib.load_checkpoint(
            (lambda p: (p.write_bytes(p.read_bytes()[:64]), p)[1])(
                checkpoints_lib.save_checkpoint(tmp / "step_2.npz", {"w": jnp.ones(3)}, (), step=2)
            ),
            {"w": jnp.ones(3)},
            (),
        ),
        checkpoints_lib.DamagedCheckpointError,
        ("RUN/step_2.npz", "BadZipFile"),
        "falls back to the previous one",
    ),
    "checkpoint-not-npz": Case(
        "`app.checkpoints.checkpoint_metadata` / `jaxcurv landscape --checkpoint`",
        "a file that is not a checkpoint",
        lambda tmp: checkpoints_lib.checkpoint_metadata(
            _write(tmp, "step_1.npz", "not a checkpoint")
        ),
        checkpoints_lib.DamagedCheckpointError,
        ("RUN/step_1.npz", "not an .npz"),
        "Use another checkpoint",
    ),
    "run-dir-not-jaxcurvs": Case(
        "`app.run_folder.prepare_run_dir` / `--out`",
        "a folder with files jaxcurv did not write, with `--overwrite`",
        lambda tmp: run_folder_lib.prepare_run_dir(
            _write(tmp, "notes.txt", "mine").parent, overwrite=True
        ),
        FileExistsError,
        ("--out RUN", "--overwrite"),
        "Choose another --out",
    ),
    "resume-nothing": Case(
        "`app.loop.train(resume=True)` / `jaxcurv train --resume`",
        "a run folder that does not exist",
        lambda tmp: loop_lib.train(config_lib.load_config(None), tmp / "none", resume=True),
        checkpoints_lib.CheckpointError,
        ("--resume", "RUN/none"),
        "Train without --resume first",
    ),
    # --- compile policy (issue 11) ---
    "operator-micro-batch-zero": Case(
        "`hessian_operator(..., micro_batch=...)`",
        "a micro-batch of 0 examples",
        lambda tmp: jaxcurv.hessian_operator(
            lambda p, x: jnp.mean((x @ p) ** 2), jnp.ones(2), jnp.ones((4, 2)), micro_batch=0
        ),
        ValueError,
        ("micro_batch", "0"),
        ">= 1",
    ),
    "operator-wrt-selects-nothing": Case(
        "`hessian_operator(..., wrt=...)`",
        "a selection of no leaf",
        lambda tmp: jaxcurv.hessian_operator(_tree_loss, _P, wrt={"a": False, "b": False}),
        ValueError,
        ("wrt",),
        "selects no leaf",
    ),
    "fisher-mc-without-key": Case(
        "`fisher_operator(..., kind='mc')`",
        "Monte-Carlo labels without a key",
        lambda tmp: jaxcurv.fisher_operator(
            lambda p, x: x @ p,
            lambda o, y: jnp.mean((o - y) ** 2),
            jnp.ones((2, 1)),
            kind="mc",
            x=jnp.ones((4, 2)),
            y=jnp.ones((4, 1)),
        ),
        TypeError,
        ("key",),
        "jax.random.key",
    ),
    "random-direction-normalization": Case(
        "`random_direction(key, params, normalization=...)`",
        "a misspelt normalization",
        lambda tmp: jaxcurv.random_direction(jax.random.key(0), _P, normalization="fliter"),
        ValueError,
        ("`random_direction(normalization=...)`", "'fliter'"),
        "'filter', 'layer', None",
    ),
    "softmax-ce-integer-logits": Case(
        "`softmax_cross_entropy(logits, labels)`",
        "integer logits",
        lambda tmp: jaxcurv.softmax_cross_entropy(jnp.ones((3, 4), jnp.int32), jnp.zeros(3, int)),
        TypeError,
        ("`softmax_cross_entropy(logits=...)`", "int32"),
        "unnormalised scores",
    ),
    "loss-slices-no-direction": Case(
        "`loss_slices(fun, x, *args)`",
        "no direction to slice along",
        lambda tmp: jaxcurv.loss_slices(_sq, jnp.ones(2)),
        TypeError,
        ("`loss_slices`", "directions"),
        "directions=(d1, d2)",
    ),
    "hf-injected-static-option": Case(
        "`optax.inject_hyperparams(hessian_free)(cg_maxiter=...)`",
        "a loop bound made a traced hyperparameter",
        lambda tmp: optax.inject_hyperparams(jaxcurv.hessian_free)(cg_maxiter=10).init(
            {"w": jnp.ones(2)}
        ),
        TypeError,
        ("cg_maxiter",),
        "static_args=('cg_maxiter',)",
    ),
    "hf-search-batch": Case(
        "`hessian_free(search_batch=...)`",
        "a misspelt batch for the search",
        lambda tmp: jaxcurv.hessian_free(search_batch="curv"),
        ValueError,
        ("`hessian_free(search_batch=...)`", "'curv'"),
        "('gradient', 'curvature')",
    ),
    "hf-search-batch-stored-grad": Case(
        "`hessian_free(search_batch='curvature', store_grad=True)`",
        "a stored loss from another batch than the search's",
        lambda tmp: jaxcurv.hessian_free(search_batch="curvature", store_grad=True),
        ValueError,
        ("search_batch", "store_grad"),
        "use search_batch='gradient'",
    ),
    "density-smooth-sigma": Case(
        "`SpectralDensity.smooth(sigma=...)`",
        "a non-positive smoothing width",
        lambda tmp: jaxcurv.spectral_density(jnp.eye(3), jax.random.key(0), num_steps=2).smooth(
            sigma=-1.0
        ),
        ValueError,
        ("`SpectralDensity.smooth(sigma=...)`", "-1.0"),
        "must be positive",
    ),
    "least-squares-maxiter": Case(
        "`least_squares(residual_fn, params, maxiter=...)`",
        "no step allowed",
        lambda tmp: jaxcurv.least_squares(lambda p: p - 1.0, jnp.zeros(2), maxiter=0),
        ValueError,
        ("`least_squares(maxiter=...)`", "0"),
        "maxiter=500",
    ),
    "least-squares-linear-solver": Case(
        "`least_squares(residual_fn, params, linear_solver=...)`",
        "an unknown linear solver",
        lambda tmp: jaxcurv.least_squares(lambda p: p - 1.0, jnp.zeros(2), linear_solver="qr"),
        ValueError,
        ("`least_squares(linear_solver=...)`", "'qr'"),
        "('auto', 'cg', 'dense')",
    ),
    "least-squares-bool-residuals": Case(
        "`least_squares(residual_fn, params)`",
        "residuals that are not floating point",
        lambda tmp: jaxcurv.least_squares(lambda p: jnp.sum(p) > 0, jnp.zeros(2)),
        TypeError,
        ("`least_squares(residual_fn)`", "bool"),
        "the residual vector",
    ),
    "eigenvalues-loop": Case(
        "`eigenvalues(A, k, loop=...)`",
        "a loop that is neither device nor host",
        lambda tmp: jaxcurv.eigenvalues(jnp.eye(3), 1, loop="gpu"),
        ValueError,
        ("`eigenvalues(loop=...)`", "'gpu'"),
        "'device', 'host'",
    ),
    "hessian-free-curvature-batch-and-search": Case(
        "`hessian_free(search_batch='curvature').update(curvature_batch=...)`",
        "a curvature batch drawn apart with the search on the curvature sub-batch",
        lambda tmp: _hf_search_on_apart_batch(),
        ValueError,
        ("`hessian_free(search_batch='curvature')`", "curvature_batch"),
        "search_batch='gradient'",
    ),
    "hutchinson-diagonal-loop": Case(
        "`hutchinson_diagonal(A, key, num_samples, loop=...)`",
        "a loop that is neither device nor host",
        lambda tmp: jaxcurv.hutchinson_diagonal(jnp.eye(3), jax.random.key(0), 4, loop="gpu"),
        ValueError,
        ("`hutchinson_diagonal(loop=...)`", "'gpu'"),
        "'device', 'host'",
    ),
    "trace-function-loop": Case(
        "`trace_function(A, key, f, loop=...)`",
        "a loop that is neither device nor host",
        lambda tmp: jaxcurv.trace_function(jnp.eye(3), jax.random.key(0), jnp.log, loop="gpu"),
        ValueError,
        ("`trace_function(loop=...)`", "'gpu'"),
        "'device', 'host'",
    ),
}


def _hf_search_on_apart_batch():
    f = lambda p, x: jnp.sum((p * x) ** 2)
    opt = jaxcurv.hessian_free(curvature="hessian", search_batch="curvature")
    p = jnp.ones(2)
    return opt.update(p, opt.init(p), p, value_fn=f, x=p, curvature_batch={"x": p})


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


def test_readme_table_is_the_docs_table():
    readme = (DOC.parent.parent / "README.md").read_text().splitlines()
    start = readme.index("| API | bad input | exception | message |")
    end = next(i for i in range(start, len(readme)) if not readme[i].startswith("|"))
    assert readme[start:end] == _table_rows(DOC.read_text()), (
        "README's bad-input table differs from docs/bad_input.md: copy the table over"
    )


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)  # as in tests/conftest.py
    _main()
