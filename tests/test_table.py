"""The compact table (filterd/table.py): the C extension and its pure-Python twin against
one model, a dict, through random operations that make the table grow, collide and shrink."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from filterd import table
from filterd.records import record_body
from filterd.table import Interned, PyPairTable

Factory = Callable[[int, int], object]
IMPLEMENTATIONS: list[tuple[str, type]] = [("python", PyPairTable)]
if table.IMPLEMENTATION == "c":
    from filterd._table import PairTable as CPairTable

    IMPLEMENTATIONS.append(("c", CPairTable))


@pytest.fixture(params=[impl for _, impl in IMPLEMENTATIONS], ids=[n for n, _ in IMPLEMENTATIONS])
def impl(request: pytest.FixtureRequest) -> type:
    return request.param  # type: ignore[no-any-return]


def test_the_build_uses_the_c_table_when_compiled() -> None:
    from filterd import native

    built = {m.name: m.compiled for m in native.extensions()}
    assert (table.IMPLEMENTATION == "c") == built["filterd._table"]


@pytest.mark.parametrize(("words", "word_bytes"), [(1, 4), (3, 8)])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_operations_agree_with_a_dict(
    impl: type, words: int, word_bytes: int, seed: int
) -> None:
    rng = random.Random(seed)
    t = impl(words, word_bytes)
    model: dict[tuple[int, int], list[int]] = {}
    # Few distinct keys, many operations: collisions, growth, deletes and re-inserts.
    numbers = [rng.randrange(1, 1 << 63) for _ in range(300)] + list(range(1, 200))
    senders = [0, 1, 7, (1 << 32) - 1]
    top = (1 << 32) - 1 if word_bytes == 4 else (1 << 62)
    for step in range(20_000):
        key = (rng.choice(numbers), rng.choice(senders))
        word = rng.randrange(words)
        op = rng.random()
        if op < 0.35:
            got = t.add(*key, 1, word)
            row = model.setdefault(key, [0] * words)
            row[word] += 1
            assert got == row[word]
        elif op < 0.5:
            value = rng.randrange(0, top)
            t.put(*key, value, word)
            model.setdefault(key, [0] * words)[word] = value
        elif op < 0.6:
            values = [rng.randrange(0, top) for _ in range(words)]
            t.put_row(*key, values)
            model[key] = values
        elif op < 0.8:
            assert t.discard(*key) == (model.pop(key, None) is not None)
        else:
            expected = model.get(key)
            assert t.row(*key) == (None if expected is None else tuple(expected))
            assert t.has(*key) == (expected is not None)
            assert t.get(*key, word, -5) == (-5 if expected is None else expected[word])
        if step % 2_000 == 0:
            assert len(t) == len(model)
            assert sorted(t.items()) == sorted((n, s, tuple(r)) for (n, s), r in model.items())
    assert sorted(t.items()) == sorted((n, s, tuple(r)) for (n, s), r in model.items())
    t.clear()
    assert len(t) == 0
    assert t.items() == []
    assert t.get(numbers[0], 0, 0, 9) == 9


def test_a_million_keys_then_half_removed(impl: type) -> None:
    t = impl(1, 4)
    for n in range(1, 200_001):
        t.add(n * 7919, n % 3, 1)
    assert len(t) == 200_000
    for n in range(1, 200_001, 2):
        assert t.discard(n * 7919, n % 3)
    assert len(t) == 100_000
    assert all(t.get(n * 7919, n % 3) == (n % 2 == 0) for n in range(1, 200_001))
    assert not t.has(7919, 1)
    assert t.has(2 * 7919, 2)


def test_memory_stays_within_its_load_bounds() -> None:
    if table.IMPLEMENTATION != "c":
        pytest.skip("the pure-Python twin's memory is a dict's")
    t = table.PairTable(1, 4)
    for n in range(1, 100_001):
        t.add(n, 0, 1)
        if n > 1_000 and n % 997 == 0:
            # 16 bytes per slot; load between 0.53 and 0.8.
            assert 16 / 0.8 <= t.nbytes / len(t) <= 16 / 0.53 + 0.01, (n, t.capacity)
    assert t.nbytes == t.capacity * 16


def test_bad_keys_and_values_are_refused(impl: type) -> None:
    t = impl(2, 4)
    with pytest.raises(ValueError, match="number must be"):
        t.add(0, 0, 1)
    with pytest.raises(ValueError, match="number must be"):
        t.get(-5, 0)
    with pytest.raises(OverflowError):
        t.get(1 << 63, 0)
    with pytest.raises(OverflowError):
        t.get(5, 1 << 32)
    with pytest.raises(OverflowError):
        t.get(5, -1)
    with pytest.raises(TypeError):
        t.get("5", 0)
    with pytest.raises(IndexError):
        t.get(5, 0, 2)
    with pytest.raises(OverflowError):
        t.put(5, 0, -1)
    with pytest.raises(OverflowError):
        t.put(5, 0, 1 << 32)
    t.put(5, 0, (1 << 32) - 1, 1)
    with pytest.raises(OverflowError):
        t.add(5, 0, 1, 1)
    with pytest.raises(OverflowError):
        t.add(6, 0, -1)
    assert not t.has(6, 0), "a refused add inserts nothing"
    assert t.row(5, 0) == (0, (1 << 32) - 1), "a refused add changes nothing"
    with pytest.raises(ValueError, match="1 values for a table of 2"):
        t.put_row(5, 0, [1])
    with pytest.raises(ValueError, match="words must be"):
        impl(0, 4)
    with pytest.raises(ValueError, match="word_bytes must be"):
        impl(1, 2)
    wide = impl(1, 8)
    wide.put(9, 0, -(1 << 63))
    assert wide.get(9, 0) == -(1 << 63)
    with pytest.raises(OverflowError):
        wide.add(9, 0, -1)


def test_interned_names_keep_their_ids() -> None:
    names = Interned(first=1)
    assert [names.id("SHOP"), names.id("BANK"), names.id("SHOP")] == [1, 2, 1]
    assert names.name(2) == "BANK"
    assert len(names) == 2


@pytest.mark.parametrize("count", [1, 7, 1_000_000])
def test_a_scan_sees_every_key_once(impl: type, count: int) -> None:
    t = impl(2, 8)
    for n in range(1, 3_001):
        t.put_row(n * 31, n % 5, (n, -n))
    seen: list[tuple[int, int, tuple[int, ...]]] = []
    cursor = 0
    while True:
        cursor, found = t.scan(cursor, count)
        seen += found
        if cursor < 0:
            break
    assert sorted(seen) == sorted(t.items())
    assert len(seen) == 3_000


def test_a_scan_with_keys_added_sees_every_key_it_started_with(impl: type) -> None:
    t = impl(1, 4)
    for n in range(1, 5_001):
        t.put(n, 0, n)
    resizes = t.resizes
    seen: set[int] = set()
    cursor, step = 0, 0
    while cursor >= 0:
        cursor, found = t.scan(cursor, 257)
        seen |= {number for number, _, _ in found}
        for n in range(10_000 + step * 5, 10_000 + (step + 1) * 5):
            t.put(n, 0, 1)  # a few keys added between pieces: no growth
            t.put(n % 5_000 + 1, 0, 7)  # values changed
        step += 1
    assert t.resizes == resizes, "the test must not grow the table"
    assert set(range(1, 5_001)) <= seen
    t.put(99_999, 0, 1)
    grown = t.resizes
    for n in range(100_000, 110_000):
        t.put(n, 0, 1)
    assert t.resizes > grown or impl is PyPairTable


ENCODERS: list[tuple[str, Callable[..., None]]] = [
    ("python", table.py_encode_changes),
    ("python-bodies", table.py_encode_change_bodies),
]
if table.IMPLEMENTATION == "c":
    from filterd._table import encode_change_bodies as c_encode_change_bodies
    from filterd._table import encode_changes as c_encode_changes

    ENCODERS += [("c", c_encode_changes), ("c-bodies", c_encode_change_bodies)]
BODIES = (table.py_encode_change_bodies, table.encode_change_bodies)


def _encode(
    encode: Callable[..., None], numbers: list[int], senders: list[int], counts: list[int],
    start: int, head: bytes, sender_json: list[bytes], tail: bytes, small: list[bytes],
    out: list[object],
) -> None:  # fmt: skip
    """Call either encoder: the bodies' one takes no ``small``."""
    if encode in BODIES:
        encode(numbers, senders, counts, start, head, sender_json, tail, out)
    else:
        encode(numbers, senders, counts, start, head, sender_json, tail, small, out)


def encode_changes_model(
    numbers: list[int], senders: list[int], counts: list[int], start: int, head: bytes,
    sender_json: list[bytes], tail: bytes,
) -> list[tuple[bytes, bytes]]:  # fmt: skip
    """The changelog records as limits.py encoded them one by one before the bulk encoder:
    latest first, a key's first entry met (its latest) wins, a template per sender."""
    out = []
    seen = set()
    for i in range(len(numbers) - 1, start - 1, -1):
        if (numbers[i], senders[i]) in seen:
            continue
        seen.add((numbers[i], senders[i]))
        template = head.replace(b"%", b"%%") + sender_json[senders[i]].replace(b"%", b"%%")
        out.append(((template + b"%d" + tail) % numbers[i], b"%d" % counts[i]))
    return out


@pytest.mark.parametrize("encode", [e for _, e in ENCODERS], ids=[n for n, _ in ENCODERS])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_encode_changes_agrees_with_the_per_record_encoder(
    encode: Callable[..., None], seed: int
) -> None:
    rng = random.Random(seed)
    small = [b"%d" % n for n in range(256)]
    sender_json = [b'"",', b'"shop",', b'"100%\\"off",', b'"\xe5\xba\x97",']
    head, tail = b'["pair/day/marketing",', b",20403]"
    for _ in range(300):
        size = rng.randrange(0, 60)
        # Few keys, many repeats: a key's later entries must win; numbers up to 2**63-1.
        keys = [(rng.choice([1, 9, 8613800000000, (1 << 63) - 1, rng.randrange(1, 1 << 63)]),
                 rng.randrange(len(sender_json))) for _ in range(rng.randrange(1, 8))]  # fmt: skip
        entries = [rng.choice(keys) for _ in range(size)]
        numbers = [n for n, _ in entries]
        senders = [s for _, s in entries]
        counts = [rng.choice([1, 2, 255, 256, 70_000, (1 << 32) - 1]) for _ in entries]
        start = rng.randrange(0, size + 2)
        out: list[object] = [b"before"]
        _encode(encode, numbers, senders, counts, start, head, sender_json, tail, small, out)
        want = encode_changes_model(numbers, senders, counts, min(start, size), head,
                                    sender_json, tail)  # fmt: skip
        if encode in BODIES:  # each record as RecordBatch.extend takes it
            assert out == [b"before", *[record_body(k, v) for k, v in want]]
        else:
            assert out == [b"before", *want]


@pytest.mark.parametrize("encode", [e for _, e in ENCODERS], ids=[n for n, _ in ENCODERS])
def test_encode_changes_refuses_what_it_cannot_encode(encode: Callable[..., None]) -> None:
    out: list[object] = []
    with pytest.raises(IndexError):  # a sender id without its JSON
        _encode(encode, [5], [3], [1], 0, b"[", [b'"",'], b"]", [], out)
    assert out == []
    if encode not in (table.py_encode_changes, table.py_encode_change_bodies):
        # the C ones check their arguments
        with pytest.raises(ValueError, match="differ in length"):
            _encode(encode, [5, 6], [0], [1], 0, b"[", [b'"",'], b"]", [], out)
        with pytest.raises(TypeError):
            _encode(encode, (5,), [0], [1], 0, b"[", [b'"",'], b"]", [], out)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"takes (8 to 8|9 to 9) arguments"):
            encode([5], [0], [1], 0, b"[", [b'"",'], b"]", [], out, out)
