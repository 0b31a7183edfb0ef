"""Consent evidence in a build: methods, expiry, max_per_day, global opt-outs, the report."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filterd.cli import main
from filterd.numbers import normalize
from filterd.snapshot import SnapshotInputError, build_snapshot, load_snapshot, verify_snapshot
from filterd.snapshot import format as fmt
from filterd.snapshot.evidence import parse_accept_methods, parse_expiry
from filterd.snapshot.store import FOREVER, REFUSED_ONLY

from .data import random_number, write_csv

HEADER = ["sender", "recipient", "method", "granted_at", "expires_at", "max_per_day"]
METHODS = ["explicit", "double-opt-in", "written", "default-registration", "pre-ticked", "x"]
ACCEPT = ("explicit", "double-opt-in", "written")
T0 = datetime(2026, 11, 11, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


Caps = dict[tuple[str, int], list[tuple[int, int]]]


def _model(
    rows: list[tuple[str, ...]], accept: tuple[str, ...] = ACCEPT
) -> tuple[dict[tuple[str, int], int], Caps, Counter[tuple[str, str]]]:
    """(pair -> until ms, pair -> [(until ms, max_per_day)] of its accepted capped rows,
    refused rows) from the rows, plainly."""
    until: dict[tuple[str, int], int] = {}
    caps: Caps = {}
    refused: Counter[tuple[str, str]] = Counter()
    for sender, recipient, method, _granted, expires, cap in rows:
        pair = (sender.strip(), normalize(recipient.strip(), "86"))
        if method.strip() not in accept:
            refused[(pair[0], method.strip())] += 1
            until.setdefault(pair, REFUSED_ONLY)
            continue
        valid = FOREVER
        if expires.strip():
            moment = datetime.fromisoformat(expires.strip())
            valid = -(-(moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))
        until[pair] = max(until.get(pair, REFUSED_ONLY), valid)
        if cap.strip():
            caps.setdefault(pair, []).append((valid, int(cap)))
    return until, caps, refused


def _cap_at(rows: list[tuple[int, int]], at_ms: int) -> int:
    """The contract's cap: the smallest ``max_per_day`` of the consents valid at ``at_ms``."""
    return min((cap for until, cap in rows if until > at_ms), default=0)


def _probe_times(until: int, rows: list[tuple[int, int]]) -> set[int]:
    """Times while the pair is valid: before every step, at each step's end and just before."""
    times = {T0_MS - 10**12}
    for end, _cap in rows:
        if end != FOREVER:
            times |= {end - 1, end}
    return {t for t in times if t < until}


def _random_rows(rng: random.Random, n: int) -> list[tuple[str, ...]]:
    numbers = [random_number(rng) for _ in range(max(1, n // 3))]  # repeats: several rows a pair
    rows = []
    for _ in range(n):
        expires = ""
        if rng.random() < 0.3:
            moment = T0 + timedelta(seconds=rng.randint(-10**6, 10**6), microseconds=rng.choice(
                [0, 500, 999_999]))  # fmt: skip
            tz = rng.choice(["+08:00", "Z", "-05:30"])
            expires = moment.astimezone(
                UTC if tz == "Z" else datetime.fromisoformat(f"2000-01-01T00:00{tz}").tzinfo
            ).isoformat()
            expires = expires.replace("+00:00", "Z") if tz == "Z" else expires
        rows.append((
            rng.choice(["a", "b", " c ", "d"]),
            rng.choice(numbers),
            rng.choice(METHODS) + rng.choice(["", "", " "]),
            rng.choice(["", "2025-01-01T00:00:00+08:00"]),
            expires,
            rng.choice(["", "", "", "1", "3", "70000"]),
        ))  # fmt: skip
    return rows


def _check(root: Path, rows: list[tuple[str, ...]], accept: tuple[str, ...] = ACCEPT) -> None:
    until, caps, refused = _model(rows, accept)
    snap = load_snapshot(root)
    assert snap.counts.consents == len(until)
    for (sender, number), expected in until.items():
        assert snap.consent_until(sender, number) == expected, (sender, number)
        capped = caps.get((sender, number), [])
        for at in _probe_times(expected, capped):
            assert snap.max_per_day(sender, number, at) == _cap_at(capped, at), (sender, number, at)
        assert snap.consented(sender, number) == (expected == FOREVER)
    assert snap.consent_until("a", 8613999999999) is None
    report = orjson.loads((root / snap.version / fmt.REFUSED_JSON).read_bytes())
    got = Counter({(s, m): n for s, by in report["by_sender"].items() for m, n in by.items()})
    assert got == refused
    assert report["total_rows"] == sum(refused.values())
    table = list(csv.reader(io.StringIO((root / snap.version / fmt.REFUSED_CSV).read_text())))
    assert table[0] == ["sender", "method", "rows"]
    assert Counter({(s, m): int(n) for s, m, n in table[1:]}) == refused
    assert snap.summary()["refused_rows"] == {
        "total": sum(refused.values()),
        "by_method": dict(sorted(Counter(m for (_, m) in refused.elements()).items())),
    }
    assert snap.summary()["accept_methods"] == list(accept)
    assert verify_snapshot(root) == []


@pytest.mark.parametrize("seed", range(4))
def test_mixed_methods_expiries_caps_match_a_plain_model(tmp_path: Path, seed: int) -> None:
    rows = _random_rows(random.Random(seed), 3000)
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv.gz", HEADER, rows))
    _check(root, rows)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 60),
    accept=st.sets(
        st.sampled_from(
            ["explicit", "double-opt-in", "written", "default-registration", "pre-ticked"]
        ),
        min_size=1,
    ),
)
def test_property_build_matches_model(tmp_path: Path, seed: int, n: int, accept: set[str]) -> None:
    rows = _random_rows(random.Random(seed), n)
    root = tmp_path / f"snap-{seed}-{n}-{len(accept)}"
    methods = tuple(sorted(accept))
    build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, rows), accept_methods=methods)
    _check(root, rows, methods)


def test_no_method_column_counts_every_row(tmp_path: Path) -> None:
    rows = [("a", "+8613800000001", "2020-01-01T00:00:00Z"), ("a", "+8613800000002", "")]
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv", ["sender", "recipient", "expires_at"], rows))
    snap = load_snapshot(root)
    assert snap.manifest["method_column"] is False
    assert snap.consent_until("a", 8613800000001) == parse_expiry("2020-01-01T00:00:00Z")
    assert snap.consented("a", 8613800000002)
    assert snap.summary()["refused_rows"] == {"total": 0, "by_method": {}}


def test_global_optouts_apply_to_every_sender_and_star_is_no_sender(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    build_snapshot(
        root,
        write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "+8613800000001")]),
        write_csv(
            tmp_path / "o.csv",
            ["sender", "recipient"],
            [(" * ", "+8613800000009"), ("b", "+8613800000002")],
        ),
    )
    snap = load_snapshot(root)
    assert set(snap.senders) == {"a", "b"}
    assert snap.counts.global_optouts == 1
    assert snap.counts.optouts == 1
    assert snap.opted_out("a", 8613800000009)
    assert snap.opted_out("zzz", 8613800000009)
    assert not snap.opted_out("a", 8613800000002)
    assert snap.global_optout_filter  # the decision's inline test has a table


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("expires_at", "2027-01-01T00:00:00", "bad expires_at"),  # no offset
        ("expires_at", "2027-01-01", "bad expires_at"),
        ("expires_at", "soon", "bad expires_at"),
        ("max_per_day", "0", "bad max_per_day"),
        ("max_per_day", "-2", "bad max_per_day"),
        ("max_per_day", "2.5", "bad max_per_day"),
    ],
)
def test_bad_evidence_is_a_bad_row_with_file_and_line(
    tmp_path: Path, column: str, value: str, why: str
) -> None:
    good = ("a", "+8613800000001", "explicit", "", "", "")
    bad = list(good)
    bad[HEADER.index(column)] = value
    rows = [good] * 5 + [tuple(bad)] + [good]
    path = write_csv(tmp_path / "c.csv", HEADER, rows)
    with pytest.raises(SnapshotInputError) as err:
        build_snapshot(tmp_path / "snap", path)
    assert err.value.line == 7
    assert why in err.value.reason
    assert not (tmp_path / "snap" / "current").exists()


def test_empty_expiry_means_none_and_an_unknown_method_is_refused(tmp_path: Path) -> None:
    rows = [
        ("a", "+8613800000001", "explicit", "", "  ", ""),
        ("a", "+8613800000002", "opt-in-by-silence", "", "", ""),
        ("a", "+8613800000003", "", "", "", ""),
    ]
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, rows))
    snap = load_snapshot(root)
    assert snap.consented("a", 8613800000001)
    assert snap.consent_until("a", 8613800000002) == REFUSED_ONLY
    assert snap.consent_until("a", 8613800000003) == REFUSED_ONLY
    assert snap.manifest["refused_rows"] == {
        "total": 2, "by_method": {"": 1, "opt-in-by-silence": 1}
    }  # fmt: skip


def test_accept_methods_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [("a", "+8613800000001", "default-registration", "", "", "")]
    path = write_csv(tmp_path / "c.csv", HEADER, rows)
    root = tmp_path / "snap"
    assert main(["snapshot", "build", "--consents", str(path), "--out", str(root)]) == 0
    assert "1 consent rows of methods not accepted" in capsys.readouterr().err
    assert load_snapshot(root).consent_until("a", 8613800000001) == REFUSED_ONLY
    args = ["--accept-methods", "explicit,default-registration"]
    assert main(["snapshot", "build", "--consents", str(path), "--out", str(root), *args]) == 0
    snap = load_snapshot(root)
    assert snap.consented("a", 8613800000001)
    assert snap.manifest["accept_methods"] == ["explicit", "default-registration"]
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        parse_accept_methods("explicit,nope")


def test_cli_says_when_there_is_no_method_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "+8613800000001")])
    assert main(["snapshot", "build", "--consents", str(path), "--out", str(tmp_path / "r")]) == 0
    assert "no method column: every consent row counts as accepted" in capsys.readouterr().err


def _downgrade_to_v1(vdir: Path) -> None:
    manifest = orjson.loads((vdir / fmt.MANIFEST).read_bytes())
    manifest["format_version"] = 1
    for name in set(fmt.DATA_FILES) - set(fmt.DATA_FILES_V1):
        del manifest["files"][name]
        (vdir / name).unlink()
    for key in ("global_optouts", "terms"):
        del manifest["counts"][key]
    del manifest["global_optout_chunks"]
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps(manifest))


def test_format_version_1_still_loads_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    version = build_snapshot(
        root, write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "+8613800000001")])
    )
    _downgrade_to_v1(root / version)
    snap = load_snapshot(root)
    assert snap.consented("a", 8613800000001)
    assert snap.counts.terms == 0
    manifest = orjson.loads((root / version / fmt.MANIFEST).read_bytes())
    manifest["format_version"] = 4
    (root / version / fmt.MANIFEST).write_bytes(fmt.dumps(manifest))
    problems = verify_snapshot(root)
    assert problems == [
        "manifest.json: format_version 4 is not supported (this filterd reads 1, 2, 3):"
        " upgrade filterd to load it"
    ]


def test_terms_file_damage_is_refused(tmp_path: Path) -> None:
    rows = [("a", "+8613800000001", "pre-ticked", "", "", ""), ("a", "+8613800000002",
            "explicit", "", "2030-01-01T00:00:00Z", "")]  # fmt: skip
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, rows))
    vdir = root / version
    # Swap the two numbers (unsorted) and fix the checksum: only the structure check remains.
    data = bytearray((vdir / fmt.TERMS).read_bytes())
    data[0:16] = data[8:16] + data[0:8]
    (vdir / fmt.TERMS).write_bytes(bytes(data))
    manifest = orjson.loads((vdir / fmt.MANIFEST).read_bytes())
    manifest["files"][fmt.TERMS]["sha256"] = fmt.sha256_file(vdir / fmt.TERMS)[0]
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps(manifest))
    assert any("not sorted and distinct" in p for p in verify_snapshot(root))


D1 = "2026-11-20T00:00:00+08:00"
D1_MS = parse_expiry(D1)
D2 = "2026-12-20T00:00:00+08:00"
D2_MS = parse_expiry(D2)
A, B, C, D = "+8613800000001", "+8613800000002", "+8613800000003", "+8613800000004"
SCHEDULED_ROWS = [
    # A: a capped consent that expires first, a looser one without expiry, an uncapped one.
    ("s", A, "explicit", "", D1, "2"), ("s", A, "explicit", "", "", "5"),
    ("s", A, "written", "", D2, ""), ("s", A, "explicit", "", D2, "9"),
    # B: a plain consent and a capped one that expires: the cap ends before the consent.
    ("s", B, "explicit", "", "", ""), ("s", B, "explicit", "", D1, "3"),
    # C: the cap of the consent valid longest is the smallest: one cap while valid.
    ("s", C, "explicit", "", D1, "4"), ("s", C, "explicit", "", D2, "1"),
    # D: a refused consent's cap is no cap.
    ("s", D, "explicit", "", D1, ""), ("s", D, "pre-ticked", "", D2, "1"),
]  # fmt: skip


def test_max_per_day_is_the_smallest_of_the_consents_valid_at_the_time(tmp_path: Path) -> None:
    # docs/contract.md step 4: "with several valid consents for a pair, the smallest applies".
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, SCHEDULED_ROWS))
    snap = load_snapshot(root)
    a, b, c, d = (normalize(x, "86") for x in (A, B, C, D))
    before, between, after = D1_MS - 1, D1_MS, D2_MS
    assert [snap.max_per_day("s", a, t) for t in (before, between, after)] == [2, 5, 5]
    assert [snap.max_per_day("s", b, t) for t in (before, between, after)] == [3, 0, 0]
    assert [snap.max_per_day("s", c, t) for t in (before, between)] == [1, 1]
    assert snap.max_per_day("s", d, before) == 0
    # Only the pairs whose cap changes with time need a schedule, and format version 3.
    terms = snap.senders["s"].terms
    assert terms is not None
    assert terms.schedules == {a: ((D1_MS, 2), (FOREVER, 5)), b: ((D1_MS, 3),)}
    manifest = orjson.loads((root / version / fmt.MANIFEST).read_bytes())
    assert manifest["format_version"] == 3
    assert verify_snapshot(root) == []
    # Without such a pair the version stays readable by format-2 readers.
    plain = tmp_path / "plain"
    version = build_snapshot(plain, write_csv(tmp_path / "p.csv", HEADER, SCHEDULED_ROWS[6:]))
    assert orjson.loads((plain / version / fmt.MANIFEST).read_bytes())["format_version"] == 2
    assert load_snapshot(plain).senders["s"].terms.schedules == {}  # type: ignore[union-attr]


def _rewrite_terms(vdir: Path, data: bytes, format_version: int = 3) -> None:
    (vdir / fmt.TERMS).write_bytes(data)
    manifest = orjson.loads((vdir / fmt.MANIFEST).read_bytes())
    manifest["files"][fmt.TERMS]["sha256"] = fmt.sha256_file(vdir / fmt.TERMS)[0]
    manifest["files"][fmt.TERMS]["bytes"] = len(data)
    manifest["format_version"] = format_version
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps(manifest))
    senders = (vdir / fmt.SENDERS).read_bytes().splitlines()
    entries = [orjson.loads(line) for line in senders]
    for entry in entries:
        if entry["terms"]:
            entry["terms"][1] = len(data) - entry["terms"][0]
    (vdir / fmt.SENDERS).write_bytes(b"".join(fmt.dumps(e) + b"\n" for e in entries))
    manifest["files"][fmt.SENDERS]["sha256"] = fmt.sha256_file(vdir / fmt.SENDERS)[0]
    manifest["files"][fmt.SENDERS]["bytes"] = (vdir / fmt.SENDERS).stat().st_size
    (vdir / fmt.MANIFEST).write_bytes(fmt.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("version-2", "bytes for 4 numbers"),
        ("steps-swapped", "not ascending"),
        ("first-cap", "does not match its entry"),
        ("half-row", "bytes for 4 numbers"),
    ],
)
def test_damaged_cap_schedules_are_refused(tmp_path: Path, damage: str, problem: str) -> None:
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, SCHEDULED_ROWS))
    vdir = root / version
    data = bytearray((vdir / fmt.TERMS).read_bytes())
    count = 4  # one sender, four pairs
    rows_at, rows = 20 * count, (len(data) - 20 * count) // 20
    assert rows == 3  # a: two steps, b: one
    until_at, cap_at = rows_at + 8 * rows, rows_at + 16 * rows
    version_number = 3
    if damage == "version-2":
        version_number = 2
    elif damage == "steps-swapped":  # a's two steps in the wrong order
        data[until_at : until_at + 16] = (
            data[until_at + 8 : until_at + 16] + data[until_at : until_at + 8]
        )
    elif damage == "first-cap":  # a's first step no longer the entry's cap
        data[cap_at : cap_at + 4] = (1).to_bytes(4, "little")
    else:
        data += bytes(10)
    _rewrite_terms(vdir, bytes(data), version_number)
    problems = verify_snapshot(root)
    assert any(problem in p for p in problems), problems
