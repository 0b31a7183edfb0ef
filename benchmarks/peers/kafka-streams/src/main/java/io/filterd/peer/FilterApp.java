package io.filterd.peer;

import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.streams.AutoOffsetReset;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;

/**
 * The filter as a Kafka Streams application.
 *
 * <pre>
 * java -cp 'peer.jar:lib/*' io.filterd.peer.FilterApp run RUN.properties
 * java -cp 'peer.jar:lib/*' io.filterd.peer.FilterApp decide RUN.properties &lt; framed &gt; decisions
 * </pre>
 *
 * {@code run} consumes the input topic and writes every record to the deliver, block or
 * invalid topic until SIGTERM. {@code decide} decides records read from stdin (each a 4-byte
 * big-endian length, -1 for a null value, then the bytes) and prints {@code ROUTE REASON} per
 * record: the same decision without a broker, for checking it quickly. See README.md for the
 * properties and why each Streams setting is what it is.
 */
public final class FilterApp {
    private FilterApp() {}

    /** Streams settings of the peer, each overridable by a {@code streams.NAME} property. */
    static Map<String, Object> tunedDefaults() {
        return Map.ofEntries(
                Map.entry(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE),
                Map.entry(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1),
                Map.entry(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 1000),
                Map.entry(StreamsConfig.TOPOLOGY_OPTIMIZATION_CONFIG, StreamsConfig.OPTIMIZE),
                Map.entry(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0),
                // Streams pauses a partition whose buffer holds this many records; above
                // max.poll.records so a full poll never pauses fetching.
                Map.entry(StreamsConfig.BUFFERED_RECORDS_PER_PARTITION_CONFIG, 10_000),
                Map.entry(StreamsConfig.consumerPrefix("max.poll.records"), 5000),
                Map.entry(StreamsConfig.consumerPrefix("max.partition.fetch.bytes"), 4 << 20),
                Map.entry(StreamsConfig.producerPrefix("linger.ms"), 10),
                Map.entry(StreamsConfig.producerPrefix("batch.size"), 256 << 10),
                Map.entry(StreamsConfig.producerPrefix("acks"), "all"),
                Map.entry(StreamsConfig.producerPrefix("compression.type"), "none"));
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2 || !(args[0].equals("run") || args[0].equals("decide"))) {
            System.err.println("usage: FilterApp run|decide RUN.properties");
            System.exit(2);
        }
        Properties props = new Properties();
        try (InputStream in = Files.newInputStream(Path.of(args[1]))) {
            props.load(in);
        }
        try {
            Policy policy = Policy.from(props);
            long t0 = System.nanoTime();
            Snapshot snapshot = Snapshot.load(
                    Path.of(Config.required(props, "snapshot.consents")),
                    optionalPath(props, "snapshot.optouts"),
                    optionalPath(props, "snapshot.dnd"),
                    Config.required(props, "snapshot.country.code"),
                    policy.nfkc);
            byte[] version = Config.required(props, "snapshot.version").getBytes(StandardCharsets.UTF_8);
            System.err.printf("filterd-peer: %d senders, %d rows loaded in %.1f s%n",
                    snapshot.senders.size(), snapshot.rows, (System.nanoTime() - t0) / 1e9);
            Decider decider = new Decider(snapshot, policy);
            if (args[0].equals("decide")) {
                decideStream(decider, System.in, System.out);
            } else {
                run(props, decider, version);
            }
        } catch (ConfigException | Snapshot.InputException e) {
            System.err.println("filterd-peer: error: " + e.getMessage());
            System.exit(2);
        }
    }

    private static Path optionalPath(Properties props, String key) {
        String value = props.getProperty(key, "");
        return value.isEmpty() ? null : Path.of(value);
    }

    static Topology topology(Properties props, Decider decider, byte[] version) {
        Topology t = new Topology();
        t.addSource(AutoOffsetReset.earliest(), "source", new ByteArrayDeserializer(),
                new ByteArrayDeserializer(), Config.required(props, "topics.input"));
        t.addProcessor("decide", () -> new DecideProcessor(decider, version), "source");
        for (String route : new String[] {"deliver", "block", "invalid"}) {
            // Sink names are the routes: the processor forwards to the one it decided.
            t.addSink(route, Config.required(props, "topics." + route), new ByteArraySerializer(),
                    Routed.SERIALIZER, Routed.PARTITIONER, "decide");
        }
        return t;
    }

    private static void run(Properties props, Decider decider, byte[] version) throws Exception {
        Properties streams = new Properties();
        streams.putAll(tunedDefaults());
        streams.put(StreamsConfig.APPLICATION_ID_CONFIG, Config.required(props, "application.id"));
        streams.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, Config.required(props, "bootstrap.servers"));
        streams.put(StreamsConfig.STATE_DIR_CONFIG,
                Files.createTempDirectory("filterd-peer-state-").toString());
        for (String name : props.stringPropertyNames()) {
            if (name.startsWith("streams.")) {
                streams.put(name.substring("streams.".length()), props.getProperty(name));
            }
        }
        KafkaStreams app = new KafkaStreams(topology(props, decider, version), streams);
        CountDownLatch stopped = new CountDownLatch(1);
        int[] exitCode = {0};
        app.setUncaughtExceptionHandler(e -> {
            System.err.println("filterd-peer: stream thread failed: " + e);
            exitCode[0] = 1;
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        app.setStateListener((now, before) -> {
            System.err.println("filterd-peer: " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            // SIGTERM: finish the records in flight, commit, leave the group.
            app.close(Duration.ofSeconds(30));
            stopped.countDown();
        }, "filterd-peer-shutdown"));
        System.err.println("filterd-peer: threads " + streams.get(StreamsConfig.NUM_STREAM_THREADS_CONFIG)
                + ", settings " + streams);
        app.start();
        stopped.await();
        if (exitCode[0] != 0) {
            app.close(Duration.ofSeconds(30));
            System.exit(exitCode[0]);
        }
    }

    private static void decideStream(Decider decider, InputStream stdin, PrintStream stdout) throws IOException {
        DataInputStream in = new DataInputStream(new java.io.BufferedInputStream(stdin, 1 << 16));
        OutputStream out = new BufferedOutputStream(stdout, 1 << 16);
        while (true) {
            int length;
            try {
                length = in.readInt();
            } catch (EOFException e) {
                break;
            }
            byte[] value = null;
            if (length >= 0) {
                value = new byte[length];
                in.readFully(value);
            }
            Outcome o = decider.decide(value);
            out.write((o.route + " " + o.reason + "\n").getBytes(StandardCharsets.US_ASCII));
        }
        out.flush();
    }
}
