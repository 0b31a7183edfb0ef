"""``filterd topics acls --apply`` on the secured broker: the grants work, and only they do."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAuthorizationFailedError

from filterd.config import load_config

from .conftest import REPO, SecureBroker

pytestmark = pytest.mark.kafka

TIMEOUT_S = 30


def _write_config(path: Path, broker: SecureBroker, user: str, suffix: str) -> Path:
    topics = "\n".join(
        f'{key} = "{key}-{suffix}"' for key in ("input", "deliver", "block", "invalid")
    )
    # No live changes nor MO replies here: their grants are in test_least_privilege.py.
    topics += '\nchanges = ""\ninbound = ""'
    kafka = broker.config(user).read_text()
    path.write_text(f'{kafka}group_id = "group-{suffix}"\n\n[topics]\n{topics}\n')
    return path


def _acls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "filterd", "topics", "acls", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_applied_acls_let_filterd_do_its_job_and_nothing_else(
    secure_kafka: SecureBroker, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:10]
    service = _write_config(tmp_path / "filterd.toml", secure_kafka, "filterd", suffix)
    admin_file = _write_config(tmp_path / "admin.toml", secure_kafka, "admin", suffix)
    config = load_config(service)
    names = [f"{key}-{suffix}" for key in ("input", "deliver", "block", "invalid")]
    admin = AIOKafkaAdminClient(**load_config(admin_file).kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in names])
        producer = AIOKafkaProducer(**load_config(admin_file).kafka.client_options())
        await producer.start()
        try:
            await producer.send_and_wait(f"input-{suffix}", b"event")
        finally:
            await producer.stop()

        proc = _acls("--config", str(service), "--principal", "User:filterd",
                     "--apply", "--admin-config", str(admin_file))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"ALLOW User:filterd READ TOPIC input-{suffix}" in proc.stdout
        # input READ, three outputs WRITE, group READ, counters changelog READ and WRITE.
        assert "applied 7 ACLs for User:filterd" in proc.stdout

        options = config.kafka.client_options()
        consumer = AIOKafkaConsumer(
            f"input-{suffix}", group_id=config.kafka.group_id,
            auto_offset_reset="earliest", enable_auto_commit=False, **options,
        )  # fmt: skip
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), TIMEOUT_S)
            await consumer.commit()
        finally:
            await consumer.stop()
        assert record.value == b"event"

        producer = AIOKafkaProducer(**options)
        await producer.start()
        try:
            await asyncio.wait_for(producer.send_and_wait(f"block-{suffix}", b"ok"), TIMEOUT_S)
            # Read-only on its input: no grant writes there.
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(producer.send_and_wait(f"input-{suffix}", b"no"), TIMEOUT_S)
        finally:
            await producer.stop()

        # The auditor reads the block topic with its own, read-only grants.
        auditor = _write_config(tmp_path / "auditor.toml", secure_kafka, "auditor", suffix)
        proc = _acls("--config", str(auditor), "--principal", "User:auditor", "--role",
                     "auditor", "--apply", "--admin-config", str(admin_file))  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        reader = AIOKafkaConsumer(
            f"block-{suffix}", auto_offset_reset="earliest",
            **load_config(auditor).kafka.client_options(),
        )  # fmt: skip
        await reader.start()
        try:
            seen = await asyncio.wait_for(reader.getone(), TIMEOUT_S)
        finally:
            await reader.stop()
        assert seen.value == b"ok"
    finally:
        await admin.delete_topics(names)
        await admin.close()


def test_apply_without_admin_rights_fails_in_one_line(
    secure_kafka: SecureBroker, tmp_path: Path
) -> None:
    service = _write_config(tmp_path / "f.toml", secure_kafka, "filterd", uuid.uuid4().hex[:8])
    proc = _acls("--config", str(service), "--principal", "User:filterd", "--apply")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("filterd: error: creating ACL 'ALLOW User:filterd ")
    assert "ClusterAuthorizationFailedError" in line
