"""``filterd snapshot build | inspect | verify``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from filterd.errors import SnapshotError
from filterd.snapshot.build import build_snapshot, stderr_progress
from filterd.snapshot.evidence import DEFAULT_ACCEPT_METHODS, parse_accept_methods
from filterd.snapshot.format import MANIFEST, REFUSED_CSV, resolve_version
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
    build.add_argument(
        "--consents",
        type=Path,
        required=True,
        help="CSV: sender,recipient[,method,granted_at,expires_at,max_per_day]",
    )
    build.add_argument("--optouts", type=Path, help="CSV: sender,recipient (sender * = all)")
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
        "--accept-methods",
        type=_accept_methods,
        default=DEFAULT_ACCEPT_METHODS,
        metavar="M,...",
        help="consent methods that count (default "
        f"{','.join(DEFAULT_ACCEPT_METHODS)}); rows of other methods are kept as refused "
        "consents and reported",
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


def _accept_methods(text: str) -> tuple[str, ...]:
    try:
        return parse_accept_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
        accept_methods=args.accept_methods,
    )
    manifest = orjson.loads((args.out / version / MANIFEST).read_bytes())
    if not manifest.get("method_column"):
        print(
            f"filterd: note: {args.consents} has no method column: "
            "every consent row counts as accepted",
            file=sys.stderr,
        )
    refused = manifest.get("refused_rows", {})
    if refused.get("total"):
        print(
            f"filterd: note: {refused['total']} consent rows of methods not accepted "
            f"({', '.join(f'{m or chr(34) * 2}: {n}' for m, n in refused['by_method'].items())}),"
            f" kept as refused consents: {args.out / version / REFUSED_CSV}",
            file=sys.stderr,
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
