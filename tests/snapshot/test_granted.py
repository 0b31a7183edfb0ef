"""granted_at per consent row: kept on disk in the version, queried per pair, never loaded."""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from filterd.errors import SnapshotError
from filterd.snapshot import build_snapshot, load_snapshot
from filterd.snapshot.granted import GRANTED, lookup_granted

from .data import random_number, write_csv

HEADER = ["sender", "recipient", "method", "granted_at", "expires_at"]


def _rows(n: int, seed: int) -> list[tuple[str, str, str, str, str]]:
    rng = random.Random(seed)
    methods = ("explicit", "written", "default-registration", "pre-ticked")
    return [
        (
            f"SENDER{rng.randrange(5)}",
            random_number(rng),
            rng.choice(methods),
            f"2026-0{rng.randrange(1, 10)}-1{rng.randrange(10)}T08:00:00+08:00",
            rng.choice(("", "2027-01-01T00:00:00+08:00")),
        )
        for _ in range(n)
    ]


def _manifest(root: Path, version: str) -> dict[str, object]:
    doc = orjson.loads((root / version / "manifest.json").read_bytes())
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("name", ["c.csv", "c.csv.gz"])
def test_every_pair_finds_exactly_its_rows(tmp_path: Path, name: str) -> None:
    rows = _rows(400, seed=1)
    # Two rows of one pair, the second in another spelling of the number.
    rows.append(("SENDER1", "+8613800000077", "explicit", "2026-01-01T00:00:00+08:00", ""))
    rows.append(("SENDER1", "138-0000-0077", "written", "2026-02-02T00:00:00+08:00", ""))
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / name, HEADER, rows))
    entry = _manifest(root, version)["files"][GRANTED]  # type: ignore[index]
    assert entry["bytes"] == (root / version / GRANTED).stat().st_size
    for i in (0, 17, 399):
        sender, recipient, method, granted_at, expires_at = rows[i]
        found = lookup_granted(root, version, f" {sender} ", recipient)
        expected = [j + 2 for j, r in enumerate(rows) if (r[0], r[1]) == (sender, recipient)]
        assert [f.line for f in found] == expected
        assert (found[0].method, found[0].granted_at, found[0].expires_at) == (
            method,
            granted_at,
            expires_at,
        )
    pair = lookup_granted(root, version, "SENDER1", "13800000077")
    assert [(f.method, f.granted_at, f.line) for f in pair] == [
        ("explicit", "2026-01-01T00:00:00+08:00", 402),
        ("written", "2026-02-02T00:00:00+08:00", 403),
    ]
    assert lookup_granted(root, version, "SENDER1", "+8613800000078") == []
    assert lookup_granted(root, version, "NOBODY", "+8613800000077") == []


def test_columns_filterd_does_not_read_are_not_kept(tmp_path: Path) -> None:
    rows = [("S", "+8613800000001", "explicit", "2026-01-01T00:00:00+08:00", "", "Zhang San")]
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / "c.csv", [*HEADER, "customer_name"], rows))
    kept = gzip.decompress((root / version / GRANTED).read_bytes()).decode()
    assert "Zhang San" not in kept
    assert kept.splitlines()[0] == ",".join(HEADER)
    [row] = lookup_granted(root, version, "S", "+8613800000001")
    assert (row.method, row.granted_at, row.line) == ("explicit", "2026-01-01T00:00:00+08:00", 2)


def test_a_file_of_known_columns_is_kept_byte_for_byte(tmp_path: Path) -> None:
    consents = write_csv(tmp_path / "c.csv", HEADER, _rows(50, seed=2))
    root = tmp_path / "snap"
    version = build_snapshot(root, consents)
    assert gzip.decompress((root / version / GRANTED).read_bytes()) == consents.read_bytes()


def test_a_gbk_file_is_read_back_in_its_encoding(tmp_path: Path) -> None:
    consents = tmp_path / "c.csv"
    consents.write_bytes(
        "sender,recipient,method,granted_at\n商城,+8613800000001,explicit,2026-01-01T00:00:00Z\n"
        .encode("gbk")
    )  # fmt: skip
    root = tmp_path / "snap"
    version = build_snapshot(root, consents, encoding="gbk")
    [row] = lookup_granted(root, version, "商城", "+8613800000001")
    assert row.granted_at == "2026-01-01T00:00:00Z"


def test_without_granted_at_nothing_is_kept_and_the_lookup_says_why(tmp_path: Path) -> None:
    consents = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("S", "+8613800000001")])
    root = tmp_path / "snap"
    version = build_snapshot(root, consents)
    assert not (root / version / GRANTED).exists()
    with pytest.raises(SnapshotError, match="no granted_at column"):
        lookup_granted(root, version, "S", "+8613800000001")


def test_an_altered_evidence_file_is_reported_not_believed(tmp_path: Path) -> None:
    rows = [("S", "+8613800000001", "explicit", "2026-01-01T00:00:00+08:00", "")]
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, rows))
    # A backdated consent, in a file of the right format: only the manifest tells.
    forged = ",".join(HEADER) + "\nS,+8613800000001,explicit,2020-01-01T00:00:00+08:00,\n"
    (root / version / GRANTED).write_bytes(gzip.compress(forged.encode()))
    with pytest.raises(SnapshotError, match="altered"):
        lookup_granted(root, version, "S", "+8613800000001")


def test_the_filter_never_loads_it(tmp_path: Path) -> None:
    rows = _rows(100, seed=3)
    root = tmp_path / "snap"
    version = build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, rows))
    # The service's load does not open the file: a version loads the same without it.
    (root / version / GRANTED).unlink()
    load_snapshot(root, version)


def test_snapshot_evidence_command(tmp_path: Path) -> None:
    rows = [("S", "+8613800000001", "written", "2026-03-04T05:06:07+08:00", "")]
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv", HEADER, rows))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "filterd", "snapshot", "evidence", str(root), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    found = run("--sender", "S", "--recipient", "13800000001", "--format", "json")
    assert found.returncode == 0, found.stderr
    doc = orjson.loads(found.stdout)
    assert [(r["method"], r["granted_at"], r["line"]) for r in doc["rows"]] == [
        ("written", "2026-03-04T05:06:07+08:00", 2)
    ]
    text = run("--sender", "S", "--recipient", "+8613800000001")
    assert "granted_at 2026-03-04T05:06:07+08:00" in text.stdout
    assert run("--sender", "S", "--recipient", "+8613800000002").returncode == 1
    bad = run("--sender", "S", "--recipient", "not-a-number")
    assert bad.returncode != 0
    assert "--recipient" in bad.stderr


def test_lookups_cross_chunk_edges_line_endings_and_quoted_senders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filterd.snapshot.granted as granted

    rows = _rows(300, seed=4)
    rows += [
        ("SENDER10", "+8613800000088", "explicit", "2026-01-01T00:00:00+08:00", ""),
        ("SENDER1", "+8613800000088", "written", "2026-01-02T00:00:00+08:00", ""),
    ]
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(
        ("\r\n".join([",".join(HEADER), *(",".join(r) for r in rows)]) + "\r\n").encode()
    )
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(
        ",".join([*HEADER, "note"])
        + '\n"Shop ""A"", Inc.",+8613800000001,explicit,2026-05-05T00:00:00+08:00,,"a, b"\n'
    )
    root = tmp_path / "snap"
    v_crlf = build_snapshot(root, crlf)
    v_quoted = build_snapshot(tmp_path / "other", quoted)
    # Chunks of 64 characters: rows are cut at every place a chunk can end.
    monkeypatch.setattr(granted, "_CHUNK", 64)
    for i in (0, 150, 299):
        sender, recipient = rows[i][:2]
        found = lookup_granted(root, v_crlf, sender, recipient)
        assert [f.line for f in found] == [
            j + 2 for j, r in enumerate(rows) if (r[0], r[1]) == (sender, recipient)
        ]
        assert found[0].granted_at == rows[i][3]
    # SENDER1 is found exactly, not as part of SENDER10.
    [one] = lookup_granted(root, v_crlf, "SENDER1", "+8613800000088")
    assert (one.method, one.line) == ("written", 303)
    [shop] = lookup_granted(tmp_path / "other", v_quoted, 'Shop "A", Inc.', "13800000001")
    assert (shop.sender, shop.granted_at, shop.line) == (
        'Shop "A", Inc.',
        "2026-05-05T00:00:00+08:00",
        2,
    )


def test_kept_columns_of_a_large_file_line_for_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import filterd.snapshot.granted as granted

    monkeypatch.setattr(granted, "_CHUNK", 100)
    rows = [(s, r, m, g, f"customer {i}") for i, (s, r, m, g, _) in enumerate(_rows(200, seed=5))]
    header = ["sender", "recipient", "method", "granted_at", "name"]  # no expires_at
    consents = write_csv(tmp_path / "c.csv", header, rows)
    with consents.open("a") as f:  # a blank line, then a quoted row: the slow path
        f.write('\n"SENDER9",+8613800000099,written,"2026-06-06T00:00:00+08:00","x, y"\n')
    root = tmp_path / "snap"
    version = build_snapshot(root, consents)
    lines = gzip.decompress((root / version / GRANTED).read_bytes()).decode().splitlines()
    assert lines[0] == ",".join(HEADER)
    assert len(lines) == len(rows) + 3  # header, rows, blank line, quoted row
    assert lines[5] == ",".join([*rows[4][:4], ""])
    assert not any("customer" in line or "x, y" in line for line in lines)
    [last] = lookup_granted(root, version, "SENDER9", "13800000099")
    assert (last.granted_at, last.expires_at, last.line) == (
        "2026-06-06T00:00:00+08:00",
        "",
        len(rows) + 3,
    )
