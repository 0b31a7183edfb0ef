package io.filterd.peer;

import java.util.Optional;
import java.util.Set;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.processor.StreamPartitioner;

/**
 * An output value: the input bytes and the input partition they came from. The sinks write
 * the bytes unchanged ({@link #SERIALIZER}) to partition {@code p % N} ({@link #PARTITIONER}):
 * a {@link StreamPartitioner} sees only key and value, so the value carries the partition.
 */
record Routed(byte[] value, int partition) {
    static final Serializer<Routed> SERIALIZER = (topic, routed) -> routed == null ? null : routed.value;

    static final StreamPartitioner<byte[], Routed> PARTITIONER = new StreamPartitioner<>() {
        // One immutable answer per output partition, made once: no allocation per record.
        private volatile Optional<Set<Integer>>[] answers = answers(0);

        @Override
        public Optional<Set<Integer>> partitions(String topic, byte[] key, Routed value, int numPartitions) {
            Optional<Set<Integer>>[] known = answers;
            if (known.length != numPartitions) {
                known = answers = answers(numPartitions);
            }
            return known[value.partition % numPartitions];
        }
    };

    @SuppressWarnings("unchecked")
    private static Optional<Set<Integer>>[] answers(int n) {
        Optional<Set<Integer>>[] out = new Optional[n];
        for (int i = 0; i < n; i++) {
            out[i] = Optional.of(Set.of(i));
        }
        return out;
    }
}
