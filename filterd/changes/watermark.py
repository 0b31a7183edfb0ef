"""The change watermark a snapshot carries in its manifest.

``"change_watermark": {"topic": "sms.consent-changes", "offsets": {"0": 120, "1": 98}}``:
per partition of the changes topic, the next offset the snapshot has not folded in. A
snapshot without one (or with another topic's) folded in nothing: the feed reads the
changes topic from the beginning.

``filterd snapshot compact`` (:mod:`filterd.snapshot.compact`) writes it with
:func:`manifest_entry`; the feed reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["MANIFEST_KEY", "manifest_entry", "watermark_of"]

MANIFEST_KEY: Final = "change_watermark"


def watermark_of(manifest: Mapping[str, object] | None, topic: str) -> dict[int, int]:
    """Next offset per partition of ``topic`` that the snapshot has not folded in."""
    entry = (manifest or {}).get(MANIFEST_KEY)
    if not isinstance(entry, dict) or entry.get("topic") != topic:
        return {}
    offsets = entry.get("offsets")
    if not isinstance(offsets, dict):
        return {}
    return {int(p): int(o) for p, o in offsets.items()}


def manifest_entry(topic: str, watermark: Mapping[int, int]) -> dict[str, object]:
    """The manifest value for ``watermark`` of ``topic``."""
    return {"topic": topic, "offsets": {str(p): o for p, o in sorted(watermark.items())}}
