"""The peer: the same filter written with Quix Streams, as its documentation shows.

Quix Streams is the Python stream-processing framework people reach for on
Kafka (confluent-kafka underneath). This is the filter in its idiom: an
``Application``, byte (de)serializers so the value stays byte-for-byte, one
``set_headers`` step that decides the record and writes the four filterd
headers, and ``to_topic`` with a callable that picks deliver/block/invalid from
the route header — the "dynamic topic selection" pattern of ``to_topic``'s
docstring. The decision is filterd's own :class:`~filterd.router.Decider`, built
once; snapshot, policy and topics come from the same config file as the run.

Client settings are Quix's defaults (its docs recommend them and do not ask for
tuning), at-least-once processing, committing every 5 s or on shutdown.

    python -m benchmarks.peer_quix --config run.toml
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from benchmarks._common import variant_config
from filterd.router import Decider

log = logging.getLogger("benchmarks.peer_quix")

Headers = list[tuple[str, bytes]]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.peer_quix --config F``: run until SIGTERM (Quix handles it)."""
    config = variant_config("peer_quix", __doc__, argv)

    from quixstreams import Application, message_context

    from filterd.snapshot import load_snapshot

    snapshot = load_snapshot(config.snapshot.root)
    decide = Decider(snapshot, config.policy).decide
    version = snapshot.version.encode()

    app = Application(
        broker_address=config.kafka.bootstrap_servers,
        consumer_group=config.kafka.group_id,
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        # The benchmark creates the topics; Quix must not create or alter them.
        auto_create_topics=False,
        loglevel="WARNING",
    )
    source = app.topic(config.topics.input, key_deserializer="bytes", value_deserializer="bytes")
    outputs = {
        route: app.topic(name, key_serializer="bytes", value_serializer="bytes")
        for route, name in (
            ("deliver", config.topics.deliver),
            ("block", config.topics.block),
            ("invalid", config.topics.invalid),
        )
    }

    def decide_headers(value: bytes, key: object, timestamp: int, headers: object) -> Headers:
        route, reason = decide(value)
        ctx = message_context()
        return [
            ("filterd-route", route.encode()),
            ("filterd-reason", reason.encode()),
            ("filterd-snapshot", version),
            ("filterd-source", f"{ctx.topic}/{ctx.partition}/{ctx.offset}".encode()),
        ]

    def route_topic(value: bytes, key: object, timestamp: int, headers: Headers) -> object:
        # set_headers put the route first.
        return outputs[headers[0][1].decode()]

    sdf = app.dataframe(source)
    sdf = sdf.set_headers(decide_headers)
    sdf.to_topic(route_topic)  # type: ignore[arg-type]
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
