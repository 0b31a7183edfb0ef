"""Start-up's one connection: each everyday mistake named in one line, retriable or not."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from filterd.config import KafkaConfig, load_config
from filterd.errors import FilterdError
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


def _sockets_to(port: int) -> int:
    """This process's TCP sockets whose other end is ``port`` on loopback (Linux /proc)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                ours.add(target[len("socket:[") : -1])
    count = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if remote_port == port and fields[9] in ours:
            count += 1
    return count


@pytest.mark.parametrize(
    "env",
    [{}, {"sasl_password": "s3cr3t-but-wrong"}, {"security_protocol": "PLAINTEXT"}],
    ids=["pass", "wrong-password", "plaintext-to-tls"],
)
async def test_the_socket_is_closed_on_return(
    secure_kafka: SecureBroker, env: dict[str, str]
) -> None:
    # close() only starts a TLS close; returning before its end leaves the socket open to
    # whoever runs the loop next (or to nobody: a ResourceWarning once the loop is closed).
    port = int(secure_kafka.bootstrap.rsplit(":", 1)[1])
    with contextlib.suppress(FilterdError):
        await preflight(_kafka(secure_kafka, **env))
    assert _sockets_to(port) == 0
