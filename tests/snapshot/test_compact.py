"""``snapshot compact`` without a broker: a version plus changes, folded and written, decides
as the version with the changes pending (and as the reference model rebuilt with them)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.changes import BadChange, Change, ChangeRef, Overlay, parse_change
from filterd.changes.watermark import watermark_of
from filterd.errors import SnapshotError
from filterd.router import NO_CONSENT, RECIPIENT_DND, UNKNOWN_SENDER, Decider, Policy
from filterd.snapshot.build import build_snapshot
from filterd.snapshot.compact import fold_changes, read_version, write_compacted
from filterd.snapshot.granted import GrantedRow, lookup_granted
from filterd.snapshot.load import load_snapshot, verify_snapshot
from filterd.snapshot.publish import PublishRefused, publish_version
from filterd.snapshot.store import ConsentSnapshot
from tests.changes.test_overlay import (
    NUMBERS,
    SENDERS,
    TOPIC,
    T,
    _change,
    _numbers,
    _optouts,
    _pairs,
    build,
    caps_over_time,
    change,
    ev,
    filter_of,
)
from tests.snapshot.data import write_csv
from tests.support.reference import Reference
from tests.support.stream import run_cli

#: CSV row (method, expires_at, max_per_day) of each snapshot pair state of test_overlay.
_ROWS = {
    "plain": [("explicit", "", "")],
    "expired": [("explicit", "2026-09-21T14:13:19+00:00", "")],
    "valid": [("explicit", "2026-09-21T14:13:21+00:00", "")],
    "refused": [("pre-ticked", "", "")],
    "capped": [("explicit", "", "7")],
    "stepped": [("explicit", "", ""), ("explicit", "2026-09-21T14:13:21+00:00", "3")],
}


def build_on_disk(
    root: Path,
    pairs: dict[tuple[str, int], str],
    optouts: Iterable[tuple[str, int]],
    global_optouts: Iterable[int],
    dnd: Iterable[int],
) -> str:
    """The content of test_overlay's ``build`` as a real version under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    consents = write_csv(
        root.parent / "consents.csv",
        ["sender", "recipient", "method", "expires_at", "max_per_day"],
        [
            (s, f"+{n}", *row)
            for (s, n), state in sorted(pairs.items())
            for row in _ROWS.get(state, [])
        ],
    )
    opted = [(s, f"+{n}") for s, n in sorted(optouts)] + [("*", f"+{n}") for n in global_optouts]
    optout_csv = write_csv(root.parent / "optouts.csv", ["sender", "recipient"], opted)
    dnd_csv = write_csv(root.parent / "dnd.csv", ["recipient"], [(f"+{n}",) for n in dnd])
    return build_snapshot(root, consents, optout_csv, dnd_csv, publish=False)


def overlay_of(values: list[bytes], accept: Iterable[str], partition: int = 0) -> Overlay:
    overlay = Overlay(accept)
    for offset, value in enumerate(values):
        try:
            parsed = parse_change(value, "86")
        except BadChange:
            continue
        overlay.apply(parsed, ChangeRef(TOPIC, partition, offset))
    return overlay


def compact(root: Path, base: str, values: list[bytes]) -> tuple[str, Overlay]:
    data = read_version(root, base)
    overlay = overlay_of(values, data.accept)
    evidence = []
    for offset, value in enumerate(values):
        try:
            evidence.append((ChangeRef(TOPIC, 0, offset), parse_change(value, "86")))
        except BadChange:
            continue
    fold_changes(data, overlay, evidence)
    version = write_compacted(
        root, data, TOPIC, {0: len(values)}, len(overlay), publish=False, evidence=evidence
    )
    return version, overlay


def data_accept(snapshot: ConsentSnapshot) -> list[str]:
    methods = snapshot.manifest["accept_methods"]
    assert isinstance(methods, list)
    return methods


def _assert_same_decisions(
    old: ConsentSnapshot, overlay: Overlay, new: ConsentSnapshot, rebuilt: Reference
) -> None:
    pending = Decider(old, Policy(), overlay=overlay)
    folded_overlay = Overlay(overlay.accept)
    folded_overlay.watermark = watermark_of(new.manifest, TOPIC)
    folded = Decider(new, Policy(), overlay=folded_overlay)
    for sender in SENDERS:
        for number in [*NUMBERS, 8613899999999]:
            value = ev(sender, number)
            expected = pending.decide(value, T)
            assert expected == rebuilt.decide(value, T), (sender, number)
            assert folded.decide(value, T) == expected, (sender, number)
            caps = caps_over_time(pending, sender, number)
            assert caps_over_time(folded, sender, number) == caps, (sender, number)


@settings(max_examples=150, deadline=None)
@given(
    pairs=_pairs,
    optouts=_optouts,
    global_optouts=_numbers,
    dnd=_numbers,
    changes=st.lists(st.one_of(_change, st.just(b"not json")), max_size=12),
)
def test_compacted_version_decides_as_the_version_with_the_changes_pending(
    pairs: dict[tuple[str, int], str],
    optouts: set[tuple[str, int]],
    global_optouts: set[int],
    dnd: set[int],
    changes: list[bytes],
) -> None:
    _, reference = build(pairs, optouts, global_optouts, dnd)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "snap"
        base = build_on_disk(root, pairs, optouts, global_optouts, dnd)
        version, overlay = compact(root, base, changes)
        assert verify_snapshot(root, version) == []
        old, new = load_snapshot(root, base), load_snapshot(root, version)
        _assert_same_decisions(old, overlay, new, reference.with_changes(list(changes)))


def test_the_watermark_is_in_the_manifest_and_drops_the_folded_changes(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    base = build_on_disk(root, {("SHOP", NUMBERS[0]): "plain"}, set(), set(), set())
    values = [change("opt-out", NUMBERS[0]), change("dnd-add", NUMBERS[1], None)]
    version, _ = compact(root, base, values)
    new = load_snapshot(root, version)
    assert new.manifest["change_watermark"] == {"topic": TOPIC, "offsets": {"0": 2}}
    assert new.manifest["compacted_from"] == {"version": base, "changes": 2}
    # A running overlay holding these changes and one more keeps only the newer one.
    running = overlay_of([*values, change("opt-out-clear", NUMBERS[0])], data_accept(new))
    # Facts: the dnd-add is dropped; the opt-out's fact was last set by the clearing (kept).
    assert running.rebase(running.accept, watermark_of(new.manifest, TOPIC)) == 1
    assert len(running) == 1
    decider = Decider(new, Policy(), overlay=running)
    assert decider.decide(ev("SHOP", NUMBERS[0]), T) == Decider(
        load_snapshot(root, base), Policy()
    ).decide(ev("SHOP", NUMBERS[0]), T)
    assert decider.decide(ev("SHOP", NUMBERS[1]), T) == RECIPIENT_DND


def test_a_refused_consent_change_is_reported_and_grants_nothing(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    base = build_on_disk(root, {("SHOP", NUMBERS[0]): "plain"}, set(), set(), set())
    version, _ = compact(root, base, [change("consent", NUMBERS[1], method="pre-ticked")])
    report = orjson.loads((root / version / "refused.json").read_bytes())
    assert report["by_sender"] == {"SHOP": {"pre-ticked": 1}}
    new = load_snapshot(root, version)
    assert new.consent_until("SHOP", NUMBERS[1]) == -1  # refused only


def test_compaction_goes_through_the_publish_guards(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    pairs = {("SHOP", n): "plain" for n in NUMBERS}
    base = build_on_disk(root, pairs, set(), set(), set())
    publish_version(root, base)
    data = read_version(root, base)
    overlay = overlay_of([change("consent-revoke", n) for n in NUMBERS[:3]], data.accept)
    fold_changes(data, overlay)
    with pytest.raises(PublishRefused, match="consents dropped by 75%"):
        write_compacted(root, data, TOPIC, {0: 3}, len(overlay))
    assert load_snapshot(root).version == base


def test_max_per_day_is_folded_as_the_decision_reads_it(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    pairs = {("SHOP", NUMBERS[0]): "capped", ("SHOP", NUMBERS[3]): "capped"}
    base = build_on_disk(root, pairs, set(), set(), set())
    values = [
        change("consent", NUMBERS[0], method="explicit"),  # no cap stated: 7 stays
        change("consent", NUMBERS[1], method="explicit", max_per_day="4"),
        change("consent", NUMBERS[1], method="pre-ticked", max_per_day=1),  # not accepted
        change("consent", NUMBERS[2], method="explicit", max_per_day=2),
        change("consent-revoke", NUMBERS[2]),
        change("consent", NUMBERS[3], method="explicit", max_per_day=9),
        # Beside the cap of 7, a cap of 2 until T + 1000: the folded pair has a schedule.
        change(
            "consent",
            NUMBERS[3],
            method="explicit",
            max_per_day=2,
            expires_at="2026-09-21T14:13:21+00:00",
        ),
    ]
    version, overlay = compact(root, base, values)
    _, reference = build(pairs, set(), set(), set())
    _assert_same_decisions(
        load_snapshot(root, base), overlay, load_snapshot(root, version),
        reference.with_changes(list(values)),
    )  # fmt: skip
    folded = Decider(load_snapshot(root, version), Policy())
    caps = [folded.pair_max_per_day("SHOP", n, T) for n in NUMBERS]
    assert caps == [7, 4, 0, 2]
    assert caps_over_time(folded, "SHOP", NUMBERS[3]) == [2, 2, 2, 2, 2, 7, 7]
    manifest = load_snapshot(root, version).manifest
    assert manifest["format_version"] == 3  # a cap schedule is in terms.bin


def test_compact_without_a_broker_says_so_and_publishes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    base = build_on_disk(root, {("SHOP", NUMBERS[0]): "plain"}, set(), set(), set())
    publish_version(root, base)
    config = tmp_path / "filterd.toml"
    config.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n')
    done = run_cli("snapshot", "compact", str(root), "--config", str(config), timeout=60)
    assert done.returncode == 1, done.stderr
    assert "cannot read the changes topic 'sms.consent-changes'" in done.stderr
    assert "Traceback" not in done.stderr
    assert load_snapshot(root).version == base
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("2")) == [base]


def test_a_sender_whose_numbers_all_went_stays_known(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    pairs = {("SHOP", NUMBERS[0]): "plain", ("BANK", NUMBERS[1]): "plain"}
    base = build_on_disk(root, pairs, {("BANK", NUMBERS[2])}, set(), {NUMBERS[3]})
    values = [
        change("consent-revoke", NUMBERS[1], "BANK"),
        change("opt-out-clear", NUMBERS[2], "BANK"),
        # NEW is named by a change only, then revoked: known from the change on.
        change("consent", NUMBERS[0], "NEW", method="explicit"),
        change("consent-revoke", NUMBERS[0], "NEW"),
    ]
    version, overlay = compact(root, base, values)
    assert verify_snapshot(root, version) == []
    new = load_snapshot(root, version)
    assert new.manifest["senders_without_numbers"] == ["BANK", "NEW"]
    assert new.counts.senders == 1  # the sender lines: SHOP
    pending = Decider(load_snapshot(root, base), Policy(), overlay=overlay)
    folded = Decider(new, Policy())
    for sender in ("BANK", "NEW"):
        got = [folded.decide(ev(sender, n), T) for n in NUMBERS]
        assert got == [pending.decide(ev(sender, n), T) for n in NUMBERS]
        assert got == [NO_CONSENT, NO_CONSENT, NO_CONSENT, RECIPIENT_DND]
    assert folded.decide(ev("OTHER", NUMBERS[0]), T) == UNKNOWN_SENDER
    # Compacting the compacted version again keeps them known.
    again, _ = compact(root, version, [])
    assert load_snapshot(root, again).manifest["senders_without_numbers"] == ["BANK", "NEW"]


def test_consents_that_came_as_changes_have_evidence_rows(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    consents = write_csv(
        tmp_path / "consents.csv", ["sender", "recipient", "method", "granted_at"],
        [("SHOP", f"+{NUMBERS[0]}", "written", "2026-10-01T09:30:00+08:00")],
    )  # fmt: skip
    base = build_snapshot(root, consents, publish=False)
    first = [
        change(
            "consent",
            NUMBERS[1],
            method="explicit",
            expires_at="2027-01-01T00:00:00+00:00",
            max_per_day=3,
            id="c-1",
            ts=1_790_000_000_000,
            source="portal",
        ),
        change("opt-out", NUMBERS[2]),
        change("consent", NUMBERS[2], "BANK", method="pre-ticked"),  # refused: evidence too
    ]
    version, _ = compact(root, base, first)
    found = lookup_granted(root, version, "SHOP", f"+{NUMBERS[1]}")
    assert [r._replace(line=0) for r in found] == [
        GrantedRow(
            "SHOP", f"+{NUMBERS[1]}", "explicit", "2026-09-21T14:13:20.000+00:00",
            "2027-01-01T00:00:00.000+00:00", 0, f"{TOPIC}/0/0",
        )
    ]  # fmt: skip
    assert [r.change for r in lookup_granted(root, version, "BANK", f"+{NUMBERS[2]}")] == [
        f"{TOPIC}/0/2"
    ]
    assert lookup_granted(root, version, "SHOP", f"+{NUMBERS[2]}") == []  # an opt-out
    # The consents file's rows are still there.
    assert [r.line for r in lookup_granted(root, version, "SHOP", f"+{NUMBERS[0]}")] == [2]
    # A further compaction carries the rows of the earlier one and appends its own.
    again = read_version(root, version)
    overlay = Overlay(again.accept)
    later = [change("consent", NUMBERS[1], method="written")]
    overlay.watermark = {0: 3}
    refs = [(ChangeRef(TOPIC, 0, 3), parse_change(later[0], "86"))]
    overlay.extend(refs)
    fold_changes(again, overlay, refs)
    third = write_compacted(root, again, TOPIC, {0: 4}, 1, publish=False, evidence=refs)
    rows = lookup_granted(root, third, "SHOP", f"+{NUMBERS[1]}")
    assert [(r.method, r.change) for r in rows] == [
        ("explicit", f"{TOPIC}/0/0"), ("written", f"{TOPIC}/0/3")
    ]  # fmt: skip
    assert verify_snapshot(root, third) == []
    done = run_cli(
        "snapshot", "evidence", str(root), "--version", third, "--sender", "SHOP",
        "--recipient", f"+{NUMBERS[1]}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"change {TOPIC}/0/3: sender SHOP" in done.stdout


def test_a_version_without_a_consents_evidence_file_has_the_changes_evidence(
    tmp_path: Path,
) -> None:
    root = tmp_path / "snap"
    base = build_on_disk(root, {("SHOP", NUMBERS[0]): "plain"}, set(), set(), set())
    with pytest.raises(SnapshotError, match="no per-row consent evidence"):
        lookup_granted(root, base, "SHOP", f"+{NUMBERS[0]}")
    version, _ = compact(root, base, [change("consent", NUMBERS[1], method="explicit")])
    assert lookup_granted(root, version, "SHOP", f"+{NUMBERS[0]}") == []
    assert [r.change for r in lookup_granted(root, version, "SHOP", f"+{NUMBERS[1]}")] == [
        f"{TOPIC}/0/0"
    ]


@settings(max_examples=100, deadline=None)
@given(
    pairs=_pairs,
    optouts=_optouts,
    dnd=_numbers,
    changes=st.lists(_change, max_size=14),
    cuts=st.tuples(st.integers(0, 8), st.integers(0, 8)),
)
def test_a_partial_fold_with_the_rest_pending_decides_as_before(
    pairs: dict[tuple[str, int], str],
    optouts: set[tuple[str, int]],
    dnd: set[int],
    changes: list[bytes],
    cuts: tuple[int, int],
) -> None:
    """A running overlay holding every change, rebased onto a version that folded in only the
    first ones of each partition (the changes topic is keyed by recipient: a number's
    changes are all in one partition), decides as the old version with every change."""
    refs: list[tuple[ChangeRef, Change]] = []
    offsets = [0, 0]
    for value in changes:
        try:
            parsed = parse_change(value, "86")
        except BadChange:
            continue
        partition = NUMBERS.index(parsed.number) % 2
        refs.append((ChangeRef(TOPIC, partition, offsets[partition]), parsed))
        offsets[partition] += 1
    watermark = {p: min(cut, offsets[p]) for p, cut in enumerate(cuts)}
    folded = [(r, c) for r, c in refs if r.offset < watermark[r.partition]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "snap"
        base = build_on_disk(root, pairs, optouts, set(), dnd)
        data = read_version(root, base)
        overlay = Overlay(data.accept)
        overlay.extend(folded)
        fold_changes(data, overlay, folded)
        version = write_compacted(
            root, data, TOPIC, watermark, len(folded), publish=False, evidence=folded
        )
        old, new = load_snapshot(root, base), load_snapshot(root, version)
    everything = Overlay(data_accept(old))
    everything.extend(refs)
    running = Overlay(data_accept(old))
    running.extend(refs)
    held = len(running)
    # As the stream swaps: the walk over the facts a slot at a time, deciding between steps.
    assert running.rebase_start(data_accept(new), watermark_of(new.manifest, TOPIC)) >= 0
    before = Decider(old, Policy(), overlay=everything)
    after = Decider(new, Policy(), overlay=running)

    def same() -> None:
        for sender in SENDERS:
            for number in [*NUMBERS, 8613899999999]:
                value = ev(sender, number)
                assert after.decide(value, T) == before.decide(value, T), (sender, number)
                assert caps_over_time(after, sender, number) == caps_over_time(
                    before, sender, number
                ), (sender, number)

    same()  # every stale fact still held: the new version holds what each says
    while not running.walk(1):
        same()
    same()
    # The walk ends where the whole walk at once does.
    at_once = Overlay(data_accept(old))
    at_once.extend(refs)
    dropped = at_once.rebase(data_accept(new), watermark_of(new.manifest, TOPIC))
    assert dropped >= 0
    assert len(running) == held - dropped == len(at_once)
    assert sorted(running.facts()) == sorted(at_once.facts())
    assert running.filter == at_once.filter == filter_of(running)
