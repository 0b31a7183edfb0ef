"""Fixtures shared by the whole suite: the real Kafka broker, fresh topics and consumer groups.

Only tests that ask for ``kafka_bootstrap``, ``new_topic`` or ``new_group`` (directly or
through another fixture) need a broker; they are marked ``kafka`` automatically, so
``make unit`` (``pytest -m "not kafka"``) runs the rest without one: no broker is started.
The broker is the one ``deploy/local/kafka.sh up`` starts on 127.0.0.1 (port ``KAFKA_PORT``,
default 9092), or the one named by ``KAFKA_BOOTSTRAP=host:port``, in which case nothing is
started.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError

from filterd import topics
from tests.support.kafka import NewTopicFactory, end_offsets

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "new_topic", "new_group"})
# Bounds a first-ever start: the jars are downloaded from Maven Central once.
BROKER_START_TIMEOUT_S = 600
TOPIC_READY_TIMEOUT_S = 30.0


def pytest_report_header() -> str:
    from filterd import native

    return f"filterd hot path: {native.hot_path()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a compiled module older than its source: the edit would not be tested."""
    from filterd import native

    stale = [m.name for m in native.modules() if m.stale]
    if stale:
        pytest.exit(f"compiled before their last edit: {', '.join(stale)}; run `make native`", 2)


def _uses_kafka(item: pytest.Item) -> bool:
    return bool(KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that reaches the broker, however indirectly, with ``kafka``."""
    for item in items:
        if _uses_kafka(item):
            item.add_marker(pytest.mark.kafka)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the broker before the first test when a selected test needs it.

    Here rather than in the fixture: a first-ever start downloads the jars, which must not
    count against the per-test timeout of whichever test happens to run first.
    """
    if session.config.option.collectonly or os.environ.get("KAFKA_BOOTSTRAP"):
        return
    if any(_uses_kafka(item) for item in session.items):
        _start_local_broker()


@functools.cache
def _start_local_broker() -> str | None:
    """Run ``kafka.sh up`` once per session; return its error output if it failed."""
    # The script is idempotent and serialized by a lock: a broker already up costs ~0.2 s.
    try:
        proc = subprocess.run(
            [str(KAFKA_SH), "up"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BROKER_START_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{KAFKA_SH} up did not finish within {BROKER_START_TIMEOUT_S}s"
    if proc.returncode != 0:
        return f"{KAFKA_SH} up failed ({proc.returncode}):\n{proc.stderr}"
    return None


@pytest.fixture(autouse=True)
def _no_leftover_log_handler() -> Iterator[None]:
    """Remove the handler an in-process ``filterd`` command installed (``setup_logging``).

    It writes to the ``sys.stderr`` of the test that installed it, which pytest closes after
    that test: a later test's log line would print a logging error into its own stderr.
    """
    yield
    from filterd.logs import _FilterdHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _FilterdHandler)]:
        root.removeHandler(handler)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The bootstrap servers of the test broker, started once per session if needed."""
    configured = os.environ.get("KAFKA_BOOTSTRAP")
    if configured:
        return configured
    error = _start_local_broker()
    if error:
        pytest.fail(error, pytrace=False)
    return f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"


def _unique(prefix: str, node: pytest.Item | pytest.Collector) -> str:
    # The test's name makes leftovers traceable; the random suffix keeps parallel runs and
    # reruns apart on a shared broker. Topic names allow [a-zA-Z0-9._-] and 249 chars.
    readable = re.sub(r"[^a-zA-Z0-9._-]+", "-", node.name).strip("-")[:60]
    return f"{prefix}-{readable}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def new_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[NewTopicFactory]:
    """Factory creating uniquely named topics (replication 1), deleted after the test.

    Returns once every partition has a leader that answers, so a producer or consumer
    started right after finds the topic and writes or reads it at once.
    """
    client = {"bootstrap_servers": kafka_bootstrap}
    created: list[str] = []

    async def factory(
        partitions: int = 3,
        name: str | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str:
        topic = name or _unique("test", request.node)
        spec = topics.TopicSpec(partitions, 1, dict(config or {}))
        await topics.create(
            client, {topic: spec}, exist_ok=False, ready_timeout_s=TOPIC_READY_TIMEOUT_S
        )
        created.append(topic)
        # The metadata can name a leader a moment before that leader serves the partition;
        # aiokafka retries ListOffsets until it does, so producers start without
        # NotLeaderForPartition retries.
        await end_offsets(kafka_bootstrap, topic)
        return topic

    yield factory
    if created:
        try:
            await topics.delete(client, created)
        except KafkaError as exc:  # cleanup must not hide the test's own outcome
            print(f"could not delete test topics {created}: {exc!r}")


@pytest.fixture
def new_group(request: pytest.FixtureRequest, kafka_bootstrap: str) -> Callable[[], str]:
    """Factory returning a new, unique consumer group id on every call.

    It depends on ``kafka_bootstrap`` so that a test asking only for groups still gets a broker.
    """

    def factory() -> str:
        return _unique("group", request.node)

    return factory
