package io.filterd.peer;

import java.text.Normalizer;

/**
 * Recipient normalization of the contract ("Numbers"), as filterd.numbers.normalize does it:
 * the digits of the E.164 form as a long, or {@link #INVALID}.
 */
final class Numbers {
    static final long INVALID = -1L;
    static final int MIN_DIGITS = 8;
    static final int MAX_DIGITS = 15;

    private Numbers() {}

    /**
     * Normalize {@code raw}; {@code nfkc} applies Unicode NFKC first (full-width digits and
     * {@code ＋} become ASCII), the contract's step 0, when the filterd being compared does.
     */
    static long normalize(String raw, String countryCode, boolean nfkc) {
        String s = raw;
        if (nfkc && !isAscii(s)) {
            s = Normalizer.normalize(s, Normalizer.Form.NFKC);
        }
        // 1. remove spaces, '-', '.', '(' and ')'
        StringBuilder b = null;
        int n = s.length();
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            boolean separator = c == ' ' || c == '-' || c == '.' || c == '(' || c == ')';
            if (separator && b == null) {
                b = new StringBuilder(n);
                b.append(s, 0, i);
            } else if (!separator && b != null) {
                b.append(c);
            }
        }
        if (b != null) {
            s = b.toString();
        }
        // Non-ASCII digits must never count as digits.
        if (!isAscii(s) || s.isEmpty()) {
            return INVALID;
        }
        // 2. +DIGITS and 00DIGITS are international; other all-digit strings national.
        String digits;
        if (s.charAt(0) == '+') {
            digits = s.substring(1);
        } else if (s.startsWith("00")) {
            digits = s.substring(2);
        } else if (isDigits(s)) {
            digits = countryCode + (s.charAt(0) == '0' ? s.substring(1) : s);
        } else {
            return INVALID;
        }
        // 3. 8 to 15 digits, not starting with 0.
        int len = digits.length();
        if (len < MIN_DIGITS || len > MAX_DIGITS || !isDigits(digits) || digits.charAt(0) == '0') {
            return INVALID;
        }
        return Long.parseLong(digits);
    }

    static boolean isAscii(String s) {
        for (int i = 0, n = s.length(); i < n; i++) {
            if (s.charAt(i) >= 0x80) {
                return false;
            }
        }
        return true;
    }

    private static boolean isDigits(String s) {
        if (s.isEmpty()) {
            return false;
        }
        for (int i = 0, n = s.length(); i < n; i++) {
            char c = s.charAt(i);
            if (c < '0' || c > '9') {
                return false;
            }
        }
        return true;
    }
}
