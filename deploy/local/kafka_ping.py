#!/usr/bin/env python3
"""Ask a Kafka broker for cluster metadata; exit 0 when it answers with at least one broker.

Standard library only, so ``kafka.sh`` can wait for a broker before any virtualenv exists.
It speaks just enough of the wire protocol: ApiVersions v0 (which every broker answers, to
learn which Metadata versions it accepts), then one non-flexible Metadata request.

    python3 kafka_ping.py 127.0.0.1:9092 [--timeout 2] [--cluster-id ID] [--quiet]
    python3 kafka_ping.py 127.0.0.1:9093 --tls-cafile ca.pem

With ``--tls-cafile`` it speaks TLS (verifying the broker against that CA) to a SASL_SSL
listener and, having no credentials, asks only ApiVersions, which Kafka answers before
authentication: exit 0 then means the listener is up and its certificate is trusted.

Exit status: 0 answered, 1 no (valid) answer, 3 answered for another cluster id.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18
# Metadata v4..v8 share a request body that needs no tagged fields; Kafka 4 removed v0..v3.
METADATA_NON_FLEXIBLE = range(4, 9)
CLIENT_ID = b"filterd-kafka-ping"


class PingError(Exception):
    """The broker did not answer a well-formed metadata response."""


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    # Request header v1: api_key, api_version, correlation_id, client_id (int16-length string).
    header = struct.pack(">hhih", api_key, version, corr, len(CLIENT_ID)) + CLIENT_ID
    frame = header + body
    sock.sendall(struct.pack(">i", len(frame)) + frame)
    size = struct.unpack(">i", _read_exact(sock, 4))[0]
    payload = _read_exact(sock, size)
    (got,) = struct.unpack_from(">i", payload, 0)
    if got != corr:
        raise PingError(f"correlation id {got}, expected {corr}")
    return payload[4:]


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise PingError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def _metadata_version(sock: socket.socket) -> int:
    body = _request(sock, API_VERSIONS, 0, 1, b"")
    error, count = struct.unpack_from(">hi", body, 0)
    if error:
        raise PingError(f"ApiVersions error code {error}")
    for i in range(count):
        key, low, high = struct.unpack_from(">hhh", body, 6 + 6 * i)
        if key == API_METADATA:
            for version in METADATA_NON_FLEXIBLE:
                if low <= version <= high:
                    return version
            raise PingError(f"broker accepts Metadata v{low}..v{high} only")
    raise PingError("broker does not list the Metadata API")


def ping_tls(host: str, port: int, timeout: float, cafile: str) -> int:
    """TLS handshake against ``cafile``, then ApiVersions; return the Metadata version offered."""
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.settimeout(timeout)
        return _metadata_version(sock)


def _string(buf: bytes, pos: int) -> tuple[str | None, int]:
    (n,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    if n < 0:
        return None, pos
    return buf[pos : pos + n].decode(), pos + n


def ping(host: str, port: int, timeout: float) -> tuple[list[tuple[int, str, int]], str | None]:
    """Return the brokers (node id, host, port) and cluster id that ``host:port`` reports."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        version = _metadata_version(sock)
        # topics = null (all topics), allow_auto_topic_creation = false; v8 adds two more flags.
        body = struct.pack(">i?", -1, False)
        if version >= 8:
            body += struct.pack(">??", False, False)
        resp = _request(sock, API_METADATA, version, 2, body)
    pos = 4  # throttle_time_ms
    (count,) = struct.unpack_from(">i", resp, pos)
    pos += 4
    brokers = []
    for _ in range(count):
        (node_id,) = struct.unpack_from(">i", resp, pos)
        broker_host, pos = _string(resp, pos + 4)
        (broker_port,) = struct.unpack_from(">i", resp, pos)
        _rack, pos = _string(resp, pos + 4)
        brokers.append((node_id, broker_host or "", broker_port))
    cluster_id, pos = _string(resp, pos)
    return brokers, cluster_id


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the brokers and exit 0, or print why not and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of one broker")
    parser.add_argument("--timeout", type=float, default=2.0, help="socket timeout, seconds")
    parser.add_argument("--cluster-id", help="fail unless the broker reports this cluster id")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    parser.add_argument("--tls-cafile", help="speak TLS, trusting this CA; ApiVersions only")
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    if args.tls_cafile:
        try:
            ping_tls(host or "127.0.0.1", int(port), args.timeout, args.tls_cafile)
        except (OSError, PingError, struct.error, ValueError) as exc:
            if not args.quiet:
                print(f"{args.address}: no TLS answer: {exc}", file=sys.stderr)
            return 1
        if not args.quiet:
            print(f"{args.address}: TLS listener answers ApiVersions")
        return 0
    try:
        brokers, cluster_id = ping(host or "127.0.0.1", int(port), args.timeout)
    except (OSError, PingError, struct.error, ValueError) as exc:
        if not args.quiet:
            print(f"{args.address}: no metadata: {exc}", file=sys.stderr)
        return 1
    if not brokers:
        if not args.quiet:
            print(f"{args.address}: metadata lists no broker yet", file=sys.stderr)
        return 1
    if args.cluster_id and cluster_id != args.cluster_id:
        # Another broker holds the port: answering is not enough, it must be ours.
        if not args.quiet:
            print(f"{args.address}: cluster {cluster_id}, not {args.cluster_id}", file=sys.stderr)
        return 3
    if not args.quiet:
        listed = ", ".join(f"{node}@{h}:{p}" for node, h, p in brokers)
        print(f"{args.address}: cluster {cluster_id}, brokers {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
