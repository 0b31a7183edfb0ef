"""Getting decided batches out: produce, acknowledge, commit.

Two modes share one interface (:class:`Delivery`):

* :class:`AtLeastOnce` — one producer; a partition's input offsets are
  committed only after every output record of it is acknowledged. After a
  crash a record may be produced again, always into the same topic with the
  same decision.
* :class:`ExactlyOnce` — one transactional producer per assigned input
  partition, with a stable ``transactional_id`` derived from the group, topic
  and partition. aiokafka has no KIP-447 (fencing by consumer group
  generation), so fencing comes from the id itself, as in Kafka Streams before
  KIP-447: whoever owns the partition next initialises the same id and fences
  a zombie. Outputs and input offsets commit in one transaction.

``deliver`` returns the partitions that did not make it; the service decides
them again and retries, so nothing is skipped and no offset is committed past
a record whose output was not acknowledged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    ProducerFenced,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

from filterd.acls import Operation, not_authorized
from filterd.config import Config
from filterd.errors import FilterdError
from filterd.pipeline import Builder, PartitionOutput
from filterd.records import CODECS, RecordBatch

log = logging.getLogger(__name__)


#: How long a rebalance waits for new partitions to be ready (exactly-once).
PREPARE_WAIT_S = 20.0


class Delivery(Protocol):
    """How a decided batch reaches the output topics and its offsets commit."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def new_builder(self, tp: TopicPartition) -> Builder: ...

    async def partitions_for(self, topic: str) -> int:
        """The topic's partition count; 0 when it does not exist."""
        ...

    #: Whether acknowledgement and commit may run apart from submission (the
    #: pipelined loop); False means ``submit`` already did everything.
    pipelines: bool

    async def deliver(self, outputs: Sequence[PartitionOutput]) -> list[PartitionOutput]: ...

    async def submit(self, outputs: Sequence[PartitionOutput]) -> Submitted: ...

    async def complete(self, submitted: Submitted) -> list[PartitionOutput]: ...

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None: ...

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None: ...

    #: An error met in the background that no retry can fix (a missing ACL); the batch loop
    #: stops with it.
    fatal: FilterdError | None


async def topic_partitions(producer: AIOKafkaProducer, topic: str) -> int:
    """The partition count of ``topic`` in one metadata request; 0 when it does not exist.

    ``AIOKafkaProducer.partitions_for`` waits for a missing topic until its timeout and logs
    "not found in cluster metadata" about ten times a second meanwhile: one question, one
    answer is what start-up needs. Any other topic error (an ACL refusal:
    ``TopicAuthorizationFailedError``) is raised.
    """
    return await client_topic_partitions(producer.client, topic)


async def client_topic_partitions(client: AIOKafkaClient, topic: str) -> int:
    """:func:`topic_partitions` with any client's connection (a consumer's too)."""
    node = client.get_random_node()
    if node is None:
        raise KafkaConnectionError("no broker known")
    response = await client.send(node, MetadataRequest([topic]))
    for entry in response.topics:
        error_code, name, partitions = entry[0], entry[1], entry[-1]
        if name != topic:
            continue
        error = for_code(error_code)
        if error is UnknownTopicOrPartitionError:
            return 0
        if error_code:
            raise error(topic)
        return len(partitions)
    return 0


def new_batch(config: Config, *, transactional: bool) -> RecordBatch:
    """An empty producer batch as the producer's own ``create_batch`` would size it.

    filterd writes its batches itself (filterd/records.py: the contract headers go in
    pre-encoded); the producer sends them like its own.
    """
    p = config.producer
    return RecordBatch(p.max_batch_size, CODECS[p.compression_type], transactional)


def producer_options(config: Config) -> dict[str, object]:
    """aiokafka producer settings shared by both modes."""
    p = config.producer
    acks: int | str = "all" if p.acks in ("all", "-1") else int(p.acks)
    return {
        **config.kafka.client_options(),
        "acks": acks,
        "linger_ms": p.linger_ms,
        "max_batch_size": p.max_batch_size,
        "max_request_size": p.max_request_size,
        "compression_type": None if p.compression_type == "none" else p.compression_type,
        "enable_idempotence": p.enable_idempotence,
    }


def _forget(
    tasks: dict[TopicPartition, asyncio.Future[None]], tp: TopicPartition, done: object
) -> None:
    """Done-callback: drop a finished per-partition task from its registry."""
    if tasks.get(tp) is done:
        del tasks[tp]


async def _await_all(futures: list[asyncio.Future[object]]) -> BaseException | None:
    """Wait for every acknowledgement; return the first failure, if any.

    All futures are awaited (not only up to the first error) so none is left
    with an exception nobody retrieved.
    """
    results = await asyncio.gather(*futures, return_exceptions=True)
    return next((r for r in results if isinstance(r, BaseException)), None)


@dataclass(slots=True)
class Submitted:
    """Outputs handed to the producer, their acknowledgements still to come."""

    pending: list[tuple[PartitionOutput, list[asyncio.Future[object]]]] = field(
        default_factory=list
    )
    #: Outputs the producer did not even take.
    failed: list[PartitionOutput] = field(default_factory=list)


class AtLeastOnce:
    """One shared producer; commit after acknowledgement."""

    pipelines = True

    def __init__(self, config: Config, consumer: AIOKafkaConsumer) -> None:
        self._config = config
        self._consumer = consumer
        self._producer = AIOKafkaProducer(**producer_options(config))
        self.fatal: FilterdError | None = None

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    def new_builder(self, tp: TopicPartition) -> Builder:
        return new_batch(self._config, transactional=False)

    async def partitions_for(self, topic: str) -> int:
        return await topic_partitions(self._producer, topic)

    async def deliver(self, outputs: Sequence[PartitionOutput]) -> list[PartitionOutput]:
        return await self.complete(await self.submit(outputs))

    async def submit(self, outputs: Sequence[PartitionOutput]) -> Submitted:
        """Hand every builder to the producer; acknowledgements come later (:meth:`complete`).

        Submit every builder first, then wait for all acknowledgements together:
        one round trip per batch, not per message.
        """
        submitted = Submitted()
        for out in outputs:
            futures: list[asyncio.Future[object]] = []
            try:
                for topic, partition, builder in out.batches:
                    futures.append(
                        await self._producer.send_batch(builder, topic, partition=partition)
                    )
            except KafkaError as exc:
                _raise_if_not_authorized(exc, self._config, Operation.WRITE)
                log.warning("could not queue output of %s/%d: %r", out.topic, out.partition, exc)
                await _await_all(futures)
                submitted.failed.append(out)
                continue
            submitted.pending.append((out, futures))
        return submitted

    async def complete(self, submitted: Submitted) -> list[PartitionOutput]:
        """Wait for the acknowledgements, commit what made it; return what did not."""
        offsets: dict[TopicPartition, int] = {}
        failed = submitted.failed
        for out, futures in submitted.pending:
            error = await _await_all(futures)
            if error is None:
                offsets[TopicPartition(out.topic, out.partition)] = out.next_offset
            else:
                _raise_if_not_authorized(error, self._config, Operation.WRITE)
                log.warning("output of %s/%d not acknowledged: %r", out.topic, out.partition, error)
                failed.append(out)
        if offsets:
            await self._commit(offsets)
        return failed

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit offsets whose output is acknowledged (filterd.faults wraps this step)."""
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced: the new owner starts from the last commit
            # and produces these records again (at-least-once allows it).
            log.warning("offset commit refused after a rebalance: %s", exc)
        except KafkaError as exc:
            _raise_if_not_authorized(exc, self._config)
            # Outputs are acknowledged; a later commit covers these offsets.
            log.warning("offset commit failed, the next one covers it: %r", exc)

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        return None

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        return None


class ExactlyOnce:
    """One transactional producer per input partition; offsets in the transaction."""

    #: Produce, commit and report happen in one transaction, inside ``submit``.
    pipelines = False

    def __init__(self, config: Config, consumer: AIOKafkaConsumer) -> None:
        self._config = config
        self._consumer = consumer
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        self._opening: dict[TopicPartition, asyncio.Future[None]] = {}
        self._preparing: dict[TopicPartition, asyncio.Future[None]] = {}
        # A plain producer for topic metadata, and for builders of a partition
        # whose transactional producer is gone (such a batch is never sent:
        # the retry builds it again once the producer is back).
        self._metadata = AIOKafkaProducer(**producer_options(config))
        self.fatal: FilterdError | None = None

    def transactional_id(self, tp: TopicPartition) -> str:
        return transactional_id(self._config, tp.topic, tp.partition)

    async def start(self) -> None:
        await self._metadata.start()

    async def stop(self) -> None:
        opening = [*self._opening.values(), *self._preparing.values()]
        for future in opening:
            future.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        await self._close(list(self._producers))
        await self._metadata.stop()

    def new_builder(self, tp: TopicPartition) -> Builder:
        # Without the partition's transactional producer (still opening, or gone) the
        # batch is never sent: the retry builds it again once the producer is back.
        return new_batch(self._config, transactional=tp in self._producers)

    async def partitions_for(self, topic: str) -> int:
        return await topic_partitions(self._metadata, topic)

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Make each new partition safe to consume before any of its records is read.

        aiokafka has no KIP-447 "stable" offset fetch: right after a rebalance,
        the committed offset it reads can predate the previous owner's last
        transaction, whose offset commit the broker is still writing. So the
        partitions stay paused until their transactional producer is
        initialised (the broker completes the previous owner's transaction on
        the same id first); only then is the committed offset read again and
        the partition resumed from it.
        """
        partitions = [tp for tp in partitions if tp not in self._preparing]
        self._consumer.pause(*partitions)
        for tp in partitions:
            task = asyncio.ensure_future(self._prepare(tp))
            self._preparing[tp] = task
            task.add_done_callback(functools.partial(_forget, self._preparing, tp))
        pending = [self._preparing[tp] for tp in partitions if tp in self._preparing]
        if pending:
            # Hold the rebalance a little so the common case starts at once; a
            # slow partition keeps preparing in the background, still paused.
            await asyncio.wait(pending, timeout=PREPARE_WAIT_S)

    async def _prepare(self, tp: TopicPartition) -> None:
        consumer = self._consumer
        backoff = self._config.service.retry_backoff_s
        while tp in consumer.assignment():
            try:
                await self._producer_for(tp)
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)
            except (KafkaError, OSError) as exc:
                # Runs in the background (the rebalance listener started it): a refusal no
                # retry can fix is handed to the batch loop, which stops with it.
                self.fatal = not_authorized(exc, self._config)
                if self.fatal is not None:
                    return
                log.warning("preparing %s/%d, retrying: %r", tp.topic, tp.partition, exc)
                await asyncio.sleep(backoff)
                continue
            if tp in consumer.assignment():
                consumer.resume(tp)
            return

    async def _producer_for(self, tp: TopicPartition) -> AIOKafkaProducer:
        """The partition's producer, opening it once even when asked concurrently.

        Initialising a transactional id can take a while (the broker first
        aborts what a crashed owner left open); a batch of the partition may
        arrive meanwhile and must wait for this producer rather than open a
        second one with the same id, which would fence the first.
        """
        producer = self._producers.get(tp)
        if producer is not None:
            return producer
        opening = self._opening.get(tp)
        if opening is None:
            opening = asyncio.ensure_future(self._open(tp))
            self._opening[tp] = opening
            opening.add_done_callback(functools.partial(_forget, self._opening, tp))
        await asyncio.shield(opening)
        return self._producers[tp]

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        opening = [self._opening[tp] for tp in partitions if tp in self._opening]
        opening += [self._preparing[tp] for tp in partitions if tp in self._preparing]
        for future in opening:
            future.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        await self._close([tp for tp in partitions if tp in self._producers])

    async def _open(self, tp: TopicPartition) -> None:
        producer = AIOKafkaProducer(
            **producer_options(self._config),
            transactional_id=self.transactional_id(tp),
            transaction_timeout_ms=self._config.delivery.transaction_timeout_ms,
        )
        # start() initialises the transactional id: it aborts what a previous
        # owner left open and fences that owner if it is still alive.
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producers[tp] = producer

    async def _close(self, partitions: list[TopicPartition]) -> None:
        producers = [self._producers.pop(tp) for tp in partitions]
        results = await asyncio.gather(*(p.stop() for p in producers), return_exceptions=True)
        for tp, result in zip(partitions, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing the producer of %s/%d: %r", tp.topic, tp.partition, result)

    async def deliver(self, outputs: Sequence[PartitionOutput]) -> list[PartitionOutput]:
        # One transaction per input partition, all running at once: a task per
        # partition of the batch, never per message.
        results = await asyncio.gather(*(self._transact(out) for out in outputs))
        return [out for out, ok in zip(outputs, results, strict=True) if not ok]

    async def submit(self, outputs: Sequence[PartitionOutput]) -> Submitted:
        return Submitted(failed=await self.deliver(outputs))

    async def complete(self, submitted: Submitted) -> list[PartitionOutput]:
        return submitted.failed

    async def _transact(self, out: PartitionOutput) -> bool:
        tp = TopicPartition(out.topic, out.partition)
        producer = self._producers.get(tp)
        if producer is None:
            # Still opening, or lost in a failed recovery: wait for it (open
            # it again) if the partition is still ours. The batch was built
            # without it, so it is decided and built again on the retry.
            if tp in self._consumer.assignment():
                try:
                    await self._producer_for(tp)
                except (KafkaError, OSError) as exc:
                    log.warning("opening the producer of %s/%d: %r", tp.topic, tp.partition, exc)
            return False
        try:
            await producer.begin_transaction()
            futures = [
                await producer.send_batch(builder, topic, partition=partition)
                for topic, partition, builder in out.batches
            ]
            error = await _await_all(futures)
            if error is not None:
                raise error
            await self._commit(producer, tp, out.next_offset)
            return True
        except ProducerFenced:
            # Another process owns this partition now. Rewind so that, should
            # we somehow keep it, nothing past the last commit is skipped.
            log.warning("producer of %s/%d fenced: partition moved", tp.topic, tp.partition)
            await self._close([tp])
            self._rewind(tp, out.first_offset)
            return False
        except (KafkaError, OSError) as exc:
            _raise_if_not_authorized(exc, self._config, Operation.WRITE)
            log.warning("transaction for %s/%d failed, retrying: %r", tp.topic, tp.partition, exc)
            await self._recover(tp, producer)
            return False

    async def _commit(self, producer: AIOKafkaProducer, tp: TopicPartition, offset: int) -> None:
        """Put the input offset in the transaction and commit it (filterd.faults wraps this)."""
        await producer.send_offsets_to_transaction({tp: offset}, self._config.kafka.group_id)
        await producer.commit_transaction()

    async def _recover(self, tp: TopicPartition, producer: AIOKafkaProducer) -> None:
        # Replace the producer rather than abort and reuse it: after some
        # errors (a refused record, a timeout) its sequence state is unusable
        # and every later transaction would fail. Initialising the same
        # transactional id again aborts whatever the old one left open.
        if self._producers.get(tp) is producer:
            await self._close([tp])
            try:
                await self._producer_for(tp)
            except (KafkaError, OSError) as exc:
                log.warning("re-creating the producer of %s/%d: %r", tp.topic, tp.partition, exc)

    def _rewind(self, tp: TopicPartition, offset: int) -> None:
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)


def _raise_if_not_authorized(
    exc: BaseException, config: Config, operation: Operation | None = None
) -> None:
    """A missing ACL is not retried: raise it as one line naming the ACL."""
    denied = not_authorized(exc, config, operation)
    if denied is not None:
        raise denied from None


def transactional_id(config: Config, topic: str, partition: int) -> str:
    """The transactional id of one input partition: PREFIX-GROUP-TOPIC-PARTITION.

    ``filterd topics acls`` grants the prefix up to the partition (filterd/acls.py).
    """
    prefix = config.delivery.transactional_id_prefix
    return f"{prefix}-{config.kafka.group_id}-{topic}-{partition}"
