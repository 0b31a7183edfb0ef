"""Command line entry point: ``filterd <command>``.

Each command group lives in its own module exposing ``register(subparsers)``;
the module sets ``func`` on its parser, a callable taking the parsed
namespace and returning the exit code. Only the module of the command given is
imported (all of them for ``--help``, none for ``--version``), so
``filterd --version`` and the offline commands (``snapshot``, ``replay``) load
neither aiokafka nor prometheus_client (``tests/test_cli_imports.py``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from filterd import __version__
from filterd.errors import FilterdError

#: Each command and the module that registers it (``register(subparsers)``), in
#: the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "run": "filterd.commands",
    "replay": "filterd.commands",
    "topics": "filterd.topics",
    "loadgen": "filterd.loadgen.commands",
    "check": "filterd.check",
    "audit": "filterd.audit.commands",
    "snapshot": "filterd.snapshot.commands",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))

Handler = Callable[[argparse.Namespace], int]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given the arguments to parse, it registers only what they need."""
    parser = argparse.ArgumentParser(
        prog="filterd",
        description="SMS consent filter: routes outbound SMS to deliver, block or invalid topics.",
    )
    parser.add_argument("--version", action="version", version=f"filterd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules_for(argv):
        importlib.import_module(name).register(subparsers)
    return parser


def _modules_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    if argv is None:
        return COMMAND_MODULES
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        return (COMMANDS[command],)
    if command is None and "--version" in argv and not {"-h", "--help"} & set(argv):
        return ()
    return COMMAND_MODULES  # help, or an unknown command: argparse lists them all


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`filterd snapshot inspect ROOT | head`). Python would print
        # a second error when it flushes stdout at exit: point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        print("filterd: error: output closed before it was all written", file=sys.stderr)
        return 1
    except OSError as exc:
        # A file problem the command did not foresee (an --out that is a file, a directory
        # without write permission): what and where, in one line.
        logging.getLogger("filterd").debug("command failed", exc_info=True)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"filterd: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
