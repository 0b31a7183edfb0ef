"""The ``run`` and ``replay`` commands."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from filterd.config import Config, load_config
from filterd.errors import ConfigError
from filterd.logs import setup_logging
from filterd.supervisor import Supervisor, worker_index


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    run = subparsers.add_parser(
        "run", help="run the stream service",
        description="Consume the input topic, decide every event, route it to an output topic.",
    )  # fmt: skip
    run.add_argument("--config", type=Path, help="TOML config file (default: built-in defaults)")
    run.add_argument("--workers", type=int, default=1,
                     help="processes in the consumer group on this host (default 1)")  # fmt: skip
    run.set_defaults(func=cmd_run)

    replay = subparsers.add_parser(
        "replay", help="decide a JSON-lines file offline",
        description="Decide every line of EVENTS.jsonl with the stream's code and write "
        "DIR/decisions.jsonl, deliver.jsonl, block.jsonl and invalid.jsonl.",
    )  # fmt: skip
    replay.add_argument("--snapshot", type=Path, required=True, help="snapshot root")
    replay.add_argument("--input", type=Path, required=True, help="events, one JSON per line")
    replay.add_argument("--out", type=Path, required=True, help="output directory")
    replay.add_argument("--config", type=Path, help="config file for the policy section")
    replay.add_argument("--compare", type=Path, metavar="ROOT2",
                        help="a second snapshot root, or one version directory ROOT/VERSION: "
                        "report how decisions change")  # fmt: skip
    replay.add_argument("--at", metavar="ISO-TIME", type=_iso_time,
                        help="the time of lines without a ts field, ISO 8601 with offset "
                        "(default: now): consent expiry is judged at a message's time")  # fmt: skip
    replay.set_defaults(func=cmd_replay)


def _iso_time(text: str) -> int:
    """``--at``: epoch milliseconds of an ISO 8601 date-time with a UTC offset."""
    from filterd.snapshot.evidence import parse_expiry

    try:
        return parse_expiry(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an ISO 8601 date-time with offset, e.g. 2026-11-11T20:00:00+08:00;"
            f" got {text!r}"
        ) from None


def _config(path: Path | None) -> Config:
    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    from filterd.http import worker_port  # with prometheus_client: not for replay

    config = _config(args.config)
    if args.workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {args.workers}")
    setup_logging(config.logging.format, config.logging.level)
    if args.workers > 1:
        argv = ["run"] + (["--config", str(args.config)] if args.config else [])
        return Supervisor(argv, args.workers).run()
    index = worker_index()
    if index is not None:
        metrics = dataclasses.replace(config.metrics, port=worker_port(config.metrics.port, index))
        config = dataclasses.replace(config, metrics=metrics)
    # Imported here: the service pulls in aiokafka, which the offline commands do not need.
    from prometheus_client import disable_created_metrics

    from filterd import faults
    from filterd.service import Service

    faults.install_from_env()  # the fault suite's hook; nothing unless asked for

    # No *_created series next to every counter and histogram: nobody graphs them.
    disable_created_metrics()  # type: ignore[no-untyped-call]

    return Service(config).run()


def cmd_replay(args: argparse.Namespace) -> int:
    from filterd.replay import format_summary, replay

    config = _config(args.config)
    if not args.input.is_file():
        raise ConfigError("--input", f"no such file: {args.input}")
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError("--out", f"{args.out} is a file, not a directory")
    from filterd.snapshot.signing import verifier_for

    verifier = verifier_for(config.snapshot.public_key)
    at_ms = args.at if args.at is not None else time.time_ns() // 1_000_000
    result = replay(args.snapshot, args.input, args.out, config.policy,
                    compare_root=args.compare, at_ms=at_ms, verifier=verifier)  # fmt: skip
    print(format_summary(result), file=sys.stdout)
    return 0
