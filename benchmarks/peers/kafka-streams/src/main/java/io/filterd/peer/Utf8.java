package io.filterd.peer;

/** Strict UTF-8 validation in one pass over the value, as orjson does before parsing. */
final class Utf8 {
    static final int OK = 0;
    static final int BAD = 1;
    /** Valid, and holds a {@code \\uD800}-{@code \\uDFFF} escape: strings need a surrogate check. */
    static final int SURROGATE_ESCAPE = 2;

    private Utf8() {}

    /**
     * BAD for invalid UTF-8 (overlong forms, encoded surrogates, above U+10FFFF, cut off), a
     * byte-order mark, or a NUL byte (never valid JSON outside a string, nor raw inside one).
     */
    static int scan(byte[] b) {
        int n = b.length;
        if (n >= 3 && (b[0] & 0xff) == 0xef && (b[1] & 0xff) == 0xbb && (b[2] & 0xff) == 0xbf) {
            return BAD;
        }
        int result = OK;
        int i = 0;
        while (i < n) {
            int c = b[i] & 0xff;
            if (c < 0x80) {
                if (c == 0) {
                    return BAD;
                }
                if (c == '\\' && i + 2 < n && b[i + 1] == 'u') {
                    int h = b[i + 2] | 0x20; // lower case
                    if (h == 'd' && i + 3 < n) {
                        int h2 = b[i + 3] | 0x20;
                        if ((h2 >= '8' && h2 <= '9') || (h2 >= 'a' && h2 <= 'f')) {
                            result = SURROGATE_ESCAPE;
                        }
                    }
                }
                if (c == '\\') {
                    i += 2; // an escaped character is never the start of another escape
                    continue;
                }
                i++;
                continue;
            }
            int need;
            int min;
            if (c >= 0xc2 && c <= 0xdf) {
                need = 1;
                min = 0x80;
            } else if (c >= 0xe0 && c <= 0xef) {
                need = 2;
                min = 0x800;
            } else if (c >= 0xf0 && c <= 0xf4) {
                need = 3;
                min = 0x10000;
            } else {
                return BAD;
            }
            if (i + need >= n) {
                return BAD;
            }
            int cp = c & (0x3f >> need);
            for (int k = 1; k <= need; k++) {
                int cc = b[i + k] & 0xff;
                if ((cc & 0xc0) != 0x80) {
                    return BAD;
                }
                cp = (cp << 6) | (cc & 0x3f);
            }
            if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
                return BAD;
            }
            i += need + 1;
        }
        return result;
    }

    /** A high surrogate not followed by a low one, or a low one on its own. */
    static boolean loneSurrogate(String s) {
        return loneSurrogate(s.toCharArray(), 0, s.length());
    }

    static boolean loneSurrogate(char[] s, int offset, int length) {
        for (int i = offset, n = offset + length; i < n; i++) {
            char c = s[i];
            if (Character.isHighSurrogate(c)) {
                if (i + 1 < n && Character.isLowSurrogate(s[i + 1])) {
                    i++;
                } else {
                    return true;
                }
            } else if (Character.isLowSurrogate(c)) {
                return true;
            }
        }
        return false;
    }
}
