"""Ctrl-C while the command line starts: the handler :mod:`deepretrieval.cli` installs first.

A module of its own, imported before anything else of the command line: the package's
``__init__`` stays a few lines, so it is compiled and reaches this handler within milliseconds of
``python -m deepretrieval.cli`` / the ``deepretrieval`` script starting, even where no bytecode is
written (``PYTHONDONTWRITEBYTECODE``: every start compiles from source)."""
from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    """SIGINT while the command line starts (imports, argument parsing) or after the command
    finished (the interpreter's teardown): there is nothing to clean up, so end at once —
    ``interrupted``, exit 130, no traceback (an interrupted import can also surface as an
    unrelated error, and a SIGINT in the teardown ended the process by the signal, -2)."""
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def catch_startup_interrupts():
    """Install :func:`_interrupted_while_starting` for SIGINT; returns the handler to restore, or
    None when nothing was installed (not the main thread: signals are not ours to handle)."""
    try:
        return signal.signal(signal.SIGINT, _interrupted_while_starting)
    except ValueError:
        return None
