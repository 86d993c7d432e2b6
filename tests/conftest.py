"""Test configuration: float64 available everywhere, rank promotion is an error.

x64 is on so that float64 oracles (finite differences, numpy) are meaningful; tests that
exercise float32 ask for it explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
