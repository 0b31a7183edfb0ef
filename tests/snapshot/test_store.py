"""Loading, verify and inspect: a damaged or half-written version is always refused."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filterd.cli import main
from filterd.errors import SnapshotError
from filterd.snapshot import (
    SnapshotNotFound,
    SortedNumbers,
    build_snapshot,
    current_version,
    load_snapshot,
    load_snapshot_async,
    verify_snapshot,
)
from filterd.snapshot import format as fmt

from .data import Model, write_csv


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, str]:
    rows = [(f"s{i % 7}", f"1{3 + i % 7}{i * 7919 % 10**9:09d}") for i in range(400)]
    # Every file of the format holds something: terms (expiring, refused, capped
    # consents), global opt-outs, the refused-consent report.
    methods = ["explicit", "default-registration", "written", "explicit"]
    expiries = ["", "", "2030-01-01T00:00:00+08:00", ""]
    caps = ["", "", "", "4"]
    evidence = [(*r, methods[i % 4], expiries[i % 4], caps[i % 4]) for i, r in enumerate(rows)]
    root = tmp_path / "snap"
    version = build_snapshot(
        root,
        write_csv(
            tmp_path / "c.csv",
            ["sender", "recipient", "method", "expires_at", "max_per_day"],
            evidence,
        ),
        write_csv(tmp_path / "o.csv", ["sender", "recipient"], [*rows[:20], ("*", rows[20][1])]),
        write_csv(tmp_path / "d.csv", ["recipient"], [(r,) for _, r in rows[:30]]),
    )
    return root, version


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``filterd snapshot ...`` in-process (a subprocess per case is slow)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["snapshot", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _assert_refused(root: Path, version: str, fragment: str) -> None:
    problems = verify_snapshot(root)
    assert problems, "verify accepted a damaged snapshot"
    assert any(fragment in p for p in problems), problems
    with pytest.raises(SnapshotError, match=fragment):
        load_snapshot(root)
    with pytest.raises(SnapshotError, match=fragment):
        asyncio.run(load_snapshot_async(root))
    verify = _cli("verify", str(root))
    assert verify.returncode != 0
    assert fragment in verify.stderr
    inspect = _cli("inspect", str(root))
    assert inspect.returncode != 0
    assert inspect.stdout == ""  # no summary as if all were well
    assert fragment in inspect.stderr


def test_good_snapshot_verifies_and_inspects(published: tuple[Path, str]) -> None:
    root, version = published
    assert verify_snapshot(root) == []
    verify = _cli("verify", str(root), "--version", version)
    assert verify.returncode == 0, verify.stderr
    inspect = _cli("inspect", str(root))
    assert inspect.returncode == 0, inspect.stderr
    summary = orjson.loads(inspect.stdout)
    snap = load_snapshot(root)
    assert summary["version"] == version
    assert summary["checksums_verified"] is True
    assert (summary["senders"], summary["consents"], summary["optouts"], summary["dnd"]) == (
        7, snap.counts.consents, 20, 30,
    )  # fmt: skip
    assert summary["bytes"] == sum(p.stat().st_size for p in (root / version).iterdir())
    assert summary["created_at"].endswith("Z")


@pytest.mark.parametrize("name", fmt.DATA_FILES)
def test_truncated_file_refused(published: tuple[Path, str], name: str) -> None:
    root, version = published
    path = root / version / name
    path.write_bytes(path.read_bytes()[:-3])
    _assert_refused(root, version, f"{name}: size")


@pytest.mark.parametrize("name", fmt.DATA_FILES)
def test_altered_file_refused(published: tuple[Path, str], name: str) -> None:
    root, version = published
    path = root / version / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _assert_refused(root, version, f"{name}: sha256 mismatch")


@pytest.mark.parametrize("name", fmt.DATA_FILES)
def test_missing_file_refused(published: tuple[Path, str], name: str) -> None:
    root, version = published
    (root / version / name).unlink()
    _assert_refused(root, version, f"{name}: missing")


def test_half_written_version_without_manifest_refused(published: tuple[Path, str]) -> None:
    root, version = published
    (root / version / fmt.MANIFEST).unlink()
    _assert_refused(root, version, "manifest.json: missing")


def test_temp_dir_left_behind_is_ignored(published: tuple[Path, str]) -> None:
    root, version = published
    shutil.copytree(root / version, root / f"{fmt.TMP_PREFIX}20991231T000000Z-abcdef")
    assert fmt.list_versions(root) == [version]
    assert load_snapshot(root).version == version
    # Pointing at a temp dir is never accepted.
    (root / fmt.CURRENT).write_text(f"{fmt.TMP_PREFIX}20991231T000000Z-abcdef\n")
    with pytest.raises(SnapshotNotFound):
        load_snapshot(root)
    assert verify_snapshot(root)


def test_manifest_with_unsupported_format_version_refused(published: tuple[Path, str]) -> None:
    root, version = published
    path = root / version / fmt.MANIFEST
    manifest = orjson.loads(path.read_bytes())
    manifest["format_version"] = 99
    path.write_bytes(orjson.dumps(manifest))
    _assert_refused(root, version, "format_version 99 is not supported")


def test_manifest_counts_must_match(published: tuple[Path, str]) -> None:
    root, version = published
    path = root / version / fmt.MANIFEST
    manifest = orjson.loads(path.read_bytes())
    manifest["counts"]["consents"] += 1
    path.write_bytes(orjson.dumps(manifest))
    _assert_refused(root, version, "counts")


def test_consistently_rewritten_bad_chunk_refused(published: tuple[Path, str]) -> None:
    """Checksums updated to match garbage: the structure checks still refuse it."""
    import hashlib

    root, version = published
    vdir = root / version
    (vdir / fmt.DND).write_bytes(b"\x00" * 40)
    manifest = orjson.loads((vdir / fmt.MANIFEST).read_bytes())
    manifest["files"][fmt.DND] = {"bytes": 40, "sha256": hashlib.sha256(b"\x00" * 40).hexdigest()}
    (vdir / fmt.MANIFEST).write_bytes(orjson.dumps(manifest))
    _assert_refused(root, version, "dnd.roar")


def test_manifest_not_json_refused(published: tuple[Path, str]) -> None:
    root, version = published
    (root / version / fmt.MANIFEST).write_text("{not json")
    _assert_refused(root, version, "not valid JSON")


def test_no_snapshot_and_bad_pointer(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert current_version(root) is None
    with pytest.raises(SnapshotNotFound, match="no snapshot published"):
        load_snapshot(root)
    assert verify_snapshot(root)
    assert _cli("inspect", str(root)).returncode != 0
    (root / fmt.CURRENT).write_text("../etc\n")
    with pytest.raises(SnapshotNotFound, match="does not name a version"):
        load_snapshot(root)
    (root / fmt.CURRENT).write_text("20261128T221500Z-abcdef\n")
    with pytest.raises(SnapshotNotFound, match="not found"):
        load_snapshot(root)


def test_sparse_senders_use_sorted_arrays_dense_use_bitmaps(tmp_path: Path) -> None:
    rows = [("tiny", "13812345678")] + [("dense", f"138{i:08d}") for i in range(0, 20000, 3)]
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv", ["sender", "recipient"], rows))
    snap = load_snapshot(root)
    assert isinstance(snap.senders["tiny"].consents, SortedNumbers)
    assert type(snap.senders["dense"].consents).__name__ == "BitMap64"
    assert 8613800000003 in snap.senders["dense"].consents
    assert 8613800000004 not in snap.senders["dense"].consents
    assert 8613812345678 in snap.senders["tiny"].consents
    assert 8613812345677 not in snap.senders["tiny"].consents
    assert 0 not in snap.senders["tiny"].optouts


def test_a_big_sparse_sender_is_held_in_the_smaller_form(tmp_path: Path) -> None:
    # ~20 numbers per 16-bit container: a bitmap costs ~6 bytes a number there
    # (CRoaring's ~80 bytes per container), the sorted form ~2.5.
    spread = [f"138{i * 3277:08d}" for i in range(2000)]
    runs = [f"139{i:08d}" for i in range(100_000)]  # one long run: a bitmap is far smaller
    rows = [("spread", r) for r in spread] + [("runs", r) for r in runs]
    root = tmp_path / "snap"
    build_snapshot(root, write_csv(tmp_path / "c.csv", ["sender", "recipient"], rows))
    snap = load_snapshot(root)
    assert isinstance(snap.senders["spread"].consents, SortedNumbers)
    assert type(snap.senders["runs"].consents).__name__ == "BitMap64"
    for raw in (spread[0], spread[-1], runs[0], runs[-1]):
        sender = "spread" if raw in spread else "runs"
        assert int("86" + raw) in snap.senders[sender].consents
    assert 8613800000001 not in snap.senders["spread"].consents
    assert snap.counts.consents == len(spread) + len(runs)


numbers = st.integers(min_value=10**7, max_value=10**15 - 1)
senders = st.sampled_from(["a", "b", "SP1069", "ünï", "x y"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    consents=st.lists(st.tuples(senders, numbers), min_size=1, max_size=60),
    optouts=st.lists(st.tuples(senders, numbers), max_size=20),
    dnd=st.lists(numbers, max_size=20),
    probes=st.lists(numbers, max_size=20),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory,
    consents: list[tuple[str, int]],
    optouts: list[tuple[str, int]],
    dnd: list[int],
    probes: list[int],
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    c_rows = [(s, f"+{n}") for s, n in consents]
    o_rows = [(s, f"+{n}") for s, n in optouts]
    d_rows = [(f"+{n}",) for n in dnd]
    root = tmp / "snap"
    build_snapshot(
        root,
        write_csv(tmp / "c.csv", ["sender", "recipient"], c_rows),
        write_csv(tmp / "o.csv", ["sender", "recipient"], o_rows),
        write_csv(tmp / "d.csv", ["recipient"], d_rows),
    )
    model = Model.of(c_rows, o_rows, d_rows)
    snap = load_snapshot(root)
    assert set(snap.senders) == model.senders
    all_numbers = set(probes) | {n for _, n in consents} | {n for _, n in optouts} | set(dnd)
    for sender in ["a", "b", "SP1069", "ünï", "x y"]:
        assert snap.known_sender(sender) == (sender in model.senders)
        for n in all_numbers:
            assert snap.consented(sender, n) == ((sender, n) in model.consents)
            assert snap.opted_out(sender, n) == ((sender, n) in model.optouts)
    for n in all_numbers:
        assert snap.dnd(n) == (n in model.dnd)
    assert (snap.counts.consents, snap.counts.optouts, snap.counts.dnd) == (
        len(model.consents), len(model.optouts), len(model.dnd),
    )  # fmt: skip
