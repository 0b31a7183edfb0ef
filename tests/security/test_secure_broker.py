"""The secured local broker really demands what it claims: TLS, SCRAM-SHA-512 and ACLs.

Each client is built from the ``[kafka]`` section ``up-secure`` wrote, through filterd's own
config loader, so these tests also prove those files are complete filterd configuration.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from filterd.config import KafkaConfig, load_config

from .conftest import SecureBroker

pytestmark = pytest.mark.kafka

CLIENT_TIMEOUT_S = 30


def _kafka(path: Path, **overrides: str) -> KafkaConfig:
    env = {f"FILTERD_KAFKA_{key.upper()}": value for key, value in overrides.items()}
    return load_config(path, env=env).kafka


def test_client_configs_are_complete_filterd_kafka_sections(secure_kafka: SecureBroker) -> None:
    for user in ("admin", "filterd", "auditor"):
        kafka = _kafka(secure_kafka.config(user))
        assert kafka.bootstrap_servers == secure_kafka.bootstrap
        assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        assert kafka.sasl_username == user
        assert len(kafka.sasl_password) >= 16
        assert Path(kafka.ssl_cafile) == secure_kafka.cafile
        # Credentials are readable by their owner only.
        assert secure_kafka.config(user).stat().st_mode & 0o077 == 0


async def test_admin_round_trip_and_no_access_without_an_acl(
    secure_kafka: SecureBroker,
) -> None:
    admin_options = _kafka(secure_kafka.config("admin")).client_options()
    topic = f"secure-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(**admin_options)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        producer = AIOKafkaProducer(**admin_options)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"as admin")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **admin_options)
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), CLIENT_TIMEOUT_S)
        finally:
            await consumer.stop()
        assert record.value == b"as admin"

        # filterd authenticates, but holds no ACL yet: the authorizer refuses the topic.
        producer = AIOKafkaProducer(**_kafka(secure_kafka.config("filterd")).client_options())
        await producer.start()
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(producer.send_and_wait(topic, b"x"), CLIENT_TIMEOUT_S)
        finally:
            await producer.stop()
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def test_wrong_password_is_refused(secure_kafka: SecureBroker) -> None:
    options = _kafka(secure_kafka.config("filterd"), sasl_password="not-the-password")
    producer = AIOKafkaProducer(**options.client_options())
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(producer.start(), CLIENT_TIMEOUT_S)
    await producer.stop()


def test_tls_needs_the_local_ca(secure_kafka: SecureBroker) -> None:
    host, port = secure_kafka.bootstrap.rsplit(":", 1)
    trusted = ssl.create_default_context(cafile=str(secure_kafka.cafile))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        trusted.wrap_socket(raw, server_hostname=host) as tls,
    ):
        assert tls.version() is not None
    # The system's CAs do not know the throwaway CA.
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname=host)


def test_plaintext_kafka_gets_no_answer(secure_kafka: SecureBroker) -> None:
    host, port = secure_kafka.bootstrap.rsplit(":", 1)
    # An ApiVersions v0 request in the clear: the TLS listener never answers it as Kafka.
    request = b"\x00\x12\x00\x00\x00\x00\x00\x01\x00\x04ping"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(len(request).to_bytes(4, "big") + request)
        try:
            reply = sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    # A Kafka answer starts with a 4-byte size then our correlation id 1.
    assert reply[4:8] != b"\x00\x00\x00\x01"
