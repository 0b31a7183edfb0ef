package io.filterd.peer;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;

/**
 * Decides each record and forwards it, with the four filterd headers, to the sink of its
 * route ({@code deliver}, {@code block} or {@code invalid}: the sinks' names). One instance
 * per stream task, so per input partition.
 */
final class DecideProcessor implements Processor<byte[], byte[], byte[], Routed> {
    private final Decider decider;
    private final Header snapshotHeader;
    private ProcessorContext<byte[], Routed> context;
    // "topic/partition/" of the last record, encoded once per task, not per record.
    private String prefixTopic;
    private int prefixPartition = -1;
    private byte[] prefix;

    DecideProcessor(Decider decider, byte[] snapshotVersion) {
        this.decider = decider;
        this.snapshotHeader = new RecordHeader("filterd-snapshot", snapshotVersion);
    }

    @Override
    public void init(ProcessorContext<byte[], Routed> context) {
        this.context = context;
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Outcome outcome = decider.decide(record.value());
        RecordMetadata meta = context.recordMetadata().orElseThrow();
        Header[] headers = {
            outcome.routeHeader,
            outcome.reasonHeader,
            snapshotHeader,
            new RecordHeader("filterd-source", source(meta.topic(), meta.partition(), meta.offset())),
        };
        Routed value = new Routed(record.value(), meta.partition());
        context.forward(
                new Record<>(record.key(), value, record.timestamp(), new RecordHeaders(headers)), outcome.route);
    }

    private byte[] source(String topic, int partition, long offset) {
        if (partition != prefixPartition || !topic.equals(prefixTopic)) {
            prefix = (topic + "/" + partition + "/").getBytes(StandardCharsets.UTF_8);
            prefixTopic = topic;
            prefixPartition = partition;
        }
        byte[] digits = new byte[20];
        int at = digits.length;
        long v = offset;
        do {
            digits[--at] = (byte) ('0' + (v % 10));
            v /= 10;
        } while (v > 0);
        byte[] out = new byte[prefix.length + digits.length - at];
        System.arraycopy(prefix, 0, out, 0, prefix.length);
        System.arraycopy(digits, at, out, prefix.length, digits.length - at);
        return out;
    }
}
