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
from filterd.errors import BrokerError, ConfigError, FilterdError

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
    if t.changes:
        # Every process reads the whole changes topic, outside the group (no group grant).
        acls.add(grant(ResourceType.TOPIC, t.changes, Operation.READ, literal))
    if t.inbound and t.changes:
        # MO replies are consumed in the group and written to the changes topic as changes.
        acls.add(grant(ResourceType.TOPIC, t.inbound, Operation.READ, literal))
        acls.add(grant(ResourceType.TOPIC, t.changes, Operation.WRITE, literal))
    acls |= {grant(ResourceType.TOPIC, name, Operation.WRITE, literal) for name in outputs}
    # The step 4 counters' changelog: written with the outputs, read back on assignment.
    acls |= {grant(ResourceType.TOPIC, t.counters_topic, op, literal)
             for op in (Operation.READ, Operation.WRITE)}  # fmt: skip
    acls.add(grant(ResourceType.GROUP, config.kafka.group_id, Operation.READ, literal))
    if config.delivery.mode == "exactly-once":
        # delivery.transactional_id: PREFIX-GROUP-TOPIC-PARTITION, one per input partition.
        for topic in (t.input, t.inbound) if t.inbound and t.changes else (t.input,):
            prefix = f"{config.delivery.transactional_id_prefix}-{config.kafka.group_id}-{topic}-"
            acls.add(
                grant(ResourceType.TRANSACTIONAL_ID, prefix, Operation.WRITE, PatternType.PREFIXED)
            )
    return sorted(acls)


async def apply_acls(config: Config, acls: list[Acl], *, revoke: bool = False) -> None:
    """Create (or with ``revoke`` delete) ``acls`` on the broker of ``config``.

    ``config``'s credentials must allow it (an administrator's).
    """
    # Imported here: printing the ACLs needs no Kafka client.
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError, for_code
    from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest

    admin = AIOKafkaAdminClient(**config.kafka.client_options())
    try:
        await admin.start()
    except KafkaError as exc:
        raise BrokerError(f"cannot reach {config.kafka.bootstrap_servers}: {exc!r}") from exc
    action = "deleting" if revoke else "creating"
    try:
        for acl in acls:
            kind = DeleteAclsRequest if revoke else CreateAclsRequest
            request = kind(
                acl.resource_type,
                acl.resource_name,
                acl.pattern,
                acl.principal,
                ANY_HOST,
                acl.operation,
                ALLOW,
            )
            response = await admin._send_request(request)
            results = response.filter_responses if revoke else response.creation_responses
            for code, message, *_ in results:
                if code:
                    raise BrokerError(
                        f"{action} ACL '{acl}': {for_code(code).__name__}: {message or ''}"
                    )
    finally:
        await admin.close()


class NotAuthorized(FilterdError):
    """The broker refused an operation for want of an ACL; the message names the ACL."""


def principal_of(config: Config) -> str:
    """The principal the broker sees for ``config``'s clients, as far as filterd knows it."""
    if config.kafka.security_protocol.startswith("SASL"):
        return f"User:{config.kafka.sasl_username}"
    if config.kafka.security_protocol == "PLAINTEXT":
        return "User:ANONYMOUS"
    return "the client certificate's principal"


def not_authorized(
    exc: BaseException, config: Config, operation: Operation | None = None
) -> NotAuthorized | None:
    """``exc`` as one line naming the missing ACL, or None if it is no authorization refusal.

    The ACL named is the one :func:`required_acls` grants for that resource: the line says
    what to grant, not only what failed. ``operation`` is what was refused when the caller
    knows it (a produce is a WRITE): of several grants on one resource, that one is named.
    """
    from aiokafka.errors import (
        ClusterAuthorizationFailedError,
        GroupAuthorizationFailedError,
        TopicAuthorizationFailedError,
        TransactionalIdAuthorizationFailed,
    )

    kinds: dict[type[BaseException], ResourceType] = {
        TopicAuthorizationFailedError: ResourceType.TOPIC,
        GroupAuthorizationFailedError: ResourceType.GROUP,
        TransactionalIdAuthorizationFailed: ResourceType.TRANSACTIONAL_ID,
        ClusterAuthorizationFailedError: ResourceType.CLUSTER,
    }
    kind = next((k for cls, k in kinds.items() if isinstance(exc, cls)), None)
    if kind is None:
        return None
    principal = principal_of(config)
    names: list[str] = []
    for arg in exc.args:  # a name, or a set of topic names
        if isinstance(arg, str):
            names.append(arg)
        elif isinstance(arg, set | frozenset | list | tuple):
            names.extend(sorted(str(item) for item in arg))
    if kind is ResourceType.CLUSTER or not names or not principal.startswith("User:"):
        what = ", ".join(names) or "the cluster"
        return NotAuthorized(f"not authorized: {principal} was refused {kind.name} {what}")
    needed = [
        acl
        for acl in required_acls(config, principal)
        if acl.resource_type is kind
        and any(
            name == acl.resource_name
            or (acl.pattern is PatternType.PREFIXED and name.startswith(acl.resource_name))
            for name in names
        )
    ]
    if operation is not None:
        needed = [acl for acl in needed if acl.operation is operation] or needed
    if not needed:
        return NotAuthorized(
            f"not authorized: {principal} was refused {kind.name} {', '.join(names)}"
        )
    return NotAuthorized(
        f"not authorized: missing ACL '{needed[0]}' "
        f"(filterd topics acls --principal {principal} prints them all)"
    )


def cmd_acls(args: argparse.Namespace) -> int:
    from filterd.config import load_config

    config = load_config(args.config)
    acls = required_acls(config, args.principal, args.role)
    for acl in acls:
        print(acl)
    if args.apply or args.revoke:
        admin = load_config(args.admin_config) if args.admin_config else config
        asyncio.run(apply_acls(admin, acls, revoke=args.revoke))
        done = "revoked" if args.revoke else "applied"
        print(f"{done} {len(acls)} ACLs for {args.principal}")
    return 0
