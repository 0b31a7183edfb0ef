"""An audit states the range it covers and never undercounts silently: records stamped
inside the range but written past the late margin are found and reported, with the
``--late-ms`` that reads them; unknown ``--reason`` codes are refused before connecting."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from filterd.audit.coverage import Coverage
from filterd.audit.export import KNOWN_REASONS, check_reasons
from filterd.audit.reader import LateRecords
from filterd.audit.timeutil import TimeRange
from filterd.errors import ConfigError

from .clihelp import run_cli, write_config
from .streams import BASE_MS, produce
from .test_reader import stamped

CST = timezone(timedelta(hours=8))


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, CST).isoformat(timespec="milliseconds")


@pytest.mark.kafka
async def test_records_past_the_late_margin_are_reported_not_dropped_silently(
    kafka_bootstrap: str, new_topic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = await new_topic(partitions=1)
    b = BASE_MS
    # Range [b+10_000, b+40_000). b+31_000 and b+35_000 were stamped inside it but written
    # after a record stamped b+95_000: a lagging input partition. --late-ms 10000 stops the
    # read at b+95_000, so they are missed; a margin past 95_000 - 40_000 reaches them.
    stamps = [b + 10_000, b + 20_000, b + 95_000, b + 31_000, b + 35_000, b + 200_000]
    await produce(kafka_bootstrap, topic, stamped(stamps, "o"), partitions=1)
    config = str(write_config(tmp_path / "f.toml", kafka_bootstrap, block=topic))
    window = ["--from", iso(b + 10_000), "--to", iso(b + 40_000), "--tz", "+08:00"]

    capsys.readouterr()
    args = ["audit", "summary", "--config", config, *window]
    assert await run_cli(*args, "--format", "json", "--late-ms", "10000") == 0
    out = capsys.readouterr()
    got = orjson.loads(out.out)
    assert got["total"] == 2
    assert got["range"] == {
        "from": iso(b + 10_000),
        "to": iso(b + 40_000),
        "tz": "+08:00",
        "late_ms": 10_000,
        "late_beyond_margin": 2,
        "suggested_late_ms": 56_000,
        "warning": "warning: at least 2 records stamped inside the range were found past "
        "the --late-ms 10000 margin and are not counted; re-run with --late-ms 56000",
    }
    assert "re-run with --late-ms 56000" in out.err

    # The suggested margin reads them: every record in range, no warning.
    assert await run_cli(*args, "--format", "json", "--late-ms", "56000") == 0
    out = capsys.readouterr()
    again = orjson.loads(out.out)
    assert again["total"] == 4
    assert again["range"]["late_beyond_margin"] == 0
    assert again["range"]["warning"] is None
    assert "late-ms" not in out.err

    # Table and CSV say the same.
    assert await run_cli(*args, "--late-ms", "10000") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == (
        f"range: from {iso(b + 10_000)} (inclusive) to {iso(b + 40_000)} (exclusive), "
        "--tz +08:00; read --late-ms 10000 past --to for records stamped out of order"
    )
    assert table[1] == got["range"]["warning"]
    assert table[2] == "total  2"
    assert await run_cli(*args, "--format", "csv", "--late-ms", "10000") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    ranged = {key: value for section, key, _, value in rows[1:] if section == "range"}
    assert ranged["late_beyond_margin"] == "2"
    assert ranged["suggested_late_ms"] == "56000"
    assert ranged["from"] == iso(b + 10_000)

    # The export says it on stderr; the evidence file holds rows only.
    evidence = tmp_path / "e.csv"
    export = ["audit", "export", "--config", config, *window, "--out", str(evidence)]
    assert await run_cli(*export, "--late-ms", "10000") == 0
    err = capsys.readouterr().err
    assert f"exported 2 rows to {evidence}; range: from {iso(b + 10_000)}" in err
    assert "at least 2 records stamped inside the range" in err
    assert len(evidence.read_text().splitlines()) == 3

    # So does the report.
    page = tmp_path / "r.html"
    report = ["audit", "report", "--config", config, *window, "--out", str(page), "--no-deliver"]
    # The deliver topic is read unless --no-deliver says not to; a missing one is named.
    assert await run_cli(*report[:-1], "--no-invalid") != 0
    assert "(--no-deliver skips it)" in capsys.readouterr().err
    report.append("--no-invalid")
    assert await run_cli(*report, "--late-ms", "10000") == 0
    html = page.read_text()
    assert "Read 10000 ms past the end" in html
    assert "re-run with --late-ms 56000" in html


def test_coverage_without_bounds_says_so() -> None:
    coverage = Coverage(TimeRange(None, None), UTC, "UTC", 300_000)
    assert coverage.describe() == (
        "range: from the first retained record (inclusive) to the end offsets at the start "
        "of the read (exclusive), --tz UTC; no --to, so no late margin"
    )
    assert coverage.warning() is None
    late = Coverage(TimeRange(0, 1000), UTC, "UTC", 0, LateRecords(3, 1))
    assert late.suggested_late_ms == 1000
    assert "at least 3 records" in (late.warning() or "")


def test_unknown_reason_codes_are_refused_listing_the_valid_ones() -> None:
    assert check_reasons(["no-consent", "quiet-hours"]) == {"no-consent", "quiet-hours"}
    with pytest.raises(ConfigError) as caught:
        check_reasons(["no-consent", "no-consnet"])
    message = str(caught.value)
    assert "'no-consnet'" in message
    for reason in ("no-consent", "opted-out", "consent-expired", "monitored", "frequency-cap"):
        assert reason in KNOWN_REASONS
        assert reason in message


async def test_unknown_reason_is_refused_before_any_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 1: a connection attempt would fail differently, and slowly.
    config = str(write_config(tmp_path / "f.toml", "127.0.0.1:1", block="b"))
    out = tmp_path / "e.csv"
    code = await run_cli(
        "audit", "export", "--config", config, "--reason", "no_consent", "--out", str(out)
    )
    err = capsys.readouterr().err
    assert code != 0
    assert "config --reason: unknown reason code 'no_consent'; valid: bad-field-type," in err
    assert "cannot connect" not in err
    assert not out.exists()
