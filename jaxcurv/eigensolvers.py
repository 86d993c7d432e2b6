"""Extreme eigenvalues: thick-restart Lanczos, one Lanczos pass, dense ``eigh``.

``power_iteration`` lives in ``power_method`` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcurv._checks import (
    check_bounded_int,
    check_key,
    check_non_negative,
    check_option,
    deprecated_keywords,
    renamed_keyword,
)
from jaxcurv._dispatch import DENSE_THRESHOLD, LOOPS, _domain, _hold_fixed, _on_host, _run
from jaxcurv._hellmann_feynman import _hellmann_feynman
from jaxcurv._host_lanczos import host_eigenvalues
from jaxcurv._lanczos import (
    _HIGHEST,
    _all_finite,
    _lanczos,
    _matvec_checked,
    _normalize,
    _random_like,
    _real_dtype,
    _select,
    _thick_restart,
    _tridiagonal_eigh,
)
from jaxcurv._precision import _working_dtype
from jaxcurv._rayleigh import dots, rayleigh_refine, residual_norms
from jaxcurv.power_method import PowerIterationResult, power_iteration
from jaxcurv.products import CurvatureOperator
from jaxcurv.tree import tree_size

PyTree = Any

__all__ = ["EigenResult", "PowerIterationResult", "eigenvalues", "power_iteration"]


_WHICH = ("largest", "smallest", "both")
_EIG_METHODS = ("auto", "thick-restart", "lanczos")


class EigenResult(NamedTuple):
    """Extreme eigenpairs of a symmetric operator.

    Attributes:
      eigenvalues: ``(k,)`` (``(2k,)`` for ``which="both"``), sorted ascending. For
        the dense path and refined thick restart (``refine``; by default below float64),
        the Rayleigh quotients ``v^T A v / v^T v`` of the
        returned vectors, from one more product per pair summed in float64 (where JAX has
        it enabled) or by compensated float32 summation: within ``residual^2 / gap``
        (Kato-Temple) plus the product's rounding of the exact eigenvalue, where the Ritz
        values of a float32 run are off by about ``sqrt(N) eps ||A||``. For
        ``method="lanczos"`` the Ritz values, with no extra product.
      eigenvectors: ``None`` unless requested; else a pytree like the domain whose leaves
        carry a leading axis of the same length: ``eigenvectors[j]`` (leafwise) belongs to
        ``eigenvalues[j]``. Unit norm, mutually orthogonal.
      residual_norms: ``||A v_j - lambda_j v_j||`` per eigenpair. Thick restart and dense:
        measured from that explicit product (``A v_j``, as the operator computes it, then
        the difference accurately summed), so it includes the products' rounding, about
        ``sqrt(N) eps ||A||``, which no recurrence sees (the recurrence residual
        ``|beta_m s_mj|`` reported zeros and values 100x too small in float32).
        ``method="lanczos"`` and unrefined thick restart: ``|beta_m s_mj|`` floored at
        the rounding of the recurrences, ``(sqrt(N) + sqrt(m)) eps max|theta|``, below
        which it cannot tell. An eigenvalue
        with residual ``r`` is within ``r`` of a true eigenvalue.
      num_matvecs: products with ``A`` spent (``N`` to form a matrix-free operator densely,
        ``0`` for a dense matrix given as ``A``; thick restart: the iteration's products
        plus one per returned pair).
      converged: scalar bool: the iteration's test passed for every pair, ``|beta_m s_mj|
        <= tol * max(|lambda|, eps^(2/3) ||T||)`` (so ``residual_norms`` meet that plus the
        products' rounding); on the dense path (``eigh`` is backward stable), true unless a
        NaN or inf is in the matrix. Never true when an eigenvalue or residual is not
        finite. Thick restart stops there; when it ran out of ``maxiter`` first (or met a
        NaN) this is false and the pairs are the best so far.
      num_restarts: thick restarts performed (``0`` for one pass of Lanczos and dense).
    """

    eigenvalues: jax.Array
    eigenvectors: PyTree | None
    residual_norms: jax.Array
    num_matvecs: jax.Array
    converged: jax.Array
    num_restarts: jax.Array


def _dense_matrix(A: Any, matvec: Callable, example: PyTree) -> jax.Array:
    """``A`` as an ``N x N`` matrix over ``ravel_pytree(example)`` order."""
    if isinstance(A, CurvatureOperator):
        return A.to_dense()
    if isinstance(A, jax.Array):
        return A
    flat, unravel = ravel_pytree(example)
    n = flat.size

    def column(i):
        return ravel_pytree(matvec(unravel(jax.nn.one_hot(i, n, dtype=flat.dtype))))[0]

    return jax.lax.map(column, jnp.arange(n), batch_size=min(n, 64)).T


def _sorted_pairs(lam, res, vecs):
    """Ascending again after refinement (clustered values may swap at rounding level)."""
    order = jnp.argsort(lam, stable=True)
    return lam[order], res[order], jax.tree.map(lambda Vl: Vl[order], vecs)


def _eigenvalues_impl(A, matvec, example, key, tol, budget, *, k, which, dense, vectors, method,
                      m, refine):  # fmt: skip
    n = tree_size(example)
    matvec, example = _matvec_checked(matvec, example)
    dtype = _real_dtype(example)
    if dense:
        H = _dense_matrix(A, matvec, example).astype(dtype)
        H = 0.5 * (H + H.T)
        evals, evecs = jnp.linalg.eigh(H)
        idx = _select(evals, k, which)
        U = evecs[:, idx].T
        # eigh's values are within ~eps ||H|| (backward stable); the Rayleigh quotients of
        # its vectors, accurately summed, are within residual^2 / gap of the exact ones.
        HU = jnp.matmul(U, H, precision=_HIGHEST)  # rows (H u_j)^T: H is symmetric
        lam = (dots(U, HU, dtype) / dots(U, U, dtype)).astype(dtype)
        res = residual_norms(U, HU, lam, dtype)
        lam, res, U = _sorted_pairs(lam, res, U)
        _, unravel = ravel_pytree(example)
        vecs = jax.vmap(unravel)(U) if vectors else None
        spent = 0 if isinstance(A, jax.Array) else n
        none = jnp.zeros((), jnp.int32)
        # eigh is backward stable, so only a non-finite matrix makes the answer wrong.
        finite = _all_finite(H, lam, res)
        return EigenResult(lam, vecs, res, none + spent, finite, none)

    r, seed = _random_like(key, example)
    v0, _ = _normalize(r)
    if method == "thick-restart":
        want = {"largest": (0, k), "smallest": (k, 0), "both": (k, k)}[which]
        lam, vecs, res, spent, converged, restarts = _thick_restart(
            matvec,
            v0,
            seed,
            m=m,
            want=want,
            tol=tol,
            max_matvecs=budget,
            single=m >= n,
        )
        # `converged` is the iteration's own test on |beta s_mj|, the residual in exact
        # arithmetic; what is returned is measured from one more product per pair.
        if not refine:
            rounding = (np.sqrt(n) + np.sqrt(m)) * float(jnp.finfo(dtype).eps)
            res = jnp.maximum(res, rounding * jnp.max(jnp.abs(lam)))
            return EigenResult(lam, vecs if vectors else None, res, spent, converged, restarts)
        lam, res, _ = rayleigh_refine(matvec, vecs, dtype)
        lam, res, vecs = _sorted_pairs(lam, res, vecs)
        converged = converged & _all_finite(lam, res)
        spent = spent + want[0] + want[1]
        return EigenResult(lam, vecs if vectors else None, res, spent, converged, restarts)

    alphas, betas, V = _lanczos(matvec, v0, m, seed)
    theta, S = _tridiagonal_eigh(alphas, betas)
    idx = _select(theta, k, which)
    lam, S_sel = theta[idx], S[:, idx]
    eps = float(np.finfo(np.dtype(dtype)).eps)
    # |beta_m s_mj| equals the true residual up to the rounding of the recurrences, about
    # (sqrt(N) + sqrt(m)) eps ||A|| (Paige 1976), below which it sees nothing (and eigh's
    # deflation can make it exactly 0): report it floored there (no extra product here).
    rounding = (np.sqrt(n) + np.sqrt(m)) * eps * jnp.max(jnp.abs(theta))
    estimate = jnp.abs(betas[-1] * S_sel[-1])
    res = jnp.maximum(estimate, rounding)
    floor = eps ** (2.0 / 3.0) * jnp.max(jnp.abs(theta))
    converged = jnp.all(estimate <= tol * jnp.maximum(jnp.abs(lam), floor))
    converged = converged & _all_finite(theta, res)
    vecs = None
    if vectors:
        vecs = jax.tree.map(
            lambda Vl: jnp.tensordot(S_sel.T.astype(Vl.dtype), Vl, axes=1, precision=_HIGHEST),
            V,
        )
    none = jnp.zeros((), jnp.int32)
    return EigenResult(lam, vecs, res, none + m, converged, none)


@deprecated_keywords(num_iters="maxiter")
def eigenvalues(
    A: Any,
    k: int,
    *,
    which: str = "largest",
    key: jax.Array | None = None,
    maxiter: int | None = None,
    example: PyTree | None = None,
    return_eigenvectors: bool = False,
    dense_threshold: int = DENSE_THRESHOLD,
    method: str = "auto",
    tol: float | None = None,
    max_basis: int | None = None,
    refine: bool | None = None,
    num_iters: int | None = None,
    loop: str = "device",
) -> EigenResult:
    r"""Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization.

    Lanczos builds an orthonormal basis :math:`V` of the Krylov space
    :math:`\{v_0, A v_0, \dots, A^{m-1} v_0\}` in which :math:`A` is the tridiagonal
    :math:`T = V^\top A V`; the extreme eigenvalues of :math:`T` (Ritz values) converge to
    those of :math:`A` after far fewer than :math:`N` products. Each new vector is
    re-orthogonalized against the whole basis, which prevents the loss of orthogonality
    that makes plain Lanczos report converged eigenvalues several times ("ghosts").

    Two ways to run it (``method``):

    * ``"thick-restart"`` (what ``"auto"`` picks): the basis has a fixed size of
      ``max_basis`` vectors. When it is
      full, the small projected matrix is diagonalized, the wanted Ritz vectors and a few
      next to them are kept and the rest dropped, and the Krylov space grows again from
      there (Wu and Simon 2000; the same iteration as ARPACK's implicitly restarted
      Lanczos, behind ``scipy``'s ``eigsh``).
      It stops when every wanted pair has a residual estimate :math:`|\beta_m s_{mj}| \le`
      ``tol`` :math:`\cdot |\theta_j|` (``eigsh``'s test) or after ``maxiter`` products.
      Memory is ``max_basis + 1`` vectors and reorthogonalization costs :math:`O(m N)` per
      product with a small ``m``, so it is the method of choice for large ``N`` and for
      high accuracy. A Krylov space holds every restarted subspace built from as many
      products, so it needs somewhat more products than one long pass would (1.2-1.6x in
      the tests) but a basis several times smaller, and each product costs far less.
    * ``"lanczos"``: one pass of exactly ``maxiter`` steps, keeping all of them;
      :math:`O(m N)` memory and :math:`O(m^2 N)` reorthogonalization in total. Cheapest for
      a low accuracy with a small ``m``; spectral_density uses it.

    When ``N <= dense_threshold`` (default ``jaxcurv``'s one ``DENSE_THRESHOLD``, 512) the
    matrix is formed (``op.to_dense()`` for an operator, ``N`` products for a callable)
    and diagonalized exactly instead.

    A float16 or bfloat16 domain is computed in float32 and the results (eigenvalues,
    residuals, eigenvectors) are float32: a dense matrix is cast to float32 exactly, so
    its eigenvalues are float32-accurate; an operator's or callable's products still run
    in its dtype and carry its rounding, about ``eps(dtype) ||A||``, which the reported
    residuals (from the recurrences) do not see -- the default ``tol`` stays above it.

    Differentiable: ``jax.grad`` / ``jax.jvp`` of the returned ``eigenvalues`` with respect
    to whatever ``A`` holds or closes over (``hessian_operator(loss, params)``, ``lambda v:
    A(theta) @ v``, a dense matrix) is Hellmann-Feynman's :math:`d\lambda_j = v_j^\top
    dA\, v_j`, exact for simple eigenvalues, so sharpness can be a regularizer:
    ``jax.grad(lambda p: loss(p) + c * eigenvalues(hessian_operator(loss, p),
    1).eigenvalues[0])``. It costs one product per eigenvalue, only when differentiated;
    the iteration itself is never differentiated. First derivatives only; eigenvectors and
    residuals carry no derivative.

    Args:
      A: a ``jaxcurv`` operator (``hessian_operator``, ``ggn_operator``), a dense symmetric
        ``N x N`` matrix, or a callable ``v -> A v`` on pytrees (with ``example``).
      k: how many eigenvalues (from each end for ``which="both"``).
      which: ``"largest"`` or ``"smallest"`` (algebraic, not by magnitude), or ``"both"``:
        the ``k`` smallest and the ``k`` largest.
      key: PRNG key for the starting vector; ``None`` uses ``jax.random.key(0)``. It only
        picks where the iteration starts: converged results agree to ``tol`` for any key.
      maxiter: the budget of products with ``A`` (it never changes the method). For
        ``"lanczos"``, the number of steps ``m`` of the one pass, between the number ``k'``
        of wanted eigenvalues and ``N``; default ``min(N, max(3 k', k' + 40))``. For
        ``"thick-restart"``, the most products the iteration spends (at least ``k'``); the
        run stops after the last whole restart cycle that fits; default ``100 *
        max_basis``; the ``k'`` products of the final Rayleigh quotients come on top.
      example: pytree shaped like the domain; required when ``A`` is a bare callable.
      return_eigenvectors: also return the eigenvectors (Ritz vectors), stacked pytrees.
      dense_threshold: use a dense ``eigh`` when ``N`` is at most this. ``0`` forces
        Lanczos.
      method: ``"auto"`` (the default), ``"thick-restart"`` or ``"lanczos"`` (see above).
      tol: relative residual at which a Ritz pair counts as converged:
        :math:`\|A v - \theta v\| \le \mathrm{tol} \cdot \max(|\theta|,
        \epsilon^{2/3} \|T\|)` (the floor keeps eigenvalues near zero reachable). Stops
        ``"thick-restart"``; for ``"lanczos"`` it only sets ``converged``. Default ``1e-8``
        for float64 and ``1e-5`` for float32 (``eigsh(tol=1e-4)`` leaves some residuals
        near ``4e-5``; ``1e-5`` is at least as accurate), ``sqrt(eps)`` for the products of
        a float16/bfloat16 operator (``1e-5`` for such a dense matrix: exact in float32).
      max_basis: ``"thick-restart"``'s basis size ``m`` (more than ``k'``; clipped to
        ``N``); default ``max(2 k' + 1, 20)``, as ``eigsh``'s ``ncv``. Larger means fewer
        restarts and more work and memory per product.
      refine: thick restart only: spend one more product per pair on its Rayleigh
        quotient and measured residual (see ``EigenResult``). Default (``None``): on for
        operators below float64 (float32: Ritz values ~10 ulps off, fixed to ~1 ulp), off
        in float64, where Ritz values are already within ``sqrt(N) eps ||A||`` (~1e-14
        relative) and the product's compile would be spent for nothing. ``False``
        returns the Ritz
        values and the recurrence residuals ``|beta_m s_mj|`` (blind to the products'
        rounding) floored at ``(sqrt(N) + sqrt(m)) eps`` times the largest returned
        ``|theta|``, and keeps that product out of the compiled program (it is a second
        copy of the operator's code there: +35% on a first call's compile measured on a
        26k-parameter MLP Hessian).
      loop: where the Krylov loop runs. ``"device"`` (the default) compiles the whole run
        into one program: fastest per call, one compile per configuration. ``"host"``
        compiles only the product with ``A`` and runs the recursion in NumPy (float64;
        ``jaxcurv._host_lanczos``): for a one-off analysis, the first answer in a fraction
        of the compile time. Same method, options and result; the start vector comes from
        NumPy seeded by ``key``, so the answers agree to ``tol``, not bit for bit. Under a
        caller's ``jit``/``vmap``/``grad`` it runs the device loop.
      num_iters: deprecated spelling (``DeprecationWarning``) of the budget. Alone (with
        ``method="auto"`` and no ``max_basis``) it also chose one Lanczos pass, and still
        does: ``num_iters=m`` is ``method="lanczos", maxiter=m``; with ``method`` or
        ``max_basis`` given it is ``maxiter=m``.

    Returns:
      An ``EigenResult``: ``eigenvalues`` ascending, optional ``eigenvectors``,
      ``residual_norms`` (how converged each pair is), ``num_matvecs``, ``converged`` and
      ``num_restarts``.

    Raises:
      ValueError: bad ``which`` or ``method``, ``k``, ``maxiter``, ``max_basis``,
        ``dense_threshold`` or ``tol`` out of range, bare callable without ``example``, a
        dense ``A`` that is not symmetric beyond rounding (checked when ``A`` is concrete,
        not under the caller's ``jit``). TypeError: non-integer ``k``/``maxiter``/
        ``max_basis``/``dense_threshold``, a non-number ``tol``, a bad ``key``, an integer
        domain, both ``maxiter`` and ``num_iters``.

    Example (the seed's Hessian of :math:`x^2 + 3xy + y^2`, eigenvalues -1 and 5):
      >>> import jax.numpy as jnp
      >>> import jaxcurv
      >>> H = jnp.array([[2.0, 3.0], [3.0, 2.0]])
      >>> jaxcurv.eigenvalues(H, 1, which="both").eigenvalues.round(4).tolist()
      [-1.0, 5.0]
      >>> d = jnp.linspace(0.0, 1.0, 300).at[-2:].set(jnp.array([5.0, 10.0]))
      >>> r = jaxcurv.eigenvalues(jnp.diag(d), 2, dense_threshold=0)  # thick restart
      >>> r.eigenvalues.round(4).tolist(), bool(r.converged), int(r.num_matvecs) <= 40
      ([5.0, 10.0], True, True)

    References:
      Lanczos, "An iteration method for the solution of the eigenvalue problem of linear
      differential and integral operators", J. Res. Nat. Bur. Standards 1950.
      Paige, "Computational variants of the Lanczos method for the eigenproblem", IMA J.
      Appl. Math. 1972 (loss of orthogonality and ghost eigenvalues).
      Wu and Simon, "Thick-restart Lanczos method for large symmetric eigenvalue
      problems", SIAM J. Matrix Anal. Appl. 22(2), 2000.
      Lehoucq, Sorensen and Yang, "ARPACK Users' Guide", SIAM 1998 (implicit restarts,
      the convergence test).
      Golub and Van Loan, "Matrix Computations", 4th ed., section 10.3 (full
      reorthogonalization).
    """
    which = check_option("eigenvalues(which=...)", which, _WHICH)
    method = check_option("eigenvalues(method=...)", method, _EIG_METHODS)
    A, example, n, dtype = _domain("eigenvalues", A, example)
    per_side = n // 2 if which == "both" else n
    k = check_bounded_int(
        "eigenvalues(k=...)",
        k,
        low=1,
        high=per_side,
        fix=f"The operator has size N={n}"
        + (" and which='both' takes k from each end." if which == "both" else "."),
    )
    wanted = 2 * k if which == "both" else k
    new = "maxiter"
    if num_iters is not None and method == "auto" and max_basis is None:
        # What the deprecated budget did on its own: one pass of exactly that many steps.
        method, new = "lanczos", "method='lanczos', maxiter"
    maxiter = renamed_keyword("eigenvalues", "num_iters", num_iters, new, maxiter)
    if method == "auto":
        method = "thick-restart"
    if tol is None:
        # From the precision of the products: a float16/bfloat16 operator's are rounded to
        # its dtype, so residuals below ~eps(dtype) ||A|| are not real even though the
        # recurrences report them; a dense float16/bfloat16 matrix is exact in float32.
        finfo = jnp.finfo(_real_dtype(example) if isinstance(A, jax.Array) else dtype)
        tol = {64: 1e-8, 32: 1e-5}.get(finfo.bits, float(np.sqrt(finfo.eps)))
    check_non_negative("eigenvalues(tol=...)", tol, requirement="a non-negative relative residual")
    if method == "lanczos":
        if max_basis is not None:
            raise ValueError(
                f"`eigenvalues(max_basis=...)` applies to method='thick-restart' only, got "
                f"max_basis={max_basis!r} with method='lanczos'. Drop it, or pass "
                "method='thick-restart' (maxiter then caps the products)."
            )
        if maxiter is None:
            maxiter = min(n, max(3 * wanted, wanted + 40))
        m = check_bounded_int(
            "eigenvalues(maxiter=...)",
            maxiter,
            low=wanted,
            high=n,
            fix=f"Lanczos needs at least as many steps as eigenvalues wanted ({wanted}) and "
            f"at most the operator size N={n}.",
        )
        budget = m
    else:
        if max_basis is None:
            max_basis = max(2 * wanted + 1, 20)
        max_basis = check_bounded_int(
            "eigenvalues(max_basis=...)",
            max_basis,
            low=min(wanted + 1, n),
            fix=f"The basis must hold the {wanted} wanted Ritz vectors and room to grow.",
        )
        if maxiter is None:
            maxiter = 100 * min(max_basis, n)
        budget = check_bounded_int(
            "eigenvalues(maxiter=...)",
            maxiter,
            low=wanted,
            fix=f"Spend at least as many products as eigenvalues wanted ({wanted}).",
        )
        m = min(max_basis, n, budget)
    dense_threshold = check_bounded_int(
        "eigenvalues(dense_threshold=...)", dense_threshold, low=0, fix="Use 0 to force Lanczos."
    )
    key = jax.random.key(0) if key is None else check_key("eigenvalues", key)
    loop = check_option("eigenvalues(loop=...)", loop, LOOPS)
    host = None if n <= dense_threshold else _on_host(loop, A, example, key)
    if host is not None:
        want = {"largest": (0, k), "smallest": (k, 0), "both": (k, k)}[which]
        return EigenResult(*host_eigenvalues(
            *host, m=m, want=want, tol=float(tol), max_matvecs=budget,
            vectors=bool(return_eigenvectors), method=method,
        ))  # fmt: skip
    A_fixed, traced = _hold_fixed(A, example)
    # The tolerance and the budget are traced: changing them does not compile again.
    result = _run(
        _eigenvalues_impl,
        A_fixed,
        example,
        key,
        jnp.asarray(tol, _working_dtype(dtype)),
        jnp.asarray(budget, jnp.int32),
        k=k,
        which=which,
        dense=n <= dense_threshold,
        vectors=bool(return_eigenvectors) or traced,
        method=method,
        m=m,
        refine=bool(jnp.finfo(dtype).bits < 64 if refine is None else refine),
    )
    if not traced:
        return result
    lam = _hellmann_feynman(A, example, result.eigenvalues, result.eigenvectors)
    vecs = result.eigenvectors if return_eigenvectors else None
    return result._replace(eigenvalues=lam, eigenvectors=vecs)
