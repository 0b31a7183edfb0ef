"""Live consent changes (docs/contract.md "Live consent changes").

:mod:`filterd.changes.model` parses one change record of the changes topic;
:mod:`filterd.changes.overlay` holds the changes not yet folded into the
snapshot in force and answers the decision's questions about them.
"""

from __future__ import annotations

from filterd.changes.model import OPS, BadChange, Change, ChangeRef, parse_change
from filterd.changes.overlay import Overlay

__all__ = ["OPS", "BadChange", "Change", "ChangeRef", "Overlay", "parse_change"]
