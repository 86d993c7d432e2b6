"""Loss-landscape analysis: the curvature of a loss at a point, from Hessian-vector products.

:func:`analyze_landscape` measures, at parameters ``x`` of a scalar loss ``f(x, *args)``:
the loss and its gradient norm, the ``top_k`` largest and ``bottom_k`` smallest Hessian
eigenvalues with a residual and a converged flag each (thick-restart Lanczos until they
converge or a stated budget is spent, or dense below a size threshold), the
critical-point kind the seed's eigenvalue rule gives on that same spectrum, a Hutchinson
estimate of the trace, the spectral density by stochastic Lanczos quadrature, and 1-D /
2-D slices of the loss along the top two eigenvectors or any directions
(:func:`loss_slices`, with the quadratic model beside the 1-D slice). Everything comes
back as arrays in ``NamedTuple`` results, computed on one linearized Hessian operator.

References:
  Ghorbani, Krishnan and Xiao, "An investigation into neural net optimization via Hessian
  eigenvalue density", ICML 2019 (spectra of network Hessians by SLQ).
  Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural nets",
  NeurIPS 2018 (loss surfaces along chosen directions).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import (
    check_int,
    check_key,
    check_non_negative,
    check_option,
    check_positive,
    deprecated_keywords,
    renamed_keyword,
)
from jaxcurv._compile import compiled_call
from jaxcurv._dispatch import DENSE_THRESHOLD
from jaxcurv.critical_points import CriticalPoint, critical_point_of_spectrum
from jaxcurv.density import SpectralDensity, spectral_density
from jaxcurv.extreme_eigenpairs import default_tol, extreme_eigenpairs
from jaxcurv.products import hessian_operator
from jaxcurv.trace_estimators import TraceEstimate, hutchinson_trace
from jaxcurv.tree import tree_check_like, tree_vdot

PyTree = Any

__all__ = ["Landscape", "LossSlices", "analyze_landscape", "loss_slices"]


class LossSlices(NamedTuple):
    """The loss along one or two directions through a point ``x``.

    Attributes:
      t: ``(p,)`` offsets, ascending, in units of the directions (``x + t d``).
      along_1d: ``(p,)``, ``f(x + t_i d_1)``.
      along_2d: ``(p, p)``, ``f(x + t_i d_1 + t_j d_2)``; ``None`` with one direction.
      value: scalar, ``f(x)``.
      slope: scalar, ``g . d_1``, the derivative of the 1-D slice at ``t = 0``.
      curvature: scalar, ``lambda = d_1^T H d_1 / ||d_1||^2``: the Hessian's curvature
        along ``d_1`` (its Rayleigh quotient; an eigenvalue for an eigenvector).
      direction_norm: scalar, ``||d_1||``.
      quadratic_1d: ``(p,)``, the second-order Taylor model of the 1-D slice,
        ``value + slope t + 1/2 curvature ||d_1||^2 t^2``, at the same offsets.
    """

    t: jax.Array
    along_1d: jax.Array
    along_2d: jax.Array | None
    value: jax.Array | None = None
    slope: jax.Array | None = None
    curvature: jax.Array | None = None
    direction_norm: jax.Array | None = None
    quadratic_1d: jax.Array | None = None


class Landscape(NamedTuple):
    """What :func:`analyze_landscape` measures at a point.

    Attributes:
      value: scalar, the loss ``f(x)``.
      gradient_norm: scalar, ``||grad f(x)||``.
      top_eigenvalues: ``(top_k,)`` largest Hessian eigenvalues, descending.
      top_residuals: ``(top_k,)`` ``||H v - lambda v||`` of each top pair: the eigenvalue
        is within this of a true eigenvalue.
      top_eigenvectors: the matching unit eigenvectors: a pytree like ``x`` whose leaves
        carry a leading ``top_k`` axis, in the order of ``top_eigenvalues``.
      bottom_eigenvalues: ``(bottom_k,)`` smallest Hessian eigenvalues, ascending.
      critical_point: the :class:`jaxcurv.CriticalPoint` of the seed's eigenvalue rule,
        decided on the spectrum computed here (both ends, or all of it when dense).
      trace: a :class:`jaxcurv.TraceEstimate` (Hutchinson) of ``tr(H)``.
      density: a :class:`jaxcurv.SpectralDensity` (stochastic Lanczos quadrature).
      slices: :class:`LossSlices` along the top eigenvector and the second one (or the
        ``slice_directions`` given).
      num_parameters: ``N``, the number of scalars in ``x``.
      top_converged: ``(top_k,)`` bools: the pair met ``residual <= eigen_tol *
        max(|lambda|, eps^(2/3) max_j |lambda_j|)`` (:func:`jaxcurv.eigenvalues`' test).
      bottom_residuals, bottom_converged: the same for ``bottom_eigenvalues``.
      eigen_tol: the relative residual the eigenvalues were asked to meet.
      eigen_method: ``"dense"`` (exact ``eigh``) or ``"thick-restart"`` (Lanczos).
      num_matvecs: Hessian-vector products spent in all (eigenvalues, trace, density and
        the slice's curvature).
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
    top_converged: jax.Array | None = None
    bottom_residuals: jax.Array | None = None
    bottom_converged: jax.Array | None = None
    eigen_tol: float | None = None
    eigen_method: str | None = None
    num_matvecs: int | None = None


# ----------------------------------------------------------------------------- slices


def _slices_impl(fun, x, directions, t, args):
    d1 = directions[0]

    def shift(tree, c, u):
        return jax.tree.map(lambda p, d: p + c.astype(p.dtype) * d.astype(p.dtype), tree, u)

    def loss_at(a, b):
        q = shift(x, a, d1)
        return fun(q if len(directions) == 1 else shift(q, b, directions[1]), *args)

    along_1d = jax.vmap(lambda a: loss_at(a, jnp.zeros_like(a)))(t)
    along_2d = None
    if len(directions) == 2:
        grid_a, grid_b = jnp.meshgrid(t, t, indexing="ij")
        along_2d = jax.vmap(jax.vmap(loss_at))(grid_a, grid_b)
    # One Hessian-vector product (forward over reverse, Pearlmutter 1994) gives both the
    # gradient and H d: the whole quadratic model f + g.d t + 1/2 d^T H d t^2.
    value = fun(x, *args)
    g, hd = jax.jvp(lambda p: jax.grad(fun)(p, *args), (x,), (d1,))
    slope, dhd, dd = tree_vdot(g, d1), tree_vdot(d1, hd), tree_vdot(d1, d1)
    quadratic = value + slope * t + 0.5 * dhd * t * t
    curvature = dhd / jnp.where(dd > 0, dd, 1)
    return LossSlices(t, along_1d, along_2d, value, slope, curvature, jnp.sqrt(dd), quadratic)


def _offsets(radius: float, num_points: int, spacing: str, dtype) -> jax.Array:
    s = jnp.linspace(-1.0, 1.0, num_points, dtype=dtype)
    if spacing == "uniform":
        return radius * s
    # t = r (s + 3 s^3) / 4: a quarter of the uniform spacing at 0, where a curve with a
    # minimum bends most, and 2.5 times it at the ends; the ends, and 0 for odd counts,
    # stay where a uniform grid puts them. A polygon through few points near a minimum
    # draws a kink that is not in the loss.
    return radius * (s + 3.0 * s**3) / 4.0


def _as_directions(x: PyTree, directions: Any) -> tuple[PyTree, ...]:
    """``directions`` as a tuple of one or two pytrees like ``x``."""
    like = jax.tree.structure(x)
    if jax.tree.structure(directions) == like:
        out = (directions,)
    elif isinstance(directions, tuple | list) and 1 <= len(directions) <= 2:
        out = tuple(directions)
    else:
        raise ValueError(
            f"`loss_slices(directions=...)` must be one direction shaped like `x` or a tuple "
            f"of one or two, got {jax.tree.structure(directions)} while `x` is {like}. Pass "
            "e.g. `directions=(d1, d2)` with `d1 = random_direction(key, x)`."
        )
    for i, d in enumerate(out):
        tree_check_like(f"loss_slices(directions[{i}])", d, x)
    return out


_NOT_GIVEN: Any = object()


def _old_positional_form(args: tuple, v2: Any) -> tuple[tuple, tuple]:
    """``(directions, data)`` of a call in the old form ``loss_slices(fun, x, v1, v2, *args)``."""
    if not args:
        raise TypeError(
            "`loss_slices` needs the directions to slice along: pass "
            "`loss_slices(fun, x, *args, directions=(d1, d2))`."
        )
    warnings.warn(
        "`loss_slices(fun, x, v1, v2, *args)` is deprecated and will be removed in the next "
        "release; write `loss_slices(fun, x, *args, directions=(v1, v2))` (data after the "
        "point, as in every other jaxcurv function).",
        DeprecationWarning,
        stacklevel=3,
    )
    v1, rest = args[0], args[1:]
    if v2 is _NOT_GIVEN:
        v2, rest = (rest[0], rest[1:]) if rest else (None, rest)
    return ((v1,) if v2 is None else (v1, v2)), rest


def loss_slices(
    fun: Callable,
    x: PyTree,
    *args: Any,
    directions: Any = None,
    radius: float = 1.0,
    num_points: int = 21,
    spacing: str = "refined",
    offsets: jax.typing.ArrayLike | None = None,
    v2: Any = _NOT_GIVEN,
) -> LossSlices:
    r"""The loss along ``d_1`` (and over the plane of ``d_1``, ``d_2``) through ``x``.

    .. math:: s_1(t) = f(x + t d_1), \qquad s_2(a, b) = f(x + a d_1 + b d_2),

    beside the quadratic model of the 1-D slice from one Hessian-vector product,
    :math:`q(t) = f(x) + t\, g^\top d_1 + \tfrac12 t^2 d_1^\top H d_1`, which it matches
    to :math:`O(t^3)`. The directions can be anything shaped like ``x``: top
    eigenvectors (what :func:`analyze_landscape` uses), filter-normalized random
    directions (:func:`jaxcurv.random_direction`, Li et al. 2018), or the difference of two
    checkpoints (:func:`jaxcurv.linear_interpolation`). All evaluations run in one vectorized,
    compiled call.

    Args:
      fun: scalar loss ``f(x, *args)``.
      x: the point, a pytree of float arrays.
      *args: further arguments of ``fun`` (data), held fixed.
      directions: one direction (a pytree like ``x``) or a tuple of one or two.
      radius: half-width of the offsets, in units of the directions' lengths.
      num_points: offsets per axis (odd counts include ``x`` itself, at the centre).
      spacing: ``"refined"`` (default: 4x denser near 0, where a minimum bends most, so
        the drawn curve has no kink there from the grid) or ``"uniform"``.
      offsets: explicit 1-D offsets ``t`` (at least two), instead of ``radius``,
        ``num_points`` and ``spacing``.
      v2: deprecated, with the old positional form ``loss_slices(fun, x, v1, v2,
        *args)``, which still works for one release (``DeprecationWarning``; it keeps
        the uniform grid it had).

    Returns:
      :class:`LossSlices`.

    Raises:
      ValueError: ``num_points < 2``, ``radius <= 0``, an unknown ``spacing``, offsets
        that are not a 1-D array of two or more, directions unlike ``x``. TypeError: no
        directions at all.

    Example (:math:`f = x^2 + 3xy + y^2` along the axes: :math:`a^2` and :math:`a^2 + 3ab + b^2`):
      >>> import jax.numpy as jnp
      >>> f = lambda p: p[0] ** 2 + 3 * p[0] * p[1] + p[1] ** 2
      >>> e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
      >>> s = loss_slices(f, jnp.zeros(2), directions=(e1, e2), num_points=3)
      >>> s.along_1d.tolist(), s.along_2d.tolist(), float(s.curvature)
      ([1.0, 0.0, 1.0], [[5.0, 1.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 1.0, 5.0]], 2.0)

    References:
      Li, Xu, Taylor, Studer and Goldstein, "Visualizing the loss landscape of neural
      nets", NeurIPS 2018.
    """
    if directions is None:
        directions, args = _old_positional_form(args, v2)
        spacing = "uniform"
    elif v2 is not _NOT_GIVEN:
        raise TypeError("`loss_slices(v2=...)` is the old form; pass `directions=(d1, d2)`.")
    directions = _as_directions(x, directions)
    dtype = jnp.result_type(*jax.tree.leaves(x))
    if offsets is None:
        num_points = check_int(
            "loss_slices(num_points=...)",
            num_points,
            minimum=2,
            fix="A slice needs both of its ends.",
        )
        check_positive(
            "loss_slices(radius=...)",
            radius,
            fix="It is the half-width of the offsets, in units of the directions' lengths.",
        )
        check_option("loss_slices(spacing=...)", spacing, ("refined", "uniform"))
        t = _offsets(radius, num_points, spacing, dtype)
    else:
        t = jnp.asarray(offsets, dtype=dtype)
        if t.ndim != 1 or t.size < 2:
            raise ValueError(
                f"`loss_slices(offsets=...)` must be a 1-D array of two or more offsets, got "
                f"shape {t.shape}. Pass e.g. `jnp.linspace(-1.0, 1.0, 21)`."
            )
    # One compile per computation and shapes (`jaxcurv._compile`): a second point, batch or
    # closure of the same model compiles nothing.
    return compiled_call(lambda *a: _slices_impl(fun, *a), x, directions, t, args)


# ------------------------------------------------------------------------- analysis


# The documented defaults of the budgets whose signature default is None (None says the
# keyword was not given, so its deprecated spelling may be).
DEFAULTS = {"num_steps": 40, "trace_num_samples": 30, "density_num_samples": 4}


def _check_counts(top_k, bottom_k, maxiter, num_steps, trace_n, density_n, points, dense):
    name = "analyze_landscape({}=...)".format
    count = "Ask for at least one."
    return (
        check_int(name("top_k"), top_k, minimum=1, fix=count),
        check_int(name("bottom_k"), bottom_k, minimum=1, fix=count),
        check_int(name("maxiter"), maxiter, minimum=1, fix="Pass a positive product budget."),
        check_int(name("num_steps"), num_steps, minimum=1, fix="Pass a positive step count."),
        check_int(
            name("trace_num_samples"),
            trace_n,
            minimum=2,
            fix="A standard error needs two probes or more.",
        ),
        check_int(name("density_num_samples"), density_n, minimum=1, fix=count),
        check_int(name("slice_points"), points, minimum=2, fix="A slice needs both of its ends."),
        check_int(name("dense_threshold"), dense, minimum=0, fix="Use 0 to always run Lanczos."),
    )


@deprecated_keywords(
    num_lanczos="num_steps",
    trace_samples="trace_num_samples",
    density_probes="density_num_samples",
)
def analyze_landscape(
    fun: Callable,
    x: PyTree,
    *args: Any,
    key: jax.Array,
    top_k: int = 5,
    bottom_k: int = 5,
    maxiter: int = 1000,
    tol: float | None = None,
    num_steps: int | None = None,
    trace_num_samples: int | None = None,
    density_num_samples: int | None = None,
    slice_points: int = 21,
    slice_radius: float = 1.0,
    slice_directions: Any = None,
    dense_threshold: int = DENSE_THRESHOLD,
    num_lanczos: int | None = None,
    trace_samples: int | None = None,
    density_probes: int | None = None,
) -> Landscape:
    r"""The curvature of the loss ``f(x, *args)`` at ``x``: spectrum, kind, trace, slices.

    The Hessian :math:`H` of ``f`` at ``x`` is linearized once
    (:func:`jaxcurv.hessian_operator`) and every estimate runs on its products:

    - the extreme eigenpairs, ``k = max(top_k, bottom_k)`` from each end
      (:func:`jaxcurv.eigenvalues`, ``which="both"``, thick-restart Lanczos): the run
      stops when every one of the ``2 k`` pairs has ``residual <= tol * max(|lambda|,
      eps^(2/3) ||H||)``, or after ``maxiter`` products; each pair reports its residual
      and whether it met that test (``top_converged``, ``bottom_converged``), so an
      eigenvalue that did not converge is never passed off as one. When
      ``N <= dense_threshold`` the Hessian is formed and diagonalized exactly instead;
    - the critical-point kind (the rule of :func:`jaxcurv.classify_critical_point`, with
      its default tolerances) on that same spectrum, computed once;
    - :math:`\mathrm{tr}(H)` from ``trace_num_samples`` Rademacher probes
      (:func:`jaxcurv.hutchinson_trace`);
    - the eigenvalue density from ``density_num_samples`` Lanczos runs of ``num_steps``
      steps (:func:`jaxcurv.spectral_density`);
    - the loss along the top eigenvector and over the plane of the top two, or along
      ``slice_directions``, with the quadratic model beside the 1-D slice
      (:func:`loss_slices`).

    Args:
      fun: scalar loss ``f(x, *args)``. A hashable ``fun`` (a module-level function, a
        frozen dataclass) lets every step reuse its compiled code at the next point.
      x: the point, a pytree of real float arrays.
      *args: further arguments of ``fun`` (data), held fixed.
      key: PRNG key of the random starts and probes.
      top_k, bottom_k: how many of the largest / smallest eigenvalues to report (capped at
        what ``N`` allows).
      maxiter: the most Hessian-vector products the eigenvalues may spend (at least
        ``2 k + 1``); the run stops earlier once they all converge.
      tol: the relative residual of a converged eigenpair (above); default ``1e-5`` for
        float32, ``1e-8`` for float64 (:func:`jaxcurv.eigenvalues`' defaults).
      num_steps: Lanczos steps per density probe (capped at ``N``); default 40.
      trace_num_samples: Hutchinson probes; default 30.
      density_num_samples: stochastic Lanczos quadrature probes; default 4.
      slice_points: offsets per slice axis (refined near 0, see :func:`loss_slices`).
      slice_radius: half-width of the slices, in units of the directions.
      slice_directions: ``None`` (the top two unit eigenvectors), or one or two
        directions like ``x`` (e.g. :func:`jaxcurv.random_direction`).
      dense_threshold: form :math:`H` and diagonalize it exactly when ``N`` is at most
        this; ``0`` always uses Lanczos.
      num_lanczos, trace_samples, density_probes: deprecated spellings of ``num_steps``,
        ``trace_num_samples`` and ``density_num_samples`` (``DeprecationWarning``).

    Returns:
      A :class:`Landscape`.

    Raises:
      ValueError: a count below 1 (``trace_num_samples`` below 2, ``slice_points`` below
        2), a non-positive ``slice_radius``, a negative ``dense_threshold`` or ``tol``, or
        a non-scalar ``fun``. TypeError: a non-integer count, a bad ``key``, an integer
        ``x``, an old and a new spelling of one keyword together.

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
      Wu and Simon, SIAM J. Matrix Anal. Appl. 2000 (thick-restart Lanczos).
      Hutchinson, Commun. Stat. Simul. Comput. 1989 (trace).
      Ubaru, Chen and Saad, SIAM J. Matrix Anal. Appl. 2017 (stochastic Lanczos
      quadrature).
      Ghorbani, Krishnan and Xiao, ICML 2019.
    """
    f = "analyze_landscape"
    # None defaults: whether a keyword was given is `is None`, never a value compared by
    # identity (small ints are cached, so `num_steps=40` would look like no `num_steps`).
    num_steps = renamed_keyword(f, "num_lanczos", num_lanczos, "num_steps", num_steps)
    trace_num_samples = renamed_keyword(
        f, "trace_samples", trace_samples, "trace_num_samples", trace_num_samples
    )
    density_num_samples = renamed_keyword(
        f, "density_probes", density_probes, "density_num_samples", density_num_samples
    )
    num_steps = DEFAULTS["num_steps"] if num_steps is None else num_steps
    if trace_num_samples is None:
        trace_num_samples = DEFAULTS["trace_num_samples"]
    if density_num_samples is None:
        density_num_samples = DEFAULTS["density_num_samples"]
    top_k, bottom_k, maxiter, num_steps, trace_n, density_n, points, threshold = _check_counts(
        top_k, bottom_k, maxiter, num_steps, trace_num_samples, density_num_samples,
        slice_points, dense_threshold,
    )  # fmt: skip
    check_positive(f"{f}(slice_radius=...)", slice_radius, fix="It is the slices' half-width.")
    if tol is not None:
        check_non_negative(f"{f}(tol=...)", tol, fix="Pass None for the dtype's default.")
    k_eig, k_trace, k_density = jax.random.split(check_key(f, key), 3)

    op = hessian_operator(fun, x, *args)
    n = op.size
    tol = default_tol(op.dtype) if tol is None else tol
    dense = n <= threshold
    eig, converged = extreme_eigenpairs(op, max(top_k, bottom_k), k_eig, maxiter, tol, dense)
    crit = critical_point_of_spectrum(
        op, x, eig.eigenvalues, method="dense" if dense else "lanczos",
        num_matvecs=eig.num_matvecs, residual_text="" if dense else
        f", largest Ritz residual {float(jnp.max(eig.residual_norms)):.3g}",
    )  # fmt: skip
    trace = hutchinson_trace(op, k_trace, trace_n)
    steps = min(n, num_steps)
    density = spectral_density(op, k_density, num_samples=density_n, num_steps=steps)

    # Ascending from eigenvalues(); the top ones are its tail, largest first.
    top_k, bottom_k = min(top_k, n), min(bottom_k, n)
    top = slice(-1, -top_k - 1, -1)
    top_vecs = jax.tree.map(lambda a: a[top], eig.eigenvectors)
    if slice_directions is None:
        pick = range(min(top_k, 2))
        slice_directions = tuple(jax.tree.map(lambda a, i=i: a[i], top_vecs) for i in pick)
    slices = loss_slices(
        fun, x, *args, directions=slice_directions, radius=slice_radius, num_points=points
    )
    spent = int(eig.num_matvecs) + int(trace.num_matvecs) + int(density.num_matvecs) + 1
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
        top_converged=converged[top],
        bottom_residuals=eig.residual_norms[:bottom_k],
        bottom_converged=converged[:bottom_k],
        eigen_tol=float(tol),
        eigen_method="dense" if dense else "thick-restart",
        num_matvecs=spent,
    )
