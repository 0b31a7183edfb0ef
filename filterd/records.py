"""filterd's own producer batch: Kafka's record batch format v2, written directly.

aiokafka's ``BatchBuilder`` takes each record's headers as ``(str, bytes)``
pairs and encodes every header name to UTF-8 twice per record (once to size
the record, once to write it), behind a Python wrapper method; its buffer grows
record by record. On filterd's output three of the four contract headers are
the same for every record of an outcome, so they are encoded once per snapshot
version (:class:`filterd.pipeline.HeaderCache`) and handed over here as bytes.
:class:`RecordBatch` keeps each record's pieces in a list, writes the batch
header and the CRC once, at :meth:`RecordBatch._build`, and is sent by
aiokafka's producer like one of its own builders (``send_batch``): it has the
methods aiokafka's accumulator calls (``_build``, ``_set_producer_state``,
``close``, ``closed``, ``record_count``, ``size``).

The CRC-32C is computed with the CPU's CRC instructions (``google-crc32c``),
about four times faster than aiokafka's table-driven one, which is the fallback.

The bytes are those aiokafka's builder writes for the same records, producer
state and flags (tests/test_records.py compares them, uncompressed; compressed
batches are compared record by record, as gzip stamps its own header).

Record batch v2 (https://kafka.apache.org/documentation/#recordbatch)::

    baseOffset int64, batchLength int32, partitionLeaderEpoch int32, magic int8 (2),
    crc uint32 (CRC-32C of attributes .. end), attributes int16, lastOffsetDelta int32,
    baseTimestamp int64, maxTimestamp int64, producerId int64, producerEpoch int16,
    baseSequence int32, records count int32, records...

    record: length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
    keyLength varint, key, valueLength varint, value, headers count varint,
    headers: keyLength varint, key, valueLength varint, value

Every varint is zigzag-encoded (-1 is ``01``: a null key or value).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final

from aiokafka import codec


def _pick_crc32c() -> Callable[[bytes], int]:
    """The fastest CRC-32C at hand; all compute the same function."""
    try:  # the CPU's CRC-32C instructions (SSE 4.2, ARMv8): ~4x aiokafka's table-driven one
        import google_crc32c

        if google_crc32c.implementation == "c":
            hardware: Callable[[bytes], int] = google_crc32c.value
            return hardware
    except ImportError:  # pragma: no cover - a dependency; without it the CRC is aiokafka's
        pass
    try:  # aiokafka's C extension
        from aiokafka.record._crecords.cutil import crc32c_cython

        compiled: Callable[[bytes], int] = crc32c_cython
        return compiled
    except ImportError:  # pragma: no cover - aiokafka built without its extensions
        from aiokafka.record._crc32c import crc

        python: Callable[[bytes], int] = crc
        return python


_crc32c: Final = _pick_crc32c()

__all__ = [
    "CODECS",
    "NULL",
    "RecordBatch",
    "encode_header",
    "encode_headers",
    "record_body",
    "varint",
]

#: ``producer.compression_type`` → the codec id of a batch's attributes.
CODECS: Final = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
_ENCODERS: Final[dict[int, Callable[[bytes], bytes]]] = {
    1: codec.gzip_encode,
    2: codec.snappy_encode,
    3: codec.lz4_encode,
    4: codec.zstd_encode,
}
_TRANSACTIONAL: Final = 0x10

#: baseOffset .. records count.
HEADER_SIZE: Final = 61
#: baseOffset, batchLength, partitionLeaderEpoch, magic, crc.
_PREFIX: Final = struct.Struct(">qiibI")
#: attributes, lastOffsetDelta, baseTimestamp, maxTimestamp, producerId, producerEpoch,
#: baseSequence, records count.
_FIELDS: Final = struct.Struct(">hiqqqhii")

#: The zigzag varints of -8192 .. 8191, by zigzag value: lengths and offset deltas of
#: any batch filterd writes are looked up, not computed.
_SMALL: Final[list[bytes]] = []
_SMALL_LIMIT: Final = 1 << 14


def _encode(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL.extend(_encode((z >> 1) ^ -(z & 1)) for z in range(_SMALL_LIMIT))

#: A null key or value (length -1).
NULL: Final = _SMALL[1]
#: A record's attributes byte (unused in format v2: always 0).
_ATTRIBUTES_ZERO: Final = b"\x00"
#: A record's header count when it has none.
_NO_HEADERS: Final = _SMALL[0]
_JOIN: Final = b"".join
#: Where a batch's fields go (attributes .. records count), written at
#: :meth:`RecordBatch._build`.
_HEADER_PLACE: Final = bytes(_FIELDS.size)


def varint(n: int) -> bytes:
    """``n`` as a zigzag varint (Kafka's varint and varlong)."""
    z = (n << 1) ^ (n >> 63)
    if 0 <= z < _SMALL_LIMIT:
        return _SMALL[z]
    return _encode(n)


def record_body(key: bytes, value: bytes | None) -> bytes:
    """A record without headers as it stands after its offset delta: key length, key,
    value length, value, header count (:meth:`RecordBatch.extend` takes these)."""
    if value is None:
        return varint(len(key)) + key + NULL + _NO_HEADERS
    return varint(len(key)) + key + varint(len(value)) + value + _NO_HEADERS


def encode_header(key: str, value: bytes | None) -> bytes:
    """One record header as it stands in a record (its count is written apart)."""
    name = key.encode()
    if value is None:
        return varint(len(name)) + name + NULL
    return varint(len(name)) + name + varint(len(value)) + value


def encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    """Headers in order, as they stand in a record (their count is written apart)."""
    return b"".join([encode_header(k, v) for k, v in headers])


class RecordBatch:
    """One producer batch of one topic partition, built from pre-encoded headers.

    ``append`` takes a record's headers already encoded (:func:`encode_header`)
    and their count. Like aiokafka's builder, a batch takes its first record
    whatever its size, and refuses (returns False, and closes) a record that
    would bring it to ``batch_size`` bytes or more.
    """

    __slots__ = (
        "_batch_size",
        "_buffer",
        "_closed",
        "_codec",
        "_count",
        "_first_timestamp",
        "_max_timestamp",
        "_parts",
        "_size",
        "_transactional",
        "base_sequence",
        "producer_epoch",
        "producer_id",
    )

    def __init__(self, batch_size: int, codec_id: int = 0, transactional: bool = False) -> None:
        if codec_id and codec_id not in _ENCODERS:
            raise ValueError(f"unknown compression codec {codec_id}")
        self._batch_size = batch_size
        self._codec = codec_id
        self._transactional = transactional
        self._parts: list[bytes] = [_HEADER_PLACE]
        self._size = HEADER_SIZE
        self._count = 0
        self._first_timestamp = -1
        self._max_timestamp = -1
        self._closed = False
        self._buffer: bytes | None = None
        self.producer_id = -1
        self.producer_epoch = -1
        self.base_sequence = 0

    def append(
        self,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: bytes,
        header_count: int,
    ) -> bool:
        """Add a record; False (and the batch closes) when it is full or closed."""
        if self._closed:
            return False
        count = self._count
        if count == 0:
            self._first_timestamp = timestamp
            self._max_timestamp = timestamp
            delta = _SMALL[0]
        else:
            delta = varint(timestamp - self._first_timestamp)
        offset = varint(count)
        if key is None:
            key_len = NULL
            key = b""
        else:
            key_len = varint(len(key))
        if value is None:
            value_len = NULL
            value = b""
        else:
            value_len = varint(len(value))
        header_len = varint(header_count)
        body = (
            1 + len(delta) + len(offset) + len(key_len) + len(key) + len(value_len)
            + len(value) + len(header_len) + len(headers)
        )  # fmt: skip
        length = varint(body)
        size = self._size + len(length) + body
        if count and size >= self._batch_size:
            self._closed = True
            return False
        # One piece per record: the batch's final join then copies few, large pieces.
        self._parts.append(
            _JOIN((length, _ATTRIBUTES_ZERO, delta, offset, key_len, key, value_len, value,
                   header_len, headers))
        )  # fmt: skip
        self._size = size
        self._count = count + 1
        if timestamp > self._max_timestamp:
            self._max_timestamp = timestamp
        return True

    def extend(self, timestamp: int, bodies: list[bytes], start: int = 0) -> int:
        """Add ``bodies[start:]``, records without headers given by their bodies
        (:func:`record_body`), all at ``timestamp``, while they fit: the same bytes as
        :meth:`append` of each in turn. Returns the index of the first record not added
        (``len(bodies)`` when all were); the batch is then full (closed) or was closed.

        The step 4 changelog's records (a batch writes hundreds), their bodies encoded in C
        (:func:`filterd.table.encode_change_bodies`): one call, and each record's four
        pieces go to the batch as they are, joined once at :meth:`_build`.
        """
        if self._closed:
            return start
        parts = self._parts
        size = self._size
        count = self._count
        batch_size = self._batch_size
        if count == 0 and start < len(bodies):
            self._first_timestamp = timestamp
            self._max_timestamp = timestamp
        # The attributes byte and the timestamp delta: the same for every record here.
        lead = _ATTRIBUTES_ZERO + varint(timestamp - self._first_timestamp)
        i = start
        while i < len(bodies):
            body = bodies[i]
            offset = varint(count)
            record = len(lead) + len(offset) + len(body)
            length = varint(record)
            grown = size + len(length) + record
            if count and grown >= batch_size:
                self._closed = True
                break
            parts.append(length)
            parts.append(lead)
            parts.append(offset)
            parts.append(body)
            size = grown
            count += 1
            i += 1
        self._size = size
        self._count = count
        if i > start and timestamp > self._max_timestamp:
            self._max_timestamp = timestamp
        return i

    def record_count(self) -> int:
        return self._count

    def size(self) -> int:
        """Bytes written so far (the batch header included), before any compression."""
        return self._size if self._buffer is None else len(self._buffer)

    def close(self) -> None:
        """Take no more records (aiokafka closes a batch before a transaction commits)."""
        self._closed = True

    def closed(self) -> bool:
        return self._closed

    def _set_producer_state(
        self, producer_id: int, producer_epoch: int, base_sequence: int
    ) -> None:
        """Idempotence and transactions: aiokafka sets these before the batch is sent."""
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence

    def _build(self) -> bytes:
        """The batch's bytes (built once; aiokafka may ask again on a retry)."""
        self._closed = True
        if self._buffer is None:
            self._buffer = self._encode()
            self._parts = []
        return self._buffer

    def _encode(self) -> bytes:
        parts = self._parts
        attributes = _TRANSACTIONAL if self._transactional else 0
        if self._codec:
            attributes |= self._codec
        count = self._count
        fields = _FIELDS.pack(
            attributes, max(count - 1, 0), self._first_timestamp, self._max_timestamp,
            self.producer_id, self.producer_epoch, self.base_sequence, count,
        )  # fmt: skip
        if self._codec:
            body = fields + _ENCODERS[self._codec](b"".join(parts[1:]))
        else:
            # parts[0] holds the place of the fields: one copy of the records.
            parts[0] = fields
            body = b"".join(parts)
        # batchLength counts from partitionLeaderEpoch on; baseOffset 0 and
        # partitionLeaderEpoch -1 are both set by the broker.
        return _PREFIX.pack(0, len(body) + 9, -1, 2, _crc32c(body)) + body
