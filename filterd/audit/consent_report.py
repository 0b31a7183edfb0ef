"""The audit report's evidence sections: consent that does not count, provenance, glossary.

:func:`filterd.audit.report.render_report` places these after its charts. They
are tables, not charts, so that they print: a regulator's case file is paper.

* a per-sender table of blocks by reason;
* the senders relying on consent that does not count: their
  ``consent-not-explicit`` and ``consent-expired`` blocks, their messages sent as
  an exempt category with a marketing text, and the snapshot build's count of
  their refused consent rows by method (``refused.json`` of the version);
* the provenance of every snapshot version that decided: build time, counts,
  the inputs with their SHA-256, the accepted methods, the refused rows;
* a glossary of the reason codes.

Partial: the report reads the block topic (and the invalid one with
``--invalid``), not the deliver topic, so it has no per-sender delivered counts
and block rates yet, and invalid records still share the totals table with the
blocks.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from filterd.audit.aggregate import Summary

__all__ = ["GLOSSARY", "consent_sections", "load_versions"]

#: Every reason code, as docs/contract.md defines it, in one line each.
GLOSSARY: Mapping[str, str] = {
    "consent": "delivered: the recipient gave this sender a valid consent of an accepted method",
    "exempt-category": "delivered: a category exempt from consent (e.g. verification codes)",
    "opted-out": "blocked: the recipient opted out of this sender, or of every sender",
    "consent-expired": "blocked: the sender's accepted consent had expired at the message's time",
    "consent-not-explicit": "blocked: the sender only holds consents obtained by a method that "
    "does not count (e.g. default registration, pre-ticked boxes, a third party's)",
    "unknown-sender": "blocked: the sender has no consent or opt-out at all in the snapshot",
    "recipient-dnd": "blocked: the recipient is on the do-not-disturb list",
    "no-consent": "blocked: no consent of this recipient for this sender",
    "quiet-hours": "blocked: a message needing consent, inside the quiet hours of the "
    "recipient's local time",
    "frequency-cap": "blocked: it would exceed a cap rule, or the max_per_day its consent states",
    "monitored": "delivered: a block reason in monitor mode (filterd-would-block names it)",
    "oversized": "invalid: the event is larger than the size limit",
    "malformed-json": "invalid: not JSON, or not a JSON object",
    "missing-field": "invalid: no id, sender or recipient, or an empty one",
    "bad-field-type": "invalid: a field of the wrong type",
    "bad-recipient": "invalid: the recipient is not a phone number",
    "internal-error": "invalid: the decision failed (a bug); the record was kept",
}
_EVIDENCE_REASONS = ("consent-not-explicit", "consent-expired")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    from filterd.audit.report import _table as table

    return table(headers, rows, numeric)


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
    return ", ".join(f"{k} {v}" for k, v in counts.items()) if isinstance(counts, dict) else ""


def _by_method(counts: object) -> str:
    if not isinstance(counts, dict) or not counts:
        return "none"
    return ", ".join(f"{m or '(empty)'} {n}" for m, n in counts.items())


def _count(summary: Summary, sender: str, reason: str) -> int:
    counts = summary.by_sender.get(sender)
    return 0 if counts is None else counts.get(reason, 0)


def consent_sections(summary: Summary, versions: Mapping[str, dict[str, object]], top: int) -> str:
    """The HTML of the evidence sections."""
    out: list[str] = []
    reasons = [r for r, _ in summary.by_reason.most_common()]
    senders = summary.top_senders(top)
    out += [
        f"<section><h2>Blocks per sender by reason (top {top})</h2>",
        _table(
            ("sender", "total", *reasons),
            [(s.sender, s.total, *(s.by_reason.get(r, 0) for r in reasons)) for s in senders],
            set(range(1, len(reasons) + 2)),
        )
        if senders
        else "<p>No records.</p>",
        "</section>",
    ]
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
                f"<p><strong>{_e(version)}</strong>: decided {summary.by_snapshot[version]} "
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
            f"{summary.by_snapshot[version]} records. Counts: "
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
            + ".</p>"
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
                )
            )
    out.append("</section>")
    out += [
        "<section><h2>Reason codes</h2>",
        _table(("reason", "meaning"), list(GLOSSARY.items()), set()),
        "</section>",
    ]
    return "\n".join(out)
