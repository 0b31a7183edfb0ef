"""``filterd run`` against the secured broker with an everyday mistake: one line, exit 1.

No traceback, no retry loop, no unclosed-client noise, and no password anywhere in the output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from filterd.config import load_config

from .conftest import REPO, SecureBroker, one_consent_snapshot

pytestmark = pytest.mark.kafka

WRONG = "wrong-password-8f3a"


def _run(config: Path, env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **env_overrides}
    return subprocess.run(
        [sys.executable, "-m", "filterd", "run", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=env, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"FILTERD_KAFKA_SASL_PASSWORD": WRONG},
            "start-up failed: authentication failed for user filterd (SCRAM-SHA-512) "
            "at 127.0.0.1:9093",
        ),
        (
            {"FILTERD_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
            "start-up failed: 127.0.0.1:9093 closed the connection during the Kafka handshake: "
            "its listener does not speak security_protocol = PLAINTEXT (a TLS or SASL listener?)",
        ),
        (
            {"FILTERD_KAFKA_SSL_CAFILE": "/etc/ssl/certs/ca-certificates.crt"},
            "start-up failed: TLS: the certificate of 127.0.0.1:9093 is not trusted by "
            "/etc/ssl/certs/ca-certificates.crt (self-signed certificate in certificate chain)",
        ),
    ],
    ids=["wrong-password", "plaintext", "unknown-ca"],
)
def test_refused_in_one_line(
    secure_kafka: SecureBroker, tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    if "SSL_CAFILE" in str(overrides) and not Path(overrides["FILTERD_KAFKA_SSL_CAFILE"]).exists():
        pytest.skip("no system CA bundle on this machine")
    config = tmp_path / "filterd.toml"
    snapshots = one_consent_snapshot(tmp_path, "106900001234", "13800001111")
    config.write_text(
        secure_kafka.config("filterd").read_text()
        + f'\n[snapshot]\nroot = "{snapshots}"\n\n[metrics]\nenabled = false\n'
    )
    proc = _run(config, overrides)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert errors[0].endswith(expected), output
    assert "Traceback" not in output
    assert "Unclosed" not in output
    real = load_config(secure_kafka.config("filterd")).kafka.sasl_password
    assert real not in output
    assert WRONG not in output


def test_password_never_in_a_config_repr(secure_kafka: SecureBroker) -> None:
    config = load_config(secure_kafka.config("filterd"))
    assert config.kafka.sasl_password
    assert config.kafka.sasl_password not in repr(config)
    assert config.kafka.sasl_password not in str(config.kafka)
