"""``filterd snapshot build | compact | inspect | verify | keygen | sign | rollback | evidence``."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import orjson

from filterd.config import load_config
from filterd.errors import ConfigError, InvalidNumber, SnapshotError
from filterd.snapshot import format as fmt
from filterd.snapshot.build import build_snapshot, stderr_progress
from filterd.snapshot.evidence import DEFAULT_ACCEPT_METHODS, parse_accept_methods
from filterd.snapshot.format import MANIFEST, REFUSED_CSV, REJECTS_CSV, resolve_version
from filterd.snapshot.granted import lookup_granted
from filterd.snapshot.load import load_snapshot, verify_snapshot
from filterd.snapshot.publish import DEFAULT_MAX_DROP, publish_version
from filterd.snapshot.signing import (
    SIGNATURE,
    Verifier,
    generate_keypair,
    sign_file,
    sign_version,
)

__all__ = ["register"]

log = logging.getLogger(__name__)


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
        "publish it atomically and print its version. Nothing is published if any row is bad, "
        "if the version is empty, or if a count dropped by more than --max-drop against the "
        "version in force (exit 3; the version stays built, see `snapshot publish`).",
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
        "--config", type=Path, metavar="F",
        help="a filterd config: [snapshot] keep_versions and [policy] default_country_code",
    )  # fmt: skip
    build.add_argument(
        "--keep", type=int, default=None, metavar="N",
        help="versions to keep (default: the config's keep_versions, else 5)",
    )  # fmt: skip
    build.add_argument(
        "--country-code",
        default=None,
        metavar="CC",
        help="country code for national numbers in the inputs "
        "(default: the config's default_country_code, else 86)",
    )
    _publish_options(build)
    build.add_argument("--no-publish", action="store_true",
                       help="build the version, leave `current` alone")  # fmt: skip
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
        "--max-rejects", type=_max_rejects, default=0, metavar="N",
        help="build while at most N input rows are bad; they are left out and listed in"
        " the version's rejects.csv (default 0: any bad row refuses the build)",
    )  # fmt: skip
    build.add_argument(
        "--encoding", default="utf-8", metavar="ENC",
        help="text encoding of the input files (default utf-8; gbk and gb18030 exports too)",
    )  # fmt: skip
    build.add_argument(
        "--progress", action="store_true", help="report progress on stderr even without a tty"
    )
    build.add_argument(
        "--sign-key", type=Path, metavar="KEY", help="sign the version with this Ed25519 key"
    )
    build.add_argument(
        "--changes", action="store_true",
        help="also fold in every change of the config's [topics] changes up to now (needs "
        "--config), and record the change watermark, as `snapshot compact` does",
    )  # fmt: skip
    build.set_defaults(func=_build)

    compact = commands.add_parser(
        "compact",
        help="fold the live changes into a new version and make it current",
        description="Write a new version under ROOT: the current version plus every change of "
        "[topics] changes from its change watermark up to now, with the new watermark, and "
        "publish it through the same guards as build (exit 3 when refused). A running filterd "
        "that swaps to it drops the folded changes from memory.",
    )
    compact.add_argument("root", type=Path, metavar="ROOT")
    compact.add_argument("--config", type=Path, required=True, metavar="F",
                         help="the filterd config ([kafka], [topics] changes)")  # fmt: skip
    compact.add_argument("--version", dest="snapshot_version", metavar="V",
                         help="the version to start from (default: the current one)")  # fmt: skip
    compact.add_argument(
        "--keep", type=int, default=None, metavar="N",
        help="versions to keep (default: the config's keep_versions)",
    )  # fmt: skip
    _publish_options(compact)
    compact.add_argument("--no-publish", action="store_true",
                         help="build the version, leave `current` alone")  # fmt: skip
    compact.add_argument(
        "--sign-key", type=Path, metavar="KEY", help="sign the version with this Ed25519 key"
    )
    compact.set_defaults(func=_compact)

    inspect = commands.add_parser(
        "inspect", help="validate the current version and print a JSON summary"
    )
    inspect.add_argument("root", type=Path, metavar="ROOT")
    inspect.add_argument("--version", dest="snapshot_version", metavar="V")
    inspect.add_argument("--public-key", type=Path, metavar="PUB",
                         help="also require a valid signature by this key")  # fmt: skip
    inspect.set_defaults(func=_inspect)

    verify = commands.add_parser(
        "verify", help="check every file of a version; exit 0 only if all is well"
    )
    verify.add_argument("root", type=Path, metavar="ROOT")
    verify.add_argument("--version", dest="snapshot_version", metavar="V")
    verify.add_argument("--public-key", type=Path, metavar="PUB",
                        help="also require a valid signature by this key")  # fmt: skip
    verify.set_defaults(func=_verify)

    publish = commands.add_parser(
        "publish", help="make a built version current, through the same guards as build",
    )  # fmt: skip
    publish.add_argument("root", type=Path, metavar="ROOT")
    publish.add_argument("version", metavar="VERSION")
    _publish_options(publish)
    publish.set_defaults(func=_publish)

    keygen = commands.add_parser(
        "keygen", help="make an Ed25519 key pair for signing snapshots",
        description="Write NAME.key (private, mode 600: keep it with whoever builds snapshots) "
        "and NAME.pub (give it to every filterd as [snapshot] public_key).",
    )  # fmt: skip
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR")
    keygen.add_argument("--name", default="snapshot", help="file name stem (default snapshot)")
    keygen.set_defaults(func=_keygen)

    sign = commands.add_parser("sign", help="sign a built version (default: the current one)")
    sign.add_argument("root", type=Path, metavar="ROOT")
    sign.add_argument("version", nargs="?", metavar="VERSION")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    sign.set_defaults(func=_sign)

    rollback = commands.add_parser(
        "rollback", help="go back to an older version, on purpose",
        description="Make an older version current again (default: the newest one older than "
        "the current). A running filterd refuses an older version published any other way.",
    )  # fmt: skip
    rollback.add_argument("root", type=Path, metavar="ROOT")
    rollback.add_argument("--to", metavar="VERSION", help="the version to go back to")
    rollback.add_argument("--key", type=Path,
                          help="sign the rollback (where filterd checks signatures)")  # fmt: skip
    rollback.set_defaults(func=_rollback)

    evidence = commands.add_parser(
        "evidence",
        help="when and how a recipient consented to a sender (granted_at, method, expiry)",
        description="Print the consent rows of one (sender, recipient) pair kept in a "
        "version's granted.csv.gz (and, for consents that came as live changes, "
        "granted-changes.csv.gz), checked against its manifest. Exit 0 found, 1 none.",
    )
    evidence.add_argument("root", type=Path, metavar="ROOT")
    evidence.add_argument("--version", dest="snapshot_version", metavar="V",
                          help="default: the current version")  # fmt: skip
    evidence.add_argument("--sender", required=True)
    evidence.add_argument("--recipient", required=True, help="any form the decision accepts")
    evidence.add_argument("--format", choices=("text", "json"), default="text")
    evidence.set_defaults(func=_evidence)


def _accept_methods(text: str) -> tuple[str, ...]:
    try:
        return parse_accept_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _publish_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="FRACTION",
        help="refuse to publish when consents, opt-outs or do-not-disturb numbers fell by more "
        f"than this against the version in force (default {DEFAULT_MAX_DROP})",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true",
                        help="publish even when a guard refuses (logged)")  # fmt: skip


def _publish(args: argparse.Namespace) -> int:
    publish_version(args.root, args.version, max_drop=args.max_drop, force=args.force)
    print(args.version)
    return 0


def _max_rejects(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count of rows (0 or more): {text!r}")
    return value


def _build(args: argparse.Namespace) -> int:
    progress = stderr_progress if args.progress or sys.stderr.isatty() else None
    if args.changes and args.config is None:
        raise ConfigError("--changes", "needs --config (the Kafka and [topics] changes to read)")
    config = load_config(args.config) if args.config is not None else None
    keep = args.keep
    if keep is None:
        keep = config.snapshot.keep_versions if config is not None else 5
    country_code = args.country_code
    if country_code is None:
        country_code = config.policy.default_country_code if config is not None else "86"
    version = build_snapshot(
        args.out,
        args.consents,
        args.optouts,
        args.dnd,
        keep=keep,
        country_code=country_code,
        progress=progress,
        publish=not args.no_publish and not args.changes,
        max_drop=args.max_drop,
        force=args.force,
        sign_key=None if args.changes else args.sign_key,
        accept_methods=args.accept_methods,
        max_rejects=args.max_rejects,
        encoding=args.encoding,
    )
    if args.changes:
        from filterd.snapshot.compact import compact_snapshot

        assert config is not None
        # The version built from the files is the base of the one with the changes folded
        # in; only the latter is signed, published and kept.
        built = version
        version = compact_snapshot(
            config, args.out, base=built, sign_key=args.sign_key,
            publish=not args.no_publish, max_drop=args.max_drop, force=args.force, keep=keep,
            check_signature=False,
        )  # fmt: skip
        shutil.rmtree(args.out / built)
    manifest = orjson.loads((args.out / version / MANIFEST).read_bytes())
    rejected = manifest.get("rejected_rows", {})
    if rejected.get("total"):
        print(
            f"filterd: note: {rejected['total']} bad input rows left out"
            f" (--max-rejects {rejected['max_rejects']}): {args.out / version / REJECTS_CSV}",
            file=sys.stderr,
        )
    for record in manifest.get("inputs", []):
        plus = record.get("without_plus", {})
        if plus.get("count"):
            print(
                f"filterd: note: {record['path']}: {plus['count']} recipients without '+' start"
                f" with country code {manifest['country_code']} and are read as national numbers"
                f" (E.164 without '+'?), lines {', '.join(map(str, plus['lines']))}"
                f"{', ...' if plus['count'] > len(plus['lines']) else ''}",
                file=sys.stderr,
            )
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


def _compact(args: argparse.Namespace) -> int:
    # The Kafka client is loaded only by the commands that read the broker.
    from filterd.snapshot.compact import compact_snapshot

    version = compact_snapshot(
        load_config(args.config), args.root, base=args.snapshot_version,
        sign_key=args.sign_key, publish=not args.no_publish, max_drop=args.max_drop,
        force=args.force, keep=args.keep,
    )  # fmt: skip
    print(version)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    # load_snapshot validates everything; a corrupt version raises, no summary is printed.
    verifier = Verifier(args.public_key) if args.public_key else None
    snapshot = load_snapshot(args.root, args.snapshot_version, verifier=verifier)
    print(orjson.dumps(snapshot.summary(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        version = resolve_version(args.root, args.snapshot_version)
    except SnapshotError as exc:
        print(f"filterd: error: {exc}", file=sys.stderr)
        return 1
    verifier = Verifier(args.public_key) if args.public_key else None
    problems = verify_snapshot(args.root, version, verifier=verifier)
    for problem in problems:
        print(f"{version}: {problem}", file=sys.stderr)
    if problems:
        return 1
    signed = f", signed by key {verifier.key_id}" if verifier else ""
    print(f"{version}: ok{signed}")
    return 0


def _evidence(args: argparse.Namespace) -> int:
    version = resolve_version(args.root, args.snapshot_version)
    try:
        rows = lookup_granted(args.root, version, args.sender, args.recipient)
    except InvalidNumber as exc:
        raise ConfigError("--recipient", str(exc)) from exc
    if args.format == "json":
        doc = {
            "version": version,
            "sender": args.sender.strip(),
            "recipient": args.recipient,
            "rows": [r._asdict() for r in rows],
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    elif not rows:
        print(f"{version}: no consent row of {args.sender.strip()} for {args.recipient}")
    else:
        for r in rows:
            print(
                f"{version}: {f'change {r.change}' if r.change else f'line {r.line}'}: "
                f"sender {r.sender} recipient {r.recipient} "
                f"method {r.method or '(none)'} granted_at {r.granted_at or '(none)'} "
                f"expires_at {r.expires_at or '(none)'}"
            )
    return 0 if rows else 1


def _keygen(args: argparse.Namespace) -> int:
    key, pub = generate_keypair(args.out, args.name)
    print(f"private key: {key}\npublic key:  {pub}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    version = resolve_version(args.root, args.version)
    # Only a valid version is signed: a signature vouches for what the files hold.
    load_snapshot(args.root, version)
    key_id = sign_version(args.root / version, args.key)
    print(f"{version}: signed by key {key_id} ({SIGNATURE})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    root: Path = args.root
    current = fmt.current_version(root)
    versions = fmt.list_versions(root)
    if args.to is not None:
        target = resolve_version(root, args.to)
    else:
        older = [v for v in versions if current is None or v < current]
        if not older:
            raise SnapshotError(f"no version older than {current} under {root}")
        target = older[-1]
    if target == current and args.to is None:
        raise SnapshotError(f"{target} is current already")
    load_snapshot(root, target)  # never point at a broken version
    marker = fmt.write_rollback(root, target, current)
    if args.key is not None:
        sign_file(marker, args.key, root / f"{fmt.ROLLBACK}.sig")
    else:
        (root / f"{fmt.ROLLBACK}.sig").unlink(missing_ok=True)
    if target == current:
        # The pointer was moved back by other means; the operator confirms it.
        log.warning("snapshot rollback under %s: %s confirmed", root, target)
        print(f"rollback to {target} recorded under {root} (already current)")
        return 0
    fmt.publish_pointer(root, target)
    log.warning("snapshot rollback under %s: %s -> %s", root, current, target)
    print(f"rolled back {root}: {current} -> {target}")
    return 0
