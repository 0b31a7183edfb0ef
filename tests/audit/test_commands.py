"""``filterd audit summary`` end to end through the CLI, against the broker."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from .clihelp import run_cli, write_config
from .streams import BASE_MS, HOUR_MS, generate, produce

CST = timezone(timedelta(hours=8))


def cst_iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, CST).isoformat()


def cst_hour(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, CST)
    return moment.replace(minute=0, second=0, microsecond=0).isoformat(timespec="minutes")


def top_by_total(counts: dict[str, Counter[str]]) -> list[dict[str, object]]:
    rows = sorted(counts.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return [
        {
            "sender": s,
            "total": sum(c.values()),
            "by_reason": dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        for s, c in rows
    ]


async def test_summary_json_csv_and_table_with_invalid_topic(
    kafka_bootstrap: str, new_topic, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    block, invalid = await new_topic(partitions=3), await new_topic(partitions=2)
    blocked = generate(4000, seed=31, step_ms=3_000)
    bad = generate(500, seed=32, step_ms=20_000, route="invalid", prefix="x")
    await produce(kafka_bootstrap, block, blocked)
    await produce(kafka_bootstrap, invalid, bad, partitions=2)
    config = str(write_config(tmp_path / "f.toml", kafka_bootstrap, block=block, invalid=invalid))
    start, end = BASE_MS + HOUR_MS // 2, BASE_MS + 3 * HOUR_MS + 1
    window = ["--from", cst_iso(start), "--to", cst_iso(end), "--tz", "+08:00"]

    capsys.readouterr()
    assert (
        await run_cli(
            "audit",
            "summary",
            "--config",
            config,
            "--format",
            "json",
            "--invalid",
            "--top",
            "1000",
            *window,
        )
        == 0
    )
    got = orjson.loads(capsys.readouterr().out)

    inside = [r for r in blocked + bad if start <= r.ts_ms < end]
    senders: dict[str, Counter[str]] = {}
    for r in inside:
        senders.setdefault(r.sender or "(none)", Counter())[r.reason] += 1
    assert got == {
        "range": {
            "from": datetime.fromtimestamp(start / 1000, CST).isoformat(timespec="milliseconds"),
            "to": datetime.fromtimestamp(end / 1000, CST).isoformat(timespec="milliseconds"),
            "tz": "+08:00",
            "late_ms": 300_000,
            "late_beyond_margin": 0,
            "suggested_late_ms": None,
            "warning": None,
        },
        "total": len(inside),
        "by_reason": dict(
            sorted(Counter(r.reason for r in inside).items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        "by_sender": top_by_total(senders),
        "by_hour": dict(sorted(Counter(cst_hour(r.ts_ms) for r in inside).items())),
        "by_snapshot": dict(sorted(Counter(r.snapshot for r in inside).items())),
        "by_declared_category": {},  # no recategorized message in this stream
        "limits": {  # no limits' block in this stream (tests/audit/test_bombing.py)
            "top_recipients_capped": [],
            "top_pairs_capped": [],
            "quiet_hours_by_hour": {},
            "quiet_hours_zone": "the recipient's local time ([policy] timezone Asia/Shanghai)",
            "would_block_by_reason": {},
        },
    }
    assert "malformed-json" in got["by_reason"]

    # Block topic only, CSV form: the same numbers, section by section.
    assert await run_cli("audit", "summary", "--config", config, "--format", "csv", *window) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    only_block = [r for r in blocked if start <= r.ts_ms < end]
    (total,) = [int(r["count"]) for r in rows if r["section"] == "total"]
    assert total == len(only_block)
    assert {r["key"]: int(r["count"]) for r in rows if r["section"] == "reason"} == dict(
        Counter(r.reason for r in only_block)
    )
    assert sum(int(r["count"]) for r in rows if r["section"] == "hour") == len(only_block)

    assert await run_cli("audit", "summary", "--config", config, *window) == 0
    table = capsys.readouterr().out
    assert table.startswith("range: from 20")
    assert table.splitlines()[1] == f"total  {len(only_block)}"
    assert "by reason" in table
    assert cst_hour(start) in table


async def test_bad_arguments_are_one_line_errors(
    kafka_bootstrap: str, new_topic, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = await new_topic(partitions=1)
    config = str(write_config(tmp_path / "f.toml", kafka_bootstrap, block=topic))
    assert await run_cli("audit", "summary", "--config", config, "--from", "tomorrow") == 1
    assert "bad time 'tomorrow'" in capsys.readouterr().err
    assert (
        await run_cli(
            "audit", "summary", "--config", config, "--from", "2026-11-11", "--to", "2026-11-10"
        )
        == 1
    )
    assert "--to" in capsys.readouterr().err
    missing = str(write_config(tmp_path / "m.toml", kafka_bootstrap, block=topic + "-missing"))
    assert await run_cli("audit", "summary", "--config", missing) == 1
    assert "does not exist" in capsys.readouterr().err
