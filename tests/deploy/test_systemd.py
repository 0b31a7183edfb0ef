"""deploy/systemd: the units' hardening and timeouts, ``systemd-analyze verify`` and ``security``.

``systemd-analyze`` needs no running systemd: it reads unit files under an
alternate root, here a temporary tree with the host's own unit directory (for
``multi-user.target`` and friends), the filterd units, and a stand-in for the
``ExecStart`` binary (verify checks that it is executable).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_util import DEPLOY, SAMPLE_CONFIG, config_from, parse_cli, require_tool, seconds

UNITS = DEPLOY / "systemd"
SERVICE = UNITS / "filterd.service"
TEMPLATE = UNITS / "filterd@.service"

Directives = dict[str, list[str]]


def directives(path: Path, section: str = "Service") -> Directives:
    """Every ``Key=value`` of one section; a key may repeat (systemd appends)."""
    found: Directives = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_unit_is_hardened(unit: Path) -> None:
    service = directives(unit)
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{unit.name}: {key}={value} expected"
    assert service.get("DynamicUser") == ["yes"] or service.get("User") == ["filterd"]
    families = service["RestrictAddressFamilies"][0].split()
    assert set(families) <= {"AF_INET", "AF_INET6", "AF_UNIX"}


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_unit_restarts_and_outlasts_the_drain(unit: Path) -> None:
    service = directives(unit)
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    # Only the main process gets SIGTERM; a second SIGTERM would force-exit a worker.
    assert service["KillMode"] == ["mixed"]
    shutdown = config_from(SAMPLE_CONFIG).service.shutdown_timeout_s
    assert seconds(service["TimeoutStopSec"][0]) > shutdown


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_exec_start_is_a_valid_filterd_run(unit: Path) -> None:
    argv = shlex.split(directives(unit)["ExecStart"][0])
    assert Path(argv[0]).name == "filterd"
    argv = [a for a in argv[1:] if not a.startswith("$")]  # $FILTERD__ARGS may be empty
    parse_cli(argv)
    assert argv[0] == "run"
    assert argv[argv.index("--config") + 1] == "/etc/filterd/filterd.toml"


def test_template_gives_each_instance_its_metrics_port() -> None:
    service = directives(TEMPLATE)
    assert "FILTERD_METRICS_PORT=%i" in service["Environment"]
    # Environment files override Environment=: no shared file may carry the port.
    assert "%i" in directives(TEMPLATE, "Unit")["Description"][0]


def test_tmpfiles_creates_the_snapshot_root_for_the_service_user() -> None:
    root = str(config_from(SAMPLE_CONFIG).snapshot.root)
    lines = [
        line.split()
        for line in (UNITS / "filterd.tmpfiles.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    entry = next(fields for fields in lines if fields[1] == root)
    assert entry[0] == "d"
    assert entry[3] == directives(SERVICE)["User"][0]
    sysusers = (UNITS / "filterd.sysusers.conf").read_text()
    assert re.search(r"^u filterd\b", sysusers, re.MULTILINE)


def _alternate_root(tmp_path: Path, units: list[Path]) -> Path:
    root = tmp_path / "root"
    host_units = Path("/usr/lib/systemd/system")
    if not host_units.is_dir():
        host_units = Path("/lib/systemd/system")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in units:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                binary = root / shlex.split(line.partition("=")[2])[0].lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\n")
                binary.chmod(0o755)
    return root


def _verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze")
    return subprocess.run(
        [analyze, "verify", "--man=no", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    root = _alternate_root(tmp_path, [SERVICE, TEMPLATE])
    result = _verify(root, "filterd.service", "filterd@9108.service")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys are only warnings to systemd, but they are mistakes here.
    assert "Unknown" not in output, output
    assert "ignoring" not in output, output


def test_systemd_analyze_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    broken = tmp_path / "filterd.service"
    broken.write_text(SERVICE.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    root = _alternate_root(tmp_path, [broken])
    output = _verify(root, "filterd.service").stderr
    assert "Unknown key" in output


def _exposure(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze")
    # --threshold is the exposure level times ten: fail above 2.5 ("OK" is below 5).
    return subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=25", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_exposure_level_is_low(tmp_path: Path) -> None:
    root = _alternate_root(tmp_path, [SERVICE])
    result = _exposure(root, "filterd.service")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_exposure_check_fails_an_unhardened_unit(tmp_path: Path) -> None:
    plain = tmp_path / "filterd.service"
    keep = ("[", "Description", "ExecStart", "Type", "WantedBy")
    plain.write_text(
        "\n".join(line for line in SERVICE.read_text().splitlines() if line.startswith(keep))
    )
    root = _alternate_root(tmp_path, [plain])
    assert _exposure(root, "filterd.service").returncode != 0


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_kafka_password_is_a_systemd_credential(unit: Path) -> None:
    service = directives(unit)
    (credential,) = service["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source == "/etc/filterd/kafka-password"
    assert f"FILTERD_KAFKA_SASL_PASSWORD_FILE=%d/{name}" in service["Environment"]
    # The config loader knows the key the variable sets (unused without SASL).
    config_from(SAMPLE_CONFIG, {"FILTERD_KAFKA_SASL_PASSWORD_FILE": "/run/credentials/x"})
    tmpfiles = (UNITS / "filterd.tmpfiles.conf").read_text().split("\n")
    (entry,) = [line.split() for line in tmpfiles if source in line]
    assert entry[0] == "f"
    assert entry[2] == "0600"
    assert entry[3] == "root"
