"""Opt-outs honoured in ``audit summary`` and ``audit report``: live opt-outs that blocked
messages, by source, and the delay from each to the first message it blocked."""

from __future__ import annotations

import orjson
import pytest

from filterd.audit.optouts import FirstBlocks, Honoured, nearest_rank
from filterd.audit.records import AuditRecord
from tests.support.produce import produce

from .clihelp import run_cli, write_config
from .streams import BASE_MS

HEADERS = ("filterd-route", "filterd-reason", "filterd-snapshot", "filterd-source")


def _change(op: str, sender: str, number: str, source: str | None) -> bytes:
    doc = {"op": op, "sender": sender, "recipient": f"+{number}", "id": f"c-{number}"}
    if source is not None:
        doc["source"] = source
    return orjson.dumps(doc)


def _block(i: int, ts: int, change: str | None, reason: str = "opted-out") -> tuple:
    value = orjson.dumps({"id": f"m{i}", "sender": "SHOP", "recipient": "+8613800000001"})
    headers = [
        (name, text.encode())
        for name, text in zip(HEADERS, ("block", reason, "v1", f"in/0/{i}"), strict=True)
    ]
    if change is not None:
        headers.append(("filterd-change", change.encode()))
    return (b"8613800000001", value, ts, headers)


def test_first_blocks_keep_the_earliest_block_per_change() -> None:
    def rec(ts: int, change: str | None, route: str = "block") -> AuditRecord:
        return AuditRecord("b", 0, ts, ts, None, b"{}", route, "opted-out", "v", "s", None, change)

    first = FirstBlocks()
    first.add_batch([rec(50, "c/0/1"), rec(30, "c/0/1"), rec(10, None), rec(5, "c/0/2", "x")])
    first.add_batch([rec(40, "c/0/1"), rec(70, "c/0/3")])
    assert first.first_ms == {"c/0/1": 30, "c/0/3": 70}


def test_percentiles_and_rows() -> None:
    assert nearest_rank([1, 2, 3, 4], 50) == 2
    assert nearest_rank(list(range(1, 101)), 99) == 99
    assert nearest_rank([7], 99) == 7
    result = Honoured({"registry": [300, 100, 200], "mo-reply": [50]}, unattributed=2)
    assert result.rows() == [
        ("mo-reply", 1, "50 ms", "50 ms", "50 ms"),
        ("registry", 3, "200 ms", "300 ms", "300 ms"),
        ("all", 4, "100 ms", "300 ms", "300 ms"),
    ]
    assert result.to_json()["delay_ms"] == {"honoured": 4, "p50": 100, "p99": 300, "max": 300}


async def test_summary_and_report_attribute_opt_outs_by_source(
    kafka_bootstrap: str, new_topic, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, block = await new_topic(partitions=1), await new_topic(partitions=1)
    t0 = BASE_MS + 60_000
    # One partition, offsets 0..4; the record times stand for the append times.
    await produce(
        kafka_bootstrap,
        changes,
        [
            (b"1", _change("opt-out", "SHOP", "8613800000001", "registry"), t0, []),
            (b"2", _change("opt-out", "SHOP", "8613800000002", "mo-reply"), t0 + 10, []),
            (b"3", _change("opt-out", "*", "8613800000003", "registry"), t0 + 20, []),
            (b"4", _change("consent", "SHOP", "8613800000004", "registry"), t0 + 30, []),
        ],
        1,
    )
    await produce(
        kafka_bootstrap,
        changes,
        [(b"5", _change("opt-out", "SHOP", "8613800000005", None), t0 + 40, [])],
        1,
    )
    c = changes
    blocks = [
        _block(0, t0 + 500, f"{c}/0/0"),  # registry: first block 500 ms after
        _block(1, t0 + 900, f"{c}/0/0"),  # a later block of the same opt-out
        _block(2, t0 + 260, f"{c}/0/1"),  # mo-reply: 250 ms
        _block(3, t0 + 1_020, f"{c}/0/2"),  # every-sender opt-out: 1 000 ms
        _block(4, t0 + 100, f"{c}/0/3", "no-consent"),  # a consent change: not an opt-out
        _block(5, t0 + 140, f"{c}/0/4"),  # an opt-out naming no source
        _block(6, t0 + 100, f"{c}/0/99"),  # no such change any more
        _block(7, t0 + 100, None),  # decided by the snapshot
    ]
    await produce(kafka_bootstrap, block, blocks, 1)
    config = str(write_config(tmp_path / "f.toml", kafka_bootstrap, block=block, changes=changes))

    capsys.readouterr()
    assert await run_cli("audit", "summary", "--config", config, "--format", "json") == 0
    got = orjson.loads(capsys.readouterr().out)["optouts_honoured"]
    assert got == {
        "total": 4,
        "by_source": {
            "(none)": {"honoured": 1, "p50": 100, "p99": 100, "max": 100},
            "mo-reply": {"honoured": 1, "p50": 250, "p99": 250, "max": 250},
            "registry": {"honoured": 2, "p50": 500, "p99": 1_000, "max": 1_000},
        },
        "delay_ms": {"honoured": 4, "p50": 250, "p99": 1_000, "max": 1_000},
        "unattributed": 1,
    }

    assert await run_cli("audit", "summary", "--config", config) == 0
    text = capsys.readouterr().out
    section = text[text.index("opt-outs honoured") :]
    assert "registry" in section
    assert "1000 ms" in section
    assert "1 changes no longer on the changes topic" in section

    report = tmp_path / "report.html"
    argv = [
        "audit",
        "report",
        "--config",
        config,
        "--out",
        str(report),
        "--no-deliver",
        "--no-invalid",
    ]
    assert await run_cli(*argv) == 0
    page = report.read_text()
    html = page[page.index("Opt-outs honoured (live changes)") :].split("</section>")[0]
    assert "<td>mo-reply</td><td class=num>1</td><td class=num>250 ms</td>" in html
    assert "<td>all</td><td class=num>4</td>" in html
