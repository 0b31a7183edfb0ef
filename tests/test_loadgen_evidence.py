"""The demo's consent evidence: inputs a snapshot builds from, events that hit every new rule."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson

from filterd.loadgen import write_dataset
from filterd.loadgen.evidence import EVIDENCE_SENDERS, evidence_events, write_evidence_inputs
from filterd.router import Decider, Policy
from filterd.snapshot import build_snapshot, load_snapshot
from tests.support.reference import Reference


def test_evidence_inputs_and_events_exercise_every_new_reason(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", senders=10, recipients=20_000, consents=20_000, seed=3)
    now = time.time()
    write_evidence_inputs(tmp_path / "ds", tmp_path / "ev", now_s=now)
    ev = tmp_path / "ev"
    build_snapshot(
        tmp_path / "snap", ev / "consents.csv.gz", ev / "optouts.csv.gz", ev / "dnd.csv.gz"
    )
    snap = load_snapshot(tmp_path / "snap")
    assert snap.manifest["method_column"] is True
    refused = snap.manifest["refused_rows"]["by_method"]
    assert set(refused) == set(EVIDENCE_SENDERS.values()) - {"expired"}
    assert snap.counts.global_optouts > 0
    at = int(now * 1000)
    events = evidence_events(tmp_path / "ds", 3_000, seed=17, ts_ms=at)  # not the inputs' seed
    decider = Decider(snap, Policy())
    reference = Reference.from_dataset(tmp_path / "ev")
    reasons: Counter[str] = Counter()
    for _key, value in events:
        outcome = decider.decide(value, at)
        assert (outcome.route, outcome.reason) == reference.decide(value, at)
        reasons[outcome.reason] += 1
        if orjson.loads(value)["category"] == "verification":
            assert decider.declared_category == "verification"
    assert {"consent-not-explicit", "consent-expired", "opted-out", "consent"} <= set(reasons)
