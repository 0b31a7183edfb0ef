"""Logging set-up: human-readable lines by default, JSON lines on request.

``[logging] format = "json"`` switches every logger in the process (filterd's
and aiokafka's) to one JSON object per line; nothing else changes, because
modules only ever call ``logging.getLogger(__name__)``. Extra fields passed as
``extra={...}`` become JSON keys (and ``key=value`` suffixes in text); fields
given with :func:`json_fields` become JSON keys only, which is how the shutdown
summary and snapshot swaps carry their numbers in a machine-readable way while
their text lines stay as they are. Under ``filterd run --workers N`` every line
says which worker wrote it (``[w1]`` in text, ``"worker": 1`` in JSON).
"""

from __future__ import annotations

import logging
import sys
import time
import weakref
from collections.abc import Callable
from typing import TextIO

import orjson

from filterd.config import LogFormat

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


#: The ``extra`` key of fields that JSON lines carry as keys and text lines leave out.
JSON_FIELDS = "json_fields"


def json_fields(**fields: object) -> dict[str, object]:
    """``extra=`` for numbers a text line already says in words: JSON lines get them as keys
    (``log.info("shutdown ◆ %d records", n, extra=json_fields(records=n))``), the text line
    stays as it is."""
    return {JSON_FIELDS: fields}


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and k != JSON_FIELDS
    }


def _timestamp(created: float) -> str:
    # UTC with milliseconds, the form log shippers parse without configuration.
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-01-01T12:00:00.123Z INFO    filterd.service: message key=value``; a worker of
    ``filterd run --workers N`` says which: ``INFO    [w1] filterd.service: ...``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._tag = f"[w{worker}] " if worker is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname:<7} {self._tag}{record.name}: "
            f"{record.getMessage()}"
        )
        extras = _extra_fields(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``worker`` (under
    ``--workers N``), extra fields, ``exc``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        fields = record.__dict__.get(JSON_FIELDS)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(str(key), value)
        for key, value in _extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field orjson cannot encode still gets logged.
        return orjson.dumps(entry, default=str).decode()


class _FilterdHandler(logging.StreamHandler[TextIO]):
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(
    format: LogFormat | str = "text", level: str | int = "INFO", *, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to ``stream`` (default stderr) in ``format``.

    ``format`` is ``"text"`` or ``"json"`` (``[logging] format``), ``level``
    a level name or number (``[logging] level``). Calling it again replaces
    the handler it installed before. Returns the handler.
    """
    from filterd.supervisor import worker_index

    worker = worker_index()
    if format == "text":
        formatter: logging.Formatter = TextFormatter(worker)
    elif format == "json":
        formatter = JsonFormatter(worker)
    else:
        raise ValueError(f"unknown log format {format!r}: expected 'text' or 'json'")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _FilterdHandler)]:
        root.removeHandler(old)
    handler = _FilterdHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


#: Every RateLimitedLogger alive, for :func:`flush_rate_limited` at shutdown.
_RATE_LIMITED: weakref.WeakSet[RateLimitedLogger] = weakref.WeakSet()


def flush_rate_limited() -> None:
    """Write the lines every :class:`RateLimitedLogger` still holds back (at shutdown)."""
    for limited in list(_RATE_LIMITED):
        limited.flush()


class RateLimitedLogger:
    """Logs at most one line per ``interval`` seconds for each key, counting the rest.

    For bursts of bad input: a producer sending garbage at 10 000 events/s must
    not turn the log into a second copy of the invalid topic. The first call
    for a key logs at once; calls within the next ``interval`` seconds are
    counted, and the next line that gets through says how many events were
    suppressed (``suppressed`` extra field). :meth:`flush` logs what is still
    pending; the service calls :func:`flush_rate_limited` at shutdown, which
    flushes every instance.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._pending: dict[str, tuple[str, tuple[object, ...]]] = {}
        _RATE_LIMITED.add(self)

    def log(self, key: str, msg: str, *args: object, events: int = 1) -> bool:
        """Log ``msg % args`` unless ``key`` logged less than ``interval`` ago.

        ``events`` is how many bad events this call stands for (a batch may
        report several at once). Returns whether a line was written.
        """
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + events
            self._pending[key] = (msg, args)
            return False
        suppressed = self._suppressed.pop(key, 0)
        self._pending.pop(key, None)
        self._last[key] = now
        self._emit(key, msg, args, events, suppressed)
        return True

    def flush(self) -> None:
        """Log one line per key that still has suppressed events."""
        for key, (msg, args) in list(self._pending.items()):
            suppressed = self._suppressed.pop(key, 0)
            del self._pending[key]
            self._emit(key, msg, args, 0, suppressed)

    def _emit(
        self, key: str, msg: str, args: tuple[object, ...], events: int, suppressed: int
    ) -> None:
        if suppressed:
            msg += " (%d more suppressed in the last %.0fs)"
            args = (*args, suppressed, self.interval)
        self.logger.log(
            self.level,
            msg,
            *args,
            extra={"key": key, "events": events, "suppressed": suppressed},
        )
