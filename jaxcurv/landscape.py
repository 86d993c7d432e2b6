"""Loss-landscape analysis: the curvature of a loss at a point, from Hessian-vector products.

:func:`analyze_landscape` measures, at parameters ``x`` of a scalar loss ``f(x, *args)``:
the loss and its gradient norm, the ``top_k`` largest and ``bottom_k`` smallest Hessian
eigenvalues (Lanczos, or dense below a size threshold), the critical-point kind the seed's
eigenvalue rule gives, a Hutchinson estimate of the trace, the spectral density by
stochastic Lanczos quadrature, and 1-D / 2-D slices of the loss along the top two
eigenvectors (:func:`loss_slices`). It is numerics only: everything comes back as arrays in
:class:`Landscape` (a ``NamedTuple``), and all of it is computed by the public API --
:func:`jaxcurv.hessian_operator`, :func:`jaxcurv.eigenvalues`,
:func:`jaxcurv.classify_critical_point`, :func:`jaxcurv.hutchinson_trace` and
:func:`jaxcurv.spectral_density` -- on one linearized Hessian operator.

References:
  Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via Hessian
  eigenvalue density", ICML 2019 (spectra of network Hessians by SLQ).
  Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural nets",
  NeurIPS 2018 (loss surfaces along chosen directions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_int, check_positive
from jaxcurv._compile import compiled_call
from jaxcurv.critical_points import CriticalPoint, classify_critical_point
from jaxcurv.density import SpectralDensity, spectral_density
from jaxcurv.eigensolvers import eigenvalues
from jaxcurv.products import hessian_operator
from jaxcurv.trace_estimators import TraceEstimate, hutchinson_trace

PyTree = Any

__all__ = ["Landscape", "LossSlices", "analyze_landscape", "loss_slices"]


class LossSlices(NamedTuple):
    """The loss along one or two directions through a point ``x``.

    Attributes:
      t: ``(p,)`` offsets, from ``-radius`` to ``radius``.
      along_1d: ``(p,)``, ``f(x + t_i v1)``.
      along_2d: ``(p, p)``, ``f(x + t_i v1 + t_j v2)``; ``None`` without a ``v2``.
    """

    t: jax.Array
    along_1d: jax.Array
    along_2d: jax.Array | None


class Landscape(NamedTuple):
    """What :func:`analyze_landscape` measures at a point.

    Attributes:
      value: scalar, the loss ``f(x)``.
      gradient_norm: scalar, ``||grad f(x)||``.
      top_eigenvalues: ``(top_k,)`` largest Hessian eigenvalues, descending.
      top_residuals: ``(top_k,)`` ``||H v - lambda v||`` of each top pair (convergence).
      top_eigenvectors: the matching unit eigenvectors: a pytree like ``x`` whose leaves
        carry a leading ``top_k`` axis, in the order of ``top_eigenvalues``.
      bottom_eigenvalues: ``(bottom_k,)`` smallest Hessian eigenvalues, ascending.
      critical_point: the :class:`jaxcurv.CriticalPoint` of the seed's eigenvalue rule.
      trace: a :class:`jaxcurv.TraceEstimate` (Hutchinson) of ``tr(H)``.
      density: a :class:`jaxcurv.SpectralDensity` (stochastic Lanczos quadrature).
      slices: :class:`LossSlices` along the top eigenvector (and the second one).
      num_parameters: ``N``, the number of scalars in ``x``.
    """

    value: jax.Array
    gradient_norm: jax.Array
    top_eigenvalues: jax.Array
    top_residuals: jax.Array
    top_eigenvectors: PyTree
    bottom_eigenvalues: jax.Array
    critical_point: CriticalPoint
    trace: TraceEstimate
    density: SpectralDensity
    slices: LossSlices
    num_parameters: int


def _slices_impl(fun, x, v1, v2, t, args):
    def shift(tree, c, u):
        return jax.tree.map(lambda p, d: p + c.astype(p.dtype) * d.astype(p.dtype), tree, u)

    def loss_at(a, b):
        q = shift(x, a, v1)
        return fun(q if v2 is None else shift(q, b, v2), *args)

    along_1d = jax.vmap(lambda a: loss_at(a, jnp.zeros_like(a)))(t)
    if v2 is None:
        return LossSlices(t, along_1d, None)
    grid_a, grid_b = jnp.meshgrid(t, t, indexing="ij")
    return LossSlices(t, along_1d, jax.vmap(jax.vmap(loss_at))(grid_a, grid_b))


def loss_slices(
    fun: Callable,
    x: PyTree,
    v1: PyTree,
    v2: PyTree | None = None,
    *args: Any,
    radius: float = 1.0,
    num_points: int = 21,
) -> LossSlices:
    r"""The loss along ``v1`` (and over the plane of ``v1``, ``v2``) through ``x``.

    .. math:: s_1(a) = f(x + a v_1), \qquad s_2(a, b) = f(x + a v_1 + b v_2),

    for ``a, b`` on ``num_points`` evenly spaced offsets in ``[-radius, radius]``; all
    ``num_points (1 + num_points)`` evaluations run in one vectorized, jitted call.

    Args:
      fun: scalar loss ``f(x, *args)``.
      x: the point, a pytree of float arrays.
      v1, v2: directions, pytrees like ``x`` (``v2`` may be ``None``: no 2-D slice).
      *args: further arguments of ``fun`` (data), held fixed.
      radius: half-width of the offsets, in units of the directions' lengths.
      num_points: offsets per axis (odd counts include ``x`` itself, at the centre).

    Returns:
      :class:`LossSlices` ``(t, along_1d, along_2d)``.

    Raises:
      ValueError: ``num_points < 2`` or ``radius <= 0``.

    Example (:math:`f = x^2 + 3xy + y^2` along the axes: :math:`a^2` and :math:`a^2 + 3ab + b^2`):
      >>> import jax.numpy as jnp
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> s = loss_slices(f, jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]),
      ...                 num_points=3)
      >>> s.along_1d.tolist(), s.along_2d.tolist()
      ([1.0, 0.0, 1.0], [[5.0, 1.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 1.0, 5.0]])

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural
      nets", NeurIPS 2018.
    """
    num_points = check_int(
        "loss_slices(num_points=...)", num_points, minimum=2, fix="A slice needs both of its ends."
    )
    check_positive(
        "loss_slices(radius=...)",
        radius,
        fix="It is the half-width of the offsets, in units of the directions' lengths.",
    )
    dtype = jnp.result_type(*jax.tree.leaves(x))
    t = jnp.linspace(-radius, radius, num_points, dtype=dtype)
    # One compile per computation and shapes (`jaxcurv._compile`): a second point, batch or
    # closure of the same model compiles nothing.
    return compiled_call(lambda *a: _slices_impl(fun, *a), x, v1, v2, t, args)


def analyze_landscape(
    fun: Callable,
    x: PyTree,
    *args: Any,
    key: jax.Array,
    top_k: int = 5,
    bottom_k: int = 5,
    num_lanczos: int = 40,
    trace_samples: int = 30,
    density_probes: int = 4,
    slice_points: int = 21,
    slice_radius: float = 1.0,
    dense_threshold: int = 1024,
) -> Landscape:
    r"""The curvature of the loss ``f(x, *args)`` at ``x``: spectrum, kind, trace, slices.

    The Hessian :math:`H` of ``f`` at ``x`` is linearized once
    (:func:`jaxcurv.hessian_operator`) and every estimate runs on its products:

    - the extreme eigenpairs, ``k = max(top_k, bottom_k)`` from each end
      (:func:`jaxcurv.eigenvalues`, ``which="both"``): Lanczos with ``num_lanczos`` steps,
      or a dense ``eigh`` when ``N <= dense_threshold``;
    - the critical-point kind (:func:`jaxcurv.classify_critical_point`, same ``k``,
      Lanczos steps, key and threshold): minimum, maximum, saddle, degenerate or not
      critical;
    - :math:`\mathrm{tr}(H)` from ``trace_samples`` Rademacher probes
      (:func:`jaxcurv.hutchinson_trace`);
    - the eigenvalue density from ``density_probes`` Lanczos runs
      (:func:`jaxcurv.spectral_density`);
    - the loss along the top eigenvector and over the plane of the top two
      (:func:`loss_slices`).

    Args:
      fun: scalar loss ``f(x, *args)``. A hashable ``fun`` (a module-level function, a
        frozen dataclass) lets every step reuse its compiled code at the next point.
      x: the point, a pytree of real float arrays.
      *args: further arguments of ``fun`` (data), held fixed.
      key: PRNG key of the random starts and probes.
      top_k, bottom_k: how many of the largest / smallest eigenvalues to report (capped at
        what ``N`` allows).
      num_lanczos: Lanczos steps for the eigenvalues (raised to ``2 k + 2`` if lower) and
        per density probe; capped at ``N``.
      trace_samples: Hutchinson probes.
      density_probes: stochastic Lanczos quadrature probes.
      slice_points: offsets per slice axis.
      slice_radius: half-width of the slices along the unit eigenvectors.
      dense_threshold: form :math:`H` and diagonalize it exactly when ``N`` is at most
        this; ``0`` always uses Lanczos.

    Returns:
      A :class:`Landscape`.

    Raises:
      ValueError: a count below 1 (``trace_samples`` below 2, ``slice_points`` below 2),
        a non-positive ``slice_radius``, a negative ``dense_threshold``, or a non-scalar
        ``fun``. TypeError: a non-integer count, a bad ``key``, an integer ``x``.

    Example (the seed's :math:`x^2 + 3xy + y^2`: a saddle at the origin, Hessian
    eigenvalues 5 and -1, so the loss along the top eigenvector is :math:`5 t^2 / 2`):
      >>> import jax, jax.numpy as jnp
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> res = analyze_landscape(f, jnp.zeros(2), key=jax.random.key(0), top_k=1,
      ...                         bottom_k=1, slice_points=3)
      >>> res.top_eigenvalues.round(4).tolist(), res.bottom_eigenvalues.round(4).tolist()
      ([5.0], [-1.0])
      >>> res.critical_point.kind, res.slices.along_1d.round(4).tolist()
      ('saddle', [2.5, 0.0, 2.5])

    References:
      Pearlmutter, "Fast exact multiplication by the Hessian", Neural Computation 1994.
      Hutchinson, Commun. Stat. Simul. Comput. 1989 (trace).
      Ubaru, Chen and Saad, SIAM J. Matrix Anal. Appl. 2017 (stochastic Lanczos
      quadrature).
      Ghorbani, Krishnan and Xiao, ICML 2019.
    """
    name = "analyze_landscape({}=...)".format
    count = "Ask for at least one."
    top_k = check_int(name("top_k"), top_k, minimum=1, fix=count)
    bottom_k = check_int(name("bottom_k"), bottom_k, minimum=1, fix=count)
    num_lanczos = check_int(
        name("num_lanczos"), num_lanczos, minimum=1, fix="Pass a positive step count."
    )
    trace_samples = check_int(
        name("trace_samples"),
        trace_samples,
        minimum=2,
        fix="A standard error needs two probes or more.",
    )
    density_probes = check_int(name("density_probes"), density_probes, minimum=1, fix=count)
    slice_points = check_int(
        name("slice_points"), slice_points, minimum=2, fix="A slice needs both of its ends."
    )
    dense_threshold = check_int(
        name("dense_threshold"), dense_threshold, minimum=0, fix="Use 0 to always run Lanczos."
    )
    check_positive(
        name("slice_radius"),
        slice_radius,
        fix="It is the half-width of the slices along the unit eigenvectors.",
    )
    k_eig, k_trace, k_density = jax.random.split(key, 3)

    op = hessian_operator(fun, x, *args)
    n = op.size
    # `which="both"` takes k from each end, so at most N // 2; a smaller problem reports
    # its whole spectrum instead.
    k = max(top_k, bottom_k)
    both = 2 * k <= n
    top_k, bottom_k = min(top_k, n), min(bottom_k, n)
    wanted = 2 * k if both else n
    m = min(n, max(num_lanczos, wanted + 2))
    eig = eigenvalues(
        op,
        k if both else n,
        which="both" if both else "largest",
        key=k_eig,
        num_iters=m,
        return_eigenvectors=True,
        dense_threshold=dense_threshold,
    )
    # Same k, Lanczos steps, key and threshold: the classification sees the same spectrum.
    crit = classify_critical_point(
        fun,
        x,
        *args,
        k=k if both else max(1, n // 2),
        key=k_eig,
        num_iters=m,
        dense_threshold=dense_threshold,
    )
    trace = hutchinson_trace(op, k_trace, trace_samples)
    density = spectral_density(
        op, k_density, num_probes=density_probes, num_lanczos=min(n, num_lanczos)
    )

    # Ascending from eigenvalues(); the top ones are its tail, largest first.
    top = slice(-1, -top_k - 1, -1)
    top_vecs = jax.tree.map(lambda a: a[top], eig.eigenvectors)
    v1 = jax.tree.map(lambda a: a[0], top_vecs)
    v2 = jax.tree.map(lambda a: a[1], top_vecs) if top_k >= 2 else None
    slices = loss_slices(fun, x, v1, v2, *args, radius=slice_radius, num_points=slice_points)
    return Landscape(
        value=op.value,
        gradient_norm=crit.gradient_norm,
        top_eigenvalues=eig.eigenvalues[top],
        top_residuals=eig.residual_norms[top],
        top_eigenvectors=top_vecs,
        bottom_eigenvalues=eig.eigenvalues[:bottom_k],
        critical_point=crit,
        trace=trace,
        density=density,
        slices=slices,
        num_parameters=n,
    )
