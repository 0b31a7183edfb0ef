"""Messy registry exports: every bad row reported, --max-rejects, --encoding, quoted newlines,
and recipients that look like E.164 without "+".

Messages before these changes (the same inputs):

* three bad rows and a quoted newline: ``consents.csv:5: missing column`` (only one row
  reported, and not the first: line 3 was bad too);
* a quoted field with a newline: ``quoted.csv:4: missing column``;
* a GBK export: ``gbk.csv:2: not UTF-8 text`` (there was no ``--encoding``);
* ``8613800001111`` without ``+``: no message at all.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import orjson
import pytest

from filterd.cli import main
from filterd.errors import SnapshotError
from filterd.snapshot import build_snapshot, load_snapshot
from filterd.snapshot import format as fmt
from filterd.snapshot.errors import SnapshotInputError, SnapshotRowsRejected
from filterd.snapshot.format import current_version
from filterd.snapshot.inputs import Rejects, read_numbers, read_pairs

from .data import write_csv

MESSY = (
    "sender,recipient\n"
    "s1,13800001111\n"
    "s1,abc\n"
    ",13800002222\n"
    "s2\n"
    's3,"138\n'
    '0000333"\n'
    "s4,13800004444\n"
)


def _messy(tmp_path: Path) -> Path:
    path = tmp_path / "consents.csv"
    path.write_text(MESSY, encoding="utf-8")
    return path


def test_every_bad_row_is_listed_and_nothing_is_published(tmp_path: Path) -> None:
    path = _messy(tmp_path)
    root = tmp_path / "snap"
    with pytest.raises(SnapshotRowsRejected) as info:
        build_snapshot(root, path)
    assert str(info.value) == (
        "5 bad input rows, more than --max-rejects 0 allows; nothing was published:\n"
        f"  {path}:3: bad recipient 'abc': not digits\n"
        f"  {path}:4: empty sender\n"
        f"  {path}:5: missing column\n"
        f"  {path}:6: a quoted field spans lines (unclosed quote?)\n"
        f"  {path}:7: closes the quoted field opened on line 6"
    )
    assert [(r.line, r.row) for r in info.value.rows] == [
        (3, "s1,abc"), (4, ",13800002222"), (5, "s2"), (6, 's3,"138'), (7, '0000333"'),
    ]  # fmt: skip
    # The first bad row stays the error's path and line (SnapshotInputError).
    assert (info.value.path, info.value.line) == (str(path), 3)
    assert current_version(root) is None
    assert not root.exists() or fmt.list_versions(root) == []


def test_a_single_bad_row_keeps_the_one_line_message(tmp_path: Path) -> None:
    one = write_csv(tmp_path / "one.csv", ["sender", "recipient"], [("a", "13800001111"), ("b",)])
    with pytest.raises(SnapshotInputError) as info:
        build_snapshot(tmp_path / "snap", one)
    assert str(info.value) == f"{one}:3: missing column"


def test_the_first_100_are_listed_then_counted(tmp_path: Path) -> None:
    rows = [("s", "13800001111")] + [("s", f"bad{i}") for i in range(250)]
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], rows)
    with pytest.raises(SnapshotRowsRejected) as info:
        build_snapshot(tmp_path / "snap", path, max_rejects=249)
    lines = str(info.value).splitlines()
    assert (
        lines[0] == "250 bad input rows, more than --max-rejects 249 allows; nothing was published:"
    )
    assert lines[1] == f"  {path}:3: bad recipient 'bad0': not digits"
    assert lines[100] == f"  {path}:102: bad recipient 'bad99': not digits"
    assert lines[101:] == ["  ... and 150 more"]
    assert len(info.value.rows) == 250


def test_bad_rows_of_every_input_are_listed_together(tmp_path: Path) -> None:
    consents = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "x1")])
    optouts = write_csv(tmp_path / "o.csv.gz", ["sender", "recipient"], [("a", "x2")])
    dnd = write_csv(tmp_path / "d.csv", ["recipient"], [("13800001111",), ("x3",)])
    with pytest.raises(SnapshotRowsRejected) as info:
        build_snapshot(tmp_path / "snap", consents, optouts, dnd)
    assert [(Path(r.path).name, r.line) for r in info.value.rows] == [
        ("c.csv", 2), ("o.csv.gz", 2), ("d.csv", 3),
    ]  # fmt: skip


def test_max_rejects_builds_without_the_bad_rows_and_writes_rejects_csv(tmp_path: Path) -> None:
    path = _messy(tmp_path)
    root = tmp_path / "snap"
    version = build_snapshot(root, path, max_rejects=5)
    snap = load_snapshot(root)
    assert snap.consented("s1", 8613800001111)
    assert snap.consented("s4", 8613800004444)
    assert "s2" not in snap.senders
    assert "s3" not in snap.senders
    vdir = root / version
    manifest = orjson.loads((vdir / fmt.MANIFEST).read_bytes())
    data = (vdir / fmt.REJECTS_CSV).read_bytes()
    assert manifest["files"][fmt.REJECTS_CSV] == {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert manifest["rejected_rows"] == {"total": 5, "max_rejects": 5}
    assert manifest["inputs"][0]["rows"] == 2  # the good rows
    rows = list(csv.reader(data.decode().splitlines(keepends=True)))
    assert rows[0] == ["file", "line", "reason", "row"]
    assert [r[1:3] for r in rows[1:]] == [
        ["3", "bad recipient 'abc': not digits"],
        ["4", "empty sender"],
        ["5", "missing column"],
        ["6", "a quoted field spans lines (unclosed quote?)"],
        ["7", "closes the quoted field opened on line 6"],
    ]
    assert rows[4][3] == 's3,"138'


def test_one_reject_too_many_publishes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    with pytest.raises(SnapshotRowsRejected, match="more than --max-rejects 4 allows"):
        build_snapshot(root, _messy(tmp_path), max_rejects=4)
    assert current_version(root) is None


def test_a_clean_build_has_no_rejects_file(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13800001111")])
    version = build_snapshot(root, path, max_rejects=10)
    manifest = orjson.loads((root / version / fmt.MANIFEST).read_bytes())
    assert fmt.REJECTS_CSV not in manifest["files"]
    assert not (root / version / fmt.REJECTS_CSV).exists()
    assert manifest["rejected_rows"] == {"total": 0, "max_rejects": 10}


def test_bad_evidence_rows_are_rejects_too(tmp_path: Path) -> None:
    header = ["sender", "recipient", "method", "expires_at", "max_per_day"]
    good = ("a", "13800000001", "explicit", "", "")
    rows = [
        good,
        ("a", "13800000002", "explicit", "tomorrow", ""),
        ("b", "13800000003", "x", "", "0"),
    ]
    root = tmp_path / "snap"
    with pytest.raises(SnapshotRowsRejected) as info:
        build_snapshot(root, write_csv(tmp_path / "c.csv", header, rows))
    assert [(r.line, r.reason.split(" '")[0]) for r in info.value.rows] == [
        (3, "bad expires_at"), (4, "bad max_per_day"),
    ]  # fmt: skip


def test_an_unclosed_quote_rejects_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text('sender,recipient\ns1,"13800001111\ns2,13800002222\n', encoding="utf-8")
    with pytest.raises(SnapshotRowsRejected) as info:
        build_snapshot(tmp_path / "snap", path)
    assert [(r.line, r.reason) for r in info.value.rows] == [
        (2, "a quoted field spans lines (unclosed quote?)"),
        (3, "inside the quoted field opened on line 2"),
    ]


def test_quoted_field_with_newline_in_an_ignored_column(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        'sender,recipient,note\ns1,13800001111,"two\nlines"\ns1,13800002222,ok\n',
        encoding="utf-8",
    )
    with pytest.raises(SnapshotRowsRejected) as info:
        read_pairs(path, "consents", "86", None)
    assert str(info.value) == (
        "2 bad input rows, more than --max-rejects 0 allows; nothing was published:\n"
        f"  {path}:2: a quoted field spans lines (unclosed quote?)\n"
        f"  {path}:3: closes the quoted field opened on line 2"
    )


@pytest.mark.parametrize("kind", ["consents", "dnd"])
def test_paths_that_disagree_fail_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Either input's fast path refusing a value its slow path accepts stops the build."""
    from filterd.snapshot import inputs

    def refuse(self: object) -> None:
        raise inputs._NeedsRescan

    if kind == "consents":
        monkeypatch.setattr(inputs._Buffers, "flush", refuse)  # every value refused
    else:
        real = inputs._Buffers.flush

        def refuse_dnd(self: inputs._Buffers) -> None:
            if "-" in self.raw:  # the dnd reader keeps its numbers under "-"
                raise inputs._NeedsRescan
            real(self)

        monkeypatch.setattr(inputs._Buffers, "flush", refuse_dnd)
    consents = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13800001111")])
    dnd = write_csv(tmp_path / "d.csv", ["recipient"], [("13800001111",)])
    failing = consents if kind == "consents" else dnd
    with pytest.raises(SnapshotError, match="no bad row was found on re-reading") as info:
        build_snapshot(tmp_path / "snap", consents, dnd=dnd)
    assert str(info.value).startswith(str(failing))


# --------------------------------------------------------------------------- encodings


GBK_ROWS = "sender,recipient\n中国移动,13800001111\n中国移动,＋８６１３８００００２２２２\n"


@pytest.mark.parametrize("encoding", ["gbk", "gb18030", "GB18030"])
def test_gbk_exports_are_read_with_encoding(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(GBK_ROWS.encode(encoding))
    root = tmp_path / "snap"
    build_snapshot(root, path, encoding=encoding)
    snap = load_snapshot(root)
    assert snap.consented("中国移动", 8613800001111)
    assert snap.consented("中国移动", 8613800002222)  # full-width digits and plus


def test_a_gbk_export_read_as_utf8_names_every_line(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(GBK_ROWS.encode("gbk"))
    with pytest.raises(SnapshotRowsRejected) as info:
        build_snapshot(tmp_path / "snap", path)
    assert [(r.line, r.reason) for r in info.value.rows] == [
        (2, "not UTF-8 text"), (3, "not UTF-8 text"),
    ]  # fmt: skip


def test_a_header_that_is_not_text_stops_the_build(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("发件人,recipient\n".encode("gbk"))
    with pytest.raises(SnapshotInputError, match=r"c\.csv:1: header is not UTF-8 text"):
        build_snapshot(tmp_path / "snap", path, max_rejects=100)


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("klingon", "--encoding: unknown encoding 'klingon'"),
        ("utf-16", "--encoding: 'utf-16' does not write ASCII as ASCII"),
    ],
)
def test_a_bad_encoding_stops_the_build_naming_the_option(
    tmp_path: Path, encoding: str, message: str
) -> None:
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], [("a", "13800001111")])
    with pytest.raises(SnapshotError, match=message):
        build_snapshot(tmp_path / "snap", path, encoding=encoding)
    assert not (tmp_path / "snap").exists()


# --------------------------------------------------------------- E.164 without "+"


def test_numbers_without_plus_are_counted_with_line_numbers(tmp_path: Path) -> None:
    rows = [("a", "13800001111"), ("a", "8613800001111"), ("a", "+8613800002222")]
    rows += [("a", f"86138000{i:05d}") for i in range(7)] + [("a", "08613800003333")]
    path = write_csv(tmp_path / "c.csv", ["sender", "recipient"], rows)
    root = tmp_path / "snap"
    version = build_snapshot(root, path)
    manifest = orjson.loads((root / version / fmt.MANIFEST).read_bytes())
    assert manifest["inputs"][0]["without_plus"] == {"count": 8, "lines": [3, 5, 6, 7, 8]}
    # The contract stays: read as national numbers.
    assert load_snapshot(root).consented("a", 868613800001111)


def test_numbers_without_plus_are_counted_on_the_slow_path_too(tmp_path: Path) -> None:
    rows = [("a", "8613800001111"), ("a", " 13800001111 "), ("a", "bad"), ("b", "14155550100")]
    path = write_csv(tmp_path / "d.csv", ["sender", "recipient"], rows)
    record, _maps = read_pairs(path, "optouts", "86", None, Rejects(1))
    assert (record.without_plus, record.without_plus_lines, record.rows) == (1, [2], 3)
    us, _bitmap = read_numbers(
        write_csv(tmp_path / "n.csv", ["recipient"], [("14155550100",), ("4155550100",)]),
        "dnd", "1", None,
    )  # fmt: skip
    assert (us.without_plus, us.without_plus_lines) == (1, [2])


# ------------------------------------------------------------------------------- the CLI


def test_cli_lists_bad_rows_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _messy(tmp_path)
    assert main(["snapshot", "build", "--consents", str(path), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "filterd: error: 5 bad input rows, more than --max-rejects 0 allows;"
        f" nothing was published:\n  {path}:3: bad recipient 'abc': not digits\n"
    )


def test_cli_max_rejects_and_without_plus_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.csv"
    path.write_text(MESSY + "s5,8613800005555\n", encoding="utf-8")
    out = tmp_path / "s"
    args = ["snapshot", "build", "--consents", str(path), "--out", str(out)]
    assert main([*args, "--max-rejects", "5"]) == 0
    captured = capsys.readouterr()
    version = captured.out.strip()
    assert (
        f"filterd: note: 5 bad input rows left out (--max-rejects 5): {out / version}/rejects.csv"
        in captured.err
    )
    assert (
        f"filterd: note: {path}: 1 recipients without '+' start with country code 86 and are"
        " read as national numbers (E.164 without '+'?), lines 9\n" in captured.err
    )


@pytest.mark.parametrize("value", ["-1", "many"])
def test_cli_refuses_a_bad_max_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    path = _messy(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["snapshot", "build", "--consents", str(path), "--out", str(tmp_path / "s"),
              "--max-rejects", value])  # fmt: skip
    assert info.value.code == 2
    assert "--max-rejects" in capsys.readouterr().err
