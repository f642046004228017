"""The ``deepretrieval`` command line's parser and ``main`` (imported by :mod:`deepretrieval.cli`
after its Ctrl-C handler is installed)."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from deepretrieval import __version__
from deepretrieval.cli._startup import catch_startup_interrupts
from deepretrieval.cli.vocabulary import show_first_spelling
from deepretrieval.core.results import SearchError


#: Modules contributing sub-commands (each defines ``register(subparsers)``).
COMMAND_MODULES = (
    "deepretrieval.cli.core",      # tasks, search, baseline
    "deepretrieval.cli.index",     # index, index-dense, sql-index
    "deepretrieval.cli.prepare",   # prepare DATASET
    "deepretrieval.cli.data",      # download, convert
    "deepretrieval.cli.cache",     # cache stats|export|import
    "deepretrieval.cli.serve",     # serve
    "deepretrieval.cli.train",     # train, export, quickstart
    "deepretrieval.cli.eval",      # eval, eval-compare, rewrite
    "deepretrieval.cli.agent",     # ask
    "deepretrieval.cli.paper",     # paper-check
    "deepretrieval.cli.mirror",    # mirror pubmed|ctgov
)


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="deepretrieval",
        description="Train LLMs with RL to write search queries; evaluate and serve them.")
    parser.add_argument("--version", action="version", version=f"deepretrieval {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    show_first_spelling(parser)  # old spellings: accepted, not listed (cli/vocabulary.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    # as a program: a Ctrl-C while the command modules are imported ends it quietly (exit 130);
    # the command itself then gets Python's KeyboardInterrupt, handled below
    # (on the way out — a usage error, --help — the program keeps that handler)
    previous = catch_startup_interrupts() if argv is None else None
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        try:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            return int(args.func(args) or 0)
        except Exception:
            if _signal_received():  # a library turned the KeyboardInterrupt into another error
                raise KeyboardInterrupt from None
            raise
    except ImportError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"error: {extra}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr, flush=True)
        if argv is None:  # the program itself (not embedded): end now, see _exit_interrupted
            _exit_interrupted()
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # argparse and sys.exit(N): their own output
            raise
        print(f"error: {exc.code}", file=sys.stderr)
        return 2
    except USER_ERRORS as exc:
        if args.verbose:
            import traceback
            traceback.print_exc()
        print(f"error: {_message(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:  # the interpreter's teardown (torch, transformers: seconds on a
            catch_startup_interrupts()  # busy machine): a Ctrl-C then ends it quietly too, 130


#: Optional dependencies (top-level module) → the extra of pyproject.toml that installs them.
EXTRAS = {"faiss": "dense", "sentence_transformers": "dense",
          "omegaconf": "verl-cpu", "hydra": "verl-cpu", "verl": "verl-cpu", "ray": "verl-cpu",
          "trl": "trl", "transformers": "trl", "peft": "trl", "accelerate": "trl",
          "datasets": "trl", "matplotlib": "trl"}


def missing_extra(exc: ImportError) -> str | None:
    """The one-line fix for an optional dependency that is not installed (None: not one of
    ours). torch is installed on its own (CPU wheels), the rest through the package's extras."""
    root = (exc.name or "").split(".")[0]
    if root == "torch":
        return "this command needs torch (not installed): pip install torch==2.13.0"
    if root in EXTRAS:
        extra = EXTRAS[root]
        gpu = " (GPU training: \".[train]\")" if extra == "verl-cpu" else ""
        return (f"this command needs {root} (not installed): pip install -e \".[{extra}]\"{gpu} "
                f"from the source checkout, or pip install \"deepretrieval[{extra}]\"")
    return None


def _close_progress_bars() -> None:
    """Close the progress bars an interrupt left open (TRL's step bar...) before ``interrupted`` is
    printed; left open, they are redrawn after it when they are garbage-collected at exit."""
    sys.stdout.flush()
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()
    sys.stderr.flush()


def _signal_received() -> bool:
    """A SIGINT/SIGTERM arrived during training (``train.service.signals_raise``). CPython's
    import machinery, interrupted mid-import, raises ``TypeError: expected a message argument``
    instead of the KeyboardInterrupt (seen once in 30 interrupted runs)."""
    service = sys.modules.get("deepretrieval.train.service")
    return service is not None and service.interrupt_received() is not None


def _exit_interrupted() -> None:
    """Exit 130 without the interpreter's teardown. Our own cleanup has run by now (``finally``
    clauses: the retrieval service is stopped, atomic writes undone); tearing down torch /
    transformers took ~10 s on a loaded 2-core machine after a training run was interrupted."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _user_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    # bad values, missing/unreadable/misplaced files (gzip/zip damage is OSError or EOFError),
    # unknown names, searches that failed, files that are not databases
    import zlib
    return (ValueError, OSError, EOFError, KeyError, SearchError, sqlite3.Error, zlib.error)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # KeyError's str() adds quotes
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return f"{exc}" or type(exc).__name__


USER_ERRORS = _user_errors()


def configure_logging(verbose: bool) -> None:
    """Our messages at INFO (DEBUG with ``-v``); other libraries' DEBUG/INFO lines (bm25s,
    httpx, torch, ...) only with ``-v``: the root logger stays at WARNING otherwise."""
    root = logging.getLogger()
    if not root.handlers:  # embedded (tests, notebooks): leave the host's handlers alone
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        if not verbose:  # some libraries set their own logger levels (bm25s: DEBUG)
            handler.addFilter(_ours_or_warnings)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("deepretrieval").setLevel(logging.DEBUG if verbose else logging.INFO)


def _ours_or_warnings(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] == "deepretrieval"
