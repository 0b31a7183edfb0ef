"""The health/metrics endpoint, served for real on an ephemeral port."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import filterd.check
from filterd.errors import ConfigError
from filterd.http import Health, HealthServer, check, worker_port
from filterd.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await reader.read()  # the server closes after one response
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, val = line.partition(":")
        headers[name.strip().lower()] = val.strip()
    return status, headers, body


async def get(
    port: int, path: str, *, accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    extra = f"Accept: {accept}\r\n" if accept else ""
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())


def ready_health(clock: FakeClock) -> Health:
    health = Health(clock=clock, snapshot_version="20260101T000000Z", assigned=True)
    health.fetched()
    return health


async def test_readyz_lists_every_reason_then_turns_ready() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    async with HealthServer(health, host="127.0.0.1", port=0) as server:
        status, headers, body = await get(server.port, "/readyz")
        assert status == 503
        assert headers["content-type"] == "application/json"
        report = json.loads(body)
        assert report["ready"] is False
        assert report["reasons"] == ["no snapshot loaded", "no partitions assigned"]

        health.snapshot_version = "v7"
        health.assigned = True
        status, _, body = await get(server.port, "/readyz")
        assert (status, json.loads(body)["reasons"]) == (503, ["not fetching yet"])

        health.fetched()
        status, _, body = await get(server.port, "/readyz")
        report = json.loads(body)
        assert status == 200
        assert report == {
            "ready": True,
            "snapshot": "v7",
            "assigned": True,
            "last_fetch_age_s": 0.0,
        }

        clock.now += health.fetch_stall_s + 2.5
        status, _, body = await get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["reasons"] == [
            f"not fetching for {health.fetch_stall_s + 2.5:.1f}s"
        ]

        health.fetched()
        health.stopping = True
        status, _, body = await get(server.port, "/readyz")
        assert (status, json.loads(body)["reasons"]) == (503, ["shutting down"])


async def test_healthz_follows_the_loop_heartbeat() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    async with HealthServer(health, host="127.0.0.1", port=0) as server:
        status, _, body = await get(server.port, "/healthz")
        assert (status, json.loads(body)) == (200, {"alive": True})  # no monitor: served = alive
        health.beat()
        clock.now += health.heartbeat_stall_s - 1
        assert (await get(server.port, "/healthz"))[0] == 200
        clock.now += 2
        status, _, body = await get(server.port, "/healthz")
        assert status == 503
        assert json.loads(body)["reasons"][0].startswith("event loop heartbeat is 11.0s old")
        # Liveness does not depend on readiness: no snapshot, still alive once the loop beats.
        health.beat()
        assert (await get(server.port, "/healthz"))[0] == 200


async def test_metrics_serves_the_registry_with_readiness() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.record_batch({("block", "opted-out"): 3}, 3, 0.001)
    health = Health(clock=clock)
    async with HealthServer(health, registry, host="127.0.0.1", port=0) as server:
        status, headers, body = await get(server.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        key = ("filterd_events_total", (("reason", "opted-out"), ("route", "block")))
        assert samples[key] == 3
        assert samples[("filterd_ready", ())] == 0

        health.snapshot_version, health.assigned = "v1", True
        health.fetched()
        _, _, body = await get(server.port, "/metrics")
        assert b"\nfilterd_ready 1.0\n" in body

        # Prometheus asks for OpenMetrics and gets it.
        status, headers, body = await get(
            server.port, "/metrics", accept="application/openmetrics-text;version=1.0.0,*/*;q=0.1"
        )
        assert status == 200
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")


async def test_errors_and_head() -> None:
    async with HealthServer(Health(), host="127.0.0.1", port=0) as server:
        assert (await get(server.port, "/nope"))[0] == 404
        assert (await get(server.port, "/metrics"))[0] == 404  # no registry given
        status, _, _ = await request(server.port, b"POST /readyz HTTP/1.1\r\n\r\n")
        assert status == 405
        status, _, _ = await request(server.port, b"garbage\r\n\r\n")
        assert status == 400
        status, headers, body = await request(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0
        assert (await get(server.port, "/healthz?verbose=1"))[0] == 200


async def test_a_silent_client_does_not_hold_the_server() -> None:
    server = HealthServer(Health(), host="127.0.0.1", port=0, request_timeout=0.2)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its headers
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed, unanswered
    writer.close()
    await writer.wait_closed()
    assert (await get(server.port, "/healthz"))[0] == 200
    await server.stop()
    await server.stop()  # safe twice
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)


async def test_stop_ends_open_connections() -> None:
    server = HealthServer(Health(), host="127.0.0.1", port=0, request_timeout=60)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await asyncio.sleep(0.05)  # let the server accept it
    await asyncio.wait_for(server.stop(), timeout=5)
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    writer.close()
    await writer.wait_closed()


async def test_port_in_use_is_an_error() -> None:
    async with HealthServer(Health(), host="127.0.0.1", port=0) as first:
        second = HealthServer(Health(), host="127.0.0.1", port=first.port)
        with pytest.raises(OSError, match="in use"):
            await second.start()


async def test_check_exit_codes_and_output() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    async with HealthServer(health, host="127.0.0.1", port=0) as server:
        out = io.StringIO()
        code = await asyncio.to_thread(check, "127.0.0.1", server.port, 5.0, out=out)
        assert code == 1
        report = json.loads(out.getvalue())
        assert report["ready"] is False
        assert "no snapshot loaded" in report["reasons"]
        assert report["address"] == f"127.0.0.1:{server.port}"

        server.health = ready_health(clock)
        out = io.StringIO()
        # A wildcard listen address is checked on loopback.
        code = await asyncio.to_thread(check, "0.0.0.0", server.port, 5.0, out=out)
        assert code == 0
        assert json.loads(out.getvalue())["ready"] is True


def test_check_nothing_listening() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        out = io.StringIO()
        assert check("127.0.0.1", port, 2.0, out=out) == 1
    report = json.loads(out.getvalue())
    assert report["ready"] is False
    assert report["reasons"][0].startswith(f"cannot reach 127.0.0.1:{port}")


def test_worker_port() -> None:
    assert [worker_port(9108, i) for i in range(3)] == [9108, 9109, 9110]


async def adjacent_servers(a: Health, b: Health) -> tuple[HealthServer, HealthServer]:
    """Two started servers on ports p and p + 1, as workers 0 and 1 would be."""
    for _ in range(20):
        first = HealthServer(a, host="127.0.0.1", port=0)
        await first.start()
        second = HealthServer(b, host="127.0.0.1", port=first.port + 1)
        try:
            await second.start()
        except OSError:  # p + 1 is someone else's: try another pair
            await first.stop()
            continue
        return first, second
    raise AssertionError("no two adjacent free ports")


def check_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="filterd")
    filterd.check.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


async def test_check_command_reads_the_address_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    first, second = await adjacent_servers(ready_health(clock), Health(clock=clock))
    async with first, second:
        config = tmp_path / "filterd.toml"
        config.write_text(f'[metrics]\nhost = "127.0.0.1"\nport = {first.port}\n')
        assert await asyncio.to_thread(check_command, ["check", "--config", str(config)]) == 0
        assert json.loads(capsys.readouterr().out)["ready"] is True
        # Two workers: the second (port + 1) has no snapshot yet, so not ready.
        argv = ["check", "--config", str(config), "--workers", "2"]
        assert await asyncio.to_thread(check_command, argv) == 1
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["address"] for line in lines] == [
            f"127.0.0.1:{first.port}",
            f"127.0.0.1:{second.port}",
        ]
        assert [line["ready"] for line in lines] == [True, False]


def test_check_command_refuses_a_disabled_endpoint(tmp_path: Path) -> None:
    config = tmp_path / "filterd.toml"
    config.write_text("[metrics]\nenabled = false\n")
    with pytest.raises(ConfigError, match=r"metrics\.enabled"):
        check_command(["check", "--config", str(config)])
