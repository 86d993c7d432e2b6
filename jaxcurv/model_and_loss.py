"""``ModelAndLoss``: the one way to hand a model and its loss to jaxcurv.

Gauss-Newton curvature ``J^T H_loss J`` needs the network and the loss on its outputs
apart (Schraudolph 2002); everything else needs only their composition. A
:class:`ModelAndLoss` carries both, is itself the composed objective, and routes keyword
data by name: ``model_fn`` gets the keywords its signature names, ``loss_fn`` those its
signature names. The optimizer (``hessian_free(...).update(..., value_fn=ModelAndLoss(...),
**batch)``), the Gauss-Newton products (``ggn_vp(model_fn, loss_fn, params, v, **batch)``,
``ggn_operator``) and ``check_determinism`` all split data by this one rule.

Keyword data with a batch axis follows one convention too: every array with ``ndim >= 1``
holds examples along axis 0, all of them the same number (:func:`batch_size`), and a
sub-batch is the leading rows of each (:func:`take_batch`).

References:
  N. N. Schraudolph. "Fast curvature matrix-vector products for second-order gradient
  descent." Neural Computation 14(7), 2002.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_callable, common_leading_size

PyTree = Any

__all__ = [
    "ModelAndLoss",
    "batch_size",
    "check_value_fn_keywords",
    "is_batched",
    "take_batch",
]


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
    same object is passed as ``value_fn`` to :func:`~jaxcurv.hessian_free` (and to
    ``jax.grad``).

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

    Raises:
      TypeError: ``model_fn`` or ``loss_fn`` not callable.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv import ModelAndLoss
      >>> model_fn = lambda w, x: x @ w
      >>> loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)
      >>> objective = ModelAndLoss(model_fn, loss_fn)
      >>> float(objective(jnp.ones(2), x=jnp.eye(2), y=jnp.zeros(2)))
      0.5
      >>> objective.split_kwargs({"x": 1, "y": 2})
      ({'x': 1}, {'y': 2})

    References:
      Schraudolph, "Fast curvature matrix-vector products for second-order gradient
      descent", Neural Computation, 2002.
    """

    model_fn: Callable[..., PyTree]
    loss_fn: Callable[..., jax.Array]

    def __post_init__(self):
        for name in ("model_fn", "loss_fn"):
            check_callable(f"ModelAndLoss({name}=...)", getattr(self, name))

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


def check_value_fn_keywords(
    value_fn: Callable, extra_args: dict[str, Any], caller: str = "hessian_free(...).update"
) -> None:
    """Every keyword in ``extra_args`` reaches ``value_fn`` (for a :class:`ModelAndLoss`,
    one of its two functions); else a ``TypeError`` naming the strays.

    Example:
      >>> from jaxcurv.model_and_loss import check_value_fn_keywords
      >>> check_value_fn_keywords(lambda p, x: p * x, {"x": 1.0, "y": 2.0})
      Traceback (most recent call last):
      ...
      TypeError: Unexpected keyword arguments ['y'] passed to `hessian_free(...).update`: ...
    """
    if isinstance(value_fn, ModelAndLoss):
        value_fn.split_kwargs(extra_args)
        return
    names = _keyword_names(value_fn)
    if names is None:
        return
    unknown = sorted(set(extra_args) - names)
    if unknown:
        raise TypeError(
            f"Unexpected keyword arguments {unknown} passed to `{caller}`: "
            f"`value_fn` does not accept them. Add them to `value_fn`'s signature (it is "
            f"called as `value_fn(params, **extra_args)`) or stop passing them."
        )


# --------------------------------------------------------------------------------------------
# Batched keyword data.


def is_batched(x: Any) -> bool:
    """Whether a keyword value carries examples along axis 0 (an array with ``ndim >= 1``)."""
    return jnp.ndim(x) >= 1


def batch_size(extra_args: dict[str, Any], option: str) -> int | None:
    """Common leading size of the array extra arguments with ndim >= 1 (``None``: none).

    Args:
      extra_args: the keyword data of an update.
      option: the ``hessian_free`` option that needs the batch, named in the error.

    Raises:
      ValueError: two batched extras of different leading sizes (both named).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.model_and_loss import batch_size
      >>> batch_size({"x": jnp.zeros((8, 3)), "y": jnp.zeros(8), "train": True}, "preconditioner")
      8
    """

    def mismatch(first, size, where, n):
        return (
            f"`hessian_free({option}=...)` treats every array extra argument with "
            f"ndim >= 1 as a batch along axis 0, but {where} has leading size {n} while "
            f"{first} has {size}. Pass non-batched extras as scalars or close over them "
            f"in `value_fn` (typed keys from `jax.random.key` are scalars)."
        )

    return common_leading_size(extra_args, mismatch)


def take_batch(extra_args: dict[str, Any], stop: int) -> dict[str, Any]:
    """The first ``stop`` examples of every batched extra argument; scalars unchanged.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.model_and_loss import take_batch
      >>> take_batch({"x": jnp.arange(4.0), "scale": 2.0}, 2)
      {'scale': 2.0, 'x': Array([0., 1.], dtype=float32)}
    """
    return jax.tree.map(lambda x: x[:stop] if is_batched(x) else x, extra_args)
