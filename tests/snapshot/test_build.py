"""snapshot build: inputs, bad rows, publication, pruning; checked against a set model."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from filterd.snapshot import (
    SnapshotInputError,
    build_snapshot,
    current_version,
    load_snapshot,
    verify_snapshot,
)
from filterd.snapshot import format as fmt

from .data import Model, random_rows, write_csv


def _check_against_model(root: Path, model: Model, rng: random.Random) -> None:
    snap = load_snapshot(root)
    assert set(snap.senders) == model.senders
    assert snap.counts.consents == len(model.consents)
    assert snap.counts.optouts == len(model.optouts)
    assert snap.counts.dnd == len(model.dnd)
    for sender, number in model.consents:
        assert snap.consented(sender, number)
        assert number in snap.senders[sender].consents
    for sender, number in model.optouts:
        assert snap.opted_out(sender, number)
    for number in model.dnd:
        assert snap.dnd(number)
        assert number in snap.dnd_numbers
    # Absent pairs: numbers of other senders and fresh numbers.
    numbers = sorted({n for _, n in model.consents | model.optouts} | model.dnd)
    for sender in model.senders:
        for number in [*rng.sample(numbers, min(50, len(numbers))), 8613000000000]:
            assert snap.consented(sender, number) == ((sender, number) in model.consents)
            assert snap.opted_out(sender, number) == ((sender, number) in model.optouts)
    assert not snap.known_sender("nobody")
    assert not snap.consented("nobody", numbers[0])


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_round_trip_matches_model(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(7)
    senders = [f"1069{i:08d}" for i in range(20)] + ["SHOP", "bank ünïcode"]
    consents = random_rows(rng, 3000, senders)
    optouts = random_rows(rng, 300, senders[:5]) + consents[:50]
    dnd = [(r,) for _, r in random_rows(rng, 200, senders)]
    root = tmp_path / "snap"
    version = build_snapshot(
        root,
        write_csv(tmp_path / f"c{suffix}", ["sender", "recipient"], consents),
        write_csv(tmp_path / f"o{suffix}", ["sender", "recipient"], optouts),
        write_csv(tmp_path / f"d{suffix}", ["recipient"], dnd),
    )
    assert current_version(root) == version
    assert fmt.VERSION_RE.match(version)
    assert verify_snapshot(root) == []
    _check_against_model(root, Model.of(consents, optouts, dnd), rng)


def test_columns_by_name_extras_whitespace_quotes_duplicates(tmp_path: Path) -> None:
    rows = [
        ("x", " 13812345678 ", " shop ", "y"),
        ("x", "13812345678", "shop", "y"),  # duplicate after trimming
        ("x", '"+86 138 0000 0001"', '"quoted, sender"', "z"),
        ("x", "+8613900000000", "shop", "y"),
    ]
    path = write_csv(tmp_path / "c.csv", ["extra", "Recipient", "sender", "more"], rows)
    root = tmp_path / "snap"
    build_snapshot(root, path)
    snap = load_snapshot(root)
    assert set(snap.senders) == {"shop", "quoted, sender"}
    assert snap.counts.consents == 3
    assert snap.consented("shop", 8613812345678)
    assert snap.consented("quoted, sender", 8613800000001)
    assert snap.consented(" shop ", 8613900000000)  # lookups trim too


def test_crlf_and_blank_lines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfsender,recipient\r\nshop,13812345678\r\n\r\nshop,13812345679")
    root = tmp_path / "snap"
    build_snapshot(root, path)
    assert load_snapshot(root).counts.consents == 2


def test_country_code_for_national_numbers(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("s", "07911123456")])
    root = tmp_path / "snap"
    build_snapshot(root, path, country_code="44")
    assert load_snapshot(root).consented("s", 447911123456)


@pytest.mark.parametrize(
    ("header", "rows", "line", "reason"),
    [
        (["sender", "recipient"], [("a", "13812345678"), ("b", "12x")], 3, "bad recipient"),
        (["sender", "recipient"], [("a", "13812345678"), ("  ", "13812345678")], 3, "empty sender"),
        (["sender", "recipient"], [("a", "13812345678"), ("b",)], 3, "missing column"),
        (["sender", "number"], [("a", "13812345678")], 1, "missing column 'recipient'"),
        (["sender", "recipient"], [("a", "+٨٦١٣٨١٢٣٤٥٦٧٨")], 2, "bad recipient"),
        (["sender", "recipient"], [("a", "+0123456789")], 2, "leading zero"),
    ],
)
def test_bad_row_names_file_and_line_and_publishes_nothing(
    tmp_path: Path, header: list[str], rows: list[tuple[str, ...]], line: int, reason: str
) -> None:
    root = tmp_path / "snap"
    good = build_snapshot(
        root, write_csv(tmp_path / "good.csv", ["sender", "recipient"], [("a", "13812345678")])
    )
    bad = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(SnapshotInputError, match=reason) as info:
        build_snapshot(root, bad)
    assert info.value.path == str(bad)
    assert info.value.line == line
    assert str(info.value).startswith(f"{bad}:{line}: ")
    assert current_version(root) == good
    assert fmt.list_versions(root) == [good]
    assert [p.name for p in root.iterdir() if p.name.startswith(fmt.TMP_PREFIX)] == []


def test_bad_row_in_dnd_file_reported(tmp_path: Path) -> None:
    consents = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13812345678")])
    dnd = write_csv(tmp_path / "d.csv.gz", ["recipient"], [("13812345678",)] * 3 + [("bad",)])
    with pytest.raises(SnapshotInputError) as info:
        build_snapshot(tmp_path / "snap", consents, dnd=dnd)
    assert (info.value.path, info.value.line) == (str(dnd), 5)
    assert current_version(tmp_path / "snap") is None


def test_line_numbers_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from filterd.snapshot import inputs

    monkeypatch.setattr(inputs, "_BLOCK", 64)  # many blocks, lines cut at block edges
    rows = [("s", f"138{i:08d}") for i in range(500)] + [("s", "oops")]
    with pytest.raises(SnapshotInputError) as info:
        build_snapshot(
            tmp_path / "snap", write_csv(tmp_path / "c.csv", ["sender", "recipient"], rows)
        )
    assert info.value.line == 502


def test_truncated_gzip_is_an_error(tmp_path: Path) -> None:
    rows = [("s", f"138{i:08d}") for i in range(5000)]
    path = write_csv(tmp_path / "c.csv.gz", ["sender", "recipient"], rows)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(Exception, match=r"truncated|gzip"):
        build_snapshot(tmp_path / "snap", path)
    assert current_version(tmp_path / "snap") is None


def test_keep_n_prunes_old_versions_never_current(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13812345678")])
    versions = [build_snapshot(root, path, keep=3) for _ in range(5)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 5
    assert fmt.list_versions(root) == versions[-3:]
    assert current_version(root) == versions[-1]
    # keep=1 leaves the current one and the one it replaced (audit why re-decides with it).
    last = build_snapshot(root, path, keep=1)
    assert fmt.list_versions(root) == [versions[-1], last]


def test_manifest_records_inputs_and_checksums(tmp_path: Path) -> None:
    import hashlib

    import orjson

    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13812345678")] * 3)
    root = tmp_path / "snap"
    version = build_snapshot(root, path)
    manifest = orjson.loads((root / version / fmt.MANIFEST).read_bytes())
    assert manifest["inputs"] == [
        {
            "kind": "consents",
            "path": str(path),
            "bytes": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "rows": 3,
            "encoding": "utf-8",
            "without_plus": {"count": 0, "lines": []},
        }
    ]
    for name in fmt.DATA_FILES:
        data = (root / version / name).read_bytes()
        assert manifest["files"][name] == {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


def test_big_sender_is_chunked_and_reassembled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fmt, "CHUNK_MAX_CONTAINERS", 8)
    rng = random.Random(3)
    rows = [("big", f"13{rng.randrange(10**9):09d}") for _ in range(2000)]
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv", ["sender", "recipient"], rows))
    lines = (root / current_version(root) / fmt.SENDERS).read_text().splitlines()  # type: ignore[operator]
    import orjson

    assert len(orjson.loads(lines[0])["consents"]) > 10
    _check_against_model(root, Model.of(rows), rng)


def test_cli_build_prints_only_the_version(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13812345678")])
    out = subprocess.run(
        [sys.executable, "-m", "filterd", "snapshot", "build", "--consents", str(path),
         "--out", str(tmp_path / "snap"), "--progress"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.splitlines() == [current_version(tmp_path / "snap")]


def test_cli_build_bad_row_exits_nonzero(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "nope")])
    out = subprocess.run(
        [sys.executable, "-m", "filterd", "snapshot", "build", "--consents", str(path),
         "--out", str(tmp_path / "snap")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0
    assert out.stdout == ""
    assert f"{path}:2: bad recipient 'nope'" in out.stderr
