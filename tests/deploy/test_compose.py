"""deploy/compose/compose.yaml: the Compose schema, the stack's parts, and the topic script run.

Compose interpolates ``${VAR:-default}`` before it validates, so the file is
interpolated here the same way (with the defaults, or with the values a test
gives) and then checked against the Compose specification's JSON schema.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_util import DEPLOY, IMAGE, config_from, parse_cli, require_tool, seconds

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
SCHEMA = json.loads((Path(__file__).parent / "compose-spec.schema.json").read_text())

TOPICS = {"sms.outbound", "sms.deliver", "sms.blocked", "sms.invalid", "sms.consent-changes"}

_VAR = re.compile(r"\$(?:\$|\{(\w+)(?::?-([^}]*))?\}|(\w+))")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: ``${V}``, ``${V:-default}``, ``${V-default}``, ``$V``, ``$$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        default = match.group(2)
        value = env.get(name)
        if value is None or (value == "" and ":-" in match.group(0)):
            return default if default is not None else ""
        return value

    return _VAR.sub(repl, text)


def load(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), env or {}))
    return data


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load()


def _validate(data: dict[str, Any]) -> None:
    jsonschema.Draft201909Validator(SCHEMA).validate(data)


def test_schema_accepts_the_stack(stack: dict[str, Any]) -> None:
    data = json.loads(json.dumps(stack))
    # deploy.replicas arrives as a string from ${FILTERD__REPLICAS:-3}; Compose casts it.
    data["services"]["filterd"]["deploy"]["replicas"] = int(
        data["services"]["filterd"]["deploy"]["replicas"]
    )
    _validate(data)


def test_schema_rejects_a_misspelt_key(stack: dict[str, Any]) -> None:
    """The schema really constrains: an unknown service key is refused."""
    data = json.loads(json.dumps(stack))
    data["services"]["filterd"]["deploy"]["replicas"] = 3
    data["services"]["filterd"]["stop_grace_periods"] = "45s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(data)


def test_the_stack_has_every_part(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert {"kafka", "kafka-init", "snapshot-init", "filterd", "prometheus", "grafana"} <= set(
        services
    )
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"]), kafka["image"]
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "broker" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in key for key in env), "KRaft only"
    assert kafka["healthcheck"]["test"]


def test_filterd_services_run_the_image_make_image_builds(stack: dict[str, Any]) -> None:
    filterd = {
        name: service
        for name, service in stack["services"].items()
        if "deploy/docker/Dockerfile" in str(service.get("build", {}).get("dockerfile", ""))
    }
    assert {"snapshot-init", "filterd", "loadgen"} <= set(filterd)
    assert {name: s["image"] for name, s in filterd.items()} == dict.fromkeys(filterd, IMAGE)


def test_filterd_waits_for_topics_and_snapshot(stack: dict[str, Any]) -> None:
    depends = stack["services"]["filterd"]["depends_on"]
    for one_shot in ("kafka-init", "snapshot-init"):
        assert depends[one_shot]["condition"] == "service_completed_successfully"
    assert stack["services"]["kafka-init"]["depends_on"]["kafka"]["condition"] == (
        "service_healthy"
    )


def test_filterd_service_matches_the_product(stack: dict[str, Any]) -> None:
    filterd = stack["services"]["filterd"]
    parse_cli(filterd["command"])
    env = {k: str(v) for k, v in filterd["environment"].items()}
    mounts = dict(m.split(":")[:2][::-1] for m in filterd["volumes"])
    config_path = filterd["command"][filterd["command"].index("--config") + 1]
    host_config = (COMPOSE_DIR / mounts[config_path]).resolve()
    cfg = config_from(host_config, env)
    assert cfg.metrics.host == "0.0.0.0"
    assert cfg.kafka.bootstrap_servers == "kafka:9092"
    assert mounts[str(cfg.snapshot.root)] == "snapshots"
    assert any(m.endswith(f"{cfg.snapshot.root}:ro") for m in filterd["volumes"])
    assert str(cfg.metrics.port) in {str(p) for p in filterd["expose"]}
    assert seconds(filterd["stop_grace_period"]) > cfg.service.shutdown_timeout_s
    assert filterd["read_only"] is True
    topics = (cfg.topics.input, cfg.topics.deliver, cfg.topics.block, cfg.topics.invalid)
    assert {*topics, cfg.topics.changes} == TOPICS


def _kafka_init_script(stack: dict[str, Any]) -> str:
    service = stack["services"]["kafka-init"]
    assert service["entrypoint"][:2] == ["/bin/bash", "-euc"]
    script: str = service["command"][0]
    return script


def _run_kafka_init(tmp_path: Path, compose_env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run kafka-init's script with a stand-in kafka-topics.sh that records its arguments."""
    stack = load(compose_env)
    service_env = {k: str(v) for k, v in stack["services"]["kafka-init"]["environment"].items()}
    log = tmp_path / "calls.log"
    fake = tmp_path / "kafka-topics.sh"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {shlex.quote(str(log))}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    script = _kafka_init_script(stack).replace("/opt/kafka/bin/kafka-topics.sh", str(fake))
    result = subprocess.run(
        ["/bin/bash", "-euc", script],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **service_env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result.returncode, calls


def test_topic_creation_makes_every_topic_with_enough_partitions(
    tmp_path: Path, stack: dict[str, Any]
) -> None:
    code, calls = _run_kafka_init(tmp_path, {})
    assert code == 0
    created = {}
    for call in calls:
        args = call.split()
        if "--create" in args:
            created[args[args.index("--topic") + 1]] = int(args[args.index("--partitions") + 1])
    assert set(created) == TOPICS
    replicas = int(stack["services"]["filterd"]["deploy"]["replicas"])
    assert replicas <= created["sms.outbound"], "more filterd replicas than input partitions"


def test_topic_creation_refuses_more_replicas_than_partitions(tmp_path: Path) -> None:
    code, calls = _run_kafka_init(tmp_path, {"FILTERD__REPLICAS": "8", "FILTERD__PARTITIONS": "6"})
    assert code != 0
    assert calls == []


def test_topic_creation_follows_the_environment(tmp_path: Path) -> None:
    code, calls = _run_kafka_init(
        tmp_path, {"FILTERD__REPLICAS": "12", "FILTERD__PARTITIONS": "12"}
    )
    assert code == 0
    assert any("--topic sms.outbound --partitions 12" in call for call in calls)
    assert int(load({"FILTERD__REPLICAS": "12"})["services"]["filterd"]["deploy"]["replicas"]) == 12


def _filterd_commands(service: dict[str, Any]) -> list[list[str]]:
    """The ``filterd ...`` command lines of a one-shot's shell script ($VARS as a number)."""
    script = re.sub(r'"?\$(\w+)"?', "1", service["command"][0].replace("\\\n", " "))
    return [
        shlex.split(line) for line in script.splitlines() if line.strip().startswith("filterd ")
    ]


def test_snapshot_init_builds_into_the_shared_volume(stack: dict[str, Any]) -> None:
    service = stack["services"]["snapshot-init"]
    assert "snapshots:/var/lib/filterd/snapshots" in service["volumes"]  # read-write here
    commands = _filterd_commands(service)
    build = [c for c in commands if c[1:3] == ["snapshot", "build"]]
    assert build, "snapshot-init must run `filterd snapshot build`"
    assert build[0][build[0].index("--out") + 1] == "/var/lib/filterd/snapshots"
    for command in commands:
        parse_cli(command[1:])


def test_loadgen_uses_the_snapshots_data_set(stack: dict[str, Any]) -> None:
    loadgen = stack["services"]["loadgen"]
    assert loadgen["profiles"] == ["load"]
    commands = _filterd_commands(loadgen)
    for command in commands:
        parse_cli(command[1:])
    datasets = [c for c in commands if c[1:3] == ["loadgen", "dataset"]]
    initial = [
        c
        for c in _filterd_commands(stack["services"]["snapshot-init"])
        if (c[1:3] == ["loadgen", "dataset"])
    ]
    # Same generator arguments (seed included): the same senders and recipients.
    assert datasets == initial
    produce = next(c for c in commands if c[1:3] == ["loadgen", "produce"])
    assert produce[produce.index("--topic") + 1] == "sms.outbound"


def test_prometheus_scrapes_filterd_and_loads_the_alert_rules(stack: dict[str, Any]) -> None:
    prometheus = stack["services"]["prometheus"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in prometheus["volumes"]}
    config = yaml.safe_load((COMPOSE_DIR / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = int(stack["services"]["filterd"]["environment"]["FILTERD_METRICS_PORT"])
    dns = jobs["filterd"]["dns_sd_configs"][0]
    assert dns["names"] == ["filterd"]
    assert dns["port"] == port
    assert jobs["filterd"].get("metrics_path", "/metrics") == "/metrics"
    rule_targets = [t for t, s in mounts.items() if s.endswith("alerts.yml")]
    assert rule_targets, "alerts.yml is not mounted"
    assert any(Path(rule_targets[0]).match(glob) for glob in config["rule_files"])


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    broken = tmp_path / "prometheus.yml"
    broken.write_text((COMPOSE_DIR / "prometheus.yml").read_text().replace("type: A", "type: AAA"))
    for path, valid in ((COMPOSE_DIR / "prometheus.yml", True), (broken, False)):
        result = subprocess.run(
            [promtool, "check", "config", "--syntax-only", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (result.returncode == 0) is valid, result.stdout + result.stderr


def test_grafana_provisions_the_dashboard(stack: dict[str, Any]) -> None:
    grafana = stack["services"]["grafana"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"]}
    provisioning = COMPOSE_DIR / mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "filterd.yaml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    dashboards = [t for t in mounts if t.startswith(folder + "/") and t.endswith(".json")]
    assert dashboards, "no dashboard mounted in the provider's folder"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"


def test_every_bind_mount_exists(stack: dict[str, Any]) -> None:
    named = set(stack.get("volumes") or {})
    for name, service in stack["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source in named:
                continue
            assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"


SECURE_FILE = COMPOSE_DIR / "compose.secure.yaml"


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an override file: mappings merge, sequences and scalars replace."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def test_secure_override_uses_secrets_for_every_credential(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    override = yaml.safe_load(interpolate(SECURE_FILE.read_text(), {}))
    secure = _merged(stack, override)
    _validate(secure)
    filterd = secure["services"]["filterd"]
    env = {k: str(v) for k, v in filterd["environment"].items()}
    assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in env), env
    mounted = {f"/run/secrets/{name}": name for name in filterd["secrets"]}
    for key in ("KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CAFILE", "SNAPSHOT_PUBLIC_KEY"):
        assert env[f"FILTERD_{key}"] in mounted, key
    for name in mounted.values():
        source = secure["secrets"][name]["file"]
        assert source.startswith("./secrets/")
    assert "deploy/compose/secrets/" in (DEPLOY.parent / ".gitignore").read_text()
    # filterd loads that environment as a SASL_SSL config (stand-ins for the secret files).
    stand_in = tmp_path / "password"
    stand_in.write_text("from-a-secret")
    env["FILTERD_KAFKA_SASL_PASSWORD_FILE"] = str(stand_in)
    mounts = dict(m.split(":")[:2][::-1] for m in filterd["volumes"])
    config_path = filterd["command"][filterd["command"].index("--config") + 1]
    cfg = config_from((COMPOSE_DIR / mounts[config_path]).resolve(), env)
    assert cfg.kafka.security_protocol == "SASL_SSL"
    assert cfg.kafka.sasl_password == "from-a-secret"
    assert cfg.snapshot.public_key == "/run/secrets/snapshot_pub"
    # The one-shot that builds snapshots signs them with the private half.
    init = secure["services"]["snapshot-init"]
    (build,) = [c for c in _filterd_commands(init) if c[1:3] == ["snapshot", "build"]]
    parse_cli(build[1:])
    assert build[build.index("--sign-key") + 1] == "/run/secrets/snapshot_key"
    assert "snapshot_key" in init["secrets"]
    assert "snapshot_key" not in filterd["secrets"], "the private key stays with the publisher"
