"""Per-layer eigenpairs' converged flags (``jaxcurv landscape``'s layer table) in float32:
the products' rounding allowance of :func:`jaxcurv.extreme_eigenpairs`, not more."""

import jax.numpy as jnp
import numpy as np

from jaxcurv.app.layer_report import _eigen_rows, _pair_flags
from jaxcurv.eigensolvers import EigenResult
from jaxcurv.extreme_eigenpairs import default_tol
from tests.helpers import random_symmetric

N = 40


def _float32_pairs():
    """Three float32 pairs of a 40 x 40 float32 matrix with eigenvalues in [1e-4, 10]:
    the exact eigenpairs of 1e-4 and of 10 (float64 ``eigh``, rounded to float32), and a
    pair 1e-2 off an eigenvector, each with its residual measured as the solvers measure
    it, from one float32 product."""
    rng = np.random.default_rng(0)
    spectrum = np.concatenate([[1e-4], np.linspace(1.0, 5.0, N - 2), [10.0]])
    A64 = random_symmetric(rng, spectrum)
    lam64, U = np.linalg.eigh(A64)
    A = jnp.asarray(A64, jnp.float32)
    bad = U[:, -1] + 1e-2 * U[:, 1]  # off the top eigenvector by 1e-2 towards lambda = 1
    vectors = [U[:, 0], U[:, -1], bad / np.linalg.norm(bad)]
    lams, res = [], []
    for vec in vectors:
        v = jnp.asarray(vec, jnp.float32)
        lam = jnp.vdot(v, A @ v)  # the Rayleigh quotient, as the refined solvers return
        r = np.asarray(A @ v, np.float64) - float(lam) * np.asarray(v, np.float64)
        lams.append(lam)
        res.append(np.linalg.norm(r))  # the difference accurately summed, as the solvers
    eig = EigenResult(
        jnp.asarray(lams, jnp.float32), None, jnp.asarray(res, jnp.float32), 0, False, 0
    )
    return eig, lam64


def test_float32_pairs_at_the_rounding_level_are_converged_and_a_perturbed_one_is_not():
    eig, lam64 = _float32_pairs()
    tol = default_tol(jnp.float32)  # 1e-5
    res = np.asarray(eig.residual_norms, np.float64)
    # The near-zero pair is exact to float32: its residual is the product's rounding, far
    # above the relative test tol * max(1e-4, eps^(2/3) * 10) ~ 2.4e-9 that no float32
    # product meets, and within the allowance 4 sqrt(N) eps32 * 10 ~ 3.0e-5.
    assert 2.4e-9 < res[0] < 3.0e-5
    # The perturbed pair: residual ~ 1e-2 * (10 - 1) = 0.09, a real miss (its vector is
    # 1e-2 off the eigenvector), far above tol * 10 + 3.0e-5.
    assert res[2] > 0.05
    np.testing.assert_array_equal(_pair_flags(eig, tol, False, N, jnp.float32), [1, 1, 0])
    # The allowance is the products' dtype's: float64 products would have no such excuse.
    np.testing.assert_array_equal(_pair_flags(eig, tol, False, N, jnp.float64), [0, 1, 0])
    # The rows of the layer table carry the flags, largest eigenvalue first.
    rows = _eigen_rows(eig, tol, False, N, jnp.float32)
    assert [r["converged"] for r in rows] == [True, False, True]
    np.testing.assert_allclose(rows[-1]["eigenvalue"], lam64[0], rtol=1e-2)  # the 1e-4 one
    # Dense (eigh): every pair as the solver's flag says.
    assert _pair_flags(eig._replace(converged=True), tol, True, N, jnp.float32).all()
