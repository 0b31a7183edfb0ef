"""`filterd topics create` makes the changes topic compacted, stamped with its append time."""

from __future__ import annotations

from filterd.config import load_config
from filterd.topics import topic_specs


def test_the_changes_and_inbound_topics_are_created() -> None:
    specs = topic_specs(load_config(None, env={}), 6, 3)
    changes = specs["sms.consent-changes"]
    assert changes.partitions == 6
    assert changes.config["cleanup.policy"] == "compact"
    assert changes.config["message.timestamp.type"] == "LogAppendTime"
    assert specs["sms.inbound"].config["cleanup.policy"] == "delete"
    off = topic_specs(
        load_config(None, env={"FILTERD_TOPICS_CHANGES": "", "FILTERD_TOPICS_INBOUND": ""}), 6
    )
    # Without them, the input, the three outputs and the step 4 counters' changelog.
    assert set(off) == {
        "sms.outbound", "sms.deliver", "sms.blocked", "sms.invalid", "sms.outbound.counters",
    }  # fmt: skip
