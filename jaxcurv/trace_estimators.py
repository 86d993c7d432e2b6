"""Randomized trace and diagonal estimates: Hutchinson and Hutch++."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcurv._checks import check_bounded_int, check_key, check_option
from jaxcurv._dispatch import LOOPS, _domain, _on_host, _run
from jaxcurv._host_hutchinson import host_diagonal, host_trace
from jaxcurv._lanczos import (
    _basis_combine,
    _basis_dot,
    _basis_get,
    _basis_set,
    _matvec_checked,
    _mean_and_stderr,
    _normalize,
    _orthogonalize,
    _probe_keys,
    _random_like,
    _real_dtype,
)
from jaxcurv.tree import (
    tree_norm,
    tree_sub,
    tree_vdot,
    tree_zeros_like,
)

PyTree = Any

__all__ = ["DiagonalEstimate", "TraceEstimate", "hutchinson_diagonal", "hutchinson_trace"]


_TRACE_METHODS = ("hutchinson", "hutch++")


class TraceEstimate(NamedTuple):
    """A randomized trace estimate.

    Attributes:
      estimate: scalar estimate of ``tr(A)``.
      stderr: its estimated standard error (the sample standard deviation of the random
        part over the square root of its number of probes); ``~68%`` of estimates fall
        within one ``stderr`` of the truth.
      num_matvecs: products with ``A`` spent (scalar int).
    """

    estimate: jax.Array
    stderr: jax.Array
    num_matvecs: jax.Array


class DiagonalEstimate(NamedTuple):
    """A randomized estimate of the diagonal, as a pytree like the domain.

    Attributes:
      estimate: pytree like the domain: the estimated ``diag(A)``, entry by entry.
      stderr: pytree like ``estimate``: each entry's estimated standard error (the sample
        standard deviation of ``z * A z`` over the probes, over the square root of their
        number); ``inf`` with one probe, ``0`` where every probe agreed (a diagonal ``A``).
      num_matvecs: products with ``A`` spent (scalar int).
    """

    estimate: PyTree
    stderr: PyTree
    num_matvecs: jax.Array


def _orthonormal_columns(Y: PyTree, num: int) -> PyTree:
    """An orthonormal basis of the span of the stacked vectors ``Y`` (rank-revealing).

    Gram-Schmidt with reorthogonalization, one vector at a time; a vector that is
    (numerically) in the span of the previous ones becomes zero, so a low-rank ``A S``
    yields fewer basis vectors instead of amplified noise.
    """
    dtype = _real_dtype(Y)
    eps = jnp.finfo(dtype).eps

    def body(j, Q):
        y = _basis_get(Y, j)
        q = _orthogonalize(Q, y)
        q, nrm = _normalize(q)
        keep = nrm > 100 * eps * math.sqrt(num) * tree_norm(y)
        q = jax.tree.map(lambda a: jnp.where(keep, a, jnp.zeros_like(a)), q)
        return _basis_set(Q, j, q)

    return jax.lax.fori_loop(0, num, body, tree_zeros_like(Y))


def _hutchinson_impl(A, matvec, example, key, *, num_samples, method):
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)

    def quad(z):
        return tree_vdot(z, matvec(z)).astype(dtype)

    if method == "hutchinson":
        samples = jax.lax.map(
            lambda kk: quad(_random_like(kk, example, "rademacher")[0]),
            _probe_keys(key, num_samples),
        )
        est, err = _mean_and_stderr(samples)
        return TraceEstimate(est, err, jnp.asarray(num_samples))

    # Hutch++: the top of the spectrum is captured exactly by tr(Q^T A Q) on a sketched
    # basis Q of range(A S); Hutchinson only handles the deflated remainder, whose
    # Frobenius norm -- and hence variance -- is much smaller when A has decaying spectrum.
    r = num_samples // 3
    g = num_samples - 2 * r
    k_s, k_g = jax.random.split(key)
    S = jax.vmap(lambda kk: _random_like(kk, example, "rademacher")[0])(_probe_keys(k_s, r))
    AS = jax.lax.map(matvec, S)
    Q = _orthonormal_columns(AS, r)
    exact = jnp.sum(jax.lax.map(quad, Q))

    def deflated(kk):
        z = _random_like(kk, example, "rademacher")[0]
        z = tree_sub(z, _basis_combine(_basis_dot(Q, z), Q))
        return quad(z)

    samples = jax.lax.map(deflated, _probe_keys(k_g, g))
    est, err = _mean_and_stderr(samples)
    return TraceEstimate(exact + est, err, jnp.asarray(2 * r + g))


def hutchinson_trace(
    A: Any,
    key: jax.Array,
    num_samples: int,
    *,
    example: PyTree | None = None,
    method: str = "hutchinson",
    loop: str = "device",
) -> TraceEstimate:
    r"""Randomized estimate of :math:`\mathrm{tr}(A)` from products with ``A``.

    ``"hutchinson"``: :math:`\mathrm{tr}(A) \approx \frac1s \sum_i z_i^\top A z_i` with
    Rademacher probes :math:`z_i \in \{\pm 1\}^N`; unbiased, with variance
    :math:`2 (\|A\|_F^2 - \sum_i A_{ii}^2) / s`. ``"hutch++"`` spends a third of the
    products sketching the dominant range :math:`Q` of :math:`A`, takes
    :math:`\mathrm{tr}(Q^\top A Q)` exactly and runs Hutchinson only on the deflated
    :math:`(I - QQ^\top) A (I - QQ^\top)`: also unbiased, and for a matrix with a few
    dominant eigenvalues (Hessians of networks) its error falls as :math:`1/s` instead of
    :math:`1/\sqrt{s}`.

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the probes.
      num_samples: products with ``A`` to spend (for ``"hutch++"`` at least 3, split as
        ``s//3`` sketch, ``s//3`` exact part and the rest for the remainder).
      example: pytree shaped like the domain; required for a bare callable.
      method: ``"hutchinson"`` or ``"hutch++"``.
      loop: where the loop over probes runs. ``"device"`` (the default) compiles the
        whole estimate into one program: fastest per call, one compile per configuration.
        ``"host"`` compiles only the product with ``A`` and loops in NumPy (float64
        sums, probes from NumPy seeded by ``key``, applied a block at a time): the first
        answer of a one-off analysis in a fraction of the compile time. Same estimator
        and error; under a caller's ``jit``/``vmap``/``grad`` it runs the device loop.

    Returns:
      A ``TraceEstimate`` (``estimate``, ``stderr``, ``num_matvecs``). ``stderr`` is ``inf``
      when fewer than two random probes were used. Float32 for a float16/bfloat16 domain
      (where a float16 ``z^T A z`` would overflow at 65504); NaN if ``A`` has a NaN.

    Raises:
      ValueError: bad ``method`` or ``num_samples``, a non-symmetric dense ``A`` (pass
        ``(A + A.T) / 2``: same trace). TypeError: a bad ``key``.

    Example (the trace of ``diag(1, ..., 100)`` is 5050):
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.arange(1.0, 101.0))
      >>> float(jaxcurv.hutchinson_trace(D, jax.random.key(0), 10).estimate)  # exact: diagonal
      5050.0
      >>> float(jaxcurv.hutchinson_trace(D, jax.random.key(0), 10, loop="host").estimate)
      5050.0

    References:
      Hutchinson, "A stochastic estimator of the trace of the influence matrix for
      Laplacian smoothing splines", Commun. Stat. Simul. Comput. 1989.
      Meyer, Musco, Musco and Woodruff, "Hutch++: Optimal stochastic trace estimation",
      SOSA 2021.
    """
    method = check_option("hutchinson_trace(method=...)", method, _TRACE_METHODS)
    key = check_key("hutchinson_trace", key)
    low = 3 if method == "hutch++" else 1
    num_samples = check_bounded_int(
        "hutchinson_trace(num_samples=...)",
        num_samples,
        low=low,
        fix=(
            "Hutch++ splits its products in three parts: pass at least 3."
            if low == 3
            else "Pass a positive count; the error falls as 1/sqrt(num_samples)."
        ),
    )
    loop = check_option("hutchinson_trace(loop=...)", loop, LOOPS)
    A, example, n, _ = _domain("hutchinson_trace", A, example)
    # Blocks of probes: all of them for Hutchinson, the largest of Hutch++'s three parts.
    most = num_samples if method == "hutchinson" else num_samples - 2 * (num_samples // 3)
    host = _on_host(loop, A, example, key, block=(most, 16 * n))
    if host is not None:
        return TraceEstimate(*host_trace(*host, num_samples=num_samples, method=method))
    return _run(_hutchinson_impl, A, example, key, num_samples=num_samples, method=method)


def _diagonal_impl(A, matvec, example, key, *, num_samples):
    matvec, example = _matvec_checked(matvec, example)

    def body(carry, kk):
        # Welford's update of the running mean and sum of squared deviations, per entry:
        # one pass over the probes, no cancellation in the variance.
        count, mean, m2 = carry
        z = _random_like(kk, example, "rademacher")[0]
        sample = jax.tree.map(jnp.multiply, z, matvec(z))
        count = count + 1
        delta = jax.tree.map(jnp.subtract, sample, mean)
        mean = jax.tree.map(lambda m, d: m + d / count.astype(m.dtype), mean, delta)
        m2 = jax.tree.map(lambda q, d, s, m: q + d * (s - m), m2, delta, sample, mean)
        return (count, mean, m2), None

    zeros = tree_zeros_like(example)
    init = (jnp.zeros((), jnp.int32), zeros, zeros)
    (_, mean, m2), _ = jax.lax.scan(body, init, _probe_keys(key, num_samples))
    if num_samples < 2:
        stderr = jax.tree.map(lambda m: jnp.full_like(m, jnp.inf), mean)
    else:
        scale = 1.0 / (num_samples * (num_samples - 1))
        stderr = jax.tree.map(lambda q: jnp.sqrt(q * scale), m2)
    return DiagonalEstimate(mean, stderr, jnp.asarray(num_samples))


def hutchinson_diagonal(
    A: Any,
    key: jax.Array,
    num_samples: int,
    *,
    example: PyTree | None = None,
    loop: str = "device",
) -> DiagonalEstimate:
    r"""Randomized estimate of :math:`\mathrm{diag}(A)` as a pytree like the domain.

    :math:`\mathrm{diag}(A) \approx \frac1s \sum_i z_i \odot A z_i` with Rademacher probes:
    unbiased, since :math:`E[z_i z_j] = \delta_{ij}`; entry :math:`i` has variance
    :math:`\sum_{j \ne i} A_{ij}^2 / s`, so the estimate is sharp for diagonally dominant
    matrices (e.g. as an optimizer's preconditioner).

    Breaking change (the one of ``docs/conventions.md``): it returns a
    ``DiagonalEstimate`` (``estimate``, ``stderr``, ``num_matvecs``), as every estimator
    returns a result, instead of the bare tree, which is now ``.estimate``.

    Args:
      A: operator, dense symmetric matrix or callable (with ``example``).
      key: PRNG key for the probes.
      num_samples: products with ``A``.
      example: pytree shaped like the domain; required for a bare callable.
      loop: where the loop over probes runs. ``"device"`` (the default) compiles the
        whole estimate into one program: fastest per call, one compile per configuration.
        ``"host"`` compiles only the product with ``A`` and loops in NumPy (float64
        sums, probes from NumPy seeded by ``key``, applied a block at a time): the first
        answer of a one-off analysis in a fraction of the compile time. Same estimator
        and error; under a caller's ``jit``/``vmap``/``grad`` it runs the device loop.

    Returns:
      A ``DiagonalEstimate``: ``estimate`` and ``stderr`` are pytrees with the structure,
      shapes and dtypes of the domain (float32 for a float16/bfloat16 domain: the sum of
      probes runs in float32); ``num_matvecs`` is ``num_samples``.

    Raises:
      ValueError: ``num_samples < 1``, a non-symmetric dense ``A`` (pass ``(A + A.T) / 2``:
        same diagonal). TypeError: a bad ``key``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcurv
      >>> D = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
      >>> d = jaxcurv.hutchinson_diagonal(D, jax.random.key(0), 4)  # exact: diagonal
      >>> d.estimate.tolist(), d.stderr.tolist(), int(d.num_matvecs)
      ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], 4)
      >>> jaxcurv.hutchinson_diagonal(D, jax.random.key(0), 4, loop="host").estimate.tolist()
      [1.0, 2.0, 3.0]

    References:
      Bekas, Kokiopoulou and Saad, "An estimator for the diagonal of a matrix", Appl.
      Numer. Math. 2007.
    """
    key = check_key("hutchinson_diagonal", key)
    num_samples = check_bounded_int(
        "hutchinson_diagonal(num_samples=...)", num_samples, low=1, fix="Pass a positive count."
    )
    loop = check_option("hutchinson_diagonal(loop=...)", loop, LOOPS)
    A, example, n, _ = _domain("hutchinson_diagonal", A, example)
    host = _on_host(loop, A, example, key, block=(num_samples, 24 * n))
    if host is not None:
        return DiagonalEstimate(*host_diagonal(*host, num_samples=num_samples))
    return _run(_diagonal_impl, A, example, key, num_samples=num_samples)
