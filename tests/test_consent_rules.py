"""Step 2 (honest category) and step 3 rules 1-4 of the decision, on real snapshot stores."""

from __future__ import annotations

import unicodedata
from array import array
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from filterd import prefilter
from filterd.config import load_config
from filterd.errors import ConfigError
from filterd.markers import DEFAULT_MARKERS, MarkerMatcher, fold
from filterd.router import (
    CONSENT,
    CONSENT_EXPIRED,
    CONSENT_NOT_EXPLICIT,
    EXEMPT_CATEGORY,
    NO_CONSENT,
    OPTED_OUT,
    RECIPIENT_DND,
    UNKNOWN_SENDER,
    Decider,
    Policy,
)
from filterd.snapshot.store import (
    FOREVER,
    REFUSED_ONLY,
    ConsentSnapshot,
    ConsentTerms,
    Counts,
    SenderConsent,
)

SHOP = "106900001234"
T = 1_790_000_000_000  # the message time of most cases (epoch ms)
PLAIN, EXPIRING, REFUSED, BOTH, CAPPED, DND_ONLY, GLOBAL = (8613800000000 + i for i in range(1, 8))


def terms(entries: dict[int, tuple[int, int]]) -> ConsentTerms:
    numbers = sorted(entries)
    return ConsentTerms.of(
        array("Q", numbers),
        array("q", [entries[n][0] for n in numbers]),
        array("I", [entries[n][1] for n in numbers]),
    )


def snapshot(global_optouts: frozenset[int] = frozenset({GLOBAL})) -> ConsentSnapshot:
    shop = SenderConsent.of(
        BitMap64([PLAIN, CAPPED, GLOBAL]),
        BitMap64(),
        terms(
            {
                EXPIRING: (T + 1, 0),
                REFUSED: (REFUSED_ONLY, 0),
                BOTH: (T - 1, 3),
                CAPPED: (FOREVER, 5),
            }
        ),
    )
    only_refused = SenderConsent.of(BitMap64(), BitMap64(), terms({PLAIN: (REFUSED_ONLY, 0)}))
    glob = BitMap64(global_optouts)
    return ConsentSnapshot(
        version="v",
        created_at=datetime.now(UTC),
        senders={SHOP: shop, "REFUSER": only_refused},
        dnd_numbers=BitMap64([DND_ONLY, REFUSED]),
        counts=Counts(2, 6, 0, 2, len(glob), 5),
        bytes=0,
        manifest={},
        global_optouts=glob,
        global_optout_filter=prefilter.build(glob),
    )


def ev(number: int, sender: str = SHOP, **extra: object) -> bytes:
    return orjson.dumps({"id": "m", "sender": sender, "recipient": f"+{number}", **extra})


@pytest.mark.parametrize(
    ("number", "sender", "at", "expected"),
    [
        (PLAIN, SHOP, T, CONSENT),
        (CAPPED, SHOP, T, CONSENT),
        (EXPIRING, SHOP, T, CONSENT),  # expires 1 ms after the message
        (EXPIRING, SHOP, T + 1, CONSENT_EXPIRED),  # valid while expires_at is later
        (BOTH, SHOP, T, CONSENT_EXPIRED),  # an expired accepted consent beats a refused one
        (REFUSED, SHOP, T, CONSENT_NOT_EXPLICIT),  # rule 4 before do-not-disturb
        (PLAIN, "REFUSER", T, CONSENT_NOT_EXPLICIT),  # known by refused consents alone
        (GLOBAL, SHOP, T, OPTED_OUT),  # `*` wins over this sender's consent
        (GLOBAL, "NOBODY", T, OPTED_OUT),  # ... and over an unknown sender
        (PLAIN, "NOBODY", T, UNKNOWN_SENDER),
        (DND_ONLY, SHOP, T, RECIPIENT_DND),
        (8613800009999, SHOP, T, NO_CONSENT),
    ],
)
def test_consent_rules_in_order(number: int, sender: str, at: int, expected: object) -> None:
    decider = Decider(snapshot(), Policy())
    assert decider.decide(ev(number, sender), at) == expected
    assert decider.declared_category is None


def test_event_time_takes_ts_and_the_stream_takes_the_record_time() -> None:
    value = ev(EXPIRING, ts=T + 5)
    assert Decider(snapshot(), Policy()).decide(value, T) == CONSENT  # stream: record time
    replay = Decider(snapshot(), Policy(), event_time=True)
    assert replay.decide(value, T) == CONSENT_EXPIRED  # replay: the event's ts
    assert replay.decide(ev(EXPIRING), T) == CONSENT  # no ts: the --at time


def test_default_time_is_now() -> None:
    far = snapshot()
    assert Decider(far, Policy()).decide(ev(EXPIRING)) == CONSENT_EXPIRED  # T + 1 is 2026-09


def test_disguised_promotion_is_decided_as_marketing_with_its_declared_category() -> None:
    decider = Decider(snapshot(), Policy())
    otp = "【京东】验证码123456，5分钟内有效，请勿泄露。"
    promo = "【京东】验证码123456，领券满减！回Ｔ退订"  # full-width Ｔ: NFKC folds it
    assert decider.decide(ev(PLAIN, category="verification", text=otp), T) == EXEMPT_CATEGORY
    assert decider.declared_category is None
    assert decider.decide(ev(8613800009999, category="verification", text=otp), T) == (
        EXEMPT_CATEGORY
    )
    assert decider.decide(ev(8613800009999, category="verification", text=promo), T) == (NO_CONSENT)
    assert decider.declared_category == "verification"
    assert decider.decide(ev(PLAIN, category="transactional", text=promo), T) == CONSENT
    assert decider.declared_category == "transactional"
    assert decider.decide(ev(PLAIN, category="marketing", text=promo), T) == CONSENT
    assert decider.declared_category is None  # only exempt categories are overruled
    assert decider.decide(ev(PLAIN, category="verification"), T) == EXEMPT_CATEGORY  # no text
    none = Decider(snapshot(), Policy(marketing_markers=()))
    assert none.decide(ev(8613800009999, category="verification", text=promo), T) == (
        EXEMPT_CATEGORY
    )


def test_markers_config_is_validated_and_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[policy]\nmarketing_markers = ["ok", " "]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy\.marketing_markers: a marker must not be empty"):
        load_config(path, {})
    path.write_text('[policy]\nmarketing_markers = "SALE"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"policy\.marketing_markers: expected an array"):
        load_config(path, {})
    config = load_config(None, {"FILTERD_POLICY_MARKETING_MARKERS": "SALE,限时"})
    policy = config.policy
    assert policy.marketing_markers == ("SALE", "限时")
    decider = Decider(snapshot(), policy)
    promo = ev(8613800009999, category="verification", text="big sale")
    assert decider.decide(promo, T) == NO_CONSENT


# Texts drawn from characters that fold in interesting ways: full-width forms,
# compatibility characters, combining marks, case pairs, CJK of the markers.
_ALPHABET = st.sampled_from([
    *"退订回TtDd拒收请复unsubcrieplySTOP优惠折扣满减秒杀促销特价包邮领券红 ,.!",
    *"ＴｔＤ，！\u0301\u0308ßﬁ℡㊕ǖÜİſ𝐔",
])  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(_ALPHABET, max_size=20),
    markers=st.lists(st.text(_ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4),
)
def test_marker_search_is_nfkc_casefold_substring(text: str, markers: list[str]) -> None:
    def plain(s: str) -> str:
        return unicodedata.normalize("NFKC", s).casefold()

    expected = any(plain(m) and plain(m) in plain(text) for m in markers)
    assert MarkerMatcher(markers).search(text) == expected
    assert fold(text) == plain(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=30))
def test_default_markers_any_text(text: str) -> None:
    folded = unicodedata.normalize("NFKC", text).casefold()
    expected = any(unicodedata.normalize("NFKC", m).casefold() in folded for m in DEFAULT_MARKERS)
    assert MarkerMatcher(DEFAULT_MARKERS).search(text) == expected


def test_terms_in_whole_seconds_keep_4_bytes_and_the_same_decisions() -> None:
    # Validities in whole seconds are held in 4-byte seconds, the rest in 8-byte ms: the
    # boundary (valid while expires_at is later than the message's time) is the same.
    second = 1_790_000_000
    for shift, itemsize in ((0, 4), (1, 8)):
        until = (second * 1000) + shift
        t = terms({EXPIRING: (until, 0), REFUSED: (REFUSED_ONLY, 0), CAPPED: (FOREVER, 7)})
        assert t.until.itemsize == itemsize
        assert len(t.numbers) == 2  # the capped plain pair is only in the caps table
        assert t.max_per_day(CAPPED, until) == 7
        assert t.max_per_day(EXPIRING, until) == 0
        entry = SenderConsent.of(BitMap64([CAPPED]), BitMap64(), t)
        snap = ConsentSnapshot("v", datetime.now(UTC), {SHOP: entry}, BitMap64(),
                               Counts(1, 3, 0, 0, 0, 3), 0, {})  # fmt: skip
        decider = Decider(snap, Policy())
        assert decider.decide(ev(EXPIRING), until - 1) == CONSENT
        assert decider.decide(ev(EXPIRING), until) == CONSENT_EXPIRED
        assert decider.decide(ev(REFUSED), until) == CONSENT_NOT_EXPLICIT
        assert decider.decide(ev(CAPPED), until) == CONSENT
        assert snap.consent_until(SHOP, EXPIRING) == until
        assert snap.consent_until(SHOP, REFUSED) == REFUSED_ONLY
        assert snap.max_per_day(SHOP, CAPPED, until) == 7
