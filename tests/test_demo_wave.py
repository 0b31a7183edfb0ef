"""The opt-out wave of ``make demo`` (deploy/local/demo.py): who opts out, and how."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import orjson

DEMO = Path(__file__).resolve().parents[1] / "deploy" / "local" / "demo.py"


def _demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("filterd_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("filterd_demo", module)
    spec.loader.exec_module(module)
    return module


def test_the_wave_opts_out_distinct_recipients_half_by_reply_half_by_registry() -> None:
    demo = _demo()

    def event(i: int) -> tuple[bytes | None, bytes]:
        number = f"8613800000{i % 40:03d}"
        doc = {"id": f"m{i}", "sender": f"S{i % 3}", "recipient": f"+{number}"}
        return number.encode(), orjson.dumps({**doc, "category": "verification", "text": "x"})

    records = [event(i) for i in range(200)] + [(None, b"not json")] * 50
    wave = demo.Wave(records, 20, seed=5)
    keys = [key for key, _ in wave.picks]
    assert len(keys) == 20
    assert len(set(keys)) == 20
    assert len(wave.replies) == len(wave.registry) == 10
    assert not set(k for k, _ in wave.replies) & set(k for k, _ in wave.registry)
    for key, doc in wave.picks:
        # The record key is the recipient's digits, and the follow-ups are marketing.
        assert doc["recipient"].lstrip("+").encode() == key
        assert doc["category"] == "marketing"
    assert wave.follow_ups == 20 * demo.WAVE_FOLLOW_UPS
    # More wanted than there are recipients: every distinct recipient once.
    assert len(demo.Wave(records, 100, seed=5).picks) == 40
