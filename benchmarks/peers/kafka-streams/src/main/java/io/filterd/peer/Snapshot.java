package io.filterd.peer;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.zip.GZIPInputStream;
import org.roaringbitmap.longlong.Roaring64Bitmap;

/**
 * The consent data, read from the snapshot INPUTS filterd builds its snapshot from (the
 * consents, opt-outs and do-not-disturb CSV files, optionally gzipped): one consent and one
 * opt-out bitmap per trimmed sender id, one do-not-disturb bitmap. Every number is normalized
 * as events are; a bad row stops start-up with its file and line, as {@code filterd snapshot
 * build} does.
 */
final class Snapshot {
    static final class Sender {
        final Roaring64Bitmap consents = new Roaring64Bitmap();
        final Roaring64Bitmap optouts = new Roaring64Bitmap();
    }

    final Map<String, Sender> senders = new HashMap<>();
    final Roaring64Bitmap dnd = new Roaring64Bitmap();
    long rows;
    private final boolean nfkc;

    private Snapshot(boolean nfkc) {
        this.nfkc = nfkc;
    }

    /** Thrown for an unreadable input or a bad row; the message names file and line. */
    static final class InputException extends RuntimeException {
        InputException(String message) {
            super(message);
        }
    }

    /** {@code nfkc}: numbers are read as events' recipients are (the contract's step 0). */
    static Snapshot load(Path consents, Path optouts, Path dnd, String countryCode, boolean nfkc)
            throws IOException {
        Snapshot s = new Snapshot(nfkc);
        s.readPairs(consents, countryCode, true);
        if (optouts != null) {
            s.readPairs(optouts, countryCode, false);
        }
        if (dnd != null) {
            s.readDnd(dnd, countryCode);
        }
        for (Sender sender : s.senders.values()) {
            sender.consents.runOptimize();
            sender.optouts.runOptimize();
        }
        s.dnd.runOptimize();
        return s;
    }

    private void readPairs(Path path, String cc, boolean consents) throws IOException {
        try (BufferedReader in = open(path)) {
            String header = in.readLine();
            if (header == null) {
                throw new InputException(path + ":1: empty file: no header row");
            }
            List<String> names = header(header);
            int si = column(path, names, "sender");
            int ri = column(path, names, "recipient");
            int need = Math.max(si, ri);
            String line;
            long lineno = 1;
            String lastRaw = null;
            Sender last = null;
            while ((line = in.readLine()) != null) {
                lineno++;
                List<String> f = fields(line);
                if (f.size() <= need) {
                    if (PyText.isBlank(line)) {
                        continue;
                    }
                    throw new InputException(path + ":" + lineno + ": missing column");
                }
                String raw = f.get(si);
                if (!raw.equals(lastRaw)) {
                    String id = PyText.strip(raw);
                    if (id.isEmpty()) {
                        throw new InputException(path + ":" + lineno + ": empty sender");
                    }
                    last = senders.computeIfAbsent(id, k -> new Sender());
                    lastRaw = raw;
                }
                long number = number(path, lineno, f.get(ri), cc);
                (consents ? last.consents : last.optouts).addLong(number);
                rows++;
            }
        }
    }

    private void readDnd(Path path, String cc) throws IOException {
        try (BufferedReader in = open(path)) {
            String header = in.readLine();
            if (header == null) {
                throw new InputException(path + ":1: empty file: no header row");
            }
            int ri = column(path, header(header), "recipient");
            String line;
            long lineno = 1;
            while ((line = in.readLine()) != null) {
                lineno++;
                List<String> f = fields(line);
                if (f.size() <= ri) {
                    if (PyText.isBlank(line)) {
                        continue;
                    }
                    throw new InputException(path + ":" + lineno + ": missing column");
                }
                dnd.addLong(number(path, lineno, f.get(ri), cc));
                rows++;
            }
        }
    }

    private long number(Path path, long lineno, String raw, String cc) {
        String value = PyText.strip(raw);
        long n = Numbers.normalize(value, cc, nfkc);
        if (n == Numbers.INVALID) {
            throw new InputException(path + ":" + lineno + ": bad recipient '" + value + "'");
        }
        return n;
    }

    private static BufferedReader open(Path path) throws IOException {
        InputStream raw = Files.newInputStream(path);
        if (path.getFileName().toString().endsWith(".gz")) {
            raw = new GZIPInputStream(raw, 1 << 16);
        }
        var decoder = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        return new BufferedReader(new InputStreamReader(raw, decoder), 1 << 16);
    }

    private static List<String> header(String line) {
        List<String> names = new ArrayList<>();
        for (String name : fields(line)) {
            String n = PyText.strip(name);
            while (n.startsWith("\ufeff")) {
                n = n.substring(1);
            }
            names.add(PyText.strip(n).toLowerCase(java.util.Locale.ROOT));
        }
        return names;
    }

    private static int column(Path path, List<String> names, String name) {
        int i = names.indexOf(name);
        if (i < 0) {
            throw new InputException(path + ":1: missing column '" + name + "' in header");
        }
        return i;
    }

    /** Comma-separated fields; a line with a quote is read as RFC 4180 (quotes, doubled quotes). */
    static List<String> fields(String line) {
        List<String> out = new ArrayList<>(4);
        if (line.indexOf('"') < 0) {
            int start = 0;
            int comma;
            while ((comma = line.indexOf(',', start)) >= 0) {
                out.add(line.substring(start, comma));
                start = comma + 1;
            }
            out.add(line.substring(start));
            return out;
        }
        StringBuilder b = new StringBuilder();
        boolean quoted = false;
        for (int i = 0; i < line.length(); i++) {
            char c = line.charAt(i);
            if (quoted) {
                if (c == '"') {
                    if (i + 1 < line.length() && line.charAt(i + 1) == '"') {
                        b.append('"');
                        i++;
                    } else {
                        quoted = false;
                    }
                } else {
                    b.append(c);
                }
            } else if (c == '"') {
                quoted = true;
            } else if (c == ',') {
                out.add(b.toString());
                b.setLength(0);
            } else {
                b.append(c);
            }
        }
        out.add(b.toString());
        return out;
    }
}
