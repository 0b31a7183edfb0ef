"""Typed snapshot errors: all are :class:`filterd.errors.SnapshotError`."""

from __future__ import annotations

from typing import NamedTuple

from filterd.errors import SnapshotError

__all__ = [
    "BadRow",
    "SignatureError",
    "SnapshotCorrupt",
    "SnapshotInputError",
    "SnapshotNotFound",
    "SnapshotRowsRejected",
]

#: Bad rows listed in an error message at most; the rest are counted.
LISTED_REJECTS = 100


class SnapshotNotFound(SnapshotError):
    """No snapshot is published under the root, or the named version does not exist."""


class SnapshotCorrupt(SnapshotError):
    """A published snapshot fails validation: a file is missing, truncated or altered.

    ``problems`` lists every check that failed, each naming the file.
    """

    def __init__(self, version: str, problems: list[str]) -> None:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        super().__init__(f"snapshot {version} is invalid: {shown}")
        self.version = version
        self.problems = problems


class SnapshotInputError(SnapshotError):
    """A row of a build input is bad; nothing was published."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class BadRow(NamedTuple):
    """A bad row of a build input: where it is, why it is bad, its text."""

    path: str
    line: int
    reason: str
    row: str


class SnapshotRowsRejected(SnapshotInputError):
    """More input rows are bad than ``--max-rejects`` allows; nothing was published.

    ``rows`` lists every bad row; the message lists the first
    :data:`LISTED_REJECTS` as ``file:line: reason`` and counts the rest. One bad
    row with no rejects allowed keeps the one-line ``file:line: reason`` message.
    """

    def __init__(self, rows: list[BadRow], limit: int) -> None:
        first = rows[0]
        super().__init__(first.path, first.line, first.reason)
        self.rows = rows
        self.limit = limit
        if len(rows) > 1 or limit:
            listed = [f"  {r.path}:{r.line}: {r.reason}" for r in rows[:LISTED_REJECTS]]
            if len(rows) > LISTED_REJECTS:
                listed.append(f"  ... and {len(rows) - LISTED_REJECTS} more")
            self.args = (
                f"{len(rows)} bad input rows, more than --max-rejects {limit} allows;"
                " nothing was published:\n" + "\n".join(listed),
            )

    def __str__(self) -> str:
        return str(self.args[0])


class SignatureError(SnapshotError):
    """A version is unsigned, signed by another key, or its signature does not verify."""
