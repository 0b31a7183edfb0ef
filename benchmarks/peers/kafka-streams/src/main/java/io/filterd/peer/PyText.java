package io.filterd.peer;

/**
 * Python's {@code str.strip()} and {@code str.isspace()}: filterd trims senders and tests
 * required fields for "only white space" with them, and Python's set of white space is not
 * Java's ({@code Character.isWhitespace} leaves out U+00A0, U+2007 and U+202F, {@code
 * String.strip} too).
 */
final class PyText {
    private PyText() {}

    static boolean isSpace(char c) {
        if (c <= 0x20) {
            return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
        }
        if (c < 0x85) {
            return false;
        }
        return c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a)
                || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
    }

    static String strip(String s) {
        int start = 0;
        int end = s.length();
        while (start < end && isSpace(s.charAt(start))) {
            start++;
        }
        while (end > start && isSpace(s.charAt(end - 1))) {
            end--;
        }
        return start == 0 && end == s.length() ? s : s.substring(start, end);
    }

    static boolean isBlank(String s) {
        for (int i = 0, n = s.length(); i < n; i++) {
            if (!isSpace(s.charAt(i))) {
                return false;
            }
        }
        return true;
    }
}
