"""The evidence file: one row per blocked message, for a case file.

Rows are written as records are read, so an export of any size runs in
bounded memory. Recipients are masked unless the caller asks otherwise
(``--unmask``, which the command logs with who and when).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from datetime import tzinfo
from typing import IO, Final, NamedTuple

import orjson

from filterd.audit.mask import full_recipient, mask_recipient
from filterd.audit.reasons import REASON_TABLE
from filterd.audit.records import AuditRecord, event_fields
from filterd.audit.timeutil import format_ms
from filterd.errors import ConfigError

#: Columns of the evidence file, in order (CSV header and JSON-lines keys).
COLUMNS: tuple[str, ...] = (
    "id",
    "sender",
    "recipient",
    "category",
    "route",
    "reason",
    "snapshot",
    "source",
    "record",
    "record_ts",
    "record_time",
    "event_ts",
    "event_time",
)


#: Every reason code an output record may carry (docs/contract.md "Policy and
#: reason codes"), including those of rules to come, so that an auditor's query
#: for them keeps working when they arrive.
KNOWN_REASONS: Final = tuple(sorted(r.code for r in REASON_TABLE))


def check_reasons(reasons: Iterable[str]) -> frozenset[str]:
    """The ``--reason`` values, refused (naming the valid ones) unless all are known."""
    chosen = frozenset(reasons)
    unknown = sorted(chosen.difference(KNOWN_REASONS))
    if unknown:
        raise ConfigError(
            "--reason",
            f"unknown reason code {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(KNOWN_REASONS)}",
        )
    return chosen


class ExportFilter(NamedTuple):
    """Which records an export keeps; empty means "all"."""

    senders: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()


class ExportRow(NamedTuple):
    """One row of the evidence file."""

    #: The message id; empty if the value has none (invalid topic).
    id: str
    #: The sender id, trimmed.
    sender: str
    #: The recipient, masked (``+86138****5678``) unless unmasked.
    recipient: str
    #: The category as sent; empty when absent (the decision reads that as marketing).
    category: str
    route: str
    reason: str
    #: The snapshot version that decided.
    snapshot: str
    #: ``topic/partition/offset`` of the input record.
    source: str
    #: ``topic/partition/offset`` of this output record.
    record: str
    #: The output record's Kafka timestamp, ms since the epoch, and as ISO 8601.
    record_ts: int
    record_time: str
    #: The event's own ``ts`` (when the sender submitted it), if any.
    event_ts: int | None
    event_time: str


def export_rows(
    records: Iterable[AuditRecord],
    *,
    selection: ExportFilter,
    tz: tzinfo,
    country_code: str,
    unmask: bool = False,
) -> Iterable[ExportRow]:
    """Turn records into evidence rows, keeping those the filter selects."""
    show = full_recipient if unmask else mask_recipient
    for record in records:
        if selection.reasons and record.reason not in selection.reasons:
            continue
        fields = event_fields(record.value)
        sender = fields.sender or ""
        if selection.senders and sender not in selection.senders:
            continue
        yield ExportRow(
            id=fields.id or "",
            sender=sender,
            recipient=show(fields.recipient, country_code),
            category=fields.category or "",
            route=record.route,
            reason=record.reason,
            snapshot=record.snapshot,
            source=record.source,
            record=record.location,
            record_ts=record.timestamp_ms,
            record_time=format_ms(record.timestamp_ms, tz),
            event_ts=fields.ts,
            event_time=format_ms(fields.ts, tz) if fields.ts is not None else "",
        )


class RowWriter:
    """Writes rows as CSV (with a header) or JSON lines to a text stream."""

    def __init__(self, out: IO[str], fmt: str) -> None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"unknown export format {fmt!r}")
        self._out = out
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)
        #: Rows written so far.
        self.rows = 0

    def write(self, rows: Iterable[ExportRow]) -> None:
        """Write rows; call as often as needed."""
        if self._csv is not None:
            for row in rows:
                self._csv.writerow(_csv_cells(row))
                self.rows += 1
        else:
            write = self._out.write
            for row in rows:
                write(orjson.dumps(row._asdict()).decode())
                write("\n")
                self.rows += 1


# Senders choose ids, sender names and categories: a cell starting with one
# of these would run as a formula when the auditor opens the CSV in a
# spreadsheet (OWASP "CSV injection"), so such cells get a leading quote.
# The numbers filterd writes itself (``+86138****5678``) are left alone.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PHONE = re.compile(r"^\+[0-9*]+$")


def _csv_cells(row: ExportRow) -> Sequence[object]:
    cells: list[object] = []
    for cell in row:
        if cell is None:
            # An absent event ts is an empty cell, not the text "None".
            cells.append("")
        elif isinstance(cell, str) and cell.startswith(_FORMULA_START) and not _PHONE.match(cell):
            cells.append("'" + cell)
        else:
            cells.append(cell)
    return cells
