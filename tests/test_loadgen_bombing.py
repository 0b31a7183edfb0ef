"""The demo's SMS bombing: a campaign to consenting recipients, an OTP flood, night marketing."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from filterd.config import PolicyConfig, quiet_hours_minutes
from filterd.limits import LimitRules
from filterd.loadgen import load_dataset, write_dataset
from filterd.loadgen.bombing import (
    CAMPAIGN_RECIPIENTS,
    CAMPAIGN_ROUNDS,
    DEMO_LIMITS,
    FLOOD_MESSAGES,
    FLOOD_SENDERS,
    bombing_events,
    night_time,
)

NOW_MS = 1_794_398_400_000  # 2026-11-11T00:00:00+08:00


def test_campaign_flood_and_night_are_what_the_limits_stop(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", senders=10, recipients=20_000, consents=20_000, seed=3)
    ds = load_dataset(tmp_path / "ds")
    bombing = bombing_events(ds, now_ms=NOW_MS, seed=7)
    events = [orjson.loads(value) for _key, value in bombing.events]
    for key, value in bombing.events + bombing.night:
        assert key == orjson.loads(value)["recipient"].lstrip("+").encode()
    campaign = [e for e in events if e["id"].startswith("bomb-")]
    assert len(campaign) == CAMPAIGN_RECIPIENTS * CAMPAIGN_ROUNDS
    assert {e["sender"] for e in campaign} == {bombing.campaign_sender}
    per_pair = Counter(e["recipient"] for e in campaign)
    assert set(per_pair.values()) == {CAMPAIGN_ROUNDS}
    # Every campaign recipient and night recipient consented: only the limits stop them.
    night = [orjson.loads(value) for _key, value in bombing.night]
    for e in campaign + night:
        assert ds.expected(e["sender"], int(e["recipient"][1:]), e["category"]) == (
            "deliver",
            "consent",
        )
    flood = [e for e in events if e["id"].startswith("otp-")]
    assert len(flood) == FLOOD_MESSAGES
    assert {e["recipient"] for e in flood} == {f"+{bombing.flood_recipient}"}
    assert len({e["sender"] for e in flood}) == min(FLOOD_SENDERS, len(ds.senders))
    assert {e["category"] for e in flood} == {"verification"}
    assert {e["ts"] for e in night} == {bombing.night_ms}


def test_night_time_is_inside_the_demo_quiet_hours_and_in_the_past() -> None:
    quiet_line = next(line for line in DEMO_LIMITS if line.startswith("quiet_hours"))
    start, end = quiet_hours_minutes(quiet_line.split('"')[1]) or (0, 0)
    shanghai = ZoneInfo("Asia/Shanghai")
    for hour in range(24):
        now = NOW_MS + hour * 3_600_000 + 17 * 60_000
        at = night_time(now)
        assert now - 86_400_000 < at <= now
        local = datetime.fromtimestamp(at / 1000, shanghai)
        minute = local.hour * 60 + local.minute
        assert minute >= start or minute < end  # a range that wraps past midnight
    LimitRules(PolicyConfig(quiet_hours=quiet_line.split('"')[1]))  # a valid policy
