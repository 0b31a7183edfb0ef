"""A compact table of per-recipient state: ``(number, sender) -> words``.

filterd keeps millions of small records keyed by a recipient: the step 4 counters
(:mod:`filterd.limits`) and the pending live changes (:mod:`filterd.changes.overlay`).
A dict keyed by tuples costs 150 to 1,000 bytes per record; :class:`PairTable` costs
8 + 4 + ``words * word_bytes`` bytes per slot, with the load kept between 0.53 and 0.8,
so 20-30 bytes per key for one 32-bit counter.

Keys are a recipient ``number`` (1 .. 2**63-1; the digits as an int, never 0) and a
``sender`` id (0 .. 2**32-1; callers intern sender names to ids, :class:`Interned`).
Values are ``words`` fixed-width words per key: unsigned 32-bit (``word_bytes=4``) or
signed 64-bit (``word_bytes=8``); a value that does not fit raises ``OverflowError``.

``scan(cursor, count)`` walks the table a piece at a time (from cursor 0 until it returns
-1), so that a walk over millions of keys can be spread between batches. A walk sees every
key once when the table does not change under it. Between pieces, keys may be inserted and
values changed (a new key may or may not be seen); a removal (it shifts keys back) or a
growth (``resizes`` goes up: it re-places every key) may make the walk miss keys, so a
walk that must see every key removes nothing until it ends and starts again after a growth.

The table is the C extension ``filterd._table`` (``filterd/_table.c``, built with the
compiled modules by ``setup.py``: open addressing, linear probing, multiply-shift home
slots, backward-shift deletion). Without it (``FILTERD__PURE_PYTHON=1``, no C compiler)
the pure-Python :class:`PyPairTable` below has the same behaviour, with a dict's memory;
``tests/test_table.py`` runs both against one model. :data:`IMPLEMENTATION` says which.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Final

__all__ = [
    "IMPLEMENTATION",
    "Interned",
    "PairTable",
    "PyPairTable",
    "encode_change_bodies",
    "encode_changes",
    "py_encode_change_bodies",
    "py_encode_changes",
]

_MAX_NUMBER: Final = (1 << 63) - 1
_MAX_SENDER: Final = (1 << 32) - 1
_MAX_WORDS: Final = 8


class PyPairTable:
    """The pure-Python twin of ``filterd._table.PairTable`` (see the module doc)."""

    __slots__ = ("_rows", "_scan", "word_bytes", "words")

    def __init__(self, words: int = 1, word_bytes: int = 8) -> None:
        if not 1 <= words <= _MAX_WORDS:
            raise ValueError(f"words must be 1 .. {_MAX_WORDS}")
        if word_bytes not in (4, 8):
            raise ValueError("word_bytes must be 4 or 8")
        self.words = words
        self.word_bytes = word_bytes
        self._rows: dict[int, list[int]] = {}
        # The keys of the walk under way (scan): a dict has no slots to walk.
        self._scan: list[int] = []

    @staticmethod
    def _key(number: int, sender: int) -> int:
        if not isinstance(number, int):
            raise TypeError(f"number must be an int, not {type(number).__name__}")
        if not isinstance(sender, int):
            raise TypeError(f"sender must be an int, not {type(sender).__name__}")
        if number > _MAX_NUMBER:
            raise OverflowError("number must be 1 .. 2**63-1")
        if number <= 0:
            raise ValueError("number must be 1 .. 2**63-1")
        if not 0 <= sender <= _MAX_SENDER:
            raise OverflowError("sender must be 0 .. 2**32-1")
        return (number << 32) | sender

    def _word(self, word: int) -> int:
        if not isinstance(word, int):
            raise TypeError(f"word must be an int, not {type(word).__name__}")
        if not 0 <= word < self.words:
            raise IndexError(f"word {word} out of range (the table has {self.words})")
        return word

    def _value(self, value: int) -> int:
        if not isinstance(value, int):
            raise TypeError(f"value must be an int, not {type(value).__name__}")
        if self.word_bytes == 4:
            if not 0 <= value <= _MAX_SENDER:
                raise OverflowError("value must be 0 .. 2**32-1 (4-byte words)")
        elif not -(1 << 63) <= value <= _MAX_NUMBER:
            raise OverflowError("value does not fit a signed 64-bit word")
        return value

    def get(self, number: int, sender: int, word: int = 0, default: int = 0) -> int:
        key = self._key(number, sender)
        word = self._word(word)
        row = self._rows.get(key)
        return default if row is None else row[word]

    def add(self, number: int, sender: int, delta: int, word: int = 0) -> int:
        key = self._key(number, sender)
        if not isinstance(delta, int):
            raise TypeError("delta must be an int")
        if not -(1 << 63) <= delta <= _MAX_NUMBER:
            raise OverflowError("delta does not fit a signed 64-bit int")
        word = self._word(word)
        row = self._rows.get(key)
        total = (0 if row is None else row[word]) + delta
        try:
            self._value(total)
        except OverflowError:
            raise OverflowError("the sum does not fit the word") from None
        if row is None:
            row = self._rows[key] = [0] * self.words
        row[word] = total
        return total

    def put(self, number: int, sender: int, value: int, word: int = 0) -> None:
        key = self._key(number, sender)
        value = self._value(value)
        word = self._word(word)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0] * self.words
        row[word] = value

    def row(self, number: int, sender: int) -> tuple[int, ...] | None:
        row = self._rows.get(self._key(number, sender))
        return None if row is None else tuple(row)

    def put_row(self, number: int, sender: int, values: Sequence[int]) -> None:
        key = self._key(number, sender)
        values = list(values)
        if len(values) != self.words:
            raise ValueError(f"{len(values)} values for a table of {self.words} words")
        self._rows[key] = [self._value(v) for v in values]

    def has(self, number: int, sender: int) -> bool:
        return self._key(number, sender) in self._rows

    def discard(self, number: int, sender: int) -> bool:
        return self._rows.pop(self._key(number, sender), None) is not None

    def items(self) -> list[tuple[int, int, tuple[int, ...]]]:
        return [(k >> 32, k & _MAX_SENDER, tuple(row)) for k, row in self._rows.items()]

    def scan(self, cursor: int, count: int) -> tuple[int, list[tuple[int, int, tuple[int, ...]]]]:
        if cursor < 0 or count < 1:
            raise ValueError("scan needs a cursor >= 0 and a count >= 1")
        if cursor == 0:
            self._scan = list(self._rows)
        keys = self._scan[cursor : cursor + count]
        end = cursor + count
        found = []
        for k in keys:
            row = self._rows.get(k)
            if row is not None:
                found.append((k >> 32, k & _MAX_SENDER, tuple(row)))
        if end >= len(self._scan):
            self._scan = []
            return -1, found
        return end, found

    def clear(self) -> None:
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def capacity(self) -> int:
        return len(self._rows)

    @property
    def resizes(self) -> int:
        """Always 0: a walk here goes over the keys listed when it started."""
        return 0

    @property
    def nbytes(self) -> int:
        """An estimate: the dict, its keys and rows (the C table's figure is exact)."""
        rows = self._rows
        per_row = sys.getsizeof([0] * self.words) + 32 + 32 * self.words
        return sys.getsizeof(rows) + len(rows) * per_row


def py_encode_changes(
    numbers: list[int], senders: list[int], counts: list[int], start: int, head: bytes,
    sender_json: list[bytes], tail: bytes, small: list[bytes],
    out: list[tuple[bytes, bytes | None]],
) -> None:  # fmt: skip
    """The pure-Python twin of ``filterd._table.encode_changes``: the changelog records of
    the entries ``start..`` of a counter group's parallel change lists (offset order).

    Latest first, each key ``(number, sender)`` once (counts only grow: its latest entry
    has its value), appended to ``out`` as ``(key, value)``: the key is ``head``, then
    ``sender_json[sender]``, the number's digits and ``tail``; the value is the count's
    digits (``small[count]`` when it is below ``len(small)``).
    """
    seen: set[tuple[int, int]] = set()
    for i in range(len(numbers) - 1, max(start, 0) - 1, -1):
        number = numbers[i]
        sender = senders[i]
        if (number, sender) in seen:
            continue
        seen.add((number, sender))
        count = counts[i]
        out.append(
            (b"%s%s%d%s" % (head, sender_json[sender], number, tail),
             small[count] if 0 <= count < len(small) else b"%d" % count)
        )  # fmt: skip


def py_encode_change_bodies(
    numbers: list[int], senders: list[int], counts: list[int], start: int, head: bytes,
    sender_json: list[bytes], tail: bytes, out: list[bytes],
) -> None:  # fmt: skip
    """The pure-Python twin of ``filterd._table.encode_change_bodies``: the records of
    :func:`py_encode_changes`, each as the body :meth:`filterd.records.RecordBatch.extend`
    takes (:func:`filterd.records.record_body`)."""
    from filterd.records import record_body

    pairs: list[tuple[bytes, bytes | None]] = []
    py_encode_changes(numbers, senders, counts, start, head, sender_json, tail, [], pairs)
    out.extend(record_body(key, value) for key, value in pairs)


try:
    from filterd._table import PairTable, encode_change_bodies, encode_changes
except ImportError:  # not compiled (FILTERD__PURE_PYTHON=1): the same behaviour, bigger
    PairTable = PyPairTable  # type: ignore[assignment,misc]
    encode_changes = py_encode_changes
    encode_change_bodies = py_encode_change_bodies
    IMPLEMENTATION: str = "python"
else:
    IMPLEMENTATION = "c"


class Interned:
    """Sender names as the small ints a :class:`PairTable` key holds, and back.

    Ids are handed out in first-seen order from ``first`` and never reused, so an id stays
    valid for the life of the object (the set of senders is small: thousands, not millions).
    """

    __slots__ = ("ids", "names")

    def __init__(self, first: int = 1) -> None:
        self.ids: dict[str, int] = {}
        #: ``names[id - first]`` is the name of ``id``; ``first`` ids are reserved.
        self.names: list[str] = [""] * first

    def id(self, name: str) -> int:
        """The id of ``name``, given one when new."""
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = len(self.names)
            self.names.append(name)
        return found

    def name(self, id_: int) -> str:
        return self.names[id_]

    def __len__(self) -> int:
        return len(self.ids)
