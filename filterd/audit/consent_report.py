"""The audit report's evidence sections: consent that does not count, provenance, glossary.

:func:`filterd.audit.report.render_report` places these after its charts. They
are tables, not charts, so that they print: a regulator's case file is paper.

* the senders relying on consent that does not count: their
  ``consent-not-explicit`` and ``consent-expired`` blocks, their messages sent as
  an exempt category with a marketing text, and the snapshot build's count of
  their refused consent rows by method (``refused.json`` of the version);
* the provenance of every snapshot version that decided: build time, counts,
  the inputs with their SHA-256, the accepted methods, the refused rows;
* a glossary of the reason codes (:data:`filterd.audit.reasons.REASON_TABLE`).

The per-sender table of delivered and blocked messages is :mod:`filterd.audit.rates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from filterd.audit.aggregate import Summary
from filterd.audit.reasons import REASON_TABLE
from filterd.audit.tables import escape, html_table

__all__ = ["consent_sections", "load_versions"]

_EVIDENCE_REASONS = ("consent-not-explicit", "consent-expired")


_e = escape
_table = html_table


def load_versions(root: Path | None, versions: Sequence[str]) -> dict[str, dict[str, object]]:
    """Manifest and refused-row report of each version still under ``root``.

    A version that is gone (pruned) or unreadable is left out; the report says so.
    """
    found: dict[str, dict[str, object]] = {}
    if root is None:
        return found
    for version in versions:
        vdir = Path(root) / version
        try:
            manifest = orjson.loads((vdir / "manifest.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if not isinstance(manifest, dict):
            continue
        try:
            refused = orjson.loads((vdir / "refused.json").read_bytes())
        except (OSError, orjson.JSONDecodeError):
            refused = None
        found[version] = {"manifest": manifest, "refused": refused}
    return found


def _pairs(counts: object) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in counts.items()) if isinstance(counts, dict) else ""


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _by_method(counts: object) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{m or '(empty)'} {_n(n)}" for m, n in counts.items())


def _count(summary: Summary, sender: str, reason: str) -> int:
    counts = summary.by_sender.get(sender)
    return 0 if counts is None else counts.get(reason, 0)


def _granted_text(manifest: dict[str, object]) -> str:
    """Whether the version keeps granted_at per consent row (``filterd snapshot evidence``)."""
    from filterd.snapshot.granted import GRANTED

    files = manifest.get("files")
    entry = files.get(GRANTED) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        return "Per-row consent evidence: none (the consents file had no granted_at column)."
    return (
        f"Per-row consent evidence: {GRANTED}, {_n(entry.get('bytes'))} bytes, sha256 "
        f"<code>{_e(entry.get('sha256'))}</code> (<code>filterd snapshot evidence</code>)."
    )


def consent_sections(summary: Summary, versions: Mapping[str, dict[str, object]], top: int) -> str:
    """The HTML of the evidence sections."""
    out: list[str] = []
    # The newest version that decided and still has its refused-row report.
    refused_by_sender: dict[str, object] = {}
    source: str | None = None
    for version in sorted(versions, reverse=True):
        refused = versions[version].get("refused")
        if isinstance(refused, dict) and isinstance(refused.get("by_sender"), dict):
            refused_by_sender, source = refused["by_sender"], version
            break
    relying = sorted(
        {
            s
            for s, counts in summary.by_sender.items()
            if any(counts.get(r) for r in _EVIDENCE_REASONS)
        }
        | set(summary.declared_by_sender)
        | set(refused_by_sender)
    )
    rows = [
        (
            sender,
            _count(summary, sender, "consent-not-explicit"),
            _count(summary, sender, "consent-expired"),
            summary.declared_by_sender.get(sender, 0),
            _by_method(refused_by_sender.get(sender)),
        )
        for sender in relying
    ]
    rows.sort(key=lambda row: (-(row[1] + row[2] + row[3]), row[0]))
    out += [
        "<section><h2>Senders relying on consent that does not count</h2>",
        '<p class="note">Blocked as <code>consent-not-explicit</code> (only consents of a method '
        "that does not count: PIPL art. 14 wants consent voluntary, explicit and informed, art. 23 "
        "a third party's own), <code>consent-expired</code>, and messages sent as an exempt "
        "category whose text carried a marketing marker (decided as marketing). Refused consent "
        "rows are the snapshot build's count of the sender's consents of methods not accepted"
        + (f", from version {_e(source)}" if source else ": no version in this report has one")
        + ".</p>",
        _table(
            (
                "sender",
                "consent-not-explicit",
                "consent-expired",
                "disguised as exempt",
                "refused consent rows by method",
            ),
            rows,
            {1, 2, 3},
        )
        if rows
        else "<p>None in this period.</p>",
        "</section>",
    ]
    out.append("<section><h2>Snapshot provenance</h2>")
    for version in sorted(summary.by_snapshot):
        entry = versions.get(version)
        if entry is None:
            out.append(
                f"<p><strong>{_e(version)}</strong>: decided {summary.by_snapshot[version]:,} "
                "records; its files are no longer under the snapshot root.</p>"
            )
            continue
        manifest = entry["manifest"]
        assert isinstance(manifest, dict)
        counts = manifest.get("counts", {})
        refused = manifest.get("refused_rows", {})
        accept = manifest.get("accept_methods")
        out.append(
            f"<p><strong>{_e(version)}</strong>: built {_e(manifest.get('created_at'))}, decided "
            f"{summary.by_snapshot[version]:,} records. Counts: "
            + _e(_pairs(counts))
            + ". Accepted methods: "
            + _e(", ".join(accept) if isinstance(accept, list) else "all (format 1)")
            + (
                ""
                if manifest.get("method_column", True)
                else " (the consents file had no method column: every row counted)"
            )
            + ". Refused consent rows: "
            + _e(_by_method(refused.get("by_method") if isinstance(refused, dict) else None))
            + ". "
            + _granted_text(manifest)
            + "</p>"
        )
        inputs = manifest.get("inputs")
        if isinstance(inputs, list):
            out.append(
                _table(
                    ("input", "file", "rows", "sha256"),
                    [
                        (i.get("kind"), i.get("path"), i.get("rows"), i.get("sha256"))
                        for i in inputs
                        if isinstance(i, dict)
                    ],
                    {2},
                    wrap={1, 3},
                )
            )
    out.append("</section>")
    out += [
        "<section><h2>Reason codes</h2>",
        html_table(
            ("reason", "route", "meaning"),
            [tuple(r) for r in REASON_TABLE],
            set(),
            css_class="codes",
        ),
        "</section>",
    ]
    return "\n".join(out)
