"""The Kafka Streams peer of the benchmark (benchmarks/peer_kafka_streams.py).

Without a broker: the gate's comparison finds every kind of disagreement it
claims to (wrong reason, lost record, repeated record, changed value or key,
wrong partition or header), and the properties file says what it was given.

With the broker (``kafka``, ``slow``): the peer is built (cached after the first
build: ~30 s plus downloads the first time, nothing later) and run over a few
thousand records holding every reason, hand-written edge cases and mutated
events; every record must get filterd's route and reason. Skipped, saying why,
when Maven or a JDK is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import peer_kafka_streams as pk

# --------------------------------------------------------------------------- the comparison

INPUT = "t.in"
ROUTE_TOPICS = {"deliver": "t.deliver", "block": "t.block", "invalid": "t.invalid"}
RECORDS: list[tuple[bytes | None, bytes | None]] = [(b"k0", b"v0"), (None, b"v1"), (b"k2", None)]
EXPECTED = [("deliver", "consent"), ("block", "no-consent"), ("invalid", "malformed-json")]
#: Input record i was written to partition i % 4 at offset 10 + i.
PLACED = [(i % 4, 10 + i) for i in range(3)]


def _out(i: int, route: str, reason: str, **change: object) -> pk._Output:
    key, value = RECORDS[i]
    p, offset = PLACED[i]
    out = pk._Output(
        ROUTE_TOPICS[route],
        p % 3,
        key,
        value,
        {
            "filterd-route": route.encode(),
            "filterd-reason": reason.encode(),
            "filterd-snapshot": b"v1",
            "filterd-source": f"{INPUT}/{p}/{offset}".encode(),
        },
    )
    for name, new in change.items():
        setattr(out, name, new)
    return out


def _compare(outputs: list[pk._Output]) -> pk.Agreement:
    return pk.compare(
        RECORDS,
        EXPECTED,
        PLACED,
        outputs,
        input_topic=INPUT,
        route_topics=ROUTE_TOPICS,
        output_partitions=3,
        version="v1",
    )


def _faithful() -> list[pk._Output]:
    return [_out(i, route, reason) for i, (route, reason) in enumerate(EXPECTED)]


def test_faithful_output_agrees() -> None:
    a = _compare(_faithful())
    assert a.ok
    assert (a.records, a.agreed, a.disagreed, a.missing, a.contract_errors) == (3, 3, 0, 0, 0)
    assert a.by_reason == {"consent": 1, "no-consent": 1, "malformed-json": 1}


def test_a_different_reason_is_a_disagreement() -> None:
    outputs = _faithful()
    outputs[1] = _out(1, "block", "recipient-dnd")
    a = _compare(outputs)
    assert not a.ok
    assert (a.agreed, a.disagreed) == (2, 1)
    assert a.examples[0]["peer"] == "block/recipient-dnd"
    assert a.examples[0]["filterd"] == "block/no-consent"


def test_a_lost_record_is_missing_and_a_repeat_is_counted() -> None:
    outputs = _faithful()
    lost = _compare(outputs[:2])
    assert not lost.ok
    assert lost.missing == 1
    repeated = _compare([*outputs, _out(0, "deliver", "consent")])
    assert repeated.ok  # at-least-once may repeat a record, with the same decision
    assert repeated.repeated == 1


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"value": b"changed"}, "value differs"),
        ({"key": b"other"}, "key differs"),
        ({"partition": 2}, "partition 2, not 0 % 3"),
        ({"topic": "t.block"}, "route header 'deliver' on topic t.block"),
    ],
)
def test_output_contract_breaks_are_found(change: dict[str, object], problem: str) -> None:
    outputs = _faithful()
    outputs[0] = _out(0, "deliver", "consent", **change)
    a = _compare(outputs)
    assert not a.ok
    assert a.contract_errors == 1
    assert problem in a.examples[0]["problems"]  # type: ignore[operator]


def test_wrong_snapshot_header_and_unknown_source_are_found() -> None:
    outputs = _faithful()
    outputs[0].headers["filterd-snapshot"] = b"v0"
    outputs[1].headers["filterd-source"] = b"elsewhere/1/11"
    a = _compare(outputs)
    assert a.contract_errors == 2
    assert a.missing == 1  # record 1's output cannot be matched to it


def test_properties_file_escapes_any_character(tmp_path: Path) -> None:
    path = pk.write_properties(
        tmp_path / "p.properties", {"policy.category.促销 x=y": "exempt", "a": "b:c\\d"}
    )
    text = path.read_text()
    assert text.isascii()
    assert "policy.category.\\u4fc3\\u9500\\u0020x\\u003dy=exempt\n" in text
    assert "a=b\\u003ac\\u005cd\n" in text


# --------------------------------------------------------------------------- through the broker


@pytest.fixture(scope="module")
def built() -> Path:
    missing = pk.tools_missing()
    if missing:
        pytest.skip(f"{', '.join(missing)} not found: the Kafka Streams peer needs Maven and a JDK")
    return pk.build()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_peer_agrees_with_filterd_on_every_record(
    built: Path, kafka_bootstrap: str, tmp_path: Path
) -> None:
    from benchmarks._common import ensure_snapshot
    from filterd.loadgen import write_dataset

    dataset = tmp_path / "dataset"
    write_dataset(dataset, senders=30, recipients=20_000, consents=40_000, seed=5)
    dataset, snapshot_root = ensure_snapshot(tmp_path, dataset)
    records = pk.gate_records(dataset, events=3_000, fuzz=1_000, seed=5, bad_rate=0.05)
    agreement = await pk.check_agreement(
        records, bootstrap=kafka_bootstrap, snapshot_root=snapshot_root, workdir=tmp_path
    )
    report = agreement.as_dict()
    assert agreement.ok, report
    assert agreement.agreed == len(records)
    # Every reason filterd gives was exercised, so each rule was compared.
    assert set(agreement.by_reason) == set(pk.REASONS), report
