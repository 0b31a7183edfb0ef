"""The synthetic data set and traffic: shape, determinism, and labels that match the contract."""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import io
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.loadgen import (
    BAD_KINDS,
    DEFAULT_MIX,
    Dataset,
    DatasetError,
    iter_events,
    iter_labelled_events,
    load_dataset,
    parse_mix,
    write_dataset,
)
from filterd.loadgen.commands import register
from filterd.loadgen.dataset import FORM_TABLE, render_number
from filterd.loadgen.events import MISSING_CATEGORY_SHARE
from filterd.loadgen.produce import RateProfile, murmur2
from tests.support.reference import Reference, ref_normalize

FILES = ("consents.csv.gz", "optouts.csv.gz", "dnd.csv.gz", "population.json")
REASONS = {
    "consent",
    "opted-out",
    "unknown-sender",
    "recipient-dnd",
    "no-consent",
    "exempt-category",
    "oversized",
    "malformed-json",
    "missing-field",
    "bad-field-type",
    "bad-recipient",
}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("population")
    write_dataset(out, senders=40, recipients=20_000, consents=60_000, seed=11)
    return out


@pytest.fixture(scope="module")
def dataset(dataset_dir: Path) -> Dataset:
    return load_dataset(dataset_dir)


def read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        seed = 5 if name != "c" else 6
        write_dataset(tmp_path / name, senders=12, recipients=3000, consents=8000, seed=seed)
    for file in FILES:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a" / FILES[0]).read_bytes() != (tmp_path / "c" / FILES[0]).read_bytes()


def test_load_dataset_round_trips(tmp_path: Path) -> None:
    written = write_dataset(tmp_path, senders=7, recipients=500, consents=900, seed=3)
    assert load_dataset(tmp_path) == written


def test_csvs_parse_and_every_number_normalizes(dataset_dir: Path, dataset: Dataset) -> None:
    from filterd.numbers import normalize

    consents = read_csv(dataset_dir / "consents.csv.gz")
    optouts = read_csv(dataset_dir / "optouts.csv.gz")
    dnd = read_csv(dataset_dir / "dnd.csv.gz")
    assert list(consents[0]) == ["sender", "recipient", "granted_at"]
    assert list(optouts[0]) == ["sender", "recipient"]
    assert list(dnd[0]) == ["recipient"]
    population = orjson.loads((dataset_dir / "population.json").read_bytes())
    assert len(consents) == population["rows"]["consents"] == 60_000
    assert len(optouts) == population["rows"]["optouts"]
    assert len(dnd) == population["rows"]["dnd"]
    for row in [*consents, *optouts, *dnd]:
        number = normalize(row["recipient"])
        assert len(str(number)) == 13
        assert re.fullmatch(r"861[3-9]\d{9}", str(number)), row
        assert dataset.index_of(number) is not None, row
    raw = [row["recipient"] for row in consents]
    assert any(r.startswith("+86") and " " not in r for r in raw)
    assert any(r.startswith("0086") for r in raw)
    assert any(re.fullmatch(r"1\d{10}", r) for r in raw)
    assert any(" " in r for r in raw)
    assert any("-" in r for r in raw)


@settings(max_examples=200, deadline=None)
@given(r=st.integers(min_value=0, max_value=19_999), form=st.sampled_from(sorted(set(FORM_TABLE))))
def test_every_written_form_normalizes_to_the_recipient(
    dataset: Dataset, r: int, form: int
) -> None:
    from filterd.numbers import normalize

    written = render_number(dataset.national(r), form)
    assert normalize(written) == dataset.e164(r)
    assert dataset.index_of(dataset.e164(r)) == r


def test_population_shape(dataset_dir: Path, dataset: Dataset) -> None:
    consents = read_csv(dataset_dir / "consents.csv.gz")
    optouts = read_csv(dataset_dir / "optouts.csv.gz")
    dnd = read_csv(dataset_dir / "dnd.csv.gz")
    ids = [s.id for s in dataset.senders]
    assert len(set(ids)) == 40
    assert all(re.fullmatch(r"1069000\d{5}", i) or re.fullmatch(r"[A-Z-]+", i) for i in ids)
    assert any(re.fullmatch(r"[A-Z-]+", i) for i in ids)
    # Zipf-like: a few huge senders, a long tail.
    sizes = sorted(collections.Counter(row["sender"] for row in consents).values(), reverse=True)
    assert sizes[0] >= 10 * sizes[len(sizes) // 2]
    # Some senders are known only through opt-outs.
    consenting = {row["sender"] for row in consents}
    assert {row["sender"] for row in optouts} - consenting
    # A few % of consented pairs are opted out again; ~1 % of recipients are DND.
    consent_pairs = {(row["sender"], ref_normalize(row["recipient"])) for row in consents}
    optout_pairs = {(row["sender"], ref_normalize(row["recipient"])) for row in optouts}
    assert 0.01 <= len(consent_pairs & optout_pairs) / len(consent_pairs) <= 0.05
    assert len(consent_pairs) == len(consents)  # no duplicate rows
    assert len(dnd) == dataset.recipients // 100


def test_impossible_population_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="consents"):
        write_dataset(tmp_path, senders=2, recipients=100, consents=10_000)
    with pytest.raises(DatasetError):
        load_dataset(tmp_path / "missing")


def test_same_seed_generates_the_same_events(dataset: Dataset) -> None:
    def run(seed: int) -> list[tuple[bytes | None, bytes]]:
        return list(iter_events(dataset, 3000, seed=seed, bad_rate=0.05, ts_ms=1_700_000_000_000))

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_labels_agree_with_an_independent_model_of_the_files(
    dataset_dir: Path, dataset: Dataset
) -> None:
    # The reference reads the CSVs back with csv/json/sets, so this checks the
    # files, the generator's arithmetic and its labels against each other.
    reference = Reference.from_dataset(dataset_dir)
    events = list(iter_labelled_events(dataset, 20_000, seed=4, bad_rate=0.05))
    assert {e.reason for e in events} == REASONS
    for event in events:
        assert reference.decide(event.value) == (event.route, event.reason), event.kind


def test_mix_and_bad_rates_are_as_requested(dataset: Dataset) -> None:
    count, bad_rate = 30_000, 0.1
    mix = {"marketing": 0.5, "transactional": 0.2, "verification": 0.2, "promo": 0.1}
    events = list(iter_labelled_events(dataset, count, seed=8, bad_rate=bad_rate, mix=mix))
    kinds = collections.Counter(e.kind for e in events)
    per_kind = count * bad_rate / len(BAD_KINDS)
    for kind in BAD_KINDS:
        assert 0.7 * per_kind <= kinds["bad:" + kind] <= 1.3 * per_kind, kind
    valid = [orjson.loads(e.value) for e in events if e.route != "invalid"]
    categories = collections.Counter(v.get("category", "<missing>") for v in valid)
    n = len(valid)
    assert categories["<missing>"] == pytest.approx(
        n * mix["marketing"] * MISSING_CATEGORY_SHARE, rel=0.1
    )
    assert categories["marketing"] + categories["<missing>"] == pytest.approx(n * 0.5, rel=0.05)
    for name in ("transactional", "verification", "promo"):
        assert categories[name] == pytest.approx(n * mix[name], rel=0.1), name


def test_events_look_like_the_contract_says(dataset: Dataset) -> None:
    events = list(iter_labelled_events(dataset, 20_000, seed=2, bad_rate=0.02))
    sizes = [len(e.value) for e in events if e.kind != "bad:oversized"]
    assert 170 <= sum(sizes) / len(sizes) <= 240
    assert all(len(e.value) > 65536 for e in events if e.kind == "bad:oversized")
    assert all(b"\n" not in e.value for e in events)  # one record per JSON line
    ids = set()
    for e in events:
        if e.route == "invalid":
            assert e.key is None
            continue
        event = orjson.loads(e.value)
        assert set(event) <= {"id", "sender", "recipient", "category", "text", "ts"}
        assert isinstance(event["ts"], int)
        assert isinstance(event["text"], str)
        assert e.key == str(ref_normalize(event["recipient"])).encode()
        ids.add(event["id"])
    assert len(ids) == sum(1 for e in events if e.route != "invalid")
    assert any(re.search(r"[\u4e00-\u9fff]", orjson.loads(e.value)["text"]) for e in events[:50])


def test_parse_mix() -> None:
    assert parse_mix("a=1,b=3") == {"a": 0.25, "b": 0.75}
    assert parse_mix(",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items())) == pytest.approx(
        dict(DEFAULT_MIX)
    )
    for bad in ("marketing", "a=-1", "a=0", "=1", "a=x"):
        with pytest.raises(ValueError):  # noqa: PT011
            parse_mix(bad)


def test_flat_profile_paces_evenly() -> None:
    profile = RateProfile(100.0)
    assert [profile.due(n) for n in (0, 50, 100)] == [0.0, 0.5, 1.0]


def test_double11_profile_peaks_at_midnight_and_keeps_the_average() -> None:
    count, rate = 100_000, 1000.0
    profile = RateProfile(rate, "double11", count)
    dues = [profile.due(n, count) for n in range(0, count + 1, 1000)]
    assert dues == sorted(dues)
    assert dues[-1] == pytest.approx(count / rate, rel=1e-3)

    def sent_between(a: float, b: float) -> int:
        return sum(1 for d in dues if a <= d < b) * 1000

    duration = count / rate
    window = duration / 20
    quiet = sent_between(0, window)
    peak = sent_between(duration / 2 - window / 2, duration / 2 + window / 2)
    assert peak >= 3 * quiet
    assert quiet < window * rate  # the baseline is below the average


def test_profile_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="count"):
        RateProfile(10.0, "double11")
    with pytest.raises(ValueError, match="profile"):
        RateProfile(10.0, "weekly", 10)
    with pytest.raises(ValueError, match="rate"):
        RateProfile(0.0)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="filterd")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_writes_a_dataset_and_events(
    tmp_path: Path, dataset: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("loadgen", "dataset", "--out", str(tmp_path / "ds"), "--senders", "5",
                   "--recipients", "1000", "--consents", "2000", "--seed", "11") == 0  # fmt: skip
    summary = orjson.loads(capsys.readouterr().out)
    assert summary["consents"] == 2000
    out = tmp_path / "events.jsonl"
    argv = ["loadgen", "events", "--dataset", str(tmp_path / "ds"), "--count", "500"]
    assert run_cli(*argv, "--seed", "3", "--ts-ms", "1000", "--out", str(out)) == 0
    assert orjson.loads(capsys.readouterr().out)["events"] == 500
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""
    expected = iter_events(load_dataset(tmp_path / "ds"), 500, seed=3, ts_ms=1000)
    assert lines[:-1] == [value for _, value in expected]


def test_cli_rejects_a_bad_mix(tmp_path: Path, dataset_dir: Path) -> None:
    from filterd.errors import ConfigError

    with pytest.raises(ConfigError, match="mix"):
        run_cli("loadgen", "events", "--dataset", str(dataset_dir), "--count", "1",
                "--mix", "marketing", "--out", str(tmp_path / "x"))  # fmt: skip


def test_gzip_members_are_plain_csv(dataset_dir: Path) -> None:
    # Snapshot builders may read the files with any gzip + csv reader.
    text = gzip.decompress((dataset_dir / "dnd.csv.gz").read_bytes()).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["recipient"]
    assert all(len(row) == 1 for row in rows)


@given(key=st.binary(max_size=300))
def test_murmur2_matches_the_kafka_client(key: bytes) -> None:
    from aiokafka.partitioner import murmur2 as client_murmur2

    assert murmur2(key) == client_murmur2(key)


def test_filterd_replay_decides_what_the_labels_say(
    tmp_path: Path, dataset_dir: Path, dataset: Dataset
) -> None:
    # Through the contract's commands only (docs/contract.md): snapshot build, then replay.
    from filterd.cli import main

    inputs = {name: str(dataset_dir / f"{name}.csv.gz") for name in ("consents", "optouts", "dnd")}
    snap, events_file, out = tmp_path / "snap", tmp_path / "events.jsonl", tmp_path / "out"
    build = ["snapshot", "build", "--out", str(snap)]
    for name, path in inputs.items():
        build += [f"--{name}", path]
    assert main(build) == 0
    events = list(iter_labelled_events(dataset, 5000, seed=12, bad_rate=0.05))
    events_file.write_bytes(b"".join(e.value + b"\n" for e in events))
    replay = ["replay", "--snapshot", str(snap), "--input", str(events_file), "--out", str(out)]
    assert main(replay) == 0
    decisions = (out / "decisions.jsonl").read_bytes().splitlines()
    assert len(decisions) == len(events)
    for event, line in zip(events, decisions, strict=True):
        decision = orjson.loads(line)
        assert (decision["route"], decision["reason"]) == (event.route, event.reason), event
