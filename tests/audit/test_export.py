from __future__ import annotations

import csv
import getpass
import io
import logging
import re
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from filterd.audit.export import COLUMNS, ExportFilter, RowWriter, export_rows
from filterd.audit.records import AuditRecord

from .clihelp import run_cli, write_config
from .streams import BASE_MS, HOUR_MS, Routed, generate, produce


def expected_mask(recipient: str) -> str:
    """Independent of filterd.numbers: the generated recipients are Chinese mobiles."""
    national = re.sub(r"\D", "", recipient).removeprefix("86")
    assert len(national) == 11
    return f"+86{national[:3]}****{national[-4:]}"


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds")


def check_row(row: dict[str, str], r: Routed, *, masked: bool = True) -> None:
    assert row["sender"] == r.sender
    assert row["reason"] == r.reason
    assert row["route"] == "block"
    assert row["snapshot"] == r.snapshot
    assert row["source"] == r.source
    assert row["category"] == (r.category or "")
    assert row["recipient"] == (
        expected_mask(r.recipient)
        if masked
        else "+86"
        + expected_mask(r.recipient)[3:6]
        + re.sub(r"\D", "", r.recipient).removeprefix("86")[3:]
    )
    assert int(row["record_ts"]) == r.ts_ms
    assert row["record_time"] == iso(r.ts_ms)
    assert int(row["event_ts"]) == r.ts_ms - 5


async def test_export_csv_is_masked_by_default_and_matches_the_stream(
    kafka_bootstrap: str, new_topic, tmp_path
) -> None:
    topic = await new_topic(partitions=3)
    routed = generate(3000, seed=21, step_ms=5_000)
    await produce(kafka_bootstrap, topic, routed)
    config = write_config(tmp_path / "f.toml", kafka_bootstrap, block=topic)
    start, end = BASE_MS + HOUR_MS, BASE_MS + 3 * HOUR_MS
    out = tmp_path / "evidence.csv"
    code = await run_cli(
        "audit",
        "export",
        "--config",
        str(config),
        "--out",
        str(out),
        "--from",
        iso(start),
        "--to",
        str(end),
    )
    assert code == 0
    text = out.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS
    inside = {r.id: r for r in routed if start <= r.ts_ms < end}
    assert sorted(row["id"] for row in rows) == sorted(inside)
    for row in rows:
        check_row(row, inside[row["id"]])
    # The recipient column was checked above; no number leaks in another form either.
    for r in inside.values():
        assert r.recipient not in text


async def test_export_filters_and_unmask_is_logged(
    kafka_bootstrap: str, new_topic, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    topic = await new_topic(partitions=2)
    routed = generate(1500, seed=22, step_ms=1_000)
    await produce(kafka_bootstrap, topic, routed, partitions=2)
    config = write_config(tmp_path / "f.toml", kafka_bootstrap, block=topic)
    top_sender = Counter(r.sender for r in routed).most_common(1)[0][0]
    out = tmp_path / "evidence.jsonl"
    with caplog.at_level(logging.WARNING, logger="filterd.audit.commands"):
        code = await run_cli(
            "audit",
            "export",
            "--config",
            str(config),
            "--out",
            str(out),
            "--format",
            "jsonl",
            "--sender",
            top_sender,
            "--reason",
            "no-consent",
            "--reason",
            "opted-out",
            "--unmask",
        )
    assert code == 0
    rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    expected = {
        r.id: r
        for r in routed
        if r.sender == top_sender and r.reason in ("no-consent", "opted-out")
    }
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        check_row({k: str(v) for k, v in row.items()}, expected[row["id"]], masked=False)
    (warning,) = [r for r in caplog.records if "unmasked" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert getpass.getuser() in warning.getMessage()


def test_masking_is_the_default_of_export_rows() -> None:
    record = AuditRecord(
        "b",
        0,
        7,
        1000,
        None,
        b'{"id":"x","sender":"s","recipient":"13812345678"}',
        "block",
        "no-consent",
        "v1",
        "in/0/3",
    )
    (row,) = export_rows([record], selection=ExportFilter(), tz=UTC, country_code="86")
    assert row.recipient == "+86138****5678"
    assert row.record == "b/0/7"
    assert row.event_ts is None
    assert row.event_time == ""


def test_csv_cells_cannot_become_spreadsheet_formulas() -> None:
    value = b'{"id":"=HYPERLINK(\\"http://x\\")","sender":"@evil","recipient":"+8613812345678",'
    value += b'"category":"-2+3"}'
    record = AuditRecord("b", 0, 0, 0, None, value, "block", "no-consent", "v1", "in/0/0")
    buf = io.StringIO()
    RowWriter(buf, "csv").write(
        export_rows([record], selection=ExportFilter(), tz=UTC, country_code="86")
    )
    (row,) = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert row["id"] == '\'=HYPERLINK("http://x")'
    assert row["sender"] == "'@evil"
    assert row["category"] == "'-2+3"
    assert row["recipient"] == "+86138****5678"  # our own format stays as it is
