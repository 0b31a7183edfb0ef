"""Every reason code an output record may carry, with its route and meaning, in one table.

The audit's glossary, its per-reason tables and ``export --reason`` validation all
read :data:`REASON_TABLE`, so a new rule's reason appears everywhere by adding one
entry here (``tests/audit/test_reasons.py`` checks that every outcome of
:data:`filterd.router.REASONS` has one). Codes of rules the contract describes but
that are not enabled yet are listed too, so that an auditor's query for them keeps
working when they arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

__all__ = ["BLOCK_REASONS", "GLOSSARY", "REASON_TABLE", "Reason", "route_of"]


class Reason(NamedTuple):
    """One reason code of docs/contract.md."""

    code: str
    #: ``deliver``, ``block`` or ``invalid``.
    route: str
    #: One line for the report's glossary.
    meaning: str


#: In the contract's order: deliveries, blocks (steps 3 and 4), invalid records.
REASON_TABLE: Final[tuple[Reason, ...]] = (
    Reason(
        "consent", "deliver", "the recipient gave this sender a valid consent of an accepted method"
    ),
    Reason(
        "exempt-category", "deliver", "a category exempt from consent (e.g. verification codes)"
    ),
    Reason(
        "monitored",
        "deliver",
        "a block reason listed in [policy] monitor applied: delivered, "
        "the reason it would have blocked is in filterd-would-block",
    ),
    Reason("opted-out", "block", "the recipient opted out of this sender, or of every sender (*)"),
    Reason(
        "consent-expired",
        "block",
        "the sender's accepted consent had expired at the message's time",
    ),
    Reason(
        "consent-not-explicit",
        "block",
        "the sender only holds consents obtained by a method that "
        "does not count (e.g. default registration, pre-ticked boxes, a third party's)",
    ),
    Reason(
        "unknown-sender", "block", "the sender has no consent or opt-out at all in the snapshot"
    ),
    Reason("recipient-dnd", "block", "the recipient is on the do-not-disturb list"),
    Reason("no-consent", "block", "no consent of this recipient for this sender"),
    Reason(
        "quiet-hours",
        "block",
        "a message needing consent, inside the quiet hours of the recipient's local time",
    ),
    Reason(
        "frequency-cap",
        "block",
        "delivering it would exceed the frequency its consent states (max_per_day) or a cap rule",
    ),
    Reason("oversized", "invalid", "the event is larger than the size limit"),
    Reason("malformed-json", "invalid", "not JSON, or not a JSON object"),
    Reason("missing-field", "invalid", "no id, sender or recipient, or an empty one"),
    Reason("bad-field-type", "invalid", "a field of the wrong type"),
    Reason("bad-recipient", "invalid", "the recipient is not a phone number"),
    Reason("internal-error", "invalid", "the decision failed (a bug); the record was kept"),
)

#: reason code -> meaning, in the table's order.
GLOSSARY: Final[Mapping[str, str]] = {r.code: r.meaning for r in REASON_TABLE}
#: The block reasons, in the table's order (columns of the per-sender tables).
BLOCK_REASONS: Final[tuple[str, ...]] = tuple(r.code for r in REASON_TABLE if r.route == "block")
_ROUTES: Final[Mapping[str, str]] = {r.code: r.route for r in REASON_TABLE}


def route_of(reason: str) -> str | None:
    """The route of a known reason code, None for any other string."""
    return _ROUTES.get(reason)


def in_table_order(reasons: set[str] | frozenset[str]) -> list[str]:
    """``reasons`` in the table's order, unknown strings (a record without the
    header, a reason from a newer filterd) after them, sorted."""
    known = [r.code for r in REASON_TABLE if r.code in reasons]
    return known + sorted(reasons.difference(_ROUTES))
