"""One training step and what it is built from: the data, the model, the optimizer.

:func:`build_data`, :func:`build_model` and :func:`build_optimizer` turn a config into the
embedded dataset (:mod:`jaxcurv.app.data`), the reference model
(:mod:`jaxcurv.app.models`) and the optax transformation
(:func:`jaxcurv.hessian_free` or an optax baseline: ``adam``, ``sgd``, ``lbfgs``);
:func:`compiled_parts` jits the step and the evaluation, once per distinct
configuration per process; :func:`compiled_sharpness`, the curvature measurement that
``run.sharpness_every`` records during training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcurv
from jaxcurv.app import data as data_lib
from jaxcurv.app import models as models_lib
from jaxcurv.app.config import Config, DataConfig, ModelConfig, OptimizerConfig

PyTree = Any

__all__ = [
    "build_data",
    "build_model",
    "build_optimizer",
    "compiled_parts",
    "compiled_sharpness",
    "objective",
    "strongly_typed",
]


def build_data(cfg: Config) -> tuple[data_lib.Dataset, data_lib.Dataset]:
    """The training and test sets the config describes (one draw, split in two).

    Returns:
      ``(train, test)`` :class:`jaxcurv.data.Dataset` pairs of host arrays; for curves the
      targets are the images themselves (an autoencoder reconstructs its input).
    """
    d = cfg.data
    n = d.num_train + d.num_test
    dtype = np.dtype(cfg.model.dtype)
    if d.kind == "curves":
        x = data_lib.curves(
            n, seed=d.seed, size=d.size, num_control_points=d.num_control_points, dtype=dtype
        )
        full = data_lib.Dataset(x, x)
    elif d.kind == "regression":
        full = data_lib.regression(
            n, seed=d.seed, in_dim=d.in_dim, out_dim=d.out_dim, noise=d.noise, dtype=dtype
        )
    else:
        full = data_lib.classification(
            n, seed=d.seed, in_dim=d.in_dim, num_classes=d.num_classes, dtype=dtype
        )
    split = d.num_train
    train = data_lib.Dataset(full.inputs[:split], full.targets[:split])
    test = data_lib.Dataset(full.inputs[split:], full.targets[split:])
    return train, test


def build_model(cfg: Config) -> models_lib.Model:
    """The :class:`jaxcurv.models.Model` of ``cfg.model`` (checked against ``cfg.data``).

    Equal settings return the same ``Model`` object: everything compiled for a model (its
    training step, its evaluation, the landscape analysis) is then compiled once per
    process, however many runs use it.
    """
    loss = cfg.model.loss
    if loss == "auto":
        loss = "softmax_cross_entropy" if cfg.data.kind == "classification" else "mse"
    return _build_model(cfg.model, loss)


@functools.lru_cache(maxsize=16)
def _build_model(m: ModelConfig, loss: str) -> models_lib.Model:
    dtype = jnp.dtype(m.dtype)
    if m.kind == "autoencoder":
        return models_lib.deep_autoencoder(
            m.sizes, activation=m.activation, init=m.init, dtype=dtype
        )
    return models_lib.mlp(m.sizes, activation=m.activation, loss=loss, init=m.init, dtype=dtype)


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
    """The optax transformation named by ``cfg.optimizer.name``, with its options."""
    o = cfg.optimizer
    if o.name == "hessian_free":
        return jaxcurv.hessian_free(
            o.learning_rate,
            curvature=o.curvature,
            damping=o.damping,
            adapt_damping=o.adapt_damping,
            cg_maxiter=o.cg_maxiter,
            cg_tol=o.cg_tol,
            cg_stop=o.cg_stop,
            cg_backtracking=o.cg_backtracking,
            line_search=o.line_search,
            preconditioner=None if o.preconditioner == "none" else o.preconditioner,
            curvature_fraction=None if o.curvature_fraction >= 1.0 else o.curvature_fraction,
        )
    if o.name == "adam":
        return optax.adam(o.learning_rate, b1=o.b1, b2=o.b2)
    if o.name == "sgd":
        return optax.sgd(o.learning_rate, momentum=o.momentum or None)
    return optax.lbfgs(o.learning_rate)


def objective(model: models_lib.Model) -> jaxcurv.ModelAndLoss:
    """``value_fn(params, inputs=..., targets=...)`` with the model and loss kept apart."""

    def model_fn(params, inputs):
        return model.apply(params, inputs)

    def loss_fn(outputs, targets):
        return model.loss(outputs, targets)

    return jaxcurv.ModelAndLoss(model_fn, loss_fn)


def strongly_typed(tree: PyTree) -> PyTree:
    """``tree`` with every weakly typed leaf made strong (PRNG keys are left as they are)."""

    # Weakly typed scalars (a Python float that became an array) trace differently from
    # strongly typed ones of the same dtype; making every leaf strong gives the step the
    # same signature whether its inputs come from init, a previous step or a checkpoint.
    def strong(x):
        if jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
            return x
        return jnp.asarray(x, dtype=jnp.result_type(x))

    return jax.tree.map(strong, tree)


@functools.lru_cache(maxsize=8)
def compiled_parts(model_cfg: ModelConfig, optimizer_cfg: OptimizerConfig, data_kind: str):
    """``(model, optimizer, step, evaluate)`` of a run: ``step(params, state, inputs,
    targets) -> (params, state, loss, info)`` and ``evaluate(params, x, y) -> loss``, both
    jitted."""
    # One optimizer and jitted step per distinct configuration: a second run with the same
    # settings (a resume, the demo's rerun, a test) reuses the compiled step instead of
    # compiling it again. The parts are pure functions, so sharing is safe.
    cfg = Config(model=model_cfg, optimizer=optimizer_cfg, data=DataConfig(kind=data_kind))
    model = build_model(cfg)
    opt = build_optimizer(cfg)
    return model, opt, _make_step(cfg, model, opt), _evaluate(model)


def _make_step(cfg: Config, model: models_lib.Model, opt) -> Callable:
    value_fn = objective(model)
    name = cfg.optimizer.name

    def step(params, state, inputs, targets):
        loss, grads = jax.value_and_grad(value_fn)(params, inputs=inputs, targets=targets)
        if name == "hessian_free":
            updates, state = opt.update(
                grads,
                state,
                params,
                value_fn=value_fn,
                value=loss,
                inputs=inputs,
                targets=targets,
            )
            info = {
                "damping": state.damping,
                "rho": state.rho,
                "cg_steps": state.cg_steps,
                "alpha": state.alpha,
                "rejected": state.rejected,
            }
        elif name == "lbfgs":
            # optax's line search hands a value_fn only the keywords its signature names.
            def plain(params, inputs, targets):
                return value_fn(params, inputs=inputs, targets=targets)

            updates, state = opt.update(
                grads,
                state,
                params,
                value=loss,
                grad=grads,
                value_fn=plain,
                inputs=inputs,
                targets=targets,
            )
            info = {}
        else:
            updates, state = opt.update(grads, state, params)
            info = {}
        params = optax.apply_updates(params, updates)
        return strongly_typed(params), strongly_typed(state), loss, info

    return jax.jit(step)


@functools.lru_cache(maxsize=16)
def _evaluate(model: models_lib.Model) -> Callable:
    # Per model, not per optimizer: runs of one model with different optimizers (the
    # demo's race, the baselines) share one compiled evaluation.
    return jax.jit(lambda params, x, y: model.loss(model.apply(params, x), y))


@functools.lru_cache(maxsize=8)
def compiled_sharpness(
    model_cfg: ModelConfig, data_kind: str, curvature: str, maxiter: int, num_samples: int
) -> Callable:
    """``measure(params, inputs, targets, key) -> dict`` of arrays, jitted: the top
    eigenvalue of the Hessian (or Gauss-Newton matrix) of the training loss on the batch,
    its residual and converged flag, and a Hutchinson estimate of the trace.

    The operator is the one the step's curvature comes from (the same ``ModelAndLoss``
    objective, linearized once at ``params``), and the function is built and compiled once
    per configuration: recording every ``N`` steps compiles nothing after the first.
    Thick-restart Lanczos (:func:`jaxcurv.eigenvalues`) stops when the top pair converges
    or after ``maxiter`` products.
    """
    cfg = Config(model=model_cfg, data=DataConfig(kind=data_kind))
    value_fn = objective(build_model(cfg))

    def loss(params, inputs, targets):
        return value_fn(params, inputs=inputs, targets=targets)

    def measure(params, inputs, targets, key):
        if curvature == "ggn":
            op = jaxcurv.ggn_operator(
                value_fn.model_fn, value_fn.loss_fn, params, inputs=inputs, targets=targets
            )
        else:
            op = jaxcurv.hessian_operator(loss, params, inputs, targets)
        k_eig, k_trace = jax.random.split(key)
        top = jaxcurv.eigenvalues(
            op, 1, key=k_eig, method="thick-restart", maxiter=maxiter, dense_threshold=0
        )
        trace = jaxcurv.hutchinson_trace(op, k_trace, num_samples)
        return {
            "sharpness": top.eigenvalues[-1],
            "sharpness_residual": top.residual_norms[-1],
            "sharpness_converged": top.converged,
            "curvature_trace": trace.estimate,
            "curvature_trace_stderr": trace.stderr,
            "curvature_matvecs": top.num_matvecs + trace.num_matvecs,
        }

    return jax.jit(measure)
