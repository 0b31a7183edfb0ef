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


def _model(
    rows: list[tuple[str, ...]], accept: tuple[str, ...] = ACCEPT
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int], Counter[tuple[str, str]]]:
    """(pair -> until ms, pair -> smallest max_per_day, refused rows) from the rows, plainly."""
    until: dict[tuple[str, int], int] = {}
    caps: dict[tuple[str, int], int] = {}
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
            caps[pair] = min(caps.get(pair, 1 << 40), int(cap))
    return until, caps, refused


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
        assert snap.max_per_day(sender, number) == caps.get((sender, number), 0)
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
    manifest["format_version"] = 3
    (root / version / fmt.MANIFEST).write_bytes(fmt.dumps(manifest))
    problems = verify_snapshot(root)
    assert problems == [
        "manifest.json: format_version 3 is not supported (this filterd reads 1, 2):"
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
