"""The audit report's consent-evidence sections, from a real snapshot version."""

from __future__ import annotations

import re
from pathlib import Path

from filterd.audit.aggregate import Summary
from filterd.audit.consent_report import load_versions
from filterd.audit.reasons import GLOSSARY
from filterd.audit.records import AuditRecord
from filterd.audit.report import ReportMeta, render_report
from filterd.audit.timeutil import HourBuckets, TimeRange
from filterd.router import REASONS
from filterd.snapshot import build_snapshot
from tests.snapshot.data import write_csv


def _event(sender: str) -> bytes:
    return b'{"id": "m", "sender": "%b", "recipient": "+8613800000001"}' % sender.encode()


def test_report_names_senders_relying_on_consent_that_does_not_count(tmp_path: Path) -> None:
    rows = [("SHOP", f"+86138000000{i:02d}", "default-registration") for i in range(7)]
    rows += [("SHOP", "+8613800000099", "pre-ticked"), ("BANK", "+8613800000001", "explicit")]
    root = tmp_path / "snap"
    version = build_snapshot(
        root, write_csv(tmp_path / "c.csv", ["sender", "recipient", "method"], rows)
    )
    records = [
        ("SHOP", "consent-not-explicit", None),
        ("SHOP", "consent-not-explicit", None),
        ("SHOP", "no-consent", "verification"),
        ("EXPIRED-CO", "consent-expired", None),
        ("BANK", "no-consent", None),
    ]
    summary = Summary(HourBuckets(), sender_hours=True)
    summary.add_batch([
        AuditRecord("b", 0, i, 0, None, _event(s), "block", r, version, "in/0/0", d)
        for i, (s, r, d) in enumerate(records)
    ])  # fmt: skip
    versions = load_versions(root, [version, "20200101T000000Z-000000"])
    assert list(versions) == [version]
    meta = ReportMeta(["b"], TimeRange(None, None), HourBuckets().tz, "UTC", 0, versions=versions)
    page = render_report(summary, meta)
    section = page[page.index("Senders relying on consent") : page.index("Snapshot provenance")]
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>.*?</td>", section)]
    # SHOP: 2 not explicit, 0 expired, 1 disguised, its refused rows by method.
    assert cells[:5] == ["SHOP", "2", "0", "1", "default-registration 7, pre-ticked 1"]
    assert cells[5:10] == ["EXPIRED-CO", "0", "1", "0", "none"]
    assert "BANK" not in section
    provenance = page[page.index("Snapshot provenance") : page.index("Reason codes")]
    assert "Accepted methods: explicit, double-opt-in, written" in provenance
    assert "default-registration 7, pre-ticked 1" in provenance
    assert build_sha(root, version) in provenance
    assert "Per-row consent evidence: none (the consents file had no granted_at column)" in (
        provenance
    )
    # The glossary explains every reason the decision can give.
    assert set(REASONS) <= set(GLOSSARY)
    glossary = page[page.index("Reason codes") :]
    assert all(f"<td>{reason}</td>" in glossary for reason in GLOSSARY)


def build_sha(root: Path, version: str) -> str:
    import orjson

    manifest = orjson.loads((root / version / "manifest.json").read_bytes())
    return str(manifest["inputs"][0]["sha256"])
