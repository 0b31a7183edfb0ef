"""The container image, built and run: `make image-test` (also part of `make test`).

The image is built once per session with ``deploy/docker/image.sh build`` (what `make image`
runs; the layer cache makes a rebuild of unchanged sources take seconds), then run with the
engine that script uses: podman through ``deploy/docker/podman.sh`` on this project's
machines. Without podman or docker every test here skips and says so.

The image runs against the real local broker (host network) and must route a generated set of
events exactly as ``filterd replay`` decides them, report healthy through its own HEALTHCHECK
command, run as a non-root user, hold no compiler, and run the compiled hot path.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from deploy_util import DEPLOY

from filterd.loadgen import iter_events, load_dataset, write_dataset
from filterd.loadgen.produce import produce_events
from tests.support.kafka import NewTopicFactory, drain
from tests.support.reference import Reference
from tests.support.stream import build_snapshot, cli

IMAGE_SH = DEPLOY / "docker" / "image.sh"
# A first build on a fresh machine: debootstrap, apt, pip, the mypyc compile (docs/deploy.md).
BUILD_TIMEOUT_S = 1800
CONTAINER_TIMEOUT_S = 120
# Builder base images that hold a compiler, to show that the compiler check finds one.
BUILDER_BASES = ("localhost/filterd-base:bookworm-build", "python:3.11-bookworm")
# gcc, cc, c++, g++, clang, tcc, with or without a target prefix or version suffix.
COMPILER = re.compile(r"^(?:[\w.]+-)?(?:gcc|g\+\+|cc|c\+\+|clang|clang\+\+|tcc)(?:-[\d.]+)?$")

# /healthz answers 200 once filterd's HTTP endpoint is up (whether or not it is ready).
HEALTHZ = (
    "import os, urllib.request; urllib.request.urlopen("
    "f'http://127.0.0.1:{os.environ[\"FILTERD_METRICS_PORT\"]}/healthz', timeout=5)"
)

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Image:
    """The built image and the engine command that built it."""

    engine: str
    name: str

    def __call__(
        self, *args: str, timeout: float = CONTAINER_TIMEOUT_S, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.engine, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert done.returncode == 0, (
                f"{self.engine} {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def shell(self, image: str, script: str) -> str:
        """Run ``sh -c SCRIPT`` in a throw-away container of ``image``; return its stdout."""
        return self("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh",
                    image, "-c", script).stdout  # fmt: skip


def _image_sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMAGE_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def image(pytestconfig: pytest.Config) -> Image:
    """``image.sh build``, once per session; skip without a container engine."""
    engine = _image_sh("engine")
    if engine.returncode != 0:
        pytest.skip(
            "no container engine (podman or docker) on this machine: the image is not "
            f"built or run here. {engine.stderr.strip()}"
        )
    built = _image_sh("build", timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, f"make image failed:\n{built.stderr[-6000:]}"
    result = Image(engine.stdout.strip(), _image_sh("name").stdout.strip())
    # "image: built NAME in N s, size N bytes (N MB)", shown whatever pytest captures.
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{built.stderr.splitlines()[-1]}")
    return result


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_runs_as_a_non_root_user(image: Image) -> None:
    # First in the file: a first-ever build happens in this test's set-up, hence its timeout.
    configured = image("image", "inspect", "--format", "{{.Config.User}}", image.name).stdout
    user, _, group = configured.strip().partition(":")
    ids = image("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image.name,
                "-c", "id -u; id -g").stdout.split()  # fmt: skip
    assert ids == [user, group], f"configured {configured.strip()!r}, runs as {ids}"
    assert all(i.isdigit() and int(i) != 0 for i in ids), f"the image runs as {ids}"


def _compilers(image: Image, name: str) -> list[str]:
    listing = image.shell(
        name, "for d in $(echo \"$PATH\" | tr : ' ') /usr/libexec /usr/lib/gcc; do"
        " [ -d \"$d\" ] && find \"$d\" -maxdepth 3 \\( -type f -o -type l \\) -printf '%f\\n';"
        " done; true",
    )  # fmt: skip
    return sorted({line for line in listing.split() if COMPILER.match(line) or line == "cc1"})


def test_holds_no_compiler(image: Image) -> None:
    assert _compilers(image, image.name) == []
    # The same search finds the compiler of the builder stage's base image.
    present = [
        b for b in BUILDER_BASES if image("image", "inspect", b, check=False).returncode == 0
    ]
    assert present, f"none of {BUILDER_BASES} in the store after the build"
    assert "gcc" in _compilers(image, present[0]), present[0]


def test_runs_the_compiled_hot_path(image: Image) -> None:
    done = image("run", "--rm", "--network", "none", "--entrypoint", "python",
                 image.name, "-m", "filterd.native")  # fmt: skip
    # `python -m filterd.native` exits 0 for an interpreted build too: read what it says.
    assert "hot path: compiled" in done.stdout, done.stdout


def test_healthcheck_is_filterd_check(image: Image) -> None:
    test = image("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}",
                 image.name).stdout  # fmt: skip
    argv = orjson.loads(test)
    assert argv[:3] == ["CMD", "filterd", "check"], argv


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def container(image: Image) -> Iterator[Callable[..., str]]:
    """Start detached containers of the image; they are removed after the test."""
    names: list[str] = []

    def start(*args: str) -> str:
        name = f"filterd-test-{uuid.uuid4().hex[:10]}"
        image("run", "--detach", "--name", name, *args)
        names.append(name)
        return name

    yield start
    for name in names:
        logs = image("logs", "--tail", "40", name, check=False)
        print(f"--- {name} (last lines)\n{logs.stdout}{logs.stderr}")
        image("rm", "--force", "--time", "0", name, check=False)


def _until(
    attempt: Callable[[], subprocess.CompletedProcess[str]], within: float
) -> subprocess.CompletedProcess[str]:
    """Run ``attempt`` every second until it exits 0 or ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        done = attempt()
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        time.sleep(1)


def _healthy(image: Image, name: str, within: float) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK, run by the engine, until it passes or ``within`` runs out."""
    if "podman" in image.engine:
        return _until(lambda: image("healthcheck", "run", name, check=False), within)
    # docker has no `healthcheck run`: run the image's command itself.
    test = image("inspect", "--format", "{{json .Config.Healthcheck.Test}}", name).stdout
    return _until(lambda: image("exec", name, *orjson.loads(test)[1:], check=False), within)


async def _topics(new_topic: NewTopicFactory) -> dict[str, str]:
    return {
        "input": await new_topic(partitions=3),
        "deliver": await new_topic(partitions=3),
        "block": await new_topic(partitions=3),
        "invalid": await new_topic(partitions=1),
        "changes": await new_topic(
            partitions=1,
            config={"cleanup.policy": "compact", "message.timestamp.type": "LogAppendTime"},
        ),
        "inbound": await new_topic(partitions=1),
    }


def _readable(snapshots: Path) -> None:
    """The container's user (uid 10001) reads the snapshot root, not the test's."""
    for path in (snapshots, *snapshots.rglob("*")):
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))


def _start_filterd(
    container: Callable[..., str],
    image: Image,
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    snapshots: Path,
) -> str:
    """The image's own command (`filterd run`), configured by FILTERD_* variables as operators
    do, on the host's network, with a read-only root and snapshot volume; return its name."""
    env = {
        "FILTERD_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FILTERD_KAFKA_GROUP_ID": group,
        **{f"FILTERD_TOPICS_{role.upper()}": topic for role, topic in topics.items()},
        "FILTERD_SNAPSHOT_ROOT": "/var/lib/filterd/snapshots",
        "FILTERD_SNAPSHOT_POLL_INTERVAL_S": "0.5",
        # Host network: a free port, not 9108, which another process may hold.
        "FILTERD_METRICS_PORT": str(_free_port()),
    }
    return container(
        "--network", "host", "--read-only",
        "--volume", f"{snapshots}:/var/lib/filterd/snapshots:ro",
        *(f"--env={key}={value}" for key, value in env.items()),
        image.name,
    )  # fmt: skip


async def test_healthcheck_fails_until_a_snapshot_is_loaded(
    image: Image,
    container: Callable[..., str],
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    new_group: Callable[[], str],
    tmp_path: Path,
) -> None:
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir(mode=0o755)
    _readable(snapshots)
    name = _start_filterd(
        container, image, kafka_bootstrap, await _topics(new_topic), new_group(), snapshots
    )
    # Fail closed: alive, but without a snapshot not ready, so the health check fails.
    alive = _until(lambda: image("exec", name, "python", "-c", HEALTHZ, check=False), within=60)
    assert alive.returncode == 0, alive.stdout + alive.stderr
    unhealthy = _healthy(image, name, within=0)  # one run
    assert unhealthy.returncode != 0, unhealthy.stdout
    dataset = tmp_path / "dataset"
    write_dataset(dataset, senders=3, recipients=200, consents=200, seed=3)
    build_snapshot(snapshots, dataset)
    _readable(snapshots)
    health = _healthy(image, name, within=60)
    assert health.returncode == 0, f"HEALTHCHECK failed:\n{health.stdout}{health.stderr}"


async def test_routes_like_replay_and_reports_healthy(
    image: Image,
    container: Callable[..., str],
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    new_group: Callable[[], str],
    tmp_path: Path,
) -> None:
    dataset = tmp_path / "dataset"
    write_dataset(dataset, senders=12, recipients=3_000, consents=6_000, seed=7)
    snapshots = tmp_path / "snapshots"
    build_snapshot(snapshots, dataset)
    _readable(snapshots)
    topics = await _topics(new_topic)
    # replay reads lines: events with a newline in their bytes are left out.
    events = [
        (k, v)
        for k, v in iter_events(load_dataset(dataset), 3_000, seed=11, bad_rate=0.05)
        if b"\n" not in v
    ]
    await produce_events(kafka_bootstrap, topics["input"], events, rate=None)
    reference = Reference.from_dataset(dataset)
    expected = Counter(reference.decide(value)[0] for _, value in events)

    name = _start_filterd(container, image, kafka_bootstrap, topics, new_group(), snapshots)

    outputs = {
        route: await drain(
            kafka_bootstrap,
            topics[route],
            expected=expected[route] or None,
            timeout=90 if expected[route] else 5,
        )
        for route in ("deliver", "block", "invalid")
    }
    health = _healthy(image, name, within=60)
    assert health.returncode == 0, f"HEALTHCHECK failed:\n{health.stdout}{health.stderr}"
    uid = image("exec", name, "id", "-u").stdout.strip()
    assert uid != "0", "filterd runs as root in the container"

    # SIGTERM drains and exits 0 within the stop timeout the deployment files use.
    image("stop", "--time", "45", name, timeout=90)
    state = image("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    assert state == "0", f"filterd exited {state} on SIGTERM"

    inputs = await drain(kafka_bootstrap, topics["input"], expected=len(events))
    ordered = sorted(inputs, key=lambda r: (r.partition, r.offset))
    lines = tmp_path / "events.jsonl"
    lines.write_bytes(b"".join((r.value or b"") + b"\n" for r in ordered))
    cli("replay", "--snapshot", str(snapshots), "--input", str(lines),
        "--out", str(tmp_path / "replay"))  # fmt: skip
    replayed = [
        orjson.loads(line)
        for line in (tmp_path / "replay" / "decisions.jsonl").read_bytes().splitlines()
    ]
    streamed: dict[str, tuple[str, str]] = {}
    for route, records in outputs.items():
        for record in records:
            headers = {k: v.decode() for k, v in record.headers}
            source = headers["filterd-source"]
            assert source not in streamed, f"{source} routed twice"
            streamed[source] = (route, headers["filterd-reason"])
    assert len(replayed) == len(ordered) == len(events) == len(streamed)
    for record, decision in zip(ordered, replayed, strict=True):
        source = f"{record.topic}/{record.partition}/{record.offset}"
        assert streamed[source] == (decision["route"], decision["reason"]), source
    # Every route was exercised, so agreeing was not trivial.
    assert all(outputs.values()), {route: len(r) for route, r in outputs.items()}
