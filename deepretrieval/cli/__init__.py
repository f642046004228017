"""The ``deepretrieval`` command line: one module per command group under ``deepretrieval/cli/``,
each exposing ``register(subparsers)``; :data:`COMMAND_MODULES` is the explicit list. Library
modules expose plain functions and never build argument parsers."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deepretrieval import __version__

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
)


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="deepretrieval",
        description="Train LLMs with RL to write search queries; evaluate and serve them.")
    parser.add_argument("--version", action="version", version=f"deepretrieval {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
