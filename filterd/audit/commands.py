"""``filterd audit summary|export|why|report``: the auditors' command line.

Thin glue: parse arguments, load the config, run one of the readers, print.
Times are ISO 8601 or epoch milliseconds, ``--from`` inclusive and ``--to``
exclusive, compared with the output record's Kafka timestamp.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import orjson

from filterd.audit.aggregate import Summary, TopicCounts
from filterd.audit.bombing import UTC_ZONE, LimitCounts, write_limits_csv, write_limits_table
from filterd.audit.consent_report import load_versions
from filterd.audit.coverage import Coverage
from filterd.audit.export import ExportFilter, RowWriter, check_reasons, export_rows
from filterd.audit.mask import full_recipient, mask_recipient
from filterd.audit.optouts import Honoured, honoured
from filterd.audit.optouts import csv_rows as optouts_csv_rows
from filterd.audit.optouts import write_table as write_optouts_table
from filterd.audit.output import format_why, write_summary_csv, write_summary_table
from filterd.audit.reader import (
    KafkaParams,
    LateRecords,
    ProgressCallback,
    RangeReader,
    ReadProgress,
)
from filterd.audit.records import event_fields
from filterd.audit.report import BurstRule, ReportMeta, render_report
from filterd.audit.timeutil import HourBuckets, TimeRange, format_ms, parse_time, parse_tz
from filterd.audit.why import (
    Redecider,
    Sighting,
    changes_up_to,
    consent_evidence,
    find_message,
    snapshot_loader,
)
from filterd.errors import BrokerError, ConfigError, FilterdError

if TYPE_CHECKING:
    from filterd.config import Config

logger = logging.getLogger(__name__)

_TIME_HELP = (
    "ISO 8601 (2026-11-11T00:00:00+08:00, 2026-11-11; without an offset read in --tz) "
    "or epoch milliseconds"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``filterd audit`` and its subcommands."""
    audit = subparsers.add_parser(
        "audit",
        help="read the block topic: summaries, evidence files, single decisions, reports",
        description="Read filterd's output topics for a time range, without joining a "
        "consumer group or committing anything.",
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)

    summary = sub.add_parser("summary", help="counts by reason, sender, hour and snapshot")
    _common(summary)
    summary.add_argument("--invalid", action="store_true", help="also read the invalid topic")
    summary.add_argument("--format", choices=("table", "json", "csv"), default="table")
    summary.add_argument("--top", type=int, default=20, help="senders listed (default 20)")
    summary.add_argument(
        "--monitored",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read the deliver topic for monitored would-blocks "
        "(default: when the config's [policy] monitor lists reasons)",
    )
    summary.set_defaults(func=_pipe_safe(_run_summary))

    export = sub.add_parser("export", help="one row per blocked message: the evidence file")
    _common(export)
    export.add_argument("--out", required=True, help="file to write ('-' for stdout)")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--sender", action="append", default=[], help="only this sender (repeat)")
    export.add_argument("--reason", action="append", default=[], help="only this reason (repeat)")
    export.add_argument("--invalid", action="store_true", help="also read the invalid topic")
    export.add_argument(
        "--unmask", action="store_true", help="write full recipient numbers (logged)"
    )
    export.set_defaults(func=_pipe_safe(_run_export))

    why = sub.add_parser("why", help="find one message by id and re-decide it")
    why.add_argument("id", help="the message id")
    _common(why)
    why.add_argument("--snapshot-root", type=Path, help="default: [snapshot] root of the config")
    why.add_argument("--format", choices=("text", "json"), default="text")
    why.add_argument("--unmask", action="store_true", help="show the full recipient (logged)")
    why.set_defaults(func=_pipe_safe(_run_why))

    report = sub.add_parser(
        "report",
        help="a printable HTML report: delivered and blocked per sender, reasons, evidence",
    )
    _common(report)
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument(
        "--invalid",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the invalid topic for its own section (default: yes)",
    )
    report.add_argument(
        "--deliver",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read the deliver topic for delivered counts and block rates (default: yes)",
    )
    report.add_argument(
        "--deliver-limit",
        type=int,
        metavar="N",
        help="count at most N delivered records (the report says the counts are partial)",
    )
    report.add_argument("--top", type=int, default=20, help="senders charted (default 20)")
    report.add_argument("--burst-window", type=int, default=6, help="hours of baseline")
    report.add_argument("--burst-min", type=int, default=50, help="blocks in the hour, at least")
    report.add_argument("--burst-ratio", type=float, default=5.0, help="times the baseline")
    report.set_defaults(func=_pipe_safe(_run_report))


def _pipe_safe(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Exit quietly when stdout is closed early (``filterd audit export --out - | head``)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            # Python would report the error again when flushing stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141  # as a shell reports a process ended by SIGPIPE

    return run


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="filterd TOML config (topics, broker, snapshots)")
    parser.add_argument("--from", dest="start", metavar="T", help=f"inclusive; {_TIME_HELP}")
    parser.add_argument("--to", dest="end", metavar="T", help=f"exclusive; {_TIME_HELP}")
    parser.add_argument(
        "--tz", default="UTC", help="zone for hours and times: UTC, +08:00, Asia/Shanghai"
    )
    parser.add_argument(
        "--late-ms",
        type=int,
        default=300_000,
        metavar="MS",
        help="read this far past --to for records stamped out of order (default 300000)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: when stderr is a terminal)",
    )


class _Context:
    """What every subcommand derives from its common arguments."""

    def __init__(self, args: argparse.Namespace) -> None:
        from filterd.config import load_config
        from filterd.logs import setup_logging

        self.config: Config = load_config(args.config)
        setup_logging(self.config.logging.format, self.config.logging.level)
        # aiokafka logs every manual assignment at INFO: noise on an auditor's terminal.
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
        try:
            self.tz: tzinfo = parse_tz(args.tz)
            start = parse_time(args.start, self.tz) if args.start else None
            end = parse_time(args.end, self.tz) if args.end else None
        except ValueError as exc:
            raise ConfigError("--from/--to/--tz", str(exc)) from exc
        if start is not None and end is not None and end <= start:
            raise ConfigError("--to", "must be later than --from")
        self.tz_label: str = args.tz
        self.time_range = TimeRange(start, end)
        if args.late_ms < 0:
            raise ConfigError("--late-ms", "must be >= 0")
        self.late_ms: int = args.late_ms
        self.params = kafka_params(self.config)
        self.config_given: bool = args.config is not None
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        self.progress: ProgressCallback | None = _print_progress if show else None

    def limit_counts(self) -> LimitCounts:
        """Empty counts of the limits' blocks, quiet hours read in the recipients'
        zones of the config (in UTC when no config was given)."""
        return limit_counts(self.config if self.config_given else None)

    def coverage(self, late: LateRecords) -> Coverage:
        """What was read, after the read; its warning (if any) goes to the log too."""
        coverage = Coverage(self.time_range, self.tz, self.tz_label, self.late_ms, late)
        warning = coverage.warning()
        if warning is not None:
            logger.warning("%s", warning.removeprefix("warning: "))
        return coverage


def kafka_params(config: Config) -> KafkaParams:
    """The reader's broker parameters from a loaded config."""
    options = dict(config.kafka.client_options())
    bootstrap = str(options.pop("bootstrap_servers", config.kafka.bootstrap_servers))
    # The audit names itself in broker logs, not as the service.
    options.pop("client_id", None)
    return KafkaParams(bootstrap, options)


def limit_counts(config: Config | None) -> LimitCounts:
    """Empty :class:`LimitCounts` for a config's zones; UTC hours when ``config`` is None."""
    if config is None:
        return LimitCounts(zone_note=UTC_ZONE)
    from filterd.limits import LimitRules

    policy = config.policy
    rules = LimitRules(policy)
    zones = f"[policy] timezone {policy.timezone}"
    if policy.timezones:
        zones += " and [policy.timezones]"
    return LimitCounts(
        lambda number, at_ms: rules.offset(rules.zone_of(number), at_ms),
        zone_note=f"the recipient's local time ({zones})",
        country_code=policy.default_country_code,
    )


def _print_progress(p: ReadProgress) -> None:
    share = 100 * p.done / p.total if p.total else 100.0
    end = "\n" if p.done >= p.total else ""
    print(
        f"\rread {p.done}/{p.total} offsets ({share:.0f} %), {p.records} records",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def _log_unmask(what: str) -> None:
    # PIPL: full numbers leave the masked default only on purpose, and the
    # log says who asked for them and when.
    logger.warning(
        "recipient numbers unmasked for %s by user %s at %s",
        what,
        getpass.getuser(),
        format_ms(int(time.time() * 1000)),
    )


def _topics(config: Config, invalid: bool) -> list[str]:
    return [config.topics.block, config.topics.invalid] if invalid else [config.topics.block]


async def summarize(
    params: KafkaParams,
    topics: list[str],
    time_range: TimeRange,
    buckets: HourBuckets,
    *,
    sender_hours: bool = False,
    progress: ProgressCallback | None = None,
    late_ms: int = 0,
    limits: LimitCounts | None = None,
) -> Summary:
    """Read ``topics`` over the range into a :class:`Summary` (and the limits'
    blocks into ``limits`` when given)."""
    summary = Summary(buckets, sender_hours=sender_hours)
    async with RangeReader(
        params, topics, time_range, progress=progress, late_ms=late_ms
    ) as reader:
        async for batch in reader.batches():
            summary.add_batch(batch)
            summary.first_blocks.add_batch(batch)
            if limits is not None:
                limits.add_blocks(batch)
    summary.late = reader.late()
    if reader.skipped_out_of_range:
        logger.info(
            "%d records between the range's offsets had timestamps outside it (skipped)",
            reader.skipped_out_of_range,
        )
    return summary


async def count_topic(
    params: KafkaParams,
    topic: str,
    time_range: TimeRange,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    late_ms: int = 0,
) -> TopicCounts:
    """Per-sender and per-reason counts of ``topic`` over the range, at most
    ``limit`` records (then :attr:`TopicCounts.complete` is False)."""
    counts = TopicCounts(limit)
    async with RangeReader(
        params, [topic], time_range, progress=progress, late_ms=late_ms, reason_only=True
    ) as reader:
        async for batch in reader.batches():
            if counts.full():
                counts.complete = False
                break
            counts.add_batch(batch)
    counts.late = reader.late()
    return counts


async def optouts_honoured(ctx: _Context, summary: Summary) -> Honoured | None:
    """The live opt-outs the summary's blocks name, read back from the changes topic
    (None when no changes topic is configured or no block names a live change)."""
    if not ctx.config.topics.changes or not summary.first_blocks.first_ms:
        return None
    return await honoured(ctx.params, summary.first_blocks, ctx.config.policy.default_country_code)


async def _read_summary(
    ctx: _Context, *, invalid: bool, monitored: bool
) -> tuple[Summary, LimitCounts, Honoured | None]:
    """The block (and invalid) topics summarized; with ``monitored`` the deliver
    topic's would-block headers counted too; the live opt-outs honoured."""
    limits = ctx.limit_counts()
    summary = await summarize(
        ctx.params,
        _topics(ctx.config, invalid),
        ctx.time_range,
        HourBuckets(ctx.tz),
        progress=ctx.progress,
        late_ms=ctx.late_ms,
        limits=limits,
    )
    if monitored:
        try:
            delivered = await count_topic(
                ctx.params,
                ctx.config.topics.deliver,
                ctx.time_range,
                progress=ctx.progress,
                late_ms=ctx.late_ms,
            )
        except BrokerError as exc:
            raise BrokerError(f"{exc} (--no-monitored skips it)") from exc
        limits.add_would_block(delivered.would_block)
        late = summary.late
        summary.late = LateRecords(
            late.records + delivered.late.records,
            max(late.needed_ms, delivered.late.needed_ms),
        )
    return summary, limits, await optouts_honoured(ctx, summary)


def _run_summary(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    monitored = args.monitored if args.monitored is not None else bool(ctx.config.policy.monitor)
    summary, limits, optouts = asyncio.run(
        _read_summary(ctx, invalid=args.invalid, monitored=monitored)
    )
    coverage = ctx.coverage(summary.late)
    out = sys.stdout
    if args.format == "json":
        doc = {
            "range": coverage.to_json(),
            **summary.to_json(args.top),
            "limits": limits.to_json(args.top),
        }
        if optouts is not None:
            doc["optouts_honoured"] = optouts.to_json()
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
    elif args.format == "csv":
        write_summary_csv(summary, args.top, out, coverage)
        write_limits_csv(limits, args.top, out)
        if optouts is not None:
            csv.writer(out, lineterminator="\n").writerows(optouts_csv_rows(optouts))
    else:
        write_summary_table(summary, args.top, out, coverage)
        write_limits_table(limits, args.top, out, monitored=monitored)
        if optouts is not None:
            write_optouts_table(optouts, out)
    return 0


def _open_out(path: str) -> tuple[TextIO, Callable[[], None]]:
    if path == "-":
        return sys.stdout, lambda: None
    handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
    return handle, handle.close


async def export(
    params: KafkaParams,
    topics: list[str],
    time_range: TimeRange,
    writer: RowWriter,
    *,
    selection: ExportFilter,
    tz: tzinfo,
    country_code: str,
    unmask: bool = False,
    progress: ProgressCallback | None = None,
    late_ms: int = 0,
) -> tuple[int, LateRecords]:
    """Write the evidence rows of ``topics`` over the range; return the count
    and the records the late margin missed."""
    async with RangeReader(
        params, topics, time_range, progress=progress, late_ms=late_ms
    ) as reader:
        async for batch in reader.batches():
            writer.write(
                export_rows(
                    batch, selection=selection, tz=tz, country_code=country_code, unmask=unmask
                )
            )
    return writer.rows, reader.late()


def _run_export(args: argparse.Namespace) -> int:
    # Before anything connects: a misspelt reason would export nothing.
    reasons = check_reasons(args.reason)
    ctx = _Context(args)
    if args.unmask:
        _log_unmask(f"export to {args.out}")
    out, close = _open_out(args.out)
    try:
        writer = RowWriter(out, args.format)
        rows, late = asyncio.run(
            export(
                ctx.params,
                _topics(ctx.config, args.invalid),
                ctx.time_range,
                writer,
                selection=ExportFilter(frozenset(args.sender), reasons),
                tz=ctx.tz,
                country_code=ctx.config.policy.default_country_code,
                unmask=args.unmask,
                progress=ctx.progress,
                late_ms=ctx.late_ms,
            )
        )
    finally:
        close()
    # The evidence file holds rows only; what it covers goes to stderr.
    coverage = ctx.coverage(late)
    print(f"exported {rows} rows to {args.out}; {coverage.describe()}", file=sys.stderr)
    return 0


def _run_why(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    cfg = ctx.config
    if args.unmask:
        _log_unmask(f"message {args.id}")
    topics = [cfg.topics.block, cfg.topics.deliver, cfg.topics.invalid]
    found = asyncio.run(
        find_message(
            ctx.params, topics, args.id, ctx.time_range, progress=ctx.progress, late_ms=ctx.late_ms
        )
    )
    root = args.snapshot_root if args.snapshot_root is not None else cfg.snapshot.root
    loader = snapshot_loader(cfg.snapshot.public_key, cfg.policy.default_country_code)
    redecider = Redecider(root, cfg.policy, loader)
    country = cfg.policy.default_country_code
    show = full_recipient if args.unmask else mask_recipient
    # A record a live change decided is re-decided with the changes up to that one.
    changes = {
        where: asyncio.run(changes_up_to(ctx.params, where, country))
        for where in {r.change for r in found if r.change is not None}
    }
    sightings = [
        Sighting(
            record,
            redecider.redecide(record, changes.get(record.change or "")),
            consent_evidence(root, record),
        )
        for record in found
    ]
    if args.format == "json":
        doc = {
            "id": args.id,
            "found": [
                s.to_json(show(event_fields(s.record.value).recipient, country)) for s in sightings
            ],
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_why(args.id, sightings, ctx.tz, show, country))
    if not sightings:
        return 1
    return 0 if all(s.redecision.reproduces is not False for s in sightings) else 3


async def _read_report(
    ctx: _Context,
    *,
    deliver: bool,
    invalid: bool,
    deliver_limit: int | None,
    limits: LimitCounts | None = None,
) -> tuple[Summary, TopicCounts | None, TopicCounts | None, Honoured | None]:
    """The block topic summarized (its limits' blocks into ``limits``); the deliver and
    invalid topics counted (or None); the live opt-outs honoured (None without a changes
    topic)."""
    topics = ctx.config.topics
    progress, late_ms = ctx.progress, ctx.late_ms
    summary = await summarize(
        ctx.params,
        [topics.block],
        ctx.time_range,
        HourBuckets(ctx.tz),
        sender_hours=True,
        progress=progress,
        late_ms=late_ms,
        limits=limits,
    )
    delivered = invalids = None
    try:
        if deliver:
            delivered = await count_topic(
                ctx.params,
                topics.deliver,
                ctx.time_range,
                limit=deliver_limit,
                progress=progress,
                late_ms=late_ms,
            )
        if invalid:
            invalids = await count_topic(
                ctx.params, topics.invalid, ctx.time_range, progress=progress, late_ms=late_ms
            )
    except BrokerError as exc:
        which = "--no-invalid" if delivered is not None or not deliver else "--no-deliver"
        raise BrokerError(f"{exc} ({which} skips it)") from exc
    return summary, delivered, invalids, await optouts_honoured(ctx, summary)


def _run_report(args: argparse.Namespace) -> int:
    ctx = _Context(args)
    if args.deliver_limit is not None and args.deliver_limit < 1:
        raise ConfigError("--deliver-limit", "must be >= 1")
    cfg = ctx.config
    topics = [cfg.topics.block]
    topics += [cfg.topics.deliver] if args.deliver else []
    topics += [cfg.topics.invalid] if args.invalid else []
    limits = ctx.limit_counts()
    summary, delivered, invalids, optouts = asyncio.run(
        _read_report(
            ctx,
            deliver=args.deliver,
            invalid=args.invalid,
            deliver_limit=args.deliver_limit,
            limits=limits,
        )
    )
    if delivered is not None:
        limits.add_would_block(delivered.would_block)
    late = summary.late
    for counts in (delivered, invalids):
        if counts is not None:
            late = LateRecords(
                late.records + counts.late.records, max(late.needed_ms, counts.late.needed_ms)
            )
    meta = ReportMeta(
        topics=topics,
        time_range=ctx.time_range,
        tz=ctx.tz,
        tz_label=ctx.tz_label,
        generated_ms=int(time.time() * 1000),
        top=args.top,
        burst_rule=BurstRule(args.burst_window, args.burst_min, args.burst_ratio),
        versions=load_versions(ctx.config.snapshot.root, sorted(summary.by_snapshot)),
        late_ms=ctx.late_ms,
        late=ctx.coverage(late).late,
        delivered=delivered,
        invalid=invalids,
        optouts=optouts,
        limits=limits,
    )
    document = render_report(summary, meta)
    tmp = f"{args.out}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(document)
        os.replace(tmp, args.out)
    except OSError as exc:
        raise FilterdError(f"cannot write {args.out}: {exc}") from exc
    logger.info("report of %d records written to %s", summary.total, args.out)
    return 0
