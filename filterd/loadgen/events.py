"""Synthetic SMS events against a population, labelled with the decision they should get.

Events are rendered by splicing pre-encoded fragments (sender ids, message
texts serialized once with orjson) into one bytes template, so generating an
event costs a few random draws and one ``bytes %`` format — no per-event
``dict`` and no per-event JSON encoding.

Record keys: the key of a valid event is its recipient's normalized digits
as ASCII (``b"8613812345678"``), so all messages to one recipient share a
partition and keep their order. Bad events have no key (``None``).
"""

from __future__ import annotations

import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import orjson

from filterd.loadgen.dataset import FORM_TABLE, Dataset, SenderSpec, render_number

__all__ = [
    "BAD_KINDS",
    "DEFAULT_MIX",
    "LabelledEvent",
    "iter_events",
    "iter_labelled_events",
    "parse_mix",
]

#: Share of each category in the valid events; ``promo`` is a category the
#: default policy does not name, so it falls back to require-consent.
DEFAULT_MIX: Mapping[str, float] = {
    "marketing": 0.7,
    "transactional": 0.15,
    "verification": 0.1,
    "promo": 0.05,
}

#: Among require-consent events, how often each intended outcome is aimed at.
OUTCOMES: tuple[tuple[str, float], ...] = (
    ("consent", 0.55),
    ("no-consent", 0.15),
    ("opted-out", 0.10),
    ("unknown-sender", 0.10),
    ("recipient-dnd", 0.10),
)

#: Every kind of bad event, with the invalid reason the contract gives it.
BAD_KINDS: Mapping[str, str] = {
    "not-json": "malformed-json",
    "invalid-utf8": "malformed-json",
    "json-array": "malformed-json",
    "missing-id": "missing-field",
    "missing-sender": "missing-field",
    "missing-recipient": "missing-field",
    "empty-field": "missing-field",
    "ts-string": "bad-field-type",
    "recipient-number": "bad-field-type",
    "category-number": "bad-field-type",
    "recipient-letters": "bad-recipient",
    "recipient-short": "bad-recipient",
    "oversized": "oversized",
}

#: Share of marketing events that leave ``category`` out (missing means marketing).
MISSING_CATEGORY_SHARE = 0.2
OVERSIZED_BYTES = 70_000
_POOL = 256


class LabelledEvent(NamedTuple):
    """One generated record and the decision the contract says it must get."""

    #: Record key: the recipient's normalized digits, ``None`` for bad events.
    key: bytes | None
    #: Record value: the event JSON (or deliberately broken bytes).
    value: bytes
    #: What was aimed at: an outcome such as ``consent``, ``exempt``, or ``bad:<kind>``.
    kind: str
    #: Expected route: ``deliver``, ``block`` or ``invalid``.
    route: str
    #: Expected reason string of docs/contract.md.
    reason: str


def parse_mix(text: str) -> dict[str, float]:
    """Parse ``marketing=0.7,promo=0.3`` into normalized shares.

    Raises ``ValueError`` on a malformed item or a non-positive total.
    """
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, sep, share = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"mix item {item!r} is not CATEGORY=SHARE")
        value = float(share)
        if value < 0:
            raise ValueError(f"mix share of {name.strip()!r} is negative")
        mix[name.strip()] = value
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("mix shares must add up to more than 0")
    return {name: value / total for name, value in mix.items()}


_SHOPS_ZH = ("京东", "淘宝", "拼多多", "美团", "天猫", "唯品会", "苏宁易购", "小米商城", "携程")
_SHOPS_EN = ("JD", "Taobao", "Pinduoduo", "Meituan", "Tmall", "Vipshop", "Ctrip", "Xiaomi")
_BANKS = ("招商银行", "工商银行", "中国银行", "建设银行")
_CARRIERS = ("顺丰", "中通", "圆通", "韵达", "京东物流")

_TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "marketing": (
        "【{shop}】双11提前购！满{a}减{b}，低至{c}折 https://t.cn/{code} 回T退订",
        "【{shop}】您的{b}元红包今晚24点失效，速领 https://m.{dom}.com/{code} 拒收请回复R",
        "[{shop_en}] Flash sale: {c}0% off until midnight! Code {CODE} https://s.{dom}.com/{code}"
        " Reply STOP to opt out",
        "【{shop}】会员日满{a}送{b}，限量{c}00份 https://t.cn/{code} 退订回T",
    ),
    "promo": (
        "【{shop}】{m}月{d}日积分翻倍，点击 https://m.{dom}.com/{code} 领取，回T退订",
        "[{shop_en}] Your {b} CNY coupon expires soon: https://s.{dom}.com/{code} Reply TD to"
        " unsubscribe",
    ),
    "transactional": (
        "【{shop}】订单{order}已发货，{carrier}单号{track}，预计{m}月{d}日送达",
        "【{bank}】尾号{last4}的卡{m}月{d}日消费{a}.{c}0元，余额{b}.00元",
        "[{shop_en}] Order {order} confirmed: CNY {a}.{c}0 paid. Track: https://s.{dom}.com/o/{code}",
    ),
    "verification": (
        "【{shop}】验证码{otp}，5分钟内有效，请勿泄露给他人。",
        "[{shop_en}] Your verification code is {otp}. It expires in 5 minutes.",
        "【{bank}】动态密码{otp}，支付金额{a}.00元，切勿告知他人。",
    ),
}


def _text_pool(category: str, rng: random.Random) -> list[bytes]:
    """Message texts for one category, each already a JSON string literal."""
    templates = _TEMPLATES.get(category, _TEMPLATES["marketing"])
    pool = []
    for _ in range(_POOL):
        code = "".join(rng.choices("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789", k=7))
        shop_en = rng.choice(_SHOPS_EN)
        text = rng.choice(templates).format(
            shop=rng.choice(_SHOPS_ZH),
            shop_en=shop_en,
            dom=shop_en.lower(),
            bank=rng.choice(_BANKS),
            carrier=rng.choice(_CARRIERS),
            a=rng.randrange(100, 1000),
            b=rng.randrange(5, 100),
            c=rng.randrange(1, 10),
            m=rng.randrange(1, 13),
            d=rng.randrange(1, 29),
            code=code,
            CODE=code.upper()[:6],
            order=rng.randrange(10**11, 10**12),
            track=f"SF{rng.randrange(10**11, 10**12)}",
            last4=f"{rng.randrange(10000):04d}",
            otp=f"{rng.randrange(10**6):06d}",
        )
        pool.append(orjson.dumps(text))
    return pool


class _Picker:
    """Weighted choice of senders by a precomputed cumulative table (one bisect per pick)."""

    __slots__ = ("cum", "items", "total")

    def __init__(self, items: list[int], weights: list[float]) -> None:
        self.items = items
        self.cum: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w
            self.cum.append(acc)
        self.total = acc

    def __bool__(self) -> bool:
        return bool(self.items)

    def pick(self, u: float) -> int:
        return self.items[min(bisect(self.cum, u * self.total), len(self.items) - 1)]


_VALID = b'{"id":"%b","sender":"%b","recipient":"%b",%b"text":%b,"ts":%d}'


def iter_labelled_events(
    dataset: Dataset,
    count: int,
    *,
    seed: int,
    bad_rate: float = 0.01,
    mix: Mapping[str, float] = DEFAULT_MIX,
    ts_ms: int | None = None,
) -> Iterator[LabelledEvent]:
    """Generate ``count`` records against ``dataset`` with their expected decisions.

    ``bad_rate`` is the share of deliberately invalid records, spread evenly
    over :data:`BAD_KINDS`; the rest follow the category ``mix``. Event ids
    are ``m-<seed>-<n>``. ``ts`` is the wall clock at generation time, or
    ``ts_ms + n`` when ``ts_ms`` is given — then the same arguments always
    produce the same bytes.
    """
    if not 0.0 <= bad_rate <= 1.0:
        raise ValueError(f"bad_rate must be within [0, 1], got {bad_rate}")
    rng = random.Random(seed)
    rand = rng.random
    categories = [name for name, share in mix.items() if share > 0]
    if not categories and bad_rate < 1.0:
        raise ValueError("mix has no category with a positive share")
    cat_pick = _Picker(list(range(len(categories))), [mix[c] for c in categories])
    pools = [_text_pool(c, rng) for c in categories]
    cat_fields = [b'"category":%b,' % orjson.dumps(c) for c in categories]
    outcome_pick = _Picker(list(range(len(OUTCOMES))), [w for _, w in OUTCOMES])
    bad_kinds = list(BAD_KINDS)
    senders = dataset.senders
    sender_ids = [s.id.encode() for s in senders]
    everyone = _Picker(list(range(len(senders))), [float(s.span) for s in senders])
    consenting = _sub_picker(senders, lambda s: s.consents - s.optouts_consented)
    opting_out = _sub_picker(senders, lambda s: s.optouts_consented + s.optouts_only)
    unknown = [f"1069099{p:05d}".encode() for p in rng.sample(range(100_000), 48)]
    unknown += [b"UNREG-SHOP", b"QUICKLOAN", b"LUCKY-DRAW"]
    n_rcpt, forms = dataset.recipients, FORM_TABLE
    prefix = f"m-{seed}-".encode()
    ts = ts_ms if ts_ms is not None else time.time_ns() // 1_000_000
    expected = dataset.expected
    e164 = dataset.e164

    def pair(outcome: str) -> tuple[bytes, int]:
        """A (sender, recipient index) aimed at ``outcome``; the label is computed after."""
        if outcome == "consent" and consenting:
            i = consenting.pick(rand())
            spec = senders[i]
            j = int(rand() * (spec.consents - spec.optouts_consented))
            return sender_ids[i], (j * spec.a + spec.b) % n_rcpt
        if outcome == "opted-out" and opting_out:
            i = opting_out.pick(rand())
            spec = senders[i]
            j = spec.consents - spec.optouts_consented
            j += int(rand() * (spec.optouts_consented + spec.optouts_only))
            return sender_ids[i], (j * spec.a + spec.b) % n_rcpt
        if outcome == "unknown-sender" or (outcome == "exempt" and rand() < 0.1):
            return unknown[int(rand() * len(unknown))], int(rand() * n_rcpt)
        if outcome == "recipient-dnd":
            # A DND recipient the sender has no row for; a few tries, since the
            # biggest senders cover much of the population.
            for _ in range(8):
                r = dataset.dnd_member(int(rand() * dataset.dnd_count))
                i = everyone.pick(rand())
                if dataset.position(senders[i], r) >= senders[i].span:
                    break
            return sender_ids[i], r
        i = everyone.pick(rand())
        spec = senders[i]
        if outcome == "exempt":
            return sender_ids[i], int(rand() * n_rcpt)
        for _ in range(8):  # no-consent: past the sender's rows, and not DND
            r = ((spec.span + int(rand() * (n_rcpt - spec.span))) * spec.a + spec.b) % n_rcpt
            if not dataset.is_dnd(r):
                break
        return sender_ids[i], r

    for n in range(count):
        if ts_ms is not None:
            ts = ts_ms + n
        elif not n & 1023:
            ts = time.time_ns() // 1_000_000  # re-read the clock once per 1024 events
        if rand() < bad_rate:
            kind = bad_kinds[int(rand() * len(bad_kinds))]
            r = int(rand() * n_rcpt)
            sender = sender_ids[everyone.pick(rand())]
            value = _bad_event(kind, prefix + b"%d" % n, sender, dataset.national(r), ts)
            yield LabelledEvent(None, value, "bad:" + kind, "invalid", BAD_KINDS[kind])
            continue
        ci = cat_pick.pick(rand())
        category = categories[ci]
        exempt = category in ("transactional", "verification")
        outcome = "exempt" if exempt else OUTCOMES[outcome_pick.pick(rand())][0]
        sender, r = pair(outcome)
        cat_field = cat_fields[ci]
        if category == "marketing" and rand() < MISSING_CATEGORY_SHARE:
            cat_field = b""
        number = e164(r)
        route, reason = expected(sender.decode(), number, category)
        recipient = render_number(dataset.national(r), forms[int(rand() * len(forms))])
        text = pools[ci][int(rand() * _POOL)]
        value = _VALID % (prefix + b"%d" % n, sender, recipient.encode(), cat_field, text, ts)
        yield LabelledEvent(b"%d" % number, value, outcome, route, reason)


def iter_events(
    dataset: Dataset,
    count: int,
    *,
    seed: int,
    bad_rate: float = 0.01,
    mix: Mapping[str, float] = DEFAULT_MIX,
    ts_ms: int | None = None,
) -> Iterator[tuple[bytes | None, bytes]]:
    """Generate ``count`` ``(key, value)`` records; see :func:`iter_labelled_events`."""
    for event in iter_labelled_events(
        dataset, count, seed=seed, bad_rate=bad_rate, mix=mix, ts_ms=ts_ms
    ):
        yield event.key, event.value


def _sub_picker(senders: tuple[SenderSpec, ...], weight: Callable[[SenderSpec], int]) -> _Picker:
    """A picker over the senders with a positive ``weight``, proportional to it."""
    items, weights = [], []
    for i, spec in enumerate(senders):
        w = weight(spec)
        if w > 0:
            items.append(i)
            weights.append(float(w))
    return _Picker(items, weights)


_OVERSIZED_TEXT = orjson.dumps("超长广告内容" * (OVERSIZED_BYTES // 18 + 1))
_BAD_TEXT = b'"\xe4\xbd\xa0\xe5\xa5\xbd \xff\xfe"'  # valid UTF-8, then two bytes that never are


def _bad_event(kind: str, mid: bytes, sender: bytes, national: int, ts: int) -> bytes:
    """One record of a bad kind; everything else in it is valid, so only ``kind`` is at fault."""
    rcpt = b"+86%d" % national
    if kind == "not-json":
        return b'{"id":"%b","sender":"%b","recipient":"%b","text":"cut off' % (mid, sender, rcpt)
    if kind == "invalid-utf8":
        # Well-formed JSON syntax, but the text holds bytes that are not UTF-8.
        body = b'{"id":"%b","sender":"%b","recipient":"%b","text":%b,"ts":%d}'
        return body % (mid, sender, rcpt, _BAD_TEXT, ts)
    if kind == "json-array":
        return b'["%b","%b","%b",%d]' % (mid, sender, rcpt, ts)
    if kind == "missing-id":
        return b'{"sender":"%b","recipient":"%b","text":"hi","ts":%d}' % (sender, rcpt, ts)
    if kind == "missing-sender":
        return b'{"id":"%b","recipient":"%b","text":"hi","ts":%d}' % (mid, rcpt, ts)
    if kind == "missing-recipient":
        return b'{"id":"%b","sender":"%b","text":"hi","ts":%d}' % (mid, sender, ts)
    fields = [mid, sender, rcpt]
    if kind == "empty-field":
        fields[national % 3] = b""  # empty id, sender or recipient in turn
    elif kind == "recipient-letters":
        fields[2] = b"+86%bABCD%b" % (rcpt[3:6], rcpt[10:])
    elif kind == "recipient-short":
        fields[2] = b"%d" % (national % 100_000)
    quoted = b'"%b"' % fields[2]
    category, ts_field, text = b'"marketing"', b"%d" % ts, b'"hi"'
    if kind == "ts-string":
        ts_field = b'"%d"' % ts
    elif kind == "recipient-number":
        quoted = b"86%d" % national
    elif kind == "category-number":
        category = b"3"
    elif kind == "oversized":
        text = _OVERSIZED_TEXT
    body = b'{"id":"%b","sender":"%b","recipient":%b,"category":%b,"text":%b,"ts":%b}'
    return body % (fields[0], fields[1], quoted, category, text, ts_field)
