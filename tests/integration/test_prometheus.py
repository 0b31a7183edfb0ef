"""A real Prometheus server scrapes filterd and answers queries about it.

Debian's ``prometheus`` package provides the server (``.ci/run`` installs it);
each test module starts its own process on a free loopback port with a
1-second scrape interval and a file-based target list the tests rewrite.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from filterd.http import Health, HealthServer
from filterd.loadgen import iter_events, load_dataset, write_dataset
from filterd.loadgen.produce import produce_events
from filterd.metrics import Metrics
from tests.support.reference import Reference
from tests.support.stream import Stream, build_snapshot

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "filterd.json"
PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (apt-get install prometheus; .ci/run installs it)",
    ),
    pytest.mark.timeout(180),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Prometheus:
    url: str
    targets_file: Path

    def set_targets(self, *addresses: str) -> None:
        """Point the ``filterd`` job at these host:port targets (atomic rename)."""
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": list(addresses)}]))
        tmp.replace(self.targets_file)

    def api(self, path: str, **params: str) -> dict[str, object]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        data = body["data"]
        assert isinstance(data, dict)
        return data

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Evaluate an instant query; {sorted labels without __name__, job, instance: value}."""
        data = self.api("/api/v1/query", query=expr)
        result = {}
        for series in data["result"]:  # type: ignore[attr-defined]
            labels = {
                k: v
                for k, v in series["metric"].items()
                if k not in ("__name__", "job", "instance")
            }
            result[tuple(sorted(labels.items()))] = float(series["value"][1])
        return result

    async def wait_for(
        self,
        expr: str,
        accept: Callable[[dict[tuple[tuple[str, str], ...], float]], bool],
        timeout: float = 60,  # noqa: ASYNC109
    ) -> dict[tuple[tuple[str, str], ...], float]:
        """Poll a query until ``accept`` likes its result; return it."""
        deadline = time.monotonic() + timeout
        while True:
            result = await asyncio.to_thread(self.query, expr)
            if accept(result):
                return result
            if time.monotonic() > deadline:
                targets = await asyncio.to_thread(self.api, "/api/v1/targets")
                raise AssertionError(
                    f"{expr} never satisfied the test; last result {result}; targets {targets}"
                )
            await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    assert PROMETHEUS is not None
    workdir = tmp_path_factory.mktemp("prometheus")
    targets = workdir / "targets.json"
    targets.write_text("[]")
    config = workdir / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML; no YAML library needed
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "filterd",
                        "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = (workdir / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(url=f"http://127.0.0.1:{port}", targets_file=targets)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def dashboard_queries() -> list[str]:
    """Every dashboard query with Grafana's variables replaced as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append(
                target["expr"]
                .replace("$__rate_interval", "15s")
                .replace("$job", "filterd")
                .replace("$instance", ".*")
            )
    return queries


async def test_prometheus_scrapes_the_endpoint_and_runs_rules_and_dashboard(
    prometheus: Prometheus,
) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    health = Health()
    async with HealthServer(health, registry, host="127.0.0.1", port=0) as server:
        metrics.record_batch({("block", "opted-out"): 3, ("deliver", "consent"): 5}, 8, 0.002)
        prometheus.set_targets(f"127.0.0.1:{server.port}")

        events = await prometheus.wait_for(
            "filterd_events_total",
            lambda r: r.get((("reason", "opted-out"), ("route", "block"))) == 3,
        )
        assert events[(("reason", "consent"), ("route", "deliver"))] == 5
        assert events[(("reason", "no-consent"), ("route", "block"))] == 0  # pre-created
        assert await asyncio.to_thread(prometheus.query, "filterd_ready") == {(): 0.0}

        # A later batch shows up in a later scrape.
        metrics.record_batch({("block", "opted-out"): 4}, 4, 0.001)
        health.snapshot_version, health.assigned = "v1", True
        health.fetched()
        await prometheus.wait_for(
            'filterd_events_total{route="block", reason="opted-out"}',
            lambda r: r == {(("reason", "opted-out"), ("route", "block")): 7},
        )
        await prometheus.wait_for("filterd_ready", lambda r: r == {(): 1.0})

    # The alert rules loaded into a real server and evaluate without errors.
    groups = (await asyncio.to_thread(prometheus.api, "/api/v1/rules"))["groups"]
    rules = [rule for group in groups for rule in group["rules"]]  # type: ignore[attr-defined]
    assert len(rules) >= 8
    for rule in rules:
        assert rule["health"] in ("ok", "unknown"), rule
    # Every dashboard query is valid PromQL for this server.
    for expr in dashboard_queries():
        await asyncio.to_thread(prometheus.query, expr)


def start_filterd(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``filterd run ARGS`` in a child process, its output in ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "filterd", "run", *args], env=env, stdout=log, stderr=log
        )


def free_port_pair() -> int:
    """A port p with p + 1 also free: the ports of workers 0 and 1."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports")


@pytest.mark.kafka
@pytest.mark.parametrize("workers", [1, 2])
async def test_prometheus_reads_back_a_running_filterd(
    prometheus: Prometheus,
    kafka_bootstrap: str,
    new_topic,  # type: ignore[no-untyped-def]
    new_group,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    workers: int,
) -> None:
    dataset = tmp_path / "dataset"
    write_dataset(dataset, senders=6, recipients=600, consents=1_200, seed=11)
    stream = await Stream.create(
        kafka_bootstrap,
        new_topic,
        new_group,
        tmp_path / "snapshots",
        dataset,
        partitions=(2, 1, 1, 1),
    )
    version = await asyncio.to_thread(build_snapshot, stream.root, dataset)
    records = list(iter_events(load_dataset(dataset), 400, seed=5, bad_rate=0.1))
    reference = Reference.from_dataset(dataset)
    expected = Counter(reference.decide(value) for _, value in records)

    port = free_port_pair()
    env = dict(
        os.environ,
        **stream.env(
            FILTERD_METRICS_ENABLED="true",
            FILTERD_METRICS_PORT=str(port),
            FILTERD_LOGGING_FORMAT="json",
        ),
    )
    log_path = tmp_path / "filterd.log"
    process = start_filterd(env, log_path, "--workers", str(workers))
    try:
        # One target per worker: worker i serves on [metrics] port + i.
        prometheus.set_targets(*(f"127.0.0.1:{port + i}" for i in range(workers)))
        await produce_events(stream.bootstrap, stream.input, records, rate=None)

        # Every event, counted by route and reason over all workers, read back through
        # Prometheus's API.
        result = await prometheus.wait_for(
            "sum by (route, reason) (filterd_events_total)",
            lambda r: sum(r.values()) == len(records),
            timeout=120,
        )
        got = Counter({(dict(k)["route"], dict(k)["reason"]): int(v) for k, v in result.items()})
        assert +got == expected
        # Every worker (the second may start after the first routed everything) reports
        # the snapshot version in force.
        await prometheus.wait_for(
            "count by (version) (filterd_snapshot_info)",
            lambda r: r == {(("version", version),): float(workers)},
        )
        await prometheus.wait_for("count(filterd_ready == 1)", lambda r: r == {(): float(workers)})
        if workers == 1:
            # With two workers a partition may change hands after its records were routed;
            # its new owner has nothing to fetch, so no lag to report, and the old owner
            # dropped the series at revocation. One worker keeps its partitions.
            lag = await asyncio.to_thread(prometheus.query, "sum(filterd_consumer_lag_records)")
            assert lag == {(): 0.0}
        # `filterd check` finds the same process through the same configuration.
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "filterd", "check", "--workers", str(workers)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert [a["snapshot"] for a in answers] == [version] * workers
    except AssertionError as exc:
        tail = log_path.read_text()[-6000:]
        raise AssertionError(f"{exc}\n--- filterd log (tail) ---\n{tail}") from None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log_path.read_text()
    # JSON logs: the start line and the shutdown summary are JSON objects.
    entries = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    messages = [e["msg"] for e in entries if e["logger"] == "filterd.service"]
    assert any("started" in m for m in messages), messages
    assert any(m.startswith("shutdown") for m in messages), messages
    # 10 % bad input: rate-limited warnings, with their counts as JSON fields.
    warnings = [e for e in entries if e["logger"] == "filterd.input"]
    assert warnings
    assert all(e["level"] == "WARNING" and e["events"] >= 0 for e in warnings)
