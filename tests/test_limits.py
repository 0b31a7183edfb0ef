"""Step 4 and monitor mode, pure (filterd.limits), and the limits' config refusals."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from pyroaring import FrozenBitMap64

from filterd.config import CapRule, PolicyConfig, load_config
from filterd.errors import ConfigError
from filterd.limits import LimitRules, PartitionLimits, usable_time
from filterd.router import (
    CONSENT,
    EXEMPT_CATEGORY,
    FREQUENCY_CAP,
    MONITORED,
    NO_CONSENT,
    QUIET_HOURS,
    Decider,
)
from filterd.snapshot.store import FOREVER, ConsentTerms, SenderConsent

# 2026-11-11T00:00:00Z = 08:00 in Shanghai.
MIDNIGHT_UTC = 1_794_355_200_000
HOUR = 3_600_000
CN = "+8613800000001"


@dataclass(frozen=True)
class View:
    """A snapshot view of one sender "S" (filterd.router.SnapshotView)."""

    senders: dict[str, SenderConsent]
    version: str = "v1"
    dnd_numbers: frozenset[int] = frozenset()


NUMBERS = [8613800000001, 919800000001, 12125550001]


def snapshot(terms: ConsentTerms | None = None) -> View:
    entry = SenderConsent.of(FrozenBitMap64(NUMBERS), FrozenBitMap64(), terms)
    return View({"S": entry})


def event(recipient: str = CN, category: str = "marketing", sender: str = "S") -> bytes:
    return orjson.dumps({"id": "1", "sender": sender, "recipient": recipient, "category": category})


def decide(limits: PartitionLimits, decider: Decider, value: bytes, at_ms: int) -> str:
    return limits.apply(decider, decider.decide(value, at_ms), at_ms).reason


def setup(**policy: object) -> tuple[PartitionLimits, Decider]:
    p = PolicyConfig(**policy)  # type: ignore[arg-type]
    return PartitionLimits(LimitRules(p)), Decider(snapshot(), p)


@pytest.mark.parametrize(
    ("quiet", "local_minute", "inside"),
    [
        ("21:00-08:00", 20 * 60 + 59, False),
        ("21:00-08:00", 21 * 60, True),
        ("21:00-08:00", 0, True),
        ("21:00-08:00", 7 * 60 + 59, True),
        ("21:00-08:00", 8 * 60, False),
        ("12:00-13:30", 13 * 60 + 29, True),
        ("12:00-13:30", 13 * 60 + 30, False),
        ("12:00-13:30", 11 * 60 + 59, False),
    ],
)
def test_quiet_hours_start_inclusive_end_exclusive(
    quiet: str, local_minute: int, inside: bool
) -> None:
    limits, decider = setup(quiet_hours=quiet)
    # Shanghai is UTC+8: local minute m is UTC m - 480.
    at = MIDNIGHT_UTC - 8 * HOUR + local_minute * 60_000
    assert decide(limits, decider, event(), at) == ("quiet-hours" if inside else "consent")
    # Exempt categories have no quiet hours.
    assert decide(limits, decider, event(category="verification"), at) == "exempt-category"


def test_the_longest_prefix_picks_the_zone() -> None:
    limits, decider = setup(
        quiet_hours="21:00-08:00",
        timezones={"9": "Asia/Tokyo", "91": "Asia/Kolkata", "1": "America/New_York"},
    )
    at = MIDNIGHT_UTC + 14 * HOUR  # 22:00 Shanghai, 19:30 Kolkata, 09:00 New York
    assert decide(limits, decider, event(CN), at) == "quiet-hours"
    assert decide(limits, decider, event("+919800000001"), at) == "consent"
    assert decide(limits, decider, event("+12125550001"), at) == "consent"
    at = MIDNIGHT_UTC + 16 * HOUR  # 21:30 Kolkata
    assert decide(limits, decider, event("+919800000001"), at) == "quiet-hours"


def test_daylight_saving_moves_the_local_time() -> None:
    rules = LimitRules(PolicyConfig(timezone="America/New_York"))
    summer = 1_783_296_000_000  # 2026-07-06T00:00Z
    assert rules.offset(0, summer) == -4 * HOUR
    assert rules.offset(0, MIDNIGHT_UTC) == -5 * HOUR
    # 2026-11-01 06:00Z is the transition: one ms before it, still summer time.
    change = 1_793_512_800_000
    assert rules.offset(0, change - 1) == -4 * HOUR
    assert rules.offset(0, change) == -5 * HOUR
    assert rules.closing == [-5 * HOUR]


def test_a_cap_blocks_message_max_plus_one_in_its_local_window() -> None:
    cap = CapRule(("marketing",), "pair", "day", 2)
    limits, decider = setup(caps=(cap,))
    at = MIDNIGHT_UTC + HOUR  # 09:00 local
    got = [decide(limits, decider, event(), at + i) for i in range(3)]
    assert got == ["consent", "consent", "frequency-cap"]
    # Another category is not counted; the next local day (16:00Z) starts again.
    assert decide(limits, decider, event(category="verification"), at) == "exempt-category"
    assert decide(limits, decider, event(), MIDNIGHT_UTC + 15 * HOUR) == "frequency-cap"
    assert decide(limits, decider, event(), MIDNIGHT_UTC + 16 * HOUR) == "consent"


def test_only_delivered_messages_count() -> None:
    cap = CapRule(("marketing",), "recipient", "hour", 1)
    limits, decider = setup(caps=(cap,), quiet_hours="21:00-08:00")
    night = MIDNIGHT_UTC - 2 * HOUR  # 06:00 local
    assert decide(limits, decider, event(), night) == "quiet-hours"
    assert decide(limits, decider, event(sender="X"), night) == "unknown-sender"
    assert list(limits.items()) == []
    assert decide(limits, decider, event(), MIDNIGHT_UTC) == "consent"
    assert decide(limits, decider, event(), MIDNIGHT_UTC + 1) == "frequency-cap"


def test_monitor_delivers_counts_and_names_the_reason() -> None:
    cap = CapRule(("marketing",), "recipient", "hour", 1)
    limits, decider = setup(caps=(cap,), monitor=("frequency-cap", "unknown-sender"))
    out = [decide(limits, decider, event(), MIDNIGHT_UTC + i) for i in range(2)]
    assert out == ["consent", "monitored"]
    assert limits.would_block == "frequency-cap"
    assert decide(limits, decider, event(sender="X"), MIDNIGHT_UTC) == "monitored"
    assert limits.would_block == "unknown-sender"
    assert decide(limits, decider, event(), MIDNIGHT_UTC + 5) == "monitored"
    assert [n for _, n in limits.items()] == [4]  # every delivered one counted
    o = limits.apply(decider, NO_CONSENT, MIDNIGHT_UTC)
    assert o is NO_CONSENT
    assert limits.would_block is None


def test_closed_windows_are_dropped_and_late_records_not_counted() -> None:
    cap = CapRule(("marketing",), "recipient", "hour", 1)
    limits, decider = setup(caps=(cap,))
    assert decide(limits, decider, event(), MIDNIGHT_UTC) == "consent"
    assert decide(limits, decider, event(), MIDNIGHT_UTC + HOUR - 1) == "frequency-cap"
    assert limits.drop_closed() == 0
    assert decide(limits, decider, event(), MIDNIGHT_UTC + HOUR) == "consent"  # next hour
    assert limits.drop_closed() == 1
    assert limits.live() == 1
    # A late record of the closed hour: neither capped nor counted.
    assert decide(limits, decider, event(), MIDNIGHT_UTC + 5) == "consent"
    assert limits.late == 1
    assert limits.live() == 1


def test_max_per_day_of_the_consent() -> None:
    terms = ConsentTerms.of(array("Q", NUMBERS[:1]), array("q", [FOREVER]), array("I", [2]))
    policy = PolicyConfig()
    limits, decider = PartitionLimits(LimitRules(policy)), Decider(snapshot(terms), policy)
    got = [decide(limits, decider, event(), MIDNIGHT_UTC + i) for i in range(3)]
    assert got == ["consent", "consent", "frequency-cap"]
    # Exempt messages do not count for max_per_day.
    assert (
        decide(limits, decider, event(category="verification"), MIDNIGHT_UTC) == "exempt-category"
    )


def test_outcomes_pass_through_without_limits() -> None:
    limits, decider = setup()
    assert limits.apply(decider, CONSENT, MIDNIGHT_UTC) is CONSENT
    assert limits.apply(decider, EXEMPT_CATEGORY, MIDNIGHT_UTC) is EXEMPT_CATEGORY
    assert (QUIET_HOURS.route, FREQUENCY_CAP.route, MONITORED.route) == (
        "block",
        "block",
        "deliver",
    )


def test_unusable_times_fall_back() -> None:
    read = MIDNIGHT_UTC
    assert usable_time(read - 5, read) == read - 5
    assert usable_time(-1, read) == read
    assert usable_time(read + 86_400_000, read) == read + 86_400_000
    assert usable_time(read + 86_400_001, read) == read


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('quiet_hours = "21-08"', "policy.quiet_hours"),
        ('quiet_hours = "25:00-08:00"', "policy.quiet_hours"),
        ('quiet_hours = "08:00-08:00"', "policy.quiet_hours"),
        ('timezone = "Mars/Olympus"', "policy.timezone"),
        ('monitor = ["consent"]', "policy.monitor"),
        ('monitor = ["nope"]', "policy.monitor"),
        ('[policy.timezones]\n"86" = "Nowhere/City"', "policy.timezones.86"),
        ('[policy.timezones]\n"+86" = "Asia/Shanghai"', "policy.timezones.+86"),
        (
            '[[policy.caps]]\ncategories = ["m"]\nper = "pair"\nwindow = "day"\nmax = 0',
            "policy.caps[0].max",
        ),
        (
            '[[policy.caps]]\ncategories = ["m"]\nper = "sender"\nwindow = "day"\nmax = 1',
            "policy.caps[0].per",
        ),
        (
            '[[policy.caps]]\ncategories = ["m"]\nper = "pair"\nwindow = "week"\nmax = 1',
            "policy.caps[0].window",
        ),
        (
            '[[policy.caps]]\ncategories = []\nper = "pair"\nwindow = "day"\nmax = 1',
            "policy.caps[0].categories",
        ),
        ('[[policy.caps]]\ncategories = ["m"]\nper = "pair"\nwindow = "day"', "policy.caps[0].max"),
        (
            '[[policy.caps]]\ncategories = ["m"]\nper = "pair"\nwindow = "day"\nmax = 1\nmin = 1',
            "policy.caps[0].min",
        ),
    ],
)
def test_bad_limits_are_refused_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "f.toml"
    path.write_text(f"[policy]\n{toml}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.key == key, str(info.value)


def test_limits_load_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(
        '[policy]\nquiet_hours = "21:00-08:00"\n[[policy.caps]]\n'
        'categories = ["marketing"]\nper = "pair"\nwindow = "day"\nmax = 3\n'
    )
    config = load_config(
        path,
        env={
            "FILTERD_POLICY_MONITOR": "quiet-hours,frequency-cap",
            "FILTERD_POLICY_TIMEZONES": "91=Asia/Kolkata",
        },
    )
    p = config.policy
    assert p.caps == (CapRule(("marketing",), "pair", "day", 3),)
    assert p.monitor == ("quiet-hours", "frequency-cap")
    assert dict(p.timezones) == {"91": "Asia/Kolkata"}
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"FILTERD_POLICY_CAPS": "x"})
    assert info.value.key == "policy.caps"


def test_a_blocked_message_takes_back_what_it_counted() -> None:
    # The pair cap blocks the second message; the recipient cap it also counts in must
    # not keep the blocked one.
    pair = CapRule(("marketing",), "pair", "day", 1)
    recipient = CapRule(("marketing",), "recipient", "day", 5)
    limits, decider = setup(caps=(pair, recipient))
    at = MIDNIGHT_UTC + HOUR
    assert [decide(limits, decider, event(), at + i) for i in range(3)] == [
        "consent", "frequency-cap", "frequency-cap",
    ]  # fmt: skip
    window = (at + 8 * HOUR) // 86_400_000
    assert limits.get((0, "S", 8613800000001, window)) == 1
    assert limits.get((1, "", 8613800000001, window)) == 1
    # Another sender's message to the same recipient is its pair's first.
    assert decide(limits, decider, event(sender="S2"), at) == "unknown-sender"
    assert limits.live() == 2


def test_monitored_caps_keep_every_count() -> None:
    pair = CapRule(("marketing",), "pair", "day", 1)
    recipient = CapRule(("marketing",), "recipient", "day", 5)
    limits, decider = setup(caps=(pair, recipient), monitor=("frequency-cap",))
    at = MIDNIGHT_UTC + HOUR
    assert [decide(limits, decider, event(), at + i) for i in range(3)] == [
        "consent", "monitored", "monitored",
    ]  # fmt: skip
    assert sorted(n for _, n in limits.items()) == [3, 3]


@pytest.mark.parametrize(
    "prefixes",
    [
        {},
        {"86": "Asia/Shanghai", "91": "Asia/Kolkata", "1": "America/New_York"},
        {"9": "Asia/Tokyo", "91": "Asia/Kolkata", "919": "Asia/Dubai", "1": "America/New_York",
         "1212": "America/Chicago", "999999": "Europe/Paris"},
    ],
)  # fmt: skip
def test_zone_of_is_the_longest_prefix_of_the_digits(prefixes: dict[str, str]) -> None:
    rules = LimitRules(PolicyConfig(timezone="UTC", timezones=prefixes))
    names = [str(z) for z in rules.zones]

    def by_digits(number: int) -> str:
        digits = str(number)
        for length in range(6, 0, -1):
            if digits[:length] in prefixes:
                return prefixes[digits[:length]]
        return "UTC"

    numbers = [1, 9, 91, 919, 920, 12, 1212, 1213, 999999, 9999990, 2**63 - 1]
    for prefix in prefixes:
        value = int(prefix)
        for extra in range(0, 14):
            numbers += [value * 10**extra, (value + 1) * 10**extra - 1, (value + 1) * 10**extra]
    numbers += [8613800000001, 919800000001, 12125550001, 441234567890]
    # Twice in a scrambled order: the answer must not depend on the number asked before.
    for number in [*numbers, *reversed(numbers), *numbers[::3]]:
        if 0 < number < 2**63:
            assert names[rules.zone_of(number)] == by_digits(number), number


def test_senders_no_live_counter_names_are_let_go() -> None:
    # Monitored unknown senders bring any string: interned senders stay bounded.
    pair = CapRule(("marketing",), "pair", "hour", 1)
    limits, decider = setup(caps=(pair,), monitor=("unknown-sender",))
    limits.sender_limit = 10
    limits.tracking = True
    for hour in range(4):
        at = MIDNIGHT_UTC + hour * HOUR
        for i in range(8):
            limits._offset = hour * 100 + i
            assert decide(limits, decider, event(sender=f"X{hour}-{i}"), at) == "monitored"
        assert decide(limits, decider, event(), at) == "consent"
        assert decide(limits, decider, event(), at + 1) == "frequency-cap"
        limits.drop_closed()
        # The changelog names the senders of the changed counters (a closed window's go
        # by the topic's retention, without tombstones).
        log = [(orjson.loads(k), v) for k, v in limits.changelog(hour * 100)[:-1]]
        assert {k[1] for k, v in log} == {f"X{hour}-{i}" for i in range(8)} | {"S"}
        assert all(v is not None for _, v in log)
        limits.committed(hour * 100 + 100)
    assert len(limits._senders) < 20
    window = (MIDNIGHT_UTC + 3 * HOUR + 8 * HOUR) // HOUR
    live = dict(limits.items())
    assert live == {(0, "S", 8613800000001, window): 1} | {
        (0, f"X3-{i}", 8613800000001, window): 1 for i in range(8)
    }
