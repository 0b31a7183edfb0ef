"""The operator's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz`` on one port.

A deliberately tiny HTTP/1.1 server on ``asyncio.start_server`` (one request
per connection, ``Connection: close``): probes and scrapes are a few requests
a second, so a web framework would only add a dependency. It runs on the
stream's own event loop, which is the point of ``/healthz``: if the loop is
blocked the probe times out.

:class:`Health` is the state the stream service updates (snapshot in force,
partitions assigned, last fetch, loop heartbeat) and both probes read.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json"


@dataclass(slots=True)
class Health:
    """What the probes know about the service; the stream loop updates it.

    The stream sets :attr:`snapshot_version` when a snapshot is in force,
    :attr:`assigned` from its rebalance listener, calls :meth:`fetched` after
    every ``getmany`` (empty or not) and :meth:`beat` from the loop lag
    monitor; it sets :attr:`stopping` when shutdown begins, so a load balancer
    or orchestrator stops counting on it before it leaves the group.
    """

    #: ``/readyz`` fails when the consumer has not fetched for this long
    #: (a stuck producer or broker holds the loop before the next fetch).
    fetch_stall_s: float = 30.0
    #: ``/healthz`` fails when the loop heartbeat is older than this.
    heartbeat_stall_s: float = 10.0
    snapshot_version: str | None = None
    #: Why the broker cannot be used right now (e.g. unreachable), set by start-up.
    broker_problem: str | None = None
    #: A topic the service needs that is missing (the input topic, waited for).
    topic_problem: str | None = None
    assigned: bool = False
    stopping: bool = False
    last_fetch_monotonic: float | None = None
    heartbeat_monotonic: float | None = None
    #: Further checks, each returning why the service is not ready or None (the change
    #: feed: lagging past its bound means no decision may be made).
    checks: list[Callable[[], str | None]] = field(default_factory=list)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def fetched(self) -> None:
        """Record that the consumer fetched (called once per ``getmany``)."""
        self.last_fetch_monotonic = self.clock()

    def beat(self) -> None:
        """Record that the event loop turned (called by the loop lag monitor)."""
        self.heartbeat_monotonic = self.clock()

    def liveness(self) -> tuple[bool, list[str]]:
        """Whether the process is alive: its loop turns and the heartbeat is fresh.

        Being asked at all proves the loop turns; the heartbeat (when a monitor
        feeds it) also catches a loop that serves sockets but whose
        timers no longer run on time.
        """
        if self.heartbeat_monotonic is None:
            return True, []
        age = self.clock() - self.heartbeat_monotonic
        if age > self.heartbeat_stall_s:
            return False, [f"event loop heartbeat is {age:.1f}s old"]
        return True, []

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether the service is doing its job, and if not every reason why."""
        reasons: list[str] = []
        if self.stopping:
            reasons.append("shutting down")
        if self.snapshot_version is None:
            reasons.append("no snapshot loaded")
        if self.broker_problem is not None:
            reasons.append(self.broker_problem)
        if self.topic_problem is not None:
            reasons.append(self.topic_problem)
        for check in self.checks:
            problem = check()
            if problem is not None:
                reasons.append(problem)
        if not self.assigned:
            reasons.append("no partitions assigned")
        elif self.last_fetch_monotonic is None:
            reasons.append("not fetching yet")
        else:
            idle = self.clock() - self.last_fetch_monotonic
            if idle > self.fetch_stall_s:
                reasons.append(f"not fetching for {idle:.1f}s")
        return not reasons, reasons

    def report(self) -> dict[str, object]:
        """The ``/readyz`` JSON body."""
        ready, reasons = self.readiness()
        body: dict[str, object] = {
            "ready": ready,
            "snapshot": self.snapshot_version,
            "assigned": self.assigned,
        }
        if self.last_fetch_monotonic is not None:
            body["last_fetch_age_s"] = round(self.clock() - self.last_fetch_monotonic, 3)
        if reasons:
            body["reasons"] = reasons
        return body


class ReadinessCollector:
    """Exposes ``filterd_ready`` (1 or 0), the ``/readyz`` answer, at scrape time.

    Prometheus cannot call ``/readyz`` by itself; this gauge is what the
    ``FilterdNotReady`` alert fires on.
    """

    name = "filterd_ready"
    documentation = (
        "1 when a snapshot is loaded and the consumer is assigned and fetching (as /readyz)."
    )

    def __init__(self, health: Health) -> None:
        self.health = health

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        ready, _ = self.health.readiness()
        return [GaugeMetricFamily(self.name, self.documentation, value=1.0 if ready else 0.0)]


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def _response(status: int, content_type: str, body: bytes, *, head: bool = False) -> bytes:
    phrase = _REASONS[status]
    header = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return header if head else header + body


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from ``health`` and ``registry``.

    ``host`` and ``port`` are ``[metrics] host`` / ``port`` (their defaults are
    the config's); ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).
    When ``registry`` is given, ``/metrics`` serves it and a ``filterd_ready``
    gauge is registered on it; without one ``/metrics`` answers 404.
    """

    def __init__(
        self,
        health: Health,
        registry: CollectorRegistry | None = None,
        *,
        host: str,
        port: int,
        request_timeout: float = 5.0,
    ) -> None:
        self.health = health
        self.registry = registry
        self.host = host
        self.port = port
        self.request_timeout = request_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        if registry is not None:
            registry.register(ReadinessCollector(health))

    async def start(self) -> None:
        """Listen on ``host:port``; raises ``OSError`` if the port is taken."""
        if self._server is not None:
            return
        # A request head is a few hundred bytes; refuse anything much larger.
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=16 * 1024
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("serving /metrics, /healthz, /readyz on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and end open connections; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), timeout=self.request_timeout
                )
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return  # a half-open probe or a port scanner: nothing to answer
            writer.write(self.respond(head))
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)

    def respond(self, head: bytes) -> bytes:
        """Build the whole response to one request head (request line + headers)."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, JSON_TYPE, _json({"error": "bad request"}))
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _response(405, JSON_TYPE, _json({"error": "only GET and HEAD"}))
        head_only = method == "HEAD"
        path = target.split("?", 1)[0]
        if path == "/healthz":
            alive, reasons = self.health.liveness()
            body: dict[str, object] = {"alive": alive}
            if reasons:
                body["reasons"] = reasons
            return _response(200 if alive else 503, JSON_TYPE, _json(body), head=head_only)
        if path == "/readyz":
            report = self.health.report()
            status = 200 if report["ready"] else 503
            return _response(status, JSON_TYPE, _json(report), head=head_only)
        if path == "/metrics" and self.registry is not None:
            accept = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            # Serializing a few dozen series takes well under a millisecond,
            # so it runs on the loop rather than in a thread.
            encoder, content_type = choose_encoder(accept)
            return _response(200, content_type, encoder(self.registry), head=head_only)
        return _response(404, JSON_TYPE, _json({"error": f"no such path: {path}"}), head=head_only)


def worker_port(base_port: int, worker_index: int) -> int:
    """The port worker ``worker_index`` (0-based) of ``filterd run --workers N`` serves on."""
    return base_port + worker_index


def _connect_host(host: str) -> str:
    # A wildcard listen address is reachable on loopback.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def check(host: str, port: int, timeout: float = 5.0, *, out: TextIO | None = None) -> int:
    """GET ``/readyz`` on ``host:port``, print its JSON body, return 0 if ready else 1.

    Connection failures print a JSON body with the reason too, so scripts can
    always parse the output.
    """
    target = _connect_host(host)
    connection = http.client.HTTPConnection(target, port, timeout=timeout)
    try:
        connection.request("GET", "/readyz")
        response = connection.getresponse()
        raw = response.read()
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        status = 0
        raw = _json({"ready": False, "reasons": [f"cannot reach {target}:{port}: {exc}"]})
    finally:
        connection.close()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"ready": False, "reasons": [f"HTTP {status} with a non-JSON body"]}
    if not isinstance(body, dict):
        body = {"ready": False, "reasons": [f"HTTP {status} with an unexpected body"]}
    body["address"] = f"{target}:{port}"
    print(json.dumps(body, separators=(",", ":")), file=out)
    return 0 if status == 200 and body.get("ready") is True else 1
