"""A generated set that exercises every consent-evidence rule, for replay and the stream.

Consents of every method (accepted, refused, unknown, empty), expiring on either
side of the messages' times, with and without ``max_per_day``; opt-outs of one
sender and of every sender (``*``); do-not-disturb numbers; events of every
category, with plain texts and with disguised promotions (markers in full-width
or other case), with and without ``ts``. Times are relative to ``base_ms`` so
that the stream can use recent record timestamps.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson

SENDERS = ("106900000001", "106900000002", "SHOP-3", "BANK-4")
METHODS = (
    "explicit", "double-opt-in", "written", "default-registration", "pre-ticked",
    "third-party", "bundled-terms", "by-silence", "",
)  # fmt: skip
CATEGORIES = (None, "marketing", "verification", "transactional", "promo")
TEXTS = (
    None,
    "【京东】验证码123456，5分钟内有效，请勿泄露给他人。",
    "Your verification code is 123456.",
    "【京东】验证码123456，领券满减，回Ｔ退订",  # a promotion dressed as a code
    "Code 123456. UNSUBSCRIBE: reply stop",
    "【招商银行】尾号1234的卡消费120.50元，特价机票见app",
)
_SHANGHAI = timezone(timedelta(hours=8))
WINDOW_MS = 40 * 60 * 1000  # messages' times: base ± 40 minutes


@dataclass
class Case:
    """The input files and the events of one generated set."""

    directory: Path
    events: list[tuple[int, bytes]]  # (message time in ms, value)


def _write(path: Path, header: str, rows: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(header + "\n" + "".join(r + "\n" for r in rows))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(_SHANGHAI).isoformat()


def generate(directory: Path, base_ms: int, seed: int, events: int = 600) -> Case:
    """Write consents/optouts/dnd ``.csv.gz`` into ``directory``; return the set."""
    rng = random.Random(seed)
    numbers = [8613800000000 + rng.randrange(10**8) for _ in range(40)]
    consents = []
    for _ in range(160):
        expires = ""
        if rng.random() < 0.4:
            expires = _iso(base_ms + rng.randint(-WINDOW_MS, WINDOW_MS))
        cap = str(rng.randint(1, 9)) if rng.random() < 0.2 else ""
        granted = _iso(base_ms - 86_400_000) if rng.random() < 0.5 else ""
        method = rng.choice(METHODS)
        consents.append(
            f"{rng.choice(SENDERS[:3])},+{rng.choice(numbers)},{method},{granted},{expires},{cap}"
        )
    optouts = [f"{rng.choice(SENDERS[:3])},+{rng.choice(numbers)}" for _ in range(12)]
    optouts += [f"*,+{rng.choice(numbers)}" for _ in range(3)]
    dnd = [f"+{rng.choice(numbers)}" for _ in range(6)]
    directory.mkdir(parents=True, exist_ok=True)
    _write(
        directory / "consents.csv.gz",
        "sender,recipient,method,granted_at,expires_at,max_per_day",
        consents,
    )
    _write(directory / "optouts.csv.gz", "sender,recipient", optouts)
    _write(directory / "dnd.csv.gz", "recipient", dnd)
    out = []
    for i in range(events):
        at = base_ms + rng.randint(-WINDOW_MS, WINDOW_MS)
        event: dict[str, object] = {
            "id": f"c{seed}-{i}",
            "sender": rng.choice(SENDERS),
            "recipient": f"+{rng.choice(numbers)}",
        }
        if (category := rng.choice(CATEGORIES)) is not None:
            event["category"] = category
        if (text := rng.choice(TEXTS)) is not None:
            event["text"] = text
        if rng.random() < 0.5:
            # A ts that contradicts the record time: the stream must not read it.
            event["ts"] = base_ms + rng.randint(-WINDOW_MS, WINDOW_MS)
        out.append((at, orjson.dumps(event)))
    return Case(directory, out)
