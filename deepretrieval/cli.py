"""The ``deepretrieval`` command line. Each command lives in the module that owns its concept and
exposes ``register(subparsers)``; this file only collects them."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Modules contributing sub-commands (each defines ``register(subparsers)``).
COMMAND_MODULES = (
    "deepretrieval.cli.core",
    "deepretrieval.cli.data",
    "deepretrieval.cli.serve",
    "deepretrieval.tasks.sql",
    "deepretrieval.search.dense",
    "deepretrieval.tasks.evidence",
    "deepretrieval.cli.cache",
    "deepretrieval.cli.train",
    "deepretrieval.cli.eval",
    "deepretrieval.data.mirror_cli",
)


def build_parser() -> argparse.ArgumentParser:
    from deepretrieval import __version__

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
