"""The ``deepretrieval`` command line: one module per command group under ``deepretrieval/cli/``,
each exposing ``register(subparsers)``; :data:`COMMAND_MODULES` is the explicit list. Library
modules expose plain functions and never build argument parsers."""
from __future__ import annotations

import signal

from deepretrieval.cli._startup import catch_startup_interrupts

# The rest of the command line (cli/program.py and the command modules build_parser imports)
# takes seconds to import on a busy machine: a Ctrl-C meanwhile ends the program quietly. This
# file stays this short: it is compiled before its first line runs (from source at every start
# where bytecode is not written), and a Ctrl-C before that line is Python's own.
_BEFORE_IMPORTS = catch_startup_interrupts()

from deepretrieval.cli.program import (  # noqa: E402
    COMMAND_MODULES,
    EXTRAS,
    USER_ERRORS,
    build_parser,
    configure_logging,
    main,
    missing_extra,
)

# every module-level import above is done (an embedding program gets its own handler back;
# ``main`` installs the quiet one again while the command modules are imported)
if _BEFORE_IMPORTS is not None:
    signal.signal(signal.SIGINT, _BEFORE_IMPORTS)

__all__ = ["COMMAND_MODULES", "EXTRAS", "USER_ERRORS", "build_parser", "configure_logging",
           "main", "missing_extra"]
