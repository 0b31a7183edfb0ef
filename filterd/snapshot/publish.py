"""Publishing a built version: the guards between a registry export and the live pointer.

A header-only or truncated export builds a perfectly valid, nearly empty version; published,
it would be hot-swapped by every running filterd within seconds and block every marketing
message (or, for opt-outs, deliver to people who opted out). So a version becomes current
only when it is not empty and none of its consents, opt-outs or do-not-disturb numbers
dropped by more than ``max_drop`` (a fraction) against the version in force; otherwise
:class:`PublishRefused` says what dropped and by how much, the version stays built but
unpublished, and ``current`` is left alone. ``force`` publishes anyway (logged).

``filterd snapshot build`` publishes through :func:`publish_version`, and so does
``filterd snapshot publish ROOT VERSION`` for a version built with ``--no-publish``
(docs/operations.md, "Publishing snapshots").
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from filterd.errors import SnapshotError
from filterd.snapshot import format as fmt

__all__ = ["DEFAULT_MAX_DROP", "PublishRefused", "publish_version"]

log = logging.getLogger(__name__)

#: ``--max-drop``: the largest fraction a count may fall by without ``--force``.
DEFAULT_MAX_DROP = 0.5

#: The counts compared, with the words the refusal uses.
_GUARDED = (("consents", "consents"), ("optouts", "opt-outs"), ("dnd", "do-not-disturb numbers"))


class PublishRefused(SnapshotError):
    """A guard kept a built version from becoming current (exit status 3)."""

    exit_code = 3


def _counts(root: Path, version: str) -> dict[str, int]:
    try:
        manifest = orjson.loads((root / version / fmt.MANIFEST).read_bytes())
        counts = manifest["counts"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise SnapshotError(f"version {version}: unreadable manifest: {exc}") from exc
    # Opt-outs of every sender count with the opt-outs: dropping them opens gates too.
    return {
        "consents": int(counts.get("consents", 0)) + int(counts.get("terms", 0)),
        "optouts": int(counts.get("optouts", 0)) + int(counts.get("global_optouts", 0)),
        "dnd": int(counts.get("dnd", 0)),
    }


def check_publish(root: Path, version: str, max_drop: float = DEFAULT_MAX_DROP) -> None:
    """Raise :class:`PublishRefused` if ``version`` must not replace the one in force."""
    if not 0 <= max_drop <= 1:
        raise SnapshotError(f"--max-drop must be between 0 and 1, got {max_drop}")
    new = _counts(root, version)
    if new["consents"] == 0 and new["optouts"] == 0:
        raise PublishRefused(
            f"not published: version {version} is empty (0 consents, 0 opt-outs): "
            "a header-only or truncated export?"
        )
    current = fmt.current_version(root)
    if current is None or current == version:
        return
    old = _counts(root, current)
    drops = [
        f"{words} dropped by {1 - new[key] / old[key]:.0%} ({old[key]:,} -> {new[key]:,})"
        for key, words in _GUARDED
        if old[key] and new[key] < old[key] * (1 - max_drop)
    ]
    if drops:
        raise PublishRefused(
            f"not published: {'; '.join(drops)} against {current} in force "
            f"(--max-drop {max_drop:g}); {version} is kept unpublished"
        )


def publish_version(
    root: Path, version: str, *, max_drop: float = DEFAULT_MAX_DROP, force: bool = False
) -> None:
    """Make ``version`` current through the guards (``force`` overrides them, logged)."""
    root = Path(root)
    fmt.resolve_version(root, version)  # exists
    try:
        check_publish(root, version, max_drop)
    except PublishRefused as exc:
        if not force:
            raise
        log.warning("publishing %s despite the guard (--force): %s", version, exc)
    fmt.publish_pointer(root, version)
