"""``filterd audit why``: find a message in the output topics and re-decide it against the
snapshot version that decided it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from filterd.audit.records import AuditRecord, event_fields
from filterd.audit.why import Redecider, consent_evidence, matching
from filterd.router import Policy, decide_value
from filterd.snapshot import build_snapshot, load_snapshot

from .clihelp import run_cli, write_config
from .streams import BASE_MS, Routed, produce

SENDER = "106900001234"
FAN = "+8613800000001"  # consents in v1, opted out in v2
STRANGER = "+8613900000002"  # never consented
GRANTED_AT = "2026-10-01T09:30:00+08:00"  # FAN's consent in v1


def build_versions(root: Path, tmp: Path) -> tuple[str, str]:
    consents, optouts = tmp / "consents.csv", tmp / "optouts.csv"
    consents.write_text(
        f"sender,recipient,method,granted_at\n{SENDER},{FAN},written,{GRANTED_AT}\n"
    )
    v1 = build_snapshot(root, consents, now=datetime(2026, 11, 10, tzinfo=UTC))
    consents.write_text(f"sender,recipient\n{SENDER},+8613700000003\n")
    optouts.write_text(f"sender,recipient\n{SENDER},{FAN}\n")
    v2 = build_snapshot(root, consents, optouts, now=datetime(2026, 11, 11, tzinfo=UTC))
    return v1, v2


def event(mid: str, recipient: str) -> bytes:
    return orjson.dumps(
        {
            "id": mid,
            "sender": SENDER,
            "recipient": recipient,
            "category": "marketing",
            "text": "sale",
        }
    )


def routed_by(root: Path, version: str, mid: str, recipient: str, ts: int) -> Routed:
    """What the service writes: the decision of the given version, in its headers."""
    value = event(mid, recipient)
    route, reason = decide_value(value, load_snapshot(root, version), Policy())
    return Routed(
        route,
        reason,
        version,
        f"sms.outbound/0/{ts - BASE_MS}",
        ts,
        mid.encode(),
        value,
        mid,
        SENDER,
        recipient,
        "marketing",
    )


@pytest.fixture
def snapshots(tmp_path: Path) -> tuple[Path, str, str]:
    root = tmp_path / "snapshots"
    return (root, *build_versions(root, tmp_path))


async def test_why_finds_messages_and_reproduces_decisions(
    kafka_bootstrap: str, new_topic, tmp_path: Path, snapshots, capsys
) -> None:
    root, v1, v2 = snapshots
    block = await new_topic(partitions=2)
    deliver = await new_topic(partitions=2)
    invalid = await new_topic(partitions=2)
    t = BASE_MS + 1000
    delivered = routed_by(root, v1, "m-fan", FAN, t)  # consent under v1
    blocked_v1 = routed_by(root, v1, "m-stranger", STRANGER, t + 1)
    blocked_v2 = routed_by(root, v2, "m-fan-later", FAN, t + 2)  # opted out by v2
    assert (delivered.route, delivered.reason) == ("deliver", "consent")
    assert blocked_v2.reason == "opted-out"
    # A record whose headers do not match what its snapshot decides.
    forged = Routed(
        "block",
        "no-consent",
        v1,
        "sms.outbound/0/99",
        t + 3,
        None,
        event("m-forged", FAN),
        "m-forged",
        SENDER,
        FAN,
        "marketing",
    )
    gone = Routed(
        "block",
        "no-consent",
        "20250101T000000Z-abcdef",
        "sms.outbound/0/98",
        t + 4,
        None,
        event("m-old", STRANGER),
        "m-old",
        SENDER,
        STRANGER,
        "marketing",
    )
    bad = Routed(
        "invalid",
        "malformed-json",
        v1,
        "sms.outbound/1/5",
        t + 5,
        None,
        b"{oops m-broken",
        None,
        None,
        None,
        None,
    )
    # at-least-once: a redelivered duplicate of the stranger's message
    await produce(
        kafka_bootstrap, block, [blocked_v1, blocked_v2, forged, gone, blocked_v1], partitions=2
    )
    await produce(kafka_bootstrap, deliver, [delivered], partitions=2)
    await produce(kafka_bootstrap, invalid, [bad], partitions=2)
    config = tmp_path / "f.toml"
    write_config(config, kafka_bootstrap, block=block, deliver=deliver, invalid=invalid)
    with config.open("a") as fh:
        fh.write(f'[snapshot]\nroot = "{root}"\n')
    base = ["--config", str(config), "--from", str(BASE_MS)]

    capsys.readouterr()
    assert await run_cli("audit", "why", "m-fan-later", *base) == 0
    out = capsys.readouterr().out
    assert f"snapshot   {v2}" in out
    assert "reason     opted-out" in out
    assert "+86138****0001" in out
    assert FAN not in out
    assert f"re-decided against snapshot {v2}: block opted-out - REPRODUCES" in out

    assert await run_cli("audit", "why", "m-fan", *base, "--format", "json", "--unmask") == 0
    (found,) = orjson.loads(capsys.readouterr().out)["found"]
    assert found["topic"] == deliver
    assert (found["route"], found["reason"], found["snapshot"]) == ("deliver", "consent", v1)
    assert found["recipient"] == FAN
    assert found["redecision"] == {
        "available": True,
        "route": "deliver",
        "reason": "consent",
        "reproduces": True,
        "error": None,
    }
    # Decided by a consent: the consent row behind it, with when and how it was granted.
    evidence = found["consent_evidence"]
    assert evidence["error"] is None
    assert [(r["method"], r["granted_at"], r["recipient"]) for r in evidence["rows"]] == [
        ("written", GRANTED_AT, FAN)
    ]
    assert await run_cli("audit", "why", "m-fan", *base) == 0
    out = capsys.readouterr().out
    assert f"method written, granted_at {GRANTED_AT}" in out
    assert FAN not in out  # masked in the evidence too

    assert await run_cli("audit", "why", "m-stranger", *base, "--format", "json") == 0
    sightings = orjson.loads(capsys.readouterr().out)["found"]
    assert len(sightings) == 2
    assert [s["reason"] for s in sightings] == ["no-consent", "no-consent"]
    assert all(s["redecision"]["reproduces"] for s in sightings)

    assert await run_cli("audit", "why", "m-forged", *base) == 3
    assert "DOES NOT REPRODUCE" in capsys.readouterr().out

    assert await run_cli("audit", "why", "m-old", *base) == 0
    assert "not re-decided: snapshot 20250101T000000Z-abcdef not available" in (
        capsys.readouterr().out
    )

    assert await run_cli("audit", "why", "m-nowhere", *base) == 1
    assert "not found" in capsys.readouterr().out

    # The time range applies: nothing before --from.
    later = str(BASE_MS + 10_000)
    assert await run_cli("audit", "why", "m-fan", "--config", str(config), "--from", later) == 1
    capsys.readouterr()


def test_consent_evidence_only_for_consent_decisions(snapshots) -> None:
    root, v1, v2 = snapshots

    def record(reason: str, version: str, recipient: str = FAN) -> AuditRecord:
        value = event("m", recipient)
        return AuditRecord("t", 0, 0, BASE_MS, None, value, "x", reason, version, "s/0/0")

    found = consent_evidence(root, record("consent", v1))
    assert found is not None
    assert [(r.method, r.granted_at) for r in found.rows] == [("written", GRANTED_AT)]
    assert consent_evidence(root, record("opted-out", v2)) is None
    assert consent_evidence(root, record("no-consent", v1)) is None
    # v2's consents file had no granted_at column: said, not guessed.
    missing = consent_evidence(root, record("consent", v2, "+8613700000003"))
    assert missing is not None
    assert missing.rows == []
    assert "no granted_at column" in (missing.error or "")
    gone = consent_evidence(root, record("consent", "20250101T000000Z-abcdef"))
    assert gone is not None
    assert "not under" in (gone.error or "")


def test_matching_needs_the_exact_id_even_with_escapes() -> None:
    def rec(value: bytes) -> AuditRecord:
        return AuditRecord("t", 0, 0, 0, None, value, "block", "r", "v", "s")

    records = [
        rec(b'{"id": "m-1", "sender": "s"}'),
        rec(b'{"id": "m-10", "sender": "s"}'),
        rec(b'{"id": "\\u006d-1", "sender": "s"}'),  # "m-1" written with an escape
        rec(b'{"id": "x", "text": "m-1"}'),
        rec(b"not json m-1"),
    ]
    assert [r.value for r in matching(records, "m-1")] == [records[0].value, records[2].value]


def test_redecider_loads_each_version_once(snapshots) -> None:
    root, v1, _ = snapshots
    loads: list[str] = []

    def loader(r: Path, version: str):
        loads.append(version)
        return load_snapshot(r, version)

    redecider = Redecider(root, Policy(), loader)
    record = AuditRecord("t", 0, 0, 0, None, event("a", FAN), "deliver", "consent", v1, "s")
    assert redecider.redecide(record).reproduces
    assert redecider.redecide(record._replace(reason="no-consent")).reproduces is False
    assert loads == [v1]
    assert redecider.redecide(record._replace(snapshot="../../etc")).available is False


@given(mid=st.text(min_size=1, max_size=20), ascii_only=st.booleans())
def test_matching_finds_any_id_however_it_is_encoded(mid: str, ascii_only: bool) -> None:
    # The byte pre-filter must never hide a match: ids with quotes, backslashes, control
    # or non-ASCII characters, encoded raw (orjson) or fully escaped (json, ensure_ascii).
    encoded = json.dumps({"id": mid, "sender": "s"}, ensure_ascii=ascii_only).encode()
    other = orjson.dumps({"id": mid + "x", "sender": "s"})
    records = [AuditRecord("t", 0, i, 0, None, v, "block", "r", "v", "s")
               for i, v in enumerate((other, encoded, orjson.dumps({"id": mid})))]  # fmt: skip
    assert [r.offset for r in matching(records, mid)] == [1, 2]


@given(st.binary(max_size=200))
def test_event_parsing_never_raises(value: bytes) -> None:
    fields = event_fields(value)
    assert fields.id is None or isinstance(fields.id, str)
