"""Ctrl-C during training: a request to stop after the current step, not an exception.

Python's own SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens
to be. :func:`stop_on_interrupt` replaces it, for the length of a ``with`` block, by a
:class:`StopRequest` flag that the training loop reads between steps, so a run stops
cleanly after its current step and checkpoints it; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = ["StopRequest", "stop_on_interrupt", "to_stderr"]


def to_stderr(text: str) -> None:
    """Print a one-line note to stderr at once (the default ``echo`` of training)."""
    print(text, file=sys.stderr, flush=True)


class StopRequest:
    """The SIGINT handler while training runs: the first Ctrl-C asks the loop to stop after
    the current step; a second one calls ``on_repeat``, or raises KeyboardInterrupt."""

    def __init__(self, say: Callable[[str], None], on_repeat: Callable[[], None] | None):
        self.requested = False
        self._say, self._on_repeat = say, on_repeat

    def __call__(self, signum, frame) -> None:
        if self.requested:
            if self._on_repeat is not None:
                self._on_repeat()
            raise KeyboardInterrupt
        self.requested = True
        # The handler may run while the main thread is itself writing to stderr; a
        # reentrant write raises RuntimeError, and the note is not worth a crash.
        with contextlib.suppress(RuntimeError):
            self._say(
                "\nCtrl-C: stopping after the current step and checkpointing it (press "
                "Ctrl-C again to quit at once, without saving)."
            )


@contextlib.contextmanager
def stop_on_interrupt(
    echo: Callable[[str], None] | None = to_stderr,
    on_repeat: Callable[[], None] | None = None,
) -> Iterator[StopRequest]:
    """Within this context, Ctrl-C asks training to stop after its current step.

    :func:`jaxcurv.app.loop.train` enters it by itself; a program enters it earlier (the
    command line does, before it reads the config) so that a Ctrl-C before training
    starts is not lost either. Nested uses share the outer one. It takes effect only in
    the main thread and over Python's default SIGINT handler; a handler someone else
    installed is kept.

    Args:
      echo: called with a one-line note when the first Ctrl-C arrives (``None``: silent).
      on_repeat: called on a second Ctrl-C, from the signal handler (a program may end
        the process there); if it returns, or is ``None``, KeyboardInterrupt is raised.

    Yields:
      The stop request; its ``requested`` attribute says whether Ctrl-C was pressed.
    """
    # Python's own handler raises KeyboardInterrupt wherever the main thread happens to
    # be. Inside JAX that is often a garbage-collection callback, which swallows it (the
    # run goes on), or the middle of a compilation, whose threads then crash the
    # interpreter as it exits (a segfault in 2 of 4 tries on jax 0.10). A flag that the
    # loop reads between steps avoids both.
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, StopRequest):
        yield current
        return
    stop = StopRequest(echo or (lambda _: None), on_repeat)
    ours = threading.current_thread() is threading.main_thread()
    ours = ours and current is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, stop)
    try:
        yield stop
    finally:
        if ours:
            signal.signal(signal.SIGINT, current)
