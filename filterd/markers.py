"""Marketing markers: is an exempt-category message really a promotion?

docs/contract.md "Policy and reason codes", step 2: a message whose category is exempt
(a verification code, a transaction notice) but whose text carries a marketing
marker (``退订``, ``回T``, ``领券``, ``unsubscribe`` ...) is decided as marketing.
A marker matches when it is a substring of the text, both NFKC-normalized and
case-folded.

The text is searched once for every marker together, by one regular expression
compiled from the trie of the folded markers: the engine (C) skips to the
positions holding a marker's first character (its search prefix is that
character class) and from there follows the trie, one character at a time, so
the cost is one pass over the text rather than one scan per marker, as with an
Aho–Corasick automaton. (pyahocorasick's automaton was measured at about twice
the time on SMS-sized texts, for lack of a "first match only" call.) Only
exempt-category messages with a text get here (:mod:`filterd.router`), so
marketing traffic pays nothing.

Folding is the larger cost: ``unicodedata.normalize("NFKC", ...)`` takes several
microseconds for a Chinese text that holds one full-width comma, and most do.
So a raw text is first scanned (one C-level regular-expression pass over a
character class) for any character that can become a marker's *anchor* once
folded: per marker its rarest character (an English letter-frequency
heuristic; CJK characters count as rare). A text without one cannot carry that
marker, and most verification codes and notices stop there. The class is exact:
it holds every character whose fold (or compatibility decomposition, folded)
contains an anchor, found by folding every code point once per process
(:func:`_fold_table`, ~0.5 s, only when markers are configured). An anchor that
is itself a composed character (which combining marks could produce) turns the
scan off, and every text is folded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from filterd.config import DEFAULT_MARKETING_MARKERS

__all__ = ["DEFAULT_MARKERS", "MarkerMatcher", "fold", "matcher"]

#: docs/contract.md's default list (``[policy] marketing_markers``).
DEFAULT_MARKERS: tuple[str, ...] = DEFAULT_MARKETING_MARKERS


def fold(text: str) -> str:
    """``text`` NFKC-normalized, then case-folded: the form markers are compared in."""
    if text.isascii():
        return text.lower()  # ASCII is NFKC already, and its case folding is lower()
    return unicodedata.normalize("NFKC", text).casefold()


@lru_cache(maxsize=1)
def _fold_table() -> dict[str, str]:
    """Each character that folding changes -> its fold and its folded NFKD, joined."""
    table: dict[str, str] = {}
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue  # surrogates are no characters
        c = chr(cp)
        folded = unicodedata.normalize("NFKC", c).casefold()
        decomposed = unicodedata.normalize("NFKD", c).casefold()
        if folded != c or decomposed != c:
            table[c] = folded + decomposed
    return table


#: ASCII letters from the most to the least frequent in English text.
_LETTERS_BY_FREQUENCY = "etaoinshrdlcumwfgypbvkjxqz"


def _rarity(ch: str) -> int:
    """How rarely ``ch`` shows in message text: higher is rarer (a heuristic)."""
    if ch in _LETTERS_BY_FREQUENCY:
        return 10 + _LETTERS_BY_FREQUENCY.index(ch)
    if ch.isascii():
        return 0  # digits, space, punctuation: everywhere
    return 30  # CJK and the like: a marker's own characters are rare in other text


def _anchor(marker: str) -> str:
    """The character of ``marker`` the prefilter looks for: its rarest, earliest first."""
    return max(marker, key=_rarity)


def _anchor_pattern(markers: Iterable[str]) -> re.Pattern[str] | None:
    """A class of every raw character that can fold into one marker's anchor character.

    A text that carries a marker holds its anchor once folded, so some raw
    character of it is in the class. None when an anchor is a composed
    character: combining marks could produce it from characters the class
    would not hold.
    """
    anchors = {_anchor(m) for m in markers}
    if any(unicodedata.normalize("NFD", f) != f for f in anchors):
        return None
    chars = set(anchors)
    chars.update(c for c, folded in _fold_table().items() if not anchors.isdisjoint(folded))
    # Only the Basic Multilingual Plane in the class, which the regular expression
    # engine then tests with one table lookup (astral characters would make it a
    # list walked per character); any astral character sends the text to folding.
    bmp = "".join(re.escape(c) for c in sorted(chars) if ord(c) <= 0xFFFF)
    return re.compile(f"[{bmp}\\U00010000-\\U0010FFFF]")


_Trie = dict[str, "_Trie"]


def _trie_pattern(markers: Iterable[str]) -> str:
    """A regular expression matching any of ``markers``, factored as their trie.

    A marker that extends another is left out: finding the shorter one is enough.
    """
    trie: _Trie = {}
    for marker in sorted(set(markers), key=len):
        node = trie
        for ch in marker:
            if "" in node:
                break  # a shorter marker is a prefix of this one
            node = node.setdefault(ch, {})
        else:
            node.clear()
            node[""] = {}
    return _emit(trie)


def _emit(node: _Trie) -> str:
    if "" in node:
        return ""
    branches = [re.escape(ch) + _emit(child) for ch, child in sorted(node.items())]
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


@lru_cache(maxsize=8)
def matcher(markers: tuple[str, ...]) -> MarkerMatcher:
    """The matcher of ``markers``, built once per process (a Decider per snapshot reuses it)."""
    return MarkerMatcher(markers)


class MarkerMatcher:
    """Finds whether a text carries any of a set of markers, in one pass."""

    __slots__ = ("_anchors", "_pattern", "markers")

    def __init__(self, markers: Iterable[str]) -> None:
        #: The markers as given (config order, without duplicates).
        self.markers: tuple[str, ...] = tuple(dict.fromkeys(markers))
        self._pattern: re.Pattern[str] | None = None
        self._anchors: re.Pattern[str] | None = None
        folded = {fold(m) for m in self.markers}
        folded.discard("")
        if folded:
            self._anchors = _anchor_pattern(folded)
            self._pattern = re.compile(_trie_pattern(folded))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def search(self, text: str) -> bool:
        """Whether ``text`` carries a marker (after NFKC and case folding)."""
        pattern = self._pattern
        if pattern is None:
            return False
        anchors = self._anchors
        if anchors is not None and anchors.search(text) is None:
            return False
        if text.isascii():
            # ASCII is NFKC already, and lower() is its case folding.
            return pattern.search(text.lower()) is not None
        return pattern.search(unicodedata.normalize("NFKC", text).casefold()) is not None
