"""deploy/docker/Dockerfile: lint, structure, and the HEALTHCHECK command run for real.

These checks need no container engine: they cover what can be known from the file
(and the health-check one-liner, which runs against a local HTTP server exactly as
the container would run it). The image itself is built and run in test_image.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from deploy_util import DEPLOY, REPO, SAMPLE_CONFIG, config_from, parse_cli, require_tool
from dockerfile_parse import DockerfileParser

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"

Instruction = tuple[str, str]


def _stages() -> list[list[Instruction]]:
    """The build stages, each a list of (INSTRUCTION, value) without comments."""
    stages: list[list[Instruction]] = []
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM" or not stages:
            stages.append([])
        stages[-1].append((instruction, value))
    return [s for s in stages if s and s[0][0] == "FROM"]


def _args(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction, value in stage:
        if instruction == "ARG" and "=" in value:
            key, _, default = value.partition("=")
            found[key.strip()] = default.strip()
    return found


def _resolve(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), value)


def _only(stage: list[Instruction], name: str) -> str:
    values = [v for i, v in stage if i == name]
    assert len(values) == 1, f"expected one {name} in the final stage, found {values}"
    return values[0]


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really lints: an unpinned base and an unpinned apt install fail it."""
    hadolint = require_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\n")
    result = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def test_multi_stage_slim_python_311() -> None:
    stages = _stages()
    assert len(stages) >= 2, "builder and runtime stages expected"
    global_args = _args(
        [
            ("ARG", item["value"])
            for item in DockerfileParser(path=str(DOCKERFILE)).structure
            if item["instruction"] == "ARG"
        ]
    )
    final_from = _resolve(stages[-1][0][1].split()[0], global_args)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final_from), final_from
    # The builder compiles the hot path (setup.py) for the runtime's very interpreter.
    builder_from = _resolve(stages[0][0][1].split()[0], global_args)
    assert re.fullmatch(r"python:3\.11(-\w+)?", builder_from), builder_from
    assert "slim" not in builder_from, "the builder needs gcc and the Python headers"
    # The final stage installs nothing: it copies the builder's virtual environment (on the
    # PATH) and the sample config, no source tree.
    copies = [v for i, v in stages[-1] if i == "COPY"]
    from_builder = [c.split() for c in copies if "--from=builder" in c]
    assert [c[-2:] for c in from_builder] == [["/opt/filterd", "/opt/filterd"]], copies
    others = [c for c in copies if "--from=builder" not in c]
    assert others, copies
    assert all("filterd.toml" in c for c in others), copies
    assert "PATH=/opt/filterd/bin:$PATH" in _only(stages[-1], "ENV")
    runs = [v for i, v in stages[-1] if i == "RUN"]
    assert not any("pip" in r for r in runs), runs


def test_runs_as_a_fixed_non_root_uid() -> None:
    final = _stages()[-1]
    user = _resolve(_only(final, "USER"), _args(final))
    uid = user.split(":")[0]
    assert uid.isdigit(), f"numeric uid expected (runAsNonRoot checks it), got {user!r}"
    assert int(uid) >= 1000


def test_entrypoint_is_the_cli_and_cmd_runs_the_service() -> None:
    final = _stages()[-1]
    assert json.loads(_only(final, "ENTRYPOINT")) == ["filterd"]
    cmd = json.loads(_only(final, "CMD"))
    parse_cli(cmd)
    assert cmd[0] == "run"
    config_path = cmd[cmd.index("--config") + 1]
    copies = [v for i, v in final if i == "COPY"]
    assert any(c.split()[-1] == config_path for c in copies), "CMD's config is not in the image"


def test_volumes_signal_and_port_match_the_product() -> None:
    final = _stages()[-1]
    defaults = config_from(SAMPLE_CONFIG)
    assert str(defaults.snapshot.root) in json.loads(_only(final, "VOLUME"))
    assert _only(final, "EXPOSE").split() == [str(defaults.metrics.port)]
    assert _only(final, "STOPSIGNAL") == "SIGTERM"
    env = _only(final, "ENV")
    # Environment beats the config file: the image must not pin what operators configure.
    assert "FILTERD_METRICS_HOST=0.0.0.0" in env
    for pinned in ("FILTERD_METRICS_PORT", "FILTERD_SNAPSHOT_ROOT", "FILTERD_KAFKA_"):
        assert pinned not in env


def _healthcheck_argv() -> list[str]:
    value = _only(_stages()[-1], "HEALTHCHECK")
    _, _, exec_form = value.partition("CMD")
    argv: list[str] = json.loads(exec_form.strip())
    assert argv[:2] == ["filterd", "check"], "the slim image has no curl: filterd check asks"
    parse_cli(argv[1:])
    return argv


class _Readyz(BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        if self.path != "/readyz":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps({"ready": self.ready, "reasons": [] if self.ready else ["no snapshot"]})
        self.send_response(200 if self.ready else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass


@pytest.fixture
def readyz_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _run_healthcheck(tmp_path: Path, port: int) -> subprocess.CompletedProcess[bytes]:
    """The HEALTHCHECK command as the container runs it: image env, config at --config."""
    argv = _healthcheck_argv()
    config = tmp_path / "filterd.toml"
    # The mounted config keeps the default host; the image's FILTERD_METRICS_HOST=0.0.0.0
    # applies, as in the container. Only the port differs: the test server's.
    config.write_text(f"[metrics]\nport = {port}\n")
    argv[argv.index("--config") + 1] = str(config)
    image_env = dict(
        item.split("=", 1) for item in _only(_stages()[-1], "ENV").split() if "=" in item
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **image_env}
    return subprocess.run(
        [sys.executable, "-m", "filterd", *argv[1:]],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("ready", [True, False])
def test_healthcheck_follows_readyz(
    readyz_server: ThreadingHTTPServer, tmp_path: Path, ready: bool
) -> None:
    _Readyz.ready = ready
    result = _run_healthcheck(tmp_path, readyz_server.server_address[1])
    assert (result.returncode == 0) is ready, result.stdout + result.stderr


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    port = server.server_address[1]
    server.server_close()  # the port is now closed
    assert _run_healthcheck(tmp_path, port).returncode == 1


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the plain patterns used here: last match wins, ! re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            ignored = not negate
    return ignored


def test_build_context_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: list[str] = []
    for stage in _stages():
        for instruction, value in stage:
            if instruction == "COPY" and "--from" not in value:
                words = [w for w in value.split() if not w.startswith("--")]
                sources.extend(words[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY source {source} missing from the repository"
        assert not _ignored(source, patterns), f"{source} is excluded from the build context"
    assert _ignored("tests/conftest.py", patterns), "the context should not ship tests"
    assert _ignored(".venv/bin/python", patterns)
    # Compiled modules are built in the image, never copied from a developer's tree.
    assert _ignored("filterd/router.cpython-311-x86_64-linux-gnu.so", patterns)
