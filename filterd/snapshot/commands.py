"""``filterd snapshot build | inspect | verify``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from filterd.errors import SnapshotError
from filterd.snapshot.build import build_snapshot, stderr_progress
from filterd.snapshot.format import resolve_version
from filterd.snapshot.load import load_snapshot, verify_snapshot

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``snapshot`` command group."""
    parser = subparsers.add_parser("snapshot", help="build, inspect and verify consent snapshots")

    def usage(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(func=usage)
    commands = parser.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")

    build = commands.add_parser(
        "build",
        help="build a snapshot from CSV inputs and make it current",
        description="Build a new snapshot version under ROOT from CSV (or .csv.gz) inputs, "
        "publish it atomically and print its version. Nothing is published if any row is bad.",
    )
    build.add_argument("--consents", type=Path, required=True, help="CSV: sender,recipient")
    build.add_argument("--optouts", type=Path, help="CSV: sender,recipient")
    build.add_argument("--dnd", type=Path, help="CSV: recipient (do-not-disturb)")
    build.add_argument("--out", type=Path, required=True, metavar="ROOT", help="snapshot root")
    build.add_argument(
        "--keep", type=int, default=5, metavar="N", help="versions to keep (default 5)"
    )
    build.add_argument(
        "--country-code",
        default="86",
        metavar="CC",
        help="country code for national numbers in the inputs (default 86)",
    )
    build.add_argument(
        "--progress", action="store_true", help="report progress on stderr even without a tty"
    )
    build.set_defaults(func=_build)

    inspect = commands.add_parser(
        "inspect", help="validate the current version and print a JSON summary"
    )
    inspect.add_argument("root", type=Path, metavar="ROOT")
    inspect.add_argument("--version", dest="snapshot_version", metavar="V")
    inspect.set_defaults(func=_inspect)

    verify = commands.add_parser(
        "verify", help="check every file of a version; exit 0 only if all is well"
    )
    verify.add_argument("root", type=Path, metavar="ROOT")
    verify.add_argument("--version", dest="snapshot_version", metavar="V")
    verify.set_defaults(func=_verify)


def _build(args: argparse.Namespace) -> int:
    progress = stderr_progress if args.progress or sys.stderr.isatty() else None
    version = build_snapshot(
        args.out,
        args.consents,
        args.optouts,
        args.dnd,
        keep=args.keep,
        country_code=args.country_code,
        progress=progress,
    )
    print(version)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    # load_snapshot validates everything; a corrupt version raises, no summary is printed.
    snapshot = load_snapshot(args.root, args.snapshot_version)
    print(orjson.dumps(snapshot.summary(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        version = resolve_version(args.root, args.snapshot_version)
    except SnapshotError as exc:
        print(f"filterd: error: {exc}", file=sys.stderr)
        return 1
    problems = verify_snapshot(args.root, version)
    for problem in problems:
        print(f"{version}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{version}: ok")
    return 0
