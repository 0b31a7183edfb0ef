"""A generated set that exercises step 4 (quiet hours, cap rules, ``max_per_day``) and monitor mode.

A few senders and recipients in three zones (China, India, the US with daylight
saving), so that caps are reached; consents of one row per pair, some stating a
``max_per_day``, some expiring; opt-outs, an unknown sender, exempt and disguised
categories; times over three days, mostly in order with some records hours late,
some lines without ``ts`` and some with an unusable one.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

SENDERS = ("106900000001", "SHOP-2", "BANK-3")
UNKNOWN_SENDER = "GHOST-9"
TIMEZONES = {"86": "Asia/Shanghai", "91": "Asia/Kolkata", "1": "America/New_York"}
QUIET_HOURS = "21:00-08:00"
#: Three cap rules, as ``[[policy.caps]]`` tables.
CAPS: tuple[dict[str, Any], ...] = (
    {"categories": ["marketing"], "per": "pair", "window": "day", "max": 2},
    {"categories": ["verification"], "per": "recipient", "window": "hour", "max": 3},
    {"categories": ["marketing", "transactional", "promo"], "per": "recipient", "window": "day",
     "max": 4},
)  # fmt: skip
CATEGORIES = (None, "marketing", "marketing", "verification", "verification", "transactional",
              "promo")  # fmt: skip
TEXTS = (None, "您的验证码123456", "【京东】双11领券满减，回T退订", "Your order has shipped")
DAY_MS = 86_400_000


@dataclass
class LimitCase:
    directory: Path
    #: The input lines, in order.
    lines: list[bytes]


def _numbers(rng: random.Random) -> list[str]:
    cn = [f"+86138{rng.randrange(10**8):08d}" for _ in range(6)]
    india = [f"+9198{rng.randrange(10**8):08d}" for _ in range(3)]
    us = [f"+1212{rng.randrange(10**7):07d}" for _ in range(3)]
    return cn + india + us


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _consent(
    rng: random.Random,
    base_ms: int,
    sender: str,
    number: str,
    p_cap: float,
    most: int,
    p_expiry: float,
) -> str:
    """A consents row: explicit, capped at 1..``most`` with ``p_cap``, expiring within three
    days of ``base_ms`` with ``p_expiry``."""
    cap = str(rng.randint(1, most)) if rng.random() < p_cap else ""
    expires = _iso(base_ms + rng.randrange(3 * DAY_MS)) if rng.random() < p_expiry else ""
    return f"{sender},{number},explicit,{expires},{cap}"


def _write_inputs(directory: Path, consents: list[str], optouts: list[str], dnd: list[str]) -> None:
    """``consents/optouts/dnd.csv.gz`` of the rows."""
    for name, header, rows in (
        ("consents", "sender,recipient,method,expires_at,max_per_day", consents),
        ("optouts", "sender,recipient", optouts),
        ("dnd", "recipient", dnd),
    ):
        with gzip.open(directory / f"{name}.csv.gz", "wt", encoding="utf-8") as f:
            f.write(header + "\n" + "".join(r + "\n" for r in rows))


def generate(directory: Path, base_ms: int, seed: int, events: int = 1500) -> LimitCase:
    """Write ``consents/optouts/dnd.csv.gz`` into ``directory``; return the lines."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    numbers = _numbers(rng)
    consents = []
    optouts = []
    for sender in SENDERS:
        for number in numbers:
            kind = rng.random()
            if kind < 0.1:
                optouts.append(f"{sender},{number}")
            if kind < 0.2:
                continue  # no consent
            consents.append(_consent(rng, base_ms, sender, number, 0.4, 3, 0.2))
            if rng.random() < 0.3:
                # A second consent of the pair, capped or not, that may expire mid-stream: the
                # cap is the smallest of the consents valid at each message's time.
                consents.append(_consent(rng, base_ms, sender, number, 0.7, 3, 0.7))
    _write_inputs(directory, consents, optouts, [numbers[0]])
    lines = []
    t = base_ms
    for i in range(events):
        t += rng.randrange(4 * 60_000)  # ~1500 events over about three days
        at = t - rng.randrange(3 * 3_600_000) if rng.random() < 0.05 else t  # some late
        event: dict[str, object] = {
            "id": f"m{seed}-{i}",
            "sender": UNKNOWN_SENDER if rng.random() < 0.03 else rng.choice(SENDERS),
            "recipient": rng.choice(numbers),
        }
        category = rng.choice(CATEGORIES)
        if category is not None:
            event["category"] = category
        text = rng.choice(TEXTS)
        if text is not None:
            event["text"] = text
        kind = rng.random()
        if kind < 0.9:
            event["ts"] = at
        elif kind < 0.93:
            event["ts"] = -5
        elif kind < 0.95:
            event["ts"] = base_ms + 10 * DAY_MS  # far ahead of every read time: not usable
        lines.append(orjson.dumps(event))
    return LimitCase(directory, lines)


def generate_stacked(directory: Path, base_ms: int, seed: int, events: int = 1200) -> LimitCase:
    """A set for ``max_per_day`` alone: every consented pair has one to three accepted
    consents, most stating a cap of 1-4 and expiring within the stream's three days, so the
    smallest cap of the consents valid at a message's time changes as they expire. Marketing
    messages with a ``ts``, in order."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    numbers = _numbers(rng)[:8]
    consents = []
    for sender in SENDERS:
        for number in numbers:
            for _ in range(rng.randint(1, 3)):
                consents.append(_consent(rng, base_ms, sender, number, 0.8, 4, 0.6))
    _write_inputs(directory, consents, [], [])
    lines = []
    t = base_ms
    for i in range(events):
        t += rng.randrange(6 * 60_000)
        event = {"id": f"s{seed}-{i}", "sender": rng.choice(SENDERS),
                 "recipient": rng.choice(numbers), "ts": t}  # fmt: skip
        lines.append(orjson.dumps(event))
    return LimitCase(directory, lines)


def config_toml(monitor: tuple[str, ...] = ()) -> str:
    """The ``[policy]`` of the set, as a config file."""
    zones = "".join(f'"{p}" = "{z}"\n' for p, z in TIMEZONES.items())
    caps = "".join(
        "[[policy.caps]]\n"
        f"categories = {orjson.dumps(c['categories']).decode()}\n"
        f'per = "{c["per"]}"\nwindow = "{c["window"]}"\nmax = {c["max"]}\n'
        for c in CAPS
    )
    return (
        f'[policy]\nquiet_hours = "{QUIET_HOURS}"\ntimezone = "Asia/Shanghai"\n'
        f"monitor = {orjson.dumps(list(monitor)).decode()}\n"
        f"[policy.timezones]\n{zones}{caps}"
    )


def reference_policy(monitor: tuple[str, ...] = ()) -> dict[str, Any]:
    """The same policy, as :class:`tests.support.reference.Reference` fields."""
    return {
        "quiet_hours": QUIET_HOURS,
        "timezone": "Asia/Shanghai",
        "timezones": dict(TIMEZONES),
        "caps": CAPS,
        "monitor": frozenset(monitor),
    }
