"""What the anti-bombing limits blocked: ``audit summary`` and the report's "Bombing blocked"."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

import orjson
import pytest

from filterd.audit.bombing import UTC_ZONE, LimitCounts, bombing_section
from filterd.audit.commands import limit_counts
from filterd.audit.records import AuditRecord
from filterd.config import load_config
from tests.support.produce import produce as support_produce

from .clihelp import run_cli
from .streams import BASE_MS, HOUR_MS

SHANGHAI = ZoneInfo("Asia/Shanghai")
KOLKATA = ZoneInfo("Asia/Kolkata")
#: Recipients: 86139... are in Asia/Kolkata by the config below, the rest in Asia/Shanghai.
BOMBED = "13800138000"
FLOODED = "+8613912345678"
OTHER = "13700001111"
SHOP, OTHER_SHOP = "1069000001", "1069000002"

POLICY = """
[policy]
quiet_hours = "22:00-08:00"
timezone = "Asia/Shanghai"
monitor = ["recipient-dnd"]
[policy.timezones]
"86139" = "Asia/Kolkata"
"""


class Rec(NamedTuple):
    """One output record as the service writes it, with its headers."""

    reason: str
    sender: str
    recipient: str
    ts_ms: int
    value: bytes
    headers: list[tuple[str, bytes]]


def routed(i: int, route: str, reason: str, sender: str, recipient: str, ts: int) -> Rec:
    event = {"id": f"b{i}", "sender": sender, "recipient": recipient, "text": "hi", "ts": ts}
    headers = [("filterd-route", route.encode()), ("filterd-reason", reason.encode()),
               ("filterd-snapshot", b"v1"), ("filterd-source", f"in/0/{i}".encode())]  # fmt: skip
    if route == "deliver" and reason != "consent":
        headers.append(("filterd-would-block", reason.encode()))
        headers[1] = ("filterd-reason", b"monitored")
    return Rec(reason, sender, recipient, ts, orjson.dumps(event), headers)


async def produce(bootstrap: str, topic: str, records: list[Rec]) -> None:
    await support_produce(
        bootstrap, topic, ((None, r.value, r.ts_ms, r.headers) for r in records), 2, acks="all"
    )


def streams() -> tuple[list[Rec], list[Rec]]:
    """Block and deliver records with known limit blocks."""
    block: list[Rec] = []
    deliver: list[Rec] = []
    i = 0
    for n in range(12):  # a campaign: SHOP bombing BOMBED
        block.append(
            routed(i := i + 1, "block", "frequency-cap", SHOP, BOMBED, BASE_MS + n * 60_000)
        )
    for n in range(7):  # an OTP flood at FLOODED from many senders
        sender = f"10691{n:05d}"
        block.append(routed(i := i + 1, "block", "frequency-cap", sender, FLOODED, BASE_MS + n))
    for n in range(3):
        block.append(routed(i := i + 1, "block", "frequency-cap", OTHER_SHOP, OTHER, BASE_MS + n))
    # quiet-hours: 15:30 UTC is 23:30 in Shanghai and 21:00 in Kolkata
    night = BASE_MS + (15 * HOUR_MS + 30 * 60_000 - BASE_MS) % (24 * HOUR_MS)
    for n in range(5):
        block.append(routed(i := i + 1, "block", "quiet-hours", SHOP, OTHER, night + n))
    for n in range(4):
        block.append(routed(i := i + 1, "block", "quiet-hours", SHOP, FLOODED, night + n))
    for n in range(6):  # not the limits'
        block.append(routed(i := i + 1, "block", "no-consent", SHOP, BOMBED, BASE_MS + n))
    for n in range(8):
        deliver.append(routed(i := i + 1, "deliver", "recipient-dnd", SHOP, OTHER, BASE_MS + n))
    for n in range(2):
        deliver.append(routed(i := i + 1, "deliver", "quiet-hours", SHOP, OTHER, BASE_MS + n))
    for n in range(9):
        deliver.append(routed(i := i + 1, "deliver", "consent", SHOP, OTHER, BASE_MS + n))
    return block, deliver


def local_hour(ts: int, zone: ZoneInfo) -> str:
    return f"{datetime.fromtimestamp(ts / 1000, zone).hour:02d}"


def as_audit(r: Rec) -> AuditRecord:
    return AuditRecord("b", 0, 0, r.ts_ms, None, r.value, "block", r.reason, "", "")


def test_counts_in_the_recipients_zones_and_masked(tmp_path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(POLICY)
    limits = limit_counts(load_config(path, env={}))
    block, _ = streams()
    limits.add_blocks([as_audit(r) for r in block])
    assert limits.capped == 22
    assert limits.top_recipients(2) == [("+86138****8000", 12), ("+86139****5678", 7)]
    assert limits.top_pairs(1) == [(SHOP, "+86138****8000", 12)]
    assert len(limits.top_pairs(100)) == 1 + 7 + 1
    quiet = [r for r in block if r.reason == "quiet-hours"]
    expected = Counter(
        local_hour(r.ts_ms, KOLKATA if r.recipient == FLOODED else SHANGHAI) for r in quiet
    )
    assert {f"{h:02d}": c for h, c in limits.hours()} == expected
    assert len(expected) == 2  # the two zones put them in different hours
    assert "Asia/Shanghai" in limits.zone_note


def test_without_a_config_hours_are_utc() -> None:
    limits = limit_counts(None)
    block, _ = streams()
    limits.add_blocks([as_audit(r) for r in block])
    quiet = [r for r in block if r.reason == "quiet-hours"]
    assert {f"{h:02d}": c for h, c in limits.hours()} == {
        local_hour(quiet[0].ts_ms, ZoneInfo("UTC")): 9
    }
    assert limits.zone_note == UTC_ZONE


def test_unreadable_recipient_is_fully_masked_and_section_escapes() -> None:
    limits = LimitCounts()
    bad = AuditRecord("b", 0, 0, 0, None, b'{"sender":"<s>","recipient":"x"}', "block",
                      "frequency-cap", "", "")  # fmt: skip
    limits.add_blocks([bad, bad])
    assert limits.top_recipients(5) == [("****", 2)]
    html = bombing_section(limits, 5, deliver_read=False)
    assert "&lt;s&gt;" in html
    assert "<s>" not in html
    assert "not read (--no-deliver)" in html
    assert bombing_section(None, 5, deliver_read=True) == ""


async def test_summary_and_report_on_the_broker(
    kafka_bootstrap: str, new_topic, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    block_topic, deliver_topic = await new_topic(partitions=2), await new_topic(partitions=2)
    block, deliver = streams()
    await produce(kafka_bootstrap, block_topic, block)
    await produce(kafka_bootstrap, deliver_topic, deliver)
    config = tmp_path / "f.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        f'[topics]\nblock = "{block_topic}"\ndeliver = "{deliver_topic}"\n{POLICY}'
    )
    window = ["--from", str(BASE_MS - 1), "--to", str(BASE_MS + 48 * HOUR_MS)]
    capsys.readouterr()
    args = ("audit", "summary", "--config", str(config), *window)
    assert await run_cli(*args, "--format", "json", "--top", "2") == 0
    got = orjson.loads(capsys.readouterr().out)["limits"]
    quiet = [r for r in block if r.reason == "quiet-hours"]
    assert got == {
        "top_recipients_capped": [
            {"recipient": "+86138****8000", "blocks": 12},
            {"recipient": "+86139****5678", "blocks": 7},
        ],
        "top_pairs_capped": [
            {"sender": SHOP, "recipient": "+86138****8000", "blocks": 12},
            {"sender": OTHER_SHOP, "recipient": "+86137****1111", "blocks": 3},
        ],
        "quiet_hours_by_hour": dict(
            sorted(
                Counter(
                    local_hour(r.ts_ms, KOLKATA if r.recipient == FLOODED else SHANGHAI)
                    for r in quiet
                ).items()
            )
        ),
        "quiet_hours_zone": "the recipient's local time "
        "([policy] timezone Asia/Shanghai and [policy.timezones])",
        # [policy] monitor lists a reason: the deliver topic is read by default.
        "would_block_by_reason": {"recipient-dnd": 8, "quiet-hours": 2},
    }

    assert await run_cli(*args, "--no-monitored") == 0
    text = capsys.readouterr().out
    assert "bombing blocked: top recipients by frequency-cap\n  +86138****8000  " in text
    assert re.search(r"1069000001 -> \+86138\*\*\*\*8000\s+12\n", text)
    assert "not read (--monitored reads the deliver topic)" in text
    assert BOMBED not in text

    assert await run_cli(*args, "--format", "csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sum(int(r["count"]) for r in rows if r["section"] == "quiet_hours_hour") == 9
    assert {r["key"]: int(r["count"]) for r in rows if r["section"] == "would_block"} == {
        "recipient-dnd": 8,
        "quiet-hours": 2,
    }

    out = tmp_path / "r.html"
    report = ("audit", "report", "--config", str(config), "--out", str(out), "--no-invalid")
    assert await run_cli(*report, *window) == 0
    html = out.read_text()
    section = html[html.index("<h2>Bombing blocked</h2>") : html.index("<h2>Snapshot versions")]
    assert "<td>+86138****8000</td><td class=num>12</td>" in section
    assert f"<td>{SHOP}</td><td>+86138****8000</td><td class=num>12</td>" in section
    assert "<td>recipient-dnd</td><td class=num>8</td>" in section
    assert BOMBED not in html
    assert await run_cli(*report, "--no-deliver", *window) == 0
    assert "The deliver topic was not read (--no-deliver)." in out.read_text()
