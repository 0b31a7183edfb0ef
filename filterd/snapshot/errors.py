"""Typed snapshot errors: all are :class:`filterd.errors.SnapshotError`."""

from __future__ import annotations

from filterd.errors import SnapshotError

__all__ = ["SignatureError", "SnapshotCorrupt", "SnapshotInputError", "SnapshotNotFound"]


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


class SignatureError(SnapshotError):
    """A version is unsigned, signed by another key, or its signature does not verify."""
