"""Logging set-up and the rate-limited warning helper."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd.logs import RateLimitedLogger, json_fields, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_json_lines_carry_extra_fields() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    log = logging.getLogger("filterd.service")
    log.info("snapshot %s in force", "v2", extra={"event": "snapshot-swap", "consents": 12})
    log.debug("not shown at INFO")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "INFO"
    assert entry["logger"] == "filterd.service"
    assert entry["msg"] == "snapshot v2 in force"
    assert entry["event"] == "snapshot-swap"
    assert entry["consents"] == 12
    assert entry["ts"].endswith("Z")
    assert len(entry["ts"]) == len("2026-01-01T00:00:00.000Z")


def test_json_exceptions_and_unencodable_extras() -> None:
    out = io.StringIO()
    setup_logging("json", "DEBUG", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed", extra={"obj": object()})
    entry = json.loads(out.getvalue())
    assert "RuntimeError: boom" in entry["exc"]
    assert entry["obj"].startswith("<object object")


def test_text_lines_are_readable() -> None:
    out = io.StringIO()
    setup_logging("text", "info", stream=out)
    logging.getLogger("filterd.service").warning("lag %d", 5, extra={"topic": "in"})
    line = out.getvalue().rstrip("\n")
    assert " WARNING filterd.service: lag 5 topic=in" in line
    assert line[:4].isdigit()
    assert line[23] == "Z"


def test_setup_twice_replaces_its_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", stream=first)
    setup_logging("json", stream=second)
    logging.getLogger("filterd").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        setup_logging("xml")


def test_rate_limited_logger_counts_what_it_suppresses(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limited = RateLimitedLogger(logging.getLogger("filterd.test"), interval=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="filterd.test")

    assert limited.log("malformed-json", "bad input from %s", "p0") is True
    for _ in range(5):
        clock.now += 1
        assert limited.log("malformed-json", "bad input from %s", "p1", events=10) is False
    # Another key has its own budget.
    assert limited.log("bad-recipient", "bad recipient") is True
    clock.now += 10
    assert limited.log("malformed-json", "bad input from %s", "p2") is True

    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad input from p0",
        "bad recipient",
        "bad input from p2 (50 more suppressed in the last 10s)",
    ]
    assert caplog.records[-1].suppressed == 50  # type: ignore[attr-defined]

    clock.now += 1
    limited.log("malformed-json", "bad input from %s", "p3", events=2)
    limited.flush()
    limited.flush()  # nothing left the second time
    assert [r.getMessage() for r in caplog.records][3:] == [
        "bad input from p3 (2 more suppressed in the last 10s)"
    ]


async def test_service_shutdown_flushes_rate_limited_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from filterd.config import load_config
    from filterd.service import Service

    now = [0.0]
    limited = RateLimitedLogger(logging.getLogger("filterd.test"), 10.0, clock=lambda: now[0])
    other = RateLimitedLogger(logging.getLogger("filterd.test2"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            limited.log("bad", "bad input %s", "x")
            other.log("worse", "worse input")
        assert len(caplog.records) == 2  # the first of each; four held back
        service = Service(load_config(None, env={"FILTERD_METRICS_ENABLED": "false"}))
        await service.shutdown()
    held = [r for r in caplog.records if getattr(r, "suppressed", 0)]
    assert sorted((r.name, r.suppressed) for r in held) == [  # type: ignore[attr-defined]
        ("filterd.test", 2),
        ("filterd.test2", 2),
    ]


def test_json_fields_are_json_keys_and_leave_the_text_line_as_it_is() -> None:
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    logging.getLogger("filterd.service").info(
        "shutdown ◆ %d records", 7, extra=json_fields(event="shutdown", records=7, block=2)
    )
    entry = json.loads(out.getvalue())
    assert (entry["event"], entry["records"], entry["block"]) == ("shutdown", 7, 2)
    assert "json_fields" not in entry
    assert "worker" not in entry

    text = io.StringIO()
    setup_logging("text", "INFO", stream=text)
    logging.getLogger("filterd.service").info(
        "shutdown ◆ %d records", 7, extra=json_fields(records=7)
    )
    assert text.getvalue().rstrip("\n").endswith(" INFO    filterd.service: shutdown ◆ 7 records")


def test_each_worker_says_which_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILTERD__WORKER_INDEX", "1")
    text = io.StringIO()
    setup_logging("text", "INFO", stream=text)
    logging.getLogger("filterd.service").info("started")
    assert text.getvalue().rstrip("\n").endswith(" INFO    [w1] filterd.service: started")
    out = io.StringIO()
    setup_logging("json", "INFO", stream=out)
    logging.getLogger("filterd.service").info("started")
    assert json.loads(out.getvalue())["worker"] == 1

    monkeypatch.delenv("FILTERD__WORKER_INDEX")
    single = io.StringIO()
    setup_logging("text", "INFO", stream=single)
    logging.getLogger("filterd.service").info("started")
    assert " INFO    filterd.service: started" in single.getvalue()


async def test_shutdown_and_swap_lines_carry_their_counts_as_fields(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from filterd.config import load_config
    from filterd.service import Service
    from filterd.snapshot import SnapshotWatcher
    from tests.snapshot.test_watcher import _build

    root = tmp_path / "snap"
    version = _build(tmp_path, root, 1)
    with caplog.at_level(logging.INFO):
        watcher = SnapshotWatcher(root, 60)
        await watcher.start()
        await watcher.stop()
        service = Service(load_config(None, env={"FILTERD_METRICS_ENABLED": "false"}))
        await service.shutdown()
    (swap,) = [r for r in caplog.records if "in force" in r.getMessage()]
    fields = swap.json_fields  # type: ignore[attr-defined]
    assert fields["event"] == "snapshot_swap"
    assert fields["snapshot"] == version
    assert fields["previous"] is None
    assert (fields["senders"], fields["consents"]) == (1, 1)
    assert fields["load_s"] >= 0
    (stop,) = [r for r in caplog.records if r.getMessage().startswith("shutdown")]
    assert stop.json_fields == {  # type: ignore[attr-defined]
        "event": "shutdown",
        "records": 0,
        "batches": 0,
        "deliver": 0,
        "block": 0,
        "invalid": 0,
        "elapsed_s": stop.json_fields["elapsed_s"],  # type: ignore[attr-defined]
    }
