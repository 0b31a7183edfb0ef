"""Command line entry point: ``filterd <command>``.

Each command group lives in its own module exposing ``register(subparsers)``;
the module sets ``func`` on its parser, a callable taking the parsed
namespace and returning the exit code. Modules are imported only when the
parser is built, so ``filterd --version`` stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from filterd import __version__
from filterd.errors import FilterdError

# One line per command group; each module provides ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "filterd.commands",
    "filterd.topics",
    "filterd.loadgen.commands",
    "filterd.check",
    "filterd.audit.commands",
    "filterd.snapshot.commands",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="filterd",
        description="SMS consent filter: routes outbound SMS to deliver, block or invalid topics.",
    )
    parser.add_argument("--version", action="version", version=f"filterd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return func(args)
    except FilterdError as exc:
        # Operator-facing errors: one clear line, no traceback.
        logging.getLogger("filterd").debug("command failed", exc_info=True)
        print(f"filterd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
