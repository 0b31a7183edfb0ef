"""``filterd replay``: the output files of docs/contract.md, and --compare."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from filterd.cli import main
from filterd.loadgen import iter_events, load_dataset, write_dataset
from filterd.replay import iter_lines
from tests.support.reference import Reference


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("replay")
    write_dataset(directory / "ds", senders=8, recipients=1_000, consents=2_000, seed=3)
    return directory


def build(root: Path, ds: Path, consents: Path | None = None) -> None:
    code = main([
        "snapshot", "build", "--consents", str(consents or ds / "consents.csv.gz"),
        "--optouts", str(ds / "optouts.csv.gz"), "--dnd", str(ds / "dnd.csv.gz"),
        "--out", str(root),
    ])  # fmt: skip
    assert code == 0


def test_replay_writes_decisions_and_routed_lines(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = data / "ds"
    build(tmp_path / "snap", ds)
    values = [v for _, v in iter_events(load_dataset(ds), 2_000, seed=5, bad_rate=0.05)]
    # Lines of a JSON-lines file cannot hold a newline: drop generated values that do.
    values = [v for v in values if b"\n" not in v and b"\r" not in v]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(v + b"\n" for v in values))
    out = tmp_path / "out"
    assert main(["replay", "--snapshot", str(tmp_path / "snap"), "--input", str(events),
                 "--out", str(out)]) == 0  # fmt: skip
    decisions = [orjson.loads(line) for line in (out / "decisions.jsonl").read_bytes().splitlines()]
    ref = Reference.from_dataset(ds)
    assert [d["line"] for d in decisions] == list(range(1, len(values) + 1))
    routed: dict[str, list[bytes]] = {"deliver": [], "block": [], "invalid": []}
    for d, value in zip(decisions, values, strict=True):
        assert set(d) == {"line", "id", "route", "reason"}
        assert (d["route"], d["reason"]) == ref.decide(value)
        try:
            event = orjson.loads(value)
            want_id = event.get("id") if isinstance(event, dict) else None
        except orjson.JSONDecodeError:
            want_id = None
        assert d["id"] == (want_id if isinstance(want_id, str) else None)
        routed[d["route"]].append(value)
    for route, lines in routed.items():
        assert (out / f"{route}.jsonl").read_bytes() == b"".join(v + b"\n" for v in lines)
    summary = capsys.readouterr().out
    assert f"{len(values)} lines" in summary


def test_compare_reports_changed_decisions(data: Path, tmp_path: Path) -> None:
    ds = data / "ds"
    build(tmp_path / "a", ds)
    first = ds / "consents.csv.gz"
    import gzip

    extra = tmp_path / "more.csv.gz"
    with gzip.open(first, "rb") as src, gzip.open(extra, "wb") as dst:
        dst.write(src.read())
        dst.write(b"NEW-SENDER,+8613800000001\n")
    build(tmp_path / "b", ds, consents=extra)
    events = tmp_path / "e.jsonl"
    events.write_bytes(
        b'{"id":"x1","sender":"NEW-SENDER","recipient":"+8613800000001"}\n'
        b'{"id":"x2","sender":"NEW-SENDER","recipient":"+8613800000002"}\r\n'
        b"not json\n"
    )
    out = tmp_path / "out"
    assert main(["replay", "--snapshot", str(tmp_path / "a"), "--input", str(events),
                 "--out", str(out), "--compare", str(tmp_path / "b")]) == 0  # fmt: skip
    changes = [orjson.loads(x) for x in (out / "changes.jsonl").read_bytes().splitlines()]
    assert changes == [
        {"line": 1, "id": "x1",
         "before": {"route": "block", "reason": "unknown-sender"},
         "after": {"route": "deliver", "reason": "consent"}},
        {"line": 2, "id": "x2",
         "before": {"route": "block", "reason": "unknown-sender"},
         "after": {"route": "block", "reason": "no-consent"}},
    ]  # fmt: skip
    second = orjson.loads((out / "decisions.jsonl").read_bytes().splitlines()[1])
    assert second == {"line": 2, "id": "x2", "route": "block", "reason": "unknown-sender"}


def test_replay_refuses_a_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["replay", "--snapshot", str(tmp_path), "--input", str(tmp_path / "nope.jsonl"),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 1
    assert "--input" in capsys.readouterr().err


def test_iter_lines_strips_only_the_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"a\nb\r\n  c  \n\nlast")
    with path.open("rb") as fh:
        assert list(iter_lines(fh)) == [b"a", b"b", b"  c  ", b"", b"last"]
