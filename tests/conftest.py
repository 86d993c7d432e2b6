"""Test configuration: float64 available everywhere.

x64 is on so that float64 oracles (finite differences, numpy) are meaningful; tests that
exercise float32 ask for it explicitly and check that results stay float32.
"""

import jax

jax.config.update("jax_enable_x64", True)
