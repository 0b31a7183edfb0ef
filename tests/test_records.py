"""filterd's own producer batch (filterd/records.py) against aiokafka's builder, byte for byte.

The same records, headers, producer state and flags go into aiokafka's record batch
builder (its C extension and its pure-Python twin) and into :class:`RecordBatch`:
the batches must be identical, and aiokafka's reader must read ours back with a
valid CRC. The real-broker round trip is in tests/integration (every record filterd
produces is read back by a consumer there).
"""

from __future__ import annotations

import random

import pytest
from aiokafka.record._crc32c import crc
from aiokafka.record.default_records import (
    DefaultRecordBatch,
    _DefaultRecordBatchBuilderPy,
    _DefaultRecordBatchPy,
)
from aiokafka.record.util import encode_varint

from filterd.records import (
    CODECS,
    RecordBatch,
    encode_header,
    encode_headers,
    record_body,
    varint,
)

try:
    from aiokafka.record._crecords.default_records import DefaultRecordBatchBuilder as CBuilder
except ImportError:  # pragma: no cover - aiokafka without its C extension
    CBuilder = None

BUILDERS = [_DefaultRecordBatchBuilderPy] + ([CBuilder] if CBuilder is not None else [])

Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def read_batch(data: bytes | bytearray) -> list[Record]:
    """(timestamp, key, value, headers) of each record of a batch, read by aiokafka."""
    batch = _DefaultRecordBatchPy(bytes(data))
    assert batch.validate_crc()
    return [(r.timestamp, r.key, r.value, list(r.headers)) for r in batch]


def _aiokafka_varint(n: int) -> bytes:
    out = bytearray()
    encode_varint(n, out.append)
    return bytes(out)


@pytest.mark.parametrize(
    "n", [0, 1, -1, 63, -64, 64, -65, 8191, -8192, 8192, -8193, 2**31, -(2**31), 2**62, -(2**63)]
)
def test_varint_is_kafkas_zigzag_varint(n: int) -> None:
    assert varint(n) == _aiokafka_varint(n)


def test_known_varints() -> None:
    assert [varint(n) for n in (0, -1, 1, 64)] == [b"\x00", b"\x01", b"\x02", b"\x80\x01"]


def _random_records(rnd: random.Random, n: int) -> list[Record]:
    base = rnd.randint(0, 2**41)
    records = []
    for _ in range(n):
        ts = base + rnd.randint(-100_000, 100_000)
        key = None if rnd.random() < 0.3 else rnd.randbytes(rnd.randint(0, 40))
        value = None if rnd.random() < 0.05 else rnd.randbytes(rnd.choice([0, 10, 300, 9000]))
        headers = [
            (rnd.choice(["filterd-source", "h", "é-ü"]), rnd.randbytes(rnd.randint(0, 200)))
            for _ in range(rnd.randint(0, 5))
        ]
        records.append((ts, key, value, headers))
    return records


@pytest.mark.parametrize("builder_class", BUILDERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("seed", range(40))
def test_same_bytes_as_aiokafkas_builder(builder_class: type, seed: int) -> None:
    rnd = random.Random(seed)
    transactional = rnd.random() < 0.5
    # Small limits make both refuse records; the large one takes them all.
    size = rnd.choice([100, 2_000, 30_000, 1 << 20])
    theirs = builder_class(2, 0, int(transactional), -1, -1, 0, size)
    ours = RecordBatch(size, 0, transactional)
    taken = 0
    for ts, key, value, headers in _random_records(rnd, rnd.randint(0, 200)):
        took = theirs.append(taken, ts, key, value, headers) is not None
        assert ours.append(ts, key, value, encode_headers(headers), len(headers)) == took
        if not took:
            assert ours.closed()
            break
        taken += 1
    assert ours.record_count() == taken
    if rnd.random() < 0.5:
        state = (rnd.randint(0, 2**40), rnd.randint(0, 30_000), rnd.randint(0, 2**30))
        theirs.set_producer_state(*state)
        ours._set_producer_state(*state)
    expected = bytes(theirs.build())
    assert ours.size() == len(expected)
    assert bytes(ours._build()) == expected


def test_records_read_back_with_their_headers() -> None:
    ours = RecordBatch(1 << 20)
    hdrs = [("filterd-route", b"deliver"), ("filterd-source", b"in/0/7"), ("x", b"")]
    assert ours.append(1_000, b"k", b"v1", encode_headers(hdrs), 3)
    assert ours.append(990, None, None, encode_header("a", None), 1)
    assert ours.append(1_005, b"", b"", b"", 0)
    assert read_batch(ours._build()) == [
        (1_000, b"k", b"v1", hdrs),
        (990, None, None, [("a", None)]),
        (1_005, b"", b"", []),
    ]
    batch = DefaultRecordBatch(bytes(ours._build()))
    assert (batch.first_timestamp, batch.max_timestamp) == (1_000, 1_005)
    assert batch.last_offset_delta == 2
    assert not batch.is_transactional


def test_a_full_batch_refuses_and_stays_closed() -> None:
    ours = RecordBatch(200)
    # The first record always goes in, whatever its size (as in aiokafka).
    assert ours.append(1, None, b"x" * 500, b"", 0)
    assert not ours.append(2, None, b"y", b"", 0)
    assert ours.closed()
    assert not ours.append(3, None, b"", b"", 0)
    assert ours.record_count() == 1
    built = ours._build()
    assert ours._build() is built  # a retry sends the same bytes
    assert [r[2] for r in read_batch(built)] == [b"x" * 500]


def test_close_stops_appends() -> None:
    ours = RecordBatch(1 << 20)
    ours.close()
    assert not ours.append(1, None, b"v", b"", 0)
    assert ours.record_count() == 0


def test_transactional_flag_and_producer_state() -> None:
    ours = RecordBatch(1 << 20, transactional=True)
    ours.append(5, None, b"v", b"", 0)
    ours._set_producer_state(42, 3, 17)
    batch = DefaultRecordBatch(bytes(ours._build()))
    assert batch.is_transactional
    assert (batch.producer_id, batch.producer_epoch, batch.base_sequence) == (42, 3, 17)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_read_back(codec: str) -> None:
    from aiokafka import codec as codecs

    if not getattr(codecs, f"has_{codec}")():
        pytest.skip(f"{codec} is not installed")
    ours = RecordBatch(1 << 20, CODECS[codec])
    records = _random_records(random.Random(3), 50)
    for ts, key, value, headers in records:
        assert ours.append(ts, key, value, encode_headers(headers), len(headers))
    data = ours._build()
    batch = DefaultRecordBatch(bytes(data))
    assert batch.compression_type == CODECS[codec]
    assert read_batch(data) == records


def test_an_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="codec 9"):
        RecordBatch(1 << 20, 9)


def test_the_crc_is_the_hardware_one_when_installed() -> None:
    google_crc32c = pytest.importorskip("google_crc32c")
    if google_crc32c.implementation != "c":
        pytest.skip("google-crc32c without its C extension")
    from filterd import records

    assert records._crc32c is google_crc32c.value
    data = random.Random(5).randbytes(100_000)
    assert records._crc32c(data) == crc(data)  # aiokafka's, pure Python


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [300, 4_000, 1 << 20])
def test_extend_writes_the_bytes_of_one_append_per_record(seed: int, batch_size: int) -> None:
    """The changelog's bulk append: the same batches, filled to the same record, as
    appending each record in turn (also after other records, at another timestamp)."""
    rnd = random.Random(seed)
    records: list[tuple[bytes, bytes | None]] = [
        (rnd.randbytes(rnd.choice([0, 5, 60, 9_000])), rnd.choice([None, b"", b"7", b"1234"]))
        for _ in range(rnd.randrange(1, 400))
    ]
    head = rnd.choice([0, 1, 3])  # records already in the batch, appended one by one
    ours, theirs = (
        RecordBatch(batch_size, transactional=True),
        RecordBatch(batch_size, transactional=True),
    )
    for batch in (ours, theirs):
        for i in range(head):
            assert batch.append(1_000 + i, b"k", b"v" * i, encode_header("h", b"x"), 1)
    start = rnd.randrange(0, 3)
    timestamp = rnd.choice([990, 1_000, 1_000_000])  # before, at and after the first record
    stop = ours.extend(timestamp, [record_body(k, v) for k, v in records], start)
    want = start
    while want < len(records) and theirs.append(timestamp, *records[want], b"", 0):
        want += 1
    assert stop == want
    assert ours.closed() == theirs.closed()
    assert ours.record_count() == theirs.record_count()
    assert ours.size() == theirs.size()
    assert ours._build() == theirs._build()


def test_extend_of_a_closed_batch_adds_nothing() -> None:
    ours = RecordBatch(1 << 20)
    assert ours.extend(5, [], 0) == 0
    assert ours.record_count() == 0
    ours.close()
    assert ours.extend(5, [record_body(b"k", b"1")], 0) == 0
    assert ours.record_count() == 0
