"""``filterd topics create``: create the input and output topics of a config.

Idempotent, and honest about what exists: a topic that is there already is compared with
what would be created (partitions, replication, retention, cleanup policy, timestamp type,
min.insync.replicas) and every difference is printed; ``--apply`` alters the topic configs
(safe at any time) and says what it leaves (partition and replica counts: adding partitions
re-maps keys, and replicas move by reassignment). Exit 3 while a difference remains.

Output topics need at least as many partitions as the input topic for every output partition
to be used (input partition p writes output partition p % n). The block topic keeps its
evidence for 180 days by default (docs/audit.md).
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
        "--retention-ms", type=int, default=BLOCK_RETENTION_MS,
        help=f"retention.ms of the block topic (audit evidence; default {BLOCK_RETENTION_MS}, "
        "180 days)",
    )  # fmt: skip
    create.add_argument("--apply", action="store_true",
                        help="alter the configs of existing topics that differ")  # fmt: skip
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


#: The block topic's evidence period (docs/audit.md, "Retention"): 180 days, time-based only.
BLOCK_RETENTION_MS = 15_552_000_000

#: Exit status while an existing topic differs from what ``topics create`` would make.
DIFFERENT = 3


def cmd_create(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise ConfigError("--partitions", f"must be >= 1, got {args.partitions}")
    if args.retention_ms is not None and args.retention_ms < 1:
        raise ConfigError("--retention-ms", f"must be >= 1, got {args.retention_ms}")
    config = load_config(args.config)
    specs = topic_specs(config, args.partitions, args.replication, args.retention_ms)
    options = config.kafka.client_options()
    created = asyncio.run(create(options, specs))
    existing = {name: spec for name, spec in specs.items() if not created[name]}
    found = asyncio.run(differences(options, existing)) if existing else {}
    altered: dict[str, set[str]] = {}
    if args.apply and found:
        altered = asyncio.run(alter_configs(options, found))
    left = 0
    for name in specs:
        if created[name]:
            print(f"{name}: created")
            continue
        diffs = found.get(name, [])
        print(f"{name}: exists" + ("" if diffs else ", as configured"))
        for diff in diffs:
            if diff.setting in altered.get(name, ()):
                print(f"  {diff.setting}: {diff.have} -> {diff.want} (altered)")
                continue
            left += 1
            hint = "run again with --apply" if diff.alterable else diff.why
            print(f"  {diff.setting}: {diff.have}, wanted {diff.want} ({hint})")
    return DIFFERENT if left else 0


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic to create: partitions, replication factor and topic configs."""

    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Difference:
    """One way an existing topic differs from its :class:`TopicSpec`."""

    setting: str
    have: str
    want: str
    #: Whether ``--apply`` may change it (topic configs); else :attr:`why` not.
    alterable: bool
    why: str = ""


#: Retention of the step 4 counters' changelog: its longest window (a local day) plus two
#: days, so a stream that falls behind by up to two days still restores its open windows.
COUNTERS_RETENTION_MS = 3 * 86_400_000


def counters_spec(partitions: int, replication: int = 1) -> TopicSpec:
    """The step 4 counters' changelog (filterd.counters): one partition per input
    partition, compacted (the latest count per counter) and deleted by age (a closed
    window's counters go with their segment, without a tombstone each), as Kafka Streams
    keeps a windowed store's changelog."""
    return TopicSpec(
        partitions,
        replication,
        {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(COUNTERS_RETENTION_MS),
            "min.insync.replicas": str(min(2, replication)),
        },
    )


def topic_specs(
    config: Config,
    partitions: int,
    replication: int = 1,
    block_retention_ms: int | None = BLOCK_RETENTION_MS,
) -> dict[str, TopicSpec]:
    """What ``topics create`` makes of the config's topics (with the changes and inbound ones,
    and the counters changelog)."""
    t = config.topics
    common = {
        "cleanup.policy": "delete",
        # The time of a message is its record timestamp: the producer's, not the broker's.
        "message.timestamp.type": "CreateTime",
        "min.insync.replicas": str(min(2, replication)),
    }
    block = dict(common)
    if block_retention_ms is not None:
        # Evidence goes by age only: a bombing campaign must not push it out by size.
        block.update({"retention.ms": str(block_retention_ms), "retention.bytes": "-1"})
    specs = {
        t.input: TopicSpec(partitions, replication, common),
        t.deliver: TopicSpec(partitions, replication, common),
        t.block: TopicSpec(partitions, replication, block),
        t.invalid: TopicSpec(partitions, replication, common),
        t.counters_topic: counters_spec(partitions, replication),
    }
    if t.inbound:
        specs[t.inbound] = TopicSpec(partitions, replication, common)
    if t.changes:
        # Live consent changes, keyed by recipient: the latest change of each key is kept. The
        # 1 s bound runs from a change's append (filterd.changes.feed): the broker's time.
        changes = {**common, "cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"}
        specs[t.changes] = TopicSpec(partitions, replication, changes)
    return specs


async def create_topics(
    config: Config,
    partitions: int,
    replication: int = 1,
    *,
    block_retention_ms: int | None = BLOCK_RETENTION_MS,
) -> dict[str, bool]:
    """Create the five topics; return name -> True if created, False if it existed."""
    specs = topic_specs(config, partitions, replication, block_retention_ms)
    return await create(config.kafka.client_options(), specs)


async def differences(
    client_options: Mapping[str, Any], specs: Mapping[str, TopicSpec]
) -> dict[str, list[Difference]]:
    """How each existing topic differs from its spec (topics without a difference left out)."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = await _admin(client_options)
    found: dict[str, list[Difference]] = {}
    try:
        described = await admin.describe_topics(list(specs))
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in specs]
        )
    finally:
        await admin.close()
    configs = {
        name: {entry[0]: entry[1] for entry in entries}
        for response in responses
        for _code, _msg, _type, name, entries in response.resources
    }
    for topic in described:
        name, spec = topic["topic"], specs[topic["topic"]]
        diffs = found.setdefault(name, [])
        have_partitions = len(topic["partitions"])
        if have_partitions != spec.partitions:
            why = (
                "not altered: adding partitions re-maps keys, so per-recipient order and "
                "counts break across the change; do it deliberately with kafka-topics --alter"
                if have_partitions < spec.partitions
                else "partitions cannot be removed"
            )
            diffs.append(
                Difference("partitions", str(have_partitions), str(spec.partitions), False, why)
            )
        replicas = {len(p["replicas"]) for p in topic["partitions"]}
        if replicas != {spec.replication}:
            have = "/".join(str(n) for n in sorted(replicas))
            why = "not altered: replicas move by partition reassignment (kafka-reassign-partitions)"
            diffs.append(Difference("replication", have, str(spec.replication), False, why))
        for setting, want in sorted(spec.config.items()):
            have_value = configs.get(name, {}).get(setting)
            if have_value != want:
                diffs.append(Difference(setting, str(have_value), want, True))
    return {name: diffs for name, diffs in found.items() if diffs}


async def alter_configs(
    client_options: Mapping[str, Any], found: Mapping[str, list[Difference]]
) -> dict[str, set[str]]:
    """Set the alterable differences; return the settings changed per topic.

    Kafka's AlterConfigs replaces a topic's whole set of dynamic configs, so the ones the
    topic has already (source ``DYNAMIC_TOPIC_CONFIG``) are sent again with the changes.
    """
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    wanted = {
        name: {d.setting: d.want for d in diffs if d.alterable} for name, diffs in found.items()
    }
    wanted = {name: changes for name, changes in wanted.items() if changes}
    if not wanted:
        return {}
    admin = await _admin(client_options)
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
        )
        dynamic_topic_config = 1  # DescribeConfigs config_source
        current = {
            name: {e[0]: e[1] for e in entries if e[3] == dynamic_topic_config}
            for response in responses
            for _code, _msg, _type, name, entries in response.resources
        }
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs={**current[name], **changes})
            for name, changes in wanted.items()
        ]
        for response in await admin.alter_configs(resources):
            for code, message, _type, name in response.resources:
                if code:
                    raise BrokerError(
                        f"altering topic {name!r}: {for_code(code).__name__} {message or ''}"
                    )
    finally:
        await admin.close()
    return {name: set(changes) for name, changes in wanted.items()}


async def _admin(client_options: Mapping[str, Any]) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(**client_options)
    try:
        await admin.start()
    except KafkaError as exc:
        where = client_options.get("bootstrap_servers")
        raise BrokerError(f"cannot reach {where}: {exc!r}") from exc
    return admin


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
    admin = await _admin(client_options)
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
