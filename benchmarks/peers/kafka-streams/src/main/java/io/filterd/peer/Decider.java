package io.filterd.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import java.io.IOException;
import java.math.BigInteger;
import java.util.Map;

/**
 * The decision of the contract (steps 1 and 3): one record value in, one {@link Outcome} out.
 *
 * <p>The value is read with Jackson's streaming parser, token by token: no tree, no
 * per-record maps. Step 1 says "not JSON" is {@code malformed-json}, and filterd parses with
 * orjson, which is strict RFC 8259 plus a few limits of its own; Jackson's defaults are
 * strict too but differ from orjson at the edges, so the whole value is read and these
 * differences are closed explicitly (each one is a case of the correctness gate):
 *
 * <ul>
 *   <li>invalid UTF-8 anywhere, a UTF-8 byte-order mark, or a NUL byte: malformed (orjson
 *       validates the whole input; Jackson only the strings it decodes, and it guesses
 *       UTF-16/32 from NUL bytes);
 *   <li>a {@code \\u} escape that leaves a lone surrogate: malformed (Jackson accepts it);
 *   <li>a number that is infinite as a double ({@code 1e400}, 400 digits): malformed; an
 *       integer outside [-2^63, 2^64) is a float to orjson, so not an integer {@code ts};
 *   <li>nesting deeper than 1024: malformed (orjson's limit); Jackson's limits on name and
 *       number lengths are lifted (orjson has none).
 * </ul>
 *
 * <p>Fields: a JSON {@code null} counts as absent; required fields that are only white space
 * (Python's {@code str.isspace}) count as missing; the sender is looked up after trimming
 * (Python's {@code str.strip}); the category is looked up exactly.
 */
final class Decider {
    private static final BigInteger U64_MAX = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);
    private static final BigInteger I64_MIN = BigInteger.valueOf(Long.MIN_VALUE);

    // What a field held: absent or null (both None to filterd), a string, an integer, other.
    private static final int NONE = 0;
    private static final int STRING = 1;
    private static final int INTEGER = 2;
    private static final int OTHER = 3;

    // The six fields of an event.
    private static final int ID = 0;
    private static final int SENDER = 1;
    private static final int RECIPIENT = 2;
    private static final int CATEGORY = 3;
    private static final int TEXT = 4;
    private static final int TS = 5;

    private final JsonFactory json;
    private final Snapshot snapshot;
    private final String countryCode;
    private final int maxEventBytes;
    private final Map<String, Boolean> exempt;
    private final boolean defaultExempt;
    private final boolean nfkc;

    Decider(Snapshot snapshot, Policy policy) {
        this.json = JsonFactory.builder()
                .streamReadConstraints(StreamReadConstraints.builder()
                        .maxNestingDepth(1024)
                        .maxNumberLength(Integer.MAX_VALUE)
                        .maxNameLength(Integer.MAX_VALUE)
                        .maxStringLength(Integer.MAX_VALUE)
                        .build())
                .build();
        this.snapshot = snapshot;
        this.countryCode = policy.countryCode;
        this.maxEventBytes = policy.maxEventBytes;
        this.exempt = policy.exempt;
        this.defaultExempt = policy.defaultExempt;
        this.nfkc = policy.nfkc;
    }

    /** Route one record value. Never throws: a bug becomes {@code internal-error}. */
    Outcome decide(byte[] value) {
        try {
            if (value == null) {
                return Outcome.MALFORMED_JSON;
            }
            if (value.length > maxEventBytes) {
                return Outcome.OVERSIZED;
            }
            int scan = Utf8.scan(value);
            if (scan == Utf8.BAD) {
                return Outcome.MALFORMED_JSON;
            }
            return decideJson(value, scan == Utf8.SURROGATE_ESCAPE);
        } catch (RuntimeException e) {
            return Outcome.INTERNAL_ERROR;
        }
    }

    private Outcome decideJson(byte[] value, boolean checkSurrogates) {
        int idKind = NONE, senderKind = NONE, recipientKind = NONE;
        int categoryKind = NONE, textKind = NONE, tsKind = NONE;
        String id = null, sender = null, recipient = null, category = null;
        try (JsonParser p = json.createParser(value)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return Outcome.MALFORMED_JSON;
            }
            JsonToken t;
            while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                if (checkSurrogates && Utf8.loneSurrogate(name)) {
                    return Outcome.MALFORMED_JSON;
                }
                int field = switch (name) {
                    case "id" -> ID;
                    case "sender" -> SENDER;
                    case "recipient" -> RECIPIENT;
                    case "category" -> CATEGORY;
                    case "text" -> TEXT;
                    case "ts" -> TS;
                    default -> -1;
                };
                t = p.nextToken();
                int kind;
                String text = null;
                if (t == JsonToken.VALUE_STRING) {
                    if (field >= ID && field <= CATEGORY) {
                        text = p.getText();
                        if (checkSurrogates && Utf8.loneSurrogate(text)) {
                            return Outcome.MALFORMED_JSON;
                        }
                    } else if (!stringOk(p, checkSurrogates)) {
                        return Outcome.MALFORMED_JSON;
                    }
                    kind = STRING;
                } else if (t == JsonToken.VALUE_NULL) {
                    kind = NONE;
                } else if (t == JsonToken.VALUE_NUMBER_INT) {
                    kind = integerKind(p);
                    if (kind < 0) {
                        return Outcome.MALFORMED_JSON;
                    }
                } else {
                    if (!skipValue(p, t, checkSurrogates)) {
                        return Outcome.MALFORMED_JSON;
                    }
                    kind = OTHER;
                }
                switch (field) {
                    case ID -> { idKind = kind; id = text; }
                    case SENDER -> { senderKind = kind; sender = text; }
                    case RECIPIENT -> { recipientKind = kind; recipient = text; }
                    case CATEGORY -> { categoryKind = kind; category = text; }
                    case TEXT -> textKind = kind;
                    case TS -> tsKind = kind;
                    default -> { }
                }
            }
            if (t != JsonToken.END_OBJECT || p.nextToken() != null) {
                return Outcome.MALFORMED_JSON;
            }
        } catch (IOException e) {
            // JsonParseException, StreamConstraintsException, and the reader's own errors.
            return Outcome.MALFORMED_JSON;
        }
        if (idKind == STRING && senderKind == STRING && recipientKind == STRING) {
            sender = PyText.strip(sender);
            if (sender.isEmpty() || PyText.isBlank(recipient) || PyText.isBlank(id)) {
                return Outcome.MISSING_FIELD;
            }
        } else {
            return missingOrBadType(idKind, id, senderKind, sender, recipientKind, recipient);
        }
        if (categoryKind == NONE) {
            category = "marketing";
        } else if (categoryKind != STRING) {
            return Outcome.BAD_FIELD_TYPE;
        }
        if (textKind != NONE && textKind != STRING) {
            return Outcome.BAD_FIELD_TYPE;
        }
        if (tsKind != NONE && tsKind != INTEGER) {
            return Outcome.BAD_FIELD_TYPE;
        }
        long number = Numbers.normalize(recipient, countryCode, nfkc);
        if (number == Numbers.INVALID) {
            return Outcome.BAD_RECIPIENT;
        }
        Boolean isExempt = exempt.get(category);
        if (isExempt == null ? defaultExempt : isExempt) {
            return Outcome.EXEMPT_CATEGORY;
        }
        // require-consent, first match wins.
        Snapshot.Sender entry = snapshot.senders.get(sender);
        if (entry == null) {
            return Outcome.UNKNOWN_SENDER;
        }
        if (entry.optouts.contains(number)) {
            return Outcome.OPTED_OUT;
        }
        if (entry.consents.contains(number)) {
            return Outcome.CONSENT;
        }
        if (snapshot.dnd.contains(number)) {
            return Outcome.RECIPIENT_DND;
        }
        return Outcome.NO_CONSENT;
    }

    private static Outcome missingOrBadType(
            int idKind, String id, int senderKind, String sender, int recipientKind, String recipient) {
        if (missing(idKind, id) || missing(senderKind, sender) || missing(recipientKind, recipient)) {
            return Outcome.MISSING_FIELD;
        }
        return Outcome.BAD_FIELD_TYPE;
    }

    private static boolean missing(int kind, String value) {
        return kind == NONE || (kind == STRING && PyText.isBlank(value));
    }

    /**
     * Decode the current string (that is what validates its escapes and characters) into the
     * parser's buffer, no String made; false for a lone surrogate.
     */
    private static boolean stringOk(JsonParser p, boolean checkSurrogates) throws IOException {
        char[] chars = p.getTextCharacters();
        return !checkSurrogates || !Utf8.loneSurrogate(chars, p.getTextOffset(), p.getTextLength());
    }

    /** INTEGER, OTHER (a float to orjson), or -1: a number orjson refuses. */
    private static int integerKind(JsonParser p) throws IOException {
        JsonParser.NumberType type = p.getNumberType();
        if (type != JsonParser.NumberType.BIG_INTEGER) {
            return INTEGER;
        }
        BigInteger big = p.getBigIntegerValue();
        if (big.compareTo(U64_MAX) <= 0 && big.compareTo(I64_MIN) >= 0) {
            return INTEGER;
        }
        return Double.isInfinite(big.doubleValue()) ? -1 : OTHER;
    }

    /**
     * Read the value that starts at token {@code t} to its end, checking what orjson checks;
     * false when orjson would refuse it.
     */
    private static boolean skipValue(JsonParser p, JsonToken t, boolean checkSurrogates) throws IOException {
        int depth = 0;
        do {
            switch (t) {
                case START_OBJECT, START_ARRAY -> depth++;
                case END_OBJECT, END_ARRAY -> depth--;
                case FIELD_NAME -> {
                    if (checkSurrogates && Utf8.loneSurrogate(p.currentName())) {
                        return false;
                    }
                }
                case VALUE_STRING -> {
                    if (!stringOk(p, checkSurrogates)) {
                        return false;
                    }
                }
                case VALUE_NUMBER_INT -> {
                    if (integerKind(p) < 0) {
                        return false;
                    }
                }
                case VALUE_NUMBER_FLOAT -> {
                    if (Double.isInfinite(p.getDoubleValue())) {
                        return false;
                    }
                }
                default -> { }
            }
            if (depth == 0) {
                return true;
            }
            t = p.nextToken();
        } while (t != null);
        return false;
    }
}
