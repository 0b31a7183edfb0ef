"""``filterd loadgen dataset|events|produce``: synthetic consent data and traffic."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator

import orjson

from filterd.errors import ConfigError
from filterd.loadgen.dataset import load_dataset
from filterd.loadgen.events import iter_events, parse_mix

Record = tuple[bytes | None, bytes]

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``filterd loadgen`` and its subcommands."""
    loadgen = subparsers.add_parser(
        "loadgen",
        help="synthetic consent data sets and SMS traffic, deterministic from a seed",
        description="Generate a synthetic consent population and traffic against it.",
    )
    sub = loadgen.add_subparsers(dest="loadgen_command", metavar="SUBCOMMAND", required=True)

    dataset = sub.add_parser(
        "dataset", help="write consents/optouts/dnd CSVs and population.json into a directory"
    )
    dataset.add_argument("--out", required=True, help="directory to write")
    dataset.add_argument("--senders", type=int, default=100, help="senders (default 100)")
    dataset.add_argument(
        "--recipients", type=int, default=100_000, help="recipient numbers (default 100000)"
    )
    dataset.add_argument(
        "--consents", type=int, default=300_000, help="consent rows (default 300000)"
    )
    dataset.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    dataset.set_defaults(func=_run_dataset)

    events = sub.add_parser("events", help="write events as JSON lines (the replay input)")
    _event_args(events)
    events.add_argument("--out", required=True, help="the .jsonl file to write ('-': stdout)")
    events.add_argument(
        "--ts-ms", type=int, help="ts of the first event, +1 per event (default: the clock)"
    )
    events.set_defaults(func=_run_events)

    produce = sub.add_parser("produce", help="send events to a Kafka topic")
    _event_args(produce)
    produce.add_argument("--config", help="filterd TOML config: broker, security, input topic")
    produce.add_argument("--bootstrap", metavar="HOST:PORT", help="broker (default: config)")
    produce.add_argument("--topic", help="topic (default: the config's input topic)")
    pace = produce.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, metavar="MSGS_PER_S", help="average send rate")
    pace.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    produce.add_argument(
        "--profile",
        choices=("flat", "double11"),
        default="flat",
        help="rate shape: flat, or double11 (baseline, ramp to a midnight peak, decay)",
    )
    produce.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a progress line on stderr each second (default: on)",
    )
    produce.set_defaults(func=_run_produce)


def _event_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="directory of `loadgen dataset`")
    parser.add_argument("--count", type=int, required=True, help="events to generate")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--bad-rate", type=float, default=0.01, help="share of invalid events (default 0.01)"
    )
    parser.add_argument(
        "--mix",
        default="marketing=0.7,transactional=0.15,verification=0.1,promo=0.05",
        help="category shares, CATEGORY=SHARE,... (default %(default)s)",
    )


def _event_source(args: argparse.Namespace, ts_ms: int | None) -> Iterator[Record]:
    if args.count < 0:
        raise ConfigError("--count", "must not be negative")
    try:
        mix = parse_mix(args.mix)
        return iter_events(
            load_dataset(args.dataset),
            args.count,
            seed=args.seed,
            bad_rate=args.bad_rate,
            mix=mix,
            ts_ms=ts_ms,
        )
    except ValueError as exc:
        raise ConfigError("--mix/--bad-rate", str(exc)) from exc


def _run_dataset(args: argparse.Namespace) -> int:
    from filterd.loadgen.dataset import write_dataset

    start = time.monotonic()
    ds = write_dataset(
        args.out,
        senders=args.senders,
        recipients=args.recipients,
        consents=args.consents,
        seed=args.seed,
    )
    summary = {
        "out": str(args.out),
        "senders": len(ds.senders),
        "recipients": ds.recipients,
        "consents": sum(s.consents for s in ds.senders),
        "optouts": sum(s.optouts_consented + s.optouts_only for s in ds.senders),
        "dnd": ds.dnd_count,
        "seconds": round(time.monotonic() - start, 3),
    }
    sys.stdout.buffer.write(orjson.dumps(summary) + b"\n")
    return 0


def _run_events(args: argparse.Namespace) -> int:
    events = _event_source(args, args.ts_ms)
    start = time.monotonic()
    n = nbytes = 0
    out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    try:
        buf: list[bytes] = []
        for _key, value in events:
            buf.append(value)
            nbytes += len(value)
            n += 1
            if len(buf) >= 4096:
                buf.append(b"")
                out.write(b"\n".join(buf))
                buf.clear()
        if buf:
            buf.append(b"")
            out.write(b"\n".join(buf))
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    seconds = time.monotonic() - start
    summary = {
        "events": n,
        "bytes": nbytes,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    (sys.stderr if args.out == "-" else sys.stdout).write(orjson.dumps(summary).decode() + "\n")
    return 0


def _run_produce(args: argparse.Namespace) -> int:
    from filterd.loadgen.produce import produce_events

    options: dict[str, object] = {}
    bootstrap, topic = args.bootstrap, args.topic
    if args.config:
        from filterd.config import load_config

        config = load_config(args.config)
        options = dict(config.kafka.client_options())
        bootstrap = bootstrap or str(options.pop("bootstrap_servers"))
        topic = topic or config.topics.input
    if not bootstrap:
        raise ConfigError("--bootstrap", "give --bootstrap or --config")
    if not topic:
        raise ConfigError("--topic", "give --topic or --config")
    if args.profile != "flat" and args.rate is None:
        raise ConfigError("--profile", f"{args.profile} needs --rate")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate", "must be positive")
    events = _event_source(args, None)
    stats = asyncio.run(
        produce_events(
            bootstrap,
            topic,
            events,
            rate=args.rate,
            profile=args.profile,
            client_options=options,
            progress=args.progress,
            count=args.count,
        )
    )
    sys.stdout.buffer.write(orjson.dumps({"topic": topic, **stats.as_dict()}) + b"\n")
    return 0
