"""Hessian-free optimization (Martens 2010) as an optax gradient transformation.

Each update solves the damped Newton system ``(B + lambda I) p = -g`` with truncated
conjugate gradient on curvature-vector products -- Gauss-Newton (``B = J^T H_loss J``,
positive semi-definite) or the Hessian -- without ever forming ``B``. Around that solve it
runs the whole of Martens' recipe: Levenberg-Marquardt damping driven by the reduction ratio,
warm-started CG with a relative-progress stop, CG-iterate backtracking, an Armijo line search,
a diagonal preconditioner and curvature on a sub-batch. Every part can be switched off.

References:
  J. Martens. "Deep learning via Hessian-free optimization." ICML 2010.
  J. Martens and I. Sutskever. "Training deep and recurrent networks with Hessian-free
  optimization." Neural Networks: Tricks of the Trade, 2nd ed., Springer 2012.
  N. N. Schraudolph. "Fast curvature matrix-vector products for second-order gradient
  descent." Neural Computation 14(7), 2002. (Gauss-Newton products.)
  J. Nocedal and S. J. Wright. "Numerical Optimization", 2nd ed., Springer 2006.
  (Ch. 3 line search, Ch. 4 trust regions and the reduction ratio, Ch. 7 truncated Newton.)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxcurv._compile import compiled_call
from jaxcurv.cg import CGStatus, cg
from jaxcurv.derivatives import _check_real_inputs
from jaxcurv.products import ggn_operator, hessian_operator
from jaxcurv.tree import (
    tree_all_finite,
    tree_check_like,
    tree_scale,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)

PyTree = Any

__all__ = [
    "HessianFreeState",
    "ModelAndLoss",
    "hessian_free",
]

_CURVATURES = ("ggn", "hessian")
_CG_STOPS = ("martens", "residual", "forcing")
_PRECONDITIONERS = (None, "martens")


# --------------------------------------------------------------------------------------------
# Handing over the objective.


def _keyword_names(fn: Callable) -> frozenset[str] | None:
    """Keywords ``fn`` accepts after its first positional argument; ``None`` means any."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = []
    skipped_first = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        positional = p.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        if positional and not skipped_first:
            skipped_first = True
            continue
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            names.append(p.name)
    return frozenset(names)


@dataclasses.dataclass(frozen=True)
class ModelAndLoss:
    """A model and its loss kept apart, usable as one ``value_fn``.

    Gauss-Newton curvature ``J^T H_loss J`` needs the network ``model_fn`` and the loss on its
    outputs ``loss_fn`` separately (Schraudolph 2002); everything else only needs their
    composition. ``ModelAndLoss`` carries both and is itself the composed objective, so the
    same object is passed as ``value_fn`` to :func:`hessian_free` (and to ``jax.grad``).

    Keyword arguments are routed by name: each of ``model_fn`` and ``loss_fn`` receives the
    keywords its signature names (all of them if it takes ``**kwargs``). A keyword that
    neither accepts is a ``TypeError``. So ``model_fn(params, x)`` and ``loss_fn(outputs, y)``
    split a batch naturally, and a keyword both name (say ``batch``) reaches both.

    ``ModelAndLoss(model_fn, loss_fn)(params, **kw) == loss_fn(model_fn(params, **kw_m), **kw_l)``
    with ``kw_m`` / ``kw_l`` the keywords each function accepts.

    Args:
      model_fn: ``model_fn(params, **kw) -> outputs``, any pytree of arrays.
      loss_fn: ``loss_fn(outputs, **kw) -> scalar``; convex in ``outputs`` for the
        Gauss-Newton matrix to be positive semi-definite (squared error, softmax
        cross-entropy, ...).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.hessian_free import ModelAndLoss
      >>> model_fn = lambda w, x: x @ w
      >>> loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)
      >>> objective = ModelAndLoss(model_fn, loss_fn)
      >>> float(objective(jnp.ones(2), x=jnp.eye(2), y=jnp.zeros(2)))
      0.5
    """

    model_fn: Callable[..., PyTree]
    loss_fn: Callable[..., jax.Array]

    def __post_init__(self):
        for name in ("model_fn", "loss_fn"):
            if not callable(getattr(self, name)):
                raise TypeError(
                    f"`ModelAndLoss({name}=...)` must be callable, got "
                    f"{type(getattr(self, name)).__name__}."
                )

    def split_kwargs(self, extra_args: dict[str, Any]) -> tuple[dict, dict]:
        """Route keyword arguments to ``(model_fn kwargs, loss_fn kwargs)``.

        Raises:
          TypeError: a keyword that neither function accepts.
        """
        m_names, l_names = _keyword_names(self.model_fn), _keyword_names(self.loss_fn)
        m_kw = {k: v for k, v in extra_args.items() if m_names is None or k in m_names}
        l_kw = {k: v for k, v in extra_args.items() if l_names is None or k in l_names}
        unknown = sorted(set(extra_args) - set(m_kw) - set(l_kw))
        if unknown:
            raise TypeError(
                f"Keyword arguments {unknown} are accepted by neither `model_fn` nor "
                f"`loss_fn` of this ModelAndLoss. Add them to one of the two signatures, "
                f"or stop passing them."
            )
        return m_kw, l_kw

    def __call__(self, params: PyTree, **extra_args: Any) -> jax.Array:
        m_kw, l_kw = self.split_kwargs(extra_args)
        return self.loss_fn(self.model_fn(params, **m_kw), **l_kw)


def _check_value_fn_kwargs(value_fn: Callable, extra_args: dict[str, Any]) -> None:
    if isinstance(value_fn, ModelAndLoss):
        value_fn.split_kwargs(extra_args)
        return
    names = _keyword_names(value_fn)
    if names is None:
        return
    unknown = sorted(set(extra_args) - names)
    if unknown:
        raise TypeError(
            f"Unexpected keyword arguments {unknown} passed to `hessian_free(...).update`: "
            f"`value_fn` does not accept them. Add them to `value_fn`'s signature (it is "
            f"called as `value_fn(params, **extra_args)`) or stop passing them."
        )


# --------------------------------------------------------------------------------------------
# Batched extra arguments: curvature sub-batch and per-example gradients.


def _is_batched(x: Any) -> bool:
    return jnp.ndim(x) >= 1


def _batch_size(extra_args: dict[str, Any], option: str) -> int | None:
    """Common leading size of the array extra arguments with ndim >= 1 (``None``: none)."""
    size, first = None, None
    for path, leaf in jax.tree_util.tree_leaves_with_path(extra_args):
        if not _is_batched(leaf):
            continue
        n = jnp.shape(leaf)[0]
        where = jax.tree_util.keystr(path)
        if size is None:
            size, first = n, where
        elif n != size:
            raise ValueError(
                f"`hessian_free({option}=...)` treats every array extra argument with "
                f"ndim >= 1 as a batch along axis 0, but {where} has leading size {n} while "
                f"{first} has {size}. Pass non-batched extras as scalars or close over them "
                f"in `value_fn` (typed keys from `jax.random.key` are scalars)."
            )
    return size


def _take_batch(extra_args: dict[str, Any], stop: int) -> dict[str, Any]:
    return jax.tree.map(lambda x: x[:stop] if _is_batched(x) else x, extra_args)


def _mean_squared_example_grads(
    fn: Callable, params: PyTree, extra_args: dict[str, Any], chunk_size: int
) -> PyTree:
    """``(1/n) sum_i grad l_i (.) grad l_i`` with ``l_i = fn`` on example ``i`` alone.

    The per-example gradients come from ``vmap`` over batches of one example, ``chunk_size``
    at a time inside a ``scan``, so memory is ``chunk_size`` gradients, not ``n``.
    """
    n = _batch_size(extra_args, "preconditioner")
    if n is None:
        # A full-batch objective (no batched extras): one "example", the whole objective.
        g = jax.grad(lambda p: fn(p, **extra_args))(params)
        return jax.tree.map(lambda a: a * a, g)
    c = min(chunk_size, n)
    k = -(-n // c)
    pad = k * c - n
    leaves, treedef = jax.tree.flatten(extra_args)
    batched = [_is_batched(x) for x in leaves]

    def chunked(x):
        # Padding repeats a real example (finite values) and gets weight 0.
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape((k, c, 1) + x.shape[1:])

    xs = [chunked(x) for x, b in zip(leaves, batched, strict=True) if b]
    weights = (jnp.arange(k * c) < n).reshape(k, c)

    def grad_one(example_leaves):
        it = iter(example_leaves)
        kw = [next(it) if b else x for x, b in zip(leaves, batched, strict=True)]
        kw = jax.tree.unflatten(treedef, kw)
        return jax.grad(lambda p: fn(p, **kw))(params)

    def body(acc, chunk):
        ex, w = chunk
        gs = jax.vmap(grad_one)(ex)
        acc = jax.tree.map(
            lambda a, gi: a + jnp.tensordot(w.astype(gi.dtype), gi * gi, axes=1), acc, gs
        )
        return acc, None

    acc, _ = jax.lax.scan(body, tree_zeros_like(params), (xs, weights))
    return tree_scale(acc, 1.0 / n)


# --------------------------------------------------------------------------------------------
# What the search needs of one candidate direction.


def _tree_absmax(tree: PyTree) -> jax.Array:
    """``max |tree|`` over all leaves (NaN if any entry is NaN); 0 for empty leaves."""
    maxes = [jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree) if jnp.size(leaf)]
    if not maxes:
        return jnp.zeros(())
    return jnp.max(jnp.stack([m.astype(jnp.result_type(*maxes)) for m in maxes]))


# --------------------------------------------------------------------------------------------
# The optimizer.


class HessianFreeState(NamedTuple):
    """State of :func:`hessian_free`: arrays only, so it checkpoints and passes through jit.

    Fields about "the last update" hold their initial values before the first update.
    """

    count: jax.Array  # int32 (), number of `update` calls so far.
    damping: jax.Array  # float (), Tikhonov damping lambda the next update will use.
    cg_init: PyTree  # like params: final CG solution of the last update (warm start).
    rho: jax.Array  # float (), reduction ratio actual / predicted of the last update (nan: none).
    loss: jax.Array  # float (), value_fn at params at the start of the last update.
    new_loss: jax.Array  # float (), value_fn at params + updates (== loss if rejected).
    alpha: jax.Array  # float (), line-search factor of the last update (0 if rejected).
    learning_rate: jax.Array  # float (), rate the last update used (schedule value; nan: none).
    cg_steps: jax.Array  # int32 (), CG iterations of the last update.
    cg_status: jax.Array  # int32 (), CGStatus of the last CG solve.
    cg_backtrack_step: jax.Array  # int32 (), CG step whose iterate was taken.
    fn_evals: jax.Array  # int32 (), value_fn evaluations made by the last update.
    rejected: jax.Array  # bool (), the last update left params unchanged.
    num_rejected: jax.Array  # int32 (), rejected updates so far.
    num_nonfinite: jax.Array  # int32 (), updates that met a non-finite loss/gradient/direction.


_BACK, _SEARCH, _DONE = 0, 1, 2


class _Search(NamedTuple):
    phase: jax.Array  # int32: _BACK, _SEARCH or _DONE
    candidate: jax.Array  # int32: slot of the recorded CG iterate to try next (phase _BACK)
    best: jax.Array  # int32: slot of the best iterate so far
    f_best: jax.Array  # loss at params + lr * iterate[best]
    sq_norm: jax.Array  # ||iterate[best]||^2 (to undo the damping in the model value)
    g_dot: jax.Array  # updates^T iterate[best]: the model's linear term
    slope: jax.Array  # min(grad^T iterate[best], 0): the Armijo slope
    absmax: jax.Array  # max |iterate[best]| (NaN if it holds one)
    alpha: jax.Array  # factor to try next (phase _SEARCH), else the factor taken
    f_alpha: jax.Array  # loss at params + lr * alpha * iterate[best]
    tries: jax.Array  # int32: line-search shrinks so far
    evals: jax.Array  # int32: loss evaluations so far


def _scalar_dtype(params: PyTree) -> jnp.dtype:
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("`hessian_free` got `params` with no leaves; nothing to optimize.")
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`hessian_free` needs floating-point `params`, got dtype {dtype}. Cast the "
            f"parameters with `jax.tree.map(lambda x: x.astype(jnp.float32), params)`."
        )
    return dtype


def _state_shardings(params: PyTree) -> tuple[NamedSharding | None, Callable]:
    """Where ``init`` puts the state: on the parameters' mesh when they live on one.

    A jitted step hands the state back on the parameters' mesh: scalars replicated,
    ``cg_init`` laid out like the parameters. A fresh state made on the default device
    instead would give the second call other input shardings than the first, and the step
    would compile twice. Returns ``(scalar sharding, leaf -> sharding for cg_init)``; both
    ``None`` (the default device) unless a concrete parameter has a ``NamedSharding``.
    """

    def sharding(leaf):
        if isinstance(leaf, jax.core.Tracer) or not isinstance(leaf, jax.Array):
            return None
        return leaf.sharding if isinstance(leaf.sharding, NamedSharding) else None

    on_mesh = [s for s in map(sharding, jax.tree.leaves(params)) if s is not None]
    if not on_mesh:
        return None, lambda leaf: None
    replicated = NamedSharding(on_mesh[0].mesh, PartitionSpec())
    return replicated, lambda leaf: sharding(leaf) or replicated


def _check(cond: bool, option: str, value: Any, requirement: str) -> None:
    if not cond:
        raise ValueError(f"`hessian_free({option}=...)` must be {requirement}, got {value!r}.")


_LR_FIX = (
    "Pass a positive finite float (1.0 is Martens' algorithm) or an optax schedule of the "
    "update count, e.g. `optax.exponential_decay(1.0, 100, 0.5)`."
)


def _is_real_scalar(x: Any) -> bool:
    """A Python/numpy real number or a 0-d integer/float array; bools are not rates."""
    if isinstance(x, bool | np.bool_):
        return False
    if isinstance(x, jax.Array | np.ndarray | np.generic):
        dtype = x.dtype
        real = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
        return x.ndim == 0 and real
    return isinstance(x, int | float)


def _check_learning_rate(learning_rate: Any) -> None:
    """What can be known of ``learning_rate`` before any update; raises if it is wrong.

    A constant must be a positive finite real number: a negative one steps uphill, zero
    never moves, NaN and inf have no step. A schedule (a callable of the int32 update count)
    must return a real scalar and must not start negative or non-finite; 0 at count 0 is
    allowed, since warm-up schedules start there (that update is then rejected and
    reported, see ``update``). Later values, and a rate traced under ``jit``, can only be
    checked at run time, where a non-positive or non-finite one rejects the update.

    Raises:
      TypeError: not a real number nor a callable; a schedule that fails on an int32
        count or returns a non-real dtype.
      ValueError: a non-positive or non-finite constant; a non-scalar schedule value; a
        schedule negative or non-finite at count 0.

    Example:
      >>> from jaxcurv.hessian_free import _check_learning_rate
      >>> _check_learning_rate(0.5)
      >>> _check_learning_rate(-1.0)
      Traceback (most recent call last):
      ...
      ValueError: `hessian_free(learning_rate=...)` must be positive and finite, got -1.0: ...
    """
    name = "`hessian_free(learning_rate=...)`"
    if callable(learning_rate):
        _check_schedule(learning_rate)
        return
    if isinstance(learning_rate, jax.core.Tracer):
        return  # its value exists only at run time, where it is checked
    if not _is_real_scalar(learning_rate):
        raise TypeError(
            f"{name} must be a positive finite number or a schedule, got "
            f"{type(learning_rate).__name__}: {learning_rate!r}. {_LR_FIX}"
        )
    value = float(learning_rate)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be positive and finite, got {learning_rate!r}: a negative rate "
            f"steps uphill, zero never moves and NaN or inf has no step. {_LR_FIX}"
        )


def _check_schedule(schedule: Callable) -> None:
    name = "`hessian_free(learning_rate=...)`"
    count = jax.ShapeDtypeStruct((), jnp.int32)
    try:
        out = jax.eval_shape(schedule, count)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name} got a callable, so it is taken as a schedule of the update count, but "
            f"calling it on an int32 count failed: {e} {_LR_FIX}"
        ) from e
    dtype, shape = getattr(out, "dtype", None), getattr(out, "shape", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(
            f"{name} schedule must return a real scalar, got {type(out).__name__} "
            f"{dtype or ''}. {_LR_FIX}"
        )
    if shape != ():
        raise ValueError(f"{name} schedule must return a scalar, got shape {shape}. {_LR_FIX}")
    first = schedule(jnp.asarray(0, jnp.int32))
    if isinstance(first, jax.core.Tracer):
        return  # it closes over traced values: only the run-time check applies
    value = float(first)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} schedule gives {value!r} at count 0; a rate must be positive and "
            f"finite (0 is allowed only as the start of a warm-up). {_LR_FIX}"
        )


def hessian_free(
    learning_rate: float | optax.Schedule = 1.0,
    *,
    curvature: str = "ggn",
    damping: float = 1.0,
    adapt_damping: bool = True,
    damping_increase: float = 1.5,
    damping_decrease: float = 2.0 / 3.0,
    rho_low: float = 0.25,
    rho_high: float = 0.75,
    min_damping: float = 1e-8,
    max_damping: float = 1e10,
    cg_maxiter: int = 250,
    cg_tol: float = 1e-5,
    cg_stop: str = "martens",
    martens_eps: float = 5e-4,
    cg_decay: float = 0.95,
    cg_backtracking: bool = True,
    line_search: bool = True,
    line_search_c: float = 1e-2,
    line_search_factor: float = 0.8,
    line_search_max_steps: int = 20,
    preconditioner: str | None = None,
    preconditioner_exponent: float = 0.75,
    preconditioner_chunk_size: int = 32,
    curvature_fraction: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free (truncated Newton) optimizer of Martens (2010), for optax.

    Each update minimizes the local quadratic model of ``value_fn`` by conjugate gradient on
    curvature-vector products, never forming the curvature matrix ``B``:

    .. math:: p \\approx \\arg\\min_p\\; g^T p + \\tfrac12 p^T (B + \\lambda I) p,
       \\qquad \\theta \\leftarrow \\theta + \\eta\\, \\alpha\\, p

    with ``B`` the Gauss-Newton matrix ``J^T H_loss J`` (``curvature="ggn"``, positive
    semi-definite) or the Hessian (``curvature="hessian"``), ``g`` the incoming ``updates``
    (the gradient, possibly transformed by earlier links of an ``optax.chain``), ``alpha``
    from the line search and ``eta = learning_rate`` (keep 1 for Martens' algorithm). The
    rate scales every trial point, so everything below judges the step actually returned,
    ``eta alpha p``. In order, one update:

    1. builds ``B`` at ``params`` once (linearize-once operators of :mod:`jaxcurv.products`),
       on the first ``ceil(curvature_fraction * n)`` examples if ``curvature_fraction`` is set;
    2. runs CG on ``(B + lambda I) p = -g`` from ``cg_decay *`` the previous solution, with
       Martens' relative-progress stop (``cg_stop="martens"``), a residual stop or an
       inexact-Newton forcing sequence, at most
       ``cg_maxiter`` steps, leaving early on negative curvature, optionally preconditioned
       by ``(mean_i grad l_i^2 + lambda)^preconditioner_exponent`` (Martens §4.7 sums the
       squared per-example gradients; the mean keeps the scale of a batch-mean loss);
    3. CG backtracking: of the iterates recorded at steps ``ceil(5 * 1.3^j)`` and the last,
       walks back from the last while the loss at ``theta + eta p`` keeps falling, and takes
       that one;
    4. reduction ratio ``rho = (f(theta + eta p) - f(theta)) / m(eta p)`` against the
       *undamped* model ``m(s) = g^T s + s^T B s / 2``; ``rho < rho_low`` (or non-finite)
       multiplies ``lambda`` by ``damping_increase``, ``rho > rho_high`` by
       ``damping_decrease``, clipped to ``[min_damping, max_damping]``;
    5. Armijo backtracking ``f(theta + eta a p) <= f(theta) + c eta a g^T p``,
       ``a = 1, 0.8, ...``; a step that does not lower the loss within
       ``line_search_max_steps`` tries is rejected: zero updates (params unchanged) and
       ``lambda`` raised.

    ``state.new_loss`` is ``value_fn`` at ``optax.apply_updates(params, updates)``, the
    parameters the caller gets (``state.loss`` when the step is rejected). A non-finite
    loss, gradient or CG direction always rejects the step, so the parameters never receive
    a non-finite value; ``state.num_nonfinite`` counts such updates. The next CG solve after
    a rejected step starts from zero rather than from the rejected direction. A scheduled
    rate that is not positive and finite at run time (a warm-up's 0, say) rejects that
    update without a search and leaves damping and warm start as they were;
    ``state.learning_rate`` shows the value used.

    The defaults are Martens' recipe for training networks on mini-batches. For a
    deterministic objective (full batch, a test function, a least-squares fit) the
    truncated-Newton recipe is faster: ``cg_stop="forcing", cg_backtracking=False,
    line_search_factor=0.5`` and a small initial ``damping``; with a least-squares
    ``ModelAndLoss`` (residuals, sum of squares) and ``curvature="ggn"`` it is the
    Levenberg-Marquardt method with CG inner solves.

    ``update(updates, state, params, *, value_fn, value=None, grad=None, **extra_args)``
    follows ``optax.lbfgs``: ``value_fn(params, **extra_args)`` is the scalar loss of the
    current batch; ``value`` (the loss at ``params``) and ``grad`` (the raw gradient, used for
    the Armijo slope; defaults to ``updates``) save recomputation when given. Gauss-Newton
    needs the model and the loss apart: pass ``value_fn=ModelAndLoss(model_fn, loss_fn)``.
    Keyword arguments ``value_fn`` does not accept are a ``TypeError``.

    Batched extra arguments: ``curvature_fraction`` and ``preconditioner="martens"`` treat
    every array in ``extra_args`` with ``ndim >= 1`` as a batch along axis 0 (they must share
    that size). The sub-batch is the leading rows, so shuffle batches as usual. Per-example
    losses are ``value_fn`` on a batch of one example, so ``value_fn`` must be a mean (or
    sum) of independent per-example terms for the preconditioner; with no batched extras the
    preconditioner uses ``g * g``.

    Jit the training step: the update is all ``lax`` control flow and compiles once. (It is
    also jitted internally when ``value_fn`` is hashable and every extra argument is an
    array, so an un-jitted loop does not re-trace; Python values among the extras keep it
    eager, so that a flag like ``train=True`` stays a Python bool.) With parameters laid out
    on a mesh (a ``NamedSharding``), ``init`` puts the state where the step returns it:
    scalars replicated over that mesh, ``cg_init`` sharded like the parameters; so the
    step's second call finds the same input layouts and does not compile again.

    Args:
      learning_rate: ``eta``, scale of the CG direction ``p``: a positive finite float or
        an ``optax`` schedule of ``state.count``. The line search tries ``eta a p`` with
        ``a = 1, 0.8, ...``, so ``eta`` is the largest step it may take; 1 is Martens'
        algorithm.
      curvature: ``"ggn"`` (Gauss-Newton; ``value_fn`` must be a :class:`ModelAndLoss`) or
        ``"hessian"`` (any ``value_fn``; indefinite: CG stops at negative curvature).
      damping: initial Tikhonov damping ``lambda >= 0`` (with ``adapt_damping``, later
        values stay at or above ``min_damping``).
      adapt_damping: Levenberg-Marquardt adaptation of ``lambda`` from ``rho``.
      damping_increase, damping_decrease: factors (``> 1`` and in ``(0, 1)``).
      rho_low, rho_high: thresholds ``0 <= rho_low < rho_high``.
      min_damping, max_damping: bounds kept after every adaptation.
      cg_maxiter: CG step cap per update.
      cg_tol: relative residual tolerance of CG (also active under the Martens stop).
      cg_stop: ``"martens"`` (relative progress of the quadratic, Martens §4.4),
        ``"residual"`` (``||r|| <= cg_tol ||g||``) or ``"forcing"``: the inexact-Newton
        forcing sequence ``||r|| <= max(min(1/2, sqrt||g||), cg_tol) ||g||`` (Nocedal &
        Wright Alg. 7.1, as in scipy's Newton-CG): loose far from a minimum and tight near
        it, for superlinear convergence on deterministic objectives.
      martens_eps: tolerance of the relative-progress stop.
      cg_decay: warm start ``x0 = cg_decay * previous solution``; 0 starts CG from zero.
      cg_backtracking: choose among recorded CG iterates by the loss (Martens §4.6).
      line_search: Armijo backtracking; off, the full step is taken if it lowers the loss.
      line_search_c, line_search_factor, line_search_max_steps: Armijo constant, step
        shrink factor and number of shrinks.
      preconditioner: ``None`` or ``"martens"`` (diagonal, from per-example gradients).
      preconditioner_exponent: the exponent (Martens: 3/4).
      preconditioner_chunk_size: per-example gradients computed this many at a time.
      curvature_fraction: in ``(0, 1]``: curvature products on the leading fraction of the
        batch (Martens used a sub-batch); ``None`` uses the whole batch.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`HessianFreeState`; ``optax.apply_updates(params, updates)`` takes the step.

    Raises:
      ValueError: an option out of range (at construction), e.g. a ``learning_rate`` that
        is not positive and finite, or a schedule negative or non-finite at count 0.
      TypeError: a ``learning_rate`` that is neither a real number nor a schedule; at
        ``init``: a parameter leaf that is not a floating-point array (a string, a
        function: keep configuration out of the parameters, e.g. with ``eqx.partition``);
        at ``update``: no ``value_fn``, ``curvature="ggn"`` with a ``value_fn`` that is not
        a :class:`ModelAndLoss`, or keywords ``value_fn`` does not accept.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from jaxcurv.hessian_free import ModelAndLoss, hessian_free
      >>> x = jnp.linspace(-1.0, 1.0, 32)[:, None]
      >>> y = jnp.sin(3.0 * x)
      >>> def model_fn(params, x):
      ...     return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
      >>> def loss_fn(outputs, y):
      ...     return 0.5 * jnp.mean((outputs - y) ** 2)
      >>> objective = ModelAndLoss(model_fn, loss_fn)
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> params = {"w1": jax.random.normal(k1, (1, 16)), "b1": jnp.zeros(16),
      ...           "w2": 0.1 * jax.random.normal(k2, (16, 1))}
      >>> opt = hessian_free(curvature="ggn", damping=1.0)
      >>> state = opt.init(params)
      >>> @jax.jit
      ... def step(params, state, x, y):
      ...     loss, grads = jax.value_and_grad(objective)(params, x=x, y=y)
      ...     updates, state = opt.update(grads, state, params, value_fn=objective,
      ...                                 value=loss, x=x, y=y)
      ...     return optax.apply_updates(params, updates), state
      >>> for _ in range(20):
      ...     params, state = step(params, state, x, y)
      >>> bool(state.new_loss < 1e-3)
      True

    References:
      Martens, "Deep learning via Hessian-free optimization", ICML 2010.
      Martens & Sutskever, "Training deep and recurrent networks with Hessian-free
      optimization", Neural Networks: Tricks of the Trade, 2012.
      Schraudolph, "Fast curvature matrix-vector products for second-order gradient
      descent", Neural Computation, 2002.
      Nocedal & Wright, "Numerical Optimization", 2nd ed., 2006 (Ch. 3, 4, 7).
    """
    _check_learning_rate(learning_rate)
    _check(curvature in _CURVATURES, "curvature", curvature, f"one of {_CURVATURES}")
    _check(cg_stop in _CG_STOPS, "cg_stop", cg_stop, f"one of {_CG_STOPS}")
    _check(
        preconditioner in _PRECONDITIONERS,
        "preconditioner",
        preconditioner,
        f"one of {_PRECONDITIONERS}",
    )
    _check(float(damping) >= 0, "damping", damping, "non-negative")
    _check(damping_increase > 1, "damping_increase", damping_increase, "greater than 1")
    _check(0 < damping_decrease < 1, "damping_decrease", damping_decrease, "in (0, 1)")
    _check(
        0 <= rho_low < rho_high,
        "rho_low",
        (rho_low, rho_high),
        "non-negative and below `rho_high`",
    )
    _check(
        0 <= min_damping <= max_damping,
        "min_damping",
        (min_damping, max_damping),
        "non-negative and at most `max_damping`",
    )
    _check(
        isinstance(cg_maxiter, int) and cg_maxiter > 0, "cg_maxiter", cg_maxiter, "a positive int"
    )
    _check(cg_tol >= 0, "cg_tol", cg_tol, "non-negative")
    _check(martens_eps > 0, "martens_eps", martens_eps, "positive")
    _check(0 <= cg_decay <= 1, "cg_decay", cg_decay, "in [0, 1]")
    _check(0 < line_search_c < 1, "line_search_c", line_search_c, "in (0, 1)")
    _check(0 < line_search_factor < 1, "line_search_factor", line_search_factor, "in (0, 1)")
    _check(
        isinstance(line_search_max_steps, int) and line_search_max_steps >= 0,
        "line_search_max_steps",
        line_search_max_steps,
        "a non-negative int",
    )
    _check(
        preconditioner_exponent > 0,
        "preconditioner_exponent",
        preconditioner_exponent,
        "positive",
    )
    _check(
        isinstance(preconditioner_chunk_size, int) and preconditioner_chunk_size > 0,
        "preconditioner_chunk_size",
        preconditioner_chunk_size,
        "a positive int",
    )
    _check(
        curvature_fraction is None or 0 < curvature_fraction <= 1,
        "curvature_fraction",
        curvature_fraction,
        "None or in (0, 1]",
    )

    def init_fn(params: PyTree) -> HessianFreeState:
        # Configuration in the parameter tree (an activation name, a whole Equinox module
        # with its functions) has no step to take: say which leaf, before any arithmetic.
        _check_real_inputs("hessian_free(...).init", params, "`params`")
        dtype = _scalar_dtype(params)
        scalars, like = _state_shardings(params)
        i32 = lambda v: jnp.asarray(v, jnp.int32, device=scalars)
        f = lambda v: jnp.asarray(v, dtype, device=scalars)
        # Strongly typed even for weakly typed params, so the state's types never change
        # across updates (a change would retrace a jitted step).
        zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p), device=like(p))
        return HessianFreeState(
            count=i32(0),
            damping=f(damping),
            cg_init=jax.tree.map(zeros, params),
            rho=f(jnp.nan),
            loss=f(jnp.nan),
            new_loss=f(jnp.nan),
            alpha=f(0.0),
            learning_rate=f(jnp.nan),
            cg_steps=i32(0),
            cg_status=i32(CGStatus.CONVERGED),
            cg_backtrack_step=i32(-1),
            fn_evals=i32(0),
            rejected=jnp.asarray(False, device=scalars),
            num_rejected=i32(0),
            num_nonfinite=i32(0),
        )

    def update_fn(
        updates: PyTree,
        state: HessianFreeState,
        params: PyTree | None = None,
        *,
        value_fn: Callable[..., jax.Array] | None = None,
        value: jax.typing.ArrayLike | None = None,
        grad: PyTree | None = None,
        **extra_args: Any,
    ) -> tuple[PyTree, HessianFreeState]:
        if params is None:
            raise ValueError(
                "`hessian_free(...).update` needs `params`: call "
                "`opt.update(grads, state, params, value_fn=...)`."
            )
        if value_fn is None:
            raise TypeError(
                "`hessian_free(...).update` needs the objective: call `opt.update(grads, "
                "state, params, value_fn=loss, **batch)` with `loss(params, **batch)` the "
                "scalar loss (for curvature='ggn', `value_fn=ModelAndLoss(model_fn, "
                "loss_fn)`)."
            )
        if not callable(value_fn):
            raise TypeError(f"`value_fn` must be callable, got {type(value_fn).__name__}.")
        if curvature == "ggn" and not isinstance(value_fn, ModelAndLoss):
            raise TypeError(
                "`hessian_free(curvature='ggn')` needs the model and the loss apart, got a "
                f"plain `value_fn` ({type(value_fn).__name__}). Pass "
                "`value_fn=ModelAndLoss(model_fn, loss_fn)` (it is itself the loss), or use "
                "`hessian_free(curvature='hessian')`."
            )
        _check_value_fn_kwargs(value_fn, extra_args)
        tree_check_like("updates", updates, params, "params")
        if grad is not None:
            tree_check_like("grad", grad, params, "params")
        # The compile policy (`jaxcurv._compile`): inlined into the user's jitted step; at
        # top level compiled once per computation, whatever closure `value_fn` is, with the
        # batch an argument of the executable (Python flags such as `train=True` stay
        # Python values).
        return compiled_call(
            lambda u, s, p, v, g, e: update_impl(u, s, p, value_fn, v, g, e),
            updates,
            state,
            params,
            value,
            grad,
            extra_args,
        )

    def update_impl(updates, state, params, value_fn, value, grad, extra_args):
        dtype = state.damping.dtype
        as_f = lambda v: jnp.asarray(v, dtype)
        i32 = lambda v: jnp.asarray(v, jnp.int32)

        def raw_loss(p):
            out = value_fn(p, **extra_args)
            if jnp.shape(out) != ():
                raise ValueError(
                    f"`value_fn` must return a scalar loss, got shape {jnp.shape(out)}. "
                    f"Reduce it with `.mean()` or `.sum()`."
                )
            return as_f(out)

        def loss_at(p):
            # Non-finite trial losses compare as +inf: never "better", never accepted.
            v = raw_loss(p)
            return jnp.where(jnp.isfinite(v), v, jnp.inf)

        def shifted(step):
            return jax.tree.map(lambda t, s: t + s.astype(t.dtype), params, step)

        if value is None:
            f0 = raw_loss(params)
            evals = i32(1)
        else:
            if jnp.shape(value) != ():
                raise ValueError(f"`value` must be a scalar, got shape {jnp.shape(value)}.")
            f0 = as_f(value)
            evals = i32(0)
        g = updates
        lam = state.damping

        # Curvature at params, on the sub-batch when asked; linearized once for all of CG.
        curv_args = extra_args
        if curvature_fraction is not None:
            n = _batch_size(extra_args, "curvature_fraction")
            if n is None:
                raise ValueError(
                    "`hessian_free(curvature_fraction=...)` needs batched extra arguments "
                    "(arrays with a leading batch axis) to take a sub-batch of, got none. "
                    "Pass the batch as keywords of `update`, or set `curvature_fraction=None`."
                )
            curv_args = _take_batch(extra_args, max(1, math.ceil(curvature_fraction * n)))
        if curvature == "ggn":
            m_kw, l_kw = value_fn.split_kwargs(curv_args)
            op = ggn_operator(
                lambda p: value_fn.model_fn(p, **m_kw),
                lambda o: value_fn.loss_fn(o, **l_kw),
                params,
            )
        else:
            # Always traced here (compiled_call or the user's jit), so a closure is fine.
            op = hessian_operator(lambda p: value_fn(p, **curv_args), params)

        precond = None
        if preconditioner == "martens":
            sq = _mean_squared_example_grads(
                value_fn, params, extra_args, preconditioner_chunk_size
            )
            diag = jax.tree.map(lambda s: (s + lam.astype(s.dtype)) ** preconditioner_exponent, sq)
            # Guard zero entries (lambda = 0 and a dead parameter): leave them unscaled.
            diag = jax.tree.map(lambda d: jnp.where(d > 0, d, jnp.ones_like(d)), diag)
            precond = lambda r: jax.tree.map(lambda ri, di: ri / di.astype(ri.dtype), r, diag)

        x0 = tree_scale(state.cg_init, cg_decay) if cg_decay > 0 else None
        b = tree_scale(g, -1.0)
        tol = cg_tol
        if cg_stop == "forcing":
            # Inexact Newton (Nocedal & Wright Alg. 7.1): ||r|| <= min(1/2, sqrt||g||) ||g||,
            # loose far from a minimum, tightening as the gradient vanishes (superlinear).
            tol = jnp.minimum(0.5, jnp.sqrt(jnp.sqrt(tree_vdot(g, g).real)))
            tol = jnp.maximum(tol, cg_tol).astype(dtype)
        x, info = cg(
            op,
            b,
            x0,
            tol=tol,
            maxiter=cg_maxiter,
            M=precond,
            damping=lam,
            stop_rule="martens" if cg_stop == "martens" else "residual",
            record_iterates=cg_backtracking,
            martens_eps=martens_eps,
        )

        start_finite = jnp.isfinite(f0) & tree_all_finite(g)

        # The learning rate scales every trial point, not only the step finally returned:
        # the line search, the acceptance test, the reduction ratio and `new_loss` then
        # all judge the step actually taken, `lr * alpha * p`. (Scaling after the search
        # would report the loss at `params + alpha p` for parameters that moved elsewhere,
        # and accept a step nobody evaluated; re-evaluating at the end instead would cost
        # a forward pass per update and still leave rho and the damping judging a
        # different step.) With lr = 1 this is Martens' algorithm unchanged.
        lr = as_f(learning_rate(state.count) if callable(learning_rate) else learning_rate)
        # A schedule (or a traced rate) can still hand out 0, a negative value or NaN: such
        # an update is not searched and is rejected, so it can neither step uphill nor
        # write a non-finite value; `state.learning_rate` shows the value it got.
        lr_ok = jnp.isfinite(lr) & (lr > 0)

        # The candidate directions: the recorded CG iterates (Martens §4.6), or just the final
        # one. What the search and the acceptance test need of a candidate (slope, largest
        # entry) is reduced inside the loop, for the candidates it actually visits (two or
        # three): reducing every slot of the buffer up front read all R iterates each update
        # and cost more than the search itself on cheap objectives.
        if cg_backtracking:
            # Slots hold the iterates at steps ceil(5 * 1.3^j) (-1: not reached), then the
            # final one (x itself) in the last slot.
            stacked, steps = info.iterates, info.iterate_steps
            model_values = info.iterate_values
            slots = jnp.arange(steps.shape[0])
            direction = lambda j: jax.tree.map(lambda a: a[j], stacked)
            previous = lambda j: jnp.max(jnp.where((slots < j) & (steps >= 0), slots, -1))
            last = steps.shape[0] - 1
        else:
            direction = lambda j: x
            model_values = info.quadratic_value[None]
            previous = lambda j: jnp.asarray(-1)
            last = 0
        searching = line_search and line_search_max_steps > 0

        def sufficient(a, fa, slope):
            # Armijo on the step taken, lr * a * p (its slope along p is lr * a * slope).
            return (fa < f0) & (fa <= f0 + line_search_c * (lr * a) * slope)

        # One loop evaluates every trial point (a single copy of the forward pass in the
        # compiled program). Phase _BACK walks back over the recorded CG iterates while the
        # loss keeps falling (Martens §4.6); phase _SEARCH is Armijo backtracking on the
        # chosen iterate (Nocedal & Wright, Alg. 3.1).
        def search_cond(c):
            return c.phase != _DONE

        def search_body(c):
            back = c.phase == _BACK
            j = jnp.where(back, c.candidate, c.best)
            d = direction(j)
            a = jnp.where(back, 1.0, c.alpha).astype(dtype)
            # The same product `lr * a` scales the returned step: `new_loss` is the loss
            # at exactly the parameters the caller gets.
            f = loss_at(shifted(tree_scale(d, lr * a)))
            # Walking back. The first candidate (the final CG iterate) is the best so far
            # whatever its loss, so its statistics are always taken.
            improved = back & (f < c.f_best)
            take = improved | (c.evals == 0)
            best = jnp.where(improved, c.candidate, c.best)
            f_best = jnp.where(improved, f, c.f_best)

            def candidate_stats(d):
                g_dot = as_f(tree_vdot(g, d))
                slope_dot = g_dot if grad is None else as_f(tree_vdot(grad, d))
                return (
                    as_f(tree_vdot(d, d)),
                    g_dot,
                    jnp.minimum(slope_dot, 0.0),
                    as_f(_tree_absmax(d)),
                )

            # Only for a new best: line-search tries reuse the chosen iterate's statistics.
            sq_norm_best, g_dot, slope, absmax = jax.lax.cond(
                take, candidate_stats, lambda d: (c.sq_norm, c.g_dot, c.slope, c.absmax), d
            )
            walk_on = improved & (previous(c.candidate) >= 0)
            full_ok = sufficient(1.0, f_best, slope)
            # Line search.
            ok = sufficient(a, f, slope)
            tries = c.tries + (~back).astype(jnp.int32)
            shrink_on = ~back & ~ok & (tries < line_search_max_steps)
            leave_back_to_search = back & ~walk_on & ~full_ok & searching
            phase = jnp.where(
                walk_on,
                _BACK,
                jnp.where(leave_back_to_search | shrink_on, _SEARCH, _DONE),
            )
            alpha = jnp.where(
                back,
                jnp.where(leave_back_to_search, line_search_factor, 1.0),
                jnp.where(shrink_on, a * line_search_factor, a),
            ).astype(dtype)
            f_alpha = jnp.where(back, f_best, f)
            return _Search(
                phase=phase.astype(jnp.int32),
                candidate=previous(c.candidate).astype(jnp.int32),
                best=best.astype(jnp.int32),
                f_best=f_best,
                sq_norm=sq_norm_best,
                g_dot=g_dot,
                slope=slope,
                absmax=absmax,
                alpha=alpha,
                f_alpha=f_alpha,
                tries=tries,
                evals=c.evals + 1,
            )

        found = jax.lax.while_loop(
            search_cond,
            search_body,
            _Search(
                phase=jnp.where(start_finite & lr_ok, _BACK, _DONE).astype(jnp.int32),
                candidate=i32(last),
                best=i32(last),
                f_best=as_f(jnp.inf),
                sq_norm=as_f(0.0),
                g_dot=as_f(0.0),
                slope=as_f(0.0),
                absmax=as_f(jnp.nan),  # never searched: the start or the rate was unusable
                alpha=as_f(1.0),
                f_alpha=as_f(jnp.inf),
                tries=i32(0),
                evals=i32(0),
            ),
        )
        best = found.best
        p = direction(best)
        f_p, alpha, f_new = found.f_best, found.alpha, found.f_alpha
        evals = evals + found.evals
        back_step = info.iterate_steps[best] if cg_backtracking else info.num_steps
        # With an unusable rate the direction was never examined (absmax stays NaN).
        nonfinite = ~start_finite | (lr_ok & ~jnp.isfinite(found.absmax))

        # Reduction ratio against the undamped model (Martens §4.1; Nocedal & Wright §4.1)
        # at the step the search starts from, lr * p (Martens: p): actual f(theta + lr p) -
        # f(theta) over m(lr p) = lr g^T p + lr^2 p^T B p / 2. CG's own phi of the damped
        # model at the chosen iterate gives p^T B p / 2 = phi(p) - g^T p - lambda ||p||^2 / 2,
        # so the ratio costs no curvature product.
        half_curv = as_f(model_values[best]) - found.g_dot - 0.5 * lam * found.sq_norm
        predicted = lr * found.g_dot + lr * lr * half_curv
        rho = jnp.where(lr_ok & (predicted < 0), (f_p - f0) / predicted, jnp.nan)

        scale = lr * alpha
        # `p * scale` is finite exactly when `max|p| * scale` is (rounding is monotone), so
        # the step is checked without another pass over the parameters. The trial loss
        # alone is not enough: a loss can be finite at infinite parameters (a clipped or
        # saturating function).
        step_finite = jnp.isfinite(found.absmax * scale)
        accepted = lr_ok & sufficient(alpha, f_new, found.slope) & ~nonfinite & step_finite
        step = tree_scale(p, scale)
        new_updates = tree_where(accepted, step, tree_zeros_like(step))
        new_updates = jax.tree.map(lambda u, t: u.astype(t.dtype), new_updates, params)

        new_lam = lam
        if adapt_damping:
            bad = ~(rho >= rho_low)  # also true for a non-finite rho
            new_lam = jnp.where(
                bad, lam * damping_increase, jnp.where(rho > rho_high, lam * damping_decrease, lam)
            )
            new_lam = jnp.where(accepted, new_lam, lam * damping_increase)
            # An unusable rate says nothing about the quadratic model: damping stays.
            new_lam = jnp.where(lr_ok, new_lam, lam)
            new_lam = jnp.clip(new_lam, min_damping, max_damping).astype(dtype)

        # Martens warm-starts from the final CG solution, not the backtracked iterate (CG
        # returns only finite iterates). After a rejected step the next solve starts from
        # zero: the rejected direction is what failed, and starting from it again repeats
        # the failure at every damping on the way up (measured on Rosenbrock: 29 rejected
        # updates in a row instead of 1).
        new_init = tree_where(accepted, x, tree_zeros_like(x))
        new_init = jax.tree.map(lambda a, t: a.astype(t.dtype), new_init, state.cg_init)
        # An update voided by its rate judged no direction: keep the previous warm start.
        new_init = tree_where(lr_ok, new_init, state.cg_init)

        new_state = HessianFreeState(
            count=optax.safe_increment(state.count),
            damping=new_lam,
            cg_init=new_init,
            rho=as_f(rho),
            loss=f0,
            new_loss=jnp.where(accepted, f_new, f0),
            alpha=jnp.where(accepted, alpha, 0.0).astype(dtype),
            learning_rate=lr,
            cg_steps=jnp.asarray(info.num_steps, jnp.int32),
            cg_status=jnp.asarray(info.status, jnp.int32),
            cg_backtrack_step=jnp.asarray(back_step, jnp.int32),
            fn_evals=evals,
            rejected=~accepted,
            num_rejected=state.num_rejected + (~accepted).astype(jnp.int32),
            num_nonfinite=state.num_nonfinite + nonfinite.astype(jnp.int32),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
