package io.filterd.peer;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;

/** Every (route, reason) of the contract, with its two headers encoded once. */
enum Outcome {
    CONSENT("deliver", "consent"),
    EXEMPT_CATEGORY("deliver", "exempt-category"),
    OPTED_OUT("block", "opted-out"),
    UNKNOWN_SENDER("block", "unknown-sender"),
    RECIPIENT_DND("block", "recipient-dnd"),
    NO_CONSENT("block", "no-consent"),
    OVERSIZED("invalid", "oversized"),
    MALFORMED_JSON("invalid", "malformed-json"),
    MISSING_FIELD("invalid", "missing-field"),
    BAD_FIELD_TYPE("invalid", "bad-field-type"),
    BAD_RECIPIENT("invalid", "bad-recipient"),
    INTERNAL_ERROR("invalid", "internal-error");

    final String route;
    final String reason;
    final Header routeHeader;
    final Header reasonHeader;

    Outcome(String route, String reason) {
        this.route = route;
        this.reason = reason;
        this.routeHeader = new RecordHeader("filterd-route", route.getBytes(StandardCharsets.US_ASCII));
        this.reasonHeader = new RecordHeader("filterd-reason", reason.getBytes(StandardCharsets.US_ASCII));
    }
}
