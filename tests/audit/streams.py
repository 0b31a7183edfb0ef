"""Generated output streams for the audit tests: records exactly as the service writes them
(value = the input event bytes, headers filterd-route/reason/snapshot/source), with
controlled record timestamps, and a batched producer fast enough for 500k records."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import orjson

from tests.support.produce import produce as support_produce

BLOCK_REASONS = ("no-consent", "opted-out", "unknown-sender", "recipient-dnd")
INVALID_REASONS = ("malformed-json", "missing-field", "bad-field-type", "bad-recipient")
DELIVER_REASONS = ("consent", "exempt-category")
HOUR_MS = 3_600_000

# The broker refuses timestamps more than an hour ahead of its clock
# (message.timestamp.after.max.ms), so generated streams lie in the recent past.
BASE_MS = (int(time.time() * 1000) // HOUR_MS - 48) * HOUR_MS


@dataclass(frozen=True, slots=True)
class Routed:
    """One output record as the service would have written it."""

    route: str
    reason: str
    snapshot: str
    source: str
    ts_ms: int
    key: bytes | None
    value: bytes
    id: str | None
    sender: str | None
    recipient: str | None
    category: str | None

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("filterd-route", self.route.encode()),
            ("filterd-reason", self.reason.encode()),
            ("filterd-snapshot", self.snapshot.encode()),
            ("filterd-source", self.source.encode()),
        ]


def _recipient(rng: random.Random) -> str:
    national = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
    form = rng.randrange(3)
    if form == 0:
        return f"+86{national}"
    if form == 1:
        return national
    return f"{national[:3]}-{national[3:7]}-{national[7:]}"


def generate(
    n: int,
    *,
    seed: int,
    start_ms: int = BASE_MS,
    step_ms: int = 1000,
    route: str = "block",
    senders: int = 20,
    prefix: str = "m",
) -> list[Routed]:
    """``n`` records with record timestamps ``start_ms + i * step_ms`` (monotonic, as the
    service's appends are), random senders (a few with surrounding blanks), reasons and
    snapshot versions."""
    rng = random.Random(seed)
    out: list[Routed] = []
    reasons = {"block": BLOCK_REASONS, "deliver": DELIVER_REASONS}.get(route, INVALID_REASONS)
    for i in range(n):
        ts = start_ms + i * step_ms
        # A skewed sender distribution, so the top-senders order is meaningful.
        sender_no = min(int(rng.expovariate(0.25)), senders - 1)
        sender = f"10690{sender_no:04d}"
        padded = f" {sender} " if rng.random() < 0.05 else sender
        reason = rng.choice(reasons)
        snapshot = rng.choice(("20261110T000000Z-a1b2", "20261111T000000Z-c3d4"))
        recipient = _recipient(rng)
        category = rng.choice(("marketing", "marketing", None, "promo"))
        mid = f"{prefix}{i}"
        if route == "invalid" and rng.random() < 0.3:
            value = b"{not json " + str(i).encode()
            out.append(
                Routed(
                    route,
                    "malformed-json",
                    snapshot,
                    f"sms.outbound/{i % 3}/{i}",
                    ts,
                    None,
                    value,
                    None,
                    None,
                    None,
                    None,
                )
            )
            continue
        event: dict[str, object] = {
            "id": mid,
            "sender": padded,
            "recipient": recipient,
            "text": "双十一大促 50% off",
            "ts": ts - 5,
        }
        if category is not None:
            event["category"] = category
        out.append(
            Routed(
                route,
                reason,
                snapshot,
                f"sms.outbound/{i % 3}/{i}",
                ts,
                mid.encode(),
                orjson.dumps(event),
                mid,
                sender,
                recipient,
                category,
            )
        )
    return out


async def produce(bootstrap: str, topic: str, records: list[Routed], partitions: int = 3) -> None:
    """Write ``records`` with the harness's producer (in order within each partition)."""
    await support_produce(
        bootstrap,
        topic,
        ((r.key, r.value, r.ts_ms, r.headers()) for r in records),
        partitions,
        acks="all",
    )
