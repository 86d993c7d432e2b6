"""The command line's optional dependencies: matplotlib (plots) and tqdm (progress bars).

Both come with the ``cli`` extra (``pip install 'jaxcurv[cli]'``) and are imported only
when used: a run without them trains fully and says what it left out, and a command that
exists to draw plots (``jaxcurv landscape``) stops before any work with
:class:`MissingExtraError` (see :func:`jaxcurv.app.plots.require_plotting`).
"""

from __future__ import annotations

__all__ = ["INSTALL_CLI", "MissingExtraError", "installed"]

#: The command that installs the optional dependencies, as the messages quote it.
INSTALL_CLI = "pip install 'jaxcurv[cli]'"


class MissingExtraError(ImportError):
    """An optional dependency of the command line (the ``cli`` extra) is not installed."""


def installed(name: str) -> bool:
    """Whether the module ``name`` can be imported (it is imported, to be sure)."""
    # An import, not a spec lookup: it is what the caller is about to do, so a broken
    # install (or a module the tests block with ``sys.modules[name] = None``) counts as
    # missing too.
    try:
        __import__(name)
    except ImportError:
        return False
    return True
