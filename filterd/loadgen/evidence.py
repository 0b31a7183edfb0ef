"""Consent evidence for a synthetic data set: consent that does not count, and disguises.

A loadgen data set (:mod:`filterd.loadgen.dataset`) holds plain consents. This
module adds what the consent-evidence rules are about, for ``make demo``:

* senders relying on consent that does not count: rows obtained by
  ``default-registration``, ``pre-ticked``, ``bundled-terms``, ``third-party``;
* consents that expired before the burst, and some that are still valid;
* opt-outs of every sender (``*``);
* promotions sent as verification codes (a marketing marker in the text).

:func:`write_evidence_inputs` writes the snapshot inputs (the data set's own rows
with ``method=explicit``, plus these), and :func:`evidence_events` the events
aimed at them, to be mixed into the data set's traffic.
"""

from __future__ import annotations

import gzip
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson

from filterd.loadgen.dataset import Dataset

__all__ = ["EVIDENCE_SENDERS", "evidence_events", "write_evidence_inputs"]

#: The evidence senders and how their consents were obtained (``expired``: accepted
#: consents, most of them expired by the time of the burst).
EVIDENCE_SENDERS: dict[str, str] = {
    "106980000001": "default-registration",
    "106980000002": "pre-ticked",
    "106980000003": "bundled-terms",
    "106980000004": "third-party",
    "106980000005": "expired",
}
_PER_SENDER = 2_000
#: Seeds the evidence's recipients: the inputs and the events must draw the same ones.
_RECIPIENT_SEED = 5
_GLOBAL_OPTOUTS = 500
_PROMOS = (
    "【{shop}】验证码{otp}，双11领券满减，回T退订",
    "【{shop}】您的验证码{otp}。限时秒杀，全场包邮！",
    "[{shop}] Your code is {otp}. Flash sale today, reply STOP to unsubscribe",
)
_NOTICE = "【{shop}】会员专享，点击领取"


def _recipients(ds: Dataset, seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    return [ds.e164(rng.randrange(ds.recipients)) for _ in range(count)]


def _gz_lines(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        yield from f


def write_evidence_inputs(dataset_dir: Path, out: Path, *, now_s: float) -> None:
    """Write ``consents.csv.gz``, ``optouts.csv.gz`` and ``dnd.csv.gz`` into ``out``.

    The data set's consents keep their rows, with ``method`` ``explicit``; the
    evidence senders' rows follow; every ``expires_at`` is relative to ``now_s``.
    The do-not-disturb list is the data set's.
    """
    from filterd.loadgen.dataset import load_dataset

    ds = load_dataset(dataset_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = _RECIPIENT_SEED
    rng = random.Random(seed)
    expired = _iso(now_s - 86_400)
    valid = _iso(now_s + 30 * 86_400)
    with gzip.open(out / "consents.csv.gz", "wb", compresslevel=1) as f:
        lines = _gz_lines(dataset_dir / "consents.csv.gz")
        next(lines)  # the data set's header: sender,recipient,granted_at
        f.write(b"sender,recipient,granted_at,method,expires_at,max_per_day\n")
        for line in lines:
            f.write(line.rstrip(b"\r\n") + b",explicit,,\n")
        for i, (sender, method) in enumerate(EVIDENCE_SENDERS.items()):
            for number in _recipients(ds, seed + i, _PER_SENDER):
                if method == "expired":
                    expires = expired if rng.random() < 0.8 else valid
                    f.write(f"{sender},+{number},2025-06-01,explicit,{expires},3\n".encode())
                else:
                    f.write(f"{sender},+{number},2025-06-01,{method},,\n".encode())
    shutil.copyfile(dataset_dir / "dnd.csv.gz", out / "dnd.csv.gz")
    with gzip.open(out / "optouts.csv.gz", "wb", compresslevel=1) as f:
        for line in _gz_lines(dataset_dir / "optouts.csv.gz"):
            f.write(line)
        for number in _recipients(ds, seed + 99, _GLOBAL_OPTOUTS):
            f.write(f"*,+{number}\n".encode())


def evidence_events(
    dataset_dir: Path, count: int, *, seed: int = 5, ts_ms: int
) -> list[tuple[bytes | None, bytes]]:
    """``count`` events aimed at the evidence: its senders, ``*`` opt-outs, disguises."""
    from filterd.loadgen.dataset import load_dataset

    ds = load_dataset(dataset_dir)
    rng = random.Random(seed ^ 0x5EED)
    senders = list(EVIDENCE_SENDERS)
    base = _RECIPIENT_SEED
    targets = {
        s: _recipients(ds, base + i, _PER_SENDER) for i, s in enumerate(EVIDENCE_SENDERS)
    }  # fmt: skip
    opted_out = _recipients(ds, base + 99, _GLOBAL_OPTOUTS)
    regular = [s.id for s in ds.senders]
    events: list[tuple[bytes | None, bytes]] = []
    for i in range(count):
        kind = rng.random()
        event: dict[str, object] = {"id": f"ev-{seed}-{i}", "ts": ts_ms}
        if kind < 0.6:  # a marketing message from a sender relying on such consent
            sender = rng.choice(senders)
            number = rng.choice(targets[sender])
            event |= {
                "sender": sender,
                "category": "marketing",
                "text": _NOTICE.format(shop="京东"),
            }
        elif kind < 0.8:  # a regular sender's message to a number opted out of all
            sender, number = rng.choice(regular), rng.choice(opted_out)
            event |= {
                "sender": sender,
                "category": "marketing",
                "text": _NOTICE.format(shop="京东"),
            }
        else:  # a promotion sent as a verification code
            sender = rng.choice(regular)
            number = ds.e164(rng.randrange(ds.recipients))
            event |= {"sender": sender, "category": "verification"}
            event["text"] = rng.choice(_PROMOS).format(
                shop="京东", otp=f"{rng.randrange(10**6):06d}"
            )
        event["recipient"] = f"+{number}"
        events.append((str(number).encode(), orjson.dumps(event)))
    return events


def _iso(epoch_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds")
