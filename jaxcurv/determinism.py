r"""Run-to-run determinism of the loss, the gradient and the curvature products.

Second-order methods amplify tiny differences: conjugate gradient and Lanczos feed every
product into the next, so two runs that differ in the last bit of one Hessian-vector
product can take visibly different optimizer steps. Non-determinism usually comes from the
backend (unordered atomic adds in GPU scatters and reductions, some cuDNN/cuBLAS
algorithms), sometimes from the user's function (host-side randomness, mutable globals).
:func:`check_determinism` computes the quantities a curvature method consumes several times
from the same inputs and reports any difference, as curvlinops' ``check_deterministic``
does for its linear operators. Call it once, outside ``jax.jit``, on a batch of the
training data before a long run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcurv._checks import (
    check_callable,
    check_instance,
    check_int,
    check_key,
    check_non_negative,
    check_real_inputs,
)
from jaxcurv.model_and_loss import ModelAndLoss
from jaxcurv.products import ggn_vp, hvp
from jaxcurv.tree import tree_random_normal

PyTree = Any

__all__ = [
    "DeterminismReport",
    "check_determinism",
]

_FIX = (
    "On GPU, set XLA_FLAGS=--xla_gpu_deterministic_ops=true (slower, bit-reproducible "
    "reductions and scatters); otherwise look for host-side randomness or mutable state in "
    "`value_fn`."
)


@dataclasses.dataclass(frozen=True)
class DeterminismReport:
    """What :func:`check_determinism` found. Host-side values only (floats and bools).

    Attributes:
      deterministic: every repeat matched the first within ``atol + rtol * max|first|``
        (bit for bit with the defaults), NaNs and infs included.
      num_repeats: how many times each quantity was computed.
      max_abs_diff: quantity -> ``max_k max_i |q_k[i] - q_0[i]|`` over repeats ``k``; a
        NaN in one run but not in another counts as ``inf``.
      max_rel_diff: quantity -> ``max_abs_diff / max_i |q_0[i]|`` (0 when both are 0).
      all_finite: quantity -> whether the first run's value was finite everywhere.
      quantities: the names compared: ``"loss"``, ``"gradient"``, ``"hvp"`` and, for a
        ``ModelAndLoss`` objective, ``"ggn_vp"``.
    """

    deterministic: bool
    num_repeats: int
    max_abs_diff: dict[str, float]
    max_rel_diff: dict[str, float]
    all_finite: dict[str, bool]
    quantities: tuple[str, ...]
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def summary(self) -> str:
        """A few readable lines: the verdict, one line per quantity, and what to try."""
        exact = self.atol == 0 and self.rtol == 0
        rule = "bit for bit" if exact else f"within atol={self.atol:g}, rtol={self.rtol:g}"
        verdict = "deterministic" if self.deterministic else "NOT deterministic"
        lines = [f"{verdict}: {self.num_repeats} runs compared {rule}"]
        for q in self.quantities:
            note = "" if self.all_finite[q] else "  (non-finite values)"
            lines.append(
                f"  {q:<9} max abs diff {self.max_abs_diff[q]:.3g}, "
                f"max rel diff {self.max_rel_diff[q]:.3g}{note}"
            )
        if not self.deterministic:
            lines.append("  " + _FIX)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary


def _quantities(value_fn, params, v, args, extra_args, with_ggn):
    def f(p, *a):
        return value_fn(p, *a, **extra_args)

    loss, grad = jax.value_and_grad(f)(params, *args)
    out = {"loss": loss, "gradient": grad, "hvp": hvp(f, params, v, *args)}
    if with_ggn:
        out["ggn_vp"] = ggn_vp(value_fn.model_fn, value_fn.loss_fn, params, v, **extra_args)
    return out


def _compare(first: PyTree, other: PyTree) -> tuple[float, float]:
    """``(max abs diff, max |first|)`` over all leaves; matching NaNs/infs are equal."""
    max_abs, scale = 0.0, 0.0
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other)):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        diff = np.where(same, 0.0, np.abs(a - b))
        # A NaN in one run only, or infs of opposite sign, is an unbounded difference.
        diff = np.where(np.isnan(diff), np.inf, diff)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
        finite = a[np.isfinite(a)]
        if finite.size:
            scale = max(scale, float(np.abs(finite).max()))
    return max_abs, scale


def check_determinism(
    value_fn: Callable[..., jax.Array],
    params: PyTree,
    *args: Any,
    key: jax.Array | None = None,
    num_repeats: int = 2,
    extra_args: Mapping[str, Any] | None = None,
    atol: float = 0.0,
    rtol: float = 0.0,
    retrace: bool = False,
) -> DeterminismReport:
    r"""Compute loss, gradient and curvature products repeatedly and compare the runs.

    Each run evaluates, at the same ``params`` and data, the loss
    :math:`f(\theta)`, the gradient :math:`\nabla f(\theta)` and the Hessian-vector product
    :math:`\nabla^2 f(\theta)\, v` along one random direction ``v`` drawn from ``key``;
    for a :class:`~jaxcurv.ModelAndLoss` objective also the Gauss-Newton
    product :math:`J^\top H_\ell J v`. All runs use one compiled function (``retrace=True``
    compiles a fresh one per run, which also catches trace-time randomness or mutable
    globals in ``value_fn``). Runs are compared against the first; with the default
    ``atol = rtol = 0`` any differing bit is reported.

    Call it outside ``jax.jit``: it returns Python values. Parameters and data may be
    sharded; the check runs where they live.

    Args:
      value_fn: the objective, ``value_fn(params, *args, **extra_args) -> scalar``.
      params: the point, a pytree of real floating-point arrays.
      *args: further positional arguments of ``value_fn`` (data, targets).
      key: PRNG key for the direction ``v``; ``None`` uses ``jax.random.key(0)``. The
        verdict does not depend on it: any direction shows a non-deterministic product.
      num_repeats: how many runs, at least 2.
      extra_args: keyword arguments of ``value_fn`` (the ``**extra_args`` of
        ``hessian_free(...).update``), e.g. ``{"x": inputs, "y": targets}``.
      atol: absolute tolerance per entry; 0 asks for bitwise equality.
      rtol: tolerance relative to the largest magnitude of each quantity.
      retrace: compile afresh for every run instead of reusing one executable.

    Returns:
      A :class:`DeterminismReport`; ``report.deterministic`` is the verdict and
      ``print(report)`` shows the per-quantity differences.

    Raises:
      TypeError: ``value_fn`` not callable, non-float ``params``, ``num_repeats`` not an
        int, a bad ``key``, ``atol``/``rtol`` not a number, ``extra_args`` not a mapping,
        or a traced ``params`` (called inside ``jit``).
      ValueError: ``num_repeats < 2``, negative or non-finite ``atol``/``rtol``, a
        non-scalar ``value_fn``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcurv.determinism import check_determinism
      >>> f = lambda w, x: jnp.mean(jnp.tanh(x @ w) ** 2)
      >>> report = check_determinism(f, jnp.ones(3), jnp.eye(3))
      >>> report.deterministic, report.quantities
      (True, ('loss', 'gradient', 'hvp'))

    References:
      curvlinops (F. Dangel et al., github.com/f-dangel/curvlinops): the
      ``check_deterministic`` option of its curvature operators, which this mirrors.
    """
    check_callable(
        "check_determinism(value_fn)",
        value_fn,
        fix="Pass the loss function `value_fn(params, *args) -> scalar`.",
    )
    check_int(
        "check_determinism(num_repeats=...)",
        num_repeats,
        minimum=2,
        requirement="at least 2 (one run has nothing to be compared with)",
    )
    for name, tol in (("atol", atol), ("rtol", rtol)):
        check_non_negative(
            f"check_determinism({name}=...)",
            tol,
            finite=True,
            requirement="a non-negative finite number",
            fix="Use 0 to require bitwise equality.",
        )
    if extra_args is None:
        extra_args = {}
    check_instance(
        "check_determinism(extra_args=...)",
        extra_args,
        Mapping,
        "a mapping of keyword arguments for `value_fn`",
        fix="Pass e.g. `extra_args={'x': x, 'y': y}`; positional data goes in `*args`.",
    )
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(params)):
        raise TypeError(
            "`check_determinism` returns Python values and cannot run under `jax.jit` / "
            "`jax.vmap`: `params` is traced. Call it outside the jitted step."
        )
    check_real_inputs("check_determinism", params, "`params`")
    extra_args = dict(extra_args)
    out = jax.eval_shape(lambda p, a, kw: value_fn(p, *a, **kw), params, args, extra_args)
    if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"`check_determinism(value_fn)` must return a real scalar loss, got "
            f"{getattr(out, 'shape', type(out).__name__)} "
            f"{getattr(out, 'dtype', '')}. Reduce it with `jnp.mean` or `jnp.sum`."
        )
    key = jax.random.key(0) if key is None else check_key("check_determinism", key)
    with_ggn = isinstance(value_fn, ModelAndLoss) and not args
    v = tree_random_normal(key, params)

    def compute(p, v, a, kw):
        return _quantities(value_fn, p, v, a, kw, with_ggn)

    def fresh_jit():
        # jit caches on the function object: a new closure forces a new trace.
        return jax.jit(lambda p, v, a, kw: compute(p, v, a, kw))

    compiled = fresh_jit()
    runs = []
    for _ in range(num_repeats):
        fn = fresh_jit() if retrace else compiled
        runs.append(jax.block_until_ready(fn(params, v, args, extra_args)))

    names = tuple(q for q in ("loss", "gradient", "hvp", "ggn_vp") if q in runs[0])
    max_abs = dict.fromkeys(names, 0.0)
    scale = dict.fromkeys(names, 0.0)
    for other in runs[1:]:
        for q in names:
            d, s = _compare(runs[0][q], other[q])
            max_abs[q] = max(max_abs[q], d)
            scale[q] = max(scale[q], s)
    max_rel = {
        q: (0.0 if max_abs[q] == 0 else (max_abs[q] / scale[q] if scale[q] > 0 else math.inf))
        for q in names
    }
    finite = {
        q: all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(runs[0][q]))
        for q in names
    }
    ok = all(max_abs[q] <= atol + rtol * scale[q] for q in names)
    return DeterminismReport(
        deterministic=ok,
        num_repeats=num_repeats,
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        all_finite=finite,
        quantities=names,
        atol=float(atol),
        rtol=float(rtol),
    )
