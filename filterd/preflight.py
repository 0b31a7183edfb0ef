"""One connection to the broker before any client starts: say plainly what is wrong.

aiokafka's clients retry every connection failure alike and report the last one as
``KafkaConnectionError("Unable to bootstrap from ...")``, whatever the cause; the cause
(a wrong password, an untrusted certificate, TLS spoken to a plaintext port) is only in its
log lines, once per retry. An operator needs one line, and a mistake that no retry can fix
must stop start-up instead of retrying for a minute. So ``filterd run`` first opens one
connection per bootstrap address exactly as its clients will (same TLS context, same SASL
settings; aiokafka's own ``create_conn``) and turns the outcome into a :class:`FilterdError`:

- :class:`AuthenticationFailed`, :class:`TlsError`, :class:`ProtocolMismatch`: not
  retriable (``retriable = False``): the config or the credentials must change;
- :class:`BrokerUnreachable`: retriable: the broker may come back.

The password never appears in a message: only the user name and the mechanism.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from filterd.config import KafkaConfig
from filterd.errors import BrokerError, FilterdError

#: Seconds one connection attempt may take (TCP, TLS, SASL and one ApiVersions round trip).
CONNECT_TIMEOUT_S = 10.0

#: Seconds to wait for the connection's socket to close once preflight is done with it (a TLS
#: close is a round trip: close_notify out, the broker's back).
CLOSE_TIMEOUT_S = 2.0


#: OpenSSL's reasons when the other end does not speak TLS at all.
NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING", "RECORD_LAYER_FAILURE"}
)


class AuthenticationFailed(FilterdError):
    """The broker refused the SASL credentials."""


class TlsError(FilterdError):
    """The TLS handshake failed: an untrusted certificate, or TLS to a port that lacks it."""


class ProtocolMismatch(FilterdError):
    """The broker closed the connection during the handshake: security_protocol differs."""


class BrokerUnreachable(BrokerError):
    """Nothing accepts connections at the bootstrap addresses (retriable)."""


def addresses(kafka: KafkaConfig) -> list[tuple[str, int]]:
    """The (host, port) pairs of ``bootstrap_servers``."""
    result = []
    for item in kafka.bootstrap_servers.split(","):
        host, _, port = item.strip().rpartition(":")
        result.append((host.strip("[]") or "127.0.0.1", int(port or 9092)))
    return result


async def preflight(kafka: KafkaConfig, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Return when one bootstrap address takes a connection as filterd's clients will make it.

    Raises the first non-retriable error met (every address would give it), else
    :class:`BrokerUnreachable` naming every address tried.
    """
    unreachable: list[str] = []
    for host, port in addresses(kafka):
        try:
            await asyncio.wait_for(_connect(kafka, host, port), timeout_s)
            return
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, ssl.SSLError):
                raise _tls_error(kafka, host, port, exc) from None
            unreachable.append(f"{host}:{port} ({_os_reason(exc)})")
        except FilterdError:
            raise
    raise BrokerUnreachable(f"broker unreachable at {', '.join(unreachable)}")


async def _connect(kafka: KafkaConfig, host: str, port: int) -> None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        AuthenticationFailedError,
        KafkaConnectionError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    options = kafka.client_options()
    address = f"{host}:{port}"
    # aiokafka calls on_close once a connection that had a socket is closed, by us or by its
    # own failure handling, and close() returns the future its socket's end resolves.
    closing: list[asyncio.Future[None]] = []
    try:
        conn = await create_conn(
            host,
            port,
            client_id=kafka.client_id,
            request_timeout_ms=kafka.request_timeout_ms,
            ssl_context=options.get("ssl_context"),
            security_protocol=kafka.security_protocol,
            sasl_mechanism=options.get("sasl_mechanism"),
            sasl_plain_username=options.get("sasl_plain_username"),
            sasl_plain_password=options.get("sasl_plain_password"),
            on_close=lambda conn, _reason: closing.append(conn.close()),
        )
        conn.close()
    except (SaslAuthenticationFailed, AuthenticationFailedError):
        raise AuthenticationFailed(
            f"authentication failed for user {kafka.sasl_username} ({kafka.sasl_mechanism}) "
            f"at {address}"
        ) from None
    except UnsupportedSaslMechanismError:
        raise AuthenticationFailed(
            f"{address} does not accept SASL mechanism {kafka.sasl_mechanism}"
        ) from None
    except KafkaConnectionError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLError):
            raise _tls_error(kafka, host, port, cause) from None
        if isinstance(cause, OSError) and not isinstance(cause, ConnectionResetError):
            raise cause from None
        raise _mismatch(kafka, address) from None
    except (ConnectionResetError, asyncio.IncompleteReadError, EOFError):
        raise _mismatch(kafka, address) from None
    finally:
        await _socket_closed(closing)


async def _socket_closed(closing: list[asyncio.Future[None]]) -> None:
    """Wait, a bounded time, until the connection's socket is closed.

    ``close()`` only starts it: a TLS close waits for the broker's close_notify. Returning
    before would leave the socket to whoever runs the event loop next, or to nobody if
    start-up stops and the loop is closed (a ``ResourceWarning: unclosed transport``).
    """
    if closing:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(closing[0]), CLOSE_TIMEOUT_S)


def _tls_error(kafka: KafkaConfig, host: str, port: int, exc: ssl.SSLError) -> TlsError:
    address = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = kafka.ssl_cafile or "the system's CAs"
        return TlsError(
            f"TLS: the certificate of {address} is not trusted by {trusted} "
            f"({exc.verify_message or exc.reason})"
        )
    if exc.reason in NOT_TLS_REASONS:
        return TlsError(
            f"TLS: {address} does not speak TLS (security_protocol = {kafka.security_protocol}); "
            "check the port and the listener's protocol"
        )
    return TlsError(f"TLS handshake with {address} failed: {exc.reason or exc}")


def _mismatch(kafka: KafkaConfig, address: str) -> ProtocolMismatch:
    protocol = kafka.security_protocol
    if protocol.endswith("SSL"):
        return ProtocolMismatch(
            f"{address} closed the connection during the TLS handshake: "
            f"its listener does not speak TLS (security_protocol = {protocol})"
        )
    return ProtocolMismatch(
        f"{address} closed the connection during the Kafka handshake: its listener does not "
        f"speak security_protocol = {protocol} (a TLS or SASL listener?)"
    )


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
