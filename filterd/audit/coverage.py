"""What an audit result covers: its time range, zone and late margin.

Every audit output states the range it read (``--from``/``--to`` in the
chosen ``--tz``) and the late margin, and warns when records stamped inside
the range were found past that margin, naming the ``--late-ms`` that would
have read them: an undercount is never silent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import tzinfo

from filterd.audit.reader import NO_LATE, LateRecords
from filterd.audit.timeutil import TimeRange, format_ms


@dataclass(frozen=True, slots=True)
class Coverage:
    """The range an audit read, and what its late margin missed."""

    time_range: TimeRange
    tz: tzinfo
    #: How the zone was given (``+08:00``, ``Asia/Shanghai``).
    tz_label: str
    late_ms: int
    late: LateRecords = NO_LATE

    @property
    def start_text(self) -> str:
        start = self.time_range.start_ms
        return format_ms(start, self.tz) if start is not None else "the first retained record"

    @property
    def end_text(self) -> str:
        end = self.time_range.end_ms
        return (
            format_ms(end, self.tz)
            if end is not None
            else "the end offsets at the start of the read"
        )

    def describe(self) -> str:
        """One line: the range, the zone and the late margin."""
        margin = (
            f"read --late-ms {self.late_ms} past --to for records stamped out of order"
            if self.time_range.end_ms is not None
            else "no --to, so no late margin"
        )
        return (
            f"range: from {self.start_text} (inclusive) to {self.end_text} (exclusive), "
            f"--tz {self.tz_label}; {margin}"
        )

    @property
    def suggested_late_ms(self) -> int:
        """A ``--late-ms`` that reaches the late records found (whole seconds)."""
        return max(self.late_ms, -(-self.late.needed_ms // 1000) * 1000)

    def warning(self) -> str | None:
        """The undercount warning, or None when no late record was found."""
        if not self.late.records:
            return None
        return (
            f"warning: at least {self.late.records} records stamped inside the range were "
            f"found past the --late-ms {self.late_ms} margin and are not counted; "
            f"re-run with --late-ms {self.suggested_late_ms}"
        )

    def to_json(self) -> dict[str, object]:
        """The ``range`` object of JSON outputs."""
        return {
            "from": self.start_text if self.time_range.start_ms is not None else None,
            "to": self.end_text if self.time_range.end_ms is not None else None,
            "tz": self.tz_label,
            "late_ms": self.late_ms,
            "late_beyond_margin": self.late.records,
            "suggested_late_ms": self.suggested_late_ms if self.late.records else None,
            "warning": self.warning(),
        }

    def csv_rows(self) -> list[tuple[str, str, str, object]]:
        """``section,key,reason,count`` rows of the summary CSV."""
        doc = self.to_json()
        return [("range", key, "", "" if value is None else value) for key, value in doc.items()]
