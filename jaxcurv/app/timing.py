"""Wall time split into compiling and running, as the reports state every timing.

JAX compiles on first use, so a first analysis' wall time is mostly compilation; a reader
comparing it with another tool needs the two apart. :class:`CompileClock` counts the
compilation JAX itself reports (``jax.monitoring`` duration events: tracing to a jaxpr,
lowering to MLIR, XLA's backend compile) while a block runs; the rest is running.
"""

from __future__ import annotations

import time

import jax

__all__ = ["COMPILE_EVENTS", "CompileClock"]

#: The ``jax.monitoring`` events whose durations count as compiling.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND = COMPILE_EVENTS[-1]


class CompileClock:
    """A context manager: the block's wall time and the part of it spent compiling.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> with CompileClock() as clock:
      ...     _ = jax.jit(lambda x: x * 2)(jnp.ones(3)).block_until_ready()
      >>> clock.num_compiles >= 1 and 0 <= clock.compile_s <= clock.wall_s
      True
      >>> sorted(clock.as_dict())
      ['compile_s', 'num_compiles', 'run_s', 'wall_s']
    """

    def __init__(self):
        self.wall_s = self.compile_s = 0.0
        self.num_compiles = 0
        self._t0 = 0.0

    def _listen(self, event: str, duration: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self.compile_s += duration
            self.num_compiles += event == _BACKEND

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        jax.monitoring.unregister_event_duration_listener(self._listen)
        # Compilation runs inside the block, so it cannot exceed it (listeners may report
        # durations that overlap, e.g. a trace nested in another).
        self.compile_s = min(self.compile_s, self.wall_s)

    @property
    def run_s(self) -> float:
        """Wall time not spent compiling."""
        return self.wall_s - self.compile_s

    def as_dict(self) -> dict:
        """JSON-ready: ``wall_s``, ``compile_s``, ``run_s``, ``num_compiles``."""
        return {
            "wall_s": self.wall_s,
            "compile_s": self.compile_s,
            "run_s": self.run_s,
            "num_compiles": self.num_compiles,
        }
