"""The ACL set ``filterd topics acls`` derives from a config: exactly what is needed."""

from __future__ import annotations

import dataclasses

import pytest

from filterd.acls import Acl, Operation, PatternType, ResourceType, required_acls
from filterd.config import Config, load_config
from filterd.errors import ConfigError


def _config(**env: str) -> Config:
    return load_config(None, env=env)


def _as_tuples(acls: list[Acl]) -> set[tuple[str, str, str, str]]:
    return {(a.operation.name, a.resource_type.name, a.resource_name, a.pattern.name) for a in acls}


def test_at_least_once_reads_input_and_group_writes_outputs() -> None:
    acls = required_acls(_config(), "User:filterd")
    assert {a.principal for a in acls} == {"User:filterd"}
    assert _as_tuples(acls) == {
        ("READ", "TOPIC", "sms.outbound", "LITERAL"),
        ("READ", "TOPIC", "sms.consent-changes", "LITERAL"),
        ("READ", "TOPIC", "sms.inbound", "LITERAL"),
        ("WRITE", "TOPIC", "sms.consent-changes", "LITERAL"),
        ("WRITE", "TOPIC", "sms.deliver", "LITERAL"),
        ("WRITE", "TOPIC", "sms.blocked", "LITERAL"),
        ("WRITE", "TOPIC", "sms.invalid", "LITERAL"),
        ("READ", "GROUP", "filterd", "LITERAL"),
        # the step 4 counters' changelog, written and restored
        ("READ", "TOPIC", "sms.outbound.counters", "LITERAL"),
        ("WRITE", "TOPIC", "sms.outbound.counters", "LITERAL"),
    }


def test_exactly_once_adds_its_transactional_ids_and_nothing_on_the_cluster() -> None:
    config = _config(
        FILTERD_DELIVERY_MODE="exactly-once",
        FILTERD_KAFKA_GROUP_ID="g1",
        FILTERD_TOPICS_INPUT="in",
        FILTERD_DELIVERY_TRANSACTIONAL_ID_PREFIX="fd",
    )
    acls = required_acls(config, "User:svc")
    extra = _as_tuples(acls) - _as_tuples(required_acls(_config(FILTERD_KAFKA_GROUP_ID="g1",
                                                                 FILTERD_TOPICS_INPUT="in"),
                                                         "User:svc"))  # fmt: skip
    assert extra == {
        ("WRITE", "TRANSACTIONAL_ID", "fd-g1-in-", "PREFIXED"),
        ("WRITE", "TRANSACTIONAL_ID", "fd-g1-sms.inbound-", "PREFIXED"),  # MO replies
    }
    assert all(a.resource_type is not ResourceType.CLUSTER for a in acls)


def test_the_prefix_matches_the_ids_delivery_uses() -> None:
    from filterd.delivery import transactional_id

    config = _config(FILTERD_DELIVERY_MODE="exactly-once", FILTERD_KAFKA_GROUP_ID="grp")
    acls = required_acls(config, "User:x")
    (txn,) = [
        a for a in acls
        if a.resource_type is ResourceType.TRANSACTIONAL_ID
        and config.topics.input in a.resource_name
    ]  # fmt: skip
    for partition in (0, 7, 11):
        assert transactional_id(config, config.topics.input, partition).startswith(
            txn.resource_name
        )
    # ... and not the ids of another group reading the same topic.
    other = _config(FILTERD_DELIVERY_MODE="exactly-once", FILTERD_KAFKA_GROUP_ID="grp2")
    assert not transactional_id(other, other.topics.input, 0).startswith(txn.resource_name)


def test_auditor_only_reads_the_outputs() -> None:
    acls = required_acls(_config(), "User:auditor", "auditor")
    assert {a.operation for a in acls} == {Operation.READ}
    assert {a.resource_name for a in acls} == {"sms.deliver", "sms.blocked", "sms.invalid"}
    assert {a.resource_type for a in acls} == {ResourceType.TOPIC}


def test_renamed_topics_follow_the_config() -> None:
    config = _config(FILTERD_TOPICS_BLOCK="audit.blocked")
    names = {a.resource_name for a in required_acls(config, "User:f")}
    assert "audit.blocked" in names
    assert "sms.blocked" not in names


@pytest.mark.parametrize("principal", ["filterd", "User:", "Group:ops", ""])
def test_principal_must_be_a_user(principal: str) -> None:
    with pytest.raises(ConfigError, match="--principal"):
        required_acls(_config(), principal)


def test_printed_like_kafka_acls() -> None:
    acl = Acl(ResourceType.TRANSACTIONAL_ID, "p-", PatternType.PREFIXED, Operation.WRITE, "User:a")
    assert str(acl) == "ALLOW User:a WRITE TRANSACTIONAL_ID p- (PREFIXED)"
    assert dataclasses.replace(acl, pattern=PatternType.LITERAL).__str__().endswith(" p-")


def test_bootstrap_addresses_are_parsed_like_the_clients_do() -> None:
    from filterd.preflight import addresses

    config = _config(FILTERD_KAFKA_BOOTSTRAP_SERVERS="k1:9093,10.0.0.2:19092")
    assert addresses(config.kafka) == [("k1", 9093), ("10.0.0.2", 19092)]


def test_no_changes_topic_no_grant_on_it() -> None:
    acls = required_acls(_config(FILTERD_TOPICS_CHANGES="", FILTERD_TOPICS_INBOUND=""), "User:s")
    assert "sms.consent-changes" not in {a.resource_name for a in acls}
