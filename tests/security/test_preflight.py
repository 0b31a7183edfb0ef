"""Start-up's one connection: each everyday mistake named in one line, retriable or not."""

from __future__ import annotations

import pytest

from filterd.config import KafkaConfig, load_config
from filterd.preflight import (
    AuthenticationFailed,
    BrokerUnreachable,
    ProtocolMismatch,
    TlsError,
    preflight,
)

from .conftest import SecureBroker

pytestmark = pytest.mark.kafka


def _kafka(broker: SecureBroker, **env: str) -> KafkaConfig:
    overrides = {f"FILTERD_KAFKA_{key.upper()}": value for key, value in env.items()}
    return load_config(broker.config("filterd"), env=overrides).kafka


async def test_right_settings_pass(secure_kafka: SecureBroker) -> None:
    await preflight(_kafka(secure_kafka))


async def test_wrong_password(secure_kafka: SecureBroker) -> None:
    with pytest.raises(AuthenticationFailed) as err:
        await preflight(_kafka(secure_kafka, sasl_password="s3cr3t-but-wrong"))
    assert str(err.value) == (
        "authentication failed for user filterd (SCRAM-SHA-512) at 127.0.0.1:9093"
    )
    assert err.value.retriable is False


async def test_unknown_user_says_the_same_without_a_password(secure_kafka: SecureBroker) -> None:
    kafka = _kafka(secure_kafka, sasl_username="mallory")
    with pytest.raises(AuthenticationFailed, match="for user mallory") as err:
        await preflight(kafka)
    assert kafka.sasl_password not in str(err.value)


async def test_mechanism_the_listener_lacks(secure_kafka: SecureBroker) -> None:
    with pytest.raises(AuthenticationFailed, match="does not accept SASL mechanism SCRAM-SHA-256"):
        await preflight(_kafka(secure_kafka, sasl_mechanism="SCRAM-SHA-256"))


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
async def test_plaintext_to_the_tls_port(secure_kafka: SecureBroker, protocol: str) -> None:
    with pytest.raises(ProtocolMismatch) as err:
        await preflight(_kafka(secure_kafka, security_protocol=protocol))
    assert f"security_protocol = {protocol}" in str(err.value)
    assert "127.0.0.1:9093" in str(err.value)
    assert err.value.retriable is False


async def test_unknown_ca(secure_kafka: SecureBroker) -> None:
    with pytest.raises(TlsError) as err:
        await preflight(_kafka(secure_kafka, ssl_cafile=""))
    assert str(err.value).startswith(
        "TLS: the certificate of 127.0.0.1:9093 is not trusted by the system's CAs"
    )


async def test_tls_to_a_plaintext_port(secure_kafka: SecureBroker, kafka_bootstrap: str) -> None:
    with pytest.raises((ProtocolMismatch, TlsError), match="does not speak TLS"):
        await preflight(_kafka(secure_kafka, bootstrap_servers=kafka_bootstrap))


async def test_nothing_listening_is_retriable(secure_kafka: SecureBroker) -> None:
    with pytest.raises(BrokerUnreachable) as err:
        await preflight(_kafka(secure_kafka, bootstrap_servers="127.0.0.1:1,127.0.0.1:2"))
    assert str(err.value) == (
        "broker unreachable at 127.0.0.1:1 (connection refused), 127.0.0.1:2 (connection refused)"
    )
    assert err.value.retriable is True
