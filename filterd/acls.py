"""``filterd topics acls``: exactly the Kafka ACLs a config needs, printed or applied.

Least privilege, derived from the config rather than written by hand, so that a topic or
group renamed in the config cannot leave a stale grant behind or miss a new one:

- the service (``--role service``) reads the input topic and its consumer group and writes
  the three output topics; in exactly-once mode it also writes (and so describes) the
  transactional ids it derives from ``[delivery] transactional_id_prefix``, the group and
  the input topic, a prefixed grant because they are one per input partition;
- an auditor (``--role auditor``) reads the output topics and nothing else: the audit
  commands assign partitions by hand, so they need no group.

Kafka implies what else these need: ``READ`` and ``WRITE`` imply ``DESCRIBE`` on the same
resource, and since Kafka 3.0 ``WRITE`` on a topic implies ``IDEMPOTENT_WRITE`` on the cluster
(KIP-679). Nothing is granted on the cluster, nothing to create, alter or delete topics:
``filterd topics create`` is an administrator's job.

aiokafka's admin client has no ACL calls, so ``--apply`` sends Kafka's CreateAcls request
through it (API key 30; the protocol classes ship with aiokafka).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
from dataclasses import dataclass
from typing import Literal

from filterd.config import Config
from filterd.errors import BrokerError, ConfigError

Role = Literal["service", "auditor"]
ROLES: tuple[Role, ...] = ("service", "auditor")


class ResourceType(enum.IntEnum):
    """Kafka's ``ResourceType`` codes (org.apache.kafka.common.resource.ResourceType)."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class Operation(enum.IntEnum):
    """Kafka's ``AclOperation`` codes."""

    READ = 3
    WRITE = 4
    DESCRIBE = 8


class PatternType(enum.IntEnum):
    """Kafka's ``PatternType`` codes."""

    LITERAL = 3
    PREFIXED = 4


ALLOW = 3  # AclPermissionType.ALLOW
ANY_HOST = "*"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding: ``principal`` may ``operation`` on the resource, from any host."""

    resource_type: ResourceType
    resource_name: str
    pattern: PatternType
    operation: Operation
    principal: str

    def __str__(self) -> str:
        # The words of Kafka's own kafka-acls tool, so an operator can compare the two.
        pattern = "" if self.pattern is PatternType.LITERAL else f" ({self.pattern.name})"
        return (
            f"ALLOW {self.principal} {self.operation.name} "
            f"{self.resource_type.name} {self.resource_name}{pattern}"
        )


def required_acls(config: Config, principal: str, role: Role = "service") -> list[Acl]:
    """The ACLs ``principal`` needs to act as ``role`` with ``config``; sorted, no duplicates."""
    if not principal.startswith("User:") or principal == "User:":
        raise ConfigError("--principal", f"must look like User:NAME, got {principal!r}")
    t = config.topics
    outputs = (t.deliver, t.block, t.invalid)

    def grant(kind: ResourceType, name: str, op: Operation, pattern: PatternType) -> Acl:
        return Acl(kind, name, pattern, op, principal)

    literal = PatternType.LITERAL
    if role == "auditor":
        acls = {grant(ResourceType.TOPIC, name, Operation.READ, literal) for name in outputs}
        return sorted(acls)
    acls = {grant(ResourceType.TOPIC, t.input, Operation.READ, literal)}
    acls |= {grant(ResourceType.TOPIC, name, Operation.WRITE, literal) for name in outputs}
    acls.add(grant(ResourceType.GROUP, config.kafka.group_id, Operation.READ, literal))
    if config.delivery.mode == "exactly-once":
        # delivery.transactional_id: PREFIX-GROUP-TOPIC-PARTITION, one per input partition.
        prefix = f"{config.delivery.transactional_id_prefix}-{config.kafka.group_id}-{t.input}-"
        acls.add(
            grant(ResourceType.TRANSACTIONAL_ID, prefix, Operation.WRITE, PatternType.PREFIXED)
        )
    return sorted(acls)


async def apply_acls(config: Config, acls: list[Acl]) -> None:
    """Create ``acls`` on the broker of ``config`` (whose credentials must allow it)."""
    # Imported here: printing the ACLs needs no Kafka client.
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError, for_code
    from aiokafka.protocol.admin import CreateAclsRequest

    admin = AIOKafkaAdminClient(**config.kafka.client_options())
    try:
        await admin.start()
    except KafkaError as exc:
        raise BrokerError(f"cannot reach {config.kafka.bootstrap_servers}: {exc!r}") from exc
    try:
        for acl in acls:
            request = CreateAclsRequest(
                acl.resource_type,
                acl.resource_name,
                acl.pattern,
                acl.principal,
                ANY_HOST,
                acl.operation,
                ALLOW,
            )
            response = await admin._send_request(request)
            for code, message in response.creation_responses:
                if code:
                    raise BrokerError(
                        f"creating ACL '{acl}': {for_code(code).__name__}: {message or ''}"
                    )
    finally:
        await admin.close()


def cmd_acls(args: argparse.Namespace) -> int:
    from filterd.config import load_config

    config = load_config(args.config)
    acls = required_acls(config, args.principal, args.role)
    for acl in acls:
        print(acl)
    if args.apply:
        admin = load_config(args.admin_config) if args.admin_config else config
        asyncio.run(apply_acls(admin, acls))
        print(f"applied {len(acls)} ACLs for {args.principal}")
    return 0
