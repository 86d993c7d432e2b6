"""``ModelAndLoss``: the one way to hand a model and its loss to jaxcurv.

Gauss-Newton curvature ``J^T H_loss J`` needs the network and the loss on its outputs
apart (Schraudolph 2002); everything else needs only their composition. A
:class:`ModelAndLoss` carries both, is itself the composed objective, and routes keyword
data by name: each function gets the keywords its signature names, a ``**kwargs`` function
(Flax's ``apply``) those the other does not name, and ``model_keys=`` / ``loss_keys=`` state
the routing where signatures cannot; positional data are split by count. Models that return
state and losses that return metrics say so (``model_has_aux`` / ``loss_has_aux``). The
optimizer (``hessian_free(...).update(..., value_fn=ModelAndLoss(...),
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
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_callable, check_int, common_leading_size, describe_value

PyTree = Any

__all__ = [
    "ModelAndLoss",
    "batch_size",
    "check_value_fn_keywords",
    "is_batched",
    "take_batch",
]


class _Signature(NamedTuple):
    """What routing needs of a function's signature (all after its first parameter)."""

    names: frozenset[str]  # the keywords it names
    var_keyword: bool  # takes ``**kwargs`` (or has no signature to read)
    positional: int | None  # required positional parameters; None: ``*args`` or unknown


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _signature(fn: Callable) -> _Signature:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return _Signature(frozenset(), True, None)
    first = next((i for i, p in enumerate(params) if p.kind in _POSITIONAL), None)
    rest = params if first is None else params[:first] + params[first + 1 :]
    kinds = {p.kind for p in params}
    required = sum(p.kind in _POSITIONAL and p.default is p.empty for p in rest)
    return _Signature(
        names=frozenset(p.name for p in rest if p.kind in _NAMED),
        var_keyword=inspect.Parameter.VAR_KEYWORD in kinds,
        positional=None if inspect.Parameter.VAR_POSITIONAL in kinds else required,
    )


def _keyword_names(fn: Callable) -> frozenset[str] | None:
    """Keywords ``fn`` accepts after its first positional argument; ``None`` means any."""
    sig = _signature(fn)
    return None if sig.var_keyword else sig.names


def _names_tuple(name: str, keys: Any) -> tuple[str, ...] | None:
    if keys is None:
        return None
    keys = (keys,) if isinstance(keys, str) else keys
    try:
        keys = tuple(keys)
    except TypeError:
        keys = None
    if keys is None or not all(isinstance(k, str) for k in keys):
        raise TypeError(
            f"`ModelAndLoss({name}=...)` must be a tuple of keyword names, got "
            f"{describe_value(keys)}. Write e.g. `{name}=('x',)`."
        )
    return keys


def _with_aux(out: Any, flag: str, what: str) -> tuple[Any, Any]:
    """``(value, aux)`` of a function's output under ``flag=True``; a clear error if no pair."""
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise TypeError(
            f"`ModelAndLoss({flag}=True)` needs `{what}` to return a pair "
            f"`({'outputs' if what == 'model_fn' else 'loss'}, aux)`, got "
            f"{describe_value(out)}. Return the pair, or set `{flag}=False`."
        )
    return out[0], out[1]


def _first_of(fn: Callable, flag: str, what: str) -> Callable:
    """``fn`` with its aux dropped; ``functools.wraps`` keeps the signature routing reads."""

    @functools.wraps(fn)
    def value_only(*args, **kwargs):
        return _with_aux(fn(*args, **kwargs), flag, what)[0]

    return value_only


@dataclasses.dataclass(frozen=True)
class ModelAndLoss:
    """A model and its loss kept apart, usable as one ``value_fn``.

    Gauss-Newton curvature ``J^T H_loss J`` needs the network ``model_fn`` and the loss on its
    outputs ``loss_fn`` separately (Schraudolph 2002); everything else only needs their
    composition. ``ModelAndLoss`` carries both and is itself the composed objective, so the
    same object is passed as ``value_fn`` to :func:`~jaxcurv.hessian_free` (and to
    ``jax.grad``).

    Data are routed, keyword by keyword:

    * ``model_keys`` / ``loss_keys``, when given, say exactly which keywords each function
      gets (for functions whose signatures cannot say it, e.g. two ``**kwargs`` ones);
    * otherwise a keyword goes to each function whose signature names it, and a keyword
      neither names goes to a function that takes ``**kwargs``. A ``**kwargs`` function
      does not get the keywords the other one names: so Flax's ``model.apply(variables,
      *args, **kwargs)`` with ``loss_fn(logits, y)`` gets ``x`` but not ``y``;
    * a keyword that reaches neither, or that two ``**kwargs`` functions could both take,
      is a ``TypeError`` naming it and ``model_keys=`` / ``loss_keys=`` as the fix.

    Positional data ``objective(params, x, y)`` are split by count: the first
    ``num_model_args`` go to the model, the rest to the loss; by default that count is read
    from the signatures (the model's required positional parameters after ``params``, or
    else all but the loss's), and is a ``TypeError`` to state when both take ``*args``.

    Auxiliary outputs, as Flax and Equinox write them: with ``model_has_aux=True``,
    ``model_fn`` returns ``(outputs, model_aux)`` (Flax ``apply(..., mutable=[
    "batch_stats"])`` returns ``(logits, updated_variables)``; an Equinox stateful model
    ``(outputs, state)``); with ``loss_has_aux=True``, ``loss_fn`` returns ``(loss,
    loss_aux)`` (metrics). The objective then returns ``(loss, aux)`` -- ``aux`` the one aux
    there is, or ``(model_aux, loss_aux)`` when both have one -- as ``jax.value_and_grad(
    objective, has_aux=True)`` expects; curvature is taken of ``outputs`` and ``loss``
    alone.

    Args:
      model_fn: ``model_fn(params, *args, **kw) -> outputs`` (a pytree of arrays), or
        ``(outputs, aux)`` with ``model_has_aux``.
      loss_fn: ``loss_fn(outputs, *args, **kw) -> scalar`` (or ``(scalar, aux)``); convex
        in ``outputs`` for the Gauss-Newton matrix to be positive semi-definite (squared
        error, softmax cross-entropy, ...).
      model_keys: the keywords ``model_fn`` gets (``None``: read from its signature).
      loss_keys: the keywords ``loss_fn`` gets (``None``: read from its signature).
      num_model_args: how many positional data go to ``model_fn`` (``None``: read from
        the signatures).
      model_has_aux: ``model_fn`` returns ``(outputs, aux)``.
      loss_has_aux: ``loss_fn`` returns ``(loss, aux)``.

    Raises:
      TypeError: ``model_fn`` or ``loss_fn`` not callable; keys that are not names; a
        ``num_model_args`` that is no int.
      ValueError: a negative ``num_model_args``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv import ModelAndLoss
      >>> model_fn = lambda w, x: x @ w
      >>> loss_fn = lambda out, y: 0.5 * jnp.mean((out - y) ** 2)
      >>> objective = ModelAndLoss(model_fn, loss_fn)
      >>> float(objective(jnp.ones(2), x=jnp.eye(2), y=jnp.zeros(2)))
      0.5
      >>> float(objective(jnp.ones(2), jnp.eye(2), jnp.zeros(2)))  # positional: x, then y
      0.5
      >>> objective.split_kwargs({"x": 1, "y": 2})
      ({'x': 1}, {'y': 2})
      >>> apply = lambda variables, *args, **kwargs: args[0] @ variables  # like Flax
      >>> ModelAndLoss(apply, loss_fn).split_kwargs({"train": True, "y": 2})
      ({'train': True}, {'y': 2})

    References:
      Schraudolph, "Fast curvature matrix-vector products for second-order gradient
      descent", Neural Computation, 2002.
    """

    model_fn: Callable[..., PyTree]
    loss_fn: Callable[..., jax.Array]
    _: dataclasses.KW_ONLY
    model_keys: tuple[str, ...] | None = None
    loss_keys: tuple[str, ...] | None = None
    num_model_args: int | None = None
    model_has_aux: bool = False
    loss_has_aux: bool = False

    def __post_init__(self):
        for name in ("model_fn", "loss_fn"):
            check_callable(f"ModelAndLoss({name}=...)", getattr(self, name))
        for name in ("model_keys", "loss_keys"):
            object.__setattr__(self, name, _names_tuple(name, getattr(self, name)))
        if self.num_model_args is not None:
            check_int("ModelAndLoss(num_model_args=...)", self.num_model_args, minimum=0)
        for name in ("model_has_aux", "loss_has_aux"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"`ModelAndLoss({name}=...)` must be a bool, got "
                    f"{describe_value(getattr(self, name))}."
                )

    @property
    def has_aux(self) -> bool:
        """Whether the objective returns ``(loss, aux)`` rather than the loss."""
        return self.model_has_aux or self.loss_has_aux

    def split_kwargs(self, extra_args: dict[str, Any]) -> tuple[dict, dict]:
        """Route keyword arguments to ``(model_fn kwargs, loss_fn kwargs)``.

        Raises:
          TypeError: a keyword that neither function accepts, or that both take only
            through ``**kwargs`` (ambiguous).
        """
        sigs = (_signature(self.model_fn), _signature(self.loss_fn))
        keys = (self.model_keys, self.loss_keys)

        def names(i):  # the keywords function i claims by name
            return set(keys[i]) if keys[i] is not None else sigs[i].names

        def takes(i, k):
            if keys[i] is not None:
                return k in keys[i]
            return k in sigs[i].names or (sigs[i].var_keyword and k not in names(1 - i))

        ambiguous = sorted(k for k in extra_args if takes(0, k) and takes(1, k))
        ambiguous = [k for k in ambiguous if not (k in names(0) or k in names(1))]
        unknown = sorted(k for k in extra_args if not (takes(0, k) or takes(1, k)))
        if unknown or ambiguous:
            problem = (
                "are accepted by neither `model_fn` nor `loss_fn` of this ModelAndLoss"
                if unknown
                else "could go to both `model_fn` and `loss_fn` of this ModelAndLoss (both "
                "take **kwargs and neither names them)"
            )
            raise TypeError(
                f"Keyword arguments {unknown or ambiguous} {problem}. Add them to one of the "
                f"two signatures, state the routing with `ModelAndLoss(model_fn, loss_fn, "
                f"model_keys=('x',), loss_keys=('y',))`, or stop passing them."
            )
        return tuple({k: v for k, v in extra_args.items() if takes(i, k)} for i in (0, 1))

    def split_args(self, args: tuple) -> tuple[tuple, tuple]:
        """Split positional data into ``(model_fn args, loss_fn args)`` by count.

        Raises:
          TypeError: positional data with both functions taking ``*args`` and no
            ``num_model_args``.
        """
        if not args:
            return (), ()
        n = self.num_model_args
        if n is None:
            model, loss = _signature(self.model_fn).positional, _signature(self.loss_fn).positional
            if model is None and loss is None:
                raise TypeError(
                    f"ModelAndLoss got {len(args)} positional data arguments but cannot split "
                    "them: both `model_fn` and `loss_fn` take *args. Pass the data as "
                    "keywords, or state the split: `ModelAndLoss(model_fn, loss_fn, "
                    "num_model_args=1)` sends the first one to the model, the rest to the loss."
                )
            n = model if model is not None else len(args) - loss
        n = min(max(n, 0), len(args))
        return tuple(args[:n]), tuple(args[n:])

    def outputs_and_aux(self, params: PyTree, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """``(model outputs, model aux)`` (aux ``None`` without ``model_has_aux``)."""
        (m_args, _), (m_kw, _) = self.split_args(args), self.split_kwargs(kwargs)
        out = self.model_fn(params, *m_args, **m_kw)
        return _with_aux(out, "model_has_aux", "model_fn") if self.model_has_aux else (out, None)

    def __call__(self, params: PyTree, *args: Any, **kwargs: Any) -> Any:
        (m_args, l_args), (m_kw, l_kw) = self.split_args(args), self.split_kwargs(kwargs)
        out = self.model_fn(params, *m_args, **m_kw)
        outputs, model_aux = (
            _with_aux(out, "model_has_aux", "model_fn") if self.model_has_aux else (out, None)
        )
        res = self.loss_fn(outputs, *l_args, **l_kw)
        loss, loss_aux = (
            _with_aux(res, "loss_has_aux", "loss_fn") if self.loss_has_aux else (res, None)
        )
        if not self.has_aux:
            return loss
        if self.model_has_aux and self.loss_has_aux:
            return loss, (model_aux, loss_aux)
        return loss, model_aux if self.model_has_aux else loss_aux

    def without_aux(self) -> ModelAndLoss:
        """The same objective returning the loss alone (routing unchanged); ``self`` if it
        has no aux."""
        if not self.has_aux:
            return self
        model_fn, loss_fn = self.model_fn, self.loss_fn
        if self.model_has_aux:
            model_fn = _first_of(model_fn, "model_has_aux", "model_fn")
        if self.loss_has_aux:
            loss_fn = _first_of(loss_fn, "loss_has_aux", "loss_fn")
        return dataclasses.replace(
            self, model_fn=model_fn, loss_fn=loss_fn, model_has_aux=False, loss_has_aux=False
        )

    def bind(self, *args: Any, **kwargs: Any) -> tuple[Callable, Callable]:
        """``(model, loss)``: ``model(params) -> outputs`` and ``loss(outputs) -> scalar``,
        this batch routed and bound, auxiliary outputs dropped.

        Both are ``functools.partial`` objects binding the data by keyword wherever the
        signatures name them, so a known loss stays recognisable: with
        ``loss_fn=jaxcurv.softmax_cross_entropy`` the Gauss-Newton operator built from them
        (and so ``hessian_free(curvature="ggn")``) applies the loss Hessian in closed form.

        What the Gauss-Newton functions take: ``jaxcurv.ggn_operator(*objective.bind(x=x,
        y=y), params)`` uses this object's routing (``model_keys``, positional data) and
        works for models that also return state.

        Example:
          >>> import jax.numpy as jnp
          >>> from jaxcurv import ModelAndLoss
          >>> obj = ModelAndLoss(lambda w, x: (x @ w, "aux"), lambda o, y: jnp.sum((o - y) ** 2),
          ...                    model_has_aux=True)
          >>> model, loss = obj.bind(x=jnp.eye(2), y=jnp.ones(2))
          >>> model(jnp.ones(2)), float(loss(jnp.zeros(2)))
          (Array([1., 1.], dtype=float32), 2.0)
        """
        plain = self.without_aux()
        (m_args, l_args), (m_kw, l_kw) = plain.split_args(args), plain.split_kwargs(kwargs)
        return _bound(plain.model_fn, m_args, m_kw), _bound(plain.loss_fn, l_args, l_kw)


def _call_after_first(fn: Callable, args: tuple, kwargs: dict, first: Any) -> Any:
    return fn(first, *args, **kwargs)


def _bound(fn: Callable, args: tuple, kwargs: dict) -> Callable:
    """``first -> fn(first, *args, **kwargs)``, as ``functools.partial(fn, **keywords)``
    whenever the data can be bound by name.

    A keyword-only partial of a known loss is what :func:`jaxcurv.losses.closed_form_hessian`
    recognises, so ``ggn_operator(*objective.bind(...), params)`` (the optimizer's GGN)
    applies ``softmax_cross_entropy``'s Hessian in closed form instead of differentiating
    it twice. Positional data are named by ``fn``'s signature; when they cannot be (``*args``,
    positional-only parameters, no signature) the binding still works, on the generic path.

    Example:
      >>> import functools
      >>> import jax.numpy as jnp
      >>> from jaxcurv import softmax_cross_entropy
      >>> loss = _bound(softmax_cross_entropy, (jnp.array([1]),), {})
      >>> isinstance(loss, functools.partial), sorted(loss.keywords)
      (True, ['labels'])
    """
    generic = functools.partial(_call_after_first, fn, tuple(args), dict(kwargs))
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return generic
    kinds = [p.kind for p in params.values()]
    if not kinds or kinds[0] not in _POSITIONAL:
        return generic
    try:
        bound = inspect.signature(fn).bind_partial(None, *args, **kwargs).arguments
    except TypeError:  # let the call itself raise its usual error
        return generic
    named: dict[str, Any] = {}
    for name, value in list(bound.items())[1:]:
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind in _NAMED:
            named[name] = value
        else:  # positional-only or *args: no name to bind by
            return generic
    return functools.partial(fn, **named)


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
