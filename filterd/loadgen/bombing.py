"""SMS bombing for ``make demo``: traffic the anti-bombing limits (contract step 4) stop.

* a bombing campaign: one shop sends many marketing messages to the same recipients,
  all of whom consented to it, within one day;
* an OTP flood: many senders send verification codes to one number within an hour;
* a night promotion: marketing messages to consenting recipients stamped inside the
  quiet hours of the recipients' local time.

:data:`DEMO_LIMITS` is the ``[policy]`` these are meant for. The campaign and the flood
are sent now, so they fall in the current windows of the caps; the night promotion is
stamped (event ``ts`` and record timestamp, which step 4 reads) at the latest 07:30
Asia/Shanghai before now (:func:`night_time`), inside the quiet hours whenever the demo
runs. (Regular traffic sent between 22:00 and 08:00 Asia/Shanghai is inside them too.)
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

import orjson

from filterd.loadgen.dataset import Dataset

__all__ = [
    "DEMO_LIMITS",
    "Bombing",
    "bombing_events",
    "night_time",
]

#: The demo's ``[policy]`` limits: quiet hours, and three cap rules.
DEMO_LIMITS: tuple[str, ...] = (
    "[policy]",
    'quiet_hours = "22:00-08:00"',
    'timezone = "Asia/Shanghai"',
    "[[policy.caps]]",  # a shop's marketing to one recipient: 3 a day
    'categories = ["marketing"]',
    'per = "pair"',
    'window = "day"',
    "max = 3",
    "[[policy.caps]]",  # verification codes to one number, from anyone: 10 an hour
    'categories = ["verification"]',
    'per = "recipient"',
    'window = "hour"',
    "max = 10",
    "[[policy.caps]]",  # every message to one number: 30 a day
    'categories = ["marketing", "transactional", "verification", "promo"]',
    'per = "recipient"',
    'window = "day"',
    "max = 30",
)
_ZONE = ZoneInfo("Asia/Shanghai")
#: Consenting recipients of the campaign, and messages each gets from it.
CAMPAIGN_RECIPIENTS = 300
CAMPAIGN_ROUNDS = 8
#: Verification codes at the flooded number, and the senders they come from.
FLOOD_MESSAGES = 150
FLOOD_SENDERS = 50
NIGHT_MESSAGES = 1_000


class Bombing(NamedTuple):
    """Who the bombing is: for the demo's closing summary."""

    #: The shop running the campaign.
    campaign_sender: str
    #: The flooded number (E.164 digits).
    flood_recipient: int
    #: The campaign and the flood, to be sent now.
    events: list[tuple[bytes | None, bytes]]
    #: The night promotion, to be sent with record timestamp :attr:`night_ms`.
    night: list[tuple[bytes | None, bytes]]
    night_ms: int


def night_time(now_ms: int) -> int:
    """07:30 Asia/Shanghai of the latest day where it is not after ``now_ms`` (in ms):
    inside the demo's quiet hours (22:00-08:00) and in the past."""
    now = datetime.fromtimestamp(now_ms / 1000, _ZONE)
    morning = now.replace(hour=7, minute=30, second=0, microsecond=0)
    if morning > now:
        morning -= timedelta(days=1)
    return int(morning.timestamp() * 1000)


def _consenting(ds: Dataset, spec_index: int, count: int, rng: random.Random) -> list[int]:
    """``count`` distinct recipients (E.164) holding a consent to the sender, not opted out."""
    spec = ds.senders[spec_index]
    usable = spec.consents - spec.optouts_consented
    picks = rng.sample(range(usable), min(count, usable))
    return [ds.e164((j * spec.a + spec.b) % ds.recipients) for j in picks]


def _event(eid: str, sender: str, number: int, category: str, text: str, ts: int) -> bytes:
    return orjson.dumps({
        "id": eid, "sender": sender, "recipient": f"+{number}",
        "category": category, "text": text, "ts": ts,
    })  # fmt: skip


def bombing_events(ds: Dataset, *, now_ms: int, seed: int) -> Bombing:
    """The campaign, the flood and the night promotion, keyed by recipient as the
    data set's events are; the first two stamped from ``now_ms``."""
    rng = random.Random(seed)
    events: list[tuple[bytes | None, bytes]] = []
    # The shop with the most consents bombs its own consenting customers.
    shop = max(range(len(ds.senders)), key=lambda i: ds.senders[i].consents)
    sender = ds.senders[shop].id
    targets = _consenting(ds, shop, CAMPAIGN_RECIPIENTS, rng)
    for n in range(CAMPAIGN_ROUNDS):
        for k, number in enumerate(targets):
            text = f"【双11狂欢】第{n + 1}波：全场5折，回T退订"
            ts = now_ms + k
            value = _event(f"bomb-{seed}-{n}-{k}", sender, number, "marketing", text, ts)
            events.append((str(number).encode(), value))
    # The flooded number: some recipient of the population; codes from many senders.
    flooded = ds.e164(rng.randrange(ds.recipients))
    flooders = [s.id for s in rng.sample(ds.senders, min(FLOOD_SENDERS, len(ds.senders)))]
    for n in range(FLOOD_MESSAGES):
        text = f"您的验证码{rng.randrange(10**6):06d}，5分钟内有效"
        ts = now_ms + n
        value = _event(f"otp-{seed}-{n}", flooders[n % len(flooders)], flooded, "verification",
                       text, ts)  # fmt: skip
        events.append((str(flooded).encode(), value))
    # Marketing at 07:30 local, to consenting recipients of other shops.
    morning_ms = night_time(now_ms)
    night: list[tuple[bytes | None, bytes]] = []
    for n in range(NIGHT_MESSAGES):
        i = rng.randrange(len(ds.senders))
        if i == shop or not ds.senders[i].consents - ds.senders[i].optouts_consented:
            continue
        (number,) = _consenting(ds, i, 1, rng)
        value = _event(f"night-{seed}-{n}", ds.senders[i].id, number, "marketing",
                       "【早安特惠】限时秒杀，回T退订", morning_ms)  # fmt: skip
        night.append((str(number).encode(), value))
    return Bombing(sender, flooded, events, night, morning_ms)
