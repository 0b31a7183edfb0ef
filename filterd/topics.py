"""``filterd topics create``: create the input and output topics of a config.

Idempotent: topics that already exist are reported and left alone. Output
topics need at least as many partitions as the input topic for every output
partition to be used (input partition p writes output partition p % n).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from filterd.config import Config, load_config
from filterd.errors import BrokerError, ConfigError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    topics = subparsers.add_parser("topics", help="manage the topics filterd reads and writes")
    sub = topics.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="create the input and output topics (idempotent)")
    create.add_argument("--config", type=Path, help="TOML config file")
    create.add_argument("--partitions", type=int, default=6, help="partitions per topic (6)")
    create.add_argument("--replication", type=int, default=1, help="replication factor (1)")
    create.add_argument(
        "--retention-ms", type=int, default=None,
        help="retention.ms of the block topic (audit evidence; default: broker's)",
    )  # fmt: skip
    create.set_defaults(func=cmd_create)

    from filterd.acls import ROLES, cmd_acls

    acls = sub.add_parser(
        "acls", help="print (or apply) exactly the Kafka ACLs the config needs",
        description="Least privilege for the configured topics, group and delivery mode "
        "(docs/security.md).",
    )  # fmt: skip
    acls.add_argument("--config", type=Path, help="TOML config file")
    acls.add_argument("--principal", required=True, help="who gets them, e.g. User:filterd")
    acls.add_argument("--role", choices=ROLES, default="service",
                      help="service: run filterd (default); auditor: read the outputs")  # fmt: skip
    change = acls.add_mutually_exclusive_group()
    change.add_argument("--apply", action="store_true",
                        help="create them (needs administrator credentials)")  # fmt: skip
    change.add_argument("--revoke", action="store_true",
                        help="delete them (needs administrator credentials)")  # fmt: skip
    acls.add_argument(
        "--admin-config",
        type=Path,
        metavar="FILE",
        help="its [kafka] section is used by --apply/--revoke (default --config)",
    )
    acls.set_defaults(func=cmd_acls)


def cmd_create(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise ConfigError("--partitions", f"must be >= 1, got {args.partitions}")
    config = load_config(args.config)
    created = asyncio.run(
        create_topics(
            config, args.partitions, args.replication, block_retention_ms=args.retention_ms
        )
    )
    for name, was_created in created.items():
        print(f"{name}: {'created' if was_created else 'exists'}")
    return 0


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic to create: partitions, replication factor and topic configs."""

    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


async def create_topics(
    config: Config, partitions: int, replication: int = 1, *, block_retention_ms: int | None = None
) -> dict[str, bool]:
    """Create the four topics; return name -> True if created, False if it existed."""
    t = config.topics
    specs = {name: TopicSpec(partitions, replication) for name in (t.input, t.deliver, t.block)}
    if block_retention_ms is not None:
        specs[t.block] = TopicSpec(
            partitions, replication, {"retention.ms": str(block_retention_ms)}
        )
    specs[t.invalid] = TopicSpec(partitions, replication)
    return await create(config.kafka.client_options(), specs)


async def create(
    client_options: Mapping[str, Any],
    specs: Mapping[str, TopicSpec],
    *,
    exist_ok: bool = True,
    ready_timeout_s: float | None = None,
) -> dict[str, bool]:
    """Create topics one by one; return name -> True if created, False if it existed.

    A topic that exists is an error unless ``exist_ok``. With ``ready_timeout_s``, waits until
    every partition of every topic has a leader (a producer started next then finds them).
    """
    admin = AIOKafkaAdminClient(**client_options)
    try:
        await admin.start()
    except KafkaError as exc:
        where = client_options.get("bootstrap_servers")
        raise BrokerError(f"cannot reach {where}: {exc!r}") from exc
    result: dict[str, bool] = {}
    try:
        for name, spec in specs.items():
            new = NewTopic(name, spec.partitions, spec.replication, topic_configs=dict(spec.config))
            response = await admin.create_topics([new])
            for _topic, code, *message in response.topic_errors:
                if code == TopicAlreadyExistsError.errno and exist_ok:
                    result[name] = False
                elif code:
                    raise BrokerError(
                        f"creating topic {name!r}: {for_code(code).__name__} {message}"
                    )
                else:
                    result[name] = True
        if ready_timeout_s is not None:
            for name, spec in specs.items():
                await _wait_for_leaders(admin, name, spec.partitions, ready_timeout_s)
    finally:
        await admin.close()
    return result


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, topic: str, partitions: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        (described,) = await admin.describe_topics([topic])
        leaders = [p["leader"] for p in described["partitions"]]
        if described["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"topic {topic!r} has no leader for every partition after {timeout_s}s"
            )
        await asyncio.sleep(0.05)


async def delete(client_options: Mapping[str, Any], names: Iterable[str]) -> None:
    """Delete topics; ones already gone are not an error."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        with contextlib.suppress(UnknownTopicOrPartitionError):
            await admin.delete_topics(list(names))
    finally:
        await admin.close()
