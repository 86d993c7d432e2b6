"""The hashed probes of `_lanczos`: finite at every hash value, standard normal in law."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxcurv._lanczos import _normal_from_bits, _random_like


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_every_hash_value_gives_a_finite_normal(dtype):
    # The extremes of the 32-bit hash: with 24 bits the largest rounded to u = 1 in float32
    # and gave +inf, one entry in 2^24 (a 3M-parameter tree held one with probability 15%).
    h = jnp.asarray([0, 511, 512, 2**31, 0xFFFFFE00, 0xFFFFFFFF], jnp.uint32)
    z = np.asarray(_normal_from_bits(h, dtype).astype(jnp.float64))
    assert np.all(np.isfinite(z))
    # The closed form: z = sqrt(2) erfinv(2u - 1), u = (k + 1/2) 2^-23, k = h >> 9; to the
    # rounding of the working float32 inverse CDF (~1e-6 relative) and of `dtype`.
    k = np.asarray([0, 0, 1, 2**22, 2**23 - 1, 2**23 - 1], np.float64)
    want = np.sqrt(2.0) * special.erfinv(2.0 * (k + 0.5) * 2.0**-23 - 1.0)
    rtol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(z, want, rtol=rtol, atol=rtol)


def test_probe_entries_are_standard_normal_in_law():
    n = 200_000
    z = np.asarray(_random_like(jax.random.key(0), jnp.zeros(n, jnp.float32))[0], np.float64)
    assert np.all(np.isfinite(z))
    # Sample mean and variance of n iid N(0, 1): standard errors 1/sqrt(n) and sqrt(2/n);
    # five of them is a 6e-7 two-sided chance per check.
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * np.sqrt(2.0 / n)
